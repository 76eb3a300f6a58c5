//! Drives the [`Scheduler`] with real time, real RPCs and real replies.
//!
//! An [`Engine`] is one pool: `Mutex<State>` (the scheduler plus the request and worker tables)
//! and a tokio [`Handle`]. Every public method takes the lock once, feeds one event to the
//! scheduler, turns the resulting [`crate::scheduler::Action`]s into effects (spawned RPC tasks,
//! replies, pool events) and releases the lock before any reply is sent.
//!
//! Threads: the methods are meant to be called from any thread, including BEAM schedulers, and
//! never block beyond the short lock. Replies and events are delivered inline when the caller is
//! already on a tokio thread, else from a spawned task; so a [`ReplyTarget`] never runs on the
//! calling (NIF) thread.
//!
//! Cancellation and "the worker is free again": an RPC that the caller abandons (cancel, death,
//! caller deadline) keeps its worker busy in the scheduler until `Scheduler::complete`. For a
//! unary call the engine therefore does not drop the RPC: Python cannot be interrupted in the
//! middle of a tool anyway (a client-side reset only flips grpcio's `context.is_active()`), so the
//! only sound signal that the worker is free is the response itself. The caller is answered (or
//! silently forgotten) at once, the result is discarded, and `complete` runs when Python really
//! returns; if that takes longer than `abandon_grace`, the scheduler emits `RecycleWorker` and the
//! pool owner replaces the process (whose `worker_down` then aborts the task). A stream is
//! dropped at once instead, because the Python producer stops when the client goes away.
//! Lost workers (`worker_down`) abort their tasks immediately.
//!
//! Worker crashes: when a Python worker dies, its in-flight RPCs fail at once with a
//! connection-level error (`unavailable`, `unknown`, `cancelled`, `internal`, `aborted`,
//! `data_loss` that is not a Python error payload), usually a few milliseconds before the pool
//! owner sees the process exit and calls [`Engine::worker_down`]. Such an outcome is held for up to
//! [`EngineConfig::crash_verdict`] (never past the caller's deadline), with the worker's slot still
//! taken: if `worker_down` arrives meanwhile the caller gets [`ErrorReason::WorkerExit`] with the
//! owner's reason (exit status included), else the original gRPC error. Application-level
//! outcomes (results, Python exceptions, deadlines, oversized messages) are never held.
//!
//! Retries: a unary call submitted with [`SubmitRequest::retry_on_crash`] `> 0` whose worker is
//! lost (a `WorkerLost`, i.e. `worker_down` while it runs or while its crash verdict is held) is
//! resubmitted to the scheduler under the same request id instead of being answered: it runs on
//! another worker (the lost one is gone from the scheduler), or queues until one is up. A call
//! bound to its worker by a strict session is never moved: it gets
//! [`RejectReason::SessionWorkerUnavailable`]. If the resubmission is refused (closed, saturated,
//! deadline passed), the caller gets the `WorkerExit` it would have had. Every request still gets
//! exactly one reply: each dispatch is an *attempt*, and the task of a superseded attempt can no
//! longer touch the request.

mod slot;
mod state;
mod task;
mod types;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};

use crate::scheduler::{
    Action, RejectReason, RequestId, Scheduler, SchedulerConfig, SchedulerStats, Submit, WorkerId,
};
use crate::transport::{TransportConfig, WorkerClient};

use slot::Slot;
use state::{Pending, State, WorkerEntry};
pub use types::{
    Chunk, DrainStatus, ErrorReason, Outcome, PoolEvents, ReplyTarget, SubmitRequest, WorkerError,
    WorkerInfo,
};

/// Upper bound on stream credits held at once; `stream_ack` beyond it is clamped.
const MAX_STREAM_CREDITS: usize = 1 << 20;

/// How many removed workers' names are remembered for session tombstones.
const MAX_DEPARTED_NAMES: usize = 4096;

/// Default of [`EngineConfig::crash_verdict`].
pub const DEFAULT_CRASH_VERDICT: Duration = Duration::from_millis(250);

/// Abandon grace the NIF applies when `pool_new` does not mention `abandon_grace_ms` (the
/// scheduler's own default is "never").
pub const DEFAULT_ABANDON_GRACE: Duration = Duration::from_secs(5);

