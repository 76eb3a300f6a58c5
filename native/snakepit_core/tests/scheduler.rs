//! Deterministic unit tests of the scheduler rules (clock passed in, no sleeps).

use std::time::{Duration, Instant};

use snakepit_core::scheduler::{
    Action, Affinity, RejectReason, RequestId, Scheduler, SchedulerConfig, SessionId, Submit,
    WorkerId,
};

use Action::*;
use Affinity::*;
use RejectReason::*;

fn r(n: u64) -> RequestId {
    RequestId(n)
}
fn w(n: u64) -> WorkerId {
    WorkerId(n)
}
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
fn dispatch(req: u64, worker: u64) -> Action {
    Dispatch {
        request: r(req),
        worker: w(worker),
    }
}
fn reject(req: u64, reason: RejectReason) -> Action {
    Reject {
        request: r(req),
        reason,
    }
}

/// Test harness: a scheduler, a fake clock and the action buffer.
struct H {
    s: Scheduler,
    t0: Instant,
    now: Instant,
}

impl H {
    fn new() -> Self {
        Self::with(SchedulerConfig::default())
    }
    fn with(config: SchedulerConfig) -> Self {
        let t0 = Instant::now();
        H {
            s: Scheduler::new(config),
            t0,
            now: t0,
        }
    }
    fn at(&mut self, t_ms: u64) -> &mut Self {
        self.now = self.t0 + ms(t_ms);
        self
    }
    fn t(&self, t_ms: u64) -> Instant {
        self.t0 + ms(t_ms)
    }
    fn up(&mut self, id: u64, cap: u32) -> Vec<Action> {
        let mut out = Vec::new();
        self.s.worker_up(w(id), cap, self.now, &mut out);
        out
    }
    fn down(&mut self, id: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.s.worker_down(w(id), self.now, &mut out);
        out
    }
    fn taint(&mut self, id: u64, for_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let until = self.now + ms(for_ms);
        self.s.taint(w(id), until, self.now, &mut out);
        out
    }
    fn submit_full(
        &mut self,
        id: u64,
        session: Option<&str>,
        affinity: Option<Affinity>,
        timeout_ms: Option<u64>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let req = Submit {
            id: r(id),
            session: session.map(SessionId::from),
            affinity,
            deadline: timeout_ms.map(|t| self.now + ms(t)),
        };
        self.s.submit(req, self.now, &mut out);
        out
    }
    fn submit(&mut self, id: u64) -> Vec<Action> {
        self.submit_full(id, None, None, None)
    }
    fn sess(&mut self, id: u64, session: &str, affinity: Affinity) -> Vec<Action> {
        self.submit_full(id, Some(session), Some(affinity), None)
    }
    fn complete(&mut self, id: u64) -> (bool, Vec<Action>) {
        let mut out = Vec::new();
        let answered = self.s.complete(r(id), self.now, &mut out);
        (answered, out)
    }
    fn done(&mut self, id: u64) -> Vec<Action> {
        let (answered, out) = self.complete(id);
        assert!(answered, "complete({id}) should be answered");
        out
    }
    fn cancel(&mut self, id: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.s.cancel(r(id), self.now, &mut out);
        out
    }
    fn fail_queued(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.s.fail_queued(NoWorkers, self.now, &mut out);
        out
    }
    fn tick(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.s.tick(self.now, &mut out);
        out
    }
    fn close(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.s.close(self.now, &mut out);
        out
    }
    fn load(&self, id: u64) -> u32 {
        self.s
            .stats()
            .workers
            .iter()
            .find(|x| x.id == w(id))
            .map(|x| x.load)
            .expect("worker known")
    }
    fn queue_len(&self) -> usize {
        self.s.stats().queue_len
    }
}

fn worker_of(actions: &[Action]) -> u64 {
    match actions {
        [Dispatch { worker, .. }] => worker.0,
        other => panic!("expected one dispatch, got {other:?}"),
    }
}

// ----- availability and selection --------------------------------------------------------------

#[test]
fn no_session_spreads_over_idle_workers_and_queues_when_all_busy() {
    let mut h = H::new();
    for i in 1..=3 {
        assert!(h.up(i, 1).is_empty());
    }
    let used: Vec<u64> = (1..=3).map(|i| worker_of(&h.submit(i))).collect();
    let mut sorted = used.clone();
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3]);
    assert!(h.submit(4).is_empty(), "all busy: queued");
    assert_eq!(h.queue_len(), 1);
    // complete request 2: queued request 4 goes to the worker it freed
    let w2 = used[1];
    assert_eq!(h.done(2), vec![dispatch(4, w2)]);
    assert_eq!(h.queue_len(), 0);
}

