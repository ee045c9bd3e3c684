//! aufs's private metadata in a layer tar: left out, as Docker does, but for
//! the regular files of `.wh..wh.plnk` (aufs's store of hard-linked files),
//! kept aside until the hard links to them name them.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use plies_whiteout::NameKind;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::node::Place;
use super::{Applier, Meta, drain, io_err};
use crate::error::EntryError;
use crate::stream::{Entry, Input, Stream};

/// A regular file of `.wh..wh.plnk`, kept in the root's filesystem until the
/// apply ends.
pub(super) enum Stashed {
    /// An unnamed file (`O_TMPFILE`), given a name only by a hard link to it.
    Unnamed(OwnedFd),
    /// Where the filesystem has no unnamed files (overlayfs before Linux 6.6,
    /// NFS): a hidden file of this name in the root (the directory), removed
    /// when the apply ends.
    Named(OwnedFd, CString),
}

impl Stashed {
    /// Links the file as `name` in `dir`.
    fn link(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        match self {
            Stashed::Unnamed(fd) => link_unnamed(fd.as_fd(), dir, name),
            Stashed::Named(root, stash) => {
                rustix::fs::linkat(root, stash.as_c_str(), dir, name, AtFlags::empty())
            }
        }
    }
}

/// Prefix of the hidden files that stand in for unnamed ones.
const STASH_PREFIX: &str = ".plies-plnk-";
static STASH_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// aufs's directory of hard-linked files at the root of a branch.
pub(super) const AUFS_LINK_DIR: &[u8] = b".wh..wh.plnk";

/// Gives the unnamed file `fd` the name `name` in `dir`: through its
/// `/proc/self/fd` link, or with `AT_EMPTY_PATH` where `/proc` is missing.
fn link_unnamed(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    ) {
        Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => {
            rustix::fs::linkat(fd, "", dir, name, AtFlags::EMPTY_PATH)
        }
        other => other,
    }
}

/// Whether an entry's name is below aufs private metadata at the root
/// (`.wh..wh.plnk/…`, `.wh..wh.aufs`, …).
pub(super) fn is_aufs_meta(comps: &[&OsStr]) -> bool {
    comps
        .first()
        .is_some_and(|first| matches!(plies_whiteout::classify(first), Ok(NameKind::AufsMeta(_))))
}

impl Applier<'_> {
    /// An entry under aufs private metadata at the root (`.wh..wh.plnk/…`,
    /// `.wh..wh.aufs`): left out, as Docker does, except that a regular file
    /// directly in `.wh..wh.plnk` (aufs's store of hard-linked files) is kept in an
    /// unnamed file until a hard link to it names it.
    pub(super) fn aufs_meta<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        meta: &Meta,
        comps: &[&OsStr],
    ) -> Result<(), EntryError> {
        self.stats.entries += 1;
        self.stats.skipped_aufs_meta += 1;
        let ty = entry.header.entry_type();
        let [meta_dir, base] = comps else {
            return drain(stream, entry);
        };
        if meta_dir.as_bytes() != AUFS_LINK_DIR || !(ty.is_file() || ty.is_contiguous()) {
            return drain(stream, entry);
        }
        let new_owner = (self.my_ids.0, self.my_ids.1);
        let key = base.as_bytes().to_vec();
        match rustix::fs::openat(
            self.root.fd(),
            ".",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => {
                self.fill_file(stream, entry, meta, &fd, new_owner)?;
                self.stash(key, Stashed::Unnamed(fd));
            }
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                let (fd, stashed) = self.named_stash()?;
                // Kept before it is filled, so that a failure removes it.
                self.stash(key, stashed);
                self.fill_file(stream, entry, meta, &fd, new_owner)?;
            }
            Err(e) => return Err(io_err("open an unnamed file for a .wh..wh.plnk entry")(e)),
        }
        Ok(())
    }

    fn stash(&mut self, key: Vec<u8>, stashed: Stashed) {
        if let Some(Stashed::Named(_, old)) = self.aufs_links.insert(key, stashed) {
            self.remove_stash(&old);
        }
    }

    /// A new hidden file at the root, for a filesystem without unnamed files.
    fn named_stash(&mut self) -> Result<(OwnedFd, Stashed), EntryError> {
        loop {
            let seq = STASH_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = CString::new(format!("{STASH_PREFIX}{}-{seq}", std::process::id()))
                .map_err(|_| EntryError::Io {
                    op: "name a .wh..wh.plnk stand-in",
                    source: io::ErrorKind::InvalidInput.into(),
                })?;
            match rustix::fs::openat(
                self.root.fd(),
                name.as_c_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    let root = self
                        .root
                        .fd()
                        .try_clone_to_owned()
                        .map_err(|e| EntryError::Io {
                            op: "dup",
                            source: e,
                        })?;
                    return Ok((fd, Stashed::Named(root, name)));
                }
                Err(Errno::EXIST) => {}
                Err(e) => return Err(io_err("create a .wh..wh.plnk stand-in")(e)),
            }
        }
    }

    fn remove_stash(&self, name: &CStr) {
        if let Err(e) = rustix::fs::unlinkat(self.root.fd(), name, AtFlags::empty()) {
            tracing::warn!(name = ?name, error = %e, "a .wh..wh.plnk stand-in was left at the root");
        }
    }

    /// Removes the hidden files that stood in for unnamed ones.
    pub(super) fn release_stashes(&mut self) {
        let named: Vec<CString> = self
            .aufs_links
            .drain()
            .filter_map(|(_, stashed)| match stashed {
                Stashed::Named(_, name) => Some(name),
                Stashed::Unnamed(_) => None,
            })
            .collect();
        for name in named {
            self.remove_stash(&name);
        }
    }

    /// A hard link to the regular file `base` of `.wh..wh.plnk` (`target`):
    /// links the file kept for it, which stays kept for further links.
    pub(super) fn link_stashed(
        &mut self,
        at: &Place<'_>,
        base: &OsStr,
        target: &[u8],
    ) -> Result<(), EntryError> {
        let key = base.as_bytes().to_vec();
        let stashed = self.aufs_links.remove(&key).ok_or_else(|| {
            EntryError::LinkTarget(Box::new(EntryError::WhiteoutName(format!(
                "no regular file {} came before it in the archive",
                Path::new(OsStr::from_bytes(target)).display()
            ))))
        })?;
        let linked = self.create_with(at.parent, at.name, |p, n| stashed.link(p, n));
        self.aufs_links.insert(key, stashed);
        linked
    }
}
