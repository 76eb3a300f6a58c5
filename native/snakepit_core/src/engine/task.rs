//! The tasks the engine spawns: one per dispatched request, and one timer per engine.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Instant;

use futures_util::FutureExt;
use tokio::sync::{oneshot, Notify, Semaphore};

use super::slot::Slot;
use super::types::{Chunk, ErrorReason, Outcome, ReplyTarget};
use super::Inner;
use crate::codec::{chunk_payload, decode_response, python_error_from_status, ResponseError};
use crate::pb::ExecuteToolRequest;
use crate::scheduler::RequestId;
use crate::transport::{TransportError, WorkerClient};

/// A dispatched request, moved into its task.
pub(crate) struct Job<T: ReplyTarget> {
    pub(crate) id: RequestId,
    /// The dispatch generation (see `Pending::attempt`).
    pub(crate) attempt: u32,
    pub(crate) client: WorkerClient,
    pub(crate) call: ExecuteToolRequest,
    pub(crate) deadline: Option<Instant>,
    pub(crate) slot: Arc<Slot<T>>,
    /// `Some` for streaming calls.
    pub(crate) credits: Option<Arc<Semaphore>>,
    pub(crate) kill: oneshot::Receiver<()>,
}

/// How the work of a task ended.
struct Ended {
    outcome: Outcome,
    /// A connection-level RPC failure: maybe the worker died (see [`connection_failure`]).
    connection_failure: bool,
}

impl From<Outcome> for Ended {
    fn from(outcome: Outcome) -> Self {
        Ended {
            outcome,
            connection_failure: false,
        }
    }
}

/// Runs one request to its end and reports it with [`Inner::finish`], exactly once, whatever
/// happens inside: a panic becomes an `internal` error outcome, a kill a `cancelled` one.
/// A connection-level failure is held for the crash verdict first (see the module docs of
/// `engine`): a `worker_down` meanwhile kills the task and answers the caller itself.
pub(crate) async fn run<T: ReplyTarget>(inner: Arc<Inner<T>>, job: Job<T>) {
    let Job {
        id,
        attempt,
        client,
        call,
        deadline,
        slot,
        credits,
        mut kill,
    } = job;
    let work = async {
        match credits {
            Some(credits) => stream(&client, call, deadline, &slot, &credits).await,
            None => unary(&inner, id, &client, call, deadline, &slot).await,
        }
    };
    let ended = tokio::select! {
        biased;
        // Killed: the caller was already answered (worker lost or stream cancelled).
        _ = &mut kill => None,
        caught = AssertUnwindSafe(work).catch_unwind() => Some(match caught {
            Ok(ended) => ended,
            Err(payload) => Ended::from(panic_outcome(payload)),
        }),
    };
    let outcome = match ended {
        None => killed(),
        Some(ended) if ended.connection_failure && !inner.crash_verdict.is_zero() => {
            let now = Instant::now();
            let mut until = now.checked_add(inner.crash_verdict).unwrap_or(now);
            if let Some(d) = deadline {
                until = until.min(d);
            }
            tokio::select! {
                biased;
                _ = &mut kill => killed(),
                _ = tokio::time::sleep_until(until.into()) => ended.outcome,
            }
        }
        Some(ended) => ended.outcome,
    };
    // Should bookkeeping itself panic, the caller still gets its one answer (the slot makes a
    // second one impossible).
    let finished =
        std::panic::catch_unwind(AssertUnwindSafe(|| inner.finish(id, attempt, outcome)));
    if let Err(payload) = finished {
        slot.reply(panic_outcome(payload));
    }
}

fn killed() -> Outcome {
    Outcome::grpc("cancelled", "call aborted")
}

fn panic_outcome(payload: Box<dyn Any + Send>) -> Outcome {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    Outcome::grpc(
        "internal",
        format!("snakepit engine task panicked: {detail}"),
    )
}

