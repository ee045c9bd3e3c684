//! Removing a tree under a directory handle.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, fstat, openat, renameat_with, statat,
    unlinkat,
};
use rustix::io::Errno;

use crate::error::Error;

/// Most handles [`remove_tree`] holds at once on the tree's directories (and one
/// more while it reads a directory): a directory deeper than this below the top
/// of the tree is moved up to the top and removed from there.
pub const MAX_OPEN_DEPTH: usize = 32;

/// Removes the entry `name` of the directory `dir` and, for a directory,
/// everything beneath it.
///
/// Symlinks are removed, never followed. The tree is the filesystem `name` is
/// on: a directory below `name` on another filesystem is never entered, and the
/// removal stops with [`Error::MountPoint`] (`EBUSY`), leaving what is mounted
/// there and whatever it had not reached. A `name` that is itself a mount point
/// is entered: its contents are removed, and removing `name` then fails with
/// `EBUSY`.
///
/// It holds at most [`MAX_OPEN_DEPTH`] directory handles (one more while it
/// reads a directory) however deep the tree is. A missing `name` is not an
/// error, nor is an entry that disappears while the removal runs. `name` must be
/// one entry of `dir` (no `/`, not `.` or `..`).
pub fn remove_tree(dir: impl AsFd, name: impl AsRef<OsStr>) -> Result<(), Error> {
    remove_tree_holding(dir.as_fd(), name.as_ref(), MAX_OPEN_DEPTH)
}

/// One directory being emptied.
struct Level {
    fd: OwnedFd,
    /// Its name in its parent (the directory below it on the stack, or `dir`).
    name: OsString,
    /// Its path relative to `dir`, for errors.
    path: PathBuf,
    /// Entries listed and not handled yet.
    pending: Vec<(OsString, FileType)>,
}

/// [`remove_tree`], holding at most `max_open` directory handles (at least 2).
pub(crate) fn remove_tree_holding(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    max_open: usize,
) -> Result<(), Error> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(Error::InvalidName {
            name: name.to_owned(),
        });
    }
    let top_path = Path::new(name);
    // Anything but a directory goes with one call. Linux says EISDIR for a
    // directory; POSIX allows EPERM, which an immutable file also gives.
    let refused = match unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(e @ (Errno::ISDIR | Errno::PERM)) => e,
        Err(e) => return Err(Error::io("unlinkat", top_path, e)),
    };
    let top = match open_dir(dir, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        // Not a directory after all: the unlink's own refusal stands.
        Err(Errno::NOTDIR | Errno::LOOP) => return Err(Error::io("unlinkat", top_path, refused)),
        Err(e) => return Err(Error::io("openat", top_path, e)),
    };
    let dev = fstat(&top)
        .map_err(|e| Error::io("fstat", top_path, e))?
        .st_dev;
    let mut stack = vec![Level {
        fd: top,
        name: name.to_owned(),
        path: top_path.to_path_buf(),
        pending: Vec::new(),
    }];
    let mut hoisted = 0u64;
    loop {
        let depth = stack.len();
        let Some(level) = stack.last_mut() else { break };
        let Some((child, kind)) = level.pending.pop() else {
            // Everything listed is handled: list again, for what was moved up
            // to the top or appeared meanwhile; an empty directory goes.
            let names =
                list(level.fd.as_fd()).map_err(|e| Error::io("getdents", &level.path, e))?;
            if !names.is_empty() {
                level.pending = names;
                continue;
            }
            let Some(done) = stack.pop() else { break };
            drop(done.fd);
            let parent = stack.last().map_or(dir, |l| l.fd.as_fd());
            match unlinkat(parent, &done.name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(Error::io("unlinkat", &done.path, e)),
            }
            continue;
        };
        let cur = level.fd.as_fd();
        let child_path = level.path.join(&child);
        let is_dir = match kind {
            FileType::Directory => true,
            FileType::Unknown => match statat(cur, &child, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(Error::io("fstatat", &child_path, e)),
            },
            _ => false,
        };
        if !is_dir {
            match unlinkat(cur, &child, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => continue,
                // Replaced by a directory since it was listed.
                Err(Errno::ISDIR) => {}
                Err(e) => return Err(Error::io("unlinkat", &child_path, e)),
            }
        }
        // The top and one level below it are always held: deeper directories
        // move up to the top, and from there one level down.
        if depth < max_open.max(2) {
            let fd = match open_dir(cur, &child) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(Error::io("openat", &child_path, e)),
            };
            let st = fstat(&fd).map_err(|e| Error::io("fstat", &child_path, e))?;
            if st.st_dev != dev {
                return Err(Error::MountPoint { path: child_path });
            }
            stack.push(Level {
                fd,
                name: child,
                path: child_path,
                pending: Vec::new(),
            });
            continue;
        }
        // Too deep to hold another handle: move the directory up to the top,
        // whose next listing finds it. A mount point does not move (EBUSY).
        let (top, cur) = (stack[0].fd.as_fd(), stack[depth - 1].fd.as_fd());
        loop {
            hoisted += 1;
            let to = format!(".hoisted-{hoisted}");
            match renameat_with(cur, &child, top, to.as_str(), RenameFlags::NOREPLACE) {
                Ok(()) | Err(Errno::NOENT) => break,
                Err(Errno::EXIST) => continue,
                Err(Errno::BUSY) => return Err(Error::MountPoint { path: child_path }),
                Err(e) => return Err(Error::io("renameat", &child_path, e)),
            }
        }
    }
    Ok(())
}

/// Opens directory `name` under `dir` without following a symlink.
fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The entries of a directory, without `.` and `..`.
fn list(dir: BorrowedFd<'_>) -> Result<Vec<(OsString, FileType)>, Errno> {
    let mut out = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((OsStr::from_bytes(name).to_owned(), entry.file_type()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
