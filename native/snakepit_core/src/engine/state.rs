//! The engine's tables and the translation of scheduler actions into effects.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Handle;
use tokio::sync::{oneshot, Semaphore};

use super::slot::Slot;
use super::task;
use super::types::{ErrorReason, Outcome, ReplyTarget};
use super::Inner;
use crate::codec::Value;
use crate::pb::ExecuteToolRequest;
use crate::scheduler::{
    Action, Affinity, RejectReason, RequestId, Scheduler, SessionId, Submit, WorkerId,
};
use crate::transport::WorkerClient;

/// Everything behind the engine's lock.
pub(crate) struct State<T: ReplyTarget> {
    pub(crate) scheduler: Scheduler,
    /// Requests from submit until the scheduler is done with them (rejected, cancelled while
    /// queued, or completed after their RPC ended).
    pub(crate) requests: HashMap<RequestId, Pending<T>>,
    /// Slots whose final reply is decided but not sent yet (it is sent after the lock is
    /// released). `cancel` looks here too, so a caller that cancels in that window still gets
    /// no message after `cancel` returns.
    pub(crate) replying: HashMap<RequestId, Arc<Slot<T>>>,
    pub(crate) workers: HashMap<WorkerId, WorkerEntry>,
    pub(crate) by_name: HashMap<Arc<str>, WorkerId>,
    /// Names of removed workers, newest last: a strict session keeps its dead worker as a
    /// tombstone, and callers asking where the session lives should see that worker's name.
    /// Bounded (oldest forgotten first) so a pool that recycles workers forever stays small.
    pub(crate) departed: VecDeque<(WorkerId, Arc<str>)>,
    next_worker: u64,
    /// The wakeup the timer task currently sleeps towards.
    pub(crate) armed: Option<Instant>,
    /// Requests resubmitted after losing their worker.
    pub(crate) retries: u64,
    /// `close` was called.
    pub(crate) closed: bool,
}

/// A request the engine tracks.
pub(crate) struct Pending<T: ReplyTarget> {
    pub(crate) slot: Arc<Slot<T>>,
    /// The encoded call, until dispatch.
    pub(crate) job: Option<ExecuteToolRequest>,
    pub(crate) deadline: Option<Instant>,
    /// Stream credits (`Some` for streaming calls).
    pub(crate) credits: Option<Arc<Semaphore>>,
    /// Aborts the running task (`Some` while dispatched).
    pub(crate) kill: Option<oneshot::Sender<()>>,
    /// The worker running it, once dispatched (`None` while queued).
    pub(crate) worker: Option<WorkerId>,
    /// The caller's session and affinity override, for a resubmission.
    pub(crate) session: Option<SessionId>,
    pub(crate) affinity: Option<Affinity>,
    /// Resubmissions left after a lost worker (0 for streams). While `> 0`, `job` is kept
    /// (cloned at dispatch) so the call can be sent again.
    pub(crate) retries_left: u32,
    /// Dispatch generation: a resubmission bumps it, so the task of a superseded attempt cannot
    /// complete or answer the request.
    pub(crate) attempt: u32,
}

/// A worker that is up.
pub(crate) struct WorkerEntry {
    pub(crate) name: Arc<str>,
    pub(crate) client: WorkerClient,
}

/// An effect to perform once the lock is released.
pub(crate) enum Delivery<T: ReplyTarget> {
    /// The final outcome of a request (registered in `State::replying` until sent).
    Reply(RequestId, Arc<Slot<T>>, Outcome),
    Recycle(Arc<str>),
}

impl<T: ReplyTarget> State<T> {
    pub(crate) fn new(scheduler: Scheduler) -> Self {
        State {
            scheduler,
            requests: HashMap::new(),
            replying: HashMap::new(),
            workers: HashMap::new(),
            by_name: HashMap::new(),
            departed: VecDeque::new(),
            next_worker: 1,
            armed: None,
            retries: 0,
            closed: false,
        }
    }

    /// Decides the final reply of `id`: queued in `out` for delivery once the lock is released,
    /// and findable by `cancel` until then.
    pub(crate) fn reply(
        &mut self,
        out: &mut Vec<Delivery<T>>,
        id: RequestId,
        slot: Arc<Slot<T>>,
        outcome: Outcome,
    ) {
        self.replying.insert(id, slot.clone());
        out.push(Delivery::Reply(id, slot, outcome));
    }

