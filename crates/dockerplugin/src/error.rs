//! The one error type of this crate.

use std::path::PathBuf;

/// What went wrong serving the plugin protocol, and on which socket or layer.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket's directory could not be made, or a stale socket file removed.
    #[error("cannot prepare the plugin socket {path:?}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process is serving on the socket already.
    #[error("plugin socket {path:?} is in use by another server")]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Binding or listening on the socket failed.
    #[error("cannot listen on {path:?}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not be started.
    #[error("cannot start the server runtime")]
    Runtime {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Docker's `Init` named options or id maps the driver cannot take, or the
    /// driver failed to open under `home`.
    #[error("cannot open the {driver} driver under {home:?}")]
    Init {
        /// The driver asked for.
        driver: &'static str,
        /// Docker's `Home`.
        home: PathBuf,
        /// The driver's error.
        #[source]
        source: Box<plies_drivers::Error>,
    },
    /// Docker's `UIDMaps` or `GIDMaps` hold a range that is not one of ids
    /// (negative, empty, or beyond 32 bits).
    #[error("bad {field} range {range} for {home:?}: {reason}")]
    BadIdMap {
        /// `UIDMaps` or `GIDMaps`.
        field: &'static str,
        /// The range as Docker sent it: `container:host:size`.
        range: String,
        /// Docker's `Home`.
        home: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A request before `Init` opened a driver.
    #[error("{endpoint} called before GraphDriver.Init")]
    NotInitialized {
        /// The endpoint called.
        endpoint: String,
    },
    /// A request body that is not the JSON the endpoint takes.
    #[error("bad request to {endpoint}: {reason}")]
    BadRequest {
        /// The endpoint called.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The driver refused or failed the operation on a layer, or on the whole
    /// store (`Cleanup`).
    #[error("{endpoint}{}", id.as_ref().map_or_else(String::new, |id| format!(" of layer {id:?}")))]
    Driver {
        /// The endpoint called.
        endpoint: String,
        /// The layer, `None` for an operation on the whole store.
        id: Option<String>,
        /// The driver's error.
        #[source]
        source: Box<plies_drivers::Error>,
    },
    /// Putting the mounted layers at shutdown failed.
    #[error("cannot unmount the layers of the {driver} driver at shutdown")]
    Cleanup {
        /// The driver's name.
        driver: &'static str,
        /// The driver's error.
        #[source]
        source: Box<plies_drivers::Error>,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
