//! Interoperability with GNU tar: archives it makes apply exactly as it
//! extracts them, and what we export it extracts to the same tree.

#[path = "../common/mod.rs"]
mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use plies_archive::{ApplyOptions, ExportOptions, WhiteoutFormat, XattrNamespace, apply, export};
use plies_testkit::tree::{Record, snapshot};
use rustix::fs::{CWD, FileType, Mode};

fn have_gnu_tar(test: &str) -> bool {
    let ok = Command::new("tar")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar"));
    plies_testkit::require_root(test)
        && plies_testkit::require(test, ok, "GNU tar is not installed")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tree with one of everything a layer holds.
fn build_tree(r: &Path) {
    let w = |p: &str, data: &[u8], mode: u32| {
        std::fs::write(r.join(p), data).unwrap();
        rustix::fs::chmod(r.join(p).as_path(), Mode::from_raw_mode(mode)).unwrap();
    };
    std::fs::create_dir_all(r.join("d/sub")).unwrap();
    std::fs::create_dir(r.join("e")).unwrap();
    rustix::fs::chmod(r.join("d/sub").as_path(), Mode::from_raw_mode(0o2775)).unwrap();
    rustix::fs::chmod(r.join("e").as_path(), Mode::from_raw_mode(0o700)).unwrap();
    w("d/f", b"plain file\n", 0o644);
    std::os::unix::fs::lchown(r.join("d/f"), Some(1000), Some(1001)).unwrap();
    xattr::set(r.join("d/f"), "user.note", b"value").unwrap();
    xattr::set(r.join("d/sub"), "user.dir", b"x").unwrap();
    w("d/suid", b"#!/bin/sh\n", 0o4755);
    w(
        &format!("d/sub/{}", "long".repeat(40)),
        &vec![7u8; 70_000],
        0o600,
    );
    std::os::unix::fs::symlink("f", r.join("d/link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", r.join("abs")).unwrap();
    std::fs::hard_link(r.join("d/f"), r.join("d/hard")).unwrap();
    rustix::fs::mknodat(
        CWD,
        r.join("d/fifo").as_path(),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        r.join("d/null").as_path(),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    let s = std::fs::File::create(r.join("sparse")).unwrap();
    s.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&s, b"middle", 4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&s, b"end", (8 << 20) - 3).unwrap();
    drop(s);
    for (i, p) in [
        "d/sub", "d/f", "d/suid", "sparse", "d/fifo", "d/null", "e", "d",
    ]
    .iter()
    .enumerate()
    {
        plies_testkit::set_times(
            &r.join(p),
            1_600_000_000 + i as i64,
            123_456_789 * (i as i64 % 3),
        );
    }
}

/// A tree archived by GNU tar in `format` (with `--sparse-version` for posix
/// when given) applies as GNU tar extracts it.
fn gnu_tar_archive(format: &str, sparse_version: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, ours, theirs) = (
        tmp.path().join("src"),
        tmp.path().join("ours"),
        tmp.path().join("theirs"),
    );
    for d in [&src, &ours, &theirs] {
        std::fs::create_dir(d).unwrap();
    }
    build_tree(&src);
    let archive = tmp.path().join("a.tar");
    let mut create = Command::new("tar");
    create
        .args([
            &format!("--format={format}"),
            "--numeric-owner",
            "--sparse",
            "-C",
        ])
        .arg(&src)
        .arg("-cf")
        .arg(&archive);
    if format == "posix" {
        create.arg("--xattrs");
    }
    if let Some(version) = sparse_version {
        create.arg(format!("--sparse-version={version}"));
    }
    run(create.arg("."));
    let mut extract = Command::new("tar");
    extract
        .args(["--numeric-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&theirs);
    if format == "posix" {
        extract.args(["--xattrs", "--xattrs-include=*"]);
    }
    run(&mut extract);
    let opts = ApplyOptions::default()
        .with_whiteouts(WhiteoutFormat::Overlay(XattrNamespace::Trusted))
        .with_privileged(true);
    apply(std::fs::File::open(&archive).unwrap(), &ours, &opts).unwrap();
    assert_eq!(
        snapshot(&ours, &Record::EXACT),
        snapshot(&theirs, &Record::EXACT)
    );
    if format == "posix" {
        assert_eq!(
            xattr::get(ours.join("d/f"), "user.note").unwrap().unwrap(),
            b"value"
        );
    }
    let m = std::fs::metadata(ours.join("sparse")).unwrap();
    assert_eq!(m.len(), 8 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "holes not kept: {} blocks",
        m.blocks()
    );
    let (a, b) = (
        std::fs::metadata(&ours).unwrap(),
        std::fs::metadata(&theirs).unwrap(),
    );
    assert_eq!((a.mode(), a.mtime()), (b.mode(), b.mtime()));
}

#[test]
fn gnu_tar_posix_archive_applies_like_gnu_tar_extracts() {
    if have_gnu_tar("gnu_tar_posix_archive_applies_like_gnu_tar_extracts") {
        gnu_tar_archive("posix", None);
    }
}

#[test]
fn gnu_tar_sparse_formats_apply_like_gnu_tar_extracts() {
    if have_gnu_tar("gnu_tar_sparse_formats_apply_like_gnu_tar_extracts") {
        for version in ["0.0", "0.1", "1.0"] {
            gnu_tar_archive("posix", Some(version));
        }
    }
}

#[test]
fn gnu_tar_gnu_archive_applies_like_gnu_tar_extracts() {
    if have_gnu_tar("gnu_tar_gnu_archive_applies_like_gnu_tar_extracts") {
        gnu_tar_archive("gnu", None);
    }
}

#[test]
fn export_extracts_with_gnu_tar() {
    if !have_gnu_tar("export_extracts_with_gnu_tar") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, theirs) = (tmp.path().join("src"), tmp.path().join("theirs"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&theirs).unwrap();
    build_tree(&src);
    let archive = tmp.path().join("x.tar");
    let mut reader = export(&src, &ExportOptions::default()).unwrap();
    std::io::copy(&mut reader, &mut std::fs::File::create(&archive).unwrap()).unwrap();
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&theirs));
    assert_eq!(
        snapshot(&src, &Record::EXACT),
        snapshot(&theirs, &Record::EXACT)
    );
}

#[test]
fn exported_whiteouts_are_wh_files_for_gnu_tar() {
    if !have_gnu_tar("exported_whiteouts_are_wh_files_for_gnu_tar") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, theirs) = (tmp.path().join("src"), tmp.path().join("theirs"));
    std::fs::create_dir_all(src.join("op/kept")).unwrap();
    std::fs::create_dir(&theirs).unwrap();
    let ns = XattrNamespace::Trusted;
    xattr::set(src.join("op"), ns.opaque_key(), b"y").unwrap();
    plies_whiteout::create_overlay_whiteout(
        std::fs::File::open(&src).unwrap(),
        std::ffi::OsStr::new("gone"),
    )
    .unwrap();
    let mut tar = Vec::new();
    export(
        &src,
        &ExportOptions::default().with_whiteouts(WhiteoutFormat::Overlay(ns)),
    )
    .unwrap()
    .read_to_end(&mut tar)
    .unwrap();
    let archive = tmp.path().join("x.tar");
    std::fs::write(&archive, &tar).unwrap();
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        ".wh.gone\nop/\nop/.wh..wh..opq\nop/kept/\n"
    );
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&theirs));
    assert!(
        std::fs::symlink_metadata(theirs.join(".wh.gone"))
            .unwrap()
            .is_file()
    );
    assert!(
        xattr::get(theirs.join("op"), ns.opaque_key())
            .unwrap()
            .is_none()
    );
}