    /// Worker ids are never reused: a re-added name is a new process (see `WorkerId`).
    pub(crate) fn new_worker_id(&mut self) -> WorkerId {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        id
    }

    fn worker_name(&self, id: WorkerId) -> Arc<str> {
        self.workers
            .get(&id)
            .map(|w| w.name.clone())
            .unwrap_or_else(|| Arc::from(format!("worker-{}", id.0)))
    }
}

impl<T: ReplyTarget> Inner<T> {
    /// Turns actions into effects. `lost` is the (name, reason) of the worker being taken down,
    /// for the `WorkerLost` actions of `worker_down`.
    pub(crate) fn apply(
        self: &Arc<Self>,
        state: &mut State<T>,
        actions: Vec<Action>,
        lost: Option<&(Arc<str>, Value)>,
        now: Instant,
        out: &mut Vec<Delivery<T>>,
    ) {
        for action in actions {
            match action {
                Action::Dispatch { request, worker } => {
                    self.dispatch(state, request, worker, now, out)
                }
                Action::Reject { request, reason } => {
                    if let Some(p) = state.requests.remove(&request) {
                        state.reply(
                            out,
                            request,
                            p.slot,
                            Outcome::Error(ErrorReason::Pool(reason)),
                        );
                    }
                }
                Action::WorkerLost { request, worker } => {
                    let (name, reason) = match lost {
                        Some((name, reason)) => (name.clone(), reason.clone()),
                        None => (state.worker_name(worker), Value::str("worker_lost")),
                    };
                    let crash = Outcome::Error(ErrorReason::WorkerExit {
                        worker: name,
                        reason,
                    });
                    let default_affinity = state.scheduler.config().default_affinity;
                    let Some(p) = state.requests.get_mut(&request) else {
                        continue;
                    };
                    if let Some(kill) = p.kill.take() {
                        let _ = kill.send(());
                    }
                    if p.retries_left == 0 || p.job.is_none() {
                        // The task stays tracked until it ends (its `finish` then finds the
                        // scheduler done with the request and sends nothing).
                        let slot = p.slot.clone();
                        state.reply(out, request, slot, crash);
                        continue;
                    }
                    p.retries_left -= 1;
                    let strict =
                        p.session.is_some() && p.affinity.unwrap_or(default_affinity).is_strict();
                    if strict {
                        // Never moved: the session's worker is gone (a tombstone).
                        if let Some(p) = state.requests.remove(&request) {
                            let unavailable = Outcome::Error(ErrorReason::Pool(
                                RejectReason::SessionWorkerUnavailable,
                            ));
                            state.reply(out, request, p.slot, unavailable);
                        }
                    } else {
                        self.resubmit(state, request, crash, now, out);
                    }
                }
                Action::CancelCall { request, .. } => {
                    // Streams stop at once; unary calls run on until Python returns (see the
                    // module docs), their result discarded.
                    if let Some(p) = state.requests.get_mut(&request) {
                        if p.credits.is_some() {
                            if let Some(kill) = p.kill.take() {
                                let _ = kill.send(());
                            }
                        }
                    }
                }
                Action::RecycleWorker { worker } => {
                    if let Some(w) = state.workers.get(&worker) {
                        out.push(Delivery::Recycle(w.name.clone()));
                    }
                }
            }
        }
        self.rearm(state);
    }

    /// Sends request `id`, whose worker was lost, through the scheduler again as a new attempt.
    /// If the scheduler refuses it, the caller gets `fallback` (the `WorkerExit` it would have
    /// had without a retry).
    fn resubmit(
        self: &Arc<Self>,
        state: &mut State<T>,
        id: RequestId,
        fallback: Outcome,
        now: Instant,
        out: &mut Vec<Delivery<T>>,
    ) {
        let Some(p) = state.requests.get_mut(&id) else {
            return;
        };
        p.attempt = p.attempt.wrapping_add(1);
        p.worker = None;
        p.kill = None;
        let submit = Submit {
            id,
            session: p.session.clone(),
            affinity: p.affinity,
            deadline: p.deadline,
        };
        state.retries += 1;
        let mut actions = Vec::new();
        state.scheduler.submit(submit, now, &mut actions);
        let refused = actions
            .iter()
            .position(|a| matches!(a, Action::Reject { request, .. } if *request == id));
        if let Some(i) = refused {
            actions.remove(i);
            if let Some(p) = state.requests.remove(&id) {
                state.reply(out, id, p.slot, fallback);
            }
        }
        self.apply(state, actions, None, now, out);
    }

