//! fd-relative file operations: every name is resolved under a directory handle
//! without following symlinks, so nothing a store contains leads outside it.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, fchmod, fstat, fsync, mkdirat, openat,
    readlinkat, renameat_with, statat,
};
use rustix::io::Errno;

use crate::error::io_err;

// Tree removal (symlinks removed, never followed; a mount point below the top
// stops it with EBUSY; bounded handles) lives in plies-fdtree.
pub(crate) use plies_fdtree::remove_tree;

/// Largest metadata file the store reads (`lower` of 500 entries is ~14 KiB).
const MAX_META_FILE: u64 = 64 * 1024;

/// Opens directory `name` under `dir` without following a symlink.
pub(crate) fn open_dir(dir: impl AsFd, name: &str) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Makes directory `name` under `dir` with exactly `mode` (whatever the umask).
pub(crate) fn make_dir(dir: impl AsFd, name: &str, mode: u32) -> Result<OwnedFd, Errno> {
    let dir = dir.as_fd();
    mkdirat(dir, name, Mode::from_raw_mode(mode))?;
    let fd = open_dir(dir, name)?;
    fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(fd)
}

/// Makes `path` absolute, creates it and its missing parents with `mode`, and
/// opens it: the root directory of a store.
pub(crate) fn open_store_root(path: &Path, mode: u32) -> crate::Result<(PathBuf, OwnedFd)> {
    open_store_root_with(path, mode, true)
}

/// [`open_store_root`], making the directory only when `make` (else it must exist).
pub(crate) fn open_store_root_with(
    path: &Path,
    mode: u32,
    make: bool,
) -> crate::Result<(PathBuf, OwnedFd)> {
    let root = std::path::absolute(path).map_err(|e| io_err("resolve", path, e))?;
    if make {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&root)
            .map_err(|e| io_err("create", &root, e))?;
    }
    let fd = openat(
        rustix::fs::CWD,
        &root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", &root, e))?;
    Ok((root, fd))
}

/// Opens directory `name` of a store's root `root` (at `root_path`), making it with
/// `mode` first if it is missing and `make` is set; the root is synced after a make when
/// `durable`.
pub(crate) fn open_or_make_dir_with(
    root: &OwnedFd,
    root_path: &Path,
    name: &str,
    mode: u32,
    durable: bool,
    make: bool,
) -> crate::Result<OwnedFd> {
    if !make {
        return open_dir(root, name).map_err(|e| io_err("open", root_path.join(name), e));
    }
    match make_dir(root, name, mode) {
        Ok(fd) => {
            sync(root, durable).map_err(|e| io_err("fsync", root_path, e))?;
            Ok(fd)
        }
        Err(Errno::EXIST) => {
            open_dir(root, name).map_err(|e| io_err("open", root_path.join(name), e))
        }
        Err(e) => Err(io_err("create", root_path.join(name), e)),
    }
}

/// Creates file `name` under `dir` (which must not exist) with `contents` and
/// exactly `mode`; fsyncs it when `durable`.
pub(crate) fn write_new_file(
    dir: impl AsFd,
    name: &str,
    contents: &[u8],
    mode: u32,
    durable: bool,
) -> io::Result<()> {
    let fd = openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    fchmod(&fd, Mode::from_raw_mode(mode))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(contents)?;
    if durable {
        file.sync_all()?;
    }
    Ok(())
}

/// Reads a small regular file under `dir` without following symlinks.
/// `Ok(None)` when it does not exist.
pub(crate) fn read_small_file(dir: impl AsFd, name: &str) -> io::Result<Option<Vec<u8>>> {
    let fd = match openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    // Sized from the file, so one read takes it (plus one to see the end).
    let mut buf = Vec::with_capacity(meta.len().min(MAX_META_FILE) as usize + 1);
    file.take(MAX_META_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_META_FILE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file too large"));
    }
    Ok(Some(buf))
}

/// Reads symlink `name` under `dir`. `Ok(None)` when it does not exist.
pub(crate) fn read_link(dir: impl AsFd, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    match readlinkat(dir, name, Vec::new()) {
        Ok(target) => Ok(Some(target.into_bytes())),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What is at `name` under `dir`, without following symlinks.
pub(crate) fn file_type(dir: impl AsFd, name: &str) -> Result<Option<FileType>, Errno> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Renames `from` to `to` within `dir`, failing with `EEXIST` rather than replacing.
pub(crate) fn rename_noreplace(dir: impl AsFd, from: &str, to: &str) -> Result<(), Errno> {
    let dir = dir.as_fd();
    renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE)
}

/// fsyncs a directory (or file) handle when `durable`.
pub(crate) fn sync(fd: impl AsFd, durable: bool) -> Result<(), Errno> {
    if durable { fsync(fd) } else { Ok(()) }
}

/// The names in a directory, without `.` and `..`, as raw bytes.
pub(crate) fn list_names(dir: impl AsFd) -> Result<Vec<(Vec<u8>, FileType)>, Errno> {
    let mut out = Vec::new();
    let mut entries = Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name.to_vec(), entry.file_type()));
    }
    Ok(out)
}

/// Whether `name` under `dir` is on another filesystem than `dir` (a mount point).
pub(crate) fn is_mount_point(dir: impl AsFd, name: &str) -> Result<bool, Errno> {
    let dir = dir.as_fd();
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(st.st_dev != fstat(dir)?.st_dev),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The bytes of a name as UTF-8, if they are.
pub(crate) fn utf8_name(name: &[u8]) -> Option<&str> {
    std::str::from_utf8(name).ok()
}
