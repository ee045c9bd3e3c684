//! Applying well-formed layers: every entry type, metadata, replacement rules,
//! whiteouts in each target format, id maps.

#[path = "../common/mod.rs"]
mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{Raw, RawTar};
use plies_archive::{ApplyOptions, IdMap, WhiteoutFormat, XattrNamespace, apply};
use plies_testkit::tree::{Record, snapshot};

fn opts(whiteouts: WhiteoutFormat) -> ApplyOptions {
    ApplyOptions::default()
        .with_whiteouts(whiteouts)
        .with_privileged(true)
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
    let o = overlay().with_uid_map(map.clone()).with_gid_map(map);
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

#[test]
fn pax_xattr_value_may_hold_newlines() {
    let tmp = tempfile::tempdir().unwrap();
    let value = b"line\nbreak\0and\xffbinary\n";
    let tar = RawTar::new()
        .pax(&[
            ("SCHILY.xattr.user.blob", value),
            ("mtime", b"1700000000.25"),
        ])
        .file("f", b"data")
        .finish();
    let stats = apply(tar.as_slice(), tmp.path(), &overlay()).unwrap();
    assert_eq!((stats.entries, stats.skipped_xattrs), (1, 0));
    let f = tmp.path().join("f");
    assert_eq!(xattr::get(&f, "user.blob").unwrap().unwrap(), value);
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 250_000_000));
    assert_eq!(std::fs::read(&f).unwrap(), b"data");
}

#[test]
fn pax_path_may_hold_a_newline() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = RawTar::new()
        .dir("d/")
        .pax(&[("path", b"d/two\nlines"), ("linkpath", b"../x\ny")])
        .symlink("ignored", "ignored")
        .pax(&[("path", b"d/new\nline")])
        .file("ignored-too", b"x")
        .finish();
    apply(tar.as_slice(), tmp.path(), &overlay()).unwrap();
    let names: Vec<Vec<u8>> = {
        let mut v: Vec<_> = std::fs::read_dir(tmp.path().join("d"))
            .unwrap()
            .map(|e| {
                std::os::unix::ffi::OsStrExt::as_bytes(e.unwrap().file_name().as_os_str()).to_vec()
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(names, [b"new\nline".to_vec(), b"two\nlines".to_vec()]);
    assert_eq!(std::fs::read(tmp.path().join("d/new\nline")).unwrap(), b"x");
    assert_eq!(
        std::fs::read_link(tmp.path().join("d/two\nlines")).unwrap(),
        Path::new("../x\ny")
    );
}

#[test]
fn pax_size_and_owner_override_the_header() {
    if !plies_testkit::require_root("pax_size_and_owner_override_the_header") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut t = RawTar::new();
    t.pax(&[("size", b"11"), ("uid", b"3000000000"), ("gid", b"7")]);
    // The header says 0 bytes; the PAX size is what the data holds.
    let mut h = common::header(&Raw::new(b"f", b'0'));
    h.set_size(0);
    h.set_cksum();
    t.header(&h).data(b"hello world");
    let tar = t.file("g", b"next").finish();
    apply(tar.as_slice(), tmp.path(), &overlay()).unwrap();
    let f = tmp.path().join("f");
    assert_eq!(std::fs::read(&f).unwrap(), b"hello world");
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!((m.uid(), m.gid()), (3_000_000_000, 7));
    assert_eq!(std::fs::read(tmp.path().join("g")).unwrap(), b"next");
}

/// A layer with files of every size class, some larger than any buffer.
fn mixed_layer() -> Vec<u8> {
    let mut t = RawTar::new();
    t.dir("d/");
    let mut seed = 7u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 56) as u8
            })
            .collect()
    };
    for (i, size) in [0, 1, 511, 512, 513, 40_000, 65_536, 200_001, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let data = bytes(size);
        t.file(&format!("d/f{i}"), &data);
        t.dir(&format!("d/sub{i}/"));
        t.file(&format!("d/sub{i}/g"), &data[..size / 3]);
    }
    t.finish()
}

#[test]
fn apply_file_gives_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = mixed_layer();
    let by_reader = tmp.path().join("reader");
    let by_file = tmp.path().join("file");
    std::fs::create_dir(&by_reader).unwrap();
    std::fs::create_dir(&by_file).unwrap();
    let a = apply(layer.as_slice(), &by_reader, &overlay()).unwrap();
    // The tar starts partway into the file: apply_file reads from the file's position.
    let path = tmp.path().join("layer.bin");
    let mut content = b"not part of the layer".to_vec();
    content.extend_from_slice(&layer);
    std::fs::write(&path, &content).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(21)).unwrap();
    let b = plies_archive::apply_file(&file, &by_file, &overlay()).unwrap();
    assert_eq!(a, b);
    assert_eq!(b.bytes, layer.len() as u64);
    assert_eq!(
        snapshot(&by_reader, &Record::EXACT),
        snapshot(&by_file, &Record::EXACT)
    );
    // Read to the end, as apply does.
    assert_eq!(
        std::io::Seek::stream_position(&mut file).unwrap(),
        content.len() as u64
    );
}

#[test]
fn apply_file_reports_truncation_inside_large_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layer = mixed_layer();
    // The layer ends with the 3 MiB file, a directory, its 1 MiB file and the
    // end marker: cut the last 1 MiB of the large file's data too.
    layer.truncate(layer.len() - 1024 - 512 - 512 - (1 << 20) - (1 << 20));
    let path = tmp.path().join("layer.tar");
    std::fs::write(&path, &layer).unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let r = plies_archive::apply_file(&file, &root, &overlay());
    match r {
        Err(plies_archive::Error::Entry {
            entry,
            reason: plies_archive::EntryError::Truncated { expected, got },
        }) => {
            assert_eq!(entry, Path::new("d/f8"));
            assert_eq!((expected, got), (3 << 20, 2 << 20));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn owners_are_set_under_a_setgid_directory() {
    if !plies_testkit::require_root("owners_are_set_under_a_setgid_directory") {
        return;
    }
    // Files made in a set-group-ID directory take its group: an entry owned
    // by root:root must still end up root:root.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(0), Some(4242)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let mut t = RawTar::new();
    t.file("d/f", b"x");
    t.symlink("d/l", "f");
    t.dir("d/sub/");
    let mut mine = Raw::new(b"d/g", b'0').data(b"y");
    mine.gid = 4242;
    t.entry(mine);
    let tar = t.finish();
    apply(tar.as_slice(), tmp.path(), &overlay()).unwrap();
    for (name, gid) in [("d/f", 0), ("d/l", 0), ("d/sub", 0), ("d/g", 4242)] {
        let m = std::fs::symlink_metadata(tmp.path().join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, gid), "{name}");
    }
}
