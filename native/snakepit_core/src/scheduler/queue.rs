//! Queue building blocks: arrival-ordered FIFOs and the deadline heap.
//!
//! The scheduler keeps one [`Fifo`] of unpinned requests plus one per worker for the requests
//! pinned to it (strict session affinity). Every queued request carries a global arrival sequence
//! number; a FIFO is always sorted by it, so "serve the earliest arrival among the heads a worker may
//! take" is a comparison of at most two heads, and removing a request from the middle (cancel,
//! timeout) is a binary search plus a shift.
//!
//! Deadlines live in a min-heap with lazy deletion: an entry whose request has left the queue (or
//! was re-queued with another sequence number) is skipped when it reaches the top, and the heap is
//! compacted when stale entries outnumber live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use super::types::RequestId;

/// One queued request in a [`Fifo`]: arrival sequence number and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct QEntry {
    /// Global arrival sequence number (unique per enqueue).
    pub seq: u64,
    /// The queued request.
    pub id: RequestId,
}

/// A FIFO of queued requests, always sorted by arrival sequence number.
#[derive(Debug, Default)]
pub(crate) struct Fifo {
    q: VecDeque<QEntry>,
}

impl Fifo {
    /// Appends an entry that arrived after every entry already queued.
    #[inline]
    pub fn push_back(&mut self, e: QEntry) {
        debug_assert!(self.q.back().is_none_or(|b| b.seq < e.seq));
        self.q.push_back(e);
    }

    /// Inserts an entry at its arrival position (used when a request is re-homed).
    pub fn insert_sorted(&mut self, e: QEntry) {
        let pos = self.q.partition_point(|x| x.seq < e.seq);
        self.q.insert(pos, e);
    }

    /// The earliest-arrived entry.
    #[inline]
    pub fn front(&self) -> Option<QEntry> {
        self.q.front().copied()
    }

    /// Removes and returns the earliest-arrived entry.
    #[inline]
    pub fn pop_front(&mut self) -> Option<QEntry> {
        self.q.pop_front()
    }

    /// Removes the entry with sequence number `seq`; `true` if it was there.
    pub fn remove(&mut self, seq: u64) -> bool {
        match self.q.binary_search_by_key(&seq, |e| e.seq) {
            Ok(i) => {
                self.q.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// Removes and returns every entry, in arrival order.
    pub fn take_all(&mut self) -> VecDeque<QEntry> {
        std::mem::take(&mut self.q)
    }

    /// Keeps only the entries for which `keep` returns `true`, appending the others to `removed`.
    pub fn extract_into(
        &mut self,
        removed: &mut Vec<QEntry>,
        mut keep: impl FnMut(QEntry) -> bool,
    ) {
        self.q.retain(|&e| {
            if keep(e) {
                true
            } else {
                removed.push(e);
                false
            }
        });
    }
}

/// Min-heap of `(deadline, seq, request)` with lazy deletion.
#[derive(Debug, Default)]
pub(crate) struct DeadlineHeap {
    heap: BinaryHeap<Reverse<(Instant, u64, RequestId)>>,
}

impl DeadlineHeap {
    /// Registers the deadline of the request queued with sequence number `seq`.
    #[inline]
    pub fn push(&mut self, deadline: Instant, seq: u64, id: RequestId) {
        self.heap.push(Reverse((deadline, seq, id)));
    }

    /// Earliest registered deadline (possibly of an entry that is no longer queued).
    #[inline]
    pub fn peek_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Pops the earliest entry if its deadline is `<= now`.
    #[inline]
    pub fn pop_due(&mut self, now: Instant) -> Option<(u64, RequestId)> {
        match self.heap.peek() {
            Some(Reverse((d, _, _))) if *d <= now => {
                self.heap.pop().map(|Reverse((_, seq, id))| (seq, id))
            }
            _ => None,
        }
    }

    /// Number of entries, stale ones included.
    #[inline]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drops the entries for which `live` returns `false`.
    pub fn compact(&mut self, mut live: impl FnMut(u64, RequestId) -> bool) {
        self.heap.retain(|Reverse((_, seq, id))| live(*seq, *id));
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.heap.clear();
    }
}
