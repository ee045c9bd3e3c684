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

/// The lock of the layer a mount found under the driver's home belongs to;
/// `None` when the name is no layer id (a mount outside any layer's directory,
/// detached without a lock).
pub(crate) fn lock_mount_owner<'a>(
    locks: &'a LayerLocks,
    id: &str,
) -> Result<Option<LayerGuard<'a>>> {
    if plies_layerstore::validate_id(id).is_err() {
        return Ok(None);
    }
    lock(locks, &[id]).map(Some)
}
