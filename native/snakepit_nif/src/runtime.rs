//! The process-wide tokio runtime that drives every pool's RPCs and timers.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// One worker: the machine shares its cores with the BEAM schedulers and the Python workers, and
/// the work on this thread is I/O and message encoding, not computation. A second worker mostly
/// adds wake-ups (work stealing, idle/park cycles): measured on 2 cores with the bench's `engine`
/// tier, p50 overhead over plain tonic +185 us with two workers vs +99 us with one, and less CPU
/// per call, with no loss of throughput at 32-64 concurrent callers.
const WORKER_THREADS: usize = 1;

/// The runtime, created on first use and never dropped (the VM exits without waiting for it).
/// Building it can only fail on resource exhaustion; the error is kept so every later call
/// reports it instead of retrying.
pub fn runtime() -> Result<&'static Runtime, String> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("snakepit-tokio")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the tokio runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}
