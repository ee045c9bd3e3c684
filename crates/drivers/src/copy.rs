//! Copying trees exactly: contents (reflinked where the filesystem can,
//! `copy_file_range` else), modes, owners, nanosecond times, xattrs, hard links,
//! device nodes and symlinks. Everything is done relative to directory handles
//! and no symlink is ever followed.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// Where a copy goes wrong: the source path is named in errors.
pub(crate) struct Copier {
    /// Source root path, for error messages.
    src_root: PathBuf,
    /// Hard links met so far: source (dev, ino) to the destination path below the
    /// destination root.
    links: HashMap<(u64, u64), CString>,
    /// Whether to try `FICLONE` (cleared after the first refusal).
    reflink: bool,
    /// Whether to try `copy_file_range` (cleared after the first refusal).
    range: bool,
    /// Whether xattrs in the overlay namespaces are copied too.
    pub(crate) overlay_xattrs: bool,
    /// Whether an entry may be hard linked to its source instead of copied
    /// (same filesystem only; used for scratch trees that are only read).
    pub(crate) link_sources: bool,
}

/// Opens a directory without following a symlink in its last component.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the directory at `path` (symlinks in its parents are followed: it is a
/// path the driver made).
pub(crate) fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", path, e))
}

/// The names in a directory, without `.` and `..`.
pub(crate) fn list(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<CString>> {
    let fd = rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn join(base: &[u8], name: &CStr) -> CString {
    let mut v = base.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name.to_bytes());
    CString::new(v).unwrap_or_default()
}

impl Copier {
    /// A copier of the tree at `src_root`.
    pub(crate) fn new(src_root: &Path) -> Self {
        Copier {
            src_root: src_root.to_path_buf(),
            links: HashMap::new(),
            reflink: true,
            range: true,
            overlay_xattrs: true,
            link_sources: false,
        }
    }

    fn err(&self, op: &'static str, rel: &[u8], e: impl Into<std::io::Error>) -> Error {
        Error::io(op, self.src_root.join(OsStr::from_bytes(rel)), e)
    }

    /// Copies the contents of the directory `src` into the existing directory
    /// `dst`, then gives `dst` the metadata of `src`.
    pub(crate) fn copy_dir_contents(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        dst_root: BorrowedFd<'_>,
    ) -> Result<()> {
        self.copy_children(src, dst, dst_root, b"")?;
        let st = rustix::fs::fstat(src).map_err(|e| self.err("stat", b"", e))?;
        self.copy_metadata(src, c".", dst, c".", &st, b"")
    }

    fn copy_children(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        dst_root: BorrowedFd<'_>,
        rel: &[u8],
    ) -> Result<()> {
        let names = list(src).map_err(|e| self.err("read directory", rel, e))?;
        for name in names {
            let child_rel = join(rel, &name);
            self.copy_entry(src, &name, dst, &name, dst_root, child_rel.as_bytes())?;
        }
        Ok(())
    }

    /// Copies the entry `name` of `src` to `dst_name` in `dst` (which must not
    /// exist), a directory with all it holds. `rel` is its path below both roots.
    pub(crate) fn copy_entry(
        &mut self,
        src: BorrowedFd<'_>,
        name: &CStr,
        dst: BorrowedFd<'_>,
        dst_name: &CStr,
        dst_root: BorrowedFd<'_>,
        rel: &[u8],
    ) -> Result<()> {
        let st = rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err("stat", rel, e))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::Directory {
            if self.link_sources
                && rustix::fs::linkat(src, name, dst, dst_name, AtFlags::empty()).is_ok()
            {
                return Ok(());
            }
            if st.st_nlink > 1 {
                let key = (st.st_dev, st.st_ino);
                if let Some(first) = self.links.get(&key) {
                    return rustix::fs::linkat(
                        dst_root,
                        first.as_c_str(),
                        dst,
                        dst_name,
                        AtFlags::empty(),
                    )
                    .map_err(|e| self.err("link", rel, e));
                }
                self.links
                    .insert(key, CString::new(rel).unwrap_or_default());
            }
        }
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        match kind {
            FileType::Directory => {
                rustix::fs::mkdirat(dst, dst_name, Mode::from_raw_mode(0o700))
                    .map_err(|e| self.err("mkdir", rel, e))?;
                let s = open_dir_at(src, name).map_err(|e| self.err("open", rel, e))?;
                let d = open_dir_at(dst, dst_name).map_err(|e| self.err("open copy of", rel, e))?;
                self.copy_children(s.as_fd(), d.as_fd(), dst_root, rel)?;
            }
            FileType::RegularFile => {
                let s = rustix::fs::openat(
                    src,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOATIME,
                    Mode::empty(),
                )
                .or_else(|_| {
                    rustix::fs::openat(
                        src,
                        name,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                })
                .map_err(|e| self.err("open", rel, e))?;
                let d = rustix::fs::openat(
                    dst,
                    dst_name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.err("create copy of", rel, e))?;
                self.copy_data(&s, &d, st.st_size as u64, rel)?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, name, Vec::new())
                    .map_err(|e| self.err("readlink", rel, e))?;
                rustix::fs::symlinkat(target.as_c_str(), dst, dst_name)
                    .map_err(|e| self.err("symlink", rel, e))?;
            }
            FileType::CharacterDevice
            | FileType::BlockDevice
            | FileType::Fifo
            | FileType::Socket => {
                rustix::fs::mknodat(dst, dst_name, kind, mode, st.st_rdev)
                    .map_err(|e| self.err("mknod", rel, e))?;
            }
            FileType::Unknown => {
                return Err(self.err("copy", rel, Errno::INVAL));
            }
        }
        self.copy_metadata(src, name, dst, dst_name, &st, rel)
    }

    fn copy_data(&mut self, src: &OwnedFd, dst: &OwnedFd, size: u64, rel: &[u8]) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        if self.reflink {
            match rustix::fs::ioctl_ficlone(dst, src) {
                Ok(()) => return Ok(()),
                Err(_) => self.reflink = false,
            }
        }
        let mut done = 0u64;
        if self.range {
            loop {
                match rustix::fs::copy_file_range(src, None, dst, None, 1 << 30) {
                    Ok(0) => return Ok(()),
                    Ok(n) => done += n as u64,
                    Err(Errno::INTR) => continue,
                    Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP)
                        if done == 0 =>
                    {
                        self.range = false;
                        break;
                    }
                    Err(e) => return Err(self.err("copy_file_range", rel, e)),
                }
            }
        }
        let mut buf = vec![0u8; 1 << 17];
        loop {
            let n = match rustix::io::read(src, &mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(self.err("read", rel, e)),
            };
            let mut out = &buf[..n];
            while !out.is_empty() {
                match rustix::io::write(dst, out) {
                    Ok(w) => out = &out[w..],
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(self.err("write copy of", rel, e)),
                }
            }
        }
    }

    /// Owner, mode, xattrs and times of `src/name` onto the existing `dst/dst_name`.
    pub(crate) fn copy_metadata_of(
        &self,
        src: BorrowedFd<'_>,
        name: &CStr,
        dst: BorrowedFd<'_>,
        dst_name: &CStr,
        rel: &[u8],
    ) -> Result<()> {
        let st = rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err("stat", rel, e))?;
        self.copy_metadata(src, name, dst, dst_name, &st, rel)
    }

    /// Owner, mode, xattrs and times of `src/name` onto `dst/dst_name`.
    fn copy_metadata(
        &self,
        src: BorrowedFd<'_>,
        name: &CStr,
        dst: BorrowedFd<'_>,
        dst_name: &CStr,
        st: &Stat,
        rel: &[u8],
    ) -> Result<()> {
        let kind = FileType::from_raw_mode(st.st_mode);
        let uid = rustix::fs::Uid::from_raw(st.st_uid);
        let gid = rustix::fs::Gid::from_raw(st.st_gid);
        match rustix::fs::chownat(
            dst,
            dst_name,
            Some(uid),
            Some(gid),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => {}
            Err(Errno::PERM) if !rustix::process::geteuid().is_root() => {}
            Err(e) => return Err(self.err("chown copy of", rel, e)),
        }
        self.copy_xattrs(src, name, dst, dst_name, rel)?;
        if kind != FileType::Symlink {
            // After chown, which clears setuid and setgid.
            rustix::fs::chmodat(
                dst,
                dst_name,
                Mode::from_raw_mode(st.st_mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| self.err("chmod copy of", rel, e))?;
        }
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec as _,
            },
            last_modification: Timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec as _,
            },
        };
        rustix::fs::utimensat(dst, dst_name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.err("set times of copy of", rel, e))
    }

    fn copy_xattrs(
        &self,
        src: BorrowedFd<'_>,
        name: &CStr,
        dst: BorrowedFd<'_>,
        dst_name: &CStr,
        rel: &[u8],
    ) -> Result<()> {
        let src_path = proc_path(src, name);
        let dst_path = proc_path(dst, dst_name);
        let names = match read_xattr_names(&src_path) {
            Ok(names) => names,
            Err(Errno::OPNOTSUPP) => return Ok(()),
            Err(e) => return Err(self.err("list xattrs", rel, e)),
        };
        for key in names {
            let k = key.to_bytes();
            if !self.overlay_xattrs
                && (k.starts_with(b"trusted.overlay.") || k.starts_with(b"user.overlay."))
            {
                continue;
            }
            let value = match read_xattr(&src_path, &key) {
                Ok(v) => v,
                Err(Errno::NODATA) => continue,
                Err(e) => return Err(self.err("read xattr", rel, e)),
            };
            match rustix::fs::lsetxattr(
                &dst_path,
                key.as_c_str(),
                &value,
                rustix::fs::XattrFlags::empty(),
            ) {
                Ok(()) => {}
                Err(e @ (Errno::OPNOTSUPP | Errno::PERM)) => {
                    tracing::warn!(path = %self.src_root.join(OsStr::from_bytes(rel)).display(),
                        xattr = %key.to_string_lossy(), error = %e, "xattr not copied");
                }
                Err(e) => return Err(self.err("set xattr on copy of", rel, e)),
            }
        }
        Ok(())
    }
}