const TIB: u64 = 1 << 40;

/// Sparse files of every shape, a terabyte long one among them, and a dense
/// file: under 300 KiB of data.
fn build_sparse_tree(r: &Path) {
    let (a, b) = (common::pattern(8192, 1), common::pattern(64 << 10, 2));
    common::sparse_file(&r.join("big"), TIB, &[(0, &a), (TIB / 2, &b)]);
    std::fs::create_dir(r.join("d")).unwrap();
    common::sparse_file(&r.join("d/head-hole"), 8 << 20, &[((8 << 20) - 4096, &a)]);
    common::sparse_file(&r.join("d/holes-only"), 1 << 20, &[]);
    common::sparse_file(
        &r.join("d/middle"),
        8 << 20,
        &[(0, &a), (4 << 20, &b), ((8 << 20) - 8192, &a)],
    );
    common::sparse_file(&r.join("d/tail-hole"), 8 << 20, &[(0, &b)]);
    std::fs::write(r.join("d/dense"), common::pattern(70_000, 3)).unwrap();
}

const SPARSE_FILES: [&str; 5] = [
    "big",
    "d/head-hole",
    "d/holes-only",
    "d/middle",
    "d/tail-hole",
];

#[test]
fn sparse_export_extracts_with_gnu_tar() {
    if !have_gnu_tar("sparse_export_extracts_with_gnu_tar") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (src, theirs) = (tmp.path().join("src"), tmp.path().join("theirs"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&theirs).unwrap();
    build_sparse_tree(&src);
    std::fs::hard_link(src.join("d/tail-hole"), src.join("d/z-hard")).unwrap();
    let archive = tmp.path().join("x.tar");
    let mut reader = export(&src, &ExportOptions::default()).unwrap();
    std::io::copy(&mut reader, &mut std::fs::File::create(&archive).unwrap()).unwrap();
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(size < 320 << 10, "{size} bytes");
    run(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&archive)
        .arg("-C")
        .arg(&theirs));
    for name in SPARSE_FILES.iter().chain(&["d/dense", "d/z-hard"]) {
        common::assert_same_content(&src.join(name), &theirs.join(name));
    }
    for name in SPARSE_FILES {
        let held = common::allocated(&theirs.join(name));
        assert!(held < 1 << 20, "{name}: {held} bytes allocated");
    }
    let (a, b) = (
        std::fs::metadata(theirs.join("d/tail-hole")).unwrap(),
        std::fs::metadata(theirs.join("d/z-hard")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    // Nothing but the real files: no placeholder directories.
    let mut top: Vec<_> = std::fs::read_dir(&theirs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["big", "d"]);
}

/// A sparse entry: real name, PAX sparse records but the name, stored data.
type SparseEntry = (String, Vec<(String, Vec<u8>)>, Vec<u8>);

/// The sparse entries of the tar at `tar`, by name.
fn sparse_entries(tar: &Path) -> Vec<SparseEntry> {
    let mut archive = tar::Archive::new(std::fs::File::open(tar).unwrap());
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let records: Vec<(String, Vec<u8>)> = match e.pax_extensions().unwrap() {
            Some(p) => p
                .map(|x| {
                    let x = x.unwrap();
                    (x.key().unwrap().to_string(), x.value_bytes().to_vec())
                })
                .filter(|(k, _)| k.starts_with("GNU.sparse."))
                .collect(),
            None => Vec::new(),
        };
        let Some((_, name)) = records.iter().find(|(k, _)| k == "GNU.sparse.name") else {
            continue;
        };
        let name = String::from_utf8(name.clone()).unwrap();
        let name = name.strip_prefix("./").unwrap_or(&name).to_string();
        let records = records
            .into_iter()
            .filter(|(k, _)| k != "GNU.sparse.name")
            .collect();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((name, records, data));
    }
    out.sort();
    out
}

#[test]
fn sparse_export_stores_what_gnu_tar_stores() {
    if !have_gnu_tar("sparse_export_stores_what_gnu_tar_stores") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_sparse_tree(&src);
    let ours = tmp.path().join("ours.tar");
    export(&src, &ExportOptions::default())
        .unwrap()
        .write_to(std::fs::File::create(&ours).unwrap())
        .unwrap();
    let theirs = tmp.path().join("gnu.tar");
    run(Command::new("tar")
        .args(["--format=posix", "--sparse", "-C"])
        .arg(&src)
        .arg("-cf")
        .arg(&theirs)
        .arg("."));
    let ours = sparse_entries(&ours);
    let names: Vec<&str> = ours.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, SPARSE_FILES);
    // The same format version and size, and the same map and data, byte for byte.
    assert!(ours == sparse_entries(&theirs));
}
