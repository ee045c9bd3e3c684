//! The store a command works on: the driver under `--root`, and the layer
//! records above it ([`plies_layerdb::LayerDb`], which also holds the lock
//! protocol a root shared by many processes follows).

use std::path::Path;

use anyhow::{Context, Result};
use plies_drivers::{DriverChoice, Options};
use plies_layerdb::LayerDb;

pub use plies_layerdb::{Access, Record};

use crate::args::{DriverArg, Global};

/// An opened store: the layer database, and the driver options in force.
pub struct Store {
    db: LayerDb,
    /// The driver options in force.
    pub options: Options,
}

impl std::ops::Deref for Store {
    type Target = LayerDb;

    fn deref(&self) -> &LayerDb {
        &self.db
    }
}

/// The driver choice `--driver` names.
pub fn choice(d: DriverArg) -> DriverChoice {
    match d {
        DriverArg::Auto => DriverChoice::Auto,
        DriverArg::Overlay2 => DriverChoice::Overlay2,
        DriverArg::Aufs => DriverChoice::Aufs,
        DriverArg::Vfs => DriverChoice::Vfs,
    }
}

impl Store {
    /// Opens the driver under the root and its records with `access`.
    pub fn open(g: &Global, access: Access) -> Result<Store> {
        // One process per command: leftovers of killed commands are swept by
        // the next create or remove of their id and by `fsck`, not by a listing
        // of the whole store on every open.
        let options = Options::parse(&g.storage_opt)
            .context("--storage-opt")?
            .with_sweep_on_open(false);
        Store::open_with(&g.root, choice(g.driver), options, access)
    }

    /// [`Store::open`] with explicit arguments.
    pub fn open_with(
        root: &Path,
        choice: DriverChoice,
        options: Options,
        access: Access,
    ) -> Result<Store> {
        let driver = plies_drivers::open(root, choice, &options)
            .with_context(|| format!("opening {} under {}", choice, root.display()))?;
        let db = LayerDb::open(root, driver, access)?;
        Ok(Store { db, options })
    }
}