#[test]
fn least_loaded_with_thread_capacity_and_rotating_ties() {
    let mut h = H::new();
    h.up(1, 4);
    h.up(2, 4);
    let picks: Vec<u64> = (1..=4).map(|i| worker_of(&h.submit(i))).collect();
    // ties rotate, so consecutive picks alternate
    assert_ne!(picks[0], picks[1]);
    assert_eq!(h.load(1), 2);
    assert_eq!(h.load(2), 2);
    // free one slot on the worker of request 1: the next request goes there (least loaded)
    h.done(1);
    assert_eq!(worker_of(&h.submit(5)), picks[0]);
    // fill everything: 8 in flight, next one queues
    for i in 6..=9 {
        assert_eq!(h.submit(i).len(), 1);
    }
    assert!(h.submit(10).is_empty());
    assert_eq!(h.load(1), 4);
    assert_eq!(h.load(2), 4);
}

#[test]
fn least_loaded_is_relative_to_capacity() {
    let mut h = H::new();
    h.up(1, 1);
    h.up(2, 4);
    let a = worker_of(&h.submit(1));
    let b = worker_of(&h.submit(2));
    assert_ne!(a, b);
    // worker 1 is full, the next three go to worker 2
    for i in 3..=5 {
        assert_eq!(worker_of(&h.submit(i)), 2);
    }
    assert!(h.submit(6).is_empty());
}

#[test]
fn submit_before_any_worker_queues_and_worker_up_drains() {
    let mut h = H::new();
    assert!(h.submit(1).is_empty());
    assert!(h.submit(2).is_empty());
    assert!(h.submit(3).is_empty());
    assert_eq!(h.queue_len(), 3);
    // capacity 2: drains as much as capacity allows, in arrival order
    assert_eq!(h.up(7, 2), vec![dispatch(1, 7), dispatch(2, 7)]);
    assert_eq!(h.queue_len(), 1);
    assert_eq!(h.done(1), vec![dispatch(3, 7)]);
}

#[test]
fn worker_up_of_known_worker_updates_capacity_and_drains() {
    let mut h = H::new();
    h.up(1, 1);
    h.submit(1);
    assert!(h.submit(2).is_empty());
    assert_eq!(h.up(1, 2), vec![dispatch(2, 1)]);
    assert_eq!(h.s.stats().workers[0].capacity, 2);
}

// ----- hint --------------------------------------------------------------------------------

#[test]
fn hint_prefers_session_worker_and_moves_when_busy() {
    let mut h = H::new();
    h.up(1, 1);
    h.up(2, 1);
    let first = worker_of(&h.sess(1, "s", Hint));
    assert_eq!(h.s.session_worker("s"), Some(w(first)));
    h.done(1);
    // preferred and available: used again even though ties would rotate elsewhere
    assert_eq!(worker_of(&h.sess(2, "s", Hint)), first);
    // preferred busy: any other available worker, and the session moves there
    let other = 3 - first;
    assert_eq!(worker_of(&h.sess(3, "s", Hint)), other);
    assert_eq!(h.s.session_worker("s"), Some(w(other)));
}

#[test]
fn hint_queues_only_when_none_available_and_binds_at_dispatch() {
    let mut h = H::new();
    h.up(1, 1);
    h.up(2, 1);
    h.sess(1, "s", Hint); // session on some worker
    let s_worker = h.s.session_worker("s").unwrap().0;
    let other = 3 - s_worker;
    h.submit(2); // other worker busy too
    assert!(h.sess(3, "s", Hint).is_empty(), "queued");
    // the other worker frees first: the queued hint request runs there, session moves synchronously
    assert_eq!(h.done(2), vec![dispatch(3, other)]);
    assert_eq!(h.s.session_worker("s"), Some(w(other)));
    // and the next call of the session finds it at once
    h.done(3);
    assert_eq!(worker_of(&h.sess(4, "s", Hint)), other);
}

#[test]
fn hint_session_on_dead_or_tainted_worker_moves() {
    let mut h = H::new();
    h.up(1, 1);
    h.sess(1, "s", Hint);
    h.done(1);
    h.up(2, 1);
    h.down(1);
    assert_eq!(h.sess(2, "s", Hint), vec![dispatch(2, 2)]);
    assert_eq!(h.s.session_worker("s"), Some(w(2)));
    h.done(2);
    h.up(3, 1);
    h.taint(2, 1000);
    assert_eq!(h.sess(3, "s", Hint), vec![dispatch(3, 3)]);
}

// ----- strict_queue ------------------------------------------------------------------------

#[test]
fn strict_queue_waits_for_its_worker_without_blocking_others() {
    let mut h = H::new();
    h.up(1, 1);
    h.sess(1, "s", StrictQueue);
    let sw = h.s.session_worker("s").unwrap().0;
    h.up(2, 1);
    let other = if sw == 1 { 2 } else { 1 };
    // s's worker busy: the strict request waits, pinned
    assert!(h.sess(2, "s", StrictQueue).is_empty());
    assert_eq!(h.queue_len(), 1);
    // an unpinned request arriving later runs at once on the other worker (no head-of-line block)
    assert_eq!(h.submit(3), vec![dispatch(3, other)]);
    // the other worker frees: it does not take the pinned request
    assert!(h.done(3).is_empty());
    assert_eq!(h.queue_len(), 1);
    // s's worker frees: pinned request dispatched there
    assert_eq!(h.done(1), vec![dispatch(2, sw)]);
}

