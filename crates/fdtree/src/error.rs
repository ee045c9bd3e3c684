//! The crate's error type.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

/// Why a removal stopped, and where. Paths are relative to the directory handle
/// the removal was given, starting with the name it was asked to remove.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name is not one entry of a directory: empty, `.`, `..`, or holding a `/`.
    #[error("{name:?} is not a name in a directory")]
    InvalidName {
        /// The name given.
        name: OsString,
    },
    /// A directory below the top of the tree is on another filesystem: it is
    /// not entered, and the removal stops there.
    #[error("{} is a mount point", path.display())]
    MountPoint {
        /// The mount point.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("{op} {}", path.display())]
    Io {
        /// The call, such as `unlinkat` or `openat`.
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The error it returned.
        source: Errno,
    },
}

impl Error {
    /// The error number the failure comes to: `EINVAL` for an invalid name,
    /// `EBUSY` for a mount point, the call's own for a failed call.
    pub fn errno(&self) -> Errno {
        match self {
            Error::InvalidName { .. } => Errno::INVAL,
            Error::MountPoint { .. } => Errno::BUSY,
            Error::Io { source, .. } => *source,
        }
    }

    /// Where it failed, relative to the directory handle given.
    pub fn path(&self) -> &Path {
        match self {
            Error::InvalidName { name } => Path::new(name),
            Error::MountPoint { path } | Error::Io { path, .. } => path,
        }
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: Errno) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An [`io::Error`] of the kind [`Error::errno`] gives, with the error as its
/// message and source.
impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::new(io::Error::from(e.errno()).kind(), e)
    }
}
