//! The errors of this crate, and the gRPC status each one is sent as.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the snapshotter.
///
/// Each variant names the snapshot, layer or file involved; causes are kept as
/// sources. [`Error::status`] gives the gRPC code containerd maps back to its
/// own errors (`NotFound`, `AlreadyExists`, `FailedPrecondition`, `InvalidArgument`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No snapshot has this key.
    #[error("snapshot {key:?}: not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A snapshot of this key exists.
    #[error("snapshot {key:?}: already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The snapshot is not of the kind the call needs.
    #[error("snapshot {key:?}: {reason}")]
    FailedPrecondition {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request containerd should not have sent (empty key, bad filter, bad field path).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// The driver given is one the snapshotter cannot serve.
    #[error("driver {driver}: {reason}")]
    Unsupported {
        /// The driver's name.
        driver: String,
        /// Why.
        reason: String,
    },
    /// The layer database refused or failed (its error names the layer).
    #[error("layer records")]
    Records {
        /// The database's error.
        #[source]
        source: Box<plies_layerdb::Error>,
    },
    /// The overlay2 store refused or failed.
    #[error("overlay2 store, layer {layer}")]
    Store {
        /// The layer.
        layer: String,
        /// The store's error.
        #[source]
        source: Box<plies_layerstore::Error>,
    },
    /// Opening the layer database failed (its lock stayed busy, say).
    #[error("layer database under {root}")]
    Db {
        /// The graph root.
        root: PathBuf,
        /// The database's error.
        #[source]
        source: Box<plies_layerdb::Error>,
    },
    /// The driver failed.
    #[error("driver{}", layer.as_ref().map_or_else(String::new, |layer| format!(", layer {layer}")))]
    Driver {
        /// The layer, `None` for an operation on the whole store (opening it).
        layer: Option<String>,
        /// The driver's error.
        #[source]
        source: Box<plies_drivers::Error>,
    },
    /// The snapshot metadata file does not parse.
    #[error("snapshot metadata {path}")]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server on {socket}")]
    Transport {
        /// The socket.
        socket: PathBuf,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
    Error::Io {
        op,
        path: path.into(),
        source,
    }
}

impl From<plies_layerdb::Error> for Error {
    fn from(source: plies_layerdb::Error) -> Error {
        Error::Records {
            source: Box::new(source),
        }
    }
}

impl Error {
    /// The gRPC status containerd receives: the code it maps to its own error
    /// kinds, and the message with every cause.
    pub fn status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::Unsupported { .. } => Code::Unimplemented,
            Error::Db { source, .. } if matches!(**source, plies_layerdb::Error::Busy { .. }) => {
                Code::Unavailable
            }
            _ => Code::Internal,
        };
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            message.push_str(": ");
            message.push_str(&e.to_string());
            cause = e.source();
        }
        tonic::Status::new(code, message)
    }
}
