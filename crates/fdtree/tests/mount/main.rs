//! Mount points in a tree being removed (root needed to mount).

use std::fs;
use std::path::{Path, PathBuf};

use plies_fdtree::{Error, MAX_OPEN_DEPTH, remove_tree};
use plies_testkit::dir_names;
use rustix::io::Errno;

/// A tmpfs mounted at a path, unmounted on drop so a failing test leaves no
/// mount behind.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: &Path) -> Mounted {
        fs::create_dir_all(at).unwrap();
        rustix::mount::mount(
            "tmpfs",
            at,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            c"size=1m",
        )
        .unwrap();
        fs::write(at.join("precious"), b"p").unwrap();
        Mounted(at.to_path_buf())
    }

    fn untouched(&self) -> bool {
        fs::read(self.0.join("precious")).is_ok_and(|p| p == b"p")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Removes `name` under `dir`, which must stop at the mount point `at`
/// (relative to `dir`); then, once `mount` is gone, removes it all.
fn stops_at(dir: &Path, name: &str, at: &Path, mount: Mounted) {
    let handle = fs::File::open(dir).unwrap();
    let err = remove_tree(&handle, name).unwrap_err();
    assert!(matches!(err, Error::MountPoint { .. }), "{err}");
    assert_eq!(err.path(), at);
    assert_eq!(err.errno(), Errno::BUSY);
    assert!(mount.untouched());
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::ResourceBusy
    );
    drop(mount);
    remove_tree(&handle, name).unwrap();
    assert!(dir_names(dir).is_empty());
}

#[test]
fn a_mount_point_in_the_tree_stops_the_removal() {
    if !plies_testkit::require_root("a_mount_point_in_the_tree_stops_the_removal") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mount = Mounted::tmpfs(&tmp.path().join("t/sub/mnt"));
    fs::write(tmp.path().join("t/sub/file"), b"f").unwrap();
    stops_at(tmp.path(), "t", Path::new("t/sub/mnt"), mount);
}

#[test]
fn a_mount_point_too_deep_to_enter_is_not_moved_either() {
    if !plies_testkit::require_root("a_mount_point_too_deep_to_enter_is_not_moved_either") {
        return;
    }
    // The mount point's parent is the deepest directory held open: the mount
    // point would be moved up to the top, and a mount point does not move.
    let tmp = tempfile::tempdir().unwrap();
    let parent: PathBuf = std::iter::once("t")
        .chain(std::iter::repeat_n("d", MAX_OPEN_DEPTH - 1))
        .collect();
    let at = parent.join("mnt");
    let mount = Mounted::tmpfs(&tmp.path().join(&at));
    stops_at(tmp.path(), "t", &at, mount);
}
