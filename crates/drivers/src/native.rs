//! The native side of diffs: a layer's own directory (overlay upper, aufs
//! branch) exported, measured and applied into directly, for the drivers whose
//! own directory is the diff against the direct parent.

use std::io::Read;
use std::path::{Path, PathBuf};

use plies_archive::{ApplyOptions, ApplyStats, ExportOptions};
use rustix::fs::Mode;

use crate::copy::{copy_tree, remove_path};
use crate::error::{Error, Result};

/// The layer directory `dir` of layer `id` as a layer tar.
pub(crate) fn export(id: &str, dir: &Path, opts: &ExportOptions) -> Result<Box<dyn Read + Send>> {
    let export = plies_archive::export(dir, opts).map_err(|source| Error::Archive {
        id: id.to_owned(),
        source,
    })?;
    Ok(Box::new(export))
}

/// The bytes of file content in the layer directory `dir` of layer `id`.
pub(crate) fn size(id: &str, dir: &Path) -> Result<u64> {
    plies_archive::size::dir_size(dir).map_err(|source| Error::Size {
        id: id.to_owned(),
        source,
    })
}

/// The suffix of the copy of a layer directory that an apply works on.
pub(crate) const APPLYING: &str = plies_layerstore::APPLYING_SUFFIX;

/// Applies a layer tar straight into a layer's own directory `dir` (its diff or
/// upper dir) with `opts` (whiteout format, id maps), so that a failed apply
/// leaves `dir` as it was.
///
/// `dir` is copied (reflinked where the filesystem can; for an empty `dir` just
/// the directory itself) to `<dir>-applying`, the copy applied into and
/// exchanged with `dir` only once the apply succeeded, so that a failed or
/// killed apply leaves `dir` as it was (a killed one leaves the copy, which the
/// store sweeps once the layer's lock is free). Without `may_stage` (the layer is
/// mounted, and an overlay must not have its upper swapped under it) it is
/// applied into in place: an empty `dir` is emptied again on failure.
pub(crate) fn apply_into(
    id: &str,
    dir: &Path,
    diff: &mut dyn Read,
    opts: &ApplyOptions,
    may_stage: bool,
) -> Result<ApplyStats> {
    let archive_err = |source| Error::Archive {
        id: id.to_owned(),
        source,
    };
    let staging = applying_path(dir);
    remove_path(&staging)?;
    if !may_stage && is_empty(dir)? {
        return plies_archive::apply(diff, dir, opts).map_err(|source| {
            if let Err(e) = empty_dir(dir) {
                tracing::warn!(layer = id, error = %e, "a failed apply left files behind");
            }
            archive_err(source)
        });
    }
    if !may_stage {
        tracing::debug!(layer = id, "applying in place into a mounted layer");
        return plies_archive::apply(diff, dir, opts).map_err(archive_err);
    }
    let staged = stage_and_apply(dir, &staging, diff, opts, archive_err);
    if staged.is_err() {
        if let Err(e) = remove_path(&staging) {
            tracing::warn!(layer = id, error = %e, "a failed apply left its copy behind");
        }
    }
    staged
}

/// `<dir>-applying`, beside `dir`.
pub(crate) fn applying_path(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(APPLYING);
    PathBuf::from(name)
}

fn stage_and_apply(
    dir: &Path,
    staging: &Path,
    diff: &mut dyn Read,
    opts: &ApplyOptions,
    archive_err: impl FnOnce(plies_archive::Error) -> Error,
) -> Result<ApplyStats> {
    rustix::fs::mkdir(staging, Mode::from_raw_mode(0o700))
        .map_err(|e| Error::io("mkdir", staging, e))?;
    copy_tree(dir, staging)?;
    let stats = plies_archive::apply(diff, staging, opts).map_err(archive_err)?;
    exchange(staging, dir)?;
    // `staging` now holds what `dir` was.
    if let Err(e) = remove_path(staging) {
        tracing::warn!(error = %e, "the replaced copy of a layer was left behind");
    }
    Ok(stats)
}

/// Swaps the directories `a` and `b` in one step.
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| Error::io("rename", a, e))
}

pub(crate) fn is_empty(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| Error::io("read", dir, e))?
        .next()
        .is_none())
}

/// Removes everything in `dir`, keeping `dir`.
pub(crate) fn empty_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))? {
        let entry = entry.map_err(|e| Error::io("read", dir, e))?;
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .map_err(|e| Error::io("stat", &path, e))?
            .is_dir();
        if is_dir {
            remove_path(&path)?;
        } else {
            std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        }
    }
    Ok(())
}

/// A layer's own directory replaced through a mounted view: the diff is applied
/// at `target`, a view over `staging` (a copy of `own`), and `staging` replaces
/// `own` only once the apply succeeded. overlay2 and aufs each make their own
/// view; the rest is this.
pub(crate) struct StagedView<'a> {
    pub id: &'a str,
    /// The layer's own directory (overlay upper, aufs branch).
    pub own: &'a Path,
    /// The copy the view writes to.
    pub staging: &'a Path,
    /// Where the view is mounted.
    pub target: &'a Path,
    /// More directories the view needs (overlay's work dir), removed with the copy.
    pub scratch: &'a [&'a Path],
}

impl StagedView<'_> {
    /// Runs `mount` (which makes the copy and mounts the view), applies `diff`
    /// at the view, runs `unmount`, and on success exchanges the copy with the
    /// layer's directory. The copy (the replaced directory after a success),
    /// the scratch directories and the mount point go afterwards, unless the
    /// view could not be unmounted: nothing under a live mount is deleted (the
    /// copies go with the layer, or with fsck).
    pub(crate) fn apply(
        &self,
        diff: &mut dyn Read,
        opts: &ApplyOptions,
        mount: impl FnOnce() -> Result<()>,
        unmount: impl FnOnce() -> Result<()>,
    ) -> Result<ApplyStats> {
        let mut still_mounted = false;
        let result = (|| {
            mount()?;
            let applied = plies_archive::apply(diff, self.target, opts);
            if let Err(e) = unmount() {
                still_mounted = true;
                return Err(e);
            }
            let stats = applied.map_err(|source| Error::Archive {
                id: self.id.to_owned(),
                source,
            })?;
            exchange(self.staging, self.own)?;
            Ok(stats)
        })();
        if still_mounted {
            return result;
        }
        for d in std::iter::once(&self.staging).chain(self.scratch) {
            if let Err(e) = remove_path(d) {
                tracing::warn!(layer = self.id, error = %e, "a copy made for an apply was left behind");
            }
        }
        match std::fs::remove_dir(self.target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(layer = self.id, error = %e, "could not remove a mount point"),
        }
        result
    }
}
