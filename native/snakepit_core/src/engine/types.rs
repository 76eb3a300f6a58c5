//! The engine's vocabulary: outcomes, chunks, the two callback traits and the submit arguments.

use std::sync::Arc;
use std::time::Duration;

use crate::codec::{ChunkPayload, InvalidResult, ToolResult, Value};
use crate::pb::ExecuteToolRequest;
use crate::scheduler::{Affinity, RejectReason, SessionId};
use crate::transport::TransportError;

/// Why a request failed. The NIF turns each variant into the `reason` term of ARCHITECTURE.md.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorReason {
    /// `{:pool, atom}`: the scheduler answered (queue timeout, saturated, closed, ...).
    Pool(RejectReason),
    /// `{:python, map}`: the tool raised; the map is Python's error payload.
    Python(Value),
    /// `{:grpc, code, message}`: the RPC failed (code is a snake_case gRPC code name).
    Grpc {
        /// e.g. `"unavailable"`, `"deadline_exceeded"`, `"internal"`.
        code: &'static str,
        /// Status message.
        message: String,
    },
    /// `{:worker_exit, worker_id, reason}`: the worker went away while the call was in flight.
    WorkerExit {
        /// The worker's name (the id given at `add_worker`).
        worker: Arc<str>,
        /// The opaque reason given to `worker_down`.
        reason: Value,
    },
    /// `{:invalid_parameter, path, message}`: the reply cannot be decoded (JSON nested deeper
    /// than the codec's limit).
    InvalidResult(InvalidResult),
}

impl From<TransportError> for ErrorReason {
    fn from(e: TransportError) -> Self {
        ErrorReason::Grpc {
            code: e.code,
            message: e.message,
        }
    }
}

/// The one final outcome of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A unary call succeeded: `{:ok, term}`.
    Ok(ToolResult),
    /// A stream ended normally: `:done`.
    Done,
    /// `{:error, reason}`.
    Error(ErrorReason),
}

impl Outcome {
    pub(crate) fn grpc(code: &'static str, message: impl Into<String>) -> Self {
        Outcome::Error(ErrorReason::Grpc {
            code,
            message: message.into(),
        })
    }
}

/// One chunk of a streaming call, as forwarded to the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Decoded payload (see [`crate::codec::chunk_payload`]).
    pub payload: ChunkPayload,
    /// The producer marked this chunk as the last one.
    pub is_final: bool,
    /// Chunk metadata.
    pub metadata: Vec<(String, String)>,
}

/// Where a request's results go (the NIF implements it by messaging the caller pid).
///
/// Methods are called from tokio threads only, never from the thread that called the engine
/// (a BEAM scheduler thread in the NIF), and never under the engine's lock.
pub trait ReplyTarget: Send + 'static {
    /// Delivers the final outcome. Called at most once, and never after a cancellation.
    fn reply(self, outcome: Outcome);
    /// Delivers one stream chunk; returns `false` when the receiver is gone (the stream is
    /// then dropped, which cancels the RPC).
    fn chunk(&mut self, chunk: Chunk) -> bool;
}

/// Worker-level events for the pool owner (the NIF messages the owner pid given at `pool_new`).
pub trait PoolEvents: Send + Sync + 'static {
    /// An abandoned call overran `abandon_grace` on this worker: replace it.
    fn recycle_worker(&self, worker: &str);
}

/// One request handed to [`super::Engine::submit`].
#[derive(Debug, Clone, Default)]
pub struct SubmitRequest {
    /// The encoded call. `session_id` is set from `session`, or to the serving worker's name when
    /// there is no session.
    pub call: ExecuteToolRequest,
    /// Caller session (affinity key).
    pub session: Option<SessionId>,
    /// Per-call affinity override.
    pub affinity: Option<Affinity>,
    /// Caller timeout from now; `None` = infinity.
    pub timeout: Option<Duration>,
    /// `Some(window)`: streaming call with at most `window` chunks un-acked.
    pub stream_window: Option<u32>,
    /// How many times a unary call whose worker is lost (`worker_down` while it runs, or during
    /// the crash-verdict hold of a connection failure) is resubmitted instead of answered with
    /// [`ErrorReason::WorkerExit`]. Only for calls not bound to a worker by a strict session
    /// (those get [`RejectReason::SessionWorkerUnavailable`] instead); streams are never retried.
    pub retry_on_crash: u32,
}

/// What is left to finish, as reported by [`super::Engine::drain_status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainStatus {
    /// RPCs running on workers (abandoned ones, whose caller is gone, included).
    pub in_flight: usize,
    /// Requests waiting in the queue.
    pub queued: usize,
    /// Requests whose caller still waits for its reply (queued, running, or held for a crash
    /// verdict); 0 means no caller would lose an answer if the workers stopped now.
    pub awaiting_reply: usize,
    /// [`super::Engine::close`] was called.
    pub closed: bool,
}

/// Errors of the worker management calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// A worker with this name is already up.
    #[error("worker {0:?} already exists")]
    AlreadyExists(String),
    /// No worker with this name is up.
    #[error("worker {0:?} not found")]
    NotFound(String),
    /// The endpoint could not be turned into a channel.
    #[error("bad endpoint: {0}")]
    BadEndpoint(String),
    /// Capacity must be at least 1.
    #[error("capacity must be at least 1")]
    BadCapacity,
}

/// One worker as shown by [`super::Engine::workers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's name.
    pub name: Arc<str>,
    /// Requests in flight on it.
    pub load: u32,
    /// Its capacity.
    pub capacity: u32,
    /// Whether it is tainted.
    pub tainted: bool,
}
