//! Throughput of the scheduler core: one submit → dispatch → complete cycle per iteration.
//!
//! `cargo bench -p snakepit_core --bench scheduler` runs the criterion groups (throughput in
//! cycles/s, shown as elem/s) and then prints a plain `cycles/s` summary per scenario.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use snakepit_core::scheduler::{
    Action, Affinity, RequestId, Scheduler, SchedulerConfig, SessionId, Submit, WorkerId,
};

const WORKERS: u64 = 8;

/// One benchmark scenario: a scheduler, requests kept in flight, and the cycle to run.
struct Scenario {
    s: Scheduler,
    now: Instant,
    out: Vec<Action>,
    next: u64,
    in_flight: VecDeque<RequestId>,
    sessions: Vec<SessionId>,
    affinity: Option<Affinity>,
}

impl Scenario {
    fn new(capacity: u32, background: usize, sessions: usize, affinity: Option<Affinity>) -> Self {
        let now = Instant::now();
        let mut s = Scheduler::new(SchedulerConfig {
            max_queue_size: 100_000,
            ..SchedulerConfig::default()
        });
        let mut out = Vec::with_capacity(64);
        for w in 0..WORKERS {
            s.worker_up(WorkerId(w), capacity, now, &mut out);
        }
        let mut sc = Scenario {
            s,
            now,
            out,
            next: 0,
            in_flight: VecDeque::new(),
            sessions: (0..sessions)
                .map(|i| SessionId::from(format!("session-{i}")))
                .collect(),
            affinity,
        };
        for _ in 0..background {
            sc.submit();
        }
        sc
    }

    #[inline]
    fn submit(&mut self) {
        let id = RequestId(self.next);
        let session = if self.sessions.is_empty() {
            None
        } else {
            Some(self.sessions[(self.next as usize) % self.sessions.len()].clone())
        };
        self.next += 1;
        self.s.submit(
            Submit {
                id,
                session,
                affinity: self.affinity,
                deadline: None,
            },
            self.now,
            &mut self.out,
        );
        self.drain_out();
    }

    #[inline]
    fn drain_out(&mut self) {
        for a in self.out.drain(..) {
            if let Action::Dispatch { request, .. } = a {
                self.in_flight.push_back(request);
            }
        }
    }

    /// One cycle: submit a request, complete the oldest in-flight one (which may dispatch a
    /// queued one), so `background` requests stay outstanding.
    #[inline]
    fn cycle(&mut self) {
        self.submit();
        if let Some(r) = self.in_flight.pop_front() {
            let answered = self.s.complete(r, self.now, &mut self.out);
            black_box(answered);
            self.drain_out();
        }
    }
}

struct Case {
    name: &'static str,
    make: fn() -> Scenario,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "no_session/idle_pool",
            make: || Scenario::new(1, 0, 0, None),
        },
        Case {
            name: "no_session/7_of_8_busy",
            make: || Scenario::new(1, 7, 0, None),
        },
        Case {
            name: "no_session/threads_4x8_half_busy",
            make: || Scenario::new(4, 16, 0, None),
        },
        Case {
            name: "no_session/saturated_queue_64",
            make: || Scenario::new(1, 8 + 64, 0, None),
        },
        Case {
            name: "hint_sessions_1000/idle_pool",
            make: || Scenario::new(1, 0, 1000, Some(Affinity::Hint)),
        },
        Case {
            name: "hint_sessions_1000/7_of_8_busy",
            make: || Scenario::new(1, 7, 1000, Some(Affinity::Hint)),
        },
        Case {
            name: "strict_queue_sessions_1000/7_of_8_busy",
            make: || Scenario::new(1, 7, 1000, Some(Affinity::StrictQueue)),
        },
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_cycle");
    g.throughput(Throughput::Elements(1));
    for case in cases() {
        let mut sc = (case.make)();
        g.bench_function(case.name, |b| b.iter(|| sc.cycle()));
    }
    g.finish();
}

fn summary() {
    println!("\nsubmit→dispatch→complete cycles/s ({WORKERS} workers, one thread):");
    for case in cases() {
        let mut sc = (case.make)();
        for _ in 0..200_000 {
            sc.cycle();
        }
        let mut best = 0.0f64;
        for _ in 0..5 {
            let n = 2_000_000u64;
            let t = Instant::now();
            for _ in 0..n {
                sc.cycle();
            }
            let rate = n as f64 / t.elapsed().as_secs_f64();
            best = best.max(rate);
        }
        println!("  {:<42} {:>7.2} M cycles/s", case.name, best / 1e6);
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--summary-only");
    if !quick {
        let mut c = Criterion::default()
            .configure_from_args()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        bench(&mut c);
        c.final_summary();
    }
    summary();
}
