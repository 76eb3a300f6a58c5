//! The per-request home of a [`ReplyTarget`].
//!
//! Whoever takes the target out of the slot sends the final outcome, which makes replies
//! exactly-once no matter which path (RPC end, deadline, rejection, worker loss, panic
//! supervisor) gets there first. Sending happens while the slot is locked, so once
//! [`Slot::discard`] returns (a cancellation), no message for the request can still be on its way.

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::types::{Chunk, Outcome, ReplyTarget};

/// A target that has not replied yet (or `None` once it has, or was cancelled).
pub(crate) struct Slot<T>(Mutex<Option<T>>);

impl<T: ReplyTarget> Slot<T> {
    pub(crate) fn new(target: T) -> Self {
        Slot(Mutex::new(Some(target)))
    }

    /// A panicking target must not wedge the request: recover the guard.
    fn lock(&self) -> MutexGuard<'_, Option<T>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the final outcome if nobody did yet. Returns whether this call sent it.
    pub(crate) fn reply(&self, outcome: Outcome) -> bool {
        let mut guard = self.lock();
        match guard.take() {
            Some(target) => {
                target.reply(outcome);
                true
            }
            None => false,
        }
    }

    /// Forwards a chunk; `false` when the target is gone (replied, cancelled or dead receiver).
    pub(crate) fn chunk(&self, chunk: Chunk) -> bool {
        match self.lock().as_mut() {
            Some(target) => target.chunk(chunk),
            None => false,
        }
    }

    /// `true` while nobody replied and the caller did not cancel.
    pub(crate) fn is_open(&self) -> bool {
        self.lock().is_some()
    }

    /// Drops the target without replying (the caller cancelled).
    pub(crate) fn discard(&self) {
        let target = self.lock().take();
        drop(target);
    }
}
