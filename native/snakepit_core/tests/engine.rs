//! The engine against the in-process fake worker, with a channel-backed reply target.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use snakepit_core::codec::{build_request, CallSpec, ChunkPayload, ToolResult, Value};
use snakepit_core::engine::{
    Chunk, Engine, EngineConfig, ErrorReason, Outcome, PoolEvents, ReplyTarget, SubmitRequest,
};
use snakepit_core::scheduler::{Affinity, RejectReason, RequestId, SchedulerConfig};
use support::FakeWorker;
use tokio::sync::mpsc;

#[derive(Debug)]
enum Event {
    Reply(Outcome),
    Chunk(Chunk),
}

/// Sends everything to a channel; can simulate a dead receiver or a panicking encoder.
struct Target {
    tx: mpsc::UnboundedSender<Event>,
    dead: bool,
    panic_on_reply: bool,
    panic_on_chunk: bool,
}

impl ReplyTarget for Target {
    fn reply(self, outcome: Outcome) {
        // Replies must never run on the thread that called the engine outside the runtime.
        assert!(
            tokio::runtime::Handle::try_current().is_ok(),
            "reply off the runtime"
        );
        if self.panic_on_reply {
            panic!("reply encoder exploded");
        }
        let _ = self.tx.send(Event::Reply(outcome));
    }

