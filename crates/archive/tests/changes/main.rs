//! Changes between trees, from an overlay upper and from an aufs branch, and
//! layer sizes: exact change lists, and a real overlay mount where every way of
//! listing agrees.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use plies_archive::XattrNamespace;
use plies_archive::changes::{
    Change, ChangeKind, ChangesError, between, from_aufs_branch, from_overlay_upper,
};
use plies_archive::size::{changes_size, dir_size};
use rustix::fs::XattrFlags;

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
}

fn mkdir(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).unwrap();
}

/// `cp -a`: same modes, owners, times, xattrs, hardlinks, new inodes.
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Changes as `docker diff` prints them.
fn listed(changes: &[Change]) -> Vec<String> {
    changes.iter().map(ToString::to_string).collect()
}

fn whiteout(dir: &Path, name: &str) {
    fs::create_dir_all(dir).unwrap();
    plies_whiteout::create_overlay_whiteout(fs::File::open(dir).unwrap(), name.as_ref()).unwrap();
}

fn opaque(dir: &Path) {
    plies_whiteout::set_opaque(fs::File::open(dir).unwrap(), XattrNamespace::Trusted).unwrap();
}

#[test]
fn kinds_serialize_like_docker() {
    assert_eq!(ChangeKind::Modified.as_docker_kind(), 0);
    assert_eq!(ChangeKind::Added.as_docker_kind(), 1);
    assert_eq!(ChangeKind::Deleted.as_docker_kind(), 2);
    let change = Change {
        path: PathBuf::from("/etc/passwd"),
        kind: ChangeKind::Added,
    };
    assert_eq!(change.to_string(), "A /etc/passwd");
    // With the `serde` feature (on in a workspace build: the plies command asks for it).
    #[cfg(feature = "serde")]
    assert_eq!(
        serde_json::to_string(&change).unwrap(),
        r#"{"Path":"/etc/passwd","Kind":1}"#
    );
}

#[test]
fn identical_trees_have_no_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    write(&old, "etc/passwd", "root");
    write(&old, "usr/bin/sh", "elf");
    symlink("sh", old.join("usr/bin/bash")).unwrap();
    let new = tmp.path().join("new");
    copy_tree(&old, &new);
    assert_eq!(between(&old, &new).unwrap(), []);
    assert_eq!(between(&old, &old).unwrap(), []);
    // An empty old tree: everything is added, parents first.
    let empty = tmp.path().join("empty");
    mkdir(&empty, "");
    assert_eq!(
        listed(&between(&empty, &old).unwrap()),
        [
            "A /etc",
            "A /etc/passwd",
            "A /usr",
            "A /usr/bin",
            "A /usr/bin/bash",
            "A /usr/bin/sh"
        ]
    );
    assert_eq!(
        listed(&between(&old, &empty).unwrap()),
        ["D /etc", "D /usr"]
    );
}

