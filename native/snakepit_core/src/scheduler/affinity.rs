//! Session → worker affinity table with idle TTL and a bound on its size.
//!
//! Entries live in a slab threaded on a doubly-linked list in least-recently-used order (head =
//! least recently used). Touching an entry moves it to the tail in O(1), so with a non-decreasing
//! clock the head is also the entry that expires first: expiry and eviction pop from the head.
//!
//! An entry may name a worker that is gone (a *tombstone*): strict sessions then keep failing with
//! `SessionWorkerUnavailable` instead of silently moving; the entry disappears through
//! `delete_session`, the TTL or eviction.
//!
//! A session with a call in flight is not idle, however long the call runs: its entry neither
//! expires nor is evicted until the last of its calls ends ([`AffinityTable::bind`] /
//! [`AffinityTable::call_ended`] / [`AffinityTable::call_lost`]); the end of a call counts as a
//! use. Busy entries keep their place in the list and are stepped over, which costs at most the
//! number of busy sessions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::types::{SessionId, WorkerId};

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Node {
    session: Option<SessionId>,
    worker: WorkerId,
    last_used: Instant,
    /// Calls of the session in flight since this entry was made.
    busy: u32,
    prev: u32,
    next: u32,
}

/// The affinity table (see the module docs).
#[derive(Debug)]
pub(crate) struct AffinityTable {
    map: HashMap<SessionId, u32>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    ttl: Duration,
    max: usize,
    /// Calls still in flight whose session entry was deleted meanwhile: their end must not be
    /// counted against a newer entry of the same session.
    orphans: HashMap<SessionId, u32>,
}

impl AffinityTable {
    /// An empty table; `max` is clamped to `1..u32::MAX`.
    pub fn new(ttl: Duration, max: usize) -> Self {
        AffinityTable {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            ttl,
            max: max.clamp(1, (NIL - 1) as usize),
            orphans: HashMap::new(),
        }
    }

    /// Number of entries (tombstones and not yet purged expired entries included).
    #[inline]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[inline]
    fn expired(&self, idx: u32, now: Instant) -> bool {
        let n = &self.nodes[idx as usize];
        match n.last_used.checked_add(self.ttl) {
            Some(exp) => exp <= now,
            None => false,
        }
    }

    /// Whether the session of entry `idx` has a call in flight.
    #[inline]
    fn is_busy(&self, idx: u32) -> bool {
        self.nodes[idx as usize].busy > 0
    }

    /// Idle for at least the TTL (a busy session never is).
    #[inline]
    fn stale(&self, idx: u32, now: Instant) -> bool {
        self.expired(idx, now) && !self.is_busy(idx)
    }

    /// The first entry from the least recently used end that is not busy.
    fn first_idle(&self) -> u32 {
        let mut idx = self.head;
        while idx != NIL && self.is_busy(idx) {
            idx = self.nodes[idx as usize].next;
        }
        idx
    }

    /// A call of `session` was dispatched to `worker`: records `session → worker` at `now` (as
    /// [`AffinityTable::set`]) and counts the call as in flight until
    /// [`AffinityTable::call_ended`] or [`AffinityTable::call_lost`].
    pub fn bind(&mut self, session: &SessionId, worker: WorkerId, now: Instant) {
        let idx = self.set(session, worker, now);
        self.nodes[idx as usize].busy += 1;
    }

    /// A call of `session` returned: a use of the session at `now`, and one call less in flight.
    pub fn call_ended(&mut self, session: &str, now: Instant) {
        // Touched while the call still counts, so an entry that outlived its TTL during the call
        // is kept.
        if let Some(&idx) = self.map.get(session) {
            self.touch_idx(idx, now);
        }
        self.call_lost(session);
    }

    /// A call of `session` ended without returning (its worker went away): one call less in
    /// flight, and no use of the session.
    pub fn call_lost(&mut self, session: &str) {
        if self.settle_orphan(session) {
            return;
        }
        if let Some(&idx) = self.map.get(session) {
            let n = &mut self.nodes[idx as usize];
            n.busy = n.busy.saturating_sub(1);
        }
    }

