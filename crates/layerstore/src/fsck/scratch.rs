//! What killed probes leave in a store's probe directory: scratch trees,
//! sometimes with mounts in them.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::io::Errno;

use crate::disk::{list_names, remove_tree, utf8_name};
use crate::error::{Result, io_err};
use crate::locks::STORE_DIR;

use super::{Finding, FsckReport};

/// Prefix of the scratch directories `plies-kprobe` makes for a probe.
pub(crate) const PROBE_SCRATCH_PREFIX: &str = ".kprobe-";

/// Removes probe scratch `name` under `dir` (at `path`): first the mounts a killed
/// probe left in it (one level down, where probes mount), then the tree.
pub(crate) fn remove_scratch(dir: &OwnedFd, path: &std::path::Path, name: &str) -> Result<()> {
    let at = path.join(name);
    if let Ok(scratch) = crate::disk::open_dir(dir, name) {
        let subdirs = list_names(&scratch).map_err(|e| io_err("read", &at, e))?;
        for (sub, _) in subdirs {
            let Some(sub) = utf8_name(&sub) else { continue };
            // Stacked mounts come off one by one.
            while crate::disk::is_mount_point(&scratch, sub).unwrap_or(false) {
                rustix::mount::unmount(at.join(sub), rustix::mount::UnmountFlags::DETACH)
                    .map_err(|e| io_err("unmount", at.join(sub), e))?;
            }
        }
    }
    remove_tree(dir, name).map_err(|e| io_err("remove", at, e))
}

/// Removes every probe scratch directory (`.kprobe-*`) in `probe_dir` and the
/// mounts a killed probe left in them; returns how many it removed. The caller
/// holds [`PROBE_LOCK`](crate::PROBE_LOCK), so no probe is running there.
///
/// # Errors
/// [`Error::Io`](crate::Error::Io) naming the entry that could not be unmounted or removed.
pub fn sweep_probe_scratch(probe_dir: &std::path::Path) -> Result<usize> {
    let dir = match crate::disk::open_dir(rustix::fs::CWD, &probe_dir.to_string_lossy()) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(io_err("open", probe_dir, e)),
    };
    let mut removed = 0;
    for (name, _) in list_names(&dir).map_err(|e| io_err("read", probe_dir, e))? {
        let Some(name) = utf8_name(&name).filter(|n| n.starts_with(PROBE_SCRATCH_PREFIX)) else {
            continue;
        };
        remove_scratch(&dir, probe_dir, name)?;
        removed += 1;
    }
    Ok(removed)
}

/// Reports (and with `repair` removes) what killed probes left in the store's
/// probe directory, unless a probe is running there now.
pub(crate) fn check_probe_scratch(
    root: &std::path::Path,
    locks: &crate::LayerLocks,
    repair: bool,
    report: &mut FsckReport,
) -> Result<()> {
    let probe_dir = root.join(STORE_DIR).join(crate::PROBE_DIR);
    let Ok(entries) = std::fs::read_dir(&probe_dir) else {
        return Ok(());
    };
    let Some(_guard) = locks.try_lock(&[crate::PROBE_LOCK])? else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PROBE_SCRATCH_PREFIX) {
            continue;
        }
        let path = PathBuf::from(STORE_DIR).join(crate::PROBE_DIR).join(&name);
        report.handle(Finding::Leftover { path }, repair, || {
            let dir = crate::disk::open_dir(rustix::fs::CWD, &probe_dir.to_string_lossy())
                .map_err(|e| io_err("open", &probe_dir, e))?;
            remove_scratch(&dir, &probe_dir, &name)
        })?;
    }
    Ok(())
}
