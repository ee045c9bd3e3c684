//! Applying well-formed layers: every entry type, metadata, replacement rules,
//! whiteouts in each target format, id maps.

#[path = "../common/mod.rs"]
mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Raw, RawTar};
use plies_archive::{ApplyOptions, IdMap, WhiteoutFormat, XattrNamespace, apply};

fn opts(whiteouts: WhiteoutFormat) -> ApplyOptions {
    ApplyOptions {
        whiteouts,
        privileged: true,
        ..ApplyOptions::default()
    }
}

fn overlay() -> ApplyOptions {
    opts(WhiteoutFormat::Overlay(XattrNamespace::Trusted))
}

#[test]
fn every_entry_type_with_metadata() {
    if !plies_testkit::require_root("every_entry_type_with_metadata") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut t = RawTar::new();
    t.pax(&[
        ("mtime", b"1600000000.123456789"),
        ("atime", b"1600000001.5"),
    ]);
    let mut d = Raw::new(b"d/", b'5').mode(0o1775);
    d.uid = 7;
    d.gid = 8;
    t.entry(d);
    t.pax(&[
        ("SCHILY.xattr.user.k", b"v\x00w"),
        ("mtime", b"1500000000.000000001"),
    ]);
    let mut f = Raw::new(b"d/f", b'0').mode(0o4755).data(b"hello");
    f.uid = 1000;
    f.gid = 1001;
    t.entry(f);
    t.hardlink("d/h", "d/f");
    t.symlink("d/s", "../nowhere");
    let mut c = Raw::new(b"d/null", b'3').mode(0o666);
    let mut h = common::header(&c);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_cksum();
    t.header(&h);
    c.ty = b'4';
    c.name = b"d/blk";
    let mut h = common::header(&c);
    h.set_device_major(7).unwrap();
    h.set_device_minor(0).unwrap();
    h.set_cksum();
    t.header(&h);
    t.entry(Raw::new(b"d/fifo", b'6').mode(0o640));
    let long = format!("d/{}", "n".repeat(200));
    t.pax(&[("path", long.as_bytes())])
        .file("short", b"long name");
    let tar = t.finish();

    let stats = apply(tar.as_slice(), tmp.path(), &overlay()).unwrap();
    assert_eq!(stats.entries, 8);
    assert_eq!(stats.size, 5 + 9);
    assert_eq!(stats.bytes, tar.len() as u64);
    let r = tmp.path();
    let m = std::fs::symlink_metadata(r.join("d")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o1775, 7, 8));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!((m.atime(), m.atime_nsec()), (1_600_000_001, 500_000_000));
    let m = std::fs::symlink_metadata(r.join("d/f")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.nlink()),
        (0o4755, 1000, 1001, 2)
    );
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 1));
    assert_eq!(
        xattr::get(r.join("d/f"), "user.k").unwrap().unwrap(),
        b"v\x00w"
    );
    assert_eq!(std::fs::read(r.join("d/h")).unwrap(), b"hello");
    assert_eq!(std::fs::metadata(r.join("d/h")).unwrap().ino(), m.ino());
    assert_eq!(
        std::fs::read_link(r.join("d/s")).unwrap(),
        Path::new("../nowhere")
    );
    let m = std::fs::symlink_metadata(r.join("d/null")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(
        (m.rdev(), m.mode() & 0o7777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    let m = std::fs::symlink_metadata(r.join("d/blk")).unwrap();
    assert!(m.file_type().is_block_device());
    assert_eq!(m.rdev(), rustix::fs::makedev(7, 0));
    let m = std::fs::symlink_metadata(r.join("d/fifo")).unwrap();
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(r.join(&long)).unwrap(), b"long name");
}

#[test]
fn later_entries_replace_earlier_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = RawTar::new()
        .dir("a/")
        .file("a/inner", b"gone")
        .file("a", b"file over dir")
        .file("b", b"plain")
        .dir("b/")
        .file("b/x", b"dir over file")
        .dir("c/")
        .file("c/keep", b"kept")
        .entry(Raw::new(b"c/", b'5').mode(0o700))
        .file("c/new", b"merged")
        .finish();
    apply(tar.as_slice(), tmp.path(), &overlay()).unwrap();
    let r = tmp.path();
    assert_eq!(std::fs::read(r.join("a")).unwrap(), b"file over dir");
    assert_eq!(std::fs::read(r.join("b/x")).unwrap(), b"dir over file");
    assert_eq!(std::fs::read(r.join("c/keep")).unwrap(), b"kept");
    assert_eq!(std::fs::read(r.join("c/new")).unwrap(), b"merged");
    assert_eq!(
        std::fs::metadata(r.join("c")).unwrap().permissions().mode() & 0o7777,
        0o700
    );
}

