//! overlay2 behaviour beyond the conformance suite: mount options, read-only
//! parents, failed mounts, busy removal, relative mount data, status rows.

#[path = "../common/mod.rs"]
mod common;

use std::path::Path;

use common::{E, layer, mounted_tree};
use plies_drivers::{CreateOptions, Driver, DriverChoice, Error, Options, Overlay2};
use plies_testkit::layer_tar::LayerTar;

fn overlay2(test: &str) -> Option<(tempfile::TempDir, Overlay2)> {
    if !plies_testkit::require_overlay(test) {
        return None;
    }
    let dir = common::tempdir();
    let d = Overlay2::open(&dir.path().join("overlay2"), &Options::default()).unwrap();
    Some((dir, d))
}

/// Super options of the mount at `target`, from mountinfo.
fn super_options(target: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = target.to_str().unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target))
        .unwrap_or_else(|| panic!("{target} is not mounted"));
    line.rsplit(' ').next().unwrap().to_owned()
}

struct Cleanup<'a>(&'a Overlay2);
impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.cleanup();
    }
}

#[test]
fn parents_mount_read_only_and_index_off() {
    let Some((_dir, d)) = overlay2("parents_mount_read_only_and_index_off") else {
        return;
    };
    let _c = Cleanup(&d);
    layer(&d, "base", None, &[E::File("a", "a", 0o644)]);
    layer(&d, "mid", Some("base"), &[E::File("b", "b", 0o644)]);
    d.create_read_write("top", Some("mid"), &CreateOptions::default())
        .unwrap();
    assert!(d.store().is_committed("base").unwrap() && d.store().is_committed("mid").unwrap());
    assert!(!d.store().is_committed("top").unwrap());

    let mid = d.get("mid", None).unwrap();
    let opts = super_options(&mid);
    assert!(
        !opts.contains("upperdir="),
        "a committed layer has no upper: {opts}"
    );
    let err = std::fs::write(mid.join("c"), b"c").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );

    let top = d.get("top", None).unwrap();
    let opts = super_options(&top);
    assert!(opts.contains("upperdir="), "{opts}");
    // index=off is asked for; the kernel lists it only when its default is on.
    assert!(!opts.contains("index=on"), "{opts}");
    std::fs::write(top.join("c"), b"c").unwrap();
    d.put("top").unwrap();
    d.put("mid").unwrap();
    assert!(
        !d.store().layer_dir("top").join("merged").exists(),
        "the last put removes merged"
    );
    assert!(plies_testkit::mounts_under(d.root()).is_empty());
}

#[test]
fn failed_mount_holds_nothing() {
    let Some((_dir, d)) = overlay2("failed_mount_holds_nothing") else {
        return;
    };
    let _c = Cleanup(&d);
    layer(&d, "base", None, &[E::File("a", "a", 0o644)]);
    d.create_read_write("top", Some("base"), &CreateOptions::default())
        .unwrap();
    // Break the parent's link: the mount cannot find its lower.
    let link = d.store().link_id("base").unwrap();
    let link_path = d.root().join("l").join(link.as_str());
    let target = std::fs::read_link(&link_path).unwrap();
    std::fs::remove_file(&link_path).unwrap();
    assert!(matches!(d.get("top", None), Err(Error::Mount { .. })));
    assert_eq!(d.refcount("top"), 0);
    assert!(!d.store().layer_dir("top").join("merged").exists());
    assert!(plies_testkit::mounts_under(d.root()).is_empty());
    assert!(matches!(d.put("top"), Err(Error::NotMounted { .. })));
    std::os::unix::fs::symlink(target, &link_path).unwrap();
    assert!(mounted_tree(&d, "top").contains_key("a"));
}

