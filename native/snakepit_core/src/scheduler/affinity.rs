//! Session → worker affinity table with idle TTL and a bound on its size.
//!
//! Entries live in a slab threaded on a doubly-linked list in least-recently-used order (head =
//! least recently used). Touching an entry moves it to the tail in O(1), so with a non-decreasing
//! clock the head is also the entry that expires first: expiry and eviction pop from the head.
//!
//! An entry may name a worker that is gone (a *tombstone*): strict sessions then keep failing with
//! `SessionWorkerUnavailable` instead of silently moving; the entry disappears through
//! `delete_session`, the TTL or eviction.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::types::{SessionId, WorkerId};

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Node {
    session: Option<SessionId>,
    worker: WorkerId,
    last_used: Instant,
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

    /// The worker of `session`, touching the entry. An expired entry is removed and `None` returned.
    #[inline]
    pub fn get(&mut self, session: &str, now: Instant) -> Option<WorkerId> {
        let idx = *self.map.get(session)?;
        if self.expired(idx, now) {
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

    /// Marks `session` as used at `now` if it has an entry (an expired entry is removed instead).
    #[inline]
    pub fn touch(&mut self, session: &str, now: Instant) {
        if let Some(&idx) = self.map.get(session) {
            if self.expired(idx, now) {
                self.remove_idx(idx);
            } else {
                self.touch_idx(idx, now);
            }
        }
    }

    /// Records `session → worker` at `now` (evicting the least recently used entry when full).
    pub fn set(&mut self, session: &SessionId, worker: WorkerId, now: Instant) {
        if let Some(&idx) = self.map.get(session.as_str()) {
            self.nodes[idx as usize].worker = worker;
            self.touch_idx(idx, now);
            return;
        }
        while self.map.len() >= self.max && self.head != NIL {
            self.remove_idx(self.head);
        }
        let node = Node {
            session: Some(session.clone()),
            worker,
            last_used: now,
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
    }

    /// Forgets `session`; `true` if it had an entry.
    pub fn remove(&mut self, session: &str) -> bool {
        match self.map.get(session) {
            Some(&idx) => {
                self.remove_idx(idx);
                true
            }
            None => false,
        }
    }

    /// Removes every entry idle for at least the TTL.
    pub fn purge_expired(&mut self, now: Instant) {
        while self.head != NIL && self.expired(self.head, now) {
            self.remove_idx(self.head);
        }
    }

    /// When the least recently used entry expires (coarse: assumes a non-decreasing clock).
    pub fn next_expiry(&self) -> Option<Instant> {
        if self.head == NIL {
            return None;
        }
        self.nodes[self.head as usize]
            .last_used
            .checked_add(self.ttl)
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
}
