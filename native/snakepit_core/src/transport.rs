//! The tonic client for one Python worker.
//!
//! One lazily connected HTTP/2 channel per worker (`unix:/abs/path.sock` or `http://host:port`);
//! calls clone the client, which is cheap, so concurrent calls multiplex over that channel.

use std::time::Duration;

use tonic::codec::Streaming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::pb::bridge_service_client::BridgeServiceClient;
use crate::pb::{ExecuteToolRequest, ExecuteToolResponse, ToolChunk};

/// Default bound on one gRPC message, in both directions.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Channel settings shared by all workers of a pool.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Bound on one encoded or decoded message.
    pub max_message_bytes: usize,
    /// Bound on establishing the connection (socket connect + HTTP/2 handshake).
    pub connect_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A failed call: a gRPC status code (as its snake_case name) and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TransportError {
    /// snake_case name of the gRPC code, e.g. `"unavailable"`, `"deadline_exceeded"`.
    pub code: &'static str,
    /// Human-readable detail (the status message).
    pub message: String,
}

impl TransportError {
    /// Builds an error from a code name and a message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        TransportError {
            code,
            message: message.into(),
        }
    }

    /// The error reported when the caller's deadline passes first.
    pub fn deadline_exceeded() -> Self {
        TransportError::new("deadline_exceeded", "caller deadline exceeded")
    }
}

impl From<Status> for TransportError {
    fn from(status: Status) -> Self {
        TransportError {
            code: code_name(status.code()),
            message: status.message().to_owned(),
        }
    }
}

/// snake_case name of a gRPC code; the NIF turns it into an atom.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Client for one worker. Cloning is cheap and shares the channel.
#[derive(Debug, Clone)]
pub struct WorkerClient {
    inner: BridgeServiceClient<Channel>,
    max_message_bytes: usize,
}

impl WorkerClient {
    /// Creates a client whose channel connects on first use (and reconnects after failures).
    ///
    /// Must be called inside a tokio runtime context (`Handle::enter`): the channel spawns its
    /// buffer task right away.
    pub fn connect_lazy(endpoint: &str, config: &TransportConfig) -> Result<Self, TransportError> {
        if !(endpoint.starts_with("unix:") || endpoint.starts_with("http://")) {
            return Err(TransportError::new(
                "invalid_argument",
                format!(
                    "unsupported endpoint {endpoint:?} (expected unix:/path or http://host:port)"
                ),
            ));
        }
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| TransportError::new("invalid_argument", e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let inner = BridgeServiceClient::new(channel)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        Ok(WorkerClient {
            inner,
            max_message_bytes: config.max_message_bytes,
        })
    }

    /// Unary `ExecuteTool`. With a `timeout`, the call fails with `deadline_exceeded` when it
    /// passes (and the deadline is sent to the server as `grpc-timeout`).
    pub async fn execute(
        &self,
        request: ExecuteToolRequest,
        timeout: Option<Duration>,
    ) -> Result<ExecuteToolResponse, TransportError> {
        self.check_size(&request)?;
        let mut client = self.inner.clone();
        let call = async move {
            let response = client.execute_tool(with_timeout(request, timeout)).await?;
            Ok(response.into_inner())
        };
        bounded(call, timeout).await
    }

    /// Server-streaming `ExecuteStreamingTool`: resolves once the server answered with headers.
    /// `timeout` bounds only this opening step; the caller bounds the rest of the stream.
    pub async fn execute_stream(
        &self,
        request: ExecuteToolRequest,
        timeout: Option<Duration>,
    ) -> Result<ChunkStream, TransportError> {
        self.check_size(&request)?;
        let mut client = self.inner.clone();
        let call = async move {
            let response = client
                .execute_streaming_tool(with_timeout(request, timeout))
                .await?;
            Ok(ChunkStream {
                inner: response.into_inner(),
            })
        };
        bounded(call, timeout).await
    }

    /// tonic reports an oversized request as an opaque HTTP/2 error (`internal`); checking first
    /// gives the caller a clear `resource_exhausted`.
    fn check_size(&self, request: &ExecuteToolRequest) -> Result<(), TransportError> {
        let len = prost::Message::encoded_len(request);
        if len > self.max_message_bytes {
            return Err(TransportError::new(
                "resource_exhausted",
                format!(
                    "request of {len} bytes exceeds max_message_bytes ({})",
                    self.max_message_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// The chunks of a streaming call. Dropping it cancels the RPC (HTTP/2 RST_STREAM).
#[derive(Debug)]
pub struct ChunkStream {
    inner: Streaming<ToolChunk>,
}

impl ChunkStream {
    /// The next chunk, `Ok(None)` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<ToolChunk>, TransportError> {
        Ok(self.inner.message().await?)
    }
}

fn with_timeout(
    request: ExecuteToolRequest,
    timeout: Option<Duration>,
) -> tonic::Request<ExecuteToolRequest> {
    let mut request = tonic::Request::new(request);
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    request
}

async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, TransportError>>,
    timeout: Option<Duration>,
) -> Result<T, TransportError> {
    match timeout {
        None => call.await,
        Some(t) => {
            let started = tokio::time::Instant::now();
            match tokio::time::timeout(t, call).await {
                // The server enforces the same `grpc-timeout` and may win the race, answering
                // `cancelled` (tonic) or `deadline_exceeded` (grpcio): report one code either way.
                Ok(Err(e)) if e.code == "cancelled" && started.elapsed() >= t => {
                    Err(TransportError::deadline_exceeded())
                }
                Ok(result) => result,
                Err(_) => Err(TransportError::deadline_exceeded()),
            }
        }
    }
}
