//! `Value` → Erlang External Term Format (the bytes `:erlang.binary_to_term/1` reads).
//!
//! Why: a map with more than 128 keys built in a process-independent environment and sent from
//! a non-scheduler thread crashes OTP 25.1 .. 27.2 (erlang/otp#8208). The NIF therefore sends a
//! reply that contains such a map as one binary in this format, which the caller decodes on its
//! own scheduler. The terms are the ones the NIF builds directly: strings and bytes are binaries,
//! map keys strings, integers of any size integers, `nil`/`true`/`false` and the special floats
//! (`:nan`, `:infinity`, `:neg_infinity`) atoms.

use std::collections::HashMap;

use super::{SpecialFloat, Value};

/// Most keys a map may have and still be built directly in a NIF environment off the schedulers
/// (a "flatmap"; bigger maps are hash maps, erlang/otp#8208).
pub const MAX_FLATMAP_KEYS: usize = 128;

/// Whether `value` holds, at any depth, a map with more than [`MAX_FLATMAP_KEYS`] entries.
pub fn has_large_map(value: &Value) -> bool {
    match value {
        Value::Map(entries) => {
            entries.len() > MAX_FLATMAP_KEYS || entries.iter().any(|(_, v)| has_large_map(v))
        }
        Value::List(items) => items.iter().any(has_large_map),
        _ => false,
    }
}

const VERSION: u8 = 131;
const NEW_FLOAT_EXT: u8 = 70;
const SMALL_INTEGER_EXT: u8 = 97;
const INTEGER_EXT: u8 = 98;
const SMALL_TUPLE_EXT: u8 = 104;
const LARGE_TUPLE_EXT: u8 = 105;
const NIL_EXT: u8 = 106;
const LIST_EXT: u8 = 108;
const BINARY_EXT: u8 = 109;
const SMALL_BIG_EXT: u8 = 110;
const LARGE_BIG_EXT: u8 = 111;
const MAP_EXT: u8 = 116;
const SMALL_ATOM_UTF8_EXT: u8 = 119;
const ATOM_UTF8_EXT: u8 = 118;

/// Writes one term in external format. Compound terms are written as a header followed by their
/// elements: `tuple(2); atom("ok"); value(v)` is `{:ok, v}`.
#[derive(Debug, Clone)]
pub struct EtfWriter {
    out: Vec<u8>,
}

impl Default for EtfWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl EtfWriter {
    /// An empty term (just the version byte).
    pub fn new() -> Self {
        EtfWriter { out: vec![VERSION] }
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    /// An atom (UTF-8 name; names here are short fixed words).
    pub fn atom(&mut self, name: &str) -> &mut Self {
        match u8::try_from(name.len()) {
            Ok(n) => {
                self.out.push(SMALL_ATOM_UTF8_EXT);
                self.out.push(n);
            }
            Err(_) => {
                self.out.push(ATOM_UTF8_EXT);
                self.out
                    .extend_from_slice(&u16_len(name.len()).to_be_bytes());
            }
        }
        self.out.extend_from_slice(name.as_bytes());
        self
    }

    /// The header of a tuple of `arity` elements (write them next).
    pub fn tuple(&mut self, arity: usize) -> &mut Self {
        match u8::try_from(arity) {
            Ok(n) => {
                self.out.push(SMALL_TUPLE_EXT);
                self.out.push(n);
            }
            Err(_) => {
                self.out.push(LARGE_TUPLE_EXT);
                self.out.extend_from_slice(&u32_len(arity).to_be_bytes());
            }
        }
        self
    }

    /// A binary.
    pub fn binary(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.push(BINARY_EXT);
        self.out
            .extend_from_slice(&u32_len(bytes.len()).to_be_bytes());
        self.out.extend_from_slice(bytes);
        self
    }

    /// `true` / `false`.
    pub fn boolean(&mut self, b: bool) -> &mut Self {
        self.atom(if b { "true" } else { "false" })
    }

    /// An integer.
    pub fn int(&mut self, i: i64) -> &mut Self {
        if (0..=255).contains(&i) {
            self.out.push(SMALL_INTEGER_EXT);
            self.out.push(i as u8);
        } else if let Ok(i) = i32::try_from(i) {
            self.out.push(INTEGER_EXT);
            self.out.extend_from_slice(&i.to_be_bytes());
        } else {
            let mut magnitude = i.unsigned_abs().to_le_bytes().to_vec();
            while magnitude.last() == Some(&0) {
                magnitude.pop();
            }
            self.big(i < 0, &magnitude);
        }
        self
    }

    /// An integer given as decimal digits with an optional sign (a [`Value::BigInt`]); anything
    /// else is written as a binary holding the text, as the NIF does.
    pub fn decimal(&mut self, digits: &str) -> &mut Self {
        let (negative, body) = match digits.as_bytes().first() {
            Some(b'-') => (true, &digits[1..]),
            Some(b'+') => (false, &digits[1..]),
            _ => (false, digits),
        };
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
            return self.binary(digits.as_bytes());
        }
        if let Ok(i) = digits.parse::<i64>() {
            return self.int(i);
        }
        let magnitude = decimal_to_le_bytes(body);
        if magnitude.is_empty() {
            return self.int(0);
        }
        self.big(negative, &magnitude);
        self
    }

