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

/// Where aufs lists the options it was built with (`CONFIG_AUFS_…=y` lines).
pub const AUFS_CONFIG: &str = "/sys/fs/aufs/config";

/// The branches one aufs mount can stack, the kernel's `CONFIG_AUFS_BRANCH_MAX_*`
/// (127, 511, 1023 or 32767), read from [`AUFS_CONFIG`]. Going past it is
/// `ENOSPC` from the mount or the `append:` remount that adds one branch too many.
pub fn aufs_branch_max() -> Outcome<usize> {
    match std::fs::read_to_string(AUFS_CONFIG) {
        Ok(text) => match parse_branch_max(&text) {
            Some(n) => Outcome::supported(n),
            None => Outcome::unsupported(format!("{AUFS_CONFIG} names no branch maximum")),
        },
        Err(e) => Outcome::unsupported(format!("cannot read {AUFS_CONFIG}: {e}")),
    }
}

/// The `N` of a `CONFIG_AUFS_BRANCH_MAX_N=y` line.
fn parse_branch_max(config: &str) -> Option<usize> {
    config.lines().find_map(|line| {
        line.trim()
            .strip_prefix("CONFIG_AUFS_BRANCH_MAX_")?
            .strip_suffix("=y")?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_max_from_the_config() {
        let config = "CONFIG_AUFS_FS=y\nCONFIG_AUFS_BRANCH_MAX_127=y\nCONFIG_AUFS_XATTR=y\n";
        assert_eq!(parse_branch_max(config), Some(127));
        assert_eq!(
            parse_branch_max("CONFIG_AUFS_BRANCH_MAX_32767=y\n"),
            Some(32767)
        );
        assert_eq!(parse_branch_max("CONFIG_AUFS_FS=m\n"), None);
    }
}