#[test]
fn strict_queue_same_worker_served_in_arrival_order_interleaved_with_unpinned() {
    let mut h = H::new();
    h.up(1, 1);
    h.sess(1, "s", StrictQueue); // on worker 1
    assert!(h.sess(2, "s", StrictQueue).is_empty()); // pinned to 1
    assert!(h.submit(3).is_empty()); // unpinned (no worker free)
    assert!(h.sess(4, "s", StrictQueue).is_empty()); // pinned to 1
    assert!(h.submit(5).is_empty()); // unpinned
    assert_eq!(h.done(1), vec![dispatch(2, 1)]);
    assert_eq!(h.done(2), vec![dispatch(3, 1)]);
    assert_eq!(h.done(3), vec![dispatch(4, 1)]);
    assert_eq!(h.done(4), vec![dispatch(5, 1)]);
}

#[test]
fn strict_second_call_of_a_queued_session_never_misses_its_worker() {
    let mut h = H::new();
    // no workers yet: both strict calls of a new session queue unpinned
    assert!(h.sess(1, "s", StrictQueue).is_empty());
    assert!(h.sess(2, "s", StrictQueue).is_empty());
    assert!(h.submit(3).is_empty());
    // worker 1 comes up: request 1 runs there, s is bound at once, request 2 is now pinned to 1
    assert_eq!(h.up(1, 1), vec![dispatch(1, 1)]);
    assert_eq!(h.s.session_worker("s"), Some(w(1)));
    // worker 2 comes up: it must not take request 2 (s lives on worker 1); it takes request 3
    assert_eq!(h.up(2, 1), vec![dispatch(3, 2)]);
    assert!(h.done(3).is_empty());
    assert_eq!(h.done(1), vec![dispatch(2, 1)]);
}

#[test]
fn strict_fail_fast_floating_request_rejected_busy_when_session_bound_elsewhere() {
    let mut h = H::new();
    assert!(h.sess(1, "s", StrictFailFast).is_empty());
    assert!(h.sess(2, "s", StrictFailFast).is_empty());
    // worker 1 (capacity 1) takes request 1; request 2 would have to wait for it → worker_busy
    assert_eq!(h.up(1, 1), vec![dispatch(1, 1), reject(2, WorkerBusy)]);
}

#[test]
fn strict_session_without_worker_runs_anywhere() {
    let mut h = H::new();
    h.up(1, 1);
    assert_eq!(h.sess(1, "new", StrictQueue), vec![dispatch(1, 1)]);
    assert_eq!(
        h.sess(2, "new2", StrictFailFast).len(),
        0,
        "queued, no worker free"
    );
}

// ----- strict_fail_fast --------------------------------------------------------------------

#[test]
fn strict_fail_fast_busy_worker_rejects_at_once() {
    let mut h = H::new();
    h.up(1, 1);
    h.up(2, 1);
    let sw = worker_of(&h.sess(1, "s", StrictFailFast));
    assert_eq!(h.sess(2, "s", StrictFailFast), vec![reject(2, WorkerBusy)]);
    assert_eq!(h.s.stats().rejected_busy, 1);
    h.done(1);
    assert_eq!(h.sess(3, "s", StrictFailFast), vec![dispatch(3, sw)]);
}

#[test]
fn per_call_affinity_overrides_pool_default() {
    let mut h = H::with(SchedulerConfig {
        default_affinity: StrictFailFast,
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    h.up(2, 1);
    h.submit_full(1, Some("s"), None, None);
    assert_eq!(
        h.submit_full(2, Some("s"), None, None),
        vec![reject(2, WorkerBusy)]
    );
    let out = h.submit_full(3, Some("s"), Some(Hint), None);
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0], Dispatch { .. }));
}

// ----- strict with dead / removed / tainted workers ---------------------------------------

