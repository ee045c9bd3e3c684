//! Reading and writing xattrs of a node that is open, or that is reached by
//! name in an open directory without being opened (symlinks, devices).

use std::ffi::{OsStr, OsString};
use std::os::fd::AsRawFd;

use rustix::fd::BorrowedFd;
use rustix::io::Errno;

/// The path of `name` in `dir` through this process's fd of `dir`: there are
/// no fd-relative `l*xattr` calls, and the `l` calls do not follow `name`.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> OsString {
    let mut path = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
    path.push(name);
    path
}

/// Where xattrs are read from.
#[derive(Clone, Copy)]
pub(crate) enum XattrSource<'a> {
    /// An open file or directory.
    Fd(BorrowedFd<'a>),
    /// A path whose last component is not followed.
    Path(&'a OsStr),
}

impl XattrSource<'_> {
    pub(crate) fn list_len(self) -> Result<usize, Errno> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::flistxattr_query(fd),
            XattrSource::Path(path) => rustix::fs::llistxattr_query(path),
        }
    }

    pub(crate) fn list(self, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            XattrSource::Path(path) => rustix::fs::llistxattr(path, buf),
        }
    }

    pub(crate) fn value_len(self, key: &OsStr) -> Result<usize, Errno> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::fgetxattr_query(fd, key),
            XattrSource::Path(path) => rustix::fs::lgetxattr_query(path, key),
        }
    }

    pub(crate) fn value(self, key: &OsStr, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            XattrSource::Fd(fd) => rustix::fs::fgetxattr(fd, key, buf),
            XattrSource::Path(path) => rustix::fs::lgetxattr(path, key, buf),
        }
    }
}
