//! How many `get`s hold each layer in this process, and whether the first one
//! mounted it: one type for every driver that mounts.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The `get`s held per layer.
#[derive(Debug, Default)]
pub(crate) struct Refs(Mutex<HashMap<String, Held>>);

/// One layer's holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    count: usize,
    mounted: bool,
}

/// What a [`Refs::release`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Nothing held the layer.
    NotHeld,
    /// Other `get`s still hold it.
    StillHeld,
    /// That was the last hold; `mounted` says whether there is a mount to undo.
    Last {
        /// Whether the first `get` mounted the layer.
        mounted: bool,
    },
}

impl Refs {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many `get`s hold `id` (0 when none).
    pub(crate) fn count(&self, id: &str) -> usize {
        self.map().get(id).map_or(0, |h| h.count)
    }

    /// Whether the holds of `id` come with a mount.
    pub(crate) fn is_mounted(&self, id: &str) -> bool {
        self.map().get(id).is_some_and(|h| h.mounted)
    }

    /// One more hold on `id` if it is held already; whether it is mounted then.
    pub(crate) fn hold_again(&self, id: &str) -> Option<bool> {
        let mut map = self.map();
        let held = map.get_mut(id)?;
        held.count += 1;
        Some(held.mounted)
    }

    /// `count` holds on `id`, mounted or not (replacing any).
    pub(crate) fn hold(&self, id: &str, count: usize, mounted: bool) {
        self.map().insert(id.to_owned(), Held { count, mounted });
    }

    /// Releases one hold on `id`.
    pub(crate) fn release(&self, id: &str) -> Released {
        let mut map = self.map();
        let Some(held) = map.get_mut(id) else {
            return Released::NotHeld;
        };
        held.count -= 1;
        if held.count > 0 {
            return Released::StillHeld;
        }
        let mounted = held.mounted;
        map.remove(id);
        Released::Last { mounted }
    }

    /// Forgets every hold on `id`; whether there were any.
    pub(crate) fn forget(&self, id: &str) -> bool {
        self.map().remove(id).is_some()
    }

    /// The layers whose holds come with a mount.
    pub(crate) fn mounted(&self) -> Vec<String> {
        self.map()
            .iter()
            .filter(|(_, h)| h.mounted)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Forgets every hold on every layer.
    pub(crate) fn clear(&self) {
        self.map().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_release_tells_whether_to_unmount() {
        let refs = Refs::default();
        assert_eq!(refs.release("a"), Released::NotHeld);
        refs.hold("a", 1, true);
        assert_eq!(refs.hold_again("a"), Some(true));
        assert_eq!(refs.count("a"), 2);
        assert_eq!(refs.release("a"), Released::StillHeld);
        assert_eq!(refs.release("a"), Released::Last { mounted: true });
        assert_eq!(refs.count("a"), 0);
        assert_eq!(refs.hold_again("a"), None);
    }
}
