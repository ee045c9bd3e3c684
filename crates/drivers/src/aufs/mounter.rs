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

    /// Whether mounts may add `dirperm1`; `probe_dir` is scratch space the
    /// answer may be probed in (the driver holds the store's probe lock).
    /// Unless a mounter says otherwise: no.
    fn dirperm1(&self, probe_dir: &Path) -> bool {
        let _ = probe_dir;
        false
    }

    /// The most branches (the writable one included) one mount may stack.
    /// Unless a mounter says otherwise: [`DEFAULT_BRANCH_MAX`].
    fn branch_max(&self) -> usize {
        DEFAULT_BRANCH_MAX
    }
}

/// The smallest branch maximum aufs is built with (`CONFIG_AUFS_BRANCH_MAX_127`,
/// the default), assumed where the kernel does not say.
pub const DEFAULT_BRANCH_MAX: usize = 127;

/// The kernel: `plies_mountopts::mount::mount_aufs` and `umount2`; `dirperm1`
/// and the branch maximum as kprobe finds them.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelMounter;

impl Mounter for KernelMounter {
    fn mount(&self, calls: &[AufsCall], target: &Path) -> plies_mountopts::Result<()> {
        plies_mountopts::mount::mount_aufs(calls, target)
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::NOFOLLOW).map_err(Into::into)
    }

    fn dirperm1(&self, probe_dir: &Path) -> bool {
        plies_kprobe::dirperm1(probe_dir).is_supported()
    }

    fn branch_max(&self) -> usize {
        plies_kprobe::aufs_branch_max()
            .value()
            .copied()
            .unwrap_or(DEFAULT_BRANCH_MAX)
    }
}
