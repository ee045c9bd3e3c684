use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use plies_testkit::dir_names;
use rustix::fs::{Mode, OFlags, mkdirat, openat};
use rustix::io::Errno;

use super::{remove_tree, remove_tree_holding};
use crate::Error;

fn open(path: &Path) -> fs::File {
    fs::File::open(path).unwrap()
}

/// `dir/name`, then `depth` directories `d` one inside the other, each holding
/// a file `f` and a symlink `up` to `..`; made by handle, so that no path is
/// longer than a name.
fn make_deep(dir: &Path, name: &str, depth: usize) {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let file_flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
    let base = open(dir);
    mkdirat(&base, name, Mode::from_raw_mode(0o755)).unwrap();
    let mut cur: OwnedFd = openat(&base, name, dir_flags, Mode::empty()).unwrap();
    for _ in 0..depth {
        drop(openat(&cur, "f", file_flags, Mode::from_raw_mode(0o644)).unwrap());
        rustix::fs::symlinkat("..", &cur, "up").unwrap();
        mkdirat(&cur, "d", Mode::from_raw_mode(0o755)).unwrap();
        cur = openat(&cur, "d", dir_flags, Mode::empty()).unwrap();
    }
}

#[test]
fn removes_every_kind_of_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("t");
    fs::create_dir_all(t.join("a/b/c")).unwrap();
    fs::create_dir(t.join("empty")).unwrap();
    fs::write(t.join("a/file"), b"x").unwrap();
    fs::write(t.join("a/b/c/file"), b"y").unwrap();
    fs::hard_link(t.join("a/file"), t.join("a/b/link")).unwrap();
    symlink("a/file", t.join("rel")).unwrap();
    symlink("/nonexistent/dangling", t.join("a/b/dangling")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        t.join("fifo"),
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    fs::write(tmp.path().join("beside"), b"kept").unwrap();
    if rustix::process::geteuid().is_root() {
        // Emptying a read-only directory takes CAP_DAC_OVERRIDE, as root has.
        fs::set_permissions(t.join("a/b/c"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    remove_tree(open(tmp.path()), "t").unwrap();
    assert_eq!(dir_names(tmp.path()), ["beside"]);
}

#[test]
fn a_missing_name_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    remove_tree(open(tmp.path()), "missing").unwrap();
    // Nor is the removal of what is already gone, one level down.
    fs::create_dir(tmp.path().join("d")).unwrap();
    remove_tree(open(tmp.path()), "d").unwrap();
    remove_tree(open(tmp.path()), "d").unwrap();
    assert!(dir_names(tmp.path()).is_empty());
}

#[test]
fn a_file_or_a_symlink_at_the_top_goes_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), b"p").unwrap();
    fs::write(tmp.path().join("file"), b"f").unwrap();
    symlink(&outside, tmp.path().join("link")).unwrap();

    let dir = open(tmp.path());
    remove_tree(&dir, "file").unwrap();
    remove_tree(&dir, "link").unwrap();
    assert_eq!(dir_names(tmp.path()), ["outside"]);
    assert_eq!(dir_names(&outside), ["precious"]);
}

#[test]
fn symlinks_in_the_tree_are_removed_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("precious"), b"p").unwrap();
    fs::write(outside.join("sub/also"), b"a").unwrap();
    let t = tmp.path().join("t");
    fs::create_dir_all(t.join("deeper")).unwrap();
    // To a directory, absolute and relative, to a file, and up out of the tree.
    symlink(&outside, t.join("abs")).unwrap();
    symlink("../../outside", t.join("deeper/rel")).unwrap();
    symlink(outside.join("precious"), t.join("deeper/file")).unwrap();
    symlink("..", t.join("deeper/up")).unwrap();

    remove_tree(open(tmp.path()), "t").unwrap();
    assert_eq!(dir_names(tmp.path()), ["outside"]);
    assert_eq!(dir_names(&outside), ["precious", "sub"]);
    assert_eq!(dir_names(&outside.join("sub")), ["also"]);
}

#[test]
fn a_tree_deeper_than_a_path_can_name() {
    // 3000 levels of `d/`: 6000 bytes of path, past PATH_MAX.
    let tmp = tempfile::tempdir().unwrap();
    make_deep(tmp.path(), "t", 3000);
    fs::write(tmp.path().join("beside"), b"kept").unwrap();
    remove_tree(open(tmp.path()), "t").unwrap();
    assert_eq!(dir_names(tmp.path()), ["beside"]);
}