/// A unary call. The caller's deadline answers the caller but does not drop the RPC: the worker
/// only becomes free when Python returns (see the module docs of `engine`).
async fn unary<T: ReplyTarget>(
    inner: &Arc<Inner<T>>,
    id: RequestId,
    client: &WorkerClient,
    call: ExecuteToolRequest,
    deadline: Option<Instant>,
    slot: &Slot<T>,
) -> Ended {
    // No `grpc-timeout`: grpcio would answer DEADLINE_EXCEEDED while the tool keeps running.
    let rpc = client.execute(call, None);
    tokio::pin!(rpc);
    if let Some(deadline) = deadline {
        tokio::select! {
            result = &mut rpc => return unary_outcome(result),
            _ = tokio::time::sleep_until(deadline.into()) => inner.expire(id, slot),
        }
    }
    unary_outcome(rpc.await)
}

fn unary_outcome(result: Result<crate::pb::ExecuteToolResponse, TransportError>) -> Ended {
    match result {
        Ok(resp) => Ended::from(match decode_response(resp) {
            Ok(value) => Outcome::Ok(value),
            Err(ResponseError::Python(payload)) => Outcome::Error(ErrorReason::Python(payload)),
            Err(ResponseError::Invalid(e)) => Outcome::Error(ErrorReason::InvalidResult(e)),
        }),
        Err(e) => failure(e),
    }
}

/// A streaming call: at most `credits` chunks are forwarded before the caller acks them.
/// Returning (deadline, dead receiver, error) drops the stream, which cancels the RPC.
async fn stream<T: ReplyTarget>(
    client: &WorkerClient,
    call: ExecuteToolRequest,
    deadline: Option<Instant>,
    slot: &Slot<T>,
    credits: &Semaphore,
) -> Ended {
    let body = async {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut chunks = match client.execute_stream(call, timeout).await {
            Ok(s) => s,
            Err(e) => return failure(e),
        };
        loop {
            match credits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Outcome::grpc("cancelled", "stream closed").into(),
            }
            match chunks.next().await {
                Ok(Some(c)) => {
                    let payload = match chunk_payload(c.data) {
                        Ok(p) => p,
                        Err(e) => return Outcome::Error(ErrorReason::InvalidResult(e)).into(),
                    };
                    let chunk = Chunk {
                        payload,
                        is_final: c.is_final,
                        metadata: c.metadata.into_iter().collect(),
                    };
                    if !slot.chunk(chunk) {
                        return Outcome::grpc("cancelled", "receiver gone").into();
                    }
                }
                Ok(None) => return Outcome::Done.into(),
                Err(e) => return failure(e),
            }
        }
    };
    match deadline {
        None => body.await,
        Some(d) => tokio::time::timeout_at(d.into(), body)
            .await
            .unwrap_or_else(|_| {
                Outcome::grpc("deadline_exceeded", "caller deadline exceeded").into()
            }),
    }
}

/// A failed RPC. A Python exception that aborted a stream arrives as a status carrying the JSON
/// payload (an application error); see [`connection_failure`] for the rest.
fn failure(e: TransportError) -> Ended {
    if matches!(e.code, "internal" | "unknown") {
        if let Some(payload) = python_error_from_status(&e.message) {
            return Outcome::Error(ErrorReason::Python(payload)).into();
        }
    }
    Ended {
        connection_failure: connection_failure(e.code),
        outcome: Outcome::Error(e.into()),
    }
}

/// The codes a dying worker produces on the client side: a refused or reset connection
/// (`unavailable`), a connection closed mid-call or an HTTP/2 error (`unknown`, `internal`), a
/// reset stream (`cancelled`, `aborted`), a truncated body (`data_loss`). Deadlines,
/// `resource_exhausted` / `out_of_range` (message size) and the application codes are not.
pub(crate) fn connection_failure(code: &str) -> bool {
    matches!(
        code,
        "unavailable" | "unknown" | "internal" | "cancelled" | "aborted" | "data_loss"
    )
}

/// Sleeps until the scheduler's next wakeup and ticks it; exits once the engine is gone.
pub(crate) async fn timer_loop<T: ReplyTarget>(engine: Weak<Inner<T>>, wake: Arc<Notify>) {
    loop {
        let next = match engine.upgrade() {
            Some(inner) => inner.tick(),
            None => return,
        };
        match next {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = wake.notified() => {}
            },
            None => wake.notified().await,
        }
    }
}
