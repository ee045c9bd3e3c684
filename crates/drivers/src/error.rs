//! The one error type of this crate.

use std::path::PathBuf;

/// What went wrong in a driver, and on which layer or path.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver cannot run on this kernel (Docker's `ErrNotSupported`).
    #[error("{driver} is not supported: {reason}")]
    NotSupported {
        /// The driver asked for.
        driver: &'static str,
        /// The probe's reason.
        reason: String,
    },
    /// The filesystem under the root cannot back this driver (Docker's `ErrIncompatibleFS`).
    #[error("{driver} is not supported over the backing filesystem of {root:?}: {reason}")]
    IncompatibleFs {
        /// The driver asked for.
        driver: &'static str,
        /// The driver's root.
        root: PathBuf,
        /// The probe's reason.
        reason: String,
    },
    /// The kernel has the driver but lacks a feature it needs (Docker's `ErrPrerequisites`).
    #[error("{driver} prerequisites are missing: {reason}")]
    PrerequisitesMissing {
        /// The driver asked for.
        driver: &'static str,
        /// The probe's reason.
        reason: String,
    },
    /// An option key no driver knows.
    #[error("unknown option {key:?}")]
    UnknownOption {
        /// The key as given.
        key: String,
    },
    /// An option with a value the driver cannot take.
    #[error("option {key:?} has a bad value {value:?}: {reason}")]
    InvalidOption {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// Id maps that give the container's root (id 0) no host id.
    #[error("the {kind} map has no host id for the container's root (0)")]
    UnmappedRoot {
        /// `"uid"` or `"gid"`.
        kind: &'static str,
    },
    /// A driver name that is not `auto`, `overlay2`, `aufs` or `vfs`.
    #[error("unknown driver {name:?} (expected auto, overlay2, aufs or vfs)")]
    UnknownDriver {
        /// The name as given.
        name: String,
    },
    /// `auto` found data of several drivers under the root and will not guess.
    #[error("{root:?} holds data of several drivers ({drivers:?}): choose one explicitly")]
    MultiplePriorDrivers {
        /// The graph root.
        root: PathBuf,
        /// The drivers with data, in priority order.
        drivers: Vec<&'static str>,
    },
    /// The layer does not exist.
    #[error("layer {id:?} does not exist")]
    NoSuchLayer {
        /// The layer.
        id: String,
    },
    /// A layer with this id exists already.
    #[error("layer {id:?} already exists")]
    LayerExists {
        /// The layer.
        id: String,
    },
    /// An id that cannot name a layer (empty, `.`/`..`, a `/`, too long, …).
    #[error("invalid layer id {id:?}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Why it is refused.
        #[source]
        reason: plies_layerstore::IdError,
    },
    /// The driver was opened read-only and the call would write.
    #[error("{driver} under {root:?} is opened read-only: {what} would write")]
    ReadOnly {
        /// The driver.
        driver: &'static str,
        /// Its root.
        root: std::path::PathBuf,
        /// What was refused.
        what: &'static str,
    },
    /// `put` of a layer that no `get` holds.
    #[error("layer {id:?} is not mounted")]
    NotMounted {
        /// The layer.
        id: String,
    },
    /// The layer store refused or failed.
    #[error("layer store{}", id.as_ref().map_or_else(String::new, |id| format!(", layer {id:?}")))]
    Store {
        /// The layer the operation was on (`None` for store-wide operations).
        id: Option<String>,
        /// The store's error.
        #[source]
        source: plies_layerstore::Error,
    },
    /// Planning or making a mount failed.
    #[error("mounting layer {id:?}")]
    Mount {
        /// The layer.
        id: String,
        /// The mount planner's or the kernel's error.
        #[source]
        source: plies_mountopts::Error,
    },
    /// Unmounting failed.
    #[error("unmounting {path:?} of layer {id:?}")]
    Unmount {
        /// The layer.
        id: String,
        /// The mount point.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A mounted layer stayed busy through every retry of its unmount.
    #[error("layer {id:?} is still busy at {path:?} after {attempts} unmount attempts")]
    Busy {
        /// The layer.
        id: String,
        /// The mount point.
        path: PathBuf,
        /// How often the unmount was tried.
        attempts: u32,
    },
    /// Applying or exporting a layer tar failed.
    #[error("layer {id:?}")]
    Archive {
        /// The layer.
        id: String,
        /// The archive's error, naming the entry.
        #[source]
        source: plies_archive::Error,
    },
    /// Listing a layer's changes failed.
    #[error("changes of layer {id:?}")]
    Changes {
        /// The layer.
        id: String,
        /// The comparison's error, naming the path.
        #[source]
        source: plies_archive::changes::ChangesError,
    },
    /// Measuring a layer failed.
    #[error("size of layer {id:?}")]
    Size {
        /// The layer.
        id: String,
        /// The walk's error, naming the path.
        #[source]
        source: plies_archive::size::SizeError,
    },
    /// Writing or checking whiteouts failed.
    #[error("whiteouts of layer {id:?}")]
    Whiteout {
        /// The layer.
        id: String,
        /// The whiteout crate's error.
        #[source]
        source: plies_whiteout::Error,
    },
    /// Probing the kernel failed (not a missing feature: the probe itself).
    #[error("probing {root:?}")]
    Probe {
        /// The directory probed.
        root: PathBuf,
        /// The probe's error.
        #[source]
        source: plies_kprobe::Error,
    },
    /// A storage option the driver cannot honour here.
    #[error("storage option {key:?} is not supported by {driver}: {reason}")]
    StorageOptUnsupported {
        /// The driver.
        driver: &'static str,
        /// The storage option.
        key: String,
        /// Why.
        reason: String,
    },
    /// A system call failed on a path.
    #[error("{op} {path:?}")]
    Io {
        /// The operation, such as `mkdir` or `copy_file_range`.
        op: &'static str,
        /// The full path it failed on.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Setting a layer's size limit (project quota) failed.
    #[error("size limit of layer {id:?}")]
    Quota {
        /// The layer.
        id: String,
        /// The quota control's error.
        #[source]
        source: plies_kprobe::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// The store's error on layer `id`; the store's own "not found", "exists"
    /// and "invalid id" become the driver's.
    pub(crate) fn store(id: &str, source: plies_layerstore::Error) -> Self {
        match source {
            plies_layerstore::Error::NotFound { .. } => Error::NoSuchLayer { id: id.to_owned() },
            plies_layerstore::Error::Exists { .. } => Error::LayerExists { id: id.to_owned() },
            plies_layerstore::Error::InvalidId { id, reason } => Error::InvalidId { id, reason },
            plies_layerstore::Error::ParentNotFound { parent, .. } => {
                Error::NoSuchLayer { id: parent }
            }
            source => Error::Store {
                id: Some(id.to_owned()),
                source,
            },
        }
    }

    /// The store's error in an operation on the whole store (open, list, fsck).
    pub(crate) fn store_wide(source: plies_layerstore::Error) -> Self {
        Error::Store { id: None, source }
    }
}
