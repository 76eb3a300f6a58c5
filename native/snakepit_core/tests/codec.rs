//! Value ↔ JSON and the §6.2 request/response conventions.

use proptest::prelude::*;
use prost_types::Any;
use snakepit_core::codec::{
    build_request, build_request_limited, chunk_payload, decode_json, decode_response, encode_json,
    encode_json_limited, encode_json_pretty, python_error, python_error_from_status, CallSpec,
    ChunkPayload, InvalidResult, ResponseError, SpecialFloat, ToolResult, Value, MAX_DEPTH,
};
use snakepit_core::pb::ExecuteToolResponse;

fn json(v: &Value) -> String {
    String::from_utf8(encode_json(v).expect("encodable")).expect("utf8")
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

#[test]
fn encodes_scalars() {
    assert_eq!(json(&Value::Nil), "null");
    assert_eq!(json(&Value::Bool(true)), "true");
    assert_eq!(json(&Value::Int(-42)), "-42");
    assert_eq!(
        json(&Value::BigInt("123456789012345678901234567890".into())),
        "123456789012345678901234567890"
    );
    assert_eq!(json(&Value::str("a\"b\n")), r#""a\"b\n""#);
}

#[test]
fn floats_always_look_like_floats() {
    assert_eq!(json(&Value::Float(1.0)), "1.0");
    assert_eq!(json(&Value::Float(-0.5)), "-0.5");
    let big = json(&Value::Float(1e300));
    assert!(big.contains('e') || big.contains('.'), "{big}");
}

#[test]
fn special_floats_use_the_marker_object() {
    assert_eq!(
        json(&Value::SpecialFloat(SpecialFloat::Nan)),
        r#"{"__snakepit_float__":"nan"}"#
    );
    assert_eq!(
        json(&Value::Float(f64::INFINITY)),
        r#"{"__snakepit_float__":"inf"}"#
    );
    assert_eq!(
        json(&Value::SpecialFloat(SpecialFloat::NegInf)),
        r#"{"__snakepit_float__":"-inf"}"#
    );
    assert_eq!(
        decode_json(br#"[{"__snakepit_float__":"-inf"}]"#).unwrap(),
        Value::List(vec![Value::SpecialFloat(SpecialFloat::NegInf)])
    );
    // Not the marker: extra key or unknown tag.
    assert!(matches!(
        decode_json(br#"{"__snakepit_float__":"nan","x":1}"#).unwrap(),
        Value::Map(_)
    ));
    assert!(matches!(
        decode_json(br#"{"__snakepit_float__":"zero"}"#).unwrap(),
        Value::Map(_)
    ));
}

#[test]
fn bytes_are_rejected_with_their_path() {
    let v = map(vec![(
        "a",
        map(vec![(
            "b",
            Value::List(vec![Value::Nil, Value::Nil, Value::Bytes(vec![0xff])]),
        )]),
    )]);
    let err = encode_json(&v).unwrap_err();
    assert_eq!(err.path, "a.b[2]");
    assert!(err.message.contains("binary_parameters"), "{}", err.message);
    let top = encode_json(&Value::Bytes(vec![1])).unwrap_err();
    assert_eq!(top.path, "");
}

#[test]
fn malformed_big_integers_are_rejected() {
    let err = encode_json(&Value::List(vec![Value::BigInt("12a".into())])).unwrap_err();
    assert_eq!(err.path, "[0]");
}

#[test]
fn decodes_integers_of_any_size() {
    assert_eq!(
        decode_json(b"9223372036854775807").unwrap(),
        Value::Int(i64::MAX)
    );
    assert_eq!(
        decode_json(b"-9223372036854775808").unwrap(),
        Value::Int(i64::MIN)
    );
    assert_eq!(
        decode_json(b"9223372036854775808").unwrap(),
        Value::BigInt("9223372036854775808".into())
    );
    assert_eq!(
        decode_json(b"-99999999999999999999999").unwrap(),
        Value::BigInt("-99999999999999999999999".into())
    );
    assert_eq!(decode_json(b"5.0").unwrap(), Value::Float(5.0));
    assert_eq!(decode_json(b"1e2").unwrap(), Value::Float(100.0));
    assert_eq!(
        decode_json(b"1e400").unwrap(),
        Value::SpecialFloat(SpecialFloat::Inf)
    );
}

#[test]
fn decoding_keeps_key_order() {
    let v = decode_json(br#"{"z":1,"a":2,"m":{"y":3,"b":4}}"#).unwrap();
    assert_eq!(
        v,
        map(vec![
            ("z", Value::Int(1)),
            ("a", Value::Int(2)),
            ("m", map(vec![("y", Value::Int(3)), ("b", Value::Int(4))]))
        ])
    );
}

#[test]
fn decode_rejects_invalid_json() {
    assert!(decode_json(b"{").is_err());
    assert!(decode_json(b"NaN").is_err());
}

#[test]
fn request_parameters_are_raw_json_in_string_value_anys() {
    let req = build_request(CallSpec {
        tool_name: "add".into(),
        args: vec![
            ("a".into(), Value::Int(1)),
            ("b".into(), Value::List(vec![Value::Float(2.5)])),
        ],
        binary_parameters: vec![("blob".into(), vec![0, 255])],
        metadata: vec![("correlation_id".into(), "c-1".into())],
        stream: true,
    })
    .unwrap();
    assert_eq!(req.tool_name, "add");
    assert!(req.stream);
    assert_eq!(req.session_id, "");
    let a = &req.parameters["a"];
    assert_eq!(
        a.type_url,
        "type.googleapis.com/google.protobuf.StringValue"
    );
    assert_eq!(a.value, b"1");
    assert_eq!(req.parameters["b"].value, b"[2.5]");
    assert_eq!(req.binary_parameters["blob"], vec![0, 255]);
    assert_eq!(req.metadata["correlation_id"], "c-1");
}

#[test]
fn request_errors_name_the_argument() {
    let err = build_request(CallSpec {
        tool_name: "t".into(),
        args: vec![(
            "payload".into(),
            map(vec![("x", Value::List(vec![Value::Bytes(vec![1])]))]),
        )],
        ..CallSpec::default()
    })
    .unwrap_err();
    assert_eq!(err.path, "payload.x[0]");
}

#[test]
fn the_size_bound_is_exact_and_names_the_path() {
    let v = map(vec![(
        "a",
        Value::List(vec![Value::str("xy"), Value::Int(7)]),
    )]);
    let exact = json(&v);
    assert_eq!(exact, r#"{"a":["xy",7]}"#);
    assert_eq!(
        encode_json_limited(&v, "arg", exact.len()).expect("fits"),
        exact.as_bytes()
    );
    let err = encode_json_limited(&v, "arg", exact.len() - 1).unwrap_err();
    assert!(err.message.contains("exceed"), "{}", err.message);
    assert!(err.message.contains("max_message_bytes"), "{}", err.message);
    assert!(err.path.starts_with("arg"), "{}", err.path);
    // A big string is refused before it is copied, at its own path.
    let big = map(vec![("k", Value::Str("z".repeat(1 << 20)))]);
    let err = encode_json_limited(&big, "p", 1_000).unwrap_err();
    assert_eq!(err.path, "p.k");
}

#[test]
fn escaping_counts_towards_the_bound() {
    // 10 control characters take 6 bytes each once escaped.
    let v = Value::Str("\u{1}".repeat(10));
    let exact = json(&v).len();
    assert_eq!(exact, 62);
    assert!(encode_json_limited(&v, "", exact).is_ok());
    assert!(encode_json_limited(&v, "", 20).is_err());
}

#[test]
fn requests_over_the_bound_are_refused_early() {
    let spec = |blob: usize, text: usize| CallSpec {
        tool_name: "t".into(),
        args: vec![
            ("a".into(), Value::Int(1)),
            ("b".into(), Value::Str("x".repeat(text))),
        ],
        binary_parameters: vec![("blob".into(), vec![0; blob])],
        ..CallSpec::default()
    };
    // 100 raw bytes + "1" + quoted 10 bytes = 113.
    assert!(build_request_limited(spec(100, 10), 113).is_ok());
    let err = build_request_limited(spec(100, 11), 113).unwrap_err();
    assert_eq!(err.path, "b");
    let err = build_request_limited(spec(200, 0), 113).unwrap_err();
    assert_eq!(err.path, "binary_parameters.blob");
    assert!(
        err.message.contains("max_message_bytes (113 bytes)"),
        "{}",
        err.message
    );
}

#[test]
fn nesting_is_bounded() {
    let nest = |levels: usize| {
        let mut v = Value::Nil;
        for _ in 0..levels {
            v = Value::List(vec![v]);
        }
        v
    };
    assert!(encode_json(&nest(MAX_DEPTH)).is_ok());
    let err = encode_json(&nest(MAX_DEPTH + 1)).unwrap_err();
    assert!(err.message.contains("nested deeper"), "{}", err.message);
    // Deeper values are refused at the bound, not walked to the bottom.
    assert!(encode_json(&nest(2_000)).is_err());
}

fn ok_response(result: &[u8], binary: &[u8]) -> ExecuteToolResponse {
    ExecuteToolResponse {
        success: true,
        result: Some(Any {
            type_url: "type.googleapis.com/snakepit.map".into(),
            value: result.to_vec(),
        }),
        binary_result: binary.to_vec(),
        ..Default::default()
    }
}

#[test]
fn decodes_successful_results() {
    assert_eq!(
        decode_response(ok_response(br#"{"x":1}"#, b"")),
        Ok(ToolResult::Value(map(vec![("x", Value::Int(1))])))
    );
    // Not JSON: raw bytes, as upstream.
    assert_eq!(
        decode_response(ok_response(b"not json", b"")),
        Ok(ToolResult::Value(Value::Bytes(b"not json".to_vec())))
    );
    // No result at all.
    let empty = ExecuteToolResponse {
        success: true,
        ..Default::default()
    };
    assert_eq!(decode_response(empty), Ok(ToolResult::Value(Value::Nil)));
}

#[test]
fn binary_results_carry_meta_only_when_a_non_empty_map() {
    assert_eq!(
        decode_response(ok_response(b"{}", b"\x00\x01")),
        Ok(ToolResult::Binary {
            bytes: vec![0, 1],
            meta: None
        })
    );
    assert_eq!(
        decode_response(ok_response(br#"{"shape":[2]}"#, b"\x00")),
        Ok(ToolResult::Binary {
            bytes: vec![0],
            meta: Some(map(vec![("shape", Value::List(vec![Value::Int(2)]))]))
        })
    );
}

#[test]
fn decodes_python_errors() {
    let resp = ExecuteToolResponse {
        success: false,
        error_message: r#"{"type":"ValueError","message":"bad","traceback":"tb"}"#.into(),
        ..Default::default()
    };
    let ResponseError::Python(err) = decode_response(resp).unwrap_err() else {
        panic!("not a Python error")
    };
    assert_eq!(err.get("type"), Some(&Value::str("ValueError")));
    assert_eq!(err.get("traceback"), Some(&Value::str("tb")));

    let raw = python_error("boom");
    assert_eq!(
        raw,
        map(vec![
            ("type", Value::str("UnknownError")),
            ("message", Value::str("boom"))
        ])
    );
    assert_eq!(
        python_error("[1]").get("type"),
        Some(&Value::str("UnknownError"))
    );
}

#[test]
fn recognises_python_errors_in_stream_statuses() {
    assert!(python_error_from_status(r#"{"type":"KeyError","message":"k"}"#).is_some());
    assert!(python_error_from_status(r#"{"message":"k"}"#).is_none());
    assert!(python_error_from_status("transport is closing").is_none());
}

#[test]
fn chunk_payloads_are_classified() {
    assert_eq!(chunk_payload(vec![]), Ok(ChunkPayload::Empty));
    assert_eq!(
        chunk_payload(br#"{"i":1}"#.to_vec()),
        Ok(ChunkPayload::Json(map(vec![("i", Value::Int(1))])))
    );
    assert_eq!(
        chunk_payload(b"[1]".to_vec()),
        Ok(ChunkPayload::Json(Value::List(vec![Value::Int(1)])))
    );
    // Python sends str chunks as UTF-8, not JSON.
    assert_eq!(
        chunk_payload(b"hello".to_vec()),
        Ok(ChunkPayload::Raw(b"hello".to_vec()))
    );
}

/// `levels` nested JSON arrays around `1`.
fn nested_json(levels: usize) -> Vec<u8> {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels)).into_bytes()
}

#[test]
fn results_nested_too_deep_are_errors_not_strings() {
    // 128 levels decode (as deep as the NIF accepts arguments, so an echo round-trips); 129
    // and more are refused with a clear error (never raw bytes).
    let deepest = (1..MAX_DEPTH).fold(Value::List(vec![Value::Int(1)]), |v, _| {
        Value::List(vec![v])
    });
    assert_eq!(encode_json(&deepest).unwrap(), nested_json(MAX_DEPTH));
    assert_eq!(
        decode_response(ok_response(&nested_json(128), b"")),
        Ok(ToolResult::Value(deepest))
    );
    // Brackets inside strings do not count.
    let in_string = format!("[\"{}\\\"{}\"]", "[".repeat(300), "{".repeat(300));
    assert!(matches!(
        decode_json(in_string.as_bytes()),
        Ok(Value::List(_))
    ));
    for levels in [129, 130, 10_000] {
        assert_eq!(
            decode_response(ok_response(&nested_json(levels), b"")),
            Err(ResponseError::Invalid(InvalidResult {
                path: "result".into(),
                message: "result nests deeper than 128 levels".into(),
            })),
            "{levels}"
        );
    }
    let deep_meta = format!("{{\"m\":{}}}", String::from_utf8(nested_json(200)).unwrap());
    assert!(matches!(
        decode_response(ok_response(deep_meta.as_bytes(), b"\x00")),
        Err(ResponseError::Invalid(_))
    ));
    assert!(matches!(
        chunk_payload(nested_json(128)),
        Ok(ChunkPayload::Json(_))
    ));
    assert_eq!(
        chunk_payload(nested_json(130)),
        Err(InvalidResult {
            path: "chunk".into(),
            message: "chunk nests deeper than 128 levels".into(),
        })
    );
    // Other undecodable bytes stay raw.
    assert_eq!(
        decode_response(ok_response(b"[[[1", b"")),
        Ok(ToolResult::Value(Value::Bytes(b"[[[1".to_vec())))
    );
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        // Integers just outside i64 and far outside it.
        any::<i128>()
            .prop_filter("outside i64", |i| i64::try_from(*i).is_err())
            .prop_map(|i| Value::BigInt(i.to_string())),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Float),
        prop_oneof![
            Just(SpecialFloat::Nan),
            Just(SpecialFloat::Inf),
            Just(SpecialFloat::NegInf)
        ]
        .prop_map(Value::SpecialFloat),
        any::<String>().prop_map(Value::Str),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            // Unique keys (JSON objects keep the last duplicate); the `k` prefix keeps the
            // float marker key out.
            prop::collection::vec(("[a-z0-9_]{0,6}", inner), 0..8).prop_map(|entries| {
                let mut seen = std::collections::HashSet::new();
                Value::Map(
                    entries
                        .into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .map(|(k, v)| (format!("k{k}"), v))
                        .collect(),
                )
            }),
        ]
    })
}

proptest! {
    #[test]
    fn json_round_trip(v in value()) {
        let bytes = encode_json(&v).expect("encodable");
        let back = decode_json(&bytes).expect("decodable");
        prop_assert_eq!(back, v);
    }
}

#[test]
fn pretty_encoding_keeps_order_and_exact_numbers() {
    let v = map(vec![
        ("z", Value::BigInt("123456789012345678901234567890".into())),
        ("a", Value::List(vec![Value::Float(0.1), Value::Nil])),
    ]);
    let text = String::from_utf8(encode_json_pretty(&v).expect("encodable")).expect("utf8");
    assert_eq!(
        text,
        "{\n  \"z\": 123456789012345678901234567890,\n  \"a\": [\n    0.1,\n    null\n  ]\n}"
    );
    assert_eq!(decode_json(text.as_bytes()), Ok(v));
    // The deepest value the compact encoder accepts is laid out too.
    let mut deep = Value::Nil;
    for _ in 0..MAX_DEPTH {
        deep = Value::List(vec![deep]);
    }
    assert!(encode_json_pretty(&deep).is_ok());
    assert!(encode_json_pretty(&Value::Bytes(vec![1])).is_err());
}