#[test]
fn between_follows_dockers_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    write(&old, "etc/passwd", "root");
    write(&old, "etc/hosts", "localhost");
    write(&old, "etc/motd", "hello");
    write(&old, "var/cache/apt/pkgcache.bin", "cache");
    write(&old, "var/log/dpkg.log", "log");
    write(&old, "usr/x", "file");
    write(&old, "srv/www/index.html", "<p>");
    write(&old, "home/readme", "hi");
    write(&old, "tar/whole-second", "aaaa");
    write(&old, "tar/same-content", "bbbb");
    write(&old, "xattr/file", "x");
    symlink("target-a", old.join("link")).unwrap();
    plies_testkit::set_times(&old.join("link"), 1_600_000_000, 0);
    plies_testkit::set_times(&old.join("tar/whole-second"), 1_600_000_000, 0);
    plies_testkit::set_times(&old.join("tar/same-content"), 1_600_000_000, 0);
    let new = tmp.path().join("new");
    copy_tree(&old, &new);

    // Content and time.
    write(&new, "etc/passwd", "root:x");
    // Mode only.
    fs::set_permissions(new.join("etc/hosts"), fs::Permissions::from_mode(0o600)).unwrap();
    // A directory removed with its contents: one deletion.
    fs::remove_dir_all(new.join("var/cache")).unwrap();
    // A new directory: it and all its contents are added.
    write(&new, "opt/app/bin/run", "#!");
    // A file replaced by a directory, a directory by a file.
    fs::remove_file(new.join("usr/x")).unwrap();
    write(&new, "usr/x/child", "c");
    fs::remove_dir_all(new.join("srv")).unwrap();
    write(&new, "srv", "now a file");
    // A directory whose only change is its time: unchanged.
    plies_testkit::set_times(&new.join("home"), 1_000_000_000, 5);
    // Same size, same second, one side with no nanoseconds (as after a tar round
    // trip): the contents decide.
    write(&new, "tar/whole-second", "zzzz");
    plies_testkit::set_times(&new.join("tar/whole-second"), 1_600_000_000, 123);
    plies_testkit::set_times(&new.join("tar/same-content"), 1_600_000_000, 123);
    // A new symlink target with the same time and length.
    fs::remove_file(new.join("link")).unwrap();
    symlink("target-b", new.join("link")).unwrap();
    plies_testkit::set_times(&new.join("link"), 1_600_000_000, 0);
    // An xattr, nothing else.
    rustix::fs::lsetxattr(
        new.join("xattr/file"),
        "user.note",
        b"v",
        XattrFlags::empty(),
    )
    .unwrap();
    // Same contents, mode and times in a new inode: unchanged.
    let motd = new.join("etc/motd");
    let motd_times = fs::metadata(&motd).unwrap().modified().unwrap();
    fs::remove_file(&motd).unwrap();
    fs::write(&motd, "hello").unwrap();
    fs::File::options()
        .write(true)
        .open(&motd)
        .unwrap()
        .set_modified(motd_times)
        .unwrap();

    assert_eq!(
        listed(&between(&old, &new).unwrap()),
        [
            "C /etc",
            "C /etc/hosts",
            "C /etc/passwd",
            "C /link",
            "A /opt",
            "A /opt/app",
            "A /opt/app/bin",
            "A /opt/app/bin/run",
            "C /srv",
            "C /tar",
            "C /tar/whole-second",
            "C /usr",
            "C /usr/x",
            "A /usr/x/child",
            "C /var",
            "D /var/cache",
            "C /xattr",
            "C /xattr/file",
        ]
    );
}

#[test]
fn missing_root_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    match between(tmp.path(), &missing) {
        Err(ChangesError::Io { op, path, source }) => {
            assert_eq!(op, "open");
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

/// The message says what failed and where; the cause is the error's source,
/// not repeated in the message.
#[test]
fn io_error_messages_leave_the_cause_to_source() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let errors: [Box<dyn std::error::Error>; 2] = [
        Box::new(between(tmp.path(), &missing).unwrap_err()),
        Box::new(dir_size(&missing).unwrap_err()),
    ];
    for err in errors {
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("open \"{}", missing.display())),
            "{message}"
        );
        let cause = err.source().expect("the kernel's error as source");
        let io = cause.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(!message.contains(&io.to_string()), "{message}");
    }
}

/// An upper and two lowers written by hand in the overlay format.
#[test]
fn from_upper_reads_lower_whiteouts_and_opaque_dirs() {
    if !plies_testkit::require_root("from_upper_reads_lower_whiteouts_and_opaque_dirs") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (upper, top, bottom) = (
        tmp.path().join("upper"),
        tmp.path().join("top"),
        tmp.path().join("bottom"),
    );
    // bottom: the base image.
    write(&bottom, "etc/passwd", "root");
    write(&bottom, "etc/group", "root");
    write(&bottom, "old/a", "a");
    write(&bottom, "masked/inner/deep", "d");
    write(&bottom, "masked/file", "f");
    // top: deletes /old, makes /masked opaque with its own content.
    whiteout(&top, "old");
    write(&top, "masked/mine", "m");
    opaque(&top.join("masked"));
    write(&top, "etc/hostname", "box");
    // upper: the container.
    write(&upper, "old", "recreated");
    whiteout(&upper.join("etc"), "hostname");
    write(&upper, "etc/passwd", "root:x");
    mkdir(&upper, "masked");
    opaque(&upper.join("masked"));
    write(&upper, "masked/fresh", "new");
    write(&upper, "brand/new", "n");
    mkdir(&upper, ".wh..wh.plnk");

    let lowers = [top.clone(), bottom.clone()];
    let changes = from_overlay_upper(&upper, &lowers, XattrNamespace::Trusted).unwrap();
    assert_eq!(
        listed(&changes),
        [
            "A /brand",
            "A /brand/new",
            "C /etc",
            "D /etc/hostname",
            "C /etc/passwd",
            "C /masked",
            "A /masked/fresh",
            // What the opaque upper dir hides of the lowers' view: `mine` from
            // `top`; not `file` or `inner` from `bottom`, which `top` masks already.
            "D /masked/mine",
            "A /old",
        ]
    );

    // A renamed directory cannot be listed from the upper.
    mkdir(&upper, "renamed");
    rustix::fs::lsetxattr(
        upper.join("renamed"),
        "trusted.overlay.redirect",
        b"/etc",
        XattrFlags::empty(),
    )
    .unwrap();
    match from_overlay_upper(&upper, &lowers, XattrNamespace::Trusted) {
        Err(ChangesError::RedirectedDir { path }) => assert_eq!(path, upper.join("renamed")),
        other => panic!("expected RedirectedDir, got {other:?}"),
    }
}

