//! aufs probes.

use std::path::Path;
use std::time::Duration;

use rustix::mount::MountFlags;

use crate::scratch::{bounded, refused};
use crate::{DEFAULT_TIMEOUT, Filesystems, Outcome};

/// Whether the kernel lists `aufs` in `/proc/filesystems`.
pub fn aufs_present(filesystems: &Filesystems) -> Outcome<()> {
    if filesystems.has("aufs") {
        Outcome::supported(())
    } else {
        Outcome::unsupported("aufs is not in /proc/filesystems")
    }
}

/// Whether aufs accepts the `dirperm1` option: a one-branch aufs mount with it
/// (and Docker's `xino=/dev/shm/aufs.xino`) in a scratch directory.
pub fn dirperm1(dir: &Path) -> Outcome<()> {
    dirperm1_within(dir, DEFAULT_TIMEOUT)
}

pub(crate) fn dirperm1_within(dir: &Path, timeout: Duration) -> Outcome<()> {
    match crate::filesystems() {
        Outcome::Supported { value } if value.has("aufs") => {}
        Outcome::Supported { .. } => {
            return Outcome::unsupported("aufs is not in /proc/filesystems");
        }
        Outcome::Unsupported { reason } => return Outcome::unsupported(reason),
    }
    bounded("dirperm1", dir, timeout, |s| {
        if let Err(r) = s.mkdirs(&["base", "union"]) {
            return Outcome::unsupported(r);
        }
        let data = "br:base,dirperm1,xino=/dev/shm/aufs.xino";
        match s.mount("none", "union", "aufs", MountFlags::empty(), data) {
            Ok(()) => Outcome::supported(()),
            Err(e) => Outcome::unsupported(refused("aufs mount with dirperm1", e)),
        }
    })
}
