//! The pool scheduler: a pure state machine (no I/O, no threads, no clock reads).
//!
//! Events go in ([`Scheduler::submit`], [`Scheduler::complete`], [`Scheduler::cancel`],
//! [`Scheduler::worker_up`] / [`Scheduler::worker_down`] / [`Scheduler::taint`],
//! [`Scheduler::close`], [`Scheduler::fail_queued`], [`Scheduler::tick`]), each with the current time `now`; [`Action`]s come
//! out, appended to a caller-owned vector (no allocation per event). The driver (the engine)
//! executes the actions and calls [`Scheduler::tick`] at [`Scheduler::next_wakeup`].
//!
//! # Outcome model
//!
//! Every submitted request ends in exactly one outcome:
//!
//! - **rejected**: an [`Action::Reject`] (at submit, or later while queued: queue timeout, the
//!   session's worker went away, close, every worker failed to start);
//! - **completed**: an [`Action::Dispatch`] followed by [`Scheduler::complete`] returning `true`
//!   (the driver answers the caller with the RPC result);
//! - **lost**: an [`Action::Dispatch`] followed by an [`Action::WorkerLost`] (its worker went
//!   down while it ran);
//! - **cancelled**: [`Scheduler::cancel`] (the caller gave up or died, so nobody is waiting for an
//!   answer). A queued request leaves the queue at once and nothing is emitted. An in-flight
//!   request gets an [`Action::CancelCall`]; its worker stays busy until the call returns
//!   ([`Scheduler::complete`], which then returns `false`) or the worker goes down (no
//!   `WorkerLost` is emitted for it). If it has not returned `abandon_grace` after the cancel, an
//!   [`Action::RecycleWorker`] is emitted for the worker (once per worker).
//!
//! Cancelling a request that already has its outcome, completing an unknown request, and events
//! about unknown workers are ignored (so the driver may race them freely).
//! Request ids must be unique among the requests the scheduler currently holds; a `submit` reusing
//! a live id is ignored.
//!
//! # Rules
//!
//! - A worker is *available* iff it is up (ready), not tainted, and its in-flight load (abandoned
//!   calls included) is below its capacity.
//! - Session affinity ([`Affinity`], pool default overridable per call). The session's worker is
//!   recorded synchronously at every dispatch, queued requests included.
//!   - `Hint`: the session's worker if available, else the least-loaded available worker (the
//!     session moves there), else queue (unpinned).
//!   - `StrictQueue`: the session's worker if available; if it is busy, queue *pinned* to it.
//!   - `StrictFailFast`: the session's worker if available; if it is busy,
//!     [`RejectReason::WorkerBusy`] at once.
//!   - Strict modes whose session worker is dead (removed) or tainted:
//!     [`RejectReason::SessionWorkerUnavailable`], also for requests already pinned to it, at the
//!     moment it goes away or is tainted. The session entry stays as a tombstone, so a strict session
//!     is never silently moved; `delete_session`, the idle TTL or LRU eviction clear it. A session
//!     with a call in flight is not idle: its entry is neither expired nor evicted meanwhile, and
//!     the end of the call counts as a use.
//!   - A strict request of a session without a recorded worker may run anywhere. If it had to queue
//!     and another request of its session is dispatched meanwhile, it is re-pinned to that worker at
//!     that moment (a fail-fast one is rejected `WorkerBusy` if that worker is then full).
//! - No session: the least-loaded available worker (relative to capacity), ties rotate.
//! - Queue: one FIFO of unpinned requests plus one FIFO per worker of the requests pinned to it,
//!   all ordered by a global arrival number. When a worker has a free slot it serves the earliest
//!   arrival among its pinned head and the unpinned head, so a pinned request never blocks others
//!   and requests for one worker run in arrival order. Invariant (checked by the tests): the
//!   unpinned queue is empty whenever any worker is available, and a worker's pinned queue is empty
//!   whenever that worker is available.
//! - The queue holds at most `max_queue_size` requests ([`RejectReason::PoolSaturated`]). A queued
//!   request's deadline is `min(caller deadline, enqueue time + queue_timeout)`; a request is never
//!   dispatched at or after its deadline ([`RejectReason::QueueTimeout`]; a request whose caller
//!   deadline has already passed at submit is rejected the same way). Expired requests are rejected
//!   by the first event at or after their deadline (the driver calls `tick` at `next_wakeup`).
//! - `submit` when no worker is registered queues normally (workers may be starting); `submit`
//!   after [`Scheduler::close`] is rejected with [`RejectReason::Closed`].
//! - [`Scheduler::fail_queued`] (the driver learnt that every worker failed to start) rejects
//!   every queued request with the given reason ([`RejectReason::NoWorkers`] in the engine) and,
//!   while no worker is registered, also the submits that would queue, until the next
//!   [`Scheduler::worker_up`].

