//! Elixir terms ↔ `snakepit_core::codec::Value` (ARCHITECTURE.md "Values").

use std::str::FromStr;

use rustler::types::atom;
use rustler::{Atom, Binary, Encoder, Env, MapIterator, NewBinary, Term, TermType};
use snakepit_core::codec::{join_path, PathSegment, SpecialFloat, Value, MAX_DEPTH};

use crate::atoms;

/// A bound on the bytes a call may carry (`max_message_bytes`), charged while terms are decoded,
/// so an oversized argument is refused before it is copied or encoded.
///
/// Each value is charged the least its JSON can take (a string its bytes plus quotes, an integer
/// one digit, ...): the estimate never exceeds the real size, so nothing that fits is refused
/// here; the encoder checks the exact size afterwards.
pub struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    /// `limit` bytes in all.
    pub fn new(limit: usize) -> Self {
        Budget { left: limit, limit }
    }

    /// Takes `n` bytes, or fails with the message of an oversized call.
    pub fn charge(&mut self, n: usize) -> Result<(), String> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(format!(
                "call payload exceeds max_message_bytes ({} bytes)",
                self.limit
            )),
        }
    }

    fn take(&mut self, n: usize) -> Result<(), Failure> {
        self.charge(n).map_err(Failure::new)
    }
}

/// A term that cannot be sent: `{:invalid_parameter, path, message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParameter {
    /// e.g. `"a.b[2]"`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// One step of an error path, collected while the recursion unwinds.
type Segment = PathSegment<String>;

struct Failure {
    /// Innermost first.
    segments: Vec<Segment>,
    message: String,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Failure {
            segments: Vec::new(),
            message: message.into(),
        }
    }

    fn within(mut self, seg: Segment) -> Self {
        self.segments.push(seg);
        self
    }

    fn at(self, root: &str) -> InvalidParameter {
        let path = join_path(root, &self.segments);
        InvalidParameter {
            path,
            message: self.message,
        }
    }
}

/// Decodes an argument value; errors carry paths starting at `root` (the argument name).
pub fn term_to_value(
    term: Term<'_>,
    root: &str,
    budget: &mut Budget,
) -> Result<Value, InvalidParameter> {
    decode(term, 0, budget).map_err(|f| f.at(root))
}

fn decode(term: Term<'_>, depth: usize, budget: &mut Budget) -> Result<Value, Failure> {
    if depth > MAX_DEPTH {
        return Err(Failure::new(format!(
            "nested deeper than {MAX_DEPTH} levels"
        )));
    }
    match term.get_type() {
        TermType::Atom => {
            let v = decode_atom(term);
            budget.take(match &v {
                Value::Str(s) => s.len() + 2,
                _ => 4,
            })?;
            Ok(v)
        }
        TermType::Integer => {
            budget.take(1)?;
            Ok(decode_integer(term))
        }
        TermType::Float => {
            budget.take(3)?;
            term.decode::<f64>()
                .map(Value::float)
                .map_err(|_| Failure::new("unreadable float"))
        }
        TermType::Binary => decode_string(term, budget).map(Value::Str),
        TermType::List => decode_list(term, depth, budget),
        TermType::Map => decode_map(term, depth, budget),
        other => Err(Failure::new(format!("cannot encode {}", kind(other)))),
    }
}

fn decode_atom(term: Term<'_>) -> Value {
    if term == atom::nil().to_term(term.get_env()) {
        return Value::Nil;
    }
    if let Ok(b) = term.decode::<bool>() {
        return Value::Bool(b);
    }
    if let Ok(a) = Atom::from_term(term) {
        if a == atoms::nan() {
            return Value::SpecialFloat(SpecialFloat::Nan);
        }
        if a == atoms::infinity() {
            return Value::SpecialFloat(SpecialFloat::Inf);
        }
        if a == atoms::neg_infinity() {
            return Value::SpecialFloat(SpecialFloat::NegInf);
        }
    }
    Value::Str(term.atom_to_string().unwrap_or_default())
}

fn decode_integer(term: Term<'_>) -> Value {
    if let Ok(i) = term.decode::<i64>() {
        return Value::Int(i);
    }
    match term.decode::<rustler::BigInt>() {
        Ok(big) => Value::BigInt(big.to_string()),
        // Unreachable for an integer term; keep the value rather than failing the call.
        Err(_) => Value::BigInt("0".to_owned()),
    }
}

fn decode_string(term: Term<'_>, budget: &mut Budget) -> Result<String, Failure> {
    let bin = Binary::from_term(term).map_err(|_| Failure::new("cannot encode a bitstring"))?;
    // Before any copy: a 200 MB binary over the bound costs nothing.
    budget.take(bin.len().saturating_add(2))?;
    std::str::from_utf8(bin.as_slice())
        .map(str::to_owned)
        .map_err(|e| {
            Failure::new(format!(
                "invalid UTF-8 in binary at byte {} (send raw bytes with binary_parameters:)",
                e.valid_up_to()
            ))
        })
}

fn decode_list(term: Term<'_>, depth: usize, budget: &mut Budget) -> Result<Value, Failure> {
    budget.take(2)?;
    let mut items = Vec::new();
    let mut rest = term;
    loop {
        if rest.is_empty_list() {
            return Ok(Value::List(items));
        }
        let (head, tail) = rest
            .list_get_cell()
            .map_err(|_| Failure::new("cannot encode an improper list"))?;
        let index = items.len();
        let item = (if index > 0 { budget.take(1) } else { Ok(()) })
            .and_then(|()| decode(head, depth + 1, budget))
            .map_err(|f| f.within(Segment::Index(index)))?;
        items.push(item);
        rest = tail;
    }
}

