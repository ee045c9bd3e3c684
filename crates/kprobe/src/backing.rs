//! The filesystem under a directory, from its `statfs` magic, and which union
//! filesystems can sit on it.

use std::fmt;
use std::path::Path;

use std::time::Duration;

use crate::scratch::deadline;
use crate::{DEFAULT_TIMEOUT, KernelVersion, Outcome};

/// `statfs` `f_type` magic numbers and their names (from the kernel's `magic.h`
/// and the filesystems' own headers).
pub const FS_MAGIC_NAMES: &[(u64, &str)] = &[
    (0x0000_9fa0, "proc"),
    (0x0000_137d, "ext"),
    (0x0000_ef53, "extfs"),
    (0x0000_4d44, "msdos"),
    (0x0000_6969, "nfs"),
    (0x0000_517b, "smb"),
    (0x0000_72b6, "jffs2"),
    (0x0000_f15f, "ecryptfs"),
    (0x0000_3434, "nilfs"),
    (0x0000_9660, "isofs"),
    (0x0000_4244, "hfs"),
    (0x0000_482b, "hfsplus"),
    (0x0001_1954, "ufs"),
    (0x0000_1cd1, "devpts"),
    (0x00c3_6400, "ceph"),
    (0x0102_1994, "tmpfs"),
    (0x0102_1997, "v9fs"),
    (0x0116_1970, "gfs2"),
    (0x2011_bab0, "exfat"),
    (0x28cd_3d45, "cramfs"),
    (0x2fc1_2fc1, "zfs"),
    (0x3153_464a, "jfs"),
    (0x4750_4653, "gpfs"),
    (0x5265_4973, "reiserfs"),
    (0x5346_544e, "ntfs"),
    (0x5846_5342, "xfs"),
    (0x6165_6673, "aufs"),
    (0x6265_6572, "sysfs"),
    (0x6367_7270, "cgroup2"),
    (0x6573_5546, "fuse"),
    (0x7371_7368, "squashfs"),
    (0x7461_636f, "ocfs2"),
    (0x794c_7630, "overlayfs"),
    (0x8584_58f6, "ramfs"),
    (0x9123_683e, "btrfs"),
    (0xa501_fcf5, "vxfs"),
    (0xca45_1a4e, "bcachefs"),
    (0xe0f5_e1e2, "erofs"),
    (0xf2f5_2010, "f2fs"),
    (0xfe53_4d42, "smb2"),
    (0xff53_4d42, "cifs"),
];

/// Magic of aufs.
pub const MAGIC_AUFS: u64 = 0x6165_6673;
/// Magic of btrfs.
pub const MAGIC_BTRFS: u64 = 0x9123_683e;
/// Magic of eCryptfs.
pub const MAGIC_ECRYPTFS: u64 = 0xf15f;
/// Magic of NFS.
pub const MAGIC_NFS: u64 = 0x6969;
/// Magic of overlayfs.
pub const MAGIC_OVERLAY: u64 = 0x794c_7630;
/// Magic of ZFS.
pub const MAGIC_ZFS: u64 = 0x2fc1_2fc1;
/// Magic of XFS.
pub const MAGIC_XFS: u64 = 0x5846_5342;

/// The filesystem a directory lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BackingFs {
    /// `statfs` `f_type`.
    pub magic: u64,
    /// Its name from [`FS_MAGIC_NAMES`], `None` for a magic the table lacks.
    pub name: Option<&'static str>,
}

impl BackingFs {
    /// The filesystem with `magic`, named from [`FS_MAGIC_NAMES`].
    pub fn from_magic(magic: u64) -> Self {
        let name = FS_MAGIC_NAMES
            .iter()
            .find(|(m, _)| *m == magic)
            .map(|(_, n)| *n);
        BackingFs { magic, name }
    }
}

impl fmt::Display for BackingFs {
    /// The name, or `<unknown>` as Docker's status shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name.unwrap_or("<unknown>"))
    }
}

/// The filesystem `dir` lives on, from `statfs(2)`.
pub fn backing_fs(dir: &Path) -> Outcome<BackingFs> {
    backing_fs_within(dir, DEFAULT_TIMEOUT)
}

pub(crate) fn backing_fs_within(dir: &Path, timeout: Duration) -> Outcome<BackingFs> {
    let dir = dir.to_path_buf();
    deadline("statfs", timeout, move || statfs_magic(&dir))
}

fn statfs_magic(dir: &Path) -> Outcome<BackingFs> {
    match rustix::fs::statfs(dir) {
        // f_type is a signed word on some targets; the magic is its bit pattern.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => Outcome::supported(BackingFs::from_magic(st.f_type as u64 & 0xffff_ffff)),
        Err(e) => Outcome::unsupported(format!("statfs {}: {e}", dir.display())),
    }
}

/// Whether overlay2 may keep layers on `fs` under `kernel`: not on aufs,
/// eCryptfs, NFS, overlayfs or ZFS; on btrfs only from kernel 4.7.
///
/// The unsupported reason names the filesystem.
pub fn overlay2_backing_ok(fs: &BackingFs, kernel: &KernelVersion) -> Outcome<()> {
    match fs.magic {
        MAGIC_AUFS | MAGIC_ECRYPTFS | MAGIC_NFS | MAGIC_OVERLAY | MAGIC_ZFS => {
            Outcome::unsupported(format!("overlay2 is not supported over {fs}"))
        }
        MAGIC_BTRFS if !kernel.at_least(4, 7, 0) => Outcome::unsupported(format!(
            "overlay2 over {fs} needs kernel 4.7 or newer (running {kernel})"
        )),
        _ => Outcome::supported(()),
    }
}

/// Whether aufs may keep layers on `fs`: not on aufs, btrfs or eCryptfs.
pub fn aufs_backing_ok(fs: &BackingFs) -> Outcome<()> {
    match fs.magic {
        MAGIC_AUFS | MAGIC_BTRFS | MAGIC_ECRYPTFS => {
            Outcome::unsupported(format!("aufs is not supported over {fs}"))
        }
        _ => Outcome::supported(()),
    }
}
