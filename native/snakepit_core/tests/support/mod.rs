//! An in-process fake Python worker: a tonic `BridgeService` on a Unix socket in a temp dir.
//!
//! Tools (`tool_name`):
//! - `echo`: returns `{"args": {...}, "session_id": s, "metadata": {...}, "binary": {name: len}}`.
//! - `sleep` (`ms`): sleeps, then returns `{"slept": ms}`; records start/finish for the tests.
//! - `fail`: `success: false` with a Python error payload (`ValueError`).
//! - `raw_fail`: `success: false` with a non-JSON `error_message`.
//! - `binary`: `binary_result = [1,2,3]`, `result = {"shape": [3]}`.
//! - `big` (`n`): returns a string of `n` bytes.
//! - `status` (`code`): answers with a gRPC status of that code.
//! - streaming `count` (`n`, `delay_ms`): chunks `{"i": k}`, the last one final.
//! - streaming `raise`: aborts with `INTERNAL` carrying a Python error payload.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost_types::Any;
use snakepit_core::pb::bridge_service_server::{BridgeService, BridgeServiceServer};
use snakepit_core::pb::*;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// What the fake worker observed.
#[derive(Default)]
pub struct Observed {
    /// Calls currently running.
    pub running: AtomicUsize,
    /// Most calls seen running at once.
    pub max_running: AtomicUsize,
    /// `sleep` calls that ran to the end (even if the client had gone).
    pub sleeps_finished: AtomicUsize,
    /// Chunks handed to the transport by `count`.
    pub chunks_sent: AtomicUsize,
    /// `count` streams that stopped because the client went away.
    pub streams_cancelled: AtomicUsize,
    /// Tool names in arrival order.
    pub calls: Mutex<Vec<String>>,
}

/// A running fake worker.
pub struct FakeWorker {
    /// `unix:/tmp/.../w.sock`
    pub endpoint: String,
    /// Counters.
    pub observed: Arc<Observed>,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
    /// A duplicate of every accepted connection, to cut them all like a dying process would.
    connections: Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>,
}

