//! Per-id locks: operations on different ids run in parallel, the same id waits.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, PoisonError};

/// The set of ids some operation is working on.
#[derive(Debug, Default)]
pub(crate) struct IdLocks {
    busy: Mutex<HashSet<String>>,
    freed: Condvar,
}

/// Holds ids until dropped.
pub(crate) struct IdGuard<'a> {
    locks: &'a IdLocks,
    ids: Vec<String>,
}

impl IdLocks {
    /// Waits until none of `ids` is busy, then takes them all at once (so two
    /// callers taking overlapping sets can never deadlock).
    pub(crate) fn lock(&self, ids: &[&str]) -> IdGuard<'_> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        while ids.iter().any(|id| busy.contains(*id)) {
            busy = self
                .freed
                .wait(busy)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let mut owned = Vec::with_capacity(ids.len());
        for id in ids {
            if busy.insert((*id).to_owned()) {
                owned.push((*id).to_owned());
            }
        }
        IdGuard {
            locks: self,
            ids: owned,
        }
    }
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self
            .locks
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in &self.ids {
            busy.remove(id);
        }
        drop(busy);
        self.locks.freed.notify_all();
    }
}
