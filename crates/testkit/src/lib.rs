//! Test helpers shared by the plies crates (not published).
//!
//! Tests that need root or a kernel feature call [`require`] first: without the
//! requirement they print why they skip and return early, unless
//! `PLIES_REQUIRE_KERNEL=1` is set (as CI sets it), where a missing requirement
//! fails the test instead. Layer tars are built with [`layer_tar::LayerTar`], and
//! trees on disk compared as [`tree::snapshot`]s.

pub mod dockerd;
pub mod layer_tar;
pub mod tree;

use std::path::{Path, PathBuf};

/// Whether `PLIES_REQUIRE_KERNEL=1` asks for kernel tests to fail instead of skipping.
pub fn kernel_required() -> bool {
    std::env::var("PLIES_REQUIRE_KERNEL").is_ok_and(|v| v == "1")
}

/// Decides whether a test that needs something it may not have goes on.
///
/// Returns `true` when `available`. Otherwise prints `skipping <test>: <reason>` and
/// returns `false`, or panics with the reason when [`kernel_required`].
pub fn require(test: &str, available: bool, reason: &str) -> bool {
    if available {
        return true;
    }
    if kernel_required() {
        panic!("{test}: PLIES_REQUIRE_KERNEL=1 but {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// [`require`] for a test that must run as root (mounts, mknod, chown, `trusted.` xattrs).
pub fn require_root(test: &str) -> bool {
    require(
        test,
        rustix::process::geteuid().is_root(),
        "not running as root",
    )
}

/// Whether the running kernel lists `fs` in `/proc/filesystems`.
pub fn kernel_has_filesystem(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|list| {
            list.lines()
                .any(|line| line.split_whitespace().last() == Some(fs))
        })
        .unwrap_or(false)
}

/// [`require`] for a test that mounts overlayfs: root and the overlay filesystem.
pub fn require_overlay(test: &str) -> bool {
    require_root(test)
        && require(
            test,
            kernel_has_filesystem("overlay"),
            "the kernel has no overlay filesystem",
        )
}

/// Whether `PLIES_REQUIRE_AUFS=1` says the running kernel has aufs, so that a
/// test needing it fails instead of skipping (the VM rig sets it for a kernel
/// built with aufs; Debian's kernels have none, so `PLIES_REQUIRE_KERNEL=1` alone
/// does not ask for it).
pub fn aufs_required() -> bool {
    std::env::var("PLIES_REQUIRE_AUFS").is_ok_and(|v| v == "1")
}

/// [`require`] for a test that mounts the kernel's aufs: root and the aufs
/// filesystem. Without aufs the test skips with the reason, and fails instead
/// when [`aufs_required`].
pub fn require_aufs(test: &str) -> bool {
    if !require_root(test) {
        return false;
    }
    if kernel_has_filesystem("aufs") {
        return true;
    }
    let reason = "the kernel has no aufs filesystem";
    if aufs_required() {
        panic!("{test}: PLIES_REQUIRE_AUFS=1 but {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// [`require`]'s counterpart for a feature that only some kernels have (`lowerdir+`
/// since 6.8, say): without it the test prints why it skips and returns `false`,
/// also under `PLIES_REQUIRE_KERNEL=1` — an older kernel lacking a newer feature is
/// not a failure. Whether the feature is detected right is the probes' own tests' job.
pub fn require_kernel_feature(test: &str, available: bool, feature: &str) -> bool {
    if !available {
        eprintln!("skipping {test}: this kernel lacks {feature}");
    }
    available
}

/// Whether overlayfs takes layers one by one through the new mount API
/// (`fsconfig(FSCONFIG_SET_STRING, "lowerdir+", …)`, Linux 6.8 and later).
///
/// Before overlayfs parsed parameters itself (6.5), the kernel queued any key and
/// only refused it at `FSCONFIG_CMD_CREATE`, so this creates a superblock from two
/// empty lower dirs (never mounted) to find out.
pub fn kernel_has_lowerdir_plus() -> bool {
    use rustix::mount::{FsOpenFlags, fsconfig_create, fsconfig_set_string, fsopen};
    let base = std::env::temp_dir().join(format!("plies-lowerdir-plus-{}", std::process::id()));
    let lowers = [base.join("a"), base.join("b")];
    let made = lowers.iter().all(|l| std::fs::create_dir_all(l).is_ok());
    let supported = made
        && fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).is_ok_and(|fs| {
            lowers
                .iter()
                .all(|l| fsconfig_set_string(&fs, "lowerdir+", l.as_path()).is_ok())
                && fsconfig_create(&fs).is_ok()
        });
    let _ = std::fs::remove_dir_all(&base);
    supported
}

/// The names in directory `dir`, sorted; panics on what it cannot read and on
/// a name that is not UTF-8.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            let name = e.unwrap().file_name();
            name.into_string()
                .unwrap_or_else(|n| panic!("{n:?} in {}: not UTF-8", dir.display()))
        })
        .collect();
    names.sort();
    names
}

/// The repository's `fixtures/` directory (Docker-written stores and images).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The mount points listed in `/proc/self/mountinfo` (field 5, unescaped).
pub fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .collect()
}

/// Mount points at or below `dir`, to assert a test left no mount behind.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect()
}

// mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sets the access and modification times of `path` (not following a symlink
/// at its end) to `sec` seconds and `nsec` nanoseconds; panics on failure.
pub fn set_times(path: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("set times of {}: {e}", path.display()));
}
