//! The errors of this crate.

use std::io;
use std::path::PathBuf;

use crate::id::IdError;
use crate::link::{LinkError, LinkTargetError};
use crate::lower::LowerError;

/// Everything that can go wrong in a layer store.
///
/// Each variant names the layer, file or entry involved; I/O failures carry the
/// `io::Error` (and so the errno) as their source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The id breaks the id rules; nothing was written.
    #[error("invalid layer id {id:?}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Which rule it breaks.
        #[source]
        reason: IdError,
    },
    /// The store options are out of range.
    #[error("invalid store options: max_depth {max_depth} is not within 1..={limit}")]
    InvalidOptions {
        /// The requested depth.
        max_depth: usize,
        /// The largest depth allowed.
        limit: usize,
    },
    /// A layer with this id already exists.
    #[error("layer {id} already exists")]
    Exists {
        /// The layer id.
        id: String,
    },
    /// Something occupies the place of a new layer (for example an aufs `diff/<id>`
    /// without its `layers/<id>` file); it is left alone.
    #[error("cannot create layer {id}: {path} is already there")]
    Occupied {
        /// The layer id.
        id: String,
        /// What is in the way.
        path: PathBuf,
    },
    /// The store was opened read-only ([`StoreOptions::read_only`](crate::StoreOptions::read_only))
    /// and the call would write or lock.
    #[error("{path}: opened read-only")]
    ReadOnly {
        /// The store's directory (or its lock directory).
        path: PathBuf,
    },
    /// The layer does not exist.
    #[error("layer {id} does not exist")]
    NotFound {
        /// The layer id.
        id: String,
    },
    /// The parent named for a new layer does not exist.
    #[error("cannot create layer {id}: parent {parent} does not exist")]
    ParentNotFound {
        /// The new layer.
        id: String,
        /// The missing parent.
        parent: String,
    },
    /// The new layer would be deeper than the store allows.
    #[error("cannot create layer {id}: {depth} lower layers exceed the maximum of {max}")]
    TooDeep {
        /// The new layer.
        id: String,
        /// How many lower layers it would have.
        depth: usize,
        /// The store's maximum.
        max: usize,
    },
    /// A layer asked to move onto a parent already sits on another one.
    #[error("layer {id} already sits on a parent other than {parent}")]
    Rebased {
        /// The layer.
        id: String,
        /// The parent asked for.
        parent: String,
    },
    /// A system call on a store path failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A layer's `link` file does not hold a valid link id.
    #[error("layer {layer}: bad link file {path}")]
    BadLinkFile {
        /// The layer.
        layer: String,
        /// The `link` file.
        path: PathBuf,
        /// What is wrong with its contents.
        #[source]
        source: LinkError,
    },
    /// A layer's `lower` file is malformed.
    #[error("layer {layer}: bad lower file {path}")]
    BadLower {
        /// The layer.
        layer: String,
        /// The `lower` file.
        path: PathBuf,
        /// What is wrong with its contents.
        #[source]
        source: LowerError,
    },
    /// A `l/<linkid>` symlink does not point at `../<id>/diff`.
    #[error("link {path} points at {target:?}, not at a layer's diff")]
    BadLinkTarget {
        /// The symlink.
        path: PathBuf,
        /// Where it points (lossy).
        target: String,
        /// What is wrong with the target.
        #[source]
        source: LinkTargetError,
    },
    /// A layer refers to a link that is not in `l/`.
    #[error("layer {layer}: link {link} named in {path} does not exist")]
    MissingLink {
        /// The layer whose file names the link.
        layer: String,
        /// The file naming it.
        path: PathBuf,
        /// The missing link id.
        link: String,
    },
    /// A layer's ancestry loops back onto itself.
    #[error("layer {layer}: its ancestry contains a cycle through {through}")]
    Cycle {
        /// The layer.
        layer: String,
        /// The layer found twice.
        through: String,
    },
    /// An aufs `layers/<id>` file is malformed.
    #[error("layer {layer}: bad layers file {path}, line {line}: {reason}")]
    BadLayersFile {
        /// The layer.
        layer: String,
        /// The `layers/<id>` file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Another thread or process holds the layer's lock (see
    /// [`LayerLocks`](crate::LayerLocks)) and did not let it go in time.
    #[error("layer {id} is busy{}", holder.map_or_else(String::new, |p| format!(" (held by process {p})")))]
    Busy {
        /// The layer.
        id: String,
        /// The pid of the process holding it, when it could be read.
        holder: Option<u32>,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// No unused link id was found after many draws.
    #[error("no free link id in {path} after {attempts} attempts")]
    LinkIdsExhausted {
        /// The `l/` directory.
        path: PathBuf,
        /// How many ids were tried.
        attempts: usize,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error::Io`] from a rustix or std error.
pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>, e: impl Into<io::Error>) -> Error {
    Error::Io {
        op,
        path: path.into(),
        source: e.into(),
    }
}