mod affinity;
mod config;
mod queue;
mod types;
mod worker;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use affinity::AffinityTable;
use queue::{DeadlineHeap, Fifo, QEntry};
use types::IdMap;
use worker::WorkerTable;

pub use config::SchedulerConfig;
pub use types::{Action, Affinity, RejectReason, RequestId, SessionId, WorkerId};

/// One request handed to [`Scheduler::submit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit {
    /// The request's id (unique among live requests).
    pub id: RequestId,
    /// The caller's session, if any.
    pub session: Option<SessionId>,
    /// Per-call affinity override (`None`: the pool's default).
    pub affinity: Option<Affinity>,
    /// The caller's deadline (`None`: infinity).
    pub deadline: Option<Instant>,
}

/// Load of one worker, as reported by [`Scheduler::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    /// The worker.
    pub id: WorkerId,
    /// In-flight requests (abandoned calls still running included).
    pub load: u32,
    /// Its capacity.
    pub capacity: u32,
    /// Currently tainted.
    pub tainted: bool,
}

/// Counters and current state, as reported by [`Scheduler::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Submits received (all of them, rejected ones included).
    pub requests: u64,
    /// `Dispatch` actions emitted.
    pub dispatched: u64,
    /// Requests that entered the queue (cumulative).
    pub queued_total: u64,
    /// `Reject{QueueTimeout}` emitted.
    pub queue_timeouts: u64,
    /// `Reject{PoolSaturated}` emitted.
    pub saturated: u64,
    /// `Reject{WorkerBusy}` emitted.
    pub rejected_busy: u64,
    /// `Reject{SessionWorkerUnavailable}` emitted.
    pub rejected_unavailable: u64,
    /// `Reject{Closed}` emitted.
    pub rejected_closed: u64,
    /// `Reject{NoWorkers}` emitted ([`Scheduler::fail_queued`]).
    pub rejected_no_workers: u64,
    /// Requests cancelled (queued or in flight) before their outcome.
    pub cancelled: u64,
    /// `WorkerLost` emitted.
    pub worker_lost: u64,
    /// `complete` calls that returned `true`.
    pub completed: u64,
    /// `RecycleWorker` emitted.
    pub recycles: u64,
    /// Requests currently queued.
    pub queue_len: usize,
    /// Requests currently in flight (abandoned ones still running included).
    pub in_flight: usize,
    /// Every registered worker, by id.
    pub workers: Vec<WorkerStats>,
    /// Session→worker entries (tombstones included).
    pub sessions: usize,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Queued {
        seq: u64,
        pinned: Option<WorkerId>,
        deadline: Option<Instant>,
    },
    InFlight {
        worker: WorkerId,
        abandoned: bool,
    },
}

#[derive(Debug)]
struct Req {
    session: Option<SessionId>,
    mode: Affinity,
    state: State,
}

impl Req {
    #[inline]
    fn floating_strict(&self) -> bool {
        self.mode.is_strict() && self.session.is_some()
    }
}

