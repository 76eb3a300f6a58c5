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
use crate::codec::{chunk_payload, decode_response, python_error_from_status};
use crate::pb::ExecuteToolRequest;
use crate::scheduler::RequestId;
use crate::transport::{TransportError, WorkerClient};

/// A dispatched request, moved into its task.
pub(crate) struct Job<T: ReplyTarget> {
    pub(crate) id: RequestId,
    pub(crate) client: WorkerClient,
    pub(crate) call: ExecuteToolRequest,
    pub(crate) deadline: Option<Instant>,
    pub(crate) slot: Arc<Slot<T>>,
    /// `Some` for streaming calls.
    pub(crate) credits: Option<Arc<Semaphore>>,
    pub(crate) kill: oneshot::Receiver<()>,
}

/// Runs one request to its end and reports it with [`Inner::finish`], exactly once, whatever
/// happens inside: a panic becomes an `internal` error outcome, a kill a `cancelled` one.
pub(crate) async fn run<T: ReplyTarget>(inner: Arc<Inner<T>>, job: Job<T>) {
    let Job {
        id,
        client,
        call,
        deadline,
        slot,
        credits,
        kill,
    } = job;
    let work = async {
        match credits {
            Some(credits) => stream(&client, call, deadline, &slot, &credits).await,
            None => unary(&inner, id, &client, call, deadline, &slot).await,
        }
    };
    let outcome = tokio::select! {
        biased;
        // Killed: the caller was already answered (worker lost or stream cancelled).
        _ = kill => Outcome::grpc("cancelled", "call aborted"),
        caught = AssertUnwindSafe(work).catch_unwind() => caught.unwrap_or_else(panic_outcome),
    };
    // Should bookkeeping itself panic, the caller still gets its one answer (the slot makes a
    // second one impossible).
    if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| inner.finish(id, outcome))) {
        slot.reply(panic_outcome(payload));
    }
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
) -> Outcome {
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

fn unary_outcome(result: Result<crate::pb::ExecuteToolResponse, TransportError>) -> Outcome {
    match result {
        Ok(resp) => match decode_response(resp) {
            Ok(value) => Outcome::Ok(value),
            Err(payload) => Outcome::Error(ErrorReason::Python(payload)),
        },
        Err(e) => Outcome::Error(status_reason(e)),
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
) -> Outcome {
    let body = async {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut chunks = match client.execute_stream(call, timeout).await {
            Ok(s) => s,
            Err(e) => return Outcome::Error(status_reason(e)),
        };
        loop {
            match credits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Outcome::grpc("cancelled", "stream closed"),
            }
            match chunks.next().await {
                Ok(Some(c)) => {
                    let chunk = Chunk {
                        payload: chunk_payload(c.data),
                        is_final: c.is_final,
                        metadata: c.metadata.into_iter().collect(),
                    };
                    if !slot.chunk(chunk) {
                        return Outcome::grpc("cancelled", "receiver gone");
                    }
                }
                Ok(None) => return Outcome::Done,
                Err(e) => return Outcome::Error(status_reason(e)),
            }
        }
    };
    match deadline {
        None => body.await,
        Some(d) => tokio::time::timeout_at(d.into(), body)
            .await
            .unwrap_or_else(|_| Outcome::grpc("deadline_exceeded", "caller deadline exceeded")),
    }
}

/// A Python exception that aborted a stream arrives as a status carrying the JSON payload.
fn status_reason(e: TransportError) -> ErrorReason {
    match python_error_from_status(&e.message) {
        Some(payload) if matches!(e.code, "internal" | "unknown") => ErrorReason::Python(payload),
        _ => e.into(),
    }
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
