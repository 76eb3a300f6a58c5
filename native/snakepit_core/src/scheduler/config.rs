//! Scheduler configuration (one per pool).

use std::time::Duration;

use super::types::Affinity;

/// Configuration of one pool's scheduler. `Default` gives the upstream defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// The pool's `affinity:` mode, used when a call does not override it. Default [`Affinity::Hint`].
    pub default_affinity: Affinity,
    /// Maximum number of queued requests (`pool_max_queue_size`), default 1000.
    pub max_queue_size: usize,
    /// Longest time a request may wait in the queue (`pool_queue_timeout`), default 10 s.
    pub queue_timeout: Duration,
    /// Idle time after which a session→worker entry is forgotten, default 3600 s.
    pub affinity_ttl: Duration,
    /// Bound on the number of session→worker entries (least recently used evicted), default 100 000.
    pub max_affinity_entries: usize,
    /// An abandoned in-flight call still running this long after its cancellation makes the
    /// scheduler emit `RecycleWorker` for its worker. `None`: never.
    pub abandon_grace: Option<Duration>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            default_affinity: Affinity::Hint,
            max_queue_size: 1000,
            queue_timeout: Duration::from_secs(10),
            affinity_ttl: Duration::from_secs(3600),
            max_affinity_entries: 100_000,
            abandon_grace: None,
        }
    }
}
