//! `json_decode/1` and `json_encode/2`: JSON for the few texts the Elixir side reads or writes
//! itself (a worker's start-up report, Python error payloads, bench results). The project has
//! no Hex dependencies (no Jason) and Elixir 1.14 has no `JSON` module, so serde_json does it,
//! with the same value mapping as call arguments and results. Both run on a normal scheduler
//! (the texts are small) and charge the caller's timeslice for the bytes, as call arguments do.

use rustler::types::atom;
use rustler::{Binary, Encoder, Env, Term};
use snakepit_core::codec::{decode_json, encode_json, encode_json_pretty};

use crate::nifs::charge_bytes;
use crate::term_codec::{bytes_to_term, term_to_value, value_to_term, Budget, InvalidParameter};

/// `json_decode(binary)`: `{:ok, term} | {:error, message}`. Objects become maps with string
/// keys, `null` nil, integers of any size integers.
#[rustler::nif]
fn json_decode<'a>(env: Env<'a>, text: Binary<'a>) -> Term<'a> {
    charge_bytes(env, text.len());
    match decode_json(text.as_slice()) {
        Ok(value) => (atom::ok(), value_to_term(env, &value)).encode(env),
        Err(e) => (atom::error(), e.0).encode(env),
    }
}

/// `json_encode(term, pretty)`: `{:ok, binary} | {:error, {path, message}}`, the path naming
/// the value that JSON cannot carry (a tuple, a pid, invalid UTF-8, ...).
#[rustler::nif]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>, pretty: bool) -> Term<'a> {
    let mut budget = Budget::new(usize::MAX);
    let encoded = term_to_value(term, "", &mut budget).and_then(|value| {
        let bytes = if pretty {
            encode_json_pretty(&value)
        } else {
            encode_json(&value)
        };
        bytes.map_err(|e| InvalidParameter {
            path: e.path,
            message: e.message,
        })
    });
    match encoded {
        Ok(bytes) => {
            charge_bytes(env, bytes.len());
            (atom::ok(), bytes_to_term(env, &bytes)).encode(env)
        }
        Err(e) => (atom::error(), (e.path, e.message)).encode(env),
    }
}
