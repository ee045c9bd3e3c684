//! aufs through the kernel's own aufs: what a mount stacks as the kernel reports
//! it (`/sys/fs/aufs/si_*/br*`, `xi_path`, the mount options), and its branch
//! limit. Skipped on kernels without aufs, failed there under
//! `PLIES_REQUIRE_AUFS=1` (the VM row of a kernel built with aufs).

#[path = "../common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::E;
use plies_drivers::{CreateOptions, Driver, Error};
use plies_mountopts::{AufsCall, AufsStack};

/// The value of `key` in the driver's status.
fn status(d: &dyn Driver, key: &str) -> String {
    d.status()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in the status"))
}

/// A chain of `n` empty layers with ids `<prefix><i>`, the first without a
/// parent; returns the ids, base first.
fn chain(d: &dyn Driver, prefix: &str, n: usize) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i:03}");
        d.create(
            &id,
            ids.last().map(String::as_str),
            &CreateOptions::default(),
        )
        .unwrap();
        ids.push(id);
    }
    ids
}

/// The super-block options of the mount at `target` (mountinfo's last field).
fn super_options(target: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if Path::new(fields.get(4)?) != target {
            return None;
        }
        let dash = fields.iter().position(|f| *f == "-")?;
        Some((
            fields.get(dash + 1)?.to_string(),
            fields.get(dash + 3)?.to_string(),
        ))
    })
}

/// aufs's sysfs directory of the mount at `target` (`/sys/fs/aufs/si_<id>`).
fn sysfs_dir(target: &Path) -> PathBuf {
    let (fstype, options) = super_options(target)
        .unwrap_or_else(|| panic!("nothing is mounted at {}", target.display()));
    assert_eq!(fstype, "aufs", "{options}");
    let si = options
        .split(',')
        .find_map(|o| o.strip_prefix("si="))
        .unwrap_or_else(|| panic!("no si= in {options}"));
    PathBuf::from(format!("/sys/fs/aufs/si_{si}"))
}

/// The branches of the mount at `target` as aufs lists them (`<path>=<perm>`), in order.
fn kernel_branches(target: &Path) -> Vec<String> {
    let dir = sysfs_dir(target);
    (0..)
        .map_while(|i| std::fs::read_to_string(dir.join(format!("br{i}"))).ok())
        .map(|s| s.trim_end().to_owned())
        .collect()
}

#[test]
fn kernel_mount_stacks_the_planned_branches() {
    let Some(rig) = common::aufs_kernel() else {
        return;
    };
    let d = &*rig.driver;
    // Long ids: the branches take more than one page, so appends follow the mount.
    let prefix = "x".repeat(61);
    let ids = chain(d, &prefix, 60);
    let top = ids.last().unwrap();
    std::fs::write(d.root().join("diff").join(&ids[0]).join("base"), b"b").unwrap();
    let target = d.get(top, None).unwrap();
    let diff = |id: &String| d.root().join("diff").join(id);
    let dirperm1 = status(d, "Dirperm1 Supported") == "true";
    let planned = plies_mountopts::plan_aufs(&AufsStack {
        rw: diff(top),
        ro: ids.iter().rev().skip(1).map(diff).collect(),
        label: None,
        dirperm1,
    })
    .unwrap();
    assert!(planned.len() > 1, "the plan appends branches");
    assert!(matches!(planned[1], AufsCall::Append(_)));

    let want: Vec<String> = std::iter::once(format!("{}=rw", diff(top).display()))
        .chain(
            ids.iter()
                .rev()
                .skip(1)
                .map(|id| format!("{}=ro+wh", diff(id).display())),
        )
        .collect();
    assert_eq!(kernel_branches(&target), want);
    let (_, options) = super_options(&target).unwrap();
    assert_eq!(
        options.split(',').any(|o| o == "dirperm1"),
        dirperm1,
        "dirperm1 in {options}, the driver's status says {dirperm1}"
    );
    // kprobe's answer is the kernel's: this kernel's aufs takes dirperm1.
    assert!(dirperm1, "aufs takes dirperm1");
    let xino = std::fs::read_to_string(sysfs_dir(&target).join("xi_path")).unwrap();
    assert_eq!(xino.trim_end(), "/dev/shm/aufs.xino");
    assert_eq!(std::fs::read(target.join("base")).unwrap(), b"b");
    d.put(top).unwrap();
    assert!(super_options(&target).is_none(), "put unmounts");
}