#[test]
fn busy_layer_is_not_removed() {
    let Some((_dir, d)) = overlay2("busy_layer_is_not_removed") else {
        return;
    };
    let _c = Cleanup(&d);
    layer(&d, "base", None, &[E::File("a", "a", 0o644)]);
    d.create_read_write("top", Some("base"), &CreateOptions::default())
        .unwrap();
    let root = d.get("top", None).unwrap();
    let open = std::fs::File::open(root.join("a")).unwrap();
    match d.remove("top") {
        Err(Error::Busy { attempts, .. }) => assert!(attempts > 1),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(d.exists("top"));
    assert_eq!(d.refcount("top"), 1, "the layer is still held and mounted");
    drop(open);
    d.remove("top").unwrap();
    assert!(!d.exists("top"));
    assert!(plies_testkit::mounts_under(d.root()).is_empty());
}

#[test]
fn long_paths_mount_relative() {
    if !plies_testkit::require_overlay("long_paths_mount_relative") {
        return;
    }
    let dir = common::tempdir();
    let home = dir
        .path()
        .join("h".repeat(200))
        .join("o".repeat(200))
        .join("overlay2");
    let d = Overlay2::open(&home, &Options::default()).unwrap();
    let _c = Cleanup(&d);
    let mut parent: Option<String> = None;
    for i in 0..20 {
        let id = format!("layer-{i}");
        let file = format!("f{i}");
        d.create(&id, parent.as_deref(), &CreateOptions::default())
            .unwrap();
        let tar = LayerTar::new().file(&file, "x", 0o644).finish();
        d.apply_diff(&id, parent.as_deref(), &mut tar.as_slice())
            .unwrap();
        parent = Some(id);
    }
    // 20 absolute lowers of ~470 bytes each do not fit one page.
    let t = mounted_tree(&d, "layer-19");
    assert_eq!(t.len(), 20);
    assert_eq!(
        std::env::current_dir().unwrap(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
    );
}

#[test]
fn status_rows_and_options() {
    let Some((dir, d)) = overlay2("status_rows_and_options") else {
        return;
    };
    let names: Vec<String> = d.status().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "Backing Filesystem",
            "Supports d_type",
            "Native Overlay Diff",
            "userxattr",
            "Mount Mode",
            "Max Depth"
        ]
    );
    assert_eq!(d.status()[5].1, "128");
    let expected_mode = if plies_testkit::kernel_has_lowerdir_plus() {
        "auto (legacy, fsconfig beyond its limits)"
    } else {
        "auto (legacy only: no lowerdir+)"
    };
    assert_eq!(d.status()[4].1, expected_mode);
    // A default size limit needs project quota (XFS mounted with prjquota).
    let opts = Options::parse(["overlay2.size=10G"]).unwrap();
    let sized = plies_drivers::open(dir.path(), DriverChoice::Overlay2, &opts);
    if common::project_quota_at(dir.path()) {
        sized.unwrap();
    } else {
        let err = sized.unwrap_err();
        assert!(
            matches!(err, Error::InvalidOption { ref key, .. } if key == "overlay2.size"),
            "{err}"
        );
    }
    let opts = Options::parse(["overlay2.max_depth=400"]).unwrap();
    if plies_testkit::require_kernel_feature(
        "status_rows_and_options (max_depth=400)",
        plies_testkit::kernel_has_lowerdir_plus(),
        "overlayfs lowerdir+ (Linux 6.8)",
    ) {
        let deep = plies_drivers::open(dir.path(), DriverChoice::Overlay2, &opts).unwrap();
        assert_eq!(deep.status()[5].1, "400");
    }
    assert!(matches!(
        plies_drivers::open(dir.path(), DriverChoice::Vfs, &opts),
        Err(Error::UnknownOption { .. })
    ));
}

#[test]
fn native_and_naive_agree() {
    let Some((dir, d)) = overlay2("native_and_naive_agree") else {
        return;
    };
    let _c = Cleanup(&d);
    assert!(d.native_diff(), "this kernel keeps native diffs sound");
    layer(
        &d,
        "base",
        None,
        &[
            E::Dir("d", 0o755),
            E::File("d/a", "a", 0o644),
            E::File("d/b", "b", 0o644),
        ],
    );
    layer(
        &d,
        "top",
        Some("base"),
        &[
            E::Dir("d", 0o755),
            E::Whiteout("d/a"),
            E::File("d/c", "c", 0o644),
        ],
    );
    let scratch = dir.path().join("tmp");
    let naive = plies_drivers::naive::changes(&d, "top", Some("base"), &scratch).unwrap();
    assert_eq!(d.changes("top", Some("base")).unwrap(), naive);
    assert_eq!(
        d.diff_size("top", Some("base")).unwrap(),
        plies_drivers::naive::diff_size(&d, "top", Some("base"), &scratch).unwrap()
    );
    // Against a layer that is not the parent, naive diff is used.
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut d.diff("top", None).unwrap(), &mut tar).unwrap();
    let listing = common::tar_listing(&tar);
    assert!(
        listing.iter().any(|l| l.starts_with("d/b "))
            && !listing.iter().any(|l| l.contains(".wh."))
    );
}

