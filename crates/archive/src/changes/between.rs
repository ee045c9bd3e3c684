//! The changes between two full trees, comparing every entry of both.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::tree::{Tree, file_type, is_dir, join, mtime};
use super::{Change, ChangeKind, ChangesError, Collected, Level, stat_differs};

/// The changes that turn the tree `old_root` into the tree `new_root`, comparing
/// every entry of both: Docker's `ChangesDirs`.
///
/// An entry of both trees is modified when its type, permissions, owner, device
/// number or xattrs differ, or its symlink target, or, for a non-directory, its
/// size or modification time (equal seconds count as equal where one side has no
/// nanoseconds, as after a tar round trip; then the contents decide). A directory's
/// size and times are not compared; a directory holding a change is reported
/// modified. Entries with the same device and inode number in both trees are the
/// same entry and are not looked into. Overlay's private xattrs (`trusted.overlay.*`,
/// `user.overlay.*`) are not compared. Symlinks are never followed (the two roots
/// themselves excepted).
///
/// # Errors
///
/// [`ChangesError::Io`] naming the path when a root cannot be opened or a tree
/// cannot be read.
pub fn between(old_root: &Path, new_root: &Path) -> Result<Vec<Change>, ChangesError> {
    let old_tree = Tree { root: old_root };
    let new_tree = Tree { root: new_root };
    let old = old_tree.open_root()?;
    let new = new_tree.open_root()?;
    let mut out = Collected::default();
    let mut stack = vec![level(
        &old_tree,
        &new_tree,
        Some(old),
        new,
        Vec::new(),
        0,
        true,
    )?];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.pending.pop() else {
            if let Some(done) = stack.pop() {
                done.finish(&mut out);
            }
            continue;
        };
        let path = join(&top.path, &name);
        let old_stat = match &top.old {
            Some(dir) => old_tree.stat(dir.as_fd(), &name, &path)?,
            None => None,
        };
        let new_stat = new_tree.stat(top.new.as_fd(), &name, &path)?;
        let next = match (old_stat, new_stat) {
            (None, None) => None,
            (Some(_), None) => {
                out.push(path, ChangeKind::Deleted);
                None
            }
            (None, Some(new_stat)) => {
                out.push(path.clone(), ChangeKind::Added);
                is_dir(&new_stat).then(|| {
                    let new = new_tree.open_dir(top.new.as_fd(), &name, &path)?;
                    level(&old_tree, &new_tree, None, new, path, out.0.len(), true)
                })
            }
            (Some(old_stat), Some(new_stat)) => {
                if old_stat.st_dev == new_stat.st_dev && old_stat.st_ino == new_stat.st_ino {
                    continue;
                }
                let old_dir = top.old.as_ref().map(|fd| fd.as_fd());
                let changed = match old_dir {
                    Some(old_dir) => entry_differs(
                        (&old_tree, old_dir, &old_stat),
                        (&new_tree, top.new.as_fd(), &new_stat),
                        &name,
                        &path,
                    )?,
                    None => true,
                };
                if changed {
                    out.push(path.clone(), ChangeKind::Modified);
                }
                is_dir(&new_stat).then(|| {
                    let new = new_tree.open_dir(top.new.as_fd(), &name, &path)?;
                    let old = match (old_dir, is_dir(&old_stat)) {
                        (Some(dir), true) => Some(old_tree.open_dir(dir, &name, &path)?),
                        _ => None,
                    };
                    level(&old_tree, &new_tree, old, new, path, out.0.len(), changed)
                })
            }
        };
        if let Some(next) = next {
            stack.push(next?);
        }
    }
    Ok(out.into_sorted())
}

fn level(
    old_tree: &Tree<'_>,
    new_tree: &Tree<'_>,
    old: Option<OwnedFd>,
    new: OwnedFd,
    path: Vec<u8>,
    start: usize,
    reported: bool,
) -> Result<Level<Option<OwnedFd>>, ChangesError> {
    let mut pending = new_tree.names(new.as_fd(), &path)?;
    if let Some(old) = &old {
        pending.extend(old_tree.names(old.as_fd(), &path)?);
        pending.sort_unstable();
        pending.dedup();
    }
    pending.reverse();
    Ok(Level {
        path,
        new,
        old,
        pending,
        start,
        reported,
    })
}

/// Whether the entry `name` differs between the old and the new tree (both exist).
fn entry_differs(
    (old_tree, old_dir, old): (&Tree<'_>, BorrowedFd<'_>, &Stat),
    (new_tree, new_dir, new): (&Tree<'_>, BorrowedFd<'_>, &Stat),
    name: &[u8],
    path: &[u8],
) -> Result<bool, ChangesError> {
    if stat_differs(old, new) {
        return Ok(true);
    }
    let kind = file_type(new);
    if kind == FileType::Symlink
        && old_tree.readlink(old_dir, name, path)? != new_tree.readlink(new_dir, name, path)?
    {
        return Ok(true);
    }
    if old_tree.xattrs(old_dir, name, path)? != new_tree.xattrs(new_dir, name, path)? {
        return Ok(true);
    }
    if kind == FileType::RegularFile && mtime(old) != mtime(new) {
        // Equal only by the whole-second rule: let the contents decide.
        return contents_differ((old_tree, old_dir), (new_tree, new_dir), name, path);
    }
    Ok(false)
}

fn contents_differ(
    (old_tree, old_dir): (&Tree<'_>, BorrowedFd<'_>),
    (new_tree, new_dir): (&Tree<'_>, BorrowedFd<'_>),
    name: &[u8],
    path: &[u8],
) -> Result<bool, ChangesError> {
    let open = |tree: &Tree<'_>, dir| {
        rustix::fs::openat(
            dir,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| tree.err("openat", path, e))
    };
    let (a, b) = (open(old_tree, old_dir)?, open(new_tree, new_dir)?);
    let mut buf_a = vec![0u8; 64 * 1024];
    let mut buf_b = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&a, &mut buf_a).map_err(|e| old_tree.err("read", path, e))?;
        let m = read_full(&b, &mut buf_b).map_err(|e| new_tree.err("read", path, e))?;
        if buf_a[..n] != buf_b[..m] {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::read(fd, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
