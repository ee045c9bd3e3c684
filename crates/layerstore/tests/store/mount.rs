//! Real overlayfs over the store's metadata, and removal refusing a live mount.

use std::path::{Path, PathBuf};
use std::process::Command;

use plies_layerstore::Error;

use crate::store;

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount(fstype: &str, data: &str, target: &Path) -> Mounted {
    std::fs::create_dir_all(target).unwrap();
    let status = Command::new("mount")
        .args(["-t", fstype, "-o", data, fstype])
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success(), "mount {fstype} {data}");
    Mounted(target.to_path_buf())
}

#[test]
fn metadata_mounts_as_overlay_and_remove_refuses_a_live_mount() {
    if !plies_testkit::require_overlay("metadata_mounts_as_overlay_and_remove_refuses_a_live_mount")
    {
        return;
    }
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    std::fs::write(s.diff_dir("a").join("from-a"), b"a").unwrap();
    s.mark_committed("a").unwrap();
    s.create("b", Some("a")).unwrap();
    let m = s.metadata("b").unwrap();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        m.lower_dir.as_deref().unwrap(),
        m.upper_dir.display(),
        m.work_dir.display()
    );
    let guard = mount("overlay", &data, &m.merged_dir);
    assert_eq!(std::fs::read(m.merged_dir.join("from-a")).unwrap(), b"a");
    std::fs::write(m.merged_dir.join("from-b"), b"b").unwrap();
    assert_eq!(std::fs::read(s.diff_dir("b").join("from-b")).unwrap(), b"b");
    match s.remove("b") {
        Err(Error::Io { path, source, .. }) => {
            assert_eq!(path, m.merged_dir);
            assert_eq!(
                source.raw_os_error(),
                Some(rustix::io::Errno::BUSY.raw_os_error())
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(s.exists("b"));
    assert_eq!(std::fs::read(s.diff_dir("b").join("from-b")).unwrap(), b"b");
    drop(guard);
    assert!(plies_testkit::mounts_under(s.home()).is_empty());
    s.remove("b").unwrap();
    s.remove("a").unwrap();
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn remove_never_descends_into_a_mount() {
    if !plies_testkit::require_root("remove_never_descends_into_a_mount") {
        return;
    }
    let (tmp, s) = store();
    s.create("a", None).unwrap();
    // A mount deep in the diff (not the merged dir): removal stops at it.
    let inside = s.diff_dir("a").join("sub/mnt");
    let mut guard = mount("tmpfs", "size=1m", &inside);
    std::fs::write(inside.join("precious"), b"p").unwrap();
    let result = s.remove("a");
    // The rename moved the mount along with the layer.
    let moved = tmp.path().join("overlay2/a-removing/diff/sub/mnt");
    if moved.exists() {
        guard.0 = moved.clone();
    }
    assert!(result.is_err(), "{result:?}");
    assert_eq!(std::fs::read(moved.join("precious")).unwrap(), b"p");
    drop(guard);
    s.remove("a").unwrap();
    assert_eq!(s.list().unwrap(), Vec::<String>::new());
    assert!(s.fsck(false).unwrap().is_clean());
}
