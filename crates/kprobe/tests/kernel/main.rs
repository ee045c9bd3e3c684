//! Probes against this machine's real kernel: each answer is checked against an
//! independent source (`/proc`, `/sys`, the mount table, the kernel version).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plies_kprobe::{Outcome, StackMethod};

/// A fresh directory on the same disk as the build (not a tmpfs /tmp).
fn scratch_parent() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

fn kernel() -> plies_kprobe::KernelVersion {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    plies_kprobe::KernelVersion::parse(release.trim()).expect("parse osrelease")
}

/// Whether idmapped mounts work on `fstype` with kernel `k`: ext4 and xfs from
/// 5.12, btrfs from 5.15, tmpfs from 6.3; `None` for filesystems not listed.
fn idmap_expected(fstype: &str, k: &plies_kprobe::KernelVersion) -> Option<bool> {
    match fstype {
        "ext4" | "xfs" => Some(k.at_least(5, 12, 0)),
        "btrfs" => Some(k.at_least(5, 15, 0)),
        "tmpfs" => Some(k.at_least(6, 3, 0)),
        _ => None,
    }
}

fn sys_param(name: &str) -> Option<bool> {
    let v = std::fs::read_to_string(format!("/sys/module/overlay/parameters/{name}")).ok()?;
    Some(v.trim() == "Y")
}

/// The fstype of the mount holding `path`, from /proc/self/mountinfo.
fn mount_fstype(path: &Path) -> String {
    let path = path.canonicalize().expect("canonicalize");
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let (head, tail) = line.split_once(" - ").expect("separator");
        let mp = head.split(' ').nth(4).expect("mount point");
        let fstype = tail.split(' ').next().expect("fstype");
        if path.starts_with(mp) && best.as_ref().is_none_or(|(l, _)| mp.len() >= *l) {
            best = Some((mp.len(), fstype.to_owned()));
        }
    }
    best.expect("a mount holds the path").1
}

#[test]
fn kernel_version_matches_proc() {
    let probed = plies_kprobe::kernel_version();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let v = probed.value().expect("uname parses");
    assert_eq!(v.to_string(), release.trim());
}

#[test]
fn filesystems_match_proc() {
    let fs = plies_kprobe::filesystems();
    let fs = fs.value().expect("/proc/filesystems parses");
    for name in ["proc", "sysfs", "tmpfs", "ext4", "overlay", "aufs", "zfs"] {
        assert_eq!(
            fs.has(name),
            plies_testkit::kernel_has_filesystem(name),
            "{name}"
        );
    }
}

#[test]
fn backing_fs_names_match_the_mount_table() {
    let dir = scratch_parent();
    let expect = |fstype: &str| {
        match fstype {
            "ext2" | "ext3" | "ext4" => "extfs",
            "overlay" => "overlayfs",
            other => other,
        }
        .to_owned()
    };
    let mut paths = vec![
        dir.path().to_path_buf(),
        PathBuf::from("/proc"),
        PathBuf::from("/sys"),
    ];
    if Path::new("/dev/shm").is_dir() {
        paths.push(PathBuf::from("/dev/shm"));
    }
    for path in paths {
        let fs = plies_kprobe::backing_fs(&path);
        let fs = fs.value().expect("statfs");
        assert_eq!(
            fs.name.map(str::to_owned),
            Some(expect(&mount_fstype(&path))),
            "{}",
            path.display()
        );
    }
}

