//! Store options.

use plies_mountopts::{KERNEL_MAX_STACK, MAX_DEPTH};

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// The most lower layers a layer may have: [`MAX_DEPTH`] (128, Docker's format)
    /// by default, up to [`KERNEL_MAX_STACK`] (500) for stores mounted through the
    /// new mount API. It bounds both new layers and the `lower` files read.
    pub max_depth: usize,
    /// fsync files and directories so a layer survives a power cut once `create`
    /// returns (default `true`). Build caches may turn it off for speed; a crash
    /// of the process alone never loses a layer either way.
    pub durable: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_depth: MAX_DEPTH,
            durable: true,
        }
    }
}

impl StoreOptions {
    pub(crate) fn check(&self) -> crate::Result<()> {
        if self.max_depth == 0 || self.max_depth > KERNEL_MAX_STACK {
            return Err(crate::Error::InvalidOptions {
                max_depth: self.max_depth,
                limit: KERNEL_MAX_STACK,
            });
        }
        Ok(())
    }
}