/// A writable branch and two read-only ones written by hand in the aufs format,
/// aufs's own entries included.
#[test]
fn from_aufs_branch_reads_aufs_whiteouts_and_private_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let (rw, top, bottom) = (
        tmp.path().join("rw"),
        tmp.path().join("top"),
        tmp.path().join("bottom"),
    );
    write(&bottom, "etc/passwd", "root");
    write(&bottom, "etc/group", "root");
    write(&bottom, "old/a", "a");
    write(&bottom, "masked/inner/deep", "d");
    write(&bottom, "masked/file", "f");
    write(&bottom, "gone/x", "x");
    // top: deletes /old, makes /masked opaque with its own content.
    write(&top, ".wh.old", "");
    write(&top, "masked/mine", "m");
    write(&top, "masked/.wh..wh..opq", "");
    write(&top, "etc/hostname", "box");
    write(&top, ".wh..wh.plnk/123.4", "pseudo-link of top");
    // rw: the container, with aufs's private entries.
    write(&rw, "old", "recreated");
    write(&rw, "etc/.wh.hostname", "");
    write(&rw, "etc/passwd", "root:x");
    write(&rw, "masked/.wh..wh..opq", "");
    write(&rw, "masked/fresh", "new");
    write(&rw, "brand/new", "n");
    write(&rw, ".wh.gone", "");
    // A whiteout of a name no branch has is a deletion all the same.
    write(&rw, ".wh.never-there", "");
    // A whiteout beside an entry of its name hides nothing the union shows.
    write(&rw, "etc/.wh.group", "");
    write(&rw, "etc/group", "staff");
    write(&rw, ".wh..wh.plnk/567.0", "pseudo-link");
    write(&rw, ".wh..wh.aufs", "");
    mkdir(&rw, ".wh..wh.orph");

    let changes = from_aufs_branch(&rw, &[top.clone(), bottom.clone()]).unwrap();
    assert_eq!(
        listed(&changes),
        [
            "A /brand",
            "A /brand/new",
            "C /etc",
            "C /etc/group",
            "D /etc/hostname",
            "C /etc/passwd",
            "D /gone",
            "C /masked",
            "A /masked/fresh",
            "D /masked/mine",
            "D /never-there",
            // Deleted by `top` and made again here: added, not modified.
            "A /old",
        ]
    );

    // The same branches with overlay whiteouts list the same changes.
    if plies_testkit::require_root("from_aufs_branch_reads_aufs_whiteouts_and_private_entries") {
        let overlay: Vec<PathBuf> = [&rw, &top, &bottom]
            .iter()
            .map(|dir| {
                let to = tmp.path().join(format!(
                    "overlay-{}",
                    dir.file_name().unwrap().to_str().unwrap()
                ));
                copy_tree(dir, &to);
                // The overlay format has no whiteout beside its target.
                let _ = fs::remove_file(to.join("etc/.wh.group"));
                plies_whiteout::convert::aufs_to_overlay(
                    fs::File::open(&to).unwrap(),
                    XattrNamespace::Trusted,
                )
                .unwrap();
                to
            })
            .collect();
        let from_upper =
            from_overlay_upper(&overlay[0], &overlay[1..], XattrNamespace::Trusted).unwrap();
        assert_eq!(from_upper, changes);
    }
}

