//! `Value` ↔ JSON bytes.
//!
//! Encoding is hand-written (not `serde::Serialize`) so an unencodable value can be reported with
//! the path that leads to it, and so integers of any size go out as integer literals.
//! Decoding goes through `serde_json` with `arbitrary_precision`, so integers that do not fit
//! `i64` are kept exactly as [`Value::BigInt`].

use std::fmt;
use std::io::Write;

use super::path::{join_path, PathSegment};
use super::{SpecialFloat, Value};

/// Key of the one-entry object that carries a non-finite float.
pub const FLOAT_MARKER_KEY: &str = "__snakepit_float__";

/// A value that cannot be written as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode value at {path:?}: {message}")]
pub struct EncodeError {
    /// Where the bad value sits, e.g. `"a.b[2]"` (empty for the root).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// Bytes that are not valid JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON: {0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    /// The bytes were JSON as far as read, but nest deeper than the decoder's recursion limit
    /// (128, as [`MAX_DEPTH`]).
    pub fn is_too_deep(&self) -> bool {
        self.0.starts_with("recursion limit exceeded")
    }
}

struct Failure<'a> {
    /// Innermost segment first.
    segments: Vec<PathSegment<&'a str>>,
    message: String,
}

/// Deepest nesting the encoder accepts (the root is level 0). The NIF refuses deeper terms with
/// the same bound before encoding, and Python's JSON decoder has a limit of its own.
pub const MAX_DEPTH: usize = 128;

/// Encodes `value` as compact JSON.
///
/// Non-finite floats become `{"__snakepit_float__": "nan"|"inf"|"-inf"}`; [`Value::Bytes`] is an
/// error naming its path (relative to `value`, e.g. `"b[2]"`), and so is nesting deeper than
/// [`MAX_DEPTH`].
pub fn encode_json(value: &Value) -> Result<Vec<u8>, EncodeError> {
    encode_json_at(value, "")
}

/// Like [`encode_json`], indented for people to read (two spaces per level, keys in the order
/// given). Numbers are written exactly as [`encode_json`] writes them.
pub fn encode_json_pretty(value: &Value) -> Result<Vec<u8>, EncodeError> {
    let compact = encode_json(value)?;
    // Re-read with serde_json (arbitrary precision, order kept) only to lay the text out.
    // The encoder bounds the depth already (MAX_DEPTH), so serde_json's own limit can go.
    let mut de = serde_json::Deserializer::from_slice(&compact);
    de.disable_recursion_limit();
    let layout_error = |e: serde_json::Error| EncodeError {
        path: String::new(),
        message: e.to_string(),
    };
    let tree: serde_json::Value = serde::Deserialize::deserialize(&mut de).map_err(layout_error)?;
    serde_json::to_vec_pretty(&tree).map_err(layout_error)
}

/// Like [`encode_json`], with error paths prefixed by `root` (the parameter name).
pub fn encode_json_at(value: &Value, root: &str) -> Result<Vec<u8>, EncodeError> {
    encode_bounded(value, root, usize::MAX, usize::MAX)
}

/// Like [`encode_json_at`], but fails as soon as the output would exceed `max_bytes`, naming the
/// path where the bound was crossed; it never produces more than about `max_bytes` of output
/// before giving up.
pub fn encode_json_limited(
    value: &Value,
    root: &str,
    max_bytes: usize,
) -> Result<Vec<u8>, EncodeError> {
    encode_bounded(value, root, max_bytes, max_bytes)
}

/// Encodes with at most `budget` bytes of output; a size error quotes `limit` (the bound the
/// caller configured, of which `budget` may be what is left).
pub(crate) fn encode_bounded(
    value: &Value,
    root: &str,
    budget: usize,
    limit: usize,
) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer {
        out: Vec::with_capacity(64),
        budget,
        limit,
    };
    w.value(value, 0).map_err(|f| EncodeError {
        path: join_path(root, &f.segments),
        message: f.message,
    })?;
    Ok(w.out)
}

/// The message of a size error.
pub(crate) fn too_large_message(limit: usize) -> String {
    format!("call payload exceeds max_message_bytes ({limit} bytes) once encoded")
}

struct Writer {
    out: Vec<u8>,
    budget: usize,
    limit: usize,
}

impl Writer {
    /// Fails once the output is over budget (checked after each scalar and before each string).
    #[inline]
    fn check<'a>(&self, extra: usize) -> Result<(), Failure<'a>> {
        if self.out.len().saturating_add(extra) > self.budget {
            Err(fail(too_large_message(self.limit)))
        } else {
            Ok(())
        }
    }