    fn dispatch(
        self: &Arc<Self>,
        state: &mut State<T>,
        request: RequestId,
        worker: WorkerId,
        now: Instant,
        out: &mut Vec<Delivery<T>>,
    ) {
        let client = state
            .workers
            .get(&worker)
            .map(|w| (w.name.clone(), w.client.clone()));
        let Some(pending) = state.requests.get_mut(&request) else {
            // Not ours (already finished): give the slot straight back.
            let mut actions = Vec::new();
            state.scheduler.complete(request, now, &mut actions);
            self.apply(state, actions, None, now, out);
            return;
        };
        // A call that may be retried keeps its encoded request for the next attempt.
        let job = if pending.retries_left > 0 {
            pending.job.clone()
        } else {
            pending.job.take()
        };
        let (Some((name, client)), Some(mut job)) = (client, job) else {
            let slot = pending.slot.clone();
            state.requests.remove(&request);
            let mut actions = Vec::new();
            state.scheduler.complete(request, now, &mut actions);
            let unknown = Outcome::grpc("internal", "dispatched to an unknown worker");
            state.reply(out, request, slot, unknown);
            self.apply(state, actions, None, now, out);
            return;
        };
        if job.session_id.is_empty() {
            job.session_id = name.to_string();
        }
        let (kill_tx, kill_rx) = oneshot::channel();
        pending.kill = Some(kill_tx);
        pending.worker = Some(worker);
        let job = task::Job {
            id: request,
            attempt: pending.attempt,
            client,
            call: job,
            deadline: pending.deadline,
            slot: pending.slot.clone(),
            credits: pending.credits.clone(),
            kill: kill_rx,
        };
        self.handle.spawn(task::run(self.clone(), job));
    }

    /// Aborts every task still running on a worker that went away, abandoned ones included
    /// (the scheduler forgets those silently, but their RPC would otherwise linger until the
    /// connection breaks).
    pub(crate) fn kill_worker_tasks(state: &mut State<T>, worker: WorkerId) {
        for p in state.requests.values_mut() {
            if p.worker == Some(worker) {
                if let Some(kill) = p.kill.take() {
                    let _ = kill.send(());
                }
            }
        }
    }

