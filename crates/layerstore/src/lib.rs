#![doc = include_str!("../README.md")]

mod aufs;
mod disk;
mod error;
mod fsck;
mod id;
mod link;
mod locks;
mod lower;
mod options;
mod overlay2;
mod rebase;

pub use aufs::{AufsPaths, AufsStore};
pub use error::{Error, Result};
pub use fsck::{Finding, FsckEntry, FsckReport, Repair, sweep_probe_scratch};
pub use id::{APPLYING_SUFFIX, CREATING_SUFFIX, IdError, MAX_ID_LEN, REMOVING_SUFFIX, validate_id};
pub use link::{LinkError, LinkId, LinkTargetError, parse_link_target};
pub use locks::{
    DEFAULT_LOCK_WAIT, LayerGuard, LayerLocks, PROBE_DIR, PROBE_LOCK, STORE_DIR, TRY_WAIT,
    flock_holder,
};
pub use lower::{LowerError, format_lower, parse_lower};
pub use options::StoreOptions;
pub use overlay2::{LayerPaths, Metadata, Overlay2Store};
