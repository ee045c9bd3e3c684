//! overlay2 behaviour beyond the conformance suite: mount options, read-only
//! parents, failed mounts, busy removal, relative mount data, status rows.

#[path = "../common/mod.rs"]
mod common;

use std::path::Path;

use common::{E, layer, mounted_tree};
use plies_drivers::{CreateOptions, Driver, DriverChoice, Error, Options, Overlay2};

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
        let tar = common::layer_tar(&[E::File(Box::leak(file.into_boxed_str()), "x", 0o644)]);
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
    let opts = Options::parse(["overlay2.size=10G"]).unwrap();
    let err = plies_drivers::open(dir.path(), DriverChoice::Overlay2, &opts).unwrap_err();
    assert!(
        matches!(err, Error::InvalidOption { ref key, .. } if key == "overlay2.size"),
        "{err}"
    );
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
    let mut b = tar::Builder::new(Vec::new());
    for name in ["ok", "deeper/ok"] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, name, &b"ok"[..]).unwrap();
    }
    // A hard link out of the layer: refused.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    let mut tar = b.into_inner().unwrap();
    tar.truncate(tar.len() - 1024);
    let mut b = tar::Builder::new(tar);
    b.append_link(&mut h, "evil", "../../../etc/passwd")
        .unwrap();
    let tar = b.into_inner().unwrap();
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