#[test]
fn missing_parents_are_made() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = RawTar::new().file("x/y/z", b"deep").finish();
    apply(tar.as_slice(), tmp.path(), &overlay()).unwrap();
    let m = std::fs::metadata(tmp.path().join("x/y")).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(tmp.path().join("x/y/z")).unwrap(), b"deep");
}

fn whiteout_layer() -> Vec<u8> {
    RawTar::new()
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"n")
        .file(".wh.gone", b"")
        .file("e/.wh.old", b"")
        .finish()
}

#[test]
fn overlay_whiteouts() {
    if !plies_testkit::require_root("overlay_whiteouts") {
        return;
    }
    for ns in [XattrNamespace::Trusted, XattrNamespace::User] {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        std::fs::write(r.join("gone"), b"from an earlier apply").unwrap();
        let stats = apply(
            whiteout_layer().as_slice(),
            r,
            &opts(WhiteoutFormat::Overlay(ns)),
        )
        .unwrap();
        assert_eq!(stats.whiteouts, 3);
        for wh in ["gone", "e/old"] {
            let m = std::fs::symlink_metadata(r.join(wh)).unwrap();
            assert!(m.file_type().is_char_device() && m.rdev() == 0, "{wh}");
        }
        assert!(!r.join(".wh.gone").exists());
        assert!(!r.join("d/.wh..wh..opq").exists());
        assert_eq!(
            xattr::get(r.join("d"), ns.opaque_key()).unwrap().unwrap(),
            b"y"
        );
        assert_eq!(std::fs::read(r.join("d/new")).unwrap(), b"n");
    }
}

#[test]
fn aufs_whiteouts_stay_files() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    apply(whiteout_layer().as_slice(), r, &opts(WhiteoutFormat::Aufs)).unwrap();
    for f in [".wh.gone", "e/.wh.old", "d/.wh..wh..opq"] {
        assert!(
            std::fs::symlink_metadata(r.join(f)).unwrap().is_file(),
            "{f}"
        );
    }
    assert!(!r.join("gone").exists());
}

#[test]
fn merged_whiteouts_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    std::fs::write(r.join("gone"), b"lower").unwrap();
    std::fs::create_dir_all(r.join("d/sub")).unwrap();
    std::fs::write(r.join("d/sub/lower"), b"lower").unwrap();
    std::fs::write(r.join("d/lower"), b"lower").unwrap();
    std::fs::create_dir_all(r.join("e")).unwrap();
    std::fs::write(r.join("e/old"), b"lower").unwrap();
    std::fs::write(r.join("e/stays"), b"lower").unwrap();
    apply(
        whiteout_layer().as_slice(),
        r,
        &opts(WhiteoutFormat::Merged),
    )
    .unwrap();
    let names = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(r.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("."), ["d", "e"]);
    assert_eq!(names("d"), ["new"]);
    assert_eq!(names("e"), ["stays"]);
}

#[test]
fn id_maps_shift_owners() {
    if !plies_testkit::require_root("id_maps_shift_owners") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut f = Raw::new(b"a/f", b'0');
    f.uid = 1000;
    f.gid = 2;
    let tar = RawTar::new().entry(f).finish();
    let map = vec![IdMap {
        container_id: 0,
        host_id: 100_000,
        size: 65536,
    }];
    let o = ApplyOptions {
        uid_map: map.clone(),
        gid_map: map,
        ..overlay()
    };
    apply(tar.as_slice(), tmp.path(), &o).unwrap();
    let m = std::fs::metadata(tmp.path().join("a/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (101_000, 100_002));
    // The implicit parent belongs to the container's root.
    let m = std::fs::metadata(tmp.path().join("a")).unwrap();
    assert_eq!((m.uid(), m.gid()), (100_000, 100_000));
}

#[test]
fn global_pax_headers_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = RawTar::new();
    t.entry(Raw::new(b"pax_global_header", b'g').data(b"20 comment=whatever\n"));
    let tar = t.file("a", b"x").finish();
    let stats = apply(tar.as_slice(), tmp.path(), &overlay()).unwrap();
    assert_eq!(stats.entries, 1);
    assert_eq!(std::fs::read(tmp.path().join("a")).unwrap(), b"x");
}

#[test]
fn root_entry_sets_root_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    std::fs::create_dir(&root).unwrap();
    let tar = RawTar::new()
        .entry(Raw::new(b"./", b'5').mode(0o711))
        .file("./a", b"")
        .finish();
    apply(tar.as_slice(), &root, &overlay()).unwrap();
    let m = std::fs::metadata(&root).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o711, 1_600_000_000));
}
