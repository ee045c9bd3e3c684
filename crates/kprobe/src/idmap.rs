//! Idmapped mounts.

use std::path::Path;

use rustix::mount::OpenTreeFlags;

use std::time::Duration;

use crate::scratch::bounded;
use crate::{DEFAULT_TIMEOUT, Outcome};

/// Whether an idmapped mount of `dir` can be made.
///
/// Making one needs `mount_setattr(2)` with `MOUNT_ATTR_IDMAP` and a user
/// namespace file descriptor. rustix 1.1 has no `mount_setattr` wrapper and this
/// crate forbids `unsafe` code, so the probe stops after what it can check: that
/// `open_tree(OPEN_TREE_CLONE)` detaches a copy of the mount holding a scratch
/// directory under `dir` (kernel 5.2 and the privileges for it). The answer is
/// therefore always unsupported, with a reason that says how far the check went.
pub fn idmapped_mounts(dir: &Path) -> Outcome<()> {
    idmapped_mounts_within(dir, DEFAULT_TIMEOUT)
}

pub(crate) fn idmapped_mounts_within(dir: &Path, timeout: Duration) -> Outcome<()> {
    bounded("idmap", dir, timeout, |s| clone_tree(s.path()))
}

fn clone_tree(dir: &Path) -> Outcome<()> {
    let clone = rustix::mount::open_tree(
        rustix::fs::CWD,
        dir,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    );
    match clone {
        // The detached clone goes away with its fd.
        Ok(_tree) => Outcome::unsupported(
            "not checked: open_tree(OPEN_TREE_CLONE) works, but mount_setattr(MOUNT_ATTR_IDMAP) \
             is not reachable without unsafe code",
        ),
        Err(e) => Outcome::unsupported(format!("open_tree(OPEN_TREE_CLONE) failed: {e}")),
    }
}
