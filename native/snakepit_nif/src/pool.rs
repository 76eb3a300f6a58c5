//! The pool resource and its caller-monitor table.
//!
//! Caller death: the resource monitors every process with requests in flight (one monitor per
//! process, dropped when its last request ends) and cancels that process's requests from the
//! `down` callback, so no GenServer sits in the request path.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustler::thread::is_scheduler_thread;
use rustler::{Env, LocalPid, Monitor, Resource, ResourceArc};
use snakepit_core::engine::Engine;
use snakepit_core::scheduler::RequestId;
use tokio::runtime::Handle;

use crate::reply::NifTarget;

/// One pool (`Snakepit.Native.pool_new/2`).
pub struct PoolResource {
    pub(crate) engine: Engine<NifTarget>,
    callers: Mutex<HashMap<LocalPid, Caller>>,
    pub(crate) handle: Handle,
}

/// The requests of one caller process and the monitor that watches it.
struct Caller {
    monitor: Option<Monitor>,
    requests: HashSet<u64>,
}

// NIF return values must be RefUnwindSafe (rustler encodes them under catch_unwind); the engine
// holds trait objects and tonic channels that do not say so. Every lock in here recovers from
// poisoning, so observing the pool after a caught panic is sound.
impl std::panic::RefUnwindSafe for PoolResource {}

#[rustler::resource_impl]
impl Resource for PoolResource {
    fn down<'a>(&'a self, _env: Env<'a>, pid: LocalPid, monitor: Monitor) {
        let ids = {
            let mut callers = self.callers();
            match callers.get(&pid) {
                Some(c) if c.monitor == Some(monitor) => callers.remove(&pid).map(|c| c.requests),
                // A monitor we already dropped (its DOWN raced the demonitor).
                _ => None,
            }
        };
        for id in ids.into_iter().flatten() {
            self.engine.cancel(RequestId(id));
        }
    }
}

impl PoolResource {
    /// Processes monitored right now (for `pool_stats`).
    pub(crate) fn monitored_callers(&self) -> usize {
        self.callers().len()
    }

    /// A pool around `engine`, whose tasks run on `handle`.
    pub(crate) fn new(engine: Engine<NifTarget>, handle: Handle) -> Self {
        PoolResource {
            engine,
            callers: Mutex::new(HashMap::new()),
            handle,
        }
    }

    fn callers(&self) -> MutexGuard<'_, HashMap<LocalPid, Caller>> {
        self.callers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records request `id` of `pid`, monitoring `pid` if it had no request yet.
    pub(crate) fn register(pool: &ResourceArc<Self>, env: Env<'_>, pid: LocalPid, id: u64) {
        let mut callers = pool.callers();
        let caller = callers.entry(pid).or_insert_with(|| Caller {
            monitor: pool.monitor(Some(env), &pid),
            requests: HashSet::new(),
        });
        caller.requests.insert(id);
    }

    /// Request `id` of `pid` ended (replied or cancelled): drop the monitor with the last one.
    pub(crate) fn release(pool: &ResourceArc<Self>, pid: LocalPid, id: u64) {
        let mut callers = pool.callers();
        let Some(caller) = callers.get_mut(&pid) else {
            return;
        };
        caller.requests.remove(&id);
        if !caller.requests.is_empty() {
            return;
        }
        if is_scheduler_thread() {
            // `enif_demonitor_process` wants the calling process's env on a BEAM thread, and a
            // drop has none: finish on a tokio thread, where a null env is the right one.
            drop(callers);
            let pool = pool.clone();
            pool.handle
                .clone()
                .spawn(async move { Self::release_idle(&pool, pid) });
        } else {
            Self::remove_idle(pool, &mut callers, pid);
        }
    }

    fn release_idle(pool: &ResourceArc<Self>, pid: LocalPid) {
        let mut callers = pool.callers();
        Self::remove_idle(pool, &mut callers, pid);
    }

    /// Removes `pid`'s record if it still has no request (one may have arrived meanwhile).
    fn remove_idle(
        pool: &ResourceArc<Self>,
        callers: &mut HashMap<LocalPid, Caller>,
        pid: LocalPid,
    ) {
        if callers.get(&pid).is_some_and(|c| c.requests.is_empty()) {
            if let Some(monitor) = callers.remove(&pid).and_then(|c| c.monitor) {
                pool.demonitor(None, &monitor);
            }
        }
    }
}