#[test]
fn deep_directories_move_up_and_go_from_there() {
    let tmp = tempfile::tempdir().unwrap();
    make_deep(tmp.path(), "t", 300);
    // A name the moves would take is taken already.
    fs::write(tmp.path().join("t/.hoisted-1"), b"mine").unwrap();
    fs::create_dir(tmp.path().join("t/.hoisted-2")).unwrap();
    for max_open in [2, 3, 7] {
        let name = format!("t{max_open}");
        make_deep(tmp.path(), &name, 100);
        remove_tree_holding(open(tmp.path()).as_fd(), name.as_ref(), max_open).unwrap();
    }
    remove_tree_holding(open(tmp.path()).as_fd(), "t".as_ref(), 2).unwrap();
    assert!(dir_names(tmp.path()).is_empty());
}

#[test]
fn a_name_must_be_one_entry() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("a/b")).unwrap();
    let dir = open(tmp.path());
    for name in ["", ".", "..", "a/b", "/a", "a/"] {
        let err = remove_tree(&dir, name).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{name:?}: {err}");
        assert_eq!(err.errno(), Errno::INVAL);
        assert_eq!(
            std::io::Error::from(err).kind(),
            std::io::ErrorKind::InvalidInput
        );
    }
    assert_eq!(dir_names(tmp.path()), ["a"]);
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

fn mount_tmpfs(at: &Path) -> Mounted<'_> {
    fs::create_dir_all(at).unwrap();
    rustix::mount::mount(
        "tmpfs",
        at,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=1m",
    )
    .unwrap();
    Mounted(at)
}

#[test]
fn a_mount_point_in_the_tree_stops_the_removal() {
    if !plies_testkit::require_root("a_mount_point_in_the_tree_stops_the_removal") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("t");
    let mnt = t.join("sub/mnt");
    // Deeper than two handles reach too: that mount point would be moved up.
    let deep_mnt = t.join("x/y/z/mnt");
    fs::create_dir_all(&deep_mnt).unwrap();
    let _outer = mount_tmpfs(&mnt);
    let _deep = mount_tmpfs(&deep_mnt);
    fs::write(mnt.join("precious"), b"p").unwrap();
    fs::write(deep_mnt.join("precious"), b"p").unwrap();
    let dir = open(tmp.path());

    let err = remove_tree(&dir, "t").unwrap_err();
    assert!(matches!(err, Error::MountPoint { .. }), "{err}");
    assert_eq!(err.errno(), Errno::BUSY);
    assert!(
        [Path::new("t/sub/mnt"), Path::new("t/x/y/z/mnt")].contains(&err.path()),
        "{err}"
    );
    let err = remove_tree_holding(dir.as_fd(), "t".as_ref(), 2).unwrap_err();
    assert_eq!(err.errno(), Errno::BUSY, "{err}");
    assert_eq!(
        std::io::Error::from(err).kind(),
        std::io::ErrorKind::ResourceBusy
    );
    assert_eq!(fs::read(mnt.join("precious")).unwrap(), b"p");
    assert_eq!(fs::read(deep_mnt.join("precious")).unwrap(), b"p");

    drop(_deep);
    drop(_outer);
    remove_tree(&dir, "t").unwrap();
    assert!(dir_names(tmp.path()).is_empty());
}

/// Set in the child process [`holds_a_bounded_number_of_handles`] runs itself in.
const LIMITED: &str = "PLIES_FDTREE_TEST_LIMITED";

#[test]
fn holds_a_bounded_number_of_handles() {
    let name = "remove::tests::holds_a_bounded_number_of_handles";
    if std::env::var_os(LIMITED).is_none() {
        // The limit is the process's: lowered in a child, alone.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env(LIMITED, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let tmp = tempfile::tempdir().unwrap();
    make_deep(tmp.path(), "t", 1000);
    let dir = open(tmp.path());
    // A limit on handle numbers that leaves the tree's handles and one to read
    // a directory with free below it.
    let own = format!("/proc/{}/fd", std::process::id());
    let used: Vec<usize> = fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| fs::read_link(e.path()).ok().as_deref() != Some(Path::new(&own)))
        .map(|e| e.file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let mut limit = 0;
    while limit - used.iter().filter(|&&fd| fd < limit).count() < super::MAX_OPEN_DEPTH + 1 {
        limit += 1;
    }
    let maximum = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(limit as u64),
            maximum,
        },
    )
    .unwrap();
    remove_tree(&dir, "t").unwrap();
    assert!(dir_names(tmp.path()).is_empty());
}
