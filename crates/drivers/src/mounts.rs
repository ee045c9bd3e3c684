//! Reading the mount table and unmounting, with bounded retries on `EBUSY`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::UnmountFlags;

use crate::error::{Error, Result};

/// How often `remove` tries to unmount a busy layer.
pub(crate) const BUSY_ATTEMPTS: u32 = 5;
const BUSY_PAUSE: Duration = Duration::from_millis(100);

/// Mount points of this process's mount namespace at or below `dir`, deepest
/// first (so they can be unmounted in this order).
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = plies_kprobe::mount_points()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort();
    out.dedup();
    out.reverse();
    out
}

/// Whether `path` is a mount point: on another device than its parent, which
/// every overlay and aufs mount is (a `stat` each, no mount table scan).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let (Ok(here), Some(parent)) = (rustix::fs::lstat(path), path.parent()) else {
        return false;
    };
    rustix::fs::stat(parent).is_ok_and(|p| p.st_dev != here.st_dev)
}

/// Detaches the mount at `path`; `Ok(false)` when nothing was mounted there.
pub(crate) fn detach(id: &str, path: &Path) -> Result<bool> {
    match rustix::mount::unmount(path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL | Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::Unmount {
            id: id.to_owned(),
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Unmounts `path`, retrying `EBUSY` a bounded number of times; `Ok(false)` when
/// nothing was mounted there.
pub(crate) fn unmount_retrying(id: &str, path: &Path) -> Result<bool> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match rustix::mount::unmount(path, UnmountFlags::NOFOLLOW) {
            Ok(()) => return Ok(true),
            Err(Errno::INVAL | Errno::NOENT) => return Ok(false),
            Err(Errno::BUSY) if attempts < BUSY_ATTEMPTS => {
                tracing::warn!(layer = id, attempts, "unmount busy, retrying");
                std::thread::sleep(BUSY_PAUSE);
            }
            Err(Errno::BUSY) => {
                return Err(Error::Busy {
                    id: id.to_owned(),
                    path: path.to_path_buf(),
                    attempts,
                });
            }
            Err(e) => {
                return Err(Error::Unmount {
                    id: id.to_owned(),
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
}
