//! Naive diff: for any driver, mount the layer and its parent, compare the two
//! full trees, and export or measure only what differs; apply a tar onto the
//! mounted layer with merged whiteout semantics. Every `get` is matched by a
//! `put`, also on error.

use std::ffi::{CString, OsStr};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use plies_archive::changes::{Change, ChangeKind, between};
use plies_archive::{ApplyStats, Export, WhiteoutFormat, XattrNamespace};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FileType, Mode};

use crate::copy::{Copier, open_dir, open_dir_at, remove_path};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::idmap::IdMaps;
use crate::native::{empty_dir, is_empty};

/// A layer held with `get`, put back when dropped.
pub(crate) struct Held<'a> {
    driver: &'a dyn Driver,
    id: String,
    /// The layer's root filesystem.
    pub(crate) path: PathBuf,
}

impl<'a> Held<'a> {
    pub(crate) fn get(driver: &'a dyn Driver, id: &str) -> Result<Self> {
        let path = driver.get(id, None)?;
        Ok(Held {
            driver,
            id: id.to_owned(),
            path,
        })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.driver.put(&self.id) {
            tracing::warn!(layer = %self.id, error = %e, "put after naive diff failed");
        }
    }
}

/// A scratch directory under `parent`, removed when dropped.
pub(crate) struct Scratch {
    pub(crate) path: PathBuf,
}

static SCRATCH_SEQ: AtomicU64 = AtomicU64::new(0);

impl Scratch {
    pub(crate) fn new(parent: &Path) -> Result<Self> {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("mkdir", parent, e))?;
        let name = format!(
            "naive-{}-{}",
            std::process::id(),
            SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = parent.join(name);
        rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700))
            .map_err(|e| Error::io("mkdir", &path, e))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_path(&self.path) {
            tracing::warn!(error = %e, "scratch directory left behind");
        }
    }
}

/// The changes of `id` against `parent` (or against nothing), comparing the two
/// mounted trees.
pub fn changes(
    driver: &dyn Driver,
    id: &str,
    parent: Option<&str>,
    scratch: &Path,
) -> Result<Vec<Change>> {
    let layer = Held::get(driver, id)?;
    let (_held, _empty, old) = parent_root(driver, parent, scratch)?;
    between(&old, &layer.path).map_err(|source| Error::Changes {
        id: id.to_owned(),
        source,
    })
}

/// The parent's mounted root, or an empty scratch directory for no parent.
fn parent_root<'a>(
    driver: &'a dyn Driver,
    parent: Option<&str>,
    scratch: &Path,
) -> Result<(Option<Held<'a>>, Option<Scratch>, PathBuf)> {
    match parent {
        Some(p) => {
            let held = Held::get(driver, p)?;
            let path = held.path.clone();
            Ok((Some(held), None, path))
        }
        None => {
            let empty = Scratch::new(scratch)?;
            let path = empty.path.clone();
            Ok((None, Some(empty), path))
        }
    }
}

/// The bytes the changes of `id` against `parent` add.
pub fn diff_size(
    driver: &dyn Driver,
    id: &str,
    parent: Option<&str>,
    scratch: &Path,
) -> Result<u64> {
    let list = changes(driver, id, parent, scratch)?;
    let layer = Held::get(driver, id)?;
    plies_archive::size::changes_size(&layer.path, &list).map_err(|source| Error::Size {
        id: id.to_owned(),
        source,
    })
}

/// Applies a layer tar onto the mounted layer `id`, whiteouts deleting what they
/// name, owners mapped to the host by `maps`; returns what was applied.
///
/// `own` is the layer's own directory (its upper or writable branch): when it
/// was empty and the apply fails, it is emptied again once the layer is put, so a
/// failed apply of a new layer leaves it as it was.
pub fn apply(
    driver: &dyn Driver,
    id: &str,
    diff: &mut dyn Read,
    maps: &IdMaps,
    own: Option<&Path>,
) -> Result<ApplyStats> {
    let was_empty = match own {
        Some(dir) => is_empty(dir)?,
        None => false,
    };
    let layer = Held::get(driver, id)?;
    let opts = maps.apply_options(WhiteoutFormat::Merged);
    let applied = plies_archive::apply(diff, &layer.path, &opts);
    drop(layer);
    applied.map_err(|source| {
        if let (Some(dir), true) = (own, was_empty) {
            if let Err(e) = empty_dir(dir) {
                tracing::warn!(layer = id, error = %e, "a failed apply left files behind");
            }
        }
        Error::Archive {
            id: id.to_owned(),
            source,
        }
    })
}