    fn big(&mut self, negative: bool, magnitude_le: &[u8]) {
        match u8::try_from(magnitude_le.len()) {
            Ok(n) => {
                self.out.push(SMALL_BIG_EXT);
                self.out.push(n);
            }
            Err(_) => {
                self.out.push(LARGE_BIG_EXT);
                self.out
                    .extend_from_slice(&u32_len(magnitude_le.len()).to_be_bytes());
            }
        }
        self.out.push(u8::from(negative));
        self.out.extend_from_slice(magnitude_le);
    }

    /// A float (finite: non-finite values are the special-float atoms).
    pub fn float(&mut self, f: f64) -> &mut Self {
        match SpecialFloat::classify(f) {
            Some(s) => self.special(s),
            None => {
                self.out.push(NEW_FLOAT_EXT);
                self.out.extend_from_slice(&f.to_bits().to_be_bytes());
                self
            }
        }
    }

    fn special(&mut self, s: SpecialFloat) -> &mut Self {
        self.atom(match s {
            SpecialFloat::Nan => "nan",
            SpecialFloat::Inf => "infinity",
            SpecialFloat::NegInf => "neg_infinity",
        })
    }

    /// A list of values.
    pub fn list(&mut self, items: &[Value]) -> &mut Self {
        if items.is_empty() {
            self.out.push(NIL_EXT);
            return self;
        }
        self.out.push(LIST_EXT);
        self.out
            .extend_from_slice(&u32_len(items.len()).to_be_bytes());
        for item in items {
            self.value(item);
        }
        self.out.push(NIL_EXT);
        self
    }

    /// A map with string keys; for a repeated key the last entry wins (as the NIF's direct path,
    /// and because `binary_to_term` refuses duplicate keys).
    pub fn map(&mut self, entries: &[(String, Value)]) -> &mut Self {
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        for (i, (k, _)) in entries.iter().enumerate() {
            last.insert(k.as_str(), i);
        }
        self.out.push(MAP_EXT);
        self.out
            .extend_from_slice(&u32_len(last.len()).to_be_bytes());
        for (i, (k, v)) in entries.iter().enumerate() {
            if last.get(k.as_str()) == Some(&i) {
                self.binary(k.as_bytes());
                self.value(v);
            }
        }
        self
    }

    /// Any value (see the module docs for the terms).
    pub fn value(&mut self, value: &Value) -> &mut Self {
        match value {
            Value::Nil => self.atom("nil"),
            Value::Bool(b) => self.boolean(*b),
            Value::Int(i) => self.int(*i),
            Value::BigInt(digits) => self.decimal(digits),
            Value::Float(f) => self.float(*f),
            Value::SpecialFloat(s) => self.special(*s),
            Value::Str(s) => self.binary(s.as_bytes()),
            Value::Bytes(b) => self.binary(b),
            Value::List(items) => self.list(items),
            Value::Map(entries) => self.map(entries),
        }
    }
}

/// `value` alone as a complete external term.
pub fn value_to_etf(value: &Value) -> Vec<u8> {
    let mut w = EtfWriter::new();
    w.value(value);
    w.finish()
}

/// Little-endian base-256 magnitude of ASCII decimal digits (no leading zero bytes; empty for 0).
fn decimal_to_le_bytes(digits: &str) -> Vec<u8> {
    // Base 10^9 chunks into base 2^32 limbs, then bytes.
    let mut limbs: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 1);
    let bytes = digits.as_bytes();
    let head = bytes.len() % 9;
    let mut chunks: Vec<&[u8]> = Vec::with_capacity(bytes.len() / 9 + 1);
    if head > 0 {
        chunks.push(&bytes[..head]);
    }
    chunks.extend(bytes[head..].chunks(9));
    for chunk in chunks {
        let mut mul: u64 = 1;
        let mut add: u64 = 0;
        for &d in chunk {
            mul *= 10;
            add = add * 10 + u64::from(d - b'0');
        }
        // limbs = limbs * mul + add
        let mut carry = add;
        for limb in limbs.iter_mut() {
            let x = u64::from(*limb) * mul + carry;
            *limb = x as u32;
            carry = x >> 32;
        }
        while carry > 0 {
            limbs.push(carry as u32);
            carry >>= 32;
        }
    }
    let mut out: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    while out.last() == Some(&0) {
        out.pop();
    }
    out
}

