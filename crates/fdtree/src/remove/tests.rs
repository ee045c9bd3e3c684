use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use rustix::fs::{Mode, OFlags, mkdirat, openat};
use rustix::io::Errno;

use super::{remove_tree, remove_tree_holding};
use crate::Error;

fn open(path: &Path) -> fs::File {
    fs::File::open(path).unwrap()
}

/// Whether nothing is at `path`, not even a symlink.
fn gone(path: &Path) -> bool {
    path.symlink_metadata().is_err()
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
    assert!(gone(&t));
    assert_eq!(fs::read(tmp.path().join("beside")).unwrap(), b"kept");
}

#[test]
fn a_missing_name_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    remove_tree(open(tmp.path()), "missing").unwrap();
    // Nor is the removal of what is already gone, one level down.
    fs::create_dir(tmp.path().join("d")).unwrap();
    remove_tree(open(tmp.path()), "d").unwrap();
    remove_tree(open(tmp.path()), "d").unwrap();
    assert!(gone(&tmp.path().join("d")));
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
    assert!(gone(&tmp.path().join("file")) && gone(&tmp.path().join("link")));
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"p");
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
    assert!(gone(&t));
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"p");
    assert_eq!(fs::read(outside.join("sub/also")).unwrap(), b"a");
}

#[test]
fn a_tree_deeper_than_a_path_can_name() {
    // 3000 levels of `d/`: 6000 bytes of path, past PATH_MAX.
    let tmp = tempfile::tempdir().unwrap();
    make_deep(tmp.path(), "t", 3000);
    fs::write(tmp.path().join("beside"), b"kept").unwrap();
    remove_tree(open(tmp.path()), "t").unwrap();
    assert!(gone(&tmp.path().join("t")));
    assert_eq!(fs::read(tmp.path().join("beside")).unwrap(), b"kept");
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
    // Nothing left, under a name of its own or a moved one.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
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
    assert!(tmp.path().join("a/b").is_dir());
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
    assert!(gone(&tmp.path().join("t")));
}
