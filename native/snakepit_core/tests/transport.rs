//! The tonic client against an in-process server on a Unix socket.

mod support;

use std::time::Duration;

use snakepit_core::codec::{build_request, decode_response, CallSpec, ToolResult, Value};
use snakepit_core::pb::ExecuteToolRequest;
use snakepit_core::transport::{TransportConfig, WorkerClient};
use support::FakeWorker;

fn request(tool: &str, args: Vec<(&str, Value)>) -> ExecuteToolRequest {
    build_request(CallSpec {
        tool_name: tool.into(),
        args: args.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..CallSpec::default()
    })
    .expect("encodable")
}

fn client(endpoint: &str) -> WorkerClient {
    WorkerClient::connect_lazy(endpoint, &TransportConfig::default()).expect("client")
}

#[tokio::test]
async fn unary_call_over_a_unix_socket() {
    let worker = FakeWorker::start().await;
    let resp = client(&worker.endpoint)
        .execute(request("echo", vec![("x", Value::Int(7))]), None)
        .await
        .expect("call");
    let ToolResult::Value(v) = decode_response(resp).expect("success") else {
        panic!("not a value")
    };
    assert_eq!(v.get("args").and_then(|a| a.get("x")), Some(&Value::Int(7)));
}

#[tokio::test]
async fn connect_is_lazy_and_failures_are_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("unix:{}", dir.path().join("nobody.sock").display());
    // Creating the client does not touch the socket.
    let c = client(&endpoint);
    let err = c.execute(request("echo", vec![]), None).await.unwrap_err();
    assert_eq!(err.code, "unavailable", "{err}");
}

#[tokio::test]
async fn rejects_unsupported_endpoints() {
    let err = WorkerClient::connect_lazy("ftp://x", &TransportConfig::default()).unwrap_err();
    assert_eq!(err.code, "invalid_argument");
}

#[tokio::test]
async fn statuses_map_to_snake_case_codes() {
    let worker = FakeWorker::start().await;
    let c = client(&worker.endpoint);
    for (code, name) in [
        (14, "unavailable"),
        (13, "internal"),
        (3, "invalid_argument"),
        (5, "not_found"),
    ] {
        let err = c
            .execute(request("status", vec![("code", Value::Int(code))]), None)
            .await
            .unwrap_err();
        assert_eq!(err.code, name);
        assert_eq!(err.message, "fake status");
    }
}

#[tokio::test]
async fn timeout_gives_deadline_exceeded() {
    let worker = FakeWorker::start().await;
    let err = client(&worker.endpoint)
        .execute(
            request("sleep", vec![("ms", Value::Int(2_000))]),
            Some(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "deadline_exceeded");
}

#[tokio::test]
async fn message_size_limit_applies() {
    let worker = FakeWorker::start().await;
    let config = TransportConfig {
        max_message_bytes: 1024,
        ..TransportConfig::default()
    };
    let c = WorkerClient::connect_lazy(&worker.endpoint, &config).expect("client");
    // Too big to send: refused before any I/O.
    let big = Value::Str("x".repeat(4096));
    let err = c
        .execute(request("echo", vec![("big", big)]), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, "resource_exhausted", "{err}");
    // Too big to receive: tonic's decoder refuses it.
    let err = c
        .execute(request("big", vec![("n", Value::Int(4096))]), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, "out_of_range", "{err}");
}

#[tokio::test]
async fn server_streaming_delivers_all_chunks() {
    let worker = FakeWorker::start().await;
    let mut req = request("count", vec![("n", Value::Int(4))]);
    req.stream = true;
    let mut stream = client(&worker.endpoint)
        .execute_stream(req, Some(Duration::from_secs(5)))
        .await
        .expect("stream");
    let mut ids = Vec::new();
    while let Some(chunk) = stream.next().await.expect("chunk") {
        ids.push((chunk.chunk_id, chunk.is_final));
    }
    assert_eq!(
        ids,
        vec![
            ("count-1".to_owned(), false),
            ("count-2".to_owned(), false),
            ("count-3".to_owned(), false),
            ("count-4".to_owned(), true)
        ]
    );
}

#[tokio::test]
async fn stream_errors_carry_the_status() {
    let worker = FakeWorker::start().await;
    let mut stream = client(&worker.endpoint)
        .execute_stream(request("raise", vec![]), None)
        .await
        .expect("stream opens");
    let err = stream.next().await.unwrap_err();
    assert_eq!(err.code, "internal");
    assert!(err.message.contains("RuntimeError"));
}