fn decode_map(term: Term<'_>, depth: usize, budget: &mut Budget) -> Result<Value, Failure> {
    let env = term.get_env();
    if let Ok(module) = term.map_get(atom::__struct__().to_term(env)) {
        let name = module.atom_to_string().unwrap_or_default();
        return Err(Failure::new(format!(
            "cannot encode struct {name} (convert it to a map or string first)"
        )));
    }
    let iter = MapIterator::new(term).ok_or_else(|| Failure::new("unreadable map"))?;
    budget.take(2)?;
    // Bounded: the budget, not the map's size, decides how many entries get decoded.
    let mut entries = Vec::with_capacity(term.map_size().unwrap_or(0).min(1024));
    for (k, v) in iter {
        let key = key_string(k).map_err(|f| f.within(Segment::Key(key_label(k))))?;
        // Quotes, colon and comma.
        let value = budget
            .take(key.len().saturating_add(4))
            .and_then(|()| decode(v, depth + 1, budget))
            .map_err(|f| f.within(Segment::Key(key.clone())))?;
        entries.push((key, value));
    }
    Ok(Value::Map(entries))
}

/// An argument name or map key as a string (atoms by name, integers in decimal, like Jason).
pub fn map_key(k: Term<'_>) -> Result<String, String> {
    key_string(k).map_err(|f| f.message)
}

/// A key that cannot be used, shown in an error path: lossy UTF-8 for binaries.
pub fn key_label(k: Term<'_>) -> String {
    match Binary::from_term(k) {
        Ok(bin) => {
            let bytes = bin.as_slice();
            let shown = &bytes[..bytes.len().min(64)];
            String::from_utf8_lossy(shown).into_owned()
        }
        Err(_) => format!("<{}>", kind(k.get_type())),
    }
}

fn key_string(k: Term<'_>) -> Result<String, Failure> {
    match k.get_type() {
        TermType::Atom => Ok(k.atom_to_string().unwrap_or_default()),
        TermType::Binary => {
            let bin = Binary::from_term(k)
                .map_err(|_| Failure::new("cannot encode a bitstring map key"))?;
            std::str::from_utf8(bin.as_slice())
                .map(str::to_owned)
                .map_err(|e| {
                    Failure::new(format!(
                        "map key is not valid UTF-8 (at byte {})",
                        e.valid_up_to()
                    ))
                })
        }
        TermType::Integer => Ok(match decode_integer(k) {
            Value::Int(i) => i.to_string(),
            Value::BigInt(s) => s,
            _ => String::new(),
        }),
        other => Err(Failure::new(format!(
            "cannot encode a {} map key",
            kind(other)
        ))),
    }
}

fn kind(t: TermType) -> &'static str {
    match t {
        TermType::Atom => "atom",
        TermType::Binary => "binary",
        TermType::Fun => "fun",
        TermType::List => "list",
        TermType::Map => "map",
        TermType::Integer => "integer",
        TermType::Float => "float",
        TermType::Pid => "pid",
        TermType::Port => "port",
        TermType::Ref => "reference",
        TermType::Tuple => "tuple",
        TermType::Unknown => "term of unknown type",
    }
}

/// Builds the Elixir term for a value (strings and bytes become binaries, map keys strings).
pub fn value_to_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Nil => atom::nil().encode(env),
        Value::Bool(b) => b.encode(env),
        Value::Int(i) => i.encode(env),
        Value::BigInt(digits) => match rustler::BigInt::from_str(digits) {
            Ok(big) => big.encode(env),
            Err(_) => digits.encode(env),
        },
        Value::Float(f) => f.encode(env),
        Value::SpecialFloat(SpecialFloat::Nan) => atoms::nan().encode(env),
        Value::SpecialFloat(SpecialFloat::Inf) => atoms::infinity().encode(env),
        Value::SpecialFloat(SpecialFloat::NegInf) => atoms::neg_infinity().encode(env),
        Value::Str(s) => bytes_to_term(env, s.as_bytes()),
        Value::Bytes(b) => bytes_to_term(env, b),
        Value::List(items) => items
            .iter()
            .map(|v| value_to_term(env, v))
            .collect::<Vec<_>>()
            .encode(env),
        Value::Map(entries) => {
            let keys: Vec<Term<'a>> = entries
                .iter()
                .map(|(k, _)| bytes_to_term(env, k.as_bytes()))
                .collect();
            let values: Vec<Term<'a>> =
                entries.iter().map(|(_, v)| value_to_term(env, v)).collect();
            Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| {
                // Duplicate keys (possible in hand-built values): the last one wins.
                keys.iter()
                    .zip(&values)
                    .fold(Term::map_new(env), |map, (k, v)| {
                        map.map_put(*k, *v).unwrap_or(map)
                    })
            })
        }
    }
}

/// A fresh binary holding `bytes`.
pub fn bytes_to_term<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut bin = NewBinary::new(env, bytes.len());
    bin.as_mut_slice().copy_from_slice(bytes);
    Binary::from(bin).to_term(env)
}