/// Lengths in the format are 32-bit; nothing this large fits in a reply
/// (`max_message_bytes`), so exceeding it is a bug (the NIF turns the panic into an error reply).
fn u32_len(n: usize) -> u32 {
    u32::try_from(n).expect("term too large for the external term format")
}

fn u16_len(n: usize) -> u16 {
    u16::try_from(n).expect("atom name too long for the external term format")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etf(v: &Value) -> Vec<u8> {
        value_to_etf(v)
    }

    #[test]
    fn scalars() {
        assert_eq!(etf(&Value::Nil), [131, 119, 3, b'n', b'i', b'l']);
        assert_eq!(
            etf(&Value::Bool(true)),
            [131, 119, 4, b't', b'r', b'u', b'e']
        );
        assert_eq!(
            etf(&Value::Bool(false)),
            [131, 119, 5, b'f', b'a', b'l', b's', b'e']
        );
        assert_eq!(etf(&Value::Int(0)), [131, 97, 0]);
        assert_eq!(etf(&Value::Int(255)), [131, 97, 255]);
        assert_eq!(etf(&Value::Int(256)), [131, 98, 0, 0, 1, 0]);
        assert_eq!(etf(&Value::Int(-1)), [131, 98, 255, 255, 255, 255]);
        assert_eq!(etf(&Value::Int(i32::MIN as i64)), [131, 98, 0x80, 0, 0, 0]);
        // 2^31: the first positive integer outside INTEGER_EXT.
        assert_eq!(etf(&Value::Int(1 << 31)), [131, 110, 4, 0, 0, 0, 0, 0x80]);
        assert_eq!(
            etf(&Value::Int(-(1 << 31) - 1)),
            [131, 110, 4, 1, 1, 0, 0, 0x80]
        );
        assert_eq!(
            etf(&Value::Int(i64::MAX)),
            [131, 110, 8, 0, 255, 255, 255, 255, 255, 255, 255, 0x7f]
        );
        assert_eq!(
            etf(&Value::Int(i64::MIN)),
            [131, 110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0x80]
        );
        assert_eq!(
            etf(&Value::Float(1.5)),
            [131, 70, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            etf(&Value::Float(-2.0)),
            [131, 70, 0xc0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            etf(&Value::SpecialFloat(SpecialFloat::Nan)),
            [131, 119, 3, b'n', b'a', b'n']
        );
        assert_eq!(
            etf(&Value::SpecialFloat(SpecialFloat::Inf)),
            [131, 119, 8, b'i', b'n', b'f', b'i', b'n', b'i', b't', b'y']
        );
        let mut neg = vec![131, 119, 12];
        neg.extend_from_slice(b"neg_infinity");
        assert_eq!(etf(&Value::SpecialFloat(SpecialFloat::NegInf)), neg);
        assert_eq!(
            etf(&Value::str("hé")),
            [131, 109, 0, 0, 0, 3, b'h', 0xc3, 0xa9]
        );
        assert_eq!(etf(&Value::str("")), [131, 109, 0, 0, 0, 0]);
        assert_eq!(
            etf(&Value::Bytes(vec![0, 255])),
            [131, 109, 0, 0, 0, 2, 0, 255]
        );
    }

    #[test]
    fn bigints() {
        // 2^64 = 18446744073709551616: magnitude 00*8 01.
        assert_eq!(
            etf(&Value::BigInt("18446744073709551616".into())),
            [131, 110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            etf(&Value::BigInt("-18446744073709551616".into())),
            [131, 110, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        // 10^30 = 0x0c9f2c9cd04674edea40000000.
        assert_eq!(
            etf(&Value::BigInt("1000000000000000000000000000000".into())),
            [
                131, 110, 13, 0, 0x00, 0x00, 0x00, 0x40, 0xea, 0xed, 0x74, 0x46, 0xd0, 0x9c, 0x2c,
                0x9f, 0x0c
            ]
        );
        // Digits that fit i64 are small integers; leading zeros and '+' are accepted.
        assert_eq!(etf(&Value::BigInt("5".into())), [131, 97, 5]);
        assert_eq!(etf(&Value::BigInt("-0".into())), [131, 97, 0]);
        assert_eq!(etf(&Value::BigInt("+300".into())), [131, 98, 0, 0, 1, 44]);
        assert_eq!(
            etf(&Value::BigInt(
                "000000000000000000000018446744073709551616".into()
            )),
            [131, 110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        // Not digits: a binary, like the direct path.
        assert_eq!(
            etf(&Value::BigInt("1x".into())),
            [131, 109, 0, 0, 0, 2, b'1', b'x']
        );
        assert_eq!(
            etf(&Value::BigInt("-".into())),
            [131, 109, 0, 0, 0, 1, b'-']
        );
        // 2^2048: 257 magnitude bytes → LARGE_BIG_EXT.
        let two_2048 = pow2_decimal(2048);
        let out = etf(&Value::BigInt(format!("-{two_2048}")));
        let mut expected = vec![131, 111, 0, 0, 1, 1, 1];
        expected.extend(vec![0u8; 256]);
        expected.push(1);
        assert_eq!(out, expected);
        // 2^2032: 255 magnitude bytes, the most SMALL_BIG_EXT holds.
        let mut expected = vec![131, 110, 255, 0];
        expected.extend(vec![0u8; 254]);
        expected.push(1);
        assert_eq!(etf(&Value::BigInt(pow2_decimal(2032))), expected);
    }

    /// 2^n in decimal, by repeated doubling of a digit vector.
    fn pow2_decimal(n: u32) -> String {
        let mut digits = vec![1u8]; // little-endian decimal digits
        for _ in 0..n {
            let mut carry = 0;
            for d in digits.iter_mut() {
                let x = *d * 2 + carry;
                *d = x % 10;
                carry = x / 10;
            }
            if carry > 0 {
                digits.push(carry);
            }
        }
        digits.iter().rev().map(|d| char::from(b'0' + d)).collect()
    }

    #[test]
    fn decimal_conversion_matches_u128() {
        for x in [
            0u128,
            1,
            9,
            10,
            999_999_999,
            1_000_000_000,
            u64::MAX as u128,
            u64::MAX as u128 + 1,
            u128::MAX,
            123_456_789_012_345_678_901_234_567_890,
        ] {
            let mut expected = x.to_le_bytes().to_vec();
            while expected.last() == Some(&0) {
                expected.pop();
            }
            assert_eq!(decimal_to_le_bytes(&x.to_string()), expected, "{x}");
        }
    }

    #[test]
    fn compounds() {
        assert_eq!(etf(&Value::List(vec![])), [131, 106]);
        assert_eq!(
            etf(&Value::List(vec![Value::Int(1), Value::Nil])),
            [131, 108, 0, 0, 0, 2, 97, 1, 119, 3, b'n', b'i', b'l', 106]
        );
        assert_eq!(etf(&Value::Map(vec![])), [131, 116, 0, 0, 0, 0]);
        assert_eq!(
            etf(&Value::Map(vec![("a".into(), Value::Int(1))])),
            [131, 116, 0, 0, 0, 1, 109, 0, 0, 0, 1, b'a', 97, 1]
        );
        // Duplicate keys: the last one wins, in its position.
        assert_eq!(
            etf(&Value::Map(vec![
                ("a".into(), Value::Int(1)),
                ("b".into(), Value::Int(2)),
                ("a".into(), Value::Int(3)),
            ])),
            [131, 116, 0, 0, 0, 2, 109, 0, 0, 0, 1, b'b', 97, 2, 109, 0, 0, 0, 1, b'a', 97, 3]
        );
        let mut w = EtfWriter::new();
        w.tuple(2).atom("ok").tuple(3).atom("binary").binary(b"x");
        w.value(&Value::Map(vec![]));
        assert_eq!(
            w.finish(),
            [
                131, 104, 2, 119, 2, b'o', b'k', 104, 3, 119, 6, b'b', b'i', b'n', b'a', b'r',
                b'y', 109, 0, 0, 0, 1, b'x', 116, 0, 0, 0, 0
            ]
        );
        let mut w = EtfWriter::new();
        w.tuple(300);
        assert_eq!(w.finish(), [131, 105, 0, 0, 1, 44]);
        let long = "a".repeat(300);
        let mut w = EtfWriter::new();
        w.atom(&long);
        assert_eq!(&w.finish()[..4], &[131, 118, 1, 44]);
    }

    #[test]
    fn large_maps_are_found_at_any_depth() {
        let map = |n: usize| Value::Map((0..n).map(|i| (format!("k{i}"), Value::Int(1))).collect());
        assert!(!has_large_map(&map(128)));
        assert!(has_large_map(&map(129)));
        assert!(has_large_map(&Value::List(vec![Value::Nil, map(129)])));
        assert!(has_large_map(&Value::Map(vec![(
            "a".into(),
            Value::List(vec![map(1000)])
        )])));
        assert!(!has_large_map(&Value::List(vec![map(128); 3])));
        assert!(!has_large_map(&Value::List(vec![Value::Int(1); 100_000])));
    }
}