/// The scheduler of one pool (see the module docs).
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    workers: WorkerTable,
    requests: IdMap<RequestId, Req>,
    unpinned: Fifo,
    deadlines: DeadlineHeap,
    grace: BinaryHeap<Reverse<(Instant, RequestId, WorkerId)>>,
    affinity: AffinityTable,
    /// Sessions with strict requests in the unpinned queue (count per session).
    unpinned_strict: HashMap<SessionId, u32>,
    taint_min: Option<Instant>,
    queued: usize,
    in_flight: usize,
    seq: u64,
    closed: bool,
    /// Set by `fail_queued` while no worker is registered; cleared by `worker_up`.
    failed: Option<RejectReason>,
    stats: SchedulerStats,
    dirty: Vec<WorkerId>,
    scratch: Vec<QEntry>,
}

impl Scheduler {
    /// A scheduler with no workers.
    pub fn new(config: SchedulerConfig) -> Self {
        let affinity = AffinityTable::new(config.affinity_ttl, config.max_affinity_entries);
        Scheduler {
            config,
            workers: WorkerTable::default(),
            requests: IdMap::default(),
            unpinned: Fifo::default(),
            deadlines: DeadlineHeap::default(),
            grace: BinaryHeap::new(),
            affinity,
            unpinned_strict: HashMap::new(),
            taint_min: None,
            queued: 0,
            in_flight: 0,
            seq: 0,
            closed: false,
            failed: None,
            stats: SchedulerStats::default(),
            dirty: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// A new request: dispatched at once, queued, or rejected (see the module docs).
    pub fn submit(&mut self, req: Submit, now: Instant, out: &mut Vec<Action>) {
        self.stats.requests += 1;
        self.poll(now, out);
        self.submit_inner(req, now, out);
        self.flush(now, out);
    }

    /// The RPC of `request` returned. Returns `true` iff the caller must get the result (`false`:
    /// unknown, not in flight, already answered by `WorkerLost`, or abandoned). Frees the worker's
    /// slot, which may dispatch queued requests.
    pub fn complete(&mut self, request: RequestId, now: Instant, out: &mut Vec<Action>) -> bool {
        self.poll(now, out);
        let Some(State::InFlight { worker, abandoned }) =
            self.requests.get(&request).map(|r| r.state)
        else {
            return false;
        };
        let r = self.requests.remove(&request);
        self.in_flight -= 1;
        if let Some(s) = r.as_ref().and_then(|r| r.session.as_ref()) {
            self.affinity.call_ended(s.as_str(), now);
        }
        if let Some(idx) = self.workers.index_of(worker) {
            self.workers.dec_load(idx);
            self.drain(idx, now, out);
        }
        self.flush(now, out);
        if !abandoned {
            self.stats.completed += 1;
        }
        !abandoned
    }

    /// The caller gave up on `request` (timed out or died). A queued request leaves the queue
    /// silently; an in-flight one gets `CancelCall` (its worker stays busy until `complete`).
    /// Idempotent.
    pub fn cancel(&mut self, request: RequestId, now: Instant, out: &mut Vec<Action>) {
        self.poll(now, out);
        let Some(r) = self.requests.get_mut(&request) else {
            return;
        };
        match r.state {
            State::Queued { .. } => {
                self.unqueue(request);
                self.stats.cancelled += 1;
            }
            State::InFlight {
                worker,
                abandoned: false,
            } => {
                r.state = State::InFlight {
                    worker,
                    abandoned: true,
                };
                self.stats.cancelled += 1;
                out.push(Action::CancelCall { request, worker });
                if let Some(due) = self.config.abandon_grace.and_then(|g| now.checked_add(g)) {
                    self.grace.push(Reverse((due, request, worker)));
                    if due <= now {
                        self.expire_graces(now, out);
                    }
                }
            }
            State::InFlight {
                abandoned: true, ..
            } => {}
        }
        self.flush(now, out);
    }

    /// `worker` is ready with `capacity` concurrent slots (min 1); queued requests it may serve
    /// are dispatched. For a known worker, updates its capacity.
    pub fn worker_up(
        &mut self,
        worker: WorkerId,
        capacity: u32,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.poll(now, out);
        self.failed = None;
        let idx = self.workers.upsert(worker, capacity);
        self.drain(idx, now, out);
        self.flush(now, out);
    }

    /// `worker` is gone (dead or removed): its in-flight requests get `WorkerLost` (abandoned ones
    /// end silently), requests pinned to it get `SessionWorkerUnavailable`, and it is forgotten.
    /// Session entries naming it stay as tombstones.
    pub fn worker_down(&mut self, worker: WorkerId, now: Instant, out: &mut Vec<Action>) {
        self.poll(now, out);
        let Some(mut w) = self.workers.remove(worker) else {
            return;
        };
        if w.tainted_until.is_some() {
            self.taint_min = self.workers.next_taint_expiry();
        }
        for e in w.pinned.take_all() {
            if self.requests.remove(&e.id).is_some() {
                self.queued -= 1;
                self.reject(e.id, RejectReason::SessionWorkerUnavailable, out);
            }
        }
        if w.load > 0 {
            let mut lost: Vec<(RequestId, bool)> = self
                .requests
                .iter()
                .filter_map(|(&id, r)| match r.state {
                    State::InFlight {
                        worker: wid,
                        abandoned,
                    } if wid == worker => Some((id, abandoned)),
                    _ => None,
                })
                .collect();
            lost.sort_unstable();
            for (id, abandoned) in lost {
                if let Some(s) = self.requests.remove(&id).and_then(|r| r.session) {
                    self.affinity.call_lost(s.as_str());
                }
                self.in_flight -= 1;
                if !abandoned {
                    self.stats.worker_lost += 1;
                    out.push(Action::WorkerLost {
                        request: id,
                        worker,
                    });
                }
            }
        }
        self.flush(now, out);
    }

    /// `worker` is tainted until `until`: not available meanwhile, strict sessions on it (queued
    /// requests pinned to it included) get `SessionWorkerUnavailable`. In-flight calls continue.
    /// An `until` not after `now` is ignored; a shorter taint does not shorten a longer one.
    pub fn taint(&mut self, worker: WorkerId, until: Instant, now: Instant, out: &mut Vec<Action>) {
        self.poll(now, out);
        if until <= now {
            return;
        }
        let Some(idx) = self.workers.index_of(worker) else {
            return;
        };
        self.workers.update(idx, |w| {
            w.tainted_until = Some(w.tainted_until.map_or(until, |t| t.max(until)));
        });
        self.taint_min = self.workers.next_taint_expiry();
        for e in self.workers.pinned_mut(idx).take_all() {
            if self.requests.remove(&e.id).is_some() {
                self.queued -= 1;
                self.reject(e.id, RejectReason::SessionWorkerUnavailable, out);
            }
        }
        self.flush(now, out);
    }

    /// Forgets the session's worker (a tombstone included). Requests already pinned stay pinned.
    pub fn delete_session(&mut self, session: &str) {
        self.affinity.remove(session);
    }

    /// Rejects every queued request with `Closed` (in arrival order) and refuses new ones.
    /// In-flight requests run to their end. Idempotent.
    pub fn close(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.poll(now, out);
        self.closed = true;
        self.reject_all_queued(RejectReason::Closed, out);
    }

    /// The pool cannot serve anything for now (every worker failed to start): rejects every
    /// queued request, pinned and unpinned, with `reason` (in arrival order; requests whose
    /// deadline has passed get `QueueTimeout` first). In-flight requests are not touched. If no
    /// worker is registered, the pool stays failed until the next [`Scheduler::worker_up`]:
    /// meanwhile a `submit` that would queue is rejected with `reason` too (a caller that checked
    /// the pool's health just before it failed must not wait for the queue timeout). After
    /// `close`, only the queue is emptied (it already is). Idempotent.
    pub fn fail_queued(&mut self, reason: RejectReason, now: Instant, out: &mut Vec<Action>) {
        self.poll(now, out);
        if self.workers.len() == 0 {
            self.failed = Some(reason);
        }
        self.reject_all_queued(reason, out);
    }

    /// Time passes: expired queued requests are rejected (`QueueTimeout`), taints end, abandoned
    /// calls past their grace trigger `RecycleWorker`, idle session entries are forgotten.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.poll(now, out);
        self.affinity.purge_expired(now);
        self.maybe_compact_deadlines();
        self.flush(now, out);
    }

    /// When [`Scheduler::tick`] should be called next (`None`: nothing pending). May be early,
    /// never late.
    pub fn next_wakeup(&self) -> Option<Instant> {
        [
            self.deadlines.peek_deadline(),
            self.taint_min,
            self.grace.peek().map(|Reverse((d, _, _))| *d),
            self.affinity.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Counters, queue length and per-worker load.
    pub fn stats(&self) -> SchedulerStats {
        let mut s = self.stats.clone();
        s.queue_len = self.queued;
        s.in_flight = self.in_flight;
        s.sessions = self.affinity.len();
        s.workers = self
            .workers
            .iter()
            .map(|w| WorkerStats {
                id: w.id,
                load: w.load,
                capacity: w.capacity,
                tainted: w.tainted_until.is_some(),
            })
            .collect();
        s.workers.sort_unstable_by_key(|w| w.id);
        s
    }

    /// The worker recorded for `session` (possibly a tombstone of a dead worker, or an entry that
    /// expired but was not purged by `tick` yet).
    pub fn session_worker(&self, session: &str) -> Option<WorkerId> {
        self.affinity.peek(session)
    }

    // ----- internals -------------------------------------------------------------------------

    /// Rejects every queued request (pinned and unpinned) with `reason`, in arrival order.
    fn reject_all_queued(&mut self, reason: RejectReason, out: &mut Vec<Action>) {
        let mut all: Vec<QEntry> = self.unpinned.take_all().into();
        for idx in 0..self.workers.len() {
            all.extend(self.workers.pinned_mut(idx).take_all());
        }
        all.sort_unstable();
        for e in all {
            if self.requests.remove(&e.id).is_some() {
                self.reject(e.id, reason, out);
            }
        }
        self.queued = 0;
        self.unpinned_strict.clear();
        self.deadlines.clear();
    }

    fn submit_inner(&mut self, req: Submit, now: Instant, out: &mut Vec<Action>) {
        let Submit {
            id,
            session,
            affinity,
            deadline,
        } = req;
        if self.closed {
            self.reject(id, RejectReason::Closed, out);
            return;
        }
        if self.requests.contains_key(&id) {
            return;
        }
        if deadline.is_some_and(|d| d <= now) {
            self.reject(id, RejectReason::QueueTimeout, out);
            return;
        }
        let mode = affinity.unwrap_or(self.config.default_affinity);
        if let Some(s) = &session {
            if let Some(pref) = self.affinity.get(s.as_str(), now) {
                match self.workers.index_of(pref) {
                    Some(idx) if self.workers.get(idx).available() => {
                        self.dispatch_new(id, session, mode, idx, now, out);
                        return;
                    }
                    Some(idx) if self.workers.get(idx).tainted_until.is_none() => match mode {
                        Affinity::Hint => {}
                        Affinity::StrictQueue => {
                            self.enqueue(id, session, mode, deadline, Some(idx), now, out);
                            return;
                        }
                        Affinity::StrictFailFast => {
                            self.reject(id, RejectReason::WorkerBusy, out);
                            return;
                        }
                    },
                    _ => {
                        if mode.is_strict() {
                            self.reject(id, RejectReason::SessionWorkerUnavailable, out);
                            return;
                        }
                    }
                }
            }
        }
        match (self.workers.pick_least_loaded(), self.failed) {
            (Some(idx), _) => self.dispatch_new(id, session, mode, idx, now, out),
            // `failed` is only set while no worker is registered
            (None, Some(reason)) => self.reject(id, reason, out),
            (None, None) => self.enqueue(id, session, mode, deadline, None, now, out),
        }
    }

    #[inline]
    fn reject(&mut self, request: RequestId, reason: RejectReason, out: &mut Vec<Action>) {
        let c = match reason {
            RejectReason::PoolSaturated => &mut self.stats.saturated,
            RejectReason::NoWorkers => &mut self.stats.rejected_no_workers,
            RejectReason::QueueTimeout => &mut self.stats.queue_timeouts,
            RejectReason::WorkerBusy => &mut self.stats.rejected_busy,
            RejectReason::SessionWorkerUnavailable => &mut self.stats.rejected_unavailable,
            RejectReason::Closed => &mut self.stats.rejected_closed,
        };
        *c += 1;
        out.push(Action::Reject { request, reason });
    }

    /// Processes everything due at `now`: deadlines, taint ends, abandon graces.
    #[inline]
    fn poll(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.deadlines.peek_deadline().is_some_and(|d| d <= now) {
            self.expire_deadlines(now, out);
        }
        if self.taint_min.is_some_and(|t| t <= now) {
            self.expire_taints(now, out);
        }
        if self
            .grace
            .peek()
            .is_some_and(|Reverse((d, _, _))| *d <= now)
        {
            self.expire_graces(now, out);
        }
    }

    fn expire_deadlines(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some((seq, id)) = self.deadlines.pop_due(now) {
            let live = matches!(
                self.requests.get(&id).map(|r| r.state),
                Some(State::Queued { seq: s, .. }) if s == seq
            );
            if live {
                self.unqueue(id);
                self.reject(id, RejectReason::QueueTimeout, out);
            }
        }
    }

    fn expire_taints(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut freed = Vec::new();
        self.workers.expire_taints(now, &mut freed);
        self.taint_min = self.workers.next_taint_expiry();
        // drain at once: the event being processed must not overtake the queue
        for w in freed {
            if let Some(idx) = self.workers.index_of(w) {
                self.drain(idx, now, out);
            }
        }
    }

    fn expire_graces(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(&Reverse((due, request, worker))) = self.grace.peek() {
            if due > now {
                break;
            }
            self.grace.pop();
            let running = matches!(
                self.requests.get(&request).map(|r| r.state),
                Some(State::InFlight { worker: w, abandoned: true }) if w == worker
            );
            if !running {
                continue;
            }
            if let Some(idx) = self.workers.index_of(worker) {
                let first = self
                    .workers
                    .update(idx, |w| !std::mem::replace(&mut w.recycle_sent, true));
                if first {
                    self.stats.recycles += 1;
                    out.push(Action::RecycleWorker { worker });
                }
            }
        }
    }

    /// Drains the workers marked dirty (their pinned queue may have gained requests while they
    /// had free slots).
    #[inline]
    fn flush(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(w) = self.dirty.pop() {
            if let Some(idx) = self.workers.index_of(w) {
                self.drain(idx, now, out);
            }
        }
    }

    /// Removes a queued request from its FIFO and from the table, keeping counters right.
    fn unqueue(&mut self, id: RequestId) -> Option<Req> {
        let r = self.requests.remove(&id)?;
        let State::Queued { seq, pinned, .. } = r.state else {
            // not queued: put it back
            self.requests.insert(id, r);
            return None;
        };
        let removed = match pinned {
            Some(w) => match self.workers.index_of(w) {
                Some(idx) => self.workers.pinned_mut(idx).remove(seq),
                None => false,
            },
            None => {
                if r.floating_strict() {
                    self.unpinned_strict_dec(r.session.as_ref().map(|s| s.as_str()));
                }
                self.unpinned.remove(seq)
            }
        };
        debug_assert!(removed, "queued request missing from its FIFO");
        self.queued -= 1;
        Some(r)
    }

    fn unpinned_strict_dec(&mut self, session: Option<&str>) {
        if let Some(s) = session {
            if let Some(c) = self.unpinned_strict.get_mut(s) {
                *c -= 1;
                if *c == 0 {
                    self.unpinned_strict.remove(s);
                }
            }
        }
    }

    fn maybe_compact_deadlines(&mut self) {
        if self.deadlines.len() > 2 * self.queued + 64 {
            let requests = &self.requests;
            self.deadlines.compact(|seq, id| {
                matches!(requests.get(&id).map(|r| r.state),
                    Some(State::Queued { seq: s, .. }) if s == seq)
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        id: RequestId,
        session: Option<SessionId>,
        mode: Affinity,
        caller_deadline: Option<Instant>,
        pinned: Option<usize>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.queued >= self.config.max_queue_size {
            self.reject(id, RejectReason::PoolSaturated, out);
            return;
        }
        let deadline = match now.checked_add(self.config.queue_timeout) {
            Some(q) => Some(caller_deadline.map_or(q, |c| c.min(q))),
            None => caller_deadline,
        };
        if deadline.is_some_and(|d| d <= now) {
            self.reject(id, RejectReason::QueueTimeout, out);
            return;
        }
        let seq = self.seq;
        self.seq += 1;
        let e = QEntry { seq, id };
        let pinned_id = match pinned {
            Some(idx) => {
                self.workers.pinned_mut(idx).push_back(e);
                Some(self.workers.get(idx).id)
            }
            None => {
                self.unpinned.push_back(e);
                if mode.is_strict() {
                    if let Some(s) = &session {
                        *self.unpinned_strict.entry(s.clone()).or_insert(0) += 1;
                    }
                }
                None
            }
        };
        if let Some(d) = deadline {
            self.maybe_compact_deadlines();
            self.deadlines.push(d, seq, id);
        }
        self.queued += 1;
        self.stats.queued_total += 1;
        self.requests.insert(
            id,
            Req {
                session,
                mode,
                state: State::Queued {
                    seq,
                    pinned: pinned_id,
                    deadline,
                },
            },
        );
    }

    /// Dispatches a request that is not in the table to the available worker in slot `idx`.
    #[inline]
    fn dispatch_new(
        &mut self,
        id: RequestId,
        session: Option<SessionId>,
        mode: Affinity,
        idx: usize,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let req = Req {
            session,
            mode,
            state: State::Queued {
                seq: 0,
                pinned: None,
                deadline: None,
            },
        };
        self.dispatch(id, req, idx, now, out);
    }

    /// Dispatches `req` (already out of any queue) to the available worker in slot `idx`.
    #[inline]
    fn dispatch(
        &mut self,
        id: RequestId,
        mut req: Req,
        idx: usize,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        debug_assert!(self.workers.get(idx).available());
        let worker = self.workers.get(idx).id;
        self.workers.inc_load(idx);
        self.in_flight += 1;
        self.stats.dispatched += 1;
        req.state = State::InFlight {
            worker,
            abandoned: false,
        };
        out.push(Action::Dispatch {
            request: id,
            worker,
        });
        if let Some(s) = &req.session {
            self.bind_session(s, idx, worker, now, out);
        }
        self.requests.insert(id, req);
    }

    /// Records `session → worker` and re-pins the session's strict requests waiting unpinned.
    fn bind_session(
        &mut self,
        s: &SessionId,
        idx: usize,
        worker: WorkerId,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.affinity.bind(s, worker, now);
        if self.unpinned_strict.is_empty() || self.unpinned_strict.remove(s.as_str()).is_none() {
            return;
        }
        let mut moved = std::mem::take(&mut self.scratch);
        let requests = &self.requests;
        self.unpinned.extract_into(&mut moved, |e| {
            requests
                .get(&e.id)
                .is_none_or(|r| !(r.floating_strict() && r.session.as_ref() == Some(s)))
        });
        let avail = self.workers.get(idx).available();
        for e in moved.drain(..) {
            let Some(r) = self.requests.get_mut(&e.id) else {
                continue;
            };
            if r.mode == Affinity::StrictFailFast && !avail {
                self.requests.remove(&e.id);
                self.queued -= 1;
                self.reject(e.id, RejectReason::WorkerBusy, out);
            } else {
                if let State::Queued { pinned, .. } = &mut r.state {
                    *pinned = Some(worker);
                }
                self.workers.pinned_mut(idx).insert_sorted(e);
            }
        }
        self.scratch = moved;
        if avail {
            self.dirty.push(worker);
        }
    }

    /// Serves queued requests with the free slots of the worker in slot `idx`: each time the
    /// earliest arrival among its pinned head and the unpinned head.
    fn drain(&mut self, idx: usize, now: Instant, out: &mut Vec<Action>) {
        loop {
            let w = self.workers.get(idx);
            if !w.available() {
                return;
            }
            let wid = w.id;
            let (e, from_pinned) = match (w.pinned.front(), self.unpinned.front()) {
                (None, None) => return,
                (Some(p), None) => (p, true),
                (None, Some(u)) => (u, false),
                (Some(p), Some(u)) => {
                    if p.seq < u.seq {
                        (p, true)
                    } else {
                        (u, false)
                    }
                }
            };
            if from_pinned {
                self.workers.pinned_mut(idx).pop_front();
            } else {
                self.unpinned.pop_front();
            }
            self.queued -= 1;
            let Some(r) = self.requests.remove(&e.id) else {
                debug_assert!(false, "queued request missing from the table");
                continue;
            };
            let State::Queued { deadline, .. } = r.state else {
                debug_assert!(false, "queued entry of a request not queued");
                continue;
            };
            if !from_pinned && r.floating_strict() {
                self.unpinned_strict_dec(r.session.as_ref().map(|s| s.as_str()));
            }
            if deadline.is_some_and(|d| d <= now) {
                self.reject(e.id, RejectReason::QueueTimeout, out);
                continue;
            }
            if !from_pinned && r.floating_strict() {
                // Defensive: bind_session re-pins these when their session gets a worker, so the
                // session has no worker here, or it is this one.
                let pref = r
                    .session
                    .as_ref()
                    .and_then(|s| self.affinity.get(s.as_str(), now));
                if let Some(v) = pref.filter(|&v| v != wid) {
                    self.rehome(e, r, v, deadline, out);
                    continue;
                }
            }
            self.dispatch(e.id, r, idx, now, out);
        }
    }

    /// Moves a strict request popped from the unpinned queue to the queue of its session's worker.
    fn rehome(
        &mut self,
        e: QEntry,
        mut r: Req,
        v: WorkerId,
        deadline: Option<Instant>,
        out: &mut Vec<Action>,
    ) {
        let vi = match self.workers.index_of(v) {
            Some(vi) if self.workers.get(vi).tainted_until.is_none() => vi,
            _ => {
                self.reject(e.id, RejectReason::SessionWorkerUnavailable, out);
                return;
            }
        };
        let avail = self.workers.get(vi).available();
        if r.mode == Affinity::StrictFailFast && !avail {
            self.reject(e.id, RejectReason::WorkerBusy, out);
            return;
        }
        r.state = State::Queued {
            seq: e.seq,
            pinned: Some(v),
            deadline,
        };
        self.workers.pinned_mut(vi).insert_sorted(e);
        self.queued += 1;
        self.requests.insert(e.id, r);
        if avail {
            self.dirty.push(v);
        }
    }
}
