#![doc = include_str!("../README.md")]

mod aufs;
mod backing;
pub mod cache;
mod dtype;
mod error;
mod filesystems;
mod idmap;
mod kfile;
mod mountinfo;
mod outcome;
mod overlay;
pub mod quota;
mod report;
mod scratch;
mod stack;
mod sys;
mod userns;
mod version;

pub use aufs::{AUFS_CONFIG, aufs_branch_max, aufs_present, dirperm1};
pub use backing::{
    BackingFs, FS_MAGIC_NAMES, MAGIC_AUFS, MAGIC_BTRFS, MAGIC_ECRYPTFS, MAGIC_NFS, MAGIC_OVERLAY,
    MAGIC_XFS, MAGIC_ZFS, aufs_backing_ok, backing_fs, overlay2_backing_ok,
};
pub use dtype::d_type;
pub use error::Error;
pub use filesystems::{FilesystemEntry, Filesystems, filesystems, load_module};
pub use idmap::idmapped_mounts;
pub use mountinfo::mount_points;
pub use outcome::Outcome;
pub use overlay::{
    index_parameter, lowerdir_plus, metacopy, multiple_lowers, native_diff, new_mount_api,
    userxattr_needed, volatile,
};
pub use quota::{ProjectQuota, xfs_project_quota};
pub use report::{ProbeOptions, Report, probe_all, probe_all_cached, probe_all_with};
pub use stack::{DEFAULT_STACK_CEILING, StackDepth, StackMethod, stack_depth, stack_depth_using};
pub use userns::{IdMapping, in_user_namespace, is_initial_id_map, parse_id_map};
pub use version::{KernelVersion, kernel_version};

/// How long one probe may run before it is reported as timed out (a mount on a
/// stuck network filesystem can block indefinitely).
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
