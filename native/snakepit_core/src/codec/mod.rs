//! The value tree exchanged between the BEAM and Python, and its wire conventions.
//!
//! - [`Value`]: what an Elixir term becomes before it is sent, and what a Python result becomes
//!   before the NIF turns it back into a term.
//! - [`json`]: `Value` ↔ JSON bytes (integers of any size, non-finite floats via a marker object).
//! - [`etf`]: `Value` → Erlang external term format (replies with maps too big to build off a
//!   scheduler thread).
//! - [`wire`]: the contract §6.2 conventions on top of the generated protobuf types.

pub mod etf;
pub mod json;
pub mod path;
pub mod wire;

pub use json::{
    decode_json, encode_json, encode_json_limited, encode_json_pretty, DecodeError, EncodeError,
    MAX_DEPTH,
};
pub use path::{join_path, PathSegment};
pub use wire::{
    build_request, build_request_limited, chunk_payload, decode_response, python_error,
    python_error_from_status, CallSpec, ChunkPayload, InvalidResult, ResponseError, ToolResult,
};

/// A float JSON cannot carry as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialFloat {
    /// Not a number (`:nan`, `float('nan')`).
    Nan,
    /// Positive infinity (`:infinity`).
    Inf,
    /// Negative infinity (`:neg_infinity`).
    NegInf,
}

impl SpecialFloat {
    /// The marker string used on the wire (`"nan"`, `"inf"`, `"-inf"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialFloat::Nan => "nan",
            SpecialFloat::Inf => "inf",
            SpecialFloat::NegInf => "-inf",
        }
    }

    /// Parses a marker string produced by [`SpecialFloat::as_str`].
    pub fn from_marker(s: &str) -> Option<Self> {
        match s {
            "nan" => Some(SpecialFloat::Nan),
            "inf" => Some(SpecialFloat::Inf),
            "-inf" => Some(SpecialFloat::NegInf),
            _ => None,
        }
    }

    /// Classifies a non-finite `f64`; `None` for finite values.
    pub fn classify(f: f64) -> Option<Self> {
        if f.is_nan() {
            Some(SpecialFloat::Nan)
        } else if f == f64::INFINITY {
            Some(SpecialFloat::Inf)
        } else if f == f64::NEG_INFINITY {
            Some(SpecialFloat::NegInf)
        } else {
            None
        }
    }
}

/// A dynamically typed value, the common language of the NIF, the codec and the engine.
///
/// Map keys are strings (Elixir atom/integer keys are stringified by the NIF) and keep their
/// order, so a decoded Python dict is shown to Elixir in Python's order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `nil` / `null` / `None`.
    Nil,
    /// A boolean.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer outside `i64`, as decimal digits with an optional leading `-`.
    BigInt(String),
    /// A finite float.
    Float(f64),
    /// NaN or ±infinity.
    SpecialFloat(SpecialFloat),
    /// A UTF-8 string (an Elixir binary).
    Str(String),
    /// Raw bytes: never JSON-encodable; used for results that are not JSON and `binary_result`.
    Bytes(Vec<u8>),
    /// An ordered list.
    List(Vec<Value>),
    /// A string-keyed map in insertion order.
    Map(Vec<(String, Value)>),
}

impl Value {
    /// Shorthand for a string value.
    pub fn str(s: impl Into<String>) -> Self {
        Value::Str(s.into())
    }

    /// Looks a key up in a [`Value::Map`] (linear: maps here are small).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Builds a float value, routing non-finite floats to [`Value::SpecialFloat`].
    pub fn float(f: f64) -> Self {
        match SpecialFloat::classify(f) {
            Some(s) => Value::SpecialFloat(s),
            None => Value::Float(f),
        }
    }
}
