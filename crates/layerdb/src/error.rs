//! The errors of this crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in a layer database.
///
/// Each variant names the layer or file involved; causes are kept as sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An id the record directory cannot hold.
    #[error("invalid layer id {id:?}")]
    InvalidId {
        /// The id as given.
        id: String,
    },
    /// No complete layer has this id (or id prefix).
    #[error("layer {id}: no such layer")]
    NoSuchLayer {
        /// The id as given.
        id: String,
    },
    /// The layer's record says an import or create did not finish.
    #[error("layer {id}: incomplete (an import or apply was interrupted)")]
    Incomplete {
        /// The layer.
        id: String,
    },
    /// An id prefix that names several layers.
    #[error("layer {id}: the prefix names {count} layers")]
    Ambiguous {
        /// The prefix.
        id: String,
        /// How many layers it names.
        count: usize,
    },
    /// A layer of this id exists (or is being made).
    #[error("layer {id}: already exists")]
    Exists {
        /// The layer.
        id: String,
    },
    /// A layer that other layers sit on.
    #[error("layer {id}: it is the parent of {children}")]
    HasChildren {
        /// The layer.
        id: String,
        /// Its children, comma-separated.
        children: String,
    },
    /// A record file that does not parse.
    #[error("layer record {path}")]
    BadRecord {
        /// The record file.
        path: PathBuf,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// Another process holds the database's lock and did not let it go in time.
    #[error("store busy: another process{} has held {path} for {} s", holder.map_or_else(String::new, |p| format!(" (pid {p})")), waited.as_secs())]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, from `/proc/locks`, when it could be read.
        holder: Option<u32>,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The driver refused or failed.
    #[error("layer {id}")]
    Driver {
        /// The layer.
        id: String,
        /// The driver's error.
        #[source]
        source: Box<plies_drivers::Error>,
    },
    /// A file of Docker's databases that is not as Docker writes it.
    #[error("{path}: {reason}")]
    BadDockerFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer's tar could not be reproduced from its tar-split.
    #[error("layer {chain_id}: reproducing its tar from tar-split")]
    TarSplit {
        /// The layer's chain id.
        chain_id: String,
        /// What failed.
        #[source]
        source: plies_tarsplit::Error,
    },
    /// A layer's reproduced tar does not have the layer's diff id.
    #[error("layer {chain_id}: the reproduced tar is {found}, not its diff id {expected}")]
    LayerDigest {
        /// The layer's chain id.
        chain_id: String,
        /// Its diff id.
        expected: String,
        /// The digest of what was reproduced.
        found: String,
    },
    /// No image of Docker's image store has this id, id prefix or name.
    #[error("image {name}: no such image")]
    NoSuchImage {
        /// The name as given.
        name: String,
    },
    /// The driver failed on the store as a whole (listing it, checking it).
    #[error("the {driver} store")]
    Store {
        /// The driver's name.
        driver: &'static str,
        /// The driver's error.
        #[source]
        source: Box<plies_drivers::Error>,
    },
    /// A system call on a database path failed.
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
}

impl Error {
    /// A driver's error on layer `id` (for the `fill` of
    /// [`LayerDb::make`](crate::LayerDb::make)).
    pub fn driver(id: &str, source: plies_drivers::Error) -> Error {
        Error::Driver {
            id: id.to_owned(),
            source: Box::new(source),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>, e: impl Into<io::Error>) -> Error {
    Error::Io {
        op,
        path: path.into(),
        source: e.into(),
    }
}

pub(crate) fn store_err(driver: &'static str) -> impl FnOnce(plies_drivers::Error) -> Error {
    move |source| Error::Store {
        driver,
        source: Box::new(source),
    }
}

pub(crate) fn driver_err(id: &str) -> impl FnOnce(plies_drivers::Error) -> Error + '_ {
    move |source| Error::driver(id, source)
}
