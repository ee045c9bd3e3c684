//! Real overlayfs: an applied layer's whiteouts and opaque dirs work as a
//! lower, and an upper dir's deletions export as `.wh.` entries.

#[path = "../common/mod.rs"]
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::RawTar;
use plies_archive::{ApplyOptions, ExportOptions, WhiteoutFormat, XattrNamespace, apply, export};
use plies_testkit::dir_names;
use rustix::mount::{MountFlags, UnmountFlags};

/// An overlay mount, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(target: &Path, lowers: &[&Path], upper: Option<(&Path, &Path)>) -> Mount {
        let mut data = String::new();
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            data.push_str("index=off,");
        }
        let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        data.push_str(&format!("lowerdir={}", lowers.join(":")));
        if let Some((upper, work)) = upper {
            data.push_str(&format!(
                ",upperdir={},workdir={}",
                upper.display(),
                work.display()
            ));
        }
        let data = std::ffi::CString::new(data).unwrap();
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .unwrap();
        Mount(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
    }
}

#[test]
fn applied_whiteouts_hide_lower_files() {
    if !plies_testkit::require_overlay("applied_whiteouts_hide_lower_files") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (lower, layer, merged) = (
        tmp.path().join("lower"),
        tmp.path().join("layer"),
        tmp.path().join("merged"),
    );
    std::fs::create_dir_all(lower.join("d")).unwrap();
    std::fs::create_dir_all(lower.join("gone-dir/deep")).unwrap();
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::create_dir_all(&merged).unwrap();
    for f in ["a", "keep", "d/x", "d/y", "gone-dir/deep/f"] {
        std::fs::write(lower.join(f), f).unwrap();
    }
    let tar = RawTar::new()
        .file(".wh.a", b"")
        .file(".wh.gone-dir", b"")
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"new")
        .finish();
    let opts = ApplyOptions::default()
        .with_whiteouts(WhiteoutFormat::Overlay(XattrNamespace::Trusted))
        .with_privileged(true);
    apply(tar.as_slice(), &layer, &opts).unwrap();
    {
        let _m = Mount::new(&merged, &[&layer, &lower], None);
        assert_eq!(dir_names(&merged), ["d", "keep"]);
        assert_eq!(dir_names(&merged.join("d")), ["new"]);
        assert_eq!(std::fs::read(merged.join("d/new")).unwrap(), b"new");
    }
    assert!(plies_testkit::mounts_under(tmp.path()).is_empty());
}

#[test]
fn upper_deletions_export_as_whiteouts() {
    if !plies_testkit::require_overlay("upper_deletions_export_as_whiteouts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    for d in ["lower/dir/sub", "lower/again", "upper", "work", "merged"] {
        std::fs::create_dir_all(p(d)).unwrap();
    }
    for f in ["lower/file", "lower/dir/sub/f", "lower/again/old"] {
        std::fs::write(p(f), b"lower").unwrap();
    }
    {
        let _m = Mount::new(
            &p("merged"),
            &[&p("lower")],
            Some((&p("upper"), &p("work"))),
        );
        std::fs::remove_file(p("merged/file")).unwrap();
        std::fs::remove_dir_all(p("merged/dir")).unwrap();
        std::fs::remove_dir_all(p("merged/again")).unwrap();
        std::fs::create_dir(p("merged/again")).unwrap();
        std::fs::write(p("merged/again/new"), b"upper").unwrap();
    }
    assert!(plies_testkit::mounts_under(tmp.path()).is_empty());
    let mut tar = Vec::new();
    let opts =
        ExportOptions::default().with_whiteouts(WhiteoutFormat::Overlay(XattrNamespace::Trusted));
    export(&p("upper"), &opts)
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let entries: Vec<(String, tar::EntryType, u64)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
                e.size(),
            )
        })
        .collect();
    // In the order of the names on disk, as Docker's walk emits them.
    let expect = [
        ("again/", tar::EntryType::Directory, 0),
        ("again/.wh..wh..opq", tar::EntryType::Regular, 0),
        ("again/new", tar::EntryType::Regular, 5),
        (".wh.dir", tar::EntryType::Regular, 0),
        (".wh.file", tar::EntryType::Regular, 0),
    ];
    let got: Vec<(&str, tar::EntryType, u64)> = entries
        .iter()
        .map(|(n, t, s)| (n.as_str(), *t, *s))
        .collect();
    assert_eq!(got, expect);
}

/// Hard links into aufs's `.wh..wh.plnk`, applied onto a mounted overlay (a
/// naive apply): overlayfs before Linux 6.6 has no unnamed files, so the kept
/// file is a hidden stand-in at the root there, gone once the apply ends; later
/// kernels use an unnamed file. Either way the links are one inode and nothing
/// is left behind, in the view or in the upper.
#[test]
fn aufs_plnk_links_apply_onto_a_mounted_overlay() {
    use std::os::unix::fs::MetadataExt;
    if !plies_testkit::require_overlay("aufs_plnk_links_apply_onto_a_mounted_overlay") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = |d: &str| tmp.path().join(d);
    let (lower, upper, work, merged) = (p("lower"), p("upper"), p("work"), p("merged"));
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(lower.join("base"), b"base").unwrap();
    let tar = RawTar::new()
        .dir(".wh..wh.plnk/")
        .entry(
            common::Raw::new(b".wh..wh.plnk/1234.5678", b'0')
                .data(b"shared")
                .mode(0o640),
        )
        .hardlink("a", ".wh..wh.plnk/1234.5678")
        .dir("b/")
        .hardlink("b/c", ".wh..wh.plnk/1234.5678")
        .finish();
    let opts = ApplyOptions::default()
        .with_whiteouts(WhiteoutFormat::Merged)
        .with_privileged(true);
    {
        let _m = Mount::new(&merged, &[&lower], Some((&upper, &work)));
        let stats = apply(tar.as_slice(), &merged, &opts).unwrap();
        assert_eq!(stats.skipped_aufs_meta, 2);
        assert_eq!(dir_names(&merged), ["a", "b", "base"]);
        let a = std::fs::metadata(merged.join("a")).unwrap();
        let c = std::fs::metadata(merged.join("b/c")).unwrap();
        assert_eq!(std::fs::read(merged.join("b/c")).unwrap(), b"shared");
        assert_eq!((a.ino(), a.nlink(), a.mode() & 0o7777), (c.ino(), 2, 0o640));
    }
    assert_eq!(dir_names(&upper), ["a", "b"]);
    assert!(plies_testkit::mounts_under(tmp.path()).is_empty());
}