    /// Counts one ended call against the deleted entry of `session`, if it had one.
    fn settle_orphan(&mut self, session: &str) -> bool {
        if self.orphans.is_empty() {
            return false;
        }
        match self.orphans.get_mut(session) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.orphans.remove(session);
                }
                true
            }
            None => false,
        }
    }

    /// The worker of `session`, touching the entry. An expired entry is removed and `None` returned.
    #[inline]
    pub fn get(&mut self, session: &str, now: Instant) -> Option<WorkerId> {
        let idx = *self.map.get(session)?;
        if self.stale(idx, now) {
            self.remove_idx(idx);
            return None;
        }
        self.touch_idx(idx, now);
        Some(self.nodes[idx as usize].worker)
    }

    /// The worker recorded for `session`, without touching or expiring it.
    #[inline]
    pub fn peek(&self, session: &str) -> Option<WorkerId> {
        self.map
            .get(session)
            .map(|&i| self.nodes[i as usize].worker)
    }

    /// Records `session → worker` at `now` (evicting the least recently used idle entry when
    /// full) and returns the entry's index.
    pub fn set(&mut self, session: &SessionId, worker: WorkerId, now: Instant) -> u32 {
        if let Some(&idx) = self.map.get(session.as_str()) {
            self.nodes[idx as usize].worker = worker;
            self.touch_idx(idx, now);
            return idx;
        }
        // Only idle entries are evicted: with every entry busy the table grows past `max`, by
        // at most the number of calls in flight.
        while self.map.len() >= self.max {
            let victim = self.first_idle();
            if victim == NIL {
                break;
            }
            self.remove_idx(victim);
        }
        let node = Node {
            session: Some(session.clone()),
            worker,
            last_used: now,
            busy: 0,
            prev: self.tail,
            next: NIL,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        if self.tail != NIL {
            self.nodes[self.tail as usize].next = idx;
        } else {
            self.head = idx;
        }
        self.tail = idx;
        self.map.insert(session.clone(), idx);
        idx
    }

    /// Forgets `session` (busy or not); `true` if it had an entry.
    pub fn remove(&mut self, session: &str) -> bool {
        match self.map.get(session) {
            Some(&idx) => {
                let busy = self.nodes[idx as usize].busy;
                if busy > 0 {
                    if let Some(s) = self.nodes[idx as usize].session.clone() {
                        *self.orphans.entry(s).or_insert(0) += busy;
                    }
                }
                self.remove_idx(idx);
                true
            }
            None => false,
        }
    }

    /// Removes every entry idle for at least the TTL (busy sessions stay).
    pub fn purge_expired(&mut self, now: Instant) {
        loop {
            let idx = self.first_idle();
            if idx == NIL || !self.expired(idx, now) {
                return;
            }
            self.remove_idx(idx);
        }
    }

    /// When the least recently used idle entry expires (coarse: assumes a non-decreasing clock).
    /// A busy session's entry has no expiry until its last call ends (which touches it).
    pub fn next_expiry(&self) -> Option<Instant> {
        let idx = self.first_idle();
        if idx == NIL {
            return None;
        }
        self.nodes[idx as usize].last_used.checked_add(self.ttl)
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let n = &self.nodes[idx as usize];
            (n.prev, n.next)
        };
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    #[inline]
    fn touch_idx(&mut self, idx: u32, now: Instant) {
        let n = &mut self.nodes[idx as usize];
        if now > n.last_used {
            n.last_used = now;
        }
        if self.tail == idx {
            return;
        }
        self.unlink(idx);
        let old_tail = self.tail;
        {
            let n = &mut self.nodes[idx as usize];
            n.prev = old_tail;
            n.next = NIL;
        }
        if old_tail != NIL {
            self.nodes[old_tail as usize].next = idx;
        } else {
            self.head = idx;
        }
        self.tail = idx;
    }

    fn remove_idx(&mut self, idx: u32) {
        self.unlink(idx);
        if let Some(s) = self.nodes[idx as usize].session.take() {
            self.map.remove(s.as_str());
        }
        self.free.push(idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_eviction_and_ttl() {
        let t0 = Instant::now();
        let s = |x: &str| SessionId::from(x);
        let mut t = AffinityTable::new(Duration::from_secs(10), 2);
        t.set(&s("a"), WorkerId(1), t0);
        t.set(&s("b"), WorkerId(2), t0 + Duration::from_secs(1));
        // touching a makes b the least recently used
        assert_eq!(t.get("a", t0 + Duration::from_secs(2)), Some(WorkerId(1)));
        t.set(&s("c"), WorkerId(3), t0 + Duration::from_secs(3));
        assert_eq!(t.peek("b"), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.next_expiry(), Some(t0 + Duration::from_secs(12)));
        t.purge_expired(t0 + Duration::from_secs(12));
        assert_eq!(t.peek("a"), None);
        assert_eq!(t.peek("c"), Some(WorkerId(3)));
        assert_eq!(t.get("c", t0 + Duration::from_secs(13)), None);
        assert_eq!(t.len(), 0);
        assert!(t.next_expiry().is_none());
        // slots are reused
        t.set(&s("d"), WorkerId(4), t0);
        assert!(t.remove("d"));
        assert!(!t.remove("d"));
    }

    #[test]
    fn busy_sessions_stay_until_their_calls_end() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let s = |x: &str| SessionId::from(x);
        let mut t = AffinityTable::new(Duration::from_millis(10), 1);
        t.bind(&s("a"), WorkerId(1), at(0));
        // over the bound and past the TTL while busy: kept, and no expiry is due for it
        t.set(&s("b"), WorkerId(2), at(1));
        assert_eq!(t.len(), 2);
        t.purge_expired(at(50));
        assert_eq!(t.peek("a"), Some(WorkerId(1)));
        assert_eq!(t.peek("b"), None);
        assert_eq!(t.next_expiry(), None);
        assert_eq!(t.get("a", at(60)), Some(WorkerId(1)));
        // the call's end is a use: a TTL from then
        t.call_ended("a", at(70));
        assert_eq!(t.next_expiry(), Some(at(80)));
        t.purge_expired(at(80));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_deleted_busy_entry_does_not_count_against_its_successor() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let a = SessionId::from("a");
        let mut t = AffinityTable::new(Duration::from_millis(10), 8);
        t.bind(&a, WorkerId(1), at(0)); // old call
        assert!(t.remove("a"));
        t.bind(&a, WorkerId(2), at(1)); // new call, new entry
        t.call_ended("a", at(2)); // the old call's end settles the deleted entry's count
        t.purge_expired(at(100));
        assert_eq!(t.peek("a"), Some(WorkerId(2)), "the new call still runs");
        t.call_lost("a");
        t.purge_expired(at(200));
        assert_eq!(t.peek("a"), None);
    }
}
