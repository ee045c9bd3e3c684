//! Who carries out aufs mounts: the kernel, or a stand-in for tests.

use std::fmt::Debug;
use std::path::Path;

use plies_mountopts::AufsCall;

/// Carries out aufs mounts: the kernel's, or a recording for tests.
pub trait Mounter: Send + Sync + Debug {
    /// Mounts aufs at `target` by making `calls` in order (the first a mount, the
    /// rest `MS_REMOUNT` appends); nothing stays mounted on error.
    ///
    /// # Errors
    /// The mount planner's error type, carrying the errno.
    fn mount(&self, calls: &[AufsCall], target: &Path) -> plies_mountopts::Result<()>;

    /// Unmounts `target`; `EINVAL` when nothing is mounted there, `EBUSY` when busy.
    ///
    /// # Errors
    /// The errno.
    fn unmount(&self, target: &Path) -> std::io::Result<()>;
}

/// The kernel: `plies_mountopts::mount::mount_aufs` and `umount2`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelMounter;

impl Mounter for KernelMounter {
    fn mount(&self, calls: &[AufsCall], target: &Path) -> plies_mountopts::Result<()> {
        plies_mountopts::mount::mount_aufs(calls, target)
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::NOFOLLOW).map_err(Into::into)
    }
}