/// The changes of `id` against `parent` as a layer tar, owners mapped back to
/// the container by `maps`: the changed entries are staged in a scratch
/// directory in overlay format (deletions as 0/0 devices), which is exported
/// and removed when the reader is dropped.
pub fn diff(
    driver: &dyn Driver,
    id: &str,
    parent: Option<&str>,
    scratch: &Path,
    link_sources: bool,
    maps: &IdMaps,
) -> Result<Box<dyn Read + Send>> {
    let list = changes(driver, id, parent, scratch)?;
    let layer = Held::get(driver, id)?;
    let stage = Scratch::new(scratch)?;
    stage_changes(&layer.path, &stage.path, &list, link_sources)?;
    drop(layer);
    let export = plies_archive::export(
        &stage.path,
        &maps.export_options(WhiteoutFormat::Overlay(XattrNamespace::Trusted)),
    )
    .map_err(|source| Error::Archive {
        id: id.to_owned(),
        source,
    })?;
    Ok(Box::new(StagedExport {
        export,
        _stage: stage,
    }))
}

struct StagedExport {
    export: Export,
    _stage: Scratch,
}

impl Read for StagedExport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.export.read(buf)
    }
}

/// Builds in `stage` the overlay-format upper dir that holds exactly `changes`
/// of the tree `root`.
fn stage_changes(root: &Path, stage: &Path, changes: &[Change], link_sources: bool) -> Result<()> {
    let src_root = open_dir(root)?;
    let dst_root = open_dir(stage)?;
    let mut copier = Copier::new(root);
    copier.overlay_xattrs = false;
    copier.link_sources = link_sources;
    // Directories made in the stage, to get their metadata once filled.
    let mut dirs: Vec<Vec<u8>> = Vec::new();
    for change in changes {
        let rel = change.path.as_os_str().as_bytes();
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        if rel.is_empty() {
            continue;
        }
        let (parent_rel, name) = match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let cname = CString::new(name).map_err(|_| {
            Error::io(
                "stage",
                root.join(OsStr::from_bytes(rel)),
                io::ErrorKind::InvalidInput,
            )
        })?;
        let src_dir = walk(src_root.as_fd(), parent_rel, root, false, &mut dirs)?;
        let dst_dir = walk(dst_root.as_fd(), parent_rel, stage, true, &mut dirs)?;
        match change.kind {
            ChangeKind::Deleted => {
                plies_whiteout::create_overlay_whiteout(&dst_dir, OsStr::from_bytes(name))
                    .map_err(|source| Error::Whiteout {
                        id: root.display().to_string(),
                        source,
                    })?;
            }
            ChangeKind::Added | ChangeKind::Modified => {
                let st = rustix::fs::statat(
                    &src_dir,
                    cname.as_c_str(),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| Error::io("stat", root.join(OsStr::from_bytes(rel)), e))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    match rustix::fs::mkdirat(
                        &dst_dir,
                        cname.as_c_str(),
                        Mode::from_raw_mode(0o700),
                    ) {
                        Ok(()) => dirs.push(rel.to_vec()),
                        Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => {
                            return Err(Error::io("mkdir", stage.join(OsStr::from_bytes(rel)), e));
                        }
                    }
                } else {
                    copier.copy_entry(
                        src_dir.as_fd(),
                        cname.as_c_str(),
                        dst_dir.as_fd(),
                        cname.as_c_str(),
                        dst_root.as_fd(),
                        rel,
                    )?;
                }
            }
        }
    }
    // Deepest first, so that filling a directory does not change its times again.
    dirs.sort();
    dirs.dedup();
    for rel in dirs.iter().rev() {
        let (parent_rel, name) = match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], &rel[..]),
        };
        let cname = CString::new(name).unwrap_or_default();
        let mut none = Vec::new();
        let src_dir = walk(src_root.as_fd(), parent_rel, root, false, &mut none)?;
        let dst_dir = walk(dst_root.as_fd(), parent_rel, stage, false, &mut none)?;
        copier.copy_metadata_of(
            src_dir.as_fd(),
            cname.as_c_str(),
            dst_dir.as_fd(),
            cname.as_c_str(),
            rel,
        )?;
    }
    Ok(())
}

/// Opens the directory `rel` below `root`, component by component without
/// following symlinks; with `create`, makes missing directories (recorded in `made`).
fn walk(
    root: rustix::fd::BorrowedFd<'_>,
    rel: &[u8],
    root_path: &Path,
    create: bool,
    made: &mut Vec<Vec<u8>>,
) -> Result<OwnedFd> {
    let mut fd = open_dir_at(root, c".").map_err(|e| Error::io("open", root_path, e))?;
    let mut so_far: Vec<u8> = Vec::new();
    for comp in rel.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
        if !so_far.is_empty() {
            so_far.push(b'/');
        }
        so_far.extend_from_slice(comp);
        let name = CString::new(comp).unwrap_or_default();
        let path = || root_path.join(OsStr::from_bytes(&so_far));
        if create {
            match rustix::fs::mkdirat(&fd, name.as_c_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => made.push(so_far.clone()),
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(Error::io("mkdir", path(), e)),
            }
        }
        fd = open_dir_at(fd.as_fd(), name.as_c_str()).map_err(|e| Error::io("open", path(), e))?;
    }
    Ok(fd)
}