#[test]
fn strict_dead_worker_session_unavailable_including_queued_at_once() {
    let mut h = H::new();
    h.up(1, 1);
    h.up(2, 1);
    let sw = worker_of(&h.sess(1, "s", StrictQueue));
    assert!(h.sess(2, "s", StrictQueue).is_empty());
    assert!(h.sess(3, "s", StrictQueue).is_empty());
    // the worker dies: in-flight request lost, pinned ones rejected now (not at their timeout)
    let out = h.down(sw);
    assert_eq!(
        out,
        vec![
            reject(2, SessionWorkerUnavailable),
            reject(3, SessionWorkerUnavailable),
            WorkerLost {
                request: r(1),
                worker: w(sw)
            },
        ]
    );
    assert_eq!(h.queue_len(), 0);
    // tombstone: strict calls keep failing, never moved silently
    assert_eq!(
        h.sess(4, "s", StrictQueue),
        vec![reject(4, SessionWorkerUnavailable)]
    );
    assert_eq!(
        h.sess(5, "s", StrictFailFast),
        vec![reject(5, SessionWorkerUnavailable)]
    );
    assert_eq!(h.s.session_worker("s"), Some(w(sw)));
    // a restarted worker is a new id: the tombstone never resolves on its own
    h.up(9, 1);
    assert_eq!(
        h.sess(6, "s", StrictQueue),
        vec![reject(6, SessionWorkerUnavailable)]
    );
    // delete_session clears it
    h.s.delete_session("s");
    assert_eq!(h.s.session_worker("s"), None);
    assert_eq!(h.sess(7, "s", StrictQueue).len(), 1);
    assert_eq!(h.s.stats().rejected_unavailable, 5);
}

#[test]
fn strict_tainted_worker_session_unavailable_and_taint_expires() {
    let mut h = H::new();
    h.up(1, 1);
    h.sess(1, "s", StrictQueue);
    assert!(h.sess(2, "s", StrictQueue).is_empty());
    assert!(h.submit(3).is_empty());
    // taint: the pinned request is rejected at once; the in-flight one continues
    assert_eq!(h.taint(1, 100), vec![reject(2, SessionWorkerUnavailable)]);
    assert_eq!(h.s.next_wakeup(), Some(h.t(100)));
    assert_eq!(
        h.sess(4, "s", StrictFailFast),
        vec![reject(4, SessionWorkerUnavailable)]
    );
    // in-flight completes normally, but the tainted worker does not serve the queue
    let (answered, out) = h.complete(1);
    assert!(answered);
    assert!(out.is_empty());
    assert_eq!(h.queue_len(), 1);
    // taint ends at tick: worker available again, drains the queue
    h.at(99);
    assert!(h.tick().is_empty());
    h.at(100);
    assert_eq!(h.tick(), vec![dispatch(3, 1)]);
    assert!(!h.s.stats().workers[0].tainted);
    h.done(3);
    assert_eq!(h.sess(5, "s", StrictQueue), vec![dispatch(5, 1)]);
}

#[test]
fn tainted_worker_is_not_available() {
    let mut h = H::new();
    h.up(1, 1);
    h.up(2, 1);
    h.taint(1, 50);
    assert_eq!(h.submit(1), vec![dispatch(1, 2)]);
    assert!(h.submit(2).is_empty());
    // a taint that ends in the past is ignored; a shorter taint does not shorten a longer one
    h.taint(2, 0);
    assert!(!h.s.stats().workers[1].tainted);
    h.taint(1, 10);
    h.at(20);
    assert!(h.tick().is_empty());
    h.at(50);
    assert_eq!(h.tick(), vec![dispatch(2, 1)]);
}

// ----- queue: bound, deadlines -------------------------------------------------------------