#[test]
fn d_type_on_this_disk() {
    let dir = scratch_parent();
    // ext4, xfs (ftype=1), btrfs and tmpfs all fill in d_type.
    assert!(matches!(
        mount_fstype(dir.path()).as_str(),
        "ext4" | "xfs" | "btrfs" | "tmpfs"
    ));
    assert_eq!(plies_kprobe::d_type(dir.path()), Outcome::supported(()));
    assert_eq!(listing(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn not_in_a_user_namespace_here() {
    if !plies_testkit::require_root("not_in_a_user_namespace_here") {
        return;
    }
    let map = std::fs::read_to_string("/proc/self/uid_map").expect("uid_map");
    let initial = map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"];
    assert_eq!(plies_kprobe::in_user_namespace(), !initial);
    if initial {
        let dir = scratch_parent();
        assert_eq!(
            plies_kprobe::userxattr_needed(dir.path()),
            Outcome::supported(false)
        );
    }
}

#[test]
fn overlay_probes_match_the_kernel() {
    if !plies_testkit::require_overlay("overlay_probes_match_the_kernel") {
        return;
    }
    let dir = scratch_parent();
    let d = dir.path();
    let k = kernel();
    assert_eq!(plies_kprobe::multiple_lowers(d), Outcome::supported(()));
    assert_eq!(
        plies_kprobe::new_mount_api().is_supported(),
        k.at_least(5, 2, 0)
    );
    assert_eq!(
        plies_kprobe::lowerdir_plus(d).is_supported(),
        k.at_least(6, 8, 0)
    );
    assert_eq!(
        plies_kprobe::volatile(d).is_supported(),
        k.at_least(5, 10, 0)
    );
    match sys_param("index") {
        Some(on) => assert_eq!(plies_kprobe::index_parameter(), Outcome::supported(on)),
        None => assert!(!plies_kprobe::index_parameter().is_supported()),
    }
    if let Some(on) = sys_param("metacopy") {
        assert_eq!(plies_kprobe::metacopy(d), Outcome::supported(on));
    }
    // The seed's check: redirect_dir on means renamed directories carry a
    // redirect xattr, which a tar cannot hold.
    if let Some(redirect) = sys_param("redirect_dir") {
        let native = plies_kprobe::native_diff(d);
        assert_eq!(native.is_supported(), !redirect, "{native:?}");
    }
    assert_eq!(listing(d), Vec::<PathBuf>::new());
    assert_eq!(plies_testkit::mounts_under(d), Vec::<PathBuf>::new());
}

#[test]
fn stack_depth_is_the_kernels_limit() {
    if !plies_testkit::require_overlay("stack_depth_is_the_kernels_limit") {
        return;
    }
    let dir = scratch_parent();
    let k = kernel();
    let depth = plies_kprobe::stack_depth(dir.path(), plies_kprobe::DEFAULT_STACK_CEILING);
    let depth = depth.value().expect("stack probe ran");
    // OVL_MAX_STACK is 500 on every kernel the project supports.
    if k.at_least(4, 13, 0) {
        assert_eq!(depth.max_lowers, 500);
        assert!(!depth.capped);
    }
    let expected = if k.at_least(6, 8, 0) {
        StackMethod::LowerdirPlus
    } else {
        StackMethod::MountData
    };
    assert_eq!(depth.method, expected);

    // Mount data reaches the same limit: 1024 two-character names fit in a page.
    let legacy = plies_kprobe::stack_depth_using(dir.path(), 1024, StackMethod::MountData);
    let legacy = legacy.value().expect("mount data stack probe ran");
    assert_eq!(legacy.max_lowers, depth.max_lowers);
    assert_eq!(legacy.method, StackMethod::MountData);

    // A ceiling under the limit is reported as a lower bound.
    let low = plies_kprobe::stack_depth(dir.path(), 20);
    let low = low.value().expect("stack probe ran");
    assert_eq!((low.max_lowers, low.capped), (20, true));

    assert_eq!(listing(dir.path()), Vec::<PathBuf>::new());
    assert_eq!(
        plies_testkit::mounts_under(dir.path()),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn probes_that_cannot_work_here_say_why() {
    let dir = scratch_parent();
    let report = plies_kprobe::probe_all(dir.path()).expect("probe_all");
    if !plies_testkit::kernel_has_filesystem("aufs") {
        assert!(report.dirperm1.reason().expect("no aufs").contains("aufs"));
        assert!(!report.aufs_present.is_supported());
    }
    let root = rustix::process::geteuid().is_root();
    match idmap_expected(&mount_fstype(dir.path()), &kernel()) {
        Some(expected) if root => assert_eq!(
            report.idmapped_mounts.is_supported(),
            expected,
            "{:?}",
            report.idmapped_mounts
        ),
        _ if !root => assert!(!report.idmapped_mounts.is_supported()),
        _ => {}
    }
    if mount_fstype(dir.path()) != "xfs" {
        assert!(
            report
                .xfs_project_quota
                .reason()
                .expect("not xfs")
                .contains("not xfs")
        );
    }
}

#[test]
fn probe_all_leaves_nothing_behind() {
    if !plies_testkit::require_overlay("probe_all_leaves_nothing_behind") {
        return;
    }
    let dir = scratch_parent();
    std::fs::write(dir.path().join("keep"), b"mine").expect("write");
    let before_mounts = plies_testkit::mounts_under(dir.path());
    let before = listing(dir.path());
    let report = plies_kprobe::probe_all(dir.path()).expect("probe_all");
    assert!(report.multiple_lowers.is_supported(), "{report:?}");
    assert_eq!(listing(dir.path()), before);
    assert_eq!(plies_testkit::mounts_under(dir.path()), before_mounts);
    assert_eq!(
        std::fs::read(dir.path().join("keep")).expect("read"),
        b"mine"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!info.contains(dir.path().to_str().expect("utf-8")));
}

#[test]
fn report_rows_and_json() {
    let dir = scratch_parent();
    let report = plies_kprobe::probe_all(dir.path()).expect("probe_all");
    let rows = report.rows();
    let names: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "Backing Filesystem",
            "Supports d_type",
            "Native Overlay Diff",
            "userxattr"
        ]
    );
    let fs = report.backing_fs.value().expect("statfs").to_string();
    assert_eq!(rows[0].1, fs);
    match &report.d_type {
        Outcome::Supported { .. } => assert_eq!(rows[1].1, "true"),
        Outcome::Unsupported { reason } => assert_eq!(rows[1].1, format!("false ({reason})")),
    }
    let json = serde_json::to_value(&report).expect("serialize");
    let d_type = if report.d_type.is_supported() {
        "supported"
    } else {
        "unsupported"
    };
    assert_eq!(json["d_type"]["status"], d_type);
    assert_eq!(json["backing_fs"]["value"]["name"], fs.as_str());
    let idmap = if report.idmapped_mounts.is_supported() {
        "supported"
    } else {
        "unsupported"
    };
    assert_eq!(json["idmapped_mounts"]["status"], idmap);
}

#[test]
fn cached_reports_are_reused() {
    let dir = scratch_parent();
    let first = plies_kprobe::probe_all_cached(dir.path()).expect("probe");
    // The cache answers even after the directory's contents change.
    std::fs::write(dir.path().join("x"), b"").expect("write");
    let second = plies_kprobe::probe_all_cached(&dir.path().join(".")).expect("probe");
    assert_eq!(first, second);
}

#[test]
fn a_missing_directory_is_an_error() {
    let dir = scratch_parent();
    let missing = dir.path().join("nope");
    assert!(matches!(
        plies_kprobe::probe_all(&missing),
        Err(plies_kprobe::Error::ProbeDir { .. })
    ));
    let file = dir.path().join("file");
    std::fs::write(&file, b"").expect("write");
    assert!(matches!(
        plies_kprobe::probe_all(&file),
        Err(plies_kprobe::Error::NotADirectory { .. })
    ));
}

#[test]
fn unprivileged_probes_are_unsupported_not_errors() {
    if !plies_testkit::require_root("unprivileged_probes_are_unsupported_not_errors") {
        return;
    }
    // In the temp dir, not the build tree: nobody must be able to walk down to
    // it, and a checkout may sit in a private directory.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let target = open.clone();
    // Credentials are per thread on Linux: drop to nobody on this thread only;
    // the probes' worker threads inherit it.
    let report = std::thread::spawn(move || {
        let nobody_g = rustix::process::Gid::from_raw(65534);
        let nobody = rustix::process::Uid::from_raw(65534);
        rustix::thread::set_thread_groups(&[]).expect("setgroups");
        rustix::thread::set_thread_res_gid(nobody_g, nobody_g, nobody_g).expect("setresgid");
        rustix::thread::set_thread_res_uid(nobody, nobody, nobody).expect("setresuid");
        plies_kprobe::probe_all(&target)
    })
    .join()
    .expect("no panic")
    .expect("probe_all");
    for (name, o) in [
        ("multiple_lowers", &report.multiple_lowers),
        ("native_diff", &report.native_diff),
        ("volatile", &report.volatile),
        ("new_mount_api", &report.new_mount_api),
        ("lowerdir_plus", &report.lowerdir_plus),
        ("idmapped_mounts", &report.idmapped_mounts),
    ] {
        let reason = o
            .reason()
            .unwrap_or_else(|| panic!("{name} supported unprivileged"));
        assert!(reason.contains("not permitted"), "{name}: {reason}");
    }
    assert!(!report.stack_depth.is_supported());
    assert!(!report.metacopy.is_supported());
    // Non-mount probes still answer.
    assert_eq!(
        report.d_type.is_supported(),
        plies_kprobe::d_type(&open).is_supported()
    );
    assert!(report.backing_fs.is_supported());
    assert_eq!(listing(&open), Vec::<PathBuf>::new());
}

#[test]
fn timed_out_probes_clean_up_after_themselves() {
    if !plies_testkit::require_overlay("timed_out_probes_clean_up_after_themselves") {
        return;
    }
    let dir = scratch_parent();
    let mut options = plies_kprobe::ProbeOptions::default();
    options.timeout = Duration::ZERO;
    let report = plies_kprobe::probe_all_with(dir.path(), &options).expect("probe_all");
    for o in [&report.multiple_lowers, &report.volatile, &report.d_type] {
        assert!(
            o.reason().expect("timed out").contains("timed out"),
            "{o:?}"
        );
    }
    // The abandoned workers finish and remove their scratch directories.
    // Generous: under emulation (the VM matrix) the 500-layer stack probe alone
    // takes tens of seconds. The workers may not even have made their scratch
    // yet when the report returns, so an empty directory counts only once it
    // stayed empty for a while.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut empty_since: Option<Instant> = None;
    while Instant::now() < deadline {
        if listing(dir.path()).is_empty() {
            let since = *empty_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) {
                break;
            }
        } else {
            empty_since = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(listing(dir.path()), Vec::<PathBuf>::new());
    assert_eq!(
        plies_testkit::mounts_under(dir.path()),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn loading_a_missing_module_is_unsupported() {
    let o = plies_kprobe::load_module("plies-no-such-module");
    let reason = o.reason().expect("no such module");
    assert!(reason.contains("modprobe"), "{reason}");
}

#[test]
fn loading_modules_when_asked() {
    if !plies_testkit::require_overlay("loading_modules_when_asked") {
        return;
    }
    let dir = scratch_parent();
    let mut options = plies_kprobe::ProbeOptions::default();
    options.load_modules = true;
    let report = plies_kprobe::probe_all_with(dir.path(), &options).expect("probe_all");
    assert!(report.overlay_present.is_supported());
    assert_eq!(listing(dir.path()), Vec::<PathBuf>::new());
}

/// A filesystem image made with `mkfs.<fstype>`, attached to a loop device and
/// mounted; unmounted and detached on drop.
struct LoopFs {
    _dir: tempfile::TempDir,
    mount_point: PathBuf,
    device: Option<String>,
    mounted: bool,
}

impl LoopFs {
    /// `None` when the tools or loop devices are missing.
    fn new(fstype: &str, size_mb: u64, mkfs_args: &[&str], options: &str) -> Option<LoopFs> {
        let dir = scratch_parent();
        let image = dir.path().join("image");
        let file = std::fs::File::create(&image).ok()?;
        file.set_len(size_mb << 20).ok()?;
        drop(file);
        let mkfs = std::process::Command::new(format!("mkfs.{fstype}"))
            .args(mkfs_args)
            .arg(&image)
            .output()
            .ok()?;
        if !mkfs.status.success() {
            eprintln!("mkfs.{fstype}: {}", String::from_utf8_lossy(&mkfs.stderr));
            return None;
        }
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let device = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).ok()?;
        let mut fs = LoopFs {
            _dir: dir,
            mount_point,
            device: Some(device.clone()),
            mounted: false,
        };
        let data = std::ffi::CString::new(options).ok()?;
        rustix::mount::mount(
            device.as_str(),
            &fs.mount_point,
            fstype,
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| eprintln!("mount {fstype} -o {options}: {e}"))
        .ok()?;
        fs.mounted = true;
        Some(fs)
    }
}

impl LoopFs {
    /// A plain (not lazy) unmount: fails with `EBUSY` while anything still uses the filesystem.
    fn unmount(&mut self) -> rustix::io::Result<()> {
        rustix::mount::unmount(&self.mount_point, rustix::mount::UnmountFlags::empty())?;
        self.mounted = false;
        Ok(())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted && self.unmount().is_err() {
            let _ = rustix::mount::unmount(&self.mount_point, rustix::mount::UnmountFlags::DETACH);
        }
        if let Some(dev) = self.device.take() {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &dev])
                .status();
        }
    }
}

fn have_tool(name: &str) -> bool {
    std::process::Command::new(name).arg("-V").output().is_ok()
}

#[test]
fn d_type_missing_on_ext4_without_filetype() {
    if !plies_testkit::require_root("d_type_missing_on_ext4_without_filetype")
        || !plies_testkit::require(
            "d_type_missing_on_ext4_without_filetype",
            have_tool("mkfs.ext4") && have_tool("losetup"),
            "mkfs.ext4 or losetup missing",
        )
    {
        return;
    }
    let fs =
        LoopFs::new("ext4", 32, &["-q", "-F", "-O", "^filetype"], "").expect("ext4 loop mount");
    let answer = plies_kprobe::d_type(&fs.mount_point);
    assert!(
        answer.reason().expect("no d_type").contains("DT_UNKNOWN"),
        "{answer:?}"
    );
    let report = plies_kprobe::probe_all(&fs.mount_point).expect("probe_all");
    assert!(report.rows()[1].1.starts_with("false ("));
    assert_eq!(
        listing(&fs.mount_point),
        [fs.mount_point.join("lost+found")]
    );
}

/// A tmpfs mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new() -> Tmpfs {
        let dir = scratch_parent();
        rustix::mount::mount(
            "tmpfs",
            dir.path(),
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            c"size=16m",
        )
        .expect("mount tmpfs");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn idmapped_mounts_match_the_kernel() {
    if !plies_testkit::require_root("idmapped_mounts_match_the_kernel") {
        return;
    }
    let k = kernel();
    let disk = scratch_parent();
    let tmpfs = Tmpfs::new();
    for dir in [disk.path(), tmpfs.path()] {
        let fstype = mount_fstype(dir);
        let answer = plies_kprobe::idmapped_mounts(dir);
        if let Some(expected) = idmap_expected(&fstype, &k) {
            assert_eq!(
                answer.is_supported(),
                expected,
                "{fstype} on {k}: {answer:?}"
            );
        }
        if let Some(reason) = answer.reason() {
            // The kernel's refusal is named.
            assert!(
                [
                    "ENOSYS",
                    "EINVAL",
                    "EPERM",
                    "Invalid argument",
                    "not implemented"
                ]
                .iter()
                .any(|e| reason.contains(e)),
                "{fstype}: {reason}"
            );
        }
        assert_eq!(listing(dir), Vec::<PathBuf>::new(), "{fstype}");
        let own_mount: &[PathBuf] = if dir == tmpfs.path() {
            &[tmpfs.path().to_path_buf()]
        } else {
            &[]
        };
        assert_eq!(plies_testkit::mounts_under(dir), own_mount, "{fstype}");
    }
    // The probe's user namespace children (forks named after the probe thread)
    // are all reaped.
    assert_eq!(probe_children(), Vec::<String>::new());
}

/// Child processes of this process forked by a probe thread (`kprobe-*`).
fn probe_children() -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let children = std::fs::read_to_string(task.expect("task").path().join("children"))
            .unwrap_or_default();
        for pid in children.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("kprobe-") {
                out.push(format!("{pid} {}", comm.trim()));
            }
        }
    }
    out
}

