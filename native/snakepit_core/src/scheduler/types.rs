//! Identifiers, affinity modes, reject reasons and the [`Action`]s the scheduler emits.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Identity of one Python worker process (a restarted process gets a new id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// Identity of one request, unique among the requests the scheduler currently knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A session id (cheap to clone; borrows as `str` for map look-ups).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub Arc<str>);

impl SessionId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SessionId {
    fn from(s: &str) -> Self {
        SessionId(Arc::from(s))
    }
}

impl From<String> for SessionId {
    fn from(s: String) -> Self {
        SessionId(Arc::from(s))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Session affinity mode (pool default, overridable per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Affinity {
    /// Prefer the session's worker; run anywhere else when it is not available (the session moves).
    #[default]
    Hint,
    /// Run only on the session's worker; wait for it when busy.
    StrictQueue,
    /// Run only on the session's worker; fail with [`RejectReason::WorkerBusy`] when busy.
    StrictFailFast,
}

impl Affinity {
    /// `true` for the two strict modes.
    #[inline]
    pub fn is_strict(self) -> bool {
        !matches!(self, Affinity::Hint)
    }

    /// The Elixir atom name (`"hint"`, `"strict_queue"`, `"strict_fail_fast"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::Hint => "hint",
            Affinity::StrictQueue => "strict_queue",
            Affinity::StrictFailFast => "strict_fail_fast",
        }
    }

    /// Parses the Elixir atom name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Affinity> {
        match s {
            "hint" => Some(Affinity::Hint),
            "strict_queue" => Some(Affinity::StrictQueue),
            "strict_fail_fast" => Some(Affinity::StrictFailFast),
            _ => None,
        }
    }
}

/// Why a request was answered with an error by the scheduler itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The queue already holds `max_queue_size` requests.
    PoolSaturated,
    /// The request's deadline (caller timeout or queue timeout) passed before it could be dispatched.
    QueueTimeout,
    /// `:strict_fail_fast` and the session's worker is at capacity.
    WorkerBusy,
    /// Strict mode and the session's worker is dead, removed or tainted.
    SessionWorkerUnavailable,
    /// No worker can serve the request: every worker failed to start (`Scheduler::fail_queued`;
    /// without it the scheduler queues while no worker is up).
    NoWorkers,
    /// The scheduler was closed.
    Closed,
}

impl RejectReason {
    /// The reason atom of the Elixir API (`{:pool, atom}`).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::PoolSaturated => "pool_saturated",
            RejectReason::QueueTimeout => "queue_timeout",
            RejectReason::WorkerBusy => "worker_busy",
            RejectReason::SessionWorkerUnavailable => "session_worker_unavailable",
            RejectReason::NoWorkers => "no_workers_available",
            RejectReason::Closed => "pool_closed",
        }
    }
}

/// What the driver of the scheduler must do. Emitted into the `out` vector of every event method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Start the RPC of `request` on `worker`; report its end with `Scheduler::complete`.
    Dispatch {
        /// The request to run.
        request: RequestId,
        /// The worker to run it on.
        worker: WorkerId,
    },
    /// Answer `request` with an error: its one outcome.
    Reject {
        /// The rejected request.
        request: RequestId,
        /// Why.
        reason: RejectReason,
    },
    /// The in-flight `request`'s worker went away: its one outcome (answer `{:worker_exit, ..}`).
    WorkerLost {
        /// The lost request.
        request: RequestId,
        /// The worker that went away.
        worker: WorkerId,
    },
    /// Abort the RPC of an abandoned in-flight request; the worker stays busy until `complete`.
    CancelCall {
        /// The abandoned request.
        request: RequestId,
        /// The worker running it.
        worker: WorkerId,
    },
    /// An abandoned call overran `abandon_grace`: replace the worker (emitted once per worker).
    RecycleWorker {
        /// The worker to recycle.
        worker: WorkerId,
    },
}

/// A fast, non-cryptographic hasher for engine-assigned integer ids (FxHash multiply-rotate).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(SEED);
    }
}

/// `HashMap` keyed by integer ids with [`IdHasher`].
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IdHasher>>;
