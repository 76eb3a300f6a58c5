//! The worker table: capacity, load, taint, pinned queues and least-loaded selection.
//!
//! Workers live in a dense vector (removal is a swap-remove) indexed by a hash map from
//! [`WorkerId`]. A worker is *available* iff it is registered (ready), not tainted and its in-flight
//! load is below its capacity; the table keeps a count of available workers so a saturated pool
//! answers "none" in O(1). Least-loaded selection scans the workers once, starting at a rotating
//! index so ties spread the load.

use std::time::Instant;

use super::queue::Fifo;
use super::types::{IdMap, WorkerId};

/// One registered (ready) worker.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Its id.
    pub id: WorkerId,
    /// Maximum concurrent requests (≥ 1).
    pub capacity: u32,
    /// In-flight requests, abandoned ones included (they occupy the worker until they return).
    pub load: u32,
    /// Tainted until this instant (not available meanwhile).
    pub tainted_until: Option<Instant>,
    /// `RecycleWorker` was already emitted for it.
    pub recycle_sent: bool,
    /// Strict-affinity requests waiting for this very worker, in arrival order.
    pub pinned: Fifo,
}

impl Worker {
    /// Available: not tainted and below capacity.
    #[inline]
    pub fn available(&self) -> bool {
        self.tainted_until.is_none() && self.load < self.capacity
    }
}

/// All registered workers (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct WorkerTable {
    slots: Vec<Worker>,
    index: IdMap<WorkerId, usize>,
    rr: usize,
    available: usize,
    tainted: usize,
}

impl WorkerTable {
    /// Number of registered workers.
    #[inline]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Slot index of `id`.
    #[inline]
    pub fn index_of(&self, id: WorkerId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    /// The worker in slot `idx`.
    #[inline]
    pub fn get(&self, idx: usize) -> &Worker {
        &self.slots[idx]
    }

    /// Mutable access to the pinned queue of slot `idx` (does not affect availability).
    #[inline]
    pub fn pinned_mut(&mut self, idx: usize) -> &mut Fifo {
        &mut self.slots[idx].pinned
    }

    /// All workers.
    pub fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.slots.iter()
    }

    /// Registers a worker, or updates the capacity of a known one. Returns its slot index.
    pub fn upsert(&mut self, id: WorkerId, capacity: u32) -> usize {
        let capacity = capacity.max(1);
        if let Some(idx) = self.index_of(id) {
            self.update(idx, |w| w.capacity = capacity);
            return idx;
        }
        let w = Worker {
            id,
            capacity,
            load: 0,
            tainted_until: None,
            recycle_sent: false,
            pinned: Fifo::default(),
        };
        self.available += 1;
        self.slots.push(w);
        let idx = self.slots.len() - 1;
        self.index.insert(id, idx);
        idx
    }

    /// Removes a worker, returning it.
    pub fn remove(&mut self, id: WorkerId) -> Option<Worker> {
        let idx = self.index.remove(&id)?;
        let w = self.slots.swap_remove(idx);
        if idx < self.slots.len() {
            let moved = self.slots[idx].id;
            self.index.insert(moved, idx);
        }
        if w.available() {
            self.available -= 1;
        }
        if w.tainted_until.is_some() {
            self.tainted -= 1;
        }
        if self.rr >= self.slots.len() {
            self.rr = 0;
        }
        Some(w)
    }

    /// Applies `f` to slot `idx`, keeping the availability and taint counts right.
    #[inline]
    pub fn update<R>(&mut self, idx: usize, f: impl FnOnce(&mut Worker) -> R) -> R {
        let w = &mut self.slots[idx];
        let (was_avail, was_tainted) = (w.available(), w.tainted_until.is_some());
        let r = f(w);
        let (is_avail, is_tainted) = (w.available(), w.tainted_until.is_some());
        self.available = self.available + usize::from(is_avail) - usize::from(was_avail);
        self.tainted = self.tainted + usize::from(is_tainted) - usize::from(was_tainted);
        r
    }

    /// One more in-flight request on slot `idx`.
    #[inline]
    pub fn inc_load(&mut self, idx: usize) {
        self.update(idx, |w| w.load += 1);
    }

    /// One in-flight request of slot `idx` returned.
    #[inline]
    pub fn dec_load(&mut self, idx: usize) {
        self.update(idx, |w| w.load = w.load.saturating_sub(1));
    }

    /// Earliest taint expiry.
    pub fn next_taint_expiry(&self) -> Option<Instant> {
        if self.tainted == 0 {
            return None;
        }
        self.slots.iter().filter_map(|w| w.tainted_until).min()
    }

    /// Clears expired taints, pushing the ids of the workers concerned to `freed`.
    pub fn expire_taints(&mut self, now: Instant, freed: &mut Vec<WorkerId>) {
        if self.tainted == 0 {
            return;
        }
        for idx in 0..self.slots.len() {
            if self.slots[idx].tainted_until.is_some_and(|t| t <= now) {
                self.update(idx, |w| w.tainted_until = None);
                freed.push(self.slots[idx].id);
            }
        }
    }

    /// The least-loaded available worker (load relative to capacity), ties broken by a rotating
    /// start index. `None` when no worker is available.
    #[inline]
    pub fn pick_least_loaded(&mut self) -> Option<usize> {
        if self.available == 0 {
            return None;
        }
        let n = self.slots.len();
        let mut best: Option<usize> = None;
        let mut i = self.rr;
        for _ in 0..n {
            let w = &self.slots[i];
            if w.available() {
                if w.load == 0 {
                    best = Some(i);
                    break;
                }
                match best {
                    None => best = Some(i),
                    Some(b) => {
                        let bw = &self.slots[b];
                        // w.load / w.capacity < bw.load / bw.capacity
                        if u64::from(w.load) * u64::from(bw.capacity)
                            < u64::from(bw.load) * u64::from(w.capacity)
                        {
                            best = Some(i);
                        }
                    }
                }
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        let b = best?;
        self.rr = if b + 1 == n { 0 } else { b + 1 };
        Some(b)
    }
}