    /// Wakes the timer task when the scheduler's next wakeup moved earlier.
    fn rearm(&self, state: &mut State<T>) {
        let next = state.scheduler.next_wakeup();
        let earlier = match (next, state.armed) {
            (Some(n), Some(a)) => n < a,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if earlier {
            state.armed = next;
            self.wake.notify_one();
        }
    }

    /// Performs effects outside the lock: inline on a tokio thread, else on a spawned task,
    /// so no reply ever runs on a BEAM scheduler thread.
    pub(crate) fn deliver(self: &Arc<Self>, deliveries: Vec<Delivery<T>>) {
        if deliveries.is_empty() {
            return;
        }
        if Handle::try_current().is_ok() {
            self.deliver_now(deliveries);
        } else {
            let this = self.clone();
            self.handle
                .spawn(async move { this.deliver_now(deliveries) });
        }
    }

    fn deliver_now(&self, deliveries: Vec<Delivery<T>>) {
        let mut sent = Vec::new();
        for d in deliveries {
            // One failing target must not cost the others in the batch their reply (`close`
            // answers every queued request at once).
            let _ = catch_unwind(AssertUnwindSafe(|| match d {
                Delivery::Reply(id, slot, outcome) => {
                    sent.push(id);
                    slot.reply(outcome);
                }
                Delivery::Recycle(name) => self.events.recycle_worker(&name),
            }));
        }
        if !sent.is_empty() {
            let mut state = self.lock();
            for id in sent {
                state.replying.remove(&id);
            }
        }
    }

    /// The RPC task of attempt `attempt` of `id` ended with `outcome`: tell the scheduler, then
    /// answer the caller if the scheduler says it is still waiting (and nobody answered already).
    /// A superseded attempt (the request was resubmitted meanwhile) changes nothing.
    pub(crate) fn finish(self: &Arc<Self>, id: RequestId, attempt: u32, outcome: Outcome) {
        let now = Instant::now();
        let mut deliveries = Vec::new();
        let slot = {
            let mut state = self.lock();
            if state.requests.get(&id).is_none_or(|p| p.attempt != attempt) {
                return;
            }
            let Some(pending) = state.requests.remove(&id) else {
                return;
            };
            let mut actions = Vec::new();
            let answer = state.scheduler.complete(id, now, &mut actions);
            self.apply(&mut state, actions, None, now, &mut deliveries);
            if answer {
                state.reply(&mut deliveries, id, pending.slot, outcome);
                None
            } else {
                Some(pending.slot)
            }
        };
        // Dropped outside the lock (normally already empty: answered or cancelled).
        drop(slot);
        self.deliver(deliveries);
    }

    /// The caller's deadline passed while the unary RPC of `id` runs: answer it now and mark
    /// the request abandoned, so the scheduler's grace clock starts.
    pub(crate) fn expire(self: &Arc<Self>, id: RequestId, slot: &Slot<T>) {
        slot.reply(Outcome::grpc(
            "deadline_exceeded",
            "caller deadline exceeded",
        ));
        self.abandon(id);
    }

    pub(crate) fn cancel(self: &Arc<Self>, id: RequestId) {
        let slot = {
            let state = self.lock();
            // A reply decided but not yet sent is still cancellable: its slot is in `replying`.
            state
                .requests
                .get(&id)
                .map(|p| p.slot.clone())
                .or_else(|| state.replying.get(&id).cloned())
        };
        if let Some(slot) = slot {
            // Outside the engine lock: discarding waits for a reply that is being sent.
            slot.discard();
            self.abandon(id);
        }
    }

    fn abandon(self: &Arc<Self>, id: RequestId) {
        let now = Instant::now();
        let mut deliveries = Vec::new();
        {
            let mut state = self.lock();
            let Some(pending) = state.requests.get(&id) else {
                return;
            };
            let queued = pending.worker.is_none();
            let mut actions = Vec::new();
            state.scheduler.cancel(id, now, &mut actions);
            if queued {
                // Never dispatched: the scheduler has forgotten it; so do we.
                state.requests.remove(&id);
            }
            self.apply(&mut state, actions, None, now, &mut deliveries);
        }
        self.deliver(deliveries);
    }

    pub(crate) fn close(self: &Arc<Self>) {
        let now = Instant::now();
        let mut deliveries = Vec::new();
        {
            let mut state = self.lock();
            state.closed = true;
            let mut actions = Vec::new();
            state.scheduler.close(now, &mut actions);
            self.apply(&mut state, actions, None, now, &mut deliveries);
        }
        self.deliver(deliveries);
    }

    pub(crate) fn fail_queued(self: &Arc<Self>) {
        let now = Instant::now();
        let mut deliveries = Vec::new();
        {
            let mut state = self.lock();
            let mut actions = Vec::new();
            state
                .scheduler
                .fail_queued(RejectReason::NoWorkers, now, &mut actions);
            self.apply(&mut state, actions, None, now, &mut deliveries);
        }
        self.deliver(deliveries);
    }

    /// Runs the scheduler's timers; returns when to come back.
    pub(crate) fn tick(self: &Arc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let mut deliveries = Vec::new();
        let next = {
            let mut state = self.lock();
            let mut actions = Vec::new();
            state.scheduler.tick(now, &mut actions);
            // The timer task is awake now: no need to notify it about wakeups found here.
            state.armed = Some(now);
            self.apply(&mut state, actions, None, now, &mut deliveries);
            let next = state.scheduler.next_wakeup();
            state.armed = next;
            next
        };
        self.deliver(deliveries);
        next
    }
}