#[test]
fn failed_apply_leaves_the_layer_empty() {
    let Some((dir, d)) = overlay2("failed_apply_leaves_the_layer_empty") else {
        return;
    };
    let _c = Cleanup(&d);
    layer(&d, "base", None, &[E::File("a", "a", 0o644)]);
    d.create("bad", Some("base"), &CreateOptions::default())
        .unwrap();
    let tar = LayerTar::new()
        .file("ok", "ok", 0o644)
        .file("deeper/ok", "ok", 0o644)
        // A hard link out of the layer: refused.
        .hardlink("evil", "../../../etc/passwd")
        .finish();
    let err = d
        .apply_diff("bad", Some("base"), &mut tar.as_slice())
        .unwrap_err();
    assert!(matches!(err, Error::Archive { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(d.store().diff_dir("bad"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(mounted_tree(&d, "bad"), mounted_tree(&d, "base"));
    assert!(!dir.path().join("evil").exists());
}

/// An XFS image attached to a loop device and mounted with `prjquota`;
/// unmounted and detached on drop.
struct XfsLoop {
    dir: tempfile::TempDir,
    device: Option<String>,
    mounted: bool,
}

impl XfsLoop {
    fn mount_point(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }

    /// `None` when the kernel refuses `prjquota` (no XFS quota in it).
    fn new() -> Option<XfsLoop> {
        let dir = common::tempdir();
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(320 << 20))
            .unwrap();
        let mkfs = std::process::Command::new("mkfs.xfs")
            .args(["-q", "-f"])
            .arg(&image)
            .status()
            .unwrap();
        assert!(mkfs.success(), "mkfs.xfs failed");
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup failed");
        let mut fs = XfsLoop {
            dir,
            device: Some(String::from_utf8(out.stdout).unwrap().trim().to_owned()),
            mounted: false,
        };
        std::fs::create_dir(fs.mount_point()).unwrap();
        let mounted = rustix::mount::mount(
            fs.device.as_deref().unwrap(),
            fs.mount_point(),
            "xfs",
            rustix::mount::MountFlags::empty(),
            c"prjquota",
        );
        match mounted {
            Ok(()) => fs.mounted = true,
            Err(rustix::io::Errno::INVAL) => return None,
            Err(e) => panic!("mount xfs -o prjquota: {e}"),
        }
        Some(fs)
    }
}

impl Drop for XfsLoop {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(self.mount_point(), rustix::mount::UnmountFlags::DETACH);
        }
        if let Some(dev) = self.device.take() {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &dev])
                .status();
        }
    }
}

const MIB: usize = 1 << 20;