/// `/proc/self/fd/<dir>/<name>`: a path naming `name` in `dir` for the `l*xattr`
/// calls, which have no fd-relative form; its last component is not followed.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> CString {
    let mut v = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if name != c"." {
        v.push(b'/');
        v.extend_from_slice(name.to_bytes());
    } else {
        v.extend_from_slice(b"/.");
    }
    CString::new(v).unwrap_or_default()
}

pub(crate) fn read_xattr_names(path: &CStr) -> rustix::io::Result<Vec<CString>> {
    loop {
        let len = rustix::fs::llistxattr_query(path)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; len];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| CString::new(s).ok())
                    .collect());
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn read_xattr(path: &CStr, key: &CStr) -> rustix::io::Result<Vec<u8>> {
    loop {
        let len = rustix::fs::lgetxattr_query(path, key)?;
        let mut buf = vec![0u8; len];
        match rustix::fs::lgetxattr(path, key, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Copies the whole tree at `src` into the existing empty directory `dst`.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let s = open_dir(src)?;
    let d = open_dir(dst)?;
    let mut copier = Copier::new(src);
    copier.copy_dir_contents(s.as_fd(), d.as_fd(), d.as_fd())
}

/// Removes `path` and everything below it: [`plies_fdtree::remove_tree`] on its
/// last component, under its parent (symlinks in the parent's path are followed:
/// it is a path the driver made). A symlink below is removed, never followed; a
/// mount point below `path` stops the removal with EBUSY. A missing path is not
/// an error.
pub(crate) fn remove_path(path: &Path) -> Result<()> {
    let Some(name) = path.file_name() else {
        return Err(Error::io("remove", path, Errno::INVAL));
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = match rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::io("remove", path, e)),
    };
    plies_fdtree::remove_tree(&dir, name).map_err(|e| Error::io("remove", path, e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::remove_path;

    #[test]
    fn remove_path_takes_the_tree_and_leaves_what_its_symlinks_name() {
        let tmp = tempfile::tempdir().unwrap();
        let kept = tmp.path().join("kept");
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join("file"), b"k").unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/file"), b"x").unwrap();
        symlink(&kept, tree.join("a/to-kept")).unwrap();

        remove_path(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read(kept.join("file")).unwrap(), b"k");
        // Gone already, or never there, parent and all: nothing to do.
        remove_path(&tree).unwrap();
        remove_path(&tmp.path().join("missing/below")).unwrap();
        // A symlink at `path` goes, not what it names.
        symlink(&kept, tmp.path().join("link")).unwrap();
        remove_path(&tmp.path().join("link")).unwrap();
        assert!(kept.join("file").exists());
        assert!(remove_path(std::path::Path::new("/")).is_err());
    }
}
