//! Disk usage of a layer, like Docker's `directory.Size` and `ChangesSize`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::changes::{Change, ChangeKind};

/// What went wrong while sizing a tree, and where.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    /// A system call failed on a path.
    #[error("{op} {path:?}")]
    Io {
        /// The operation, such as `fstatat` or `getdents`.
        op: &'static str,
        /// The full path it failed on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: PathBuf, e: Errno) -> SizeError {
    SizeError::Io {
        op,
        path,
        source: e.into(),
    }
}

/// Counts each inode with more than one link once.
#[derive(Default)]
struct Inodes(HashSet<(u64, u64)>);

impl Inodes {
    /// The bytes `stat` adds: its size, or nothing for a directory or an inode
    /// already counted.
    #[allow(clippy::unnecessary_cast)] // the field types differ between architectures
    fn bytes(&mut self, stat: &Stat) -> u64 {
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            return 0;
        }
        if stat.st_nlink as u64 > 1 && !self.0.insert((stat.st_dev as u64, stat.st_ino as u64)) {
            return 0;
        }
        u64::try_from(stat.st_size).unwrap_or(0)
    }
}

/// The bytes the tree at `path` holds: the sum of the sizes of everything but
/// directories (regular files, symlinks, …), each hardlinked inode counted once,
/// without following symlinks. Entries that vanish during the walk are skipped,
/// as Docker's `directory.Size` does.
///
/// # Errors
///
/// [`SizeError::Io`] naming the path when `path` cannot be opened or a directory
/// cannot be read.
pub fn dir_size(path: &Path) -> Result<u64, SizeError> {
    let root = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open", path.to_owned(), e))?;
    let mut inodes = Inodes::default();
    let mut total = 0u64;
    // Directories still to read: their parent (kept open only while needed),
    // the parent's path and their name.
    let mut todo: Vec<(Rc<OwnedFd>, PathBuf, Option<std::ffi::OsString>)> =
        vec![(Rc::new(root), path.to_owned(), None)];
    while let Some((parent, parent_path, name)) = todo.pop() {
        let (dir, dir_path) = match name {
            None => (parent, parent_path),
            Some(name) => {
                let dir_path = parent_path.join(&name);
                match rustix::fs::openat(
                    &*parent,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => (Rc::new(fd), dir_path),
                    Err(Errno::NOENT | Errno::NOTDIR) => continue,
                    Err(e) => return Err(io("openat", dir_path, e)),
                }
            }
        };
        let reader = rustix::fs::Dir::read_from(dir.as_fd())
            .map_err(|e| io("opendir", dir_path.clone(), e))?;
        for entry in reader {
            let entry = entry.map_err(|e| io("getdents", dir_path.clone(), e))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            if entry.file_type() == FileType::Directory {
                todo.push((Rc::clone(&dir), dir_path.clone(), Some(name.to_owned())));
                continue;
            }
            let stat = match rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(io("fstatat", dir_path.join(name), e)),
            };
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                todo.push((Rc::clone(&dir), dir_path.clone(), Some(name.to_owned())));
                continue;
            }
            total = total.saturating_add(inodes.bytes(&stat));
        }
    }
    Ok(total)
}

/// The bytes a list of changes adds to a layer, read from the tree `root` they
/// describe: the sizes of the added and modified non-directories, each hardlinked
/// inode counted once (Docker's `ChangesSize`). An entry gone since the changes
/// were listed is skipped with a warning.
///
/// # Errors
///
/// [`SizeError::Io`] when an entry cannot be examined for another reason than
/// being gone.
pub fn changes_size(root: &Path, changes: &[Change]) -> Result<u64, SizeError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open", root.to_owned(), e))?;
    let mut inodes = Inodes::default();
    let mut total = 0u64;
    for change in changes {
        if change.kind == ChangeKind::Deleted {
            continue;
        }
        let rel = change.path.strip_prefix("/").unwrap_or(&change.path);
        let stat = match stat_beneath(&root_fd, rel) {
            Ok(stat) => stat,
            Err(Errno::NOENT | Errno::NOTDIR) => {
                tracing::warn!(path = ?change.path, "changed entry is gone; not counted");
                continue;
            }
            Err(e) => return Err(io("fstatat", root.join(rel), e)),
        };
        total = total.saturating_add(inodes.bytes(&stat));
    }
    Ok(total)
}

/// `lstat` of `rel` under `root`, one component at a time without following
/// symlinks; `..`, absolute and other special components are EINVAL.
fn stat_beneath(root: &OwnedFd, rel: &Path) -> Result<Stat, Errno> {
    let mut components: Vec<&OsStr> = Vec::new();
    for component in rel.components() {
        match component {
            std::path::Component::Normal(name) => components.push(name),
            std::path::Component::CurDir => {}
            _ => return Err(Errno::INVAL),
        }
    }
    let Some((last, parents)) = components.split_last() else {
        return rustix::fs::fstat(root);
    };
    let mut dir: Option<OwnedFd> = None;
    for name in parents {
        let parent = dir.as_ref().unwrap_or(root);
        dir = Some(rustix::fs::openat(
            parent,
            *name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    }
    rustix::fs::statat(
        dir.as_ref().unwrap_or(root),
        *last,
        AtFlags::SYMLINK_NOFOLLOW,
    )
}