/// Writes `mib` MiB to `path` and syncs it: the first error.
fn write_mib(path: &Path, mib: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![7u8; MIB];
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

/// Writes 20 MiB into the mounted layer `id`: whether the write hit the quota.
/// XFS reports an exceeded project quota as `ENOSPC` (other quotas as
/// `EDQUOT`), so the filesystem must have room left for it to count.
fn hits_quota(d: &Overlay2, id: &str) -> bool {
    use rustix::io::Errno;
    let root = d.get(id, None).unwrap();
    let written = write_mib(&root.join("big"), 20);
    let _ = std::fs::remove_file(root.join("big"));
    d.put(id).unwrap();
    let Err(e) = written else {
        return false;
    };
    let free = rustix::fs::statvfs(d.root()).unwrap();
    let room = free.f_bavail * free.f_frsize > 100 * MIB as u64;
    let code = e.raw_os_error();
    if room
        && (code == Some(Errno::NOSPC.raw_os_error()) || code == Some(Errno::DQUOT.raw_os_error()))
    {
        return true;
    }
    panic!("writing into {id}: {e}");
}

fn size_opt(size: &str) -> CreateOptions {
    let mut opts = CreateOptions::default();
    opts.storage_opt.insert("size".into(), size.into());
    opts
}

#[test]
fn layer_sizes_are_limited_on_xfs_with_project_quota() {
    let test = "layer_sizes_are_limited_on_xfs_with_project_quota";
    let tools = ["mkfs.xfs", "losetup"]
        .iter()
        .all(|t| std::process::Command::new(t).arg("-V").output().is_ok());
    if !plies_testkit::require_overlay(test)
        || !plies_testkit::require(
            test,
            tools && plies_testkit::kernel_has_filesystem("xfs"),
            "mkfs.xfs, losetup or the xfs filesystem missing",
        )
    {
        return;
    }
    let fs = XfsLoop::new();
    if !plies_testkit::require_kernel_feature(test, fs.is_some(), "XFS quota (CONFIG_XFS_QUOTA)") {
        return;
    }
    let fs = fs.unwrap();
    let root = fs.mount_point();
    let home = root.join("overlay2");
    let project = |id: &str| plies_kprobe::quota::project_id(&home.join(id)).unwrap();

    {
        let d = Overlay2::open(&home, &Options::default()).unwrap();
        let _c = Cleanup(&d);
        assert!(common::project_quota_at(&root));
        layer(
            &d,
            "img",
            None,
            &[E::Dir("etc", 0o755), E::File("etc/motd", "hi", 0o644)],
        );

        // storage-opt size on a read-write layer: writes beyond it fail.
        d.create_read_write("sized", Some("img"), &size_opt("10M"))
            .unwrap();
        let sized = project("sized");
        assert_ne!(sized, 0);
        for dir in ["sized/diff", "sized/work"] {
            assert_eq!(project(dir), sized, "{dir}");
        }
        assert!(hits_quota(&d, "sized"));
        // Without a size, no limit.
        d.create_read_write("free", Some("img"), &CreateOptions::default())
            .unwrap();
        assert!(!hits_quota(&d, "free"));
        assert_eq!(project("free"), 0);
        // A size of 0 is none, as in Docker.
        d.create_read_write("zero", Some("img"), &size_opt("0"))
            .unwrap();
        assert!(!hits_quota(&d, "zero"));

        // Only read-write layers take a size; unknown options and bad sizes are refused.
        assert!(matches!(
            d.create("ro", Some("img"), &size_opt("10M")),
            Err(Error::StorageOptUnsupported { ref key, .. }) if key == "size"
        ));
        let mut unknown = CreateOptions::default();
        unknown.storage_opt.insert("inodes".into(), "10".into());
        assert!(matches!(
            d.create_read_write("odd", Some("img"), &unknown),
            Err(Error::StorageOptUnsupported { ref key, .. }) if key == "inodes"
        ));
        assert!(matches!(
            d.create_read_write("odd", Some("img"), &size_opt("ten")),
            Err(Error::InvalidOption { ref key, .. }) if key == "size"
        ));
        assert!(!d.exists("ro") && !d.exists("odd"));

        // Removing a layer releases its limit.
        d.remove("sized").unwrap();
        let control = plies_kprobe::quota::Control::open(&home).unwrap();
        let usage = control.project_usage(sized).unwrap();
        // Only the limits: XFS frees the removed inodes in the background (since
        // 5.19), so the project's usage drains a little later.
        assert_eq!((usage.hard_limit, usage.soft_limit), (0, 0), "{usage:?}");
    }

    // overlay2.size: the default of read-write layers, which a layer's own size
    // overrides; image layers stay unlimited. A reopened store gives new
    // projects ids nobody holds.
    let d = Overlay2::open(&home, &Options::parse(["overlay2.size=10M"]).unwrap()).unwrap();
    let _c = Cleanup(&d);
    d.create_read_write("default", Some("img"), &CreateOptions::default())
        .unwrap();
    assert!(hits_quota(&d, "default"));
    d.create_read_write("bigger", Some("img"), &size_opt("64M"))
        .unwrap();
    assert!(!hits_quota(&d, "bigger"));
    assert_ne!(project("default"), project("bigger"));
    layer(&d, "img2", Some("img"), &[E::File("x", "x", 0o644)]);
    assert_eq!(project("img2"), 0);
    let img2 = d.get("img2", None).unwrap();
    write_mib(&img2.join("big"), 20).unwrap();
    d.put("img2").unwrap();
}