struct Mount(PathBuf);

impl Mount {
    fn overlay(target: &Path, data: String) -> Mount {
        fs::create_dir_all(target).unwrap();
        let data = CString::new(data).unwrap();
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .unwrap();
        Mount(target.to_owned())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Changes made through a real overlay mount: listing them from the upper gives
/// exactly what comparing the lowers' view with the mounted view gives.
#[test]
fn overlay_upper_agrees_with_full_comparison() {
    if !plies_testkit::require_overlay("overlay_upper_agrees_with_full_comparison") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = |d: &str| tmp.path().join(d);
    let (lower1, lower2, upper, work) = (p("lower1"), p("lower2"), p("upper"), p("work"));
    for d in [&upper, &work] {
        fs::create_dir(d).unwrap();
    }
    write(&lower2, "etc/passwd", "root");
    write(&lower2, "etc/shadow", "s");
    write(&lower2, "dir1/a", "a");
    write(&lower2, "dir1/b", "b");
    write(&lower2, "dir2/x", "old x");
    write(&lower2, "dir2/sub/y", "y");
    write(&lower2, "usr/bin/ls", "ls");
    write(&lower2, "usr/bin/tool", "tool");
    write(&lower2, "keep/file", "k");
    write(&lower2, "gone-in-lower1", "g");
    write(&lower2, "opaque-lower/hidden", "h");
    write(&lower1, "usr/bin/sh", "sh");
    whiteout(&lower1, "gone-in-lower1");
    write(&lower1, "opaque-lower/new", "n");
    opaque(&lower1.join("opaque-lower"));
    let lowerdir = format!("{}:{}", lower1.display(), lower2.display());

    let merged = p("merged");
    let guard = Mount::overlay(
        &merged,
        format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            upper.display(),
            work.display()
        ),
    );
    let m = |rel: &str| merged.join(rel);
    fs::remove_file(m("etc/shadow")).unwrap();
    fs::remove_dir_all(m("dir1")).unwrap();
    fs::remove_dir_all(m("dir2")).unwrap();
    fs::create_dir(m("dir2")).unwrap();
    fs::write(m("dir2/x"), "new x").unwrap();
    let mut ls = fs::read(m("usr/bin/ls")).unwrap();
    ls.extend_from_slice(b" --color");
    fs::write(m("usr/bin/ls"), ls).unwrap();
    fs::set_permissions(m("etc/passwd"), fs::Permissions::from_mode(0o600)).unwrap();
    write(&merged, "newdir/f", "f");
    write(&merged, "added", "a");
    fs::rename(m("keep/file"), m("keep/file2")).unwrap();
    fs::remove_file(m("usr/bin/sh")).unwrap();
    write(&merged, "gone-in-lower1", "back");
    // A hard link copies its target up unchanged: only the link is new.
    fs::hard_link(m("usr/bin/tool"), m("usr/bin/tool2")).unwrap();
    assert!(upper.join("usr/bin/tool").exists());

    let expected = [
        "A /added",
        "D /dir1",
        "C /dir2",
        "D /dir2/sub",
        "C /dir2/x",
        "C /etc",
        "C /etc/passwd",
        "D /etc/shadow",
        "A /gone-in-lower1",
        "C /keep",
        "D /keep/file",
        "A /keep/file2",
        "A /newdir",
        "A /newdir/f",
        "C /usr",
        "C /usr/bin",
        "C /usr/bin/ls",
        "D /usr/bin/sh",
        "A /usr/bin/tool2",
    ];
    let from_upper = from_overlay_upper(
        &upper,
        &[lower1.clone(), lower2.clone()],
        XattrNamespace::Trusted,
    )
    .unwrap();
    assert_eq!(listed(&from_upper), expected);

    // The lowers' view, mounted read-only, against the mounted view.
    let old_view = p("old-view");
    let old_guard = Mount::overlay(&old_view, format!("lowerdir={lowerdir}"));
    let full = between(&old_view, &merged).unwrap();
    assert_eq!(listed(&full), expected);
    assert_eq!(from_upper, full);

    // The size of what the layer adds, read through the mounted view.
    assert_eq!(
        changes_size(&merged, &full).unwrap(),
        ["new x", "root", "ls --color", "f", "a", "k", "back", "tool"]
            .iter()
            .map(|s| s.len() as u64)
            .sum::<u64>()
    );
    drop(old_guard);
    drop(guard);
    assert!(plies_testkit::mounts_under(tmp.path()).is_empty());
}

#[test]
fn dir_size_counts_hardlinks_once_and_no_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("layer");
    write(&root, "a", "0123456789");
    write(&root, "sub/b", "01234567890123456789");
    fs::hard_link(root.join("sub/b"), root.join("sub/b-link")).unwrap();
    fs::hard_link(root.join("sub/b"), root.join("b-link-2")).unwrap();
    symlink("abc", root.join("sub/link")).unwrap();
    mkdir(&root, "empty/deeper");
    // Sparse: the apparent size counts, as Docker's Size.
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(1 << 20).unwrap();
    // A symlink to a big tree outside is not followed.
    write(tmp.path(), "outside/big", &"x".repeat(5000));
    symlink(tmp.path().join("outside"), root.join("escape")).unwrap();
    let escape_len = tmp.path().join("outside").as_os_str().len() as u64;
    assert_eq!(
        dir_size(&root).unwrap(),
        10 + 20 + 3 + (1 << 20) + escape_len
    );
    match dir_size(&root.join("missing")) {
        Err(plies_archive::size::SizeError::Io { path, .. }) => {
            assert_eq!(path, root.join("missing"))
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn changes_size_counts_added_and_modified_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "dir/new", "12345");
    fs::hard_link(root.join("dir/new"), root.join("dir/new-link")).unwrap();
    write(root, "changed", "123");
    let change = |path: &str, kind| Change {
        path: PathBuf::from(path),
        kind,
    };
    let changes = [
        change("/dir", ChangeKind::Added),
        change("/dir/new", ChangeKind::Added),
        change("/dir/new-link", ChangeKind::Added),
        change("/changed", ChangeKind::Modified),
        change("/deleted", ChangeKind::Deleted),
        change("/vanished", ChangeKind::Added),
    ];
    assert_eq!(changes_size(root, &changes).unwrap(), 5 + 3);
    // A path that leaves the root is refused, not followed.
    let escaping = [change("/../outside", ChangeKind::Added)];
    assert!(changes_size(root, &escaping).is_err());
}

/// One operation a container makes through the mounted view.
#[derive(Debug, Clone)]
enum Op {
    Remove(usize),
    Write(usize, u8),
    Mkdir(usize),
    Chmod(usize, u32),
    Rename(usize, usize),
}

/// Paths the operations pick from: the lowers' entries and new names beside them.
const POOL: &[&str] = &[
    "d0",
    "d0/f0",
    "d0/f1",
    "d0/s0",
    "d0/s0/f0",
    "d1",
    "d1/f0",
    "d1/s0",
    "d1/s0/f0",
    "d1/s0/f1",
    "d2",
    "d2/f0",
    "top",
    "d0/new",
    "d1/s0/new",
    "new",
    "new/f0",
    "d2/s1",
];
/// Names renames go to: never an entry of the lowers, so that no rename can put
/// back what was there (a copy-up identical to its lower).
const FRESH: &[&str] = &["r0", "d0/r1", "d1/s0/r2", "d2/r3"];

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let path = 0..POOL.len();
    prop_oneof![
        path.clone().prop_map(Op::Remove),
        (path.clone(), any::<u8>()).prop_map(|(p, b)| Op::Write(p, b)),
        path.clone().prop_map(Op::Mkdir),
        (
            path.clone(),
            prop::sample::select(vec![0o600u32, 0o640, 0o700, 0o750])
        )
            .prop_map(|(p, m)| Op::Chmod(p, m)),
        (path, 0..FRESH.len()).prop_map(|(p, f)| Op::Rename(p, f)),
    ]
}