impl FakeWorker {
    /// Starts a fake worker on the current tokio runtime.
    pub async fn start() -> FakeWorker {
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let observed = Arc::new(Observed::default());
        let service = Service {
            observed: observed.clone(),
        };
        let connections = Arc::new(Mutex::new(Vec::new()));
        let conns = connections.clone();
        let incoming = UnixListenerStream::new(listener).map(move |accepted| {
            let std = accepted?.into_std()?;
            conns.lock().expect("lock").push(std.try_clone()?);
            UnixStream::from_std(std)
        });
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(BridgeServiceServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        FakeWorker {
            endpoint: format!("unix:{}", path.display()),
            observed,
            _dir: dir,
            server,
            connections,
        }
    }

    /// Dies like a killed process: stops listening (new connections are refused) and cuts every
    /// open connection, so calls in flight fail at once on the client side.
    pub fn crash(&self) {
        self.server.abort();
        for conn in self.connections.lock().expect("lock").drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Stops accepting connections (existing ones may linger).
    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Service {
    observed: Arc<Observed>,
}

struct RunningGuard(Arc<Observed>);

impl RunningGuard {
    fn new(o: &Arc<Observed>) -> Self {
        let now = o.running.fetch_add(1, Ordering::SeqCst) + 1;
        o.max_running.fetch_max(now, Ordering::SeqCst);
        RunningGuard(o.clone())
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

fn param(req: &ExecuteToolRequest, name: &str) -> Option<serde_json::Value> {
    req.parameters
        .get(name)
        .and_then(|any| serde_json::from_slice(&any.value).ok())
}

fn int_param(req: &ExecuteToolRequest, name: &str, default: u64) -> u64 {
    param(req, name).and_then(|v| v.as_u64()).unwrap_or(default)
}

fn ok(result: serde_json::Value) -> ExecuteToolResponse {
    ExecuteToolResponse {
        success: true,
        result: Some(Any {
            type_url: "type.googleapis.com/snakepit.map".into(),
            value: serde_json::to_vec(&result).expect("json"),
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl BridgeService for Service {
    async fn ping(&self, r: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            message: format!("pong: {}", r.into_inner().message),
            server_time: None,
        }))
    }

    async fn initialize_session(
        &self,
        _: Request<InitializeSessionRequest>,
    ) -> Result<Response<InitializeSessionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn cleanup_session(
        &self,
        _: Request<CleanupSessionRequest>,
    ) -> Result<Response<CleanupSessionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_session(
        &self,
        _: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn execute_tool(
        &self,
        request: Request<ExecuteToolRequest>,
    ) -> Result<Response<ExecuteToolResponse>, Status> {
        let req = request.into_inner();
        self.observed
            .calls
            .lock()
            .expect("lock")
            .push(req.tool_name.clone());
        let _running = RunningGuard::new(&self.observed);
        let resp = match req.tool_name.as_str() {
            "echo" => {
                let args: serde_json::Map<String, serde_json::Value> = req
                    .parameters
                    .iter()
                    .map(|(k, any)| {
                        let v = serde_json::from_slice(&any.value)
                            .unwrap_or(serde_json::Value::Null);
                        (k.clone(), v)
                    })
                    .collect();
                let binary: HashMap<&String, usize> = req
                    .binary_parameters
                    .iter()
                    .map(|(k, v)| (k, v.len()))
                    .collect();
                ok(serde_json::json!({
                    "args": args,
                    "session_id": req.session_id,
                    "metadata": req.metadata,
                    "binary": binary,
                }))
            }
            "sleep" => {
                let ms = int_param(&req, "ms", 0);
                // Like a Python handler thread: runs to the end whatever the client does.
                let observed = self.observed.clone();
                let done = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    observed.sleeps_finished.fetch_add(1, Ordering::SeqCst);
                });
                let _ = done.await;
                ok(serde_json::json!({ "slept": ms }))
            }
            "fail" => ExecuteToolResponse {
                success: false,
                error_message: r#"{"type":"ValueError","message":"bad value","traceback":"Traceback ...","stacktrace":[],"context":{}}"#.into(),
                ..Default::default()
            },
            "raw_fail" => ExecuteToolResponse {
                success: false,
                error_message: "segfault-ish".into(),
                ..Default::default()
            },
            "binary" => ExecuteToolResponse {
                binary_result: vec![1, 2, 3],
                ..ok(serde_json::json!({ "shape": [3] }))
            },
            "big" => ok(serde_json::Value::String("y".repeat(int_param(&req, "n", 0) as usize))),
            "status" => {
                let code = int_param(&req, "code", 14) as i32;
                return Err(Status::new(tonic::Code::from(code), "fake status"));
            }
            other => return Err(Status::unimplemented(format!("unknown tool {other}"))),
        };
        Ok(Response::new(resp))
    }

    type ExecuteStreamingToolStream = ReceiverStream<Result<ToolChunk, Status>>;

    async fn execute_streaming_tool(
        &self,
        request: Request<ExecuteToolRequest>,
    ) -> Result<Response<Self::ExecuteStreamingToolStream>, Status> {
        let req = request.into_inner();
        self.observed
            .calls
            .lock()
            .expect("lock")
            .push(req.tool_name.clone());
        let (tx, rx) = mpsc::channel(1);
        match req.tool_name.as_str() {
            "count" => {
                let n = int_param(&req, "n", 3);
                let delay = Duration::from_millis(int_param(&req, "delay_ms", 0));
                let observed = self.observed.clone();
                tokio::spawn(async move {
                    let _running = RunningGuard::new(&observed);
                    for k in 1..=n {
                        tokio::time::sleep(delay).await;
                        let chunk = ToolChunk {
                            chunk_id: format!("count-{k}"),
                            data: format!("{{\"i\":{k}}}").into_bytes(),
                            is_final: k == n,
                            metadata: HashMap::from([("k".to_owned(), k.to_string())]),
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            observed.streams_cancelled.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        observed.chunks_sent.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            "raise" => {
                tokio::spawn(async move {
                    let _ = tx
                        .send(Err(Status::internal(
                            r#"{"type":"RuntimeError","message":"stream broke"}"#,
                        )))
                        .await;
                });
            }
            other => return Err(Status::unimplemented(format!("unknown tool {other}"))),
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn register_tools(
        &self,
        _: Request<RegisterToolsRequest>,
    ) -> Result<Response<RegisterToolsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_exposed_elixir_tools(
        &self,
        _: Request<GetExposedElixirToolsRequest>,
    ) -> Result<Response<GetExposedElixirToolsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn execute_elixir_tool(
        &self,
        _: Request<ExecuteElixirToolRequest>,
    ) -> Result<Response<ExecuteElixirToolResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type StreamTelemetryStream = ReceiverStream<Result<TelemetryEvent, Status>>;

    async fn stream_telemetry(
        &self,
        _: Request<tonic::Streaming<TelemetryControl>>,
    ) -> Result<Response<Self::StreamTelemetryStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
}
