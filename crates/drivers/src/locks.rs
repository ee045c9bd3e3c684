//! Per-layer locks: operations on one layer wait for each other, operations on
//! different layers never do. The map's own mutex is held only to look a name up,
//! never across a mount or any I/O.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// A set of named locks.
#[derive(Debug, Default)]
pub(crate) struct LayerLocks {
    held: Mutex<HashSet<String>>,
    released: Condvar,
}

/// Holds the lock of one layer until dropped.
#[derive(Debug)]
pub(crate) struct LayerGuard<'a> {
    locks: &'a LayerLocks,
    id: String,
}

impl LayerLocks {
    fn held(&self) -> MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for, then takes, the lock of `id`.
    pub(crate) fn lock(&self, id: &str) -> LayerGuard<'_> {
        let mut held = self.held();
        while held.contains(id) {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(id.to_owned());
        LayerGuard {
            locks: self,
            id: id.to_owned(),
        }
    }
}

impl Drop for LayerGuard<'_> {
    fn drop(&mut self) {
        self.locks.held().remove(&self.id);
        self.locks.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_holder_per_layer() {
        let locks = Arc::new(LayerLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (locks, inside) = (locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _g = locks.lock("a");
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        let _other = locks.lock("b");
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
