//! Store options.

use plies_mountopts::{KERNEL_MAX_STACK, MAX_DEPTH};

/// How a store is opened: start from [`StoreOptions::default`] and change what
/// differs (`opts.durable = false`, or the `with_*` methods).
#[non_exhaustive]
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
    /// Sweep, when the store is opened, the `-creating` and `-removing` entries
    /// a killed process left (default `true`). The sweep lists the whole store,
    /// a cost on every open that a short-lived caller opening the store per
    /// call need not pay: a leftover never hides or harms a layer, the next
    /// create or remove of the same id sweeps it first, and `fsck` with repair
    /// (or any open with the sweep on) sweeps them all.
    pub sweep_on_open: bool,
    /// Open an existing store to read it and write nothing (default `false`):
    /// no directory is made, nothing swept, no lock file made, and every call
    /// that would write or lock fails with
    /// [`Error::ReadOnly`](crate::Error::ReadOnly). For stores of another
    /// owner, such as a Docker data root.
    pub read_only: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_depth: MAX_DEPTH,
            durable: true,
            sweep_on_open: true,
            read_only: false,
        }
    }
}

impl StoreOptions {
    /// These options with [`StoreOptions::max_depth`] set.
    #[must_use]
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// These options with [`StoreOptions::durable`] set.
    #[must_use]
    pub fn with_durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// These options with [`StoreOptions::read_only`] set.
    #[must_use]
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// These options with [`StoreOptions::sweep_on_open`] set.
    #[must_use]
    pub fn with_sweep_on_open(mut self, sweep: bool) -> Self {
        self.sweep_on_open = sweep;
        self
    }

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