    fn chunk(&mut self, chunk: Chunk) -> bool {
        if self.panic_on_chunk {
            panic!("chunk encoder exploded");
        }
        !self.dead && self.tx.send(Event::Chunk(chunk)).is_ok()
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl PoolEvents for Events {
    fn recycle_worker(&self, worker: &str) {
        self.0.lock().expect("lock").push(worker.to_owned());
    }
}

struct Pool {
    engine: Engine<Target>,
    events: Arc<Events>,
}

fn pool(scheduler: SchedulerConfig) -> Pool {
    pool_with(EngineConfig {
        scheduler,
        ..EngineConfig::default()
    })
}

fn pool_with(config: EngineConfig) -> Pool {
    let events = Arc::new(Events::default());
    let engine = Engine::new(config, events.clone(), tokio::runtime::Handle::current());
    Pool { engine, events }
}

struct Call {
    rx: mpsc::UnboundedReceiver<Event>,
    id: RequestId,
}

impl Call {
    async fn next(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("no event within 5 s")
            .expect("channel open")
    }

    async fn reply(&mut self) -> Outcome {
        match self.next().await {
            Event::Reply(o) => o,
            Event::Chunk(c) => panic!("expected a reply, got chunk {c:?}"),
        }
    }

    /// `true` if nothing arrives within `ms` (a dropped target counts as quiet).
    async fn quiet_for(&mut self, ms: u64) -> bool {
        let got = tokio::time::timeout(Duration::from_millis(ms), self.rx.recv()).await;
        !matches!(got, Ok(Some(_)))
    }
}

#[derive(Default)]
struct Opts {
    timeout: Option<Duration>,
    session: Option<&'static str>,
    affinity: Option<Affinity>,
    stream_window: Option<u32>,
    retry: u32,
    dead: bool,
    panic_on_reply: bool,
    panic_on_chunk: bool,
}

fn submit(
    engine: &Engine<Target>,
    tool: &str,
    args: Vec<(&str, Value)>,
    opts: Opts,
) -> Result<Call, RejectReason> {
    let (tx, rx) = mpsc::unbounded_channel();
    let call = build_request(CallSpec {
        tool_name: tool.into(),
        args: args.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        stream: opts.stream_window.is_some(),
        ..CallSpec::default()
    })
    .expect("encodable");
    let id = engine.reserve_id();
    let target = Target {
        tx,
        dead: opts.dead,
        panic_on_reply: opts.panic_on_reply,
        panic_on_chunk: opts.panic_on_chunk,
    };
    engine.submit(
        id,
        target,
        SubmitRequest {
            call,
            session: opts.session.map(Into::into),
            affinity: opts.affinity,
            timeout: opts.timeout,
            stream_window: opts.stream_window,
            retry_on_crash: opts.retry,
        },
    )?;
    Ok(Call { rx, id })
}

fn ok_value(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Ok(ToolResult::Value(v)) => v,
        other => panic!("expected a value, got {other:?}"),
    }
}

fn sleep_args(ms: i64) -> Vec<(&'static str, Value)> {
    vec![("ms", Value::Int(ms))]
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatches_and_replies() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let mut call = submit(
        &p.engine,
        "echo",
        vec![("x", Value::Int(1))],
        Opts::default(),
    )
    .expect("submit");
    let v = ok_value(call.reply().await);
    assert_eq!(v.get("args").and_then(|a| a.get("x")), Some(&Value::Int(1)));
    // The request carries the serving worker's name as its session id.
    assert_eq!(v.get("session_id"), Some(&Value::str("w1")));
    eventually("request forgotten", || p.engine.tracked_requests() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_errors_and_binary_results() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 2).expect("add");
    let mut fail = submit(&p.engine, "fail", vec![], Opts::default()).expect("submit");
    match fail.reply().await {
        Outcome::Error(ErrorReason::Python(payload)) => {
            assert_eq!(payload.get("type"), Some(&Value::str("ValueError")))
        }
        other => panic!("{other:?}"),
    }
    let mut bin = submit(&p.engine, "binary", vec![], Opts::default()).expect("submit");
    match bin.reply().await {
        Outcome::Ok(ToolResult::Binary { bytes, meta }) => {
            assert_eq!(bytes, vec![1, 2, 3]);
            assert!(meta.is_some());
        }
        other => panic!("{other:?}"),
    }
    let mut status = submit(
        &p.engine,
        "status",
        vec![("code", Value::Int(14))],
        Opts::default(),
    )
    .expect("submit");
    assert!(matches!(
        status.reply().await,
        Outcome::Error(ErrorReason::Grpc {
            code: "unavailable",
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_behind_a_slow_call() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let started = Instant::now();
    let mut slow = submit(&p.engine, "sleep", sleep_args(300), Opts::default()).expect("submit");
    let mut fast = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    assert_eq!(p.engine.stats().queue_len, 1);
    ok_value(fast.reply().await);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "echo overtook the slow call"
    );
    ok_value(slow.reply().await);
    assert_eq!(worker.observed.max_running.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_time_out() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig {
        queue_timeout: Duration::from_millis(100),
        ..SchedulerConfig::default()
    });
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let _slow = submit(&p.engine, "sleep", sleep_args(3_000), Opts::default()).expect("submit");
    let started = Instant::now();
    let mut queued = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    assert_eq!(
        queued.reply().await,
        Outcome::Error(ErrorReason::Pool(RejectReason::QueueTimeout))
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_millis(2_000),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_deadline_answers_at_once_but_keeps_the_worker_busy() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let started = Instant::now();
    let opts = Opts {
        timeout: Some(Duration::from_millis(100)),
        ..Opts::default()
    };
    let mut slow = submit(&p.engine, "sleep", sleep_args(1_000), opts).expect("submit");
    assert!(matches!(
        slow.reply().await,
        Outcome::Error(ErrorReason::Grpc {
            code: "deadline_exceeded",
            ..
        })
    ));
    assert!(started.elapsed() < Duration::from_millis(800));
    // Python is still running the tool: the next call waits for it.
    let mut next = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    ok_value(next.reply().await);
    assert!(started.elapsed() >= Duration::from_millis(1_000));
    assert_eq!(worker.observed.max_running.load(Ordering::SeqCst), 1);
    // Exactly one reply for the expired call.
    assert!(slow.quiet_for(50).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_rejections_are_returned() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let session = Opts {
        session: Some("s1"),
        ..Opts::default()
    };
    let mut first = submit(&p.engine, "sleep", sleep_args(200), session).expect("submit");
    let busy = submit(
        &p.engine,
        "echo",
        vec![],
        Opts {
            session: Some("s1"),
            affinity: Some(Affinity::StrictFailFast),
            ..Opts::default()
        },
    );
    assert_eq!(busy.err(), Some(RejectReason::WorkerBusy));
    ok_value(first.reply().await);
    p.engine.close();
    assert_eq!(
        submit(&p.engine, "echo", vec![], Opts::default()).err(),
        Some(RejectReason::Closed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_queued_answers_queued_callers_until_a_worker_is_added() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    // No worker yet (they are starting): calls queue.
    let mut queued = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    assert!(queued.quiet_for(20).await);
    // Every worker failed to start.
    p.engine.fail_queued();
    assert!(matches!(
        queued.reply().await,
        Outcome::Error(ErrorReason::Pool(RejectReason::NoWorkers))
    ));
    assert_eq!(
        submit(&p.engine, "echo", vec![], Opts::default()).err(),
        Some(RejectReason::NoWorkers)
    );
    assert_eq!(p.engine.stats().rejected_no_workers, 2);
    // A worker came up after all: calls run again.
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let mut call = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    ok_value(call.reply().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_sends_nothing_and_recycles_after_the_grace() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig {
        abandon_grace: Some(Duration::from_millis(50)),
        ..SchedulerConfig::default()
    });
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let mut slow = submit(&p.engine, "sleep", sleep_args(300), Opts::default()).expect("submit");
    eventually("call running", || {
        worker.observed.running.load(Ordering::SeqCst) == 1
    })
    .await;
    p.engine.cancel(slow.id);
    p.engine.cancel(slow.id); // idempotent
    eventually("recycle event", || {
        !p.events.0.lock().expect("lock").is_empty()
    })
    .await;
    assert_eq!(*p.events.0.lock().expect("lock"), vec!["w1".to_owned()]);
    // Python finishes the tool; the caller hears nothing.
    eventually("sleep finished", || {
        worker.observed.sleeps_finished.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("request forgotten", || p.engine.tracked_requests() == 0).await;
    assert!(slow.rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_queued_request_forgets_it() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let mut slow = submit(&p.engine, "sleep", sleep_args(100), Opts::default()).expect("submit");
    let mut queued = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    p.engine.cancel(queued.id);
    assert_eq!(p.engine.stats().queue_len, 0);
    ok_value(slow.reply().await);
    assert!(queued.quiet_for(100).await);
    assert_eq!(
        *worker.observed.calls.lock().expect("lock"),
        vec!["sleep".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_down_answers_in_flight_callers() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 2).expect("add");
    let mut a = submit(&p.engine, "sleep", sleep_args(2_000), Opts::default()).expect("submit");
    let mut b = submit(&p.engine, "sleep", sleep_args(2_000), Opts::default()).expect("submit");
    eventually("calls running", || {
        worker.observed.running.load(Ordering::SeqCst) == 2
    })
    .await;
    let reason = Value::List(vec![Value::str("exit_status"), Value::Int(139)]);
    p.engine.worker_down("w1", reason.clone()).expect("down");
    for call in [&mut a, &mut b] {
        assert_eq!(
            call.reply().await,
            Outcome::Error(ErrorReason::WorkerExit {
                worker: Arc::from("w1"),
                reason: reason.clone()
            })
        );
        assert!(call.quiet_for(50).await);
    }
    eventually("tasks ended", || p.engine.tracked_requests() == 0).await;
    assert!(p.engine.workers().is_empty());
    assert!(p.engine.worker_down("w1", Value::Nil).is_err());
    // The name can come back as a new worker.
    p.engine
        .add_worker("w1", &worker.endpoint, 1)
        .expect("re-add");
    let mut c = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    ok_value(c.reply().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_respect_credits() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let opts = Opts {
        stream_window: Some(2),
        ..Opts::default()
    };
    let mut s = submit(&p.engine, "count", vec![("n", Value::Int(6))], opts).expect("submit");
    let mut got = Vec::new();
    for _ in 0..2 {
        match s.next().await {
            Event::Chunk(c) => got.push(c),
            other => panic!("{other:?}"),
        }
    }
    // Window exhausted: nothing more until acked.
    assert!(s.quiet_for(150).await);
    p.engine.stream_ack(s.id, 2);
    for _ in 0..2 {
        match s.next().await {
            Event::Chunk(c) => got.push(c),
            other => panic!("{other:?}"),
        }
    }
    p.engine.stream_ack(s.id, 100);
    loop {
        match s.next().await {
            Event::Chunk(c) => got.push(c),
            Event::Reply(o) => {
                assert_eq!(o, Outcome::Done);
                break;
            }
        }
    }
    assert_eq!(got.len(), 6);
    assert_eq!(
        got[0].payload,
        ChunkPayload::Json(Value::Map(vec![("i".into(), Value::Int(1))]))
    );
    assert_eq!(got[0].metadata, vec![("k".to_owned(), "1".to_owned())]);
    assert!(got[5].is_final && !got[4].is_final);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_stream_stops_the_producer() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let opts = Opts {
        stream_window: Some(1),
        ..Opts::default()
    };
    let args = vec![("n", Value::Int(1_000)), ("delay_ms", Value::Int(1))];
    let mut s = submit(&p.engine, "count", args, opts).expect("submit");
    assert!(matches!(s.next().await, Event::Chunk(_)));
    p.engine.cancel(s.id);
    eventually("producer stopped", || {
        worker.observed.streams_cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("request forgotten", || p.engine.tracked_requests() == 0).await;
    assert!(s.quiet_for(50).await);
    // The worker is free again.
    let mut next = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    ok_value(next.reply().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_stream_receiver_drops_the_stream() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let opts = Opts {
        stream_window: Some(4),
        dead: true,
        ..Opts::default()
    };
    let args = vec![("n", Value::Int(1_000)), ("delay_ms", Value::Int(1))];
    let _s = submit(&p.engine, "count", args, opts).expect("submit");
    eventually("producer stopped", || {
        worker.observed.streams_cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("request forgotten", || p.engine.tracked_requests() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_errors_and_deadlines() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 2).expect("add");
    let opts = Opts {
        stream_window: Some(4),
        ..Opts::default()
    };
    let mut raise = submit(&p.engine, "raise", vec![], opts).expect("submit");
    match raise.reply().await {
        Outcome::Error(ErrorReason::Python(payload)) => {
            assert_eq!(payload.get("type"), Some(&Value::str("RuntimeError")))
        }
        other => panic!("{other:?}"),
    }
    let opts = Opts {
        stream_window: Some(1_000),
        timeout: Some(Duration::from_millis(100)),
        ..Opts::default()
    };
    let args = vec![("n", Value::Int(1_000)), ("delay_ms", Value::Int(5))];
    let mut slow = submit(&p.engine, "count", args, opts).expect("submit");
    loop {
        match slow.next().await {
            Event::Chunk(_) => {}
            Event::Reply(o) => {
                assert!(
                    matches!(
                        o,
                        Outcome::Error(ErrorReason::Grpc {
                            code: "deadline_exceeded",
                            ..
                        })
                    ),
                    "{o:?}"
                );
                break;
            }
        }
    }
    eventually("producer stopped", || {
        worker.observed.streams_cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_task_gives_one_error_reply() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let opts = Opts {
        stream_window: Some(4),
        panic_on_chunk: true,
        ..Opts::default()
    };
    let mut s = submit(&p.engine, "count", vec![("n", Value::Int(3))], opts).expect("submit");
    match s.reply().await {
        Outcome::Error(ErrorReason::Grpc {
            code: "internal",
            message,
        }) => {
            assert!(message.contains("panicked"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(s.quiet_for(50).await);
    // The pool is not poisoned.
    let mut next = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    ok_value(next.reply().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_reply_does_not_poison_the_pool() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let opts = Opts {
        panic_on_reply: true,
        ..Opts::default()
    };
    let _boom = submit(&p.engine, "echo", vec![], opts).expect("submit");
    eventually("request forgotten", || p.engine.tracked_requests() == 0).await;
    for _ in 0..3 {
        let mut next = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
        ok_value(next.reply().await);
    }
    assert_eq!(p.engine.workers()[0].load, 0);
}

#[test]
fn calls_from_outside_the_runtime_deliver_on_it() {
    // Like a BEAM scheduler thread: no tokio context on the calling thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let events = Arc::new(Events::default());
    let engine: Engine<Target> = Engine::new(EngineConfig::default(), events, rt.handle().clone());
    // No workers: the request queues; closing rejects it from this thread.
    let mut queued = submit(&engine, "echo", vec![], Opts::default()).expect("submit");
    engine.close();
    // `Target::reply` asserts that it runs on the runtime.
    let outcome = rt.block_on(queued.reply());
    assert_eq!(
        outcome,
        Outcome::Error(ErrorReason::Pool(RejectReason::Closed))
    );
}

/// An engine with default settings whose tasks run on `rt`, for callers outside the runtime.
fn engine_on(rt: &tokio::runtime::Runtime) -> Engine<Target> {
    Engine::new(
        EngineConfig::default(),
        Arc::new(Events::default()),
        rt.handle().clone(),
    )
}

#[test]
fn a_cancel_between_the_decision_and_the_send_of_a_reply_stops_it() {
    // A current-thread runtime that nobody drives yet: a reply decided from this (non-tokio)
    // thread is handed to the runtime and waits there, as it may when a BEAM caller's timeout
    // races the queue timeout or a close. The caller cancels in that window: once `cancel`
    // has returned, nothing may reach it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let engine = engine_on(&rt);
    let mut queued = submit(&engine, "echo", vec![], Opts::default()).expect("submit");
    let mut kept = submit(&engine, "echo", vec![], Opts::default()).expect("submit");
    engine.close(); // both rejections are decided now, and sent once the runtime runs
    engine.cancel(queued.id);
    assert_eq!(engine.tracked_requests(), 0);
    rt.block_on(async {
        assert!(
            queued.quiet_for(50).await,
            "a reply reached a cancelled caller"
        );
        assert_eq!(
            kept.reply().await,
            Outcome::Error(ErrorReason::Pool(RejectReason::Closed))
        );
    });
}

#[test]
fn dropping_the_engine_closes_it() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = engine_on(&rt);
    let mut queued = submit(&engine, "echo", vec![], Opts::default()).expect("submit");
    drop(engine);
    let outcome = rt.block_on(queued.reply());
    assert_eq!(
        outcome,
        Outcome::Error(ErrorReason::Pool(RejectReason::Closed))
    );
}

// ----- worker crashes, retries, abandoned calls, drain -------------------------------------------

fn exit_status(n: i64) -> Value {
    Value::List(vec![Value::str("exit_status"), Value::Int(n)])
}

fn worker_exit(worker: &str, reason: Value) -> Outcome {
    Outcome::Error(ErrorReason::WorkerExit {
        worker: Arc::from(worker),
        reason,
    })
}

fn verdict(ms: u64) -> EngineConfig {
    EngineConfig {
        crash_verdict: Duration::from_millis(ms),
        ..EngineConfig::default()
    }
}

fn is_connection_error(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::Error(ErrorReason::Grpc { code, .. })
            if matches!(*code, "unavailable" | "unknown" | "internal" | "cancelled" | "aborted" | "data_loss")
    )
}

async fn running(worker: &FakeWorker, n: usize) {
    eventually("calls running", || {
        worker.observed.running.load(Ordering::SeqCst) == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_call_reaches_the_caller_with_the_exit_status() {
    let worker = FakeWorker::start().await;
    let p = pool_with(EngineConfig::default()); // crash_verdict 250 ms
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let mut call = submit(&p.engine, "sleep", sleep_args(5_000), Opts::default()).expect("submit");
    running(&worker, 1).await;
    let crashed = Instant::now();
    worker.crash();
    // The RPC has failed by now; the engine holds it for the owner's verdict.
    assert!(call.quiet_for(60).await, "transport error not held");
    p.engine.worker_down("w1", exit_status(139)).expect("down");
    assert_eq!(call.reply().await, worker_exit("w1", exit_status(139)));
    assert!(crashed.elapsed() < Duration::from_millis(500));
    assert!(call.quiet_for(50).await);
    eventually("request forgotten", || p.engine.tracked_requests() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_verdict_the_transport_error_is_reported_after_the_window() {
    let worker = FakeWorker::start().await;
    let p = pool_with(verdict(200));
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let mut call = submit(&p.engine, "sleep", sleep_args(5_000), Opts::default()).expect("submit");
    running(&worker, 1).await;
    let crashed = Instant::now();
    worker.crash();
    let outcome = call.reply().await;
    let waited = crashed.elapsed();
    assert!(is_connection_error(&outcome), "{outcome:?}");
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(1_500),
        "{waited:?}"
    );
    // A late verdict changes nothing: one reply only.
    p.engine.worker_down("w1", exit_status(137)).expect("down");
    assert!(call.quiet_for(100).await);
    eventually("request forgotten", || p.engine.tracked_requests() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_verdict_reports_the_transport_error_at_once() {
    let worker = FakeWorker::start().await;
    let p = pool_with(verdict(0));
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let mut call = submit(&p.engine, "sleep", sleep_args(5_000), Opts::default()).expect("submit");
    running(&worker, 1).await;
    let crashed = Instant::now();
    worker.crash();
    let outcome = call.reply().await;
    assert!(is_connection_error(&outcome), "{outcome:?}");
    assert!(crashed.elapsed() < Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_errors_are_never_held() {
    let worker = FakeWorker::start().await;
    let p = pool_with(verdict(3_000));
    p.engine.add_worker("w1", &worker.endpoint, 2).expect("add");
    let started = Instant::now();
    let mut fail = submit(&p.engine, "fail", vec![], Opts::default()).expect("submit");
    assert!(matches!(
        fail.reply().await,
        Outcome::Error(ErrorReason::Python(_))
    ));
    let opts = Opts {
        stream_window: Some(4),
        ..Opts::default()
    };
    let mut raise = submit(&p.engine, "raise", vec![], opts).expect("submit");
    assert!(matches!(
        raise.reply().await,
        Outcome::Error(ErrorReason::Python(_))
    ));
    let opts = Opts {
        timeout: Some(Duration::from_millis(100)),
        ..Opts::default()
    };
    let mut late = submit(&p.engine, "sleep", sleep_args(400), opts).expect("submit");
    assert!(matches!(
        late.reply().await,
        Outcome::Error(ErrorReason::Grpc {
            code: "deadline_exceeded",
            ..
        })
    ));
    assert!(started.elapsed() < Duration::from_millis(1_500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dispatched_to_a_dead_worker_also_waits_for_the_verdict() {
    let worker = FakeWorker::start().await;
    let p = pool_with(EngineConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    worker.crash();
    // The owner has not noticed yet: the call goes to the dead worker and fails to connect.
    let mut call = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    tokio::time::sleep(Duration::from_millis(60)).await;
    p.engine.worker_down("w1", exit_status(139)).expect("down");
    assert_eq!(call.reply().await, worker_exit("w1", exit_status(139)));
}

/// Two workers; returns which of them runs the call in flight (and the other one).
async fn serving<'a>(a: &'a FakeWorker, b: &'a FakeWorker) -> (&'a FakeWorker, &'a FakeWorker) {
    let mut which = None;
    eventually("call running", || {
        which = if a.observed.running.load(Ordering::SeqCst) == 1 {
            Some(true)
        } else if b.observed.running.load(Ordering::SeqCst) == 1 {
            Some(false)
        } else {
            None
        };
        which.is_some()
    })
    .await;
    if which == Some(true) {
        (a, b)
    } else {
        (b, a)
    }
}

fn name_of<'a>(w: &FakeWorker, a: &FakeWorker, names: (&'a str, &'a str)) -> &'a str {
    if std::ptr::eq(w, a) {
        names.0
    } else {
        names.1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_call_is_retried_once_on_another_worker() {
    let a = FakeWorker::start().await;
    let b = FakeWorker::start().await;
    let p = pool_with(EngineConfig::default());
    p.engine.add_worker("wa", &a.endpoint, 1).expect("add");
    p.engine.add_worker("wb", &b.endpoint, 1).expect("add");
    let opts = Opts {
        retry: 1,
        ..Opts::default()
    };
    let mut call = submit(&p.engine, "sleep", sleep_args(300), opts).expect("submit");
    let (dead, alive) = serving(&a, &b).await;
    let dead_name = name_of(dead, &a, ("wa", "wb"));
    dead.crash();
    tokio::time::sleep(Duration::from_millis(30)).await;
    p.engine
        .worker_down(dead_name, exit_status(139))
        .expect("down");
    // The caller hears only the result of the second attempt.
    let v = ok_value(call.reply().await);
    assert_eq!(v.get("slept"), Some(&Value::Int(300)));
    assert_eq!(
        *alive.observed.calls.lock().expect("lock"),
        vec!["sleep".to_owned()]
    );
    assert!(call.quiet_for(100).await);
    assert_eq!(p.engine.retries(), 1);
    eventually("request forgotten", || p.engine.tracked_requests() == 0).await;
    assert_eq!(p.engine.stats().in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_session_moves_with_its_retry() {
    let a = FakeWorker::start().await;
    let b = FakeWorker::start().await;
    let p = pool_with(EngineConfig::default());
    p.engine.add_worker("wa", &a.endpoint, 1).expect("add");
    p.engine.add_worker("wb", &b.endpoint, 1).expect("add");
    let opts = Opts {
        retry: 1,
        session: Some("s1"),
        ..Opts::default()
    };
    let mut call = submit(&p.engine, "sleep", sleep_args(200), opts).expect("submit");
    let (dead, _) = serving(&a, &b).await;
    let (dead_name, alive_name) = if std::ptr::eq(dead, &a) {
        ("wa", "wb")
    } else {
        ("wb", "wa")
    };
    dead.crash();
    p.engine
        .worker_down(dead_name, exit_status(137))
        .expect("down");
    ok_value(call.reply().await);
    assert_eq!(p.engine.session_worker("s1").as_deref(), Some(alive_name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_session_is_never_moved_by_a_retry() {
    let a = FakeWorker::start().await;
    let b = FakeWorker::start().await;
    let p = pool_with(EngineConfig::default());
    p.engine.add_worker("wa", &a.endpoint, 1).expect("add");
    p.engine.add_worker("wb", &b.endpoint, 1).expect("add");
    let opts = Opts {
        retry: 1,
        session: Some("s1"),
        affinity: Some(Affinity::StrictQueue),
        ..Opts::default()
    };
    let mut call = submit(&p.engine, "sleep", sleep_args(300), opts).expect("submit");
    let (dead, alive) = serving(&a, &b).await;
    let dead_name = name_of(dead, &a, ("wa", "wb"));
    dead.crash();
    p.engine
        .worker_down(dead_name, exit_status(139))
        .expect("down");
    assert_eq!(
        call.reply().await,
        Outcome::Error(ErrorReason::Pool(RejectReason::SessionWorkerUnavailable))
    );
    assert!(call.quiet_for(100).await);
    assert!(alive.observed.calls.lock().expect("lock").is_empty());
    assert_eq!(p.engine.retries(), 0);
    // The session still names its dead worker (a tombstone), until it is deleted.
    assert_eq!(p.engine.session_worker("s1").as_deref(), Some(dead_name));
    p.engine.delete_session("s1");
    assert_eq!(p.engine.session_worker("s1"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded() {
    let a = FakeWorker::start().await;
    let b = FakeWorker::start().await;
    let p = pool_with(EngineConfig::default());
    p.engine.add_worker("wa", &a.endpoint, 1).expect("add");
    p.engine.add_worker("wb", &b.endpoint, 1).expect("add");
    let opts = Opts {
        retry: 1,
        ..Opts::default()
    };
    let mut call = submit(&p.engine, "sleep", sleep_args(5_000), opts).expect("submit");
    let (first, second) = serving(&a, &b).await;
    let (first_name, second_name) = if std::ptr::eq(first, &a) {
        ("wa", "wb")
    } else {
        ("wb", "wa")
    };
    first.crash();
    p.engine
        .worker_down(first_name, exit_status(139))
        .expect("down");
    running(second, 1).await;
    assert!(call.quiet_for(20).await);
    second.crash();
    p.engine
        .worker_down(second_name, exit_status(134))
        .expect("down");
    assert_eq!(
        call.reply().await,
        worker_exit(second_name, exit_status(134))
    );
    assert!(call.quiet_for(100).await);
    assert_eq!(p.engine.retries(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_in_a_pool_of_one_waits_for_the_replacement() {
    let old = FakeWorker::start().await;
    let p = pool_with(EngineConfig::default());
    p.engine.add_worker("w1", &old.endpoint, 1).expect("add");
    let opts = Opts {
        retry: 1,
        ..Opts::default()
    };
    let mut call = submit(&p.engine, "sleep", sleep_args(100), opts).expect("submit");
    running(&old, 1).await;
    old.crash();
    p.engine.worker_down("w1", exit_status(139)).expect("down");
    // Queued until a worker is up again.
    assert!(call.quiet_for(100).await);
    assert_eq!(p.engine.stats().queue_len, 1);
    let new = FakeWorker::start().await;
    p.engine.add_worker("w1", &new.endpoint, 1).expect("re-add");
    let v = ok_value(call.reply().await);
    assert_eq!(v.get("slept"), Some(&Value::Int(100)));
    assert_eq!(
        *new.observed.calls.lock().expect("lock"),
        vec!["sleep".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_retry_reports_the_crash() {
    let worker = FakeWorker::start().await;
    let p = pool_with(EngineConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let opts = Opts {
        retry: 1,
        ..Opts::default()
    };
    let mut call = submit(&p.engine, "sleep", sleep_args(5_000), opts).expect("submit");
    running(&worker, 1).await;
    p.engine.close();
    worker.crash();
    p.engine.worker_down("w1", exit_status(139)).expect("down");
    assert_eq!(call.reply().await, worker_exit("w1", exit_status(139)));
    assert!(call.quiet_for(100).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_recycles_its_worker_and_the_queue_moves_to_the_replacement() {
    let old = FakeWorker::start().await;
    let p = pool(SchedulerConfig {
        abandon_grace: Some(Duration::from_millis(150)),
        ..SchedulerConfig::default()
    });
    p.engine.add_worker("w1", &old.endpoint, 1).expect("add");
    // A Python call that hangs.
    let mut hung = submit(&p.engine, "sleep", sleep_args(60_000), Opts::default()).expect("submit");
    running(&old, 1).await;
    let cancelled = Instant::now();
    p.engine.cancel(hung.id);
    let mut next = submit(&p.engine, "echo", vec![], Opts::default()).expect("submit");
    assert_eq!(p.engine.stats().queue_len, 1);
    eventually("recycle event", || {
        !p.events.0.lock().expect("lock").is_empty()
    })
    .await;
    assert!(cancelled.elapsed() >= Duration::from_millis(150));
    assert_eq!(*p.events.0.lock().expect("lock"), vec!["w1".to_owned()]);
    assert!(next.quiet_for(20).await, "ran on the hung worker");
    // The owner replaces the process.
    p.engine
        .worker_down("w1", Value::str("recycled"))
        .expect("down");
    let new = FakeWorker::start().await;
    p.engine.add_worker("w2", &new.endpoint, 1).expect("add");
    let v = ok_value(next.reply().await);
    assert_eq!(v.get("session_id"), Some(&Value::str("w2")));
    assert!(hung.quiet_for(50).await);
    eventually("requests forgotten", || p.engine.tracked_requests() == 0).await;
    assert!(old.observed.calls.lock().expect("lock").len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_status_tracks_what_is_left_after_close() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let mut a = submit(&p.engine, "sleep", sleep_args(300), Opts::default()).expect("submit");
    let mut b = submit(&p.engine, "sleep", sleep_args(300), Opts::default()).expect("submit");
    let s = p.engine.drain_status();
    assert_eq!(
        (s.in_flight, s.queued, s.awaiting_reply, s.closed),
        (1, 1, 2, false)
    );
    p.engine.close();
    assert_eq!(
        b.reply().await,
        Outcome::Error(ErrorReason::Pool(RejectReason::Closed))
    );
    let s = p.engine.drain_status();
    assert_eq!(
        (s.in_flight, s.queued, s.awaiting_reply, s.closed),
        (1, 0, 1, true)
    );
    ok_value(a.reply().await);
    eventually("drained", || {
        let s = p.engine.drain_status();
        s.in_flight == 0 && s.awaiting_reply == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_is_in_flight_but_awaits_no_reply() {
    let worker = FakeWorker::start().await;
    let p = pool(SchedulerConfig::default());
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let call = submit(&p.engine, "sleep", sleep_args(300), Opts::default()).expect("submit");
    running(&worker, 1).await;
    p.engine.cancel(call.id);
    let s = p.engine.drain_status();
    assert_eq!((s.in_flight, s.awaiting_reply), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_stream_gets_the_exit_status_and_is_never_retried() {
    let a = FakeWorker::start().await;
    let b = FakeWorker::start().await;
    let p = pool_with(EngineConfig::default());
    p.engine.add_worker("wa", &a.endpoint, 1).expect("add");
    let opts = Opts {
        stream_window: Some(1_000),
        retry: 3,
        ..Opts::default()
    };
    let args = vec![("n", Value::Int(1_000)), ("delay_ms", Value::Int(5))];
    let mut s = submit(&p.engine, "count", args, opts).expect("submit");
    assert!(matches!(s.next().await, Event::Chunk(_)));
    p.engine.add_worker("wb", &b.endpoint, 1).expect("add");
    a.crash();
    tokio::time::sleep(Duration::from_millis(30)).await;
    p.engine.worker_down("wa", exit_status(137)).expect("down");
    loop {
        match s.next().await {
            Event::Chunk(_) => {}
            Event::Reply(o) => {
                assert_eq!(o, worker_exit("wa", exit_status(137)));
                break;
            }
        }
    }
    assert!(s.quiet_for(100).await);
    assert!(b.observed.calls.lock().expect("lock").is_empty());
    assert_eq!(p.engine.retries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_crash_hold_sends_nothing() {
    let worker = FakeWorker::start().await;
    let p = pool_with(verdict(2_000));
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let opts = Opts {
        retry: 1,
        ..Opts::default()
    };
    let mut call = submit(&p.engine, "sleep", sleep_args(5_000), opts).expect("submit");
    running(&worker, 1).await;
    worker.crash();
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.engine.cancel(call.id);
    assert_eq!(p.engine.drain_status().awaiting_reply, 0);
    p.engine.worker_down("w1", exit_status(139)).expect("down");
    assert!(call.quiet_for(100).await);
    assert_eq!(p.engine.retries(), 0);
    eventually("request forgotten", || p.engine.tracked_requests() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crash_hold_ends_at_the_caller_deadline() {
    let worker = FakeWorker::start().await;
    let p = pool_with(verdict(5_000));
    p.engine.add_worker("w1", &worker.endpoint, 1).expect("add");
    let opts = Opts {
        timeout: Some(Duration::from_millis(400)),
        ..Opts::default()
    };
    let started = Instant::now();
    let mut call = submit(&p.engine, "sleep", sleep_args(5_000), opts).expect("submit");
    running(&worker, 1).await;
    worker.crash();
    let outcome = call.reply().await;
    assert!(is_connection_error(&outcome), "{outcome:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(2_000),
        "{waited:?}"
    );
}