/// Configuration of one pool.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Scheduler settings.
    pub scheduler: SchedulerConfig,
    /// Channel settings for every worker.
    pub transport: TransportConfig,
    /// How long a connection-level RPC failure waits for the pool owner's `worker_down` before it
    /// is reported as is (see the module docs). Zero: never held.
    pub crash_verdict: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            scheduler: SchedulerConfig::default(),
            transport: TransportConfig::default(),
            crash_verdict: DEFAULT_CRASH_VERDICT,
        }
    }
}

/// One pool: scheduler, worker clients, in-flight requests and timers.
///
/// Dropping it closes the pool (queued requests get `Closed`); running calls finish normally.
pub struct Engine<T: ReplyTarget> {
    inner: Arc<Inner<T>>,
}

pub(crate) struct Inner<T: ReplyTarget> {
    state: Mutex<State<T>>,
    handle: Handle,
    events: Arc<dyn PoolEvents>,
    /// Wakes the timer task when an earlier wakeup appears (or the engine goes away).
    wake: Arc<Notify>,
    next_request: AtomicU64,
    transport: TransportConfig,
    crash_verdict: Duration,
}

impl<T: ReplyTarget> Engine<T> {
    /// Creates a pool whose tasks run on `handle`. Callable from any thread.
    pub fn new(config: EngineConfig, events: Arc<dyn PoolEvents>, handle: Handle) -> Self {
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(Scheduler::new(config.scheduler))),
            handle: handle.clone(),
            events,
            wake: wake.clone(),
            next_request: AtomicU64::new(1),
            transport: config.transport,
            crash_verdict: config.crash_verdict,
        });
        handle.spawn(task::timer_loop(Arc::downgrade(&inner), wake));
        Engine { inner }
    }

    /// Allocates the id the next [`Engine::submit`] will use, so the caller can index the
    /// request (e.g. for caller monitoring) before any reply can arrive.
    pub fn reserve_id(&self) -> RequestId {
        RequestId(self.inner.next_request.fetch_add(1, Ordering::Relaxed))
    }

    /// Submits a request under an id from [`Engine::reserve_id`].
    ///
    /// A rejection of this request by the scheduler is returned, not sent to `target`
    /// (`target` is dropped). Otherwise `target` gets exactly one outcome later, unless the
    /// request is cancelled first.
    pub fn submit(
        &self,
        id: RequestId,
        target: T,
        request: SubmitRequest,
    ) -> Result<RequestId, RejectReason> {
        let now = Instant::now();
        let inner = &self.inner;
        let mut deliveries = Vec::new();
        let mut rejected = None;
        let mut call = request.call;
        // Python's SessionContext sees the caller's session id (upstream sent the worker's own id,
        // so adapters could not keep per-session state); session-less calls get the worker's name
        // at dispatch, which keeps upstream's per-worker behaviour for them.
        if let Some(session) = &request.session {
            call.session_id = session.as_str().to_owned();
        }
        let result = {
            let mut state = inner.lock();
            let deadline = request.timeout.and_then(|t| now.checked_add(t));
            state.requests.insert(
                id,
                Pending {
                    slot: Arc::new(Slot::new(target)),
                    job: Some(call),
                    deadline,
                    credits: request.stream_window.map(|w| {
                        Arc::new(Semaphore::new((w.max(1) as usize).min(MAX_STREAM_CREDITS)))
                    }),
                    kill: None,
                    worker: None,
                    session: request.session.clone(),
                    affinity: request.affinity,
                    retries_left: if request.stream_window.is_some() {
                        0
                    } else {
                        request.retry_on_crash
                    },
                    attempt: 0,
                },
            );
            let mut actions = Vec::new();
            state.scheduler.submit(
                Submit {
                    id,
                    session: request.session,
                    affinity: request.affinity,
                    deadline,
                },
                now,
                &mut actions,
            );
            // The submitter learns about its own rejection synchronously.
            let own_rejection = actions.iter().find_map(|a| match a {
                Action::Reject { request, reason } if *request == id => Some(*reason),
                _ => None,
            });
            let result = match own_rejection {
                Some(reason) => {
                    actions
                        .retain(|a| !matches!(a, Action::Reject { request, .. } if *request == id));
                    rejected = state.requests.remove(&id);
                    Err(reason)
                }
                None => Ok(id),
            };
            inner.apply(&mut state, actions, None, now, &mut deliveries);
            result
        };
        // Dropped outside the lock: a target's drop may run caller bookkeeping of its own.
        drop(rejected);
        inner.deliver(deliveries);
        result
    }

    /// The caller gave up (explicit cancel or death): no reply will be sent for `id` after this
    /// returns. Idempotent; unknown ids are ignored.
    pub fn cancel(&self, id: RequestId) {
        self.inner.cancel(id);
    }

    /// Adds `n` stream credits to `id` (the caller consumed `n` chunks).
    pub fn stream_ack(&self, id: RequestId, n: u32) {
        let state = self.inner.lock();
        if let Some(credits) = state.requests.get(&id).and_then(|p| p.credits.as_ref()) {
            let room = MAX_STREAM_CREDITS.saturating_sub(credits.available_permits());
            credits.add_permits((n as usize).min(room));
        }
    }

    /// Registers a worker reachable at `endpoint` (`unix:/path` or `http://host:port`; the
    /// channel connects lazily) with room for `capacity` concurrent calls.
    pub fn add_worker(&self, name: &str, endpoint: &str, capacity: u32) -> Result<(), WorkerError> {
        if capacity == 0 {
            return Err(WorkerError::BadCapacity);
        }
        let client = {
            // The channel spawns its buffer task on creation; NIF threads have no runtime.
            let _entered = self.inner.handle.enter();
            WorkerClient::connect_lazy(endpoint, &self.inner.transport)
                .map_err(|e| WorkerError::BadEndpoint(e.message))?
        };
        let now = Instant::now();
        let mut deliveries = Vec::new();
        {
            let mut state = self.inner.lock();
            if state.by_name.contains_key(name) {
                return Err(WorkerError::AlreadyExists(name.to_owned()));
            }
            let id = state.new_worker_id();
            let name: Arc<str> = Arc::from(name);
            state.by_name.insert(name.clone(), id);
            state.workers.insert(id, WorkerEntry { name, client });
            let mut actions = Vec::new();
            state.scheduler.worker_up(id, capacity, now, &mut actions);
            self.inner
                .apply(&mut state, actions, None, now, &mut deliveries);
        }
        self.inner.deliver(deliveries);
        Ok(())
    }

    /// The worker went away: its in-flight callers get
    /// [`ErrorReason::WorkerExit`] with `reason`, and their RPCs are aborted.
    pub fn worker_down(&self, name: &str, reason: crate::codec::Value) -> Result<(), WorkerError> {
        let now = Instant::now();
        let mut deliveries = Vec::new();
        {
            let mut state = self.inner.lock();
            let id = state
                .by_name
                .remove(name)
                .ok_or_else(|| WorkerError::NotFound(name.to_owned()))?;
            let entry = state.workers.remove(&id);
            let worker_name = entry.map(|e| e.name).unwrap_or_else(|| Arc::from(name));
            state.departed.push_back((id, worker_name.clone()));
            if state.departed.len() > MAX_DEPARTED_NAMES {
                state.departed.pop_front();
            }
            let mut actions = Vec::new();
            state.scheduler.worker_down(id, now, &mut actions);
            let lost = (worker_name, reason);
            self.inner
                .apply(&mut state, actions, Some(&lost), now, &mut deliveries);
            Inner::kill_worker_tasks(&mut state, id);
        }
        self.inner.deliver(deliveries);
        Ok(())
    }

    /// Keeps the worker out of selection for `duration`.
    pub fn taint(&self, name: &str, duration: Duration) -> Result<(), WorkerError> {
        self.inner.with_worker(name, |state, id, now, actions| {
            let until = now
                .checked_add(duration)
                .unwrap_or(now + Duration::from_secs(86_400 * 365));
            state.scheduler.taint(id, until, now, actions);
        })
    }

    /// Forgets a session's worker.
    pub fn delete_session(&self, session: &str) {
        self.inner.lock().scheduler.delete_session(session);
    }

    /// Rejects queued requests with `Closed` and refuses new ones; running calls finish (watch
    /// [`Engine::drain_status`] to know when).
    pub fn close(&self) {
        self.inner.close();
    }

    /// Every worker failed to start: queued requests get `NoWorkers` at once (`{:pool,
    /// :no_workers_available}`), and so do new ones that would queue, until a worker is added.
    /// Running calls are not touched. See [`crate::scheduler::Scheduler::fail_queued`].
    pub fn fail_queued(&self) {
        self.inner.fail_queued();
    }

    /// What is still running or waiting, for a graceful shutdown: after [`Engine::close`], wait
    /// until `awaiting_reply` (or `in_flight`, to let abandoned calls end too) reaches 0 before
    /// stopping the workers.
    pub fn drain_status(&self) -> DrainStatus {
        let (mut status, slots) = {
            let state = self.inner.lock();
            let stats = state.scheduler.stats();
            let status = DrainStatus {
                in_flight: stats.in_flight,
                queued: stats.queue_len,
                awaiting_reply: 0,
                closed: state.closed,
            };
            let slots: Vec<_> = state.requests.values().map(|p| p.slot.clone()).collect();
            (status, slots)
        };
        // Slots are looked at outside the engine lock: one may be busy sending a big reply.
        status.awaiting_reply = slots.iter().filter(|s| s.is_open()).count();
        status
    }

    /// Requests resubmitted after losing their worker (see `SubmitRequest::retry_on_crash`).
    pub fn retries(&self) -> u64 {
        self.inner.lock().retries
    }

    /// The pool's bound on one gRPC message (for callers that check sizes before submitting).
    pub fn max_message_bytes(&self) -> usize {
        self.inner.transport.max_message_bytes
    }

    /// Scheduler counters.
    pub fn stats(&self) -> SchedulerStats {
        self.inner.lock().scheduler.stats()
    }

    /// The workers currently up, with their load.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let state = self.inner.lock();
        state
            .scheduler
            .stats()
            .workers
            .into_iter()
            .filter_map(|w| {
                state.workers.get(&w.id).map(|e| WorkerInfo {
                    name: e.name.clone(),
                    load: w.load,
                    capacity: w.capacity,
                    tainted: w.tainted,
                })
            })
            .collect()
    }

    /// The name of the worker a session is bound to, if any. A strict session whose worker was
    /// removed still names it (the scheduler keeps it as a tombstone until the session is deleted
    /// or expires).
    pub fn session_worker(&self, session: &str) -> Option<Arc<str>> {
        let state = self.inner.lock();
        let id = state.scheduler.session_worker(session)?;
        match state.workers.get(&id) {
            Some(entry) => Some(entry.name.clone()),
            None => state
                .departed
                .iter()
                .rev()
                .find(|(gone, _)| *gone == id)
                .map(|(_, name)| name.clone()),
        }
    }

    /// Requests the engine still tracks (queued, running or abandoned-but-running).
    pub fn tracked_requests(&self) -> usize {
        self.inner.lock().requests.len()
    }
}

impl<T: ReplyTarget> Drop for Engine<T> {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl<T: ReplyTarget> Drop for Inner<T> {
    fn drop(&mut self) {
        // Lets the timer task notice that the engine is gone.
        self.wake.notify_one();
    }
}

impl<T: ReplyTarget> Inner<T> {
    /// The state stays usable after a panic elsewhere: every transition leaves it consistent
    /// enough to continue, and a poisoned pool would be worse than a missed counter.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_worker(
        self: &Arc<Self>,
        name: &str,
        f: impl FnOnce(&mut State<T>, WorkerId, Instant, &mut Vec<Action>),
    ) -> Result<(), WorkerError> {
        let now = Instant::now();
        let mut deliveries = Vec::new();
        {
            let mut state = self.lock();
            let id = *state
                .by_name
                .get(name)
                .ok_or_else(|| WorkerError::NotFound(name.to_owned()))?;
            let mut actions = Vec::new();
            f(&mut state, id, now, &mut actions);
            self.apply(&mut state, actions, None, now, &mut deliveries);
        }
        self.deliver(deliveries);
        Ok(())
    }
}
