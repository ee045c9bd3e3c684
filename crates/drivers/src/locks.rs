//! Layer locks: the store's [`LayerLocks`](plies_layerstore::LayerLocks), which
//! every process opening the same store shares. A driver holds a layer's lock
//! across its own work on that layer (create, apply, get, put, remove), so a
//! sweeper in another process never takes that work for a dead one's leftovers.

use plies_layerstore::{LayerGuard, LayerLocks};

use crate::error::{Error, Result};

/// Takes the locks of `ids`, as [`LayerLocks::lock`] does.
pub(crate) fn lock<'a>(locks: &'a LayerLocks, ids: &[&str]) -> Result<LayerGuard<'a>> {
    locks
        .lock(ids)
        .map_err(|e| Error::store(ids.first().copied().unwrap_or(""), e))
}