#[test]
fn queue_is_bounded() {
    let mut h = H::with(SchedulerConfig {
        max_queue_size: 2,
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    h.submit(1);
    assert!(h.submit(2).is_empty());
    assert!(h.submit(3).is_empty());
    assert_eq!(h.submit(4), vec![reject(4, PoolSaturated)]);
    // strict pinned requests count against the same bound
    let mut h2 = H::with(SchedulerConfig {
        max_queue_size: 1,
        ..SchedulerConfig::default()
    });
    h2.up(1, 1);
    h2.sess(1, "s", StrictQueue);
    assert!(h2.sess(2, "s", StrictQueue).is_empty());
    assert_eq!(h2.sess(3, "s", StrictQueue), vec![reject(3, PoolSaturated)]);
    assert_eq!(h2.s.stats().saturated, 1);
}

#[test]
fn queue_timeout_rejects_at_tick_and_is_reported_by_next_wakeup() {
    let mut h = H::with(SchedulerConfig {
        queue_timeout: ms(100),
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    h.submit(1);
    h.at(10);
    assert!(h.submit(2).is_empty());
    assert_eq!(h.s.next_wakeup(), Some(h.t(110)));
    h.at(109);
    assert!(h.tick().is_empty());
    h.at(110);
    assert_eq!(h.tick(), vec![reject(2, QueueTimeout)]);
    assert_eq!(h.queue_len(), 0);
    assert_eq!(h.s.stats().queue_timeouts, 1);
    // a freed worker finds nothing
    assert!(h.done(1).is_empty());
}

#[test]
fn caller_deadline_shorter_than_queue_timeout_wins() {
    let mut h = H::new();
    h.up(1, 1);
    h.submit(1);
    assert!(h.submit_full(2, None, None, Some(30)).is_empty());
    assert_eq!(h.s.next_wakeup(), Some(h.t(30)));
    h.at(30);
    assert_eq!(h.tick(), vec![reject(2, QueueTimeout)]);
}

#[test]
fn never_dispatched_at_or_after_deadline_even_without_tick() {
    let mut h = H::with(SchedulerConfig {
        queue_timeout: ms(100),
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    h.submit(1);
    assert!(h.submit(2).is_empty());
    assert!(h.submit_full(3, None, None, Some(500)).is_empty());
    // worker frees exactly at the deadline of 2 and 3 (no tick in between): both rejected
    h.at(100);
    let (answered, out) = h.complete(1);
    assert!(answered);
    assert_eq!(out, vec![reject(2, QueueTimeout), reject(3, QueueTimeout)]);
}

#[test]
fn expired_caller_deadline_at_submit_is_rejected() {
    let mut h = H::new();
    h.up(1, 1);
    assert_eq!(
        h.submit_full(1, None, None, Some(0)),
        vec![reject(1, QueueTimeout)]
    );
    assert_eq!(h.load(1), 0);
}

#[test]
fn zero_queue_timeout_means_do_not_queue() {
    let mut h = H::with(SchedulerConfig {
        queue_timeout: Duration::ZERO,
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    assert_eq!(h.submit(1), vec![dispatch(1, 1)]);
    assert_eq!(h.submit(2), vec![reject(2, QueueTimeout)]);
}

#[test]
fn no_queue_deadline_when_queue_timeout_is_infinite() {
    let mut h = H::with(SchedulerConfig {
        queue_timeout: Duration::MAX,
        ..SchedulerConfig::default()
    });
    assert!(h.submit(1).is_empty());
    assert_eq!(h.s.next_wakeup(), None);
}

// ----- cancellation ------------------------------------------------------------------------

#[test]
fn cancel_queued_request_leaves_the_queue_silently() {
    let mut h = H::new();
    h.up(1, 1);
    h.submit(1);
    h.submit(2);
    h.submit(3);
    assert!(h.cancel(2).is_empty());
    assert!(h.cancel(2).is_empty(), "idempotent");
    assert_eq!(h.queue_len(), 1);
    assert_eq!(h.done(1), vec![dispatch(3, 1)]);
    assert_eq!(h.s.stats().cancelled, 1);
}

#[test]
fn cancel_in_flight_keeps_worker_busy_until_it_returns() {
    let mut h = H::new();
    h.up(1, 1);
    h.submit(1);
    h.submit(2);
    assert_eq!(
        h.cancel(1),
        vec![CancelCall {
            request: r(1),
            worker: w(1)
        }]
    );
    assert!(h.cancel(1).is_empty(), "idempotent");
    assert_eq!(h.load(1), 1);
    assert_eq!(h.queue_len(), 1, "queued request still waits");
    let (answered, out) = h.complete(1);
    assert!(!answered, "abandoned: nobody to answer");
    assert_eq!(out, vec![dispatch(2, 1)]);
    let (answered, _) = h.complete(1);
    assert!(!answered, "second complete is ignored");
}

#[test]
fn abandoned_call_overrunning_grace_recycles_worker_once() {
    let mut h = H::with(SchedulerConfig {
        abandon_grace: Some(ms(50)),
        ..SchedulerConfig::default()
    });
    h.up(1, 2);
    h.up(2, 1);
    h.submit(1);
    h.submit(2);
    h.submit(3);
    // cancel all three; two of them run on worker 1 (capacity 2)
    h.at(10);
    let mut on_w1 = Vec::new();
    for i in 1..=3 {
        let out = h.cancel(i);
        if let [CancelCall { worker, .. }] = out.as_slice() {
            if *worker == w(1) {
                on_w1.push(i);
            }
        }
    }
    assert_eq!(on_w1.len(), 2);
    assert_eq!(h.s.next_wakeup(), Some(h.t(60)));
    h.at(59);
    assert!(h.tick().is_empty());
    h.at(60);
    let out = h.tick();
    let mut recycled: Vec<u64> = out
        .iter()
        .map(|a| match a {
            RecycleWorker { worker } => worker.0,
            other => panic!("{other:?}"),
        })
        .collect();
    recycled.sort();
    assert_eq!(recycled, vec![1, 2], "once per worker");
    h.at(200);
    assert!(h.tick().is_empty());
    assert_eq!(h.s.stats().recycles, 2);
}

#[test]
fn abandoned_call_returning_within_grace_does_not_recycle() {
    let mut h = H::with(SchedulerConfig {
        abandon_grace: Some(ms(50)),
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    h.submit(1);
    h.cancel(1);
    h.at(49);
    assert!(!h.complete(1).0);
    h.at(50);
    assert!(h.tick().is_empty());
    assert_eq!(h.s.next_wakeup(), None);
}

// ----- worker loss -------------------------------------------------------------------------

#[test]
fn worker_down_loses_in_flight_and_abandoned_end_silently() {
    let mut h = H::new();
    h.up(1, 3);
    h.submit(1);
    h.submit(2);
    h.submit(3);
    h.cancel(2);
    h.submit(4); // queued? no: capacity 3, 3 in flight (2 abandoned still occupies)
    assert_eq!(h.queue_len(), 1);
    let out = h.down(1);
    assert_eq!(
        out,
        vec![
            WorkerLost {
                request: r(1),
                worker: w(1)
            },
            WorkerLost {
                request: r(3),
                worker: w(1)
            },
        ]
    );
    // unpinned queued request unaffected; runs on the next worker
    assert_eq!(h.queue_len(), 1);
    assert_eq!(h.up(2, 1), vec![dispatch(4, 2)]);
    // late completes of lost requests are ignored
    assert!(!h.complete(1).0);
    assert!(!h.complete(2).0);
    let st = h.s.stats();
    assert_eq!(st.worker_lost, 2);
    assert_eq!(st.workers.len(), 1);
    assert_eq!(st.in_flight, 1);
}

#[test]
fn events_about_unknown_workers_and_requests_are_ignored() {
    let mut h = H::new();
    assert!(h.down(42).is_empty());
    assert!(h.taint(42, 10).is_empty());
    assert!(h.cancel(42).is_empty());
    assert!(!h.complete(42).0);
    // completing a queued request is not possible
    h.submit(1);
    assert!(!h.complete(1).0);
    assert_eq!(h.queue_len(), 1);
}

// ----- affinity table ----------------------------------------------------------------------

#[test]
fn affinity_entries_expire_after_idle_ttl() {
    let mut h = H::with(SchedulerConfig {
        affinity_ttl: ms(1000),
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    h.up(2, 1);
    let sw = worker_of(&h.sess(1, "s", StrictFailFast));
    h.at(500);
    h.done(1); // use touches the entry
    assert_eq!(h.s.next_wakeup(), Some(h.t(1500)));
    h.at(1499);
    h.tick();
    assert_eq!(h.s.session_worker("s"), Some(w(sw)));
    h.at(1500);
    h.tick();
    assert_eq!(h.s.session_worker("s"), None);
    assert_eq!(h.s.stats().sessions, 0);
    assert_eq!(h.s.next_wakeup(), None);
    // forgotten: a strict call runs on any worker again
    assert_eq!(h.sess(2, "s", StrictFailFast).len(), 1);
}

#[test]
fn expired_entry_is_ignored_at_submit_even_before_tick() {
    let mut h = H::with(SchedulerConfig {
        affinity_ttl: ms(100),
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    h.sess(1, "s", StrictQueue);
    h.down(1);
    h.up(2, 1);
    h.at(100);
    assert_eq!(h.sess(2, "s", StrictQueue), vec![dispatch(2, 2)]);
}

#[test]
fn affinity_entries_are_bounded_lru() {
    let mut h = H::with(SchedulerConfig {
        max_affinity_entries: 2,
        ..SchedulerConfig::default()
    });
    h.up(1, 8);
    h.sess(1, "a", Hint);
    h.done(1);
    h.at(1);
    h.sess(2, "b", Hint);
    h.done(2);
    h.at(2);
    h.sess(3, "a", Hint); // a used again: b is the least recently used
    h.done(3);
    h.at(3);
    h.sess(4, "c", Hint);
    assert_eq!(h.s.stats().sessions, 2);
    assert!(h.s.session_worker("a").is_some());
    assert!(h.s.session_worker("b").is_none());
    assert!(h.s.session_worker("c").is_some());
}

#[test]
fn a_session_with_a_call_in_flight_is_neither_evicted_nor_expired() {
    // Idle TTL and LRU bound apply to idle sessions: a call that runs longer than the TTL (or a
    // crowd of newer sessions) must not let the session's next call run elsewhere.
    let mut h = H::with(SchedulerConfig {
        max_affinity_entries: 1,
        affinity_ttl: ms(100),
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    h.up(2, 1);
    assert_eq!(h.sess(1, "s", StrictQueue), vec![dispatch(1, 1)]);
    // a newer session would evict s (bound of 1), but s is busy: the table grows instead
    assert_eq!(h.sess(2, "t", Hint), vec![dispatch(2, 2)]);
    assert_eq!(h.s.stats().sessions, 2);
    assert_eq!(h.s.session_worker("s"), Some(w(1)));
    // t's call ends; long after the TTL s is still running and keeps its entry
    assert!(h.done(2).is_empty());
    h.at(1_000);
    assert!(h.tick().is_empty());
    assert_eq!(h.s.session_worker("s"), Some(w(1)));
    assert_eq!(h.s.session_worker("t"), None, "idle t expired");
    // the next call of s waits for its worker, although worker 2 is free
    assert!(h.sess(3, "s", StrictQueue).is_empty());
    // the end of the long call counts as a use: the entry lives a TTL from then
    assert_eq!(h.done(1), vec![dispatch(3, 1)]);
    assert!(h.done(3).is_empty());
    assert_eq!(h.s.next_wakeup(), Some(h.t(1_100)));
    h.at(1_100);
    assert!(h.tick().is_empty());
    assert_eq!(h.s.session_worker("s"), None);
}

#[test]
fn strict_submit_after_the_dispatches_of_its_own_poll_finds_its_busy_session() {
    // Replay of a proptest counterexample. The events due before a submit (here a taint ending)
    // are processed first; their dispatches bind sessions under an LRU bound of 1. A session
    // whose call is in flight is not evicted, so the strict request finds its worker.
    let mut h = H::with(SchedulerConfig {
        default_affinity: Hint,
        max_queue_size: 3,
        queue_timeout: ms(194),
        affinity_ttl: ms(1),
        max_affinity_entries: 1,
        abandon_grace: None,
    });
    assert!(h.up(1, 3).is_empty());
    assert!(h.taint(1, 45).is_empty());
    assert!(h.submit(1).is_empty());
    assert!(h.submit_full(2, Some("s0"), None, None).is_empty());
    assert!(h.submit_full(3, Some("s1"), None, None).is_empty());
    assert_eq!(h.submit(4), vec![reject(4, PoolSaturated)]);
    assert_eq!(h.queue_len(), 3);
    // the taint ends: 1, 2 (s0 → 1) and 3 (s1 → 1, evicting s0) run first; then request 5 of
    // s0 finds no entry and queues unpinned (worker 1 is full)
    h.at(45);
    assert_eq!(
        h.sess(5, "s0", StrictQueue),
        vec![dispatch(1, 1), dispatch(2, 1), dispatch(3, 1)]
    );
    // s0's call is in flight, so s1 could not evict it (the table is over its bound): request 5
    // waits for s0's worker
    assert_eq!(h.s.session_worker("s0"), Some(w(1)));
    assert_eq!(h.s.session_worker("s1"), Some(w(1)));
    assert_eq!(h.s.stats().sessions, 2);
    assert_eq!(h.queue_len(), 1);
    assert!(
        h.up(2, 1).is_empty(),
        "a new worker must not take request 5"
    );
    assert_eq!(h.done(2), vec![dispatch(5, 1)]);
    assert_eq!(h.s.session_worker("s0"), Some(w(1)));
}

#[test]
fn strict_request_repinned_while_queued_stays_pinned_after_its_session_entry_is_gone() {
    // The pin belongs to the request: losing the session entry after the re-pin (here by
    // delete_session, later by the TTL of another session) does not let it run elsewhere.
    let mut h = H::with(SchedulerConfig {
        max_affinity_entries: 1,
        affinity_ttl: ms(1),
        ..SchedulerConfig::default()
    });
    assert!(h.sess(1, "s", StrictQueue).is_empty());
    assert!(h.sess(2, "s", StrictQueue).is_empty());
    // worker 1 takes request 1: s → 1, request 2 is re-pinned to worker 1
    assert_eq!(h.up(1, 1), vec![dispatch(1, 1)]);
    // s is busy, so another session cannot evict it; the caller deletes it instead; time
    // passes beyond the TTL
    assert!(h.up(2, 1).is_empty());
    assert_eq!(h.sess(3, "t", Hint), vec![dispatch(3, 2)]);
    assert_eq!(h.s.session_worker("s"), Some(w(1)));
    h.s.delete_session("s");
    assert_eq!(h.s.session_worker("s"), None);
    h.at(10);
    assert!(h.tick().is_empty());
    assert!(h.done(3).is_empty(), "worker 2 must not take request 2");
    assert!(h.up(3, 1).is_empty(), "worker 3 must not take request 2");
    assert_eq!(h.done(1), vec![dispatch(2, 1)]);
}

// ----- close, stats ------------------------------------------------------------------------

#[test]
fn close_rejects_queued_and_new_but_lets_in_flight_finish() {
    let mut h = H::new();
    h.up(1, 1);
    h.sess(1, "s", StrictQueue);
    h.submit(2);
    h.sess(3, "s", StrictQueue);
    assert_eq!(h.close(), vec![reject(2, Closed), reject(3, Closed)]);
    assert_eq!(h.submit(4), vec![reject(4, Closed)]);
    assert_eq!(h.queue_len(), 0);
    assert_eq!(
        h.s.next_wakeup(),
        None,
        "s is busy: its entry has no expiry yet"
    );
    let (answered, out) = h.complete(1);
    assert!(answered);
    assert!(out.is_empty());
    assert_eq!(
        h.s.next_wakeup(),
        Some(h.t(3_600_000)),
        "only the session TTL"
    );
    assert_eq!(h.s.stats().rejected_closed, 3);
}

#[test]
fn fail_queued_rejects_every_queued_request_while_no_worker_is_up() {
    // A pool whose workers are all starting: calls queue.
    let mut h = H::with(SchedulerConfig {
        queue_timeout: ms(10_000),
        ..SchedulerConfig::default()
    });
    assert!(h.submit(1).is_empty());
    assert!(h.sess(2, "s", StrictQueue).is_empty());
    assert!(h.submit_full(3, None, None, Some(50)).is_empty());
    assert_eq!(h.queue_len(), 3);
    // Every worker failed to start: at once, in arrival order; request 3 had expired already.
    h.at(60);
    assert_eq!(
        h.fail_queued(),
        vec![
            reject(3, QueueTimeout),
            reject(1, NoWorkers),
            reject(2, NoWorkers)
        ]
    );
    assert_eq!(h.queue_len(), 0);
    assert_eq!(h.s.next_wakeup(), None);
    // Still no worker: a submit that would queue is answered at once too.
    assert_eq!(h.submit(4), vec![reject(4, NoWorkers)]);
    assert_eq!(h.sess(5, "s", StrictFailFast), vec![reject(5, NoWorkers)]);
    assert!(h.fail_queued().is_empty(), "idempotent");
    // A worker comes up: the pool queues and serves again.
    assert_eq!(h.up(1, 1), vec![]);
    assert_eq!(h.submit(6), vec![dispatch(6, 1)]);
    assert!(h.submit(7).is_empty());
    assert_eq!(h.done(6), vec![dispatch(7, 1)]);
    let st = h.s.stats();
    assert_eq!(st.rejected_no_workers, 4);
    assert_eq!(st.saturated, 0);
    assert_eq!(st.queue_timeouts, 1);
}

#[test]
fn fail_queued_with_workers_up_rejects_pinned_and_unpinned_but_not_in_flight() {
    let mut h = H::new();
    h.up(1, 1);
    h.up(2, 1);
    assert_eq!(h.sess(1, "a", StrictQueue), vec![dispatch(1, 1)]);
    assert_eq!(h.submit(2), vec![dispatch(2, 2)]);
    assert!(h.sess(3, "a", StrictQueue).is_empty()); // pinned to worker 1
    assert!(h.submit(4).is_empty()); // unpinned
    assert_eq!(
        h.fail_queued(),
        vec![reject(3, NoWorkers), reject(4, NoWorkers)]
    );
    assert_eq!(h.queue_len(), 0);
    // Workers are registered: the pool is not stuck failed, new calls queue as usual.
    assert!(h.submit(5).is_empty());
    assert_eq!(h.done(1), vec![dispatch(5, 1)]);
    assert!(h.done(2).is_empty());
    assert!(h.done(5).is_empty());
    // Nor after those workers go away (they were up when the pool was failed).
    h.down(1);
    h.down(2);
    assert!(h.submit(6).is_empty());
    assert_eq!(h.up(3, 1), vec![dispatch(6, 3)]);
}

#[test]
fn fail_queued_after_close_keeps_answering_closed() {
    let mut h = H::new();
    assert!(h.submit(1).is_empty());
    assert_eq!(h.close(), vec![reject(1, Closed)]);
    assert!(h.fail_queued().is_empty());
    assert_eq!(h.submit(2), vec![reject(2, Closed)]);
}

#[test]
fn stats_counts_everything() {
    let mut h = H::with(SchedulerConfig {
        max_queue_size: 1,
        queue_timeout: ms(10),
        ..SchedulerConfig::default()
    });
    h.up(1, 1);
    h.sess(1, "s", Hint);
    h.submit(2);
    h.submit(3);
    h.at(10);
    h.tick();
    h.done(1);
    let st = h.s.stats();
    assert_eq!(st.requests, 3);
    assert_eq!(st.dispatched, 1);
    assert_eq!(st.queued_total, 1);
    assert_eq!(st.saturated, 1);
    assert_eq!(st.queue_timeouts, 1);
    assert_eq!(st.completed, 1);
    assert_eq!(st.queue_len, 0);
    assert_eq!(st.in_flight, 0);
    assert_eq!(st.sessions, 1);
    assert_eq!(st.workers.len(), 1);
    assert_eq!(st.workers[0].capacity, 1);
}

#[test]
fn reject_reason_and_affinity_names() {
    assert_eq!(
        SessionWorkerUnavailable.as_str(),
        "session_worker_unavailable"
    );
    assert_eq!(Closed.as_str(), "pool_closed");
    assert_eq!(NoWorkers.as_str(), "no_workers_available");
    assert_eq!(Affinity::parse("strict_queue"), Some(StrictQueue));
    assert_eq!(Affinity::default(), Hint);
    assert_eq!(StrictFailFast.as_str(), "strict_fail_fast");
}

#[test]
fn scheduler_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Scheduler>();
    assert_send_sync::<Action>();
}
