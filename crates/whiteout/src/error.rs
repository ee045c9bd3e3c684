//! The crate's error type.

use std::ffi::OsString;
use std::path::PathBuf;

/// What went wrong, and on which name or entry.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name is not a valid path component or not a valid whiteout name.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: OsString,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The kernel refused to create an overlay whiteout (a 0/0 character device):
    /// EPERM where creating one needs `CAP_MKNOD` (kernels before 5.8, for
    /// example in a user namespace), EACCES without write access to the directory.
    #[error(
        "cannot create overlay whiteout {name:?}: without the right to create 0/0 \
         devices the overlay format (a `userxattr` overlay too) is out of reach, so \
         store this layer in the aufs format (`.wh.` files) instead; mknod refused"
    )]
    MknodRefused {
        /// The name of the whiteout that could not be created.
        name: OsString,
        /// The error from `mknodat`.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{op} {name:?}")]
    Io {
        /// The operation, such as `mknodat` or `fsetxattr trusted.overlay.opaque`.
        op: &'static str,
        /// The name or path (relative to the layer) it was applied to.
        name: OsString,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An entry of a layer directory cannot be converted as it is.
    #[error("layer entry {path:?}: {reason}")]
    InvalidEntry {
        /// The entry's path relative to the layer directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An overlay layer uses `redirect` or `metacopy`, which only overlayfs can
    /// express: neither a layer tar nor aufs can represent it.
    #[error("layer entry {path:?} has overlay xattr {key}: not expressible outside overlayfs")]
    Inexpressible {
        /// The entry's path relative to the layer directory.
        path: PathBuf,
        /// The xattr found, such as `trusted.overlay.redirect`.
        key: &'static str,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        name: impl Into<OsString>,
        errno: rustix::io::Errno,
    ) -> Self {
        Error::Io {
            op,
            name: name.into(),
            source: errno.into(),
        }
    }
}
