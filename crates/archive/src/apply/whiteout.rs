//! Whiteouts and opaque markers of a layer tar, made in the target's format:
//! overlay 0/0 devices and opaque xattrs, deletions on a merged tree, or (aufs)
//! the `.wh.` files themselves.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use plies_whiteout::NameKind;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};

use super::{Applier, Meta, drain, io_err, io_err2};
use crate::dir::{self, remove_any};
use crate::error::EntryError;
use crate::format::WhiteoutFormat;
use crate::resolve;
use crate::stream::{Entry, Input, Stream};

fn is_whiteout_like(name: &OsStr) -> bool {
    name.as_bytes()
        .starts_with(plies_whiteout::WHITEOUT_PREFIX.as_bytes())
}

/// What an entry's name is: plain, or by its last component a whiteout, an
/// opaque marker or aufs metadata. A `.wh.` directory component is refused.
pub(super) fn name_kind<'c>(comps: &[&'c OsStr]) -> Result<NameKind<'c>, EntryError> {
    for comp in comps.iter().rev().skip(1) {
        if is_whiteout_like(comp) {
            return Err(EntryError::WhiteoutName(format!(
                "directory component {}",
                Path::new(comp).display()
            )));
        }
    }
    match comps.last() {
        Some(last) if is_whiteout_like(last) => {
            plies_whiteout::classify(last).map_err(|e| EntryError::WhiteoutName(e.to_string()))
        }
        _ => Ok(NameKind::Plain),
    }
}

impl Applier<'_> {
    /// Applies the entry if its name is a whiteout or opaque marker (of
    /// `kind`); `true` when that is all there is to do, `false` for a plain
    /// name, or for aufs, whose `.wh.` files are made as the files they are.
    pub(super) fn whiteout_entry<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        meta: &Meta,
        comps: &[&OsStr],
        kind: NameKind<'_>,
    ) -> Result<bool, EntryError> {
        match kind {
            NameKind::Plain => return Ok(false),
            NameKind::AufsMeta(_) => {
                return Err(EntryError::WhiteoutName("aufs private metadata".into()));
            }
            _ => {}
        }
        let ty = entry.header.entry_type();
        if !(ty.is_file() || ty.is_contiguous() || ty.is_hard_link()) {
            return Err(EntryError::WhiteoutName(
                "whiteout entry is not a regular file".into(),
            ));
        }
        self.stats.whiteouts += 1;
        if self.opts.whiteouts == WhiteoutFormat::Aufs {
            return Ok(false);
        }
        drain(stream, entry)?;
        let (dir_comps, last) = comps.split_at(comps.len() - 1);
        self.whiteout(meta, dir_comps, last[0], kind)?;
        Ok(true)
    }

    fn whiteout(
        &mut self,
        meta: &Meta,
        dir_comps: &[&OsStr],
        name: &OsStr,
        kind: NameKind<'_>,
    ) -> Result<(), EntryError> {
        let parent = self.parent(dir_comps)?;
        let new_owner = (self.my_ids.0, parent.new_gid);
        let parent = &parent.fd;
        match (self.opts.whiteouts, kind) {
            (WhiteoutFormat::Overlay(_), NameKind::Whiteout(target)) => {
                self.remove(parent.as_fd(), target)?;
                plies_whiteout::create_overlay_whiteout(parent, target)?;
                if meta.uid != u32::MAX && (meta.uid, meta.gid) != new_owner {
                    let (uid, gid) = (meta.uid, meta.gid);
                    rustix::fs::chownat(
                        parent,
                        target,
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(io_err("chown whiteout"))?;
                }
            }
            (WhiteoutFormat::Overlay(ns), NameKind::Opaque) => {
                plies_whiteout::set_opaque(parent, ns)?;
            }
            (WhiteoutFormat::Merged, NameKind::Whiteout(target)) => {
                self.remove(parent.as_fd(), target)?;
            }
            (WhiteoutFormat::Merged, NameKind::Opaque) => {
                self.parents.clear();
                let mut prefix = resolve::join(dir_comps);
                empty_except(parent, &mut prefix, &self.unpacked)
                    .map_err(io_err2("empty opaque directory"))?;
            }
            _ => {
                let _ = name;
            }
        }
        Ok(())
    }
}

/// Removes everything below `dir` whose path (joined to `prefix`) this tar did not add.
fn empty_except(dir: &OwnedFd, prefix: &mut Vec<u8>, keep: &HashSet<Vec<u8>>) -> io::Result<()> {
    for child in dir::list(dir)? {
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(child.as_bytes());
        if keep.contains(prefix.as_slice()) {
            if let Ok(sub) = rustix::fs::openat(
                dir,
                &child,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                empty_except(&sub, prefix, keep)?;
            }
        } else {
            remove_any(dir.as_fd(), &child)?;
        }
        prefix.truncate(len);
    }
    Ok(())
}
