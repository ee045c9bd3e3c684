//! A tree being read for a list of changes: its entries by fd, their
//! metadata and xattrs, and errors naming the full path.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use plies_whiteout::XattrNamespace;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::ChangesError;
use crate::xattrs::{XattrSource, proc_path};

/// A tree being read: its root path (for error messages only).
#[derive(Clone, Copy)]
pub(super) struct Tree<'a> {
    pub(super) root: &'a Path,
}

impl Tree<'_> {
    pub(super) fn full(&self, rel: &[u8]) -> PathBuf {
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        self.root.join(OsStr::from_bytes(rel))
    }

    pub(super) fn err(&self, op: &'static str, rel: &[u8], e: Errno) -> ChangesError {
        ChangesError::Io {
            op,
            path: self.full(rel),
            source: e.into(),
        }
    }

    pub(super) fn open_root(&self) -> Result<OwnedFd, ChangesError> {
        rustix::fs::open(
            self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err("open", b"", e))
    }

    pub(super) fn open_dir(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
    ) -> Result<OwnedFd, ChangesError> {
        rustix::fs::openat(
            dir,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err("openat", rel, e))
    }

    /// `lstat` of `name` in `dir`; `None` when it does not exist.
    pub(super) fn stat(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
    ) -> Result<Option<Stat>, ChangesError> {
        match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(e) => Err(self.err("fstatat", rel, e)),
        }
    }

    /// The names in `dir`, sorted by their bytes.
    pub(super) fn names(
        &self,
        dir: BorrowedFd<'_>,
        rel: &[u8],
    ) -> Result<Vec<Vec<u8>>, ChangesError> {
        let reader = rustix::fs::Dir::read_from(dir).map_err(|e| self.err("opendir", rel, e))?;
        let mut names = Vec::new();
        for entry in reader {
            let entry = entry.map_err(|e| self.err("getdents", rel, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// The xattrs of `name` in `dir` (sorted, storage-private overlay ones left
    /// out), listed by path through `/proc/self/fd/<dir>/<name>`: no open, and a
    /// symlink at the end is not followed. Where `/proc` is not mounted, through
    /// the full path.
    pub(super) fn xattrs(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
    ) -> Result<Xattrs, ChangesError> {
        let path = proc_path(dir, OsStr::from_bytes(name));
        match read_xattrs(XattrSource::Path(&path)) {
            Err(Errno::NOENT | Errno::NOTDIR) if !Path::new("/proc/self/fd").exists() => {
                read_xattrs(XattrSource::Path(self.full(rel).as_os_str()))
            }
            result => result,
        }
        .map_err(|e| self.err("llistxattr", rel, e))
    }

    pub(super) fn readlink(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
    ) -> Result<Vec<u8>, ChangesError> {
        rustix::fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new())
            .map(|target| target.into_bytes())
            .map_err(|e| self.err("readlinkat", rel, e))
    }
}

pub(super) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn is_private_xattr(key: &[u8]) -> bool {
    [XattrNamespace::Trusted, XattrNamespace::User]
        .iter()
        .any(|ns| ns.is_overlay_xattr(key))
}

fn read_xattrs(source: XattrSource<'_>) -> Result<Xattrs, Errno> {
    loop {
        let size = match source.list_len() {
            Ok(size) => size,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut list = vec![0u8; size];
        let len = match source.list(&mut list) {
            Ok(len) => len,
            // Grew since the size query: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for key in list[..len].split(|b| *b == 0).filter(|k| !k.is_empty()) {
            if is_private_xattr(key) {
                continue;
            }
            let key_str = OsStr::from_bytes(key);
            let value = loop {
                let size = match source.value_len(key_str) {
                    Ok(size) => size,
                    Err(Errno::NODATA) => break None,
                    Err(e) => return Err(e),
                };
                let mut value = vec![0u8; size];
                match source.value(key_str, &mut value) {
                    Ok(len) => {
                        value.truncate(len);
                        break Some(value);
                    }
                    Err(Errno::RANGE) => continue,
                    Err(Errno::NODATA) => break None,
                    Err(e) => return Err(e),
                }
            };
            if let Some(value) = value {
                out.push((key.to_vec(), value));
            }
        }
        out.sort();
        return Ok(out);
    }
}

pub(super) fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

pub(super) fn is_dir(stat: &Stat) -> bool {
    file_type(stat) == FileType::Directory
}

pub(super) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
    path.extend_from_slice(parent);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
pub(super) fn mtime(stat: &Stat) -> (i64, i64) {
    (stat.st_mtime as i64, stat.st_mtime_nsec as i64)
}

/// The xattrs of an open directory.
pub(super) fn fd_xattrs(
    tree: &Tree<'_>,
    dir: &OwnedFd,
    path: &[u8],
) -> Result<Xattrs, ChangesError> {
    read_xattrs(XattrSource::Fd(dir.as_fd())).map_err(|e| tree.err("flistxattr", path, e))
}