/// Skips (with the reason) when the XFS loop filesystem cannot be made.
fn require_xfs(test: &str) -> bool {
    plies_testkit::require_root(test)
        && plies_testkit::require(
            test,
            have_tool("mkfs.xfs")
                && have_tool("losetup")
                && plies_testkit::kernel_has_filesystem("xfs"),
            "mkfs.xfs, losetup or the xfs filesystem missing",
        )
}

/// An XFS loop filesystem mounted with `prjquota`, or `None` (saying so) when
/// the kernel has no XFS quota (built without `CONFIG_XFS_QUOTA`, it refuses the
/// option): a kernel without the feature skips, under `PLIES_REQUIRE_KERNEL=1` too.
fn xfs_with_prjquota(test: &str) -> Option<LoopFs> {
    let fs = LoopFs::new("xfs", 320, &["-q", "-f"], "prjquota");
    if fs.is_none() {
        assert!(
            LoopFs::new("xfs", 320, &["-q", "-f"], "").is_some(),
            "plain xfs loop mount failed"
        );
    }
    plies_testkit::require_kernel_feature(test, fs.is_some(), "XFS quota (CONFIG_XFS_QUOTA)")
        .then_some(fs)
        .flatten()
}

const MIB: u64 = 1 << 20;

/// Writes `mib` MiB of ones to `path`, then syncs; the first error.
fn write_mib(path: &Path, mib: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![1u8; MIB as usize];
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

/// Whether `e` is a write refused by a quota on a filesystem that is not full
/// (XFS reports an exceeded project quota as `ENOSPC`, other quotas as `EDQUOT`).
fn is_over_quota(e: &std::io::Error, fs: &Path) -> bool {
    use rustix::io::Errno;
    let free = rustix::fs::statvfs(fs).expect("statvfs");
    let free_bytes = free.f_bavail * free.f_frsize;
    [Errno::DQUOT, Errno::NOSPC]
        .iter()
        .any(|q| e.raw_os_error() == Some(q.raw_os_error()))
        && free_bytes > 100 * MIB
}

#[test]
fn quota_control_limits_a_directory_on_xfs() {
    let test = "quota_control_limits_a_directory_on_xfs";
    if !require_xfs(test) {
        return;
    }
    let Some(fs) = xfs_with_prjquota(test) else {
        return;
    };
    let home = fs.mount_point.join("home");
    std::fs::create_dir(&home).expect("mkdir home");
    let control = plies_kprobe::quota::Control::open(&home).expect("project quota on xfs");
    let node = std::fs::symlink_metadata(control.device()).expect("device node");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(node.file_type().is_block_device());
    assert_eq!(node.rdev(), std::fs::metadata(&home).expect("stat").dev());
    assert_eq!(control.base_project_id(), 0);
    assert!(control.next_project_id() >= 1);

    // A limited tree: existing contents join the project, new ones inherit it.
    let limited = home.join("limited");
    std::fs::create_dir_all(limited.join("diff")).expect("mkdir");
    std::fs::write(limited.join("link"), b"x").expect("write");
    let id = control.set_quota(&limited, 10 * MIB).expect("set quota");
    assert!(id > control.base_project_id());
    for p in ["", "diff", "link"] {
        assert_eq!(
            plies_kprobe::quota::project_id(&limited.join(p)).expect("projid"),
            id,
            "{p}"
        );
    }
    std::fs::create_dir(limited.join("diff/new")).expect("mkdir");
    assert_eq!(
        plies_kprobe::quota::project_id(&limited.join("diff/new")).expect("projid"),
        id
    );
    let usage = control.usage(&limited).expect("usage");
    assert_eq!(
        (usage.project_id, usage.hard_limit, usage.soft_limit),
        (id, 10 * MIB, 10 * MIB)
    );

    let err = write_mib(&limited.join("diff/new/big"), 20).expect_err("20 MiB over a 10 MiB limit");
    assert!(is_over_quota(&err, &home), "{err}");
    let usage = control.usage(&limited).expect("usage");
    assert!(usage.used > 8 * MIB && usage.used <= 10 * MIB, "{usage:?}");
    assert!(usage.inodes >= 4, "{usage:?}");

    // A tree without a limit takes the same 20 MiB.
    let free = home.join("free");
    std::fs::create_dir(&free).expect("mkdir");
    write_mib(&free.join("big"), 20).expect("no limit");
    assert_eq!(control.project_of(&free).expect("project_of"), None);

    // A second tree gets the next id; sizes round up to whole blocks.
    let second = home.join("second");
    std::fs::create_dir(&second).expect("mkdir");
    let id2 = control.set_quota(&second, 1000).expect("set quota");
    assert!(id2 > id);
    // 1000 bytes are asked as two 512-byte blocks; XFS keeps whole filesystem
    // blocks, so at most one block more.
    let tiny = control.usage(&second).expect("usage").hard_limit;
    assert!(
        (1024..=64 << 10).contains(&tiny) && tiny % 512 == 0,
        "{tiny}"
    );
    // Setting again keeps the id and changes the limit.
    assert_eq!(control.set_quota(&second, 2 * MIB).expect("set quota"), id2);
    assert_eq!(control.usage(&second).expect("usage").hard_limit, 2 * MIB);

    // Reopening (a restart) finds the ids given out, also one level down.
    let nested = home.join("layers/deep");
    std::fs::create_dir_all(&nested).expect("mkdir");
    plies_kprobe::quota::set_project_id(&nested, 900).expect("set projid");
    let reopened = plies_kprobe::quota::Control::open(&home).expect("reopen");
    assert!(reopened.next_project_id() > 900);
    assert_eq!(reopened.project_of(&limited).expect("project_of"), Some(id));

    // Releasing drops the limit.
    reopened.release_project(id).expect("release");
    assert_eq!(reopened.usage(&limited).expect("usage").hard_limit, 0);
    write_mib(&limited.join("diff/after-release"), 12).expect("no limit after release");
}

#[test]
fn quota_control_refuses_without_project_quota() {
    let test = "quota_control_refuses_without_project_quota";
    if !plies_testkit::require_root(test) {
        return;
    }
    let tmpfs = Tmpfs::new();
    let mut homes = vec![tmpfs.path().to_path_buf()];
    let disk = scratch_parent();
    if mount_fstype(disk.path()) != "xfs" {
        homes.push(disk.path().to_path_buf());
    }
    let xfs = if require_xfs(test) {
        LoopFs::new("xfs", 320, &["-q", "-f"], "")
    } else {
        None
    };
    if let Some(fs) = &xfs {
        homes.push(fs.mount_point.clone());
    }
    for home in homes {
        let before = listing(&home);
        match plies_kprobe::quota::Control::open(&home) {
            Err(plies_kprobe::Error::QuotaUnsupported { path, reason }) => {
                assert_eq!(path, home);
                assert!(!reason.is_empty());
            }
            other => panic!("{}: {other:?}", home.display()),
        }
        // The device node does not stay behind.
        assert_eq!(listing(&home), before, "{}", home.display());
    }
}

#[test]
fn xfs_project_quota_is_tried_for_real() {
    let test = "xfs_project_quota_is_tried_for_real";
    if !require_xfs(test) {
        return;
    }
    let plain = LoopFs::new("xfs", 320, &["-q", "-f"], "").expect("xfs loop mount");
    let quota = xfs_with_prjquota(test);
    let mut cases = vec![(&plain, false)];
    if let Some(fs) = &quota {
        cases.push((fs, true));
    }
    for (fs, enforced) in cases {
        let before = listing(&fs.mount_point);
        let backing = plies_kprobe::backing_fs(&fs.mount_point);
        let backing = backing.value().expect("statfs");
        assert_eq!(backing.name, Some("xfs"));
        let answer = plies_kprobe::xfs_project_quota(&fs.mount_point, backing);
        assert_eq!(answer.is_supported(), enforced, "{answer:?}");
        if let Some(q) = answer.value() {
            use std::os::unix::fs::MetadataExt;
            let dev = std::fs::metadata(&fs.mount_point).expect("stat").dev();
            let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
            assert_eq!(q.device, format!("{major}:{minor}"));
            assert_eq!(q.base_project_id, 0);
        } else {
            // The answer says how to turn it on.
            let reason = answer.reason().expect("reason");
            assert!(reason.contains("mount it with prjquota"), "{reason}");
        }
        // The probe's scratch directory, device node included, is gone.
        assert_eq!(listing(&fs.mount_point), before);
        assert_eq!(
            plies_kprobe::d_type(&fs.mount_point),
            Outcome::supported(())
        );
    }
}

#[test]
fn probed_filesystems_can_be_unmounted_right_after() {
    if !plies_testkit::require_overlay("probed_filesystems_can_be_unmounted_right_after")
        || !plies_testkit::require(
            "probed_filesystems_can_be_unmounted_right_after",
            have_tool("mkfs.ext4") && have_tool("losetup"),
            "mkfs.ext4 or losetup missing",
        )
    {
        return;
    }
    type Probe = fn(&Path) -> bool;
    let probes: [(&str, Probe); 5] = [
        ("multiple_lowers", |d| {
            plies_kprobe::multiple_lowers(d).is_supported()
        }),
        ("native_diff", |d| {
            plies_kprobe::native_diff(d)
                .reason()
                .is_none_or(|r| !r.contains("mount"))
        }),
        ("stack_depth", |d| {
            plies_kprobe::stack_depth(d, 8).is_supported()
        }),
        ("volatile", |d| plies_kprobe::volatile(d).is_supported()),
        ("d_type", |d| plies_kprobe::d_type(d).is_supported()),
    ];
    for (name, probe) in probes {
        let mut fs = LoopFs::new("ext4", 32, &["-q", "-F"], "").expect("ext4 loop mount");
        assert!(probe(&fs.mount_point), "{name} ran");
        // A probe thread still sitting on the filesystem would make this EBUSY.
        assert_eq!(fs.unmount(), Ok(()), "{name}");
    }
}