#[test]
fn kernel_branch_limit() {
    let Some(rig) = common::aufs_kernel() else {
        return;
    };
    let d = &*rig.driver;
    // Not every aufs lists its build options (`/sys/fs/aufs/config`); without
    // them the driver takes the smallest maximum, which the mounts below check
    // against the kernel's own limit.
    let max = match plies_kprobe::aufs_branch_max() {
        plies_kprobe::Outcome::Supported { value } => value,
        plies_kprobe::Outcome::Unsupported { reason } => {
            let listed: Vec<String> = std::fs::read_dir("/sys/fs/aufs")
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            eprintln!("aufs branch maximum not listed ({reason}); /sys/fs/aufs has {listed:?}");
            plies_drivers::AUFS_DEFAULT_BRANCH_MAX
        }
    };
    assert_eq!(status(d, "Max Branches"), max.to_string());

    // The deepest chain mounts with every branch.
    let ids = chain(d, "l", max);
    let top = ids.last().unwrap();
    let target = d.get(top, None).unwrap();
    assert_eq!(kernel_branches(&target).len(), max);
    d.put(top).unwrap();

    // One more layer is refused when it is made, with the reason, and not made.
    let err = d
        .create("over", Some(top), &CreateOptions::default())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Store { source: plies_layerstore::Error::TooDeep { depth, max: m, .. }, .. }
            if *depth == max && *m == max - 1),
        "{err}"
    );
    assert!(!d.exists("over"));

    // The kernel's own limit: one branch more fails the append that adds it
    // (ENOSPC), and nothing stays mounted.
    let rw = common::tempdir();
    let mnt = common::tempdir();
    let calls = plies_mountopts::plan_aufs(&AufsStack {
        rw: rw.path().to_path_buf(),
        ro: ids
            .iter()
            .rev()
            .map(|id| d.root().join("diff").join(id))
            .collect(),
        label: None,
        dirperm1: false,
    })
    .unwrap();
    let err = plies_mountopts::mount::mount_aufs(&calls, mnt.path()).unwrap_err();
    let plies_mountopts::Error::Mount { source, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(source.raw_os_error(), Some(28), "{err}");
    assert!(super_options(mnt.path()).is_none(), "nothing stays mounted");
}

/// What a container does through the kernel's aufs lands in the branch in
/// aufs's own format (whiteouts, an opaque directory, a pseudo-link for a
/// hard-linked file written to), and reads back as the same changes and diff
/// as the same writes through overlay2.
#[test]
fn kernel_writes_read_back_as_overlay2s() {
    let (Some(a), Some(o)) = (common::aufs_kernel(), common::overlay2()) else {
        return;
    };
    let mut listings = Vec::new();
    for d in [&*a.driver, &*o.driver] {
        common::layer(
            d,
            "base",
            None,
            &[
                E::Dir("etc", 0o755),
                E::File("etc/passwd", "root", 0o644),
                E::File("etc/hosts", "hosts", 0o644),
                E::Dir("cache", 0o755),
                E::File("cache/a", "a", 0o644),
                E::File("cache/b", "b", 0o644),
                E::File("bin-tool", "tool", 0o755),
                E::Link("bin-tool-link", "bin-tool"),
            ],
        );
        d.create_read_write("rw", Some("base"), &CreateOptions::default())
            .unwrap();
        let root = d.get("rw", None).unwrap();
        std::fs::remove_file(root.join("etc/hosts")).unwrap();
        std::fs::remove_dir_all(root.join("cache")).unwrap();
        std::fs::create_dir(root.join("cache")).unwrap();
        std::fs::write(root.join("cache/c"), b"c").unwrap();
        std::fs::write(root.join("bin-tool"), b"new tool").unwrap();
        std::fs::write(root.join("etc/passwd"), b"root:x").unwrap();
        for written in ["cache/c", "bin-tool", "etc/passwd"] {
            plies_testkit::set_times(&root.join(written), 1_600_000_000, 0);
        }
        if d.name() == "aufs" {
            let branch = d.root().join("diff/rw");
            assert!(branch.join("etc/.wh.hosts").exists(), "aufs whiteout");
            assert!(
                branch.join("cache/.wh..wh..opq").exists(),
                "aufs opaque directory"
            );
            // aufs keeps the written file's other names through a pseudo-link.
            let plnk: Vec<_> = std::fs::read_dir(branch.join(".wh..wh.plnk"))
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
                .unwrap_or_default();
            eprintln!("pseudo-links while mounted: {plnk:?}");
            assert_eq!(
                std::fs::read(root.join("bin-tool-link")).unwrap(),
                b"new tool",
                "a hard link stays one file through aufs"
            );
        }
        d.put("rw").unwrap();
        let mut changes = common::changes(d, "rw", Some("base"));
        changes.sort();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut d.diff("rw", Some("base")).unwrap(), &mut tar).unwrap();
        listings.push((changes, common::tar_listing(&tar)));
    }
    // One difference, aufs's: a hard-linked file a container writes to stays one
    // file under all its names (through the pseudo-link, and the link aufs makes
    // in the branch), where overlay copies up only the name written to.
    let (mut aufs_changes, mut aufs_diff) = listings.swap_remove(0);
    let (overlay_changes, overlay_diff) = listings.swap_remove(0);
    let at = aufs_changes.iter().position(|c| c == "C /bin-tool-link");
    assert!(at.is_some(), "{aufs_changes:?}");
    aufs_changes.remove(at.unwrap());
    assert_eq!(aufs_changes, overlay_changes, "changes: aufs, overlay2");
    let at = aufs_diff
        .iter()
        .position(|l| l.starts_with("bin-tool-link Link ") && l.contains("Some(\"bin-tool\")"));
    assert!(at.is_some(), "{aufs_diff:?}");
    aufs_diff.remove(at.unwrap());
    assert_eq!(aufs_diff, overlay_diff, "diff: aufs, overlay2");
}
