//! Contract §6.2 conventions on top of the generated protobuf types.
//!
//! - Parameters: one `Any{type_url: StringValue, value: <raw JSON bytes>}` per argument (the Any
//!   carries JSON, not a serialized `StringValue`: that is what Python decodes).
//! - Results: `result.value` is JSON (any `type_url`); a non-empty `binary_result` wins.
//! - Errors: `error_message` is a JSON object (`type`, `message`, `traceback`, ...).

use std::collections::HashMap;

use prost_types::Any;

use super::json::{decode_json, encode_bounded, too_large_message, EncodeError, MAX_DEPTH};
use super::Value;
use crate::pb::{ExecuteToolRequest, ExecuteToolResponse};

/// `type_url` of every parameter `Any`.
pub const PARAM_TYPE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";

/// Everything needed to build one `ExecuteToolRequest`, except the session id, which is the
/// serving worker's and so is only known at dispatch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallSpec {
    /// The command (`tool_name`).
    pub tool_name: String,
    /// Arguments, each JSON-encoded into its own parameter.
    pub args: Vec<(String, Value)>,
    /// Raw byte arguments (`binary_parameters`), sent as is.
    pub binary_parameters: Vec<(String, Vec<u8>)>,
    /// Request metadata (`correlation_id`, ...).
    pub metadata: Vec<(String, String)>,
    /// Streaming call (`ExecuteStreamingTool`).
    pub stream: bool,
}

/// Encodes the arguments and builds the request. The error path starts with the argument name.
pub fn build_request(spec: CallSpec) -> Result<ExecuteToolRequest, EncodeError> {
    build_request_limited(spec, usize::MAX)
}

/// Like [`build_request`], but refuses a call whose payload (the raw `binary_parameters` plus the
/// JSON of every argument) exceeds `max_bytes`, as soon as that is known: the binary parameters
/// are measured first, then the arguments are encoded in order, each against what is left, so an
/// oversized call costs at most about `max_bytes` of encoding. The error names the argument
/// (`"name"`, `"name.key[3]"`) or binary parameter (`"binary_parameters.name"`) that crossed the
/// bound. The protobuf envelope is not counted (the transport checks the exact size).
pub fn build_request_limited(
    spec: CallSpec,
    max_bytes: usize,
) -> Result<ExecuteToolRequest, EncodeError> {
    let mut used: usize = 0;
    for (name, bytes) in &spec.binary_parameters {
        used = used.saturating_add(bytes.len());
        if used > max_bytes {
            return Err(EncodeError {
                path: format!("binary_parameters.{name}"),
                message: too_large_message(max_bytes),
            });
        }
    }
    let mut parameters = HashMap::with_capacity(spec.args.len());
    for (name, value) in &spec.args {
        let json = encode_bounded(value, name, max_bytes.saturating_sub(used), max_bytes)?;
        used = used.saturating_add(json.len());
        parameters.insert(
            name.clone(),
            Any {
                type_url: PARAM_TYPE_URL.to_owned(),
                value: json,
            },
        );
    }
    Ok(ExecuteToolRequest {
        session_id: String::new(),
        tool_name: spec.tool_name,
        parameters,
        metadata: spec.metadata.into_iter().collect(),
        stream: spec.stream,
        binary_parameters: spec.binary_parameters.into_iter().collect(),
    })
}

/// A successful tool result.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolResult {
    /// The decoded `result` (raw [`Value::Bytes`] when it is not JSON, as upstream).
    Value(Value),
    /// `binary_result` was set: Elixir gets `{:binary, bytes}`, or `{:binary, bytes, meta}` when
    /// the JSON result is a non-empty map.
    Binary {
        /// The raw payload.
        bytes: Vec<u8>,
        /// The decoded `result` when it is a non-empty map.
        meta: Option<Value>,
    },
}

/// A reply Elixir cannot be given as a term: `{:invalid_parameter, path, message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidResult {
    /// `"result"` or `"chunk"`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl InvalidResult {
    fn too_deep(path: &str) -> Self {
        InvalidResult {
            path: path.to_owned(),
            message: format!("{path} nests deeper than {MAX_DEPTH} levels"),
        }
    }
}

/// Why a response is not a result.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseError {
    /// The tool raised: Python's error payload (a [`Value::Map`]).
    Python(Value),
    /// The result is JSON nested deeper than [`MAX_DEPTH`] levels.
    Invalid(InvalidResult),
}

/// Decodes a `result`/chunk JSON; `Ok(None)` for bytes that are not JSON (kept raw, as
/// upstream), an error for JSON nested too deep (never silently a string).
fn decode_payload(bytes: &[u8], path: &str) -> Result<Option<Value>, InvalidResult> {
    match decode_json(bytes) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_too_deep() => Err(InvalidResult::too_deep(path)),
        Err(_) => Ok(None),
    }
}

/// Splits a response into a result or why there is none.
pub fn decode_response(resp: ExecuteToolResponse) -> Result<ToolResult, ResponseError> {
    if !resp.success {
        return Err(ResponseError::Python(python_error(&resp.error_message)));
    }
    let value = match resp.result {
        Some(any) if !any.value.is_empty() => match decode_payload(&any.value, "result") {
            Ok(Some(v)) => v,
            Ok(None) => Value::Bytes(any.value),
            Err(e) => return Err(ResponseError::Invalid(e)),
        },
        _ => Value::Nil,
    };
    if resp.binary_result.is_empty() {
        return Ok(ToolResult::Value(value));
    }
    let meta = match value {
        Value::Map(ref entries) if !entries.is_empty() => Some(value),
        _ => None,
    };
    Ok(ToolResult::Binary {
        bytes: resp.binary_result,
        meta,
    })
}

/// Parses an `error_message`: a JSON object is the payload; anything else becomes
/// `%{"type" => "UnknownError", "message" => raw}`.
pub fn python_error(error_message: &str) -> Value {
    match decode_json(error_message.as_bytes()) {
        Ok(map @ Value::Map(_)) => map,
        _ => Value::Map(vec![
            ("type".into(), Value::str("UnknownError")),
            ("message".into(), Value::str(error_message)),
        ]),
    }
}

/// A streaming tool that raises aborts the stream with a gRPC status whose message is the same
/// JSON payload as `error_message`; recognise it so callers see `{:python, map}` either way.
pub fn python_error_from_status(message: &str) -> Option<Value> {
    match decode_json(message.as_bytes()) {
        Ok(map @ Value::Map(_)) if map.get("type").is_some() && map.get("message").is_some() => {
            Some(map)
        }
        _ => None,
    }
}

/// The payload of one stream chunk, decoded as far as the wire allows. Elixir builds upstream's
/// callback map from it (contract §6.4: empty → `%{}`, JSON object → itself, other JSON →
/// `%{"data" => v}`, not JSON → `%{"raw_data_base64" => ...}`).
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkPayload {
    /// `data` was empty (`nil` in Elixir).
    Empty,
    /// `data` was JSON.
    Json(Value),
    /// `data` was not JSON (`{:binary, bytes}` in Elixir).
    Raw(Vec<u8>),
}

/// Classifies a chunk's `data`; JSON nested deeper than [`MAX_DEPTH`] is an error (it ends the
/// stream).
pub fn chunk_payload(data: Vec<u8>) -> Result<ChunkPayload, InvalidResult> {
    if data.is_empty() {
        return Ok(ChunkPayload::Empty);
    }
    Ok(match decode_payload(&data, "chunk")? {
        Some(v) => ChunkPayload::Json(v),
        None => ChunkPayload::Raw(data),
    })
}