fn apply_op(merged: &Path, op: &Op) {
    // Operations that do not apply (a missing parent, a file where a directory is
    // wanted) fail, as they would in a container: the failure is the outcome.
    let _ = match op {
        Op::Remove(p) => {
            let path = merged.join(POOL[*p]);
            if path.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            }
        }
        Op::Write(p, b) => fs::write(merged.join(POOL[*p]), [*b; 3]),
        Op::Mkdir(p) => fs::create_dir_all(merged.join(POOL[*p])),
        // Never to the lowers' modes (0644 files, 0755 directories): a chmod
        // back to the original mode leaves a copied-up but unchanged entry, which
        // the upper (as Docker's) calls modified and a full comparison does not.
        Op::Chmod(p, mode) => {
            fs::set_permissions(merged.join(POOL[*p]), fs::Permissions::from_mode(*mode))
        }
        Op::Rename(p, f) => {
            let from = merged.join(POOL[*p]);
            if from.is_file() {
                fs::rename(from, merged.join(FRESH[*f]))
            } else {
                Ok(())
            }
        }
    };
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Whatever a container does through a real overlay mount, listing the
    /// changes from the upper gives what comparing the two views gives.
    #[test]
    fn overlay_upper_agrees_for_random_operations(ops in proptest::collection::vec(op(), 1..12)) {
        if !plies_testkit::require_overlay("overlay_upper_agrees_for_random_operations") {
            return Ok(());
        }
        let tmp = tempfile::tempdir().unwrap();
        let p = |d: &str| tmp.path().join(d);
        let (lower1, lower2, upper, work) = (p("lower1"), p("lower2"), p("upper"), p("work"));
        for d in [&upper, &work] {
            fs::create_dir(d).unwrap();
        }
        for f in ["d0/f0", "d0/f1", "d0/s0/f0", "d1/s0/f0", "top"] {
            write(&lower2, f, "lower2");
        }
        write(&lower2, "d2/f0", "gone");
        write(&lower1, "d1/f0", "lower1");
        write(&lower1, "d1/s0/f1", "lower1");
        whiteout(&lower1.join("d2"), "f0");
        let lowerdir = format!("{}:{}", lower1.display(), lower2.display());
        let merged = p("merged");
        let guard = Mount::overlay(
            &merged,
            format!("lowerdir={lowerdir},upperdir={},workdir={}", upper.display(), work.display()),
        );
        for op in &ops {
            apply_op(&merged, op);
        }
        let old_view = p("old-view");
        let old_guard = Mount::overlay(&old_view, format!("lowerdir={lowerdir}"));
        let full = between(&old_view, &merged).unwrap();
        let from_upper =
            from_overlay_upper(&upper, &[lower1.clone(), lower2.clone()], XattrNamespace::Trusted)
                .unwrap();
        drop(old_guard);
        drop(guard);
        proptest::prop_assert_eq!(listed(&from_upper), listed(&full));

        // The same layers in the aufs format list the same changes.
        let aufs: Vec<PathBuf> = [&upper, &lower1, &lower2]
            .iter()
            .map(|dir| {
                let name = format!("aufs-{}", dir.file_name().unwrap().to_str().unwrap());
                copy_tree(dir, &p(&name));
                let converted = p(&name);
                plies_whiteout::convert::overlay_to_aufs(
                    fs::File::open(&converted).unwrap(),
                    XattrNamespace::Trusted,
                )
                .unwrap();
                converted
            })
            .collect();
        let from_branch = from_aufs_branch(&aufs[0], &aufs[1..]).unwrap();
        proptest::prop_assert_eq!(listed(&from_branch), listed(&full));
    }
}

/// A directory replaced by a symlink (to a big tree, here `/usr`) is one
/// modified entry: the link is never followed into.
#[test]
fn symlinks_are_entries_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    write(&old, "lib/a.so", "elf");
    write(&old, "keep", "k");
    let new = tmp.path().join("new");
    copy_tree(&old, &new);
    fs::remove_dir_all(new.join("lib")).unwrap();
    symlink("/usr", new.join("lib")).unwrap();
    assert_eq!(listed(&between(&old, &new).unwrap()), ["C /lib"]);
    assert_eq!(
        listed(&between(&new, &old).unwrap()),
        ["C /lib", "A /lib/a.so"]
    );

    // In an upper: a symlink over a lower directory.
    let upper = tmp.path().join("upper");
    mkdir(&upper, "");
    symlink("/usr", upper.join("lib")).unwrap();
    assert_eq!(
        listed(&from_overlay_upper(&upper, &[old], XattrNamespace::Trusted).unwrap()),
        ["C /lib"]
    );
}