    fn value<'a>(&mut self, value: &'a Value, depth: usize) -> Result<(), Failure<'a>> {
        if depth > MAX_DEPTH {
            return Err(fail(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let out = &mut self.out;
        match value {
            Value::Nil => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Int(i) => write_display(out, i),
            Value::BigInt(digits) => {
                if !is_integer_literal(digits) {
                    return Err(fail(format!("malformed big integer {digits:?}")));
                }
                self.check(digits.len())?;
                self.out.extend_from_slice(digits.as_bytes());
            }
            Value::Float(f) => match SpecialFloat::classify(*f) {
                Some(s) => write_marker(out, s),
                None => write_float(out, *f),
            },
            Value::SpecialFloat(s) => write_marker(out, *s),
            Value::Str(s) => {
                // Escaping only grows a string: refuse before copying one that cannot fit.
                self.check(s.len().saturating_add(2))?;
                write_str(&mut self.out, s);
            }
            Value::Bytes(_) => {
                return Err(fail(
                    "raw bytes cannot be encoded as JSON (pass them with binary_parameters)".into(),
                ))
            }
            Value::List(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.value(item, depth + 1)
                        .map_err(|f| f.within(PathSegment::Index(i)))?;
                }
                self.out.push(b']');
            }
            Value::Map(entries) => {
                out.push(b'{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.check(k.len().saturating_add(3))
                        .map_err(|f| f.within(PathSegment::Key(k)))?;
                    write_str(&mut self.out, k);
                    self.out.push(b':');
                    self.value(v, depth + 1)
                        .map_err(|f| f.within(PathSegment::Key(k)))?;
                }
                self.out.push(b'}');
            }
        }
        self.check(0)
    }
}

impl<'a> Failure<'a> {
    fn within(mut self, seg: PathSegment<&'a str>) -> Self {
        self.segments.push(seg);
        self
    }
}

fn fail<'a>(message: String) -> Failure<'a> {
    Failure {
        segments: Vec::new(),
        message,
    }
}

fn write_display(out: &mut Vec<u8>, v: impl fmt::Display) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{v}");
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping of a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Finite floats via serde_json (ryu): shortest round-trip form, always with `.` or an exponent,
/// so Python reads them back as `float`, never `int`.
fn write_float(out: &mut Vec<u8>, f: f64) {
    let _ = serde_json::to_writer(&mut *out, &f);
}

fn write_marker(out: &mut Vec<u8>, s: SpecialFloat) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(FLOAT_MARKER_KEY.as_bytes());
    out.extend_from_slice(b"\":\"");
    out.extend_from_slice(s.as_str().as_bytes());
    out.extend_from_slice(b"\"}");
}

/// `-?[0-9]+`, the shape of [`Value::BigInt`] digits.
pub(crate) fn is_integer_literal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Decodes JSON bytes into a [`Value`].
///
/// Integers outside `i64` become [`Value::BigInt`]; floats too large for `f64` become
/// infinities; the marker object becomes [`Value::SpecialFloat`]; object key order is kept.
///
/// Nesting is bounded like the encoder's: up to [`MAX_DEPTH`] levels of arrays/objects decode
/// (serde_json's own limit stops one level short); deeper JSON fails with an error for which
/// [`DecodeError::is_too_deep`] holds.
pub fn decode_json(bytes: &[u8]) -> Result<Value, DecodeError> {
    use serde::Deserialize;

    let parsed = if json_nesting(bytes) <= MAX_DEPTH {
        // Bounded by the scan above, so the recursion stays shallow.
        let mut de = serde_json::Deserializer::from_slice(bytes);
        de.disable_recursion_limit();
        serde_json::Value::deserialize(&mut de).and_then(|v| de.end().map(|()| v))
    } else {
        // serde_json's recursion limit tells deep JSON ("recursion limit exceeded") from bytes
        // that are not JSON at all.
        serde_json::from_slice(bytes)
    };
    parsed
        .map(from_serde)
        .map_err(|e| DecodeError(e.to_string()))
}

/// Deepest nesting of `[`/`{` outside strings (an upper bound for non-JSON input).
fn json_nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn from_serde(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => from_number(&n),
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(items) => Value::List(items.into_iter().map(from_serde).collect()),
        serde_json::Value::Object(map) => {
            if map.len() == 1 {
                if let Some(serde_json::Value::String(tag)) = map.get(FLOAT_MARKER_KEY) {
                    if let Some(s) = SpecialFloat::from_marker(tag) {
                        return Value::SpecialFloat(s);
                    }
                }
            }
            Value::Map(map.into_iter().map(|(k, v)| (k, from_serde(v))).collect())
        }
    }
}

fn from_number(n: &serde_json::Number) -> Value {
    if let Some(i) = n.as_i64() {
        return Value::Int(i);
    }
    let literal = n.as_str();
    if is_integer_literal(literal) {
        return Value::BigInt(literal.to_owned());
    }
    // A JSON number is always a valid Rust float literal; overflow parses to ±inf.
    match literal.parse::<f64>() {
        Ok(f) => Value::float(f),
        Err(_) => Value::SpecialFloat(SpecialFloat::Nan),
    }
}
