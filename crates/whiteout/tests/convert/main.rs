//! In-place conversion of whole layer directories between the aufs and overlay
//! formats: exact trees before and after, round trips, re-runs after an
//! interrupted conversion, refusals that leave the layer as it was.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, lchown, symlink};
use std::path::{Path, PathBuf};

use plies_whiteout::convert::{ConvertReport, aufs_to_overlay, overlay_to_aufs};
use plies_whiteout::{Error, XattrNamespace};
use rustix::fs::XattrFlags;

const TRUSTED: XattrNamespace = XattrNamespace::Trusted;

// ---- building and describing trees ----

fn file(root: &Path, rel: &str, content: &str, mode: u32, owner: (u32, u32)) {
    let path = root.join(rel);
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    chown(&path, Some(owner.0), Some(owner.1)).unwrap();
}

fn dir(root: &Path, rel: &str, mode: u32, owner: (u32, u32)) {
    let path = root.join(rel);
    fs::create_dir(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    chown(&path, Some(owner.0), Some(owner.1)).unwrap();
}

fn mtime(path: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.mtime(), m.mtime_nsec())
}

fn xattrs(path: &Path) -> String {
    let mut names = vec![0u8; 4096];
    let len = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    let mut out: Vec<String> = names[..len]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter(|n| !n.starts_with(b"security."))
        .map(|n| {
            let key = String::from_utf8_lossy(n).into_owned();
            let mut value = vec![0u8; 4096];
            let vlen = rustix::fs::lgetxattr(path, key.as_str(), &mut value[..]).unwrap();
            format!(" {key}={}", String::from_utf8_lossy(&value[..vlen]))
        })
        .collect();
    out.sort();
    out.concat()
}

/// One line per entry: path, type (with content, target or device number),
/// permissions, owner and xattrs.
fn snapshot(root: &Path) -> Vec<String> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let rel = rel.join(name);
            let path = root.join(&rel);
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_dir() {
                "dir".to_owned()
            } else if ft.is_file() {
                format!("file {:?}", fs::read_to_string(&path).unwrap())
            } else if ft.is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if ft.is_char_device() {
                format!(
                    "chr {}:{}",
                    rustix::fs::major(m.rdev()),
                    rustix::fs::minor(m.rdev())
                )
            } else {
                "other".to_owned()
            };
            out.push(format!(
                "{} {kind} {:o} {}:{}{}",
                rel.display(),
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                xattrs(&path)
            ));
            if ft.is_dir() {
                walk(root, &rel, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn open(path: &Path) -> fs::File {
    fs::File::open(path).unwrap()
}

/// An aufs layer as Docker's aufs driver leaves it, with its private entries.
fn aufs_layer(root: &Path) {
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    file(root, ".wh..wh.aufs", "", 0o444, (0, 0));
    dir(root, ".wh..wh.plnk", 0o700, (0, 0));
    file(root, ".wh..wh.plnk/1234.5678", "x", 0o644, (0, 0));
    dir(root, ".wh..wh.orph", 0o700, (0, 0));
    file(root, ".wh.tmp", "", 0o444, (0, 0));
    dir(root, "etc", 0o755, (0, 0));
    file(root, "etc/passwd", "root:x:0:0", 0o644, (0, 0));
    file(root, "etc/.wh.shadow", "", 0o600, (42, 43));
    plies_testkit::set_times(&root.join("etc/.wh.shadow"), 1_000_000_000, 123_456_789);
    dir(root, "home", 0o755, (0, 0));
    file(root, "home/.wh.user", "", 0o444, (0, 0));
    file(root, "home/user2", "b", 0o644, (0, 0));
    symlink("/etc", root.join("link")).unwrap();
    dir(root, "usr", 0o755, (0, 0));
    file(root, "usr/.wh.bin", "", 0o444, (0, 0));
    dir(root, "usr/bin", 0o755, (0, 0));
    file(root, "usr/bin/sh", "elf", 0o755, (0, 0));
    dir(root, "var", 0o750, (1, 2));
    file(root, "var/.wh..wh..opq", "", 0o750, (1, 2));
    file(root, "var/log", "new", 0o640, (0, 0));
    for (i, d) in ["etc", "home", "usr", "usr/bin", "var"].iter().enumerate() {
        plies_testkit::set_times(&root.join(d), 1_500_000_000 + i as i64, 7);
    }
    plies_testkit::set_times(root, 1_600_000_000, 9);
}

/// The same layer in the overlay format.
const OVERLAY: &[&str] = &[
    "etc dir 755 0:0",
    "etc/passwd file \"root:x:0:0\" 644 0:0",
    "etc/shadow chr 0:0 600 42:43",
    "home dir 755 0:0",
    "home/user chr 0:0 444 0:0",
    "home/user2 file \"b\" 644 0:0",
    "link link -> /etc 777 0:0",
    "tmp chr 0:0 444 0:0",
    "usr dir 755 0:0",
    "usr/bin dir 755 0:0",
    "usr/bin/sh file \"elf\" 755 0:0",
    "var dir 750 1:2 trusted.overlay.opaque=y",
    "var/log file \"new\" 640 0:0",
];

/// The layer back in the aufs format: without aufs private entries and without
/// the whiteout that an entry of the same name shadowed.
const AUFS: &[&str] = &[
    ".wh.tmp file \"\" 444 0:0",
    "etc dir 755 0:0",
    "etc/.wh.shadow file \"\" 600 42:43",
    "etc/passwd file \"root:x:0:0\" 644 0:0",
    "home dir 755 0:0",
    "home/.wh.user file \"\" 444 0:0",
    "home/user2 file \"b\" 644 0:0",
    "link link -> /etc 777 0:0",
    "usr dir 755 0:0",
    "usr/bin dir 755 0:0",
    "usr/bin/sh file \"elf\" 755 0:0",
    "var dir 750 1:2",
    "var/.wh..wh..opq file \"\" 750 1:2",
    "var/log file \"new\" 640 0:0",
];

fn dir_mtimes(root: &Path) -> Vec<(i64, i64)> {
    ["", "etc", "home", "usr", "usr/bin", "var"]
        .iter()
        .map(|d| mtime(&root.join(d)))
        .collect()
}

fn report(dirs: u64, whiteouts: u64, opaque: u64, meta: u64, shadowed: u64) -> ConvertReport {
    let mut r = ConvertReport::default();
    r.dirs = dirs;
    r.whiteouts = whiteouts;
    r.opaque_dirs = opaque;
    r.aufs_meta_removed = meta;
    r.shadowed_whiteouts_removed = shadowed;
    r
}

// ---- tests ----

#[test]
fn aufs_to_overlay_and_back() {
    if !plies_testkit::require_root("aufs_to_overlay_and_back") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    aufs_layer(root);
    let times = dir_mtimes(root);

    let r = aufs_to_overlay(open(root), TRUSTED).unwrap();
    assert_eq!(r, report(6, 3, 1, 3, 1));
    assert_eq!(snapshot(root), OVERLAY);
    assert_eq!(dir_mtimes(root), times);
    assert_eq!(
        mtime(&root.join("etc/shadow")),
        (1_000_000_000, 123_456_789)
    );

    // Again: nothing left to do, nothing changes.
    let r = aufs_to_overlay(open(root), TRUSTED).unwrap();
    assert_eq!(r, report(6, 0, 0, 0, 0));
    assert_eq!(snapshot(root), OVERLAY);

    let r = overlay_to_aufs(open(root), TRUSTED).unwrap();
    assert_eq!(r, report(6, 3, 1, 0, 0));
    assert_eq!(snapshot(root), AUFS);
    assert_eq!(dir_mtimes(root), times);
    assert_eq!(
        mtime(&root.join("etc/.wh.shadow")),
        (1_000_000_000, 123_456_789)
    );

    let r = overlay_to_aufs(open(root), TRUSTED).unwrap();
    assert_eq!(r, report(6, 0, 0, 0, 0));
    assert_eq!(snapshot(root), AUFS);

    // And once more to overlay: the same overlay layer as the first time.
    aufs_to_overlay(open(root), TRUSTED).unwrap();
    assert_eq!(snapshot(root), OVERLAY);
}

#[test]
fn user_xattr_namespace() {
    if !plies_testkit::require_root("user_xattr_namespace") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    dir(root, "d", 0o755, (0, 0));
    file(root, "d/.wh..wh..opq", "", 0o755, (0, 0));
    file(root, "d/.wh.x", "", 0o444, (0, 0));

    let r = aufs_to_overlay(open(root), XattrNamespace::User).unwrap();
    assert_eq!(r, report(2, 1, 1, 0, 0));
    assert_eq!(
        snapshot(root),
        ["d dir 755 0:0 user.overlay.opaque=y", "d/x chr 0:0 444 0:0"]
    );
    // A trusted-namespace conversion does not see the user-namespace mark.
    assert_eq!(
        overlay_to_aufs(open(root), TRUSTED).unwrap(),
        report(2, 1, 0, 0, 0)
    );
    let r = overlay_to_aufs(open(root), XattrNamespace::User).unwrap();
    assert_eq!(r, report(2, 0, 1, 0, 0));
    assert_eq!(
        snapshot(root),
        [
            "d dir 755 0:0",
            "d/.wh..wh..opq file \"\" 755 0:0",
            "d/.wh.x file \"\" 444 0:0"
        ]
    );
}

struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path, on: bool) -> rustix::io::Result<()> {
        let f = open(path);
        let mut flags = rustix::fs::ioctl_getflags(&f)?;
        flags.set(rustix::fs::IFlags::IMMUTABLE, on);
        rustix::fs::ioctl_setflags(&f, flags)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Self::set(&self.0, false);
    }
}

/// A conversion that fails halfway (here: an immutable whiteout file that cannot
/// be removed) is finished by running it again once the cause is gone.
#[test]
fn interrupted_aufs_to_overlay_finishes_on_rerun() {
    if !plies_testkit::require_root("interrupted_aufs_to_overlay_finishes_on_rerun") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    file(root, ".wh.a", "", 0o444, (0, 0));
    file(root, ".wh.b", "", 0o600, (7, 8));
    file(root, ".wh.c", "", 0o444, (0, 0));
    dir(root, "d", 0o755, (0, 0));
    file(root, "d/.wh..wh..opq", "", 0o755, (0, 0));
    let stuck = root.join(".wh.b");
    if !plies_testkit::require(
        "interrupted_aufs_to_overlay_finishes_on_rerun",
        Immutable::set(&stuck, true).is_ok(),
        "the temp filesystem has no immutable flag",
    ) {
        return;
    }
    let guard = Immutable(stuck);

    match aufs_to_overlay(open(root), TRUSTED) {
        Err(Error::Io { op, name, source }) => {
            assert_eq!(op, "unlinkat");
            assert_eq!(name, ".wh.b");
            assert_eq!(source.raw_os_error(), Some(1));
        }
        other => panic!("expected EPERM on .wh.b, got {other:?}"),
    }
    // Half done: `a` converted, `b` has its new form and still its old one.
    assert_eq!(
        snapshot(root),
        [
            ".wh.b file \"\" 600 7:8",
            ".wh.c file \"\" 444 0:0",
            "a chr 0:0 444 0:0",
            "b chr 0:0 600 7:8",
            "d dir 755 0:0",
            "d/.wh..wh..opq file \"\" 755 0:0",
        ]
    );
    drop(guard);

    let r = aufs_to_overlay(open(root), TRUSTED).unwrap();
    assert_eq!(r, report(2, 2, 1, 0, 0));
    assert_eq!(
        snapshot(root),
        [
            "a chr 0:0 444 0:0",
            "b chr 0:0 600 7:8",
            "c chr 0:0 444 0:0",
            "d dir 755 0:0 trusted.overlay.opaque=y",
        ]
    );
}

/// The states a crash can leave between "new form made" and "old form removed",
/// in both directions, are finished by a re-run.
#[test]
fn crash_states_are_finished_on_rerun() {
    if !plies_testkit::require_root("crash_states_are_finished_on_rerun") {
        return;
    }
    // aufs -> overlay: device made (but not yet given the whiteout's owner and
    // mode), marker not yet removed; xattr set, opaque marker not yet removed;
    // aufs private dir half removed.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    file(root, ".wh.x", "", 0o640, (5, 6));
    plies_whiteout::create_overlay_whiteout(open(root), "x".as_ref()).unwrap();
    dir(root, "d", 0o700, (0, 0));
    file(root, "d/.wh..wh..opq", "", 0o700, (0, 0));
    plies_whiteout::set_opaque(open(&root.join("d")), TRUSTED).unwrap();
    dir(root, ".wh..wh.plnk", 0o700, (0, 0));
    dir(root, ".wh..wh.plnk/sub", 0o700, (0, 0));
    let r = aufs_to_overlay(open(root), TRUSTED).unwrap();
    assert_eq!(r, report(2, 1, 1, 1, 0));
    assert_eq!(
        snapshot(root),
        [
            "d dir 700 0:0 trusted.overlay.opaque=y",
            "x chr 0:0 640 5:6"
        ]
    );

    // overlay -> aufs: `.wh.y` created (still mode 0) but device `y` not yet
    // removed; opaque marker created but the xattr not yet removed.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    plies_whiteout::create_overlay_whiteout(open(root), "y".as_ref()).unwrap();
    file(root, ".wh.y", "", 0o000, (0, 0));
    dir(root, "d", 0o711, (3, 4));
    plies_whiteout::set_opaque(open(&root.join("d")), TRUSTED).unwrap();
    file(root, "d/.wh..wh..opq", "", 0o711, (3, 4));
    let r = overlay_to_aufs(open(root), TRUSTED).unwrap();
    assert_eq!(r, report(2, 1, 1, 0, 0));
    assert_eq!(
        snapshot(root),
        [
            ".wh.y file \"\" 0 0:0",
            "d dir 711 3:4",
            "d/.wh..wh..opq file \"\" 711 3:4"
        ]
    );
}

#[test]
fn invalid_aufs_layers_are_left_as_they_were() {
    if !plies_testkit::require_root("invalid_aufs_layers_are_left_as_they_were") {
        return;
    }
    for (bad, is_dir, reason) in [
        ("sub/.wh..", false, "whiteout of '.' or '..'"),
        ("sub/.wh.", false, "whiteout of an empty name"),
        ("sub/.wh..wh.", false, "aufs metadata name is empty"),
        (
            "sub/.wh.dir",
            true,
            "an aufs whiteout or opaque marker must not be a directory",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        file(root, ".wh.a", "", 0o444, (0, 0));
        dir(root, "sub", 0o755, (0, 0));
        if is_dir {
            dir(root, bad, 0o755, (0, 0));
        } else {
            file(root, bad, "", 0o444, (0, 0));
        }
        let before = snapshot(root);
        match aufs_to_overlay(open(root), TRUSTED) {
            Err(Error::InvalidEntry { path, reason: r }) => {
                assert_eq!(path, Path::new(bad));
                assert_eq!(r, reason);
            }
            other => panic!("{bad}: expected InvalidEntry, got {other:?}"),
        }
        assert_eq!(snapshot(root), before, "{bad}");
    }
}

#[test]
fn inexpressible_overlay_layers_are_left_as_they_were() {
    if !plies_testkit::require_root("inexpressible_overlay_layers_are_left_as_they_were") {
        return;
    }
    for (entry, is_dir, key) in [
        ("a/renamed", true, "trusted.overlay.redirect"),
        ("a/meta-only", false, "trusted.overlay.metacopy"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        plies_whiteout::create_overlay_whiteout(open(root), "gone".as_ref()).unwrap();
        dir(root, "a", 0o755, (0, 0));
        if is_dir {
            dir(root, entry, 0o755, (0, 0));
        } else {
            file(root, entry, "", 0o644, (0, 0));
        }
        rustix::fs::lsetxattr(root.join(entry), key, b"", XattrFlags::empty()).unwrap();
        let before = snapshot(root);
        match overlay_to_aufs(open(root), TRUSTED) {
            Err(Error::Inexpressible { path, key: k }) => {
                assert_eq!(path, Path::new(entry));
                assert_eq!(k, key);
            }
            other => panic!("{entry}: expected Inexpressible, got {other:?}"),
        }
        assert_eq!(snapshot(root), before, "{entry}");
    }

    // A directory aufs would read as a whiteout.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    dir(root, ".wh.x", 0o755, (0, 0));
    match overlay_to_aufs(open(root), TRUSTED) {
        Err(Error::InvalidEntry { path, reason }) => {
            assert_eq!(path, Path::new(".wh.x"));
            assert_eq!(reason, "a name the aufs format reads as a whiteout");
        }
        other => panic!("expected InvalidEntry, got {other:?}"),
    }
}

/// Symlinks in the layer are entries, never followed: a link to a directory
/// full of whiteouts outside the layer leaves that directory alone.
#[test]
fn symlinks_are_not_followed() {
    if !plies_testkit::require_root("symlinks_are_not_followed") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    let root = tmp.path().join("layer");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(&root).unwrap();
    file(&outside, ".wh.victim", "", 0o444, (0, 0));
    file(&outside, ".wh..wh..opq", "", 0o444, (0, 0));
    plies_whiteout::create_overlay_whiteout(open(&outside), "dev".as_ref()).unwrap();
    symlink(&outside, root.join("escape")).unwrap();
    lchown(root.join("escape"), Some(0), Some(0)).unwrap();
    let before = snapshot(&outside);
    aufs_to_overlay(open(&root), TRUSTED).unwrap();
    overlay_to_aufs(open(&root), TRUSTED).unwrap();
    assert_eq!(snapshot(&outside), before);
    assert!(
        fs::symlink_metadata(root.join("escape"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A converted aufs layer, stacked on its lower layer by a real overlay mount,
/// shows what the aufs layer meant.
#[test]
fn converted_layer_mounts_as_overlay() {
    if !plies_testkit::require_overlay("converted_layer_mounts_as_overlay") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let [lower, layer, merged] = ["lower", "layer", "merged"].map(|d| {
        let p = tmp.path().join(d);
        fs::create_dir(&p).unwrap();
        p
    });
    for d in ["etc", "home", "home/user", "tmp", "usr", "usr/bin", "var"] {
        fs::create_dir(lower.join(d)).unwrap();
    }
    for f in [
        "etc/shadow",
        "etc/group",
        "home/user/x",
        "usr/bin/ls",
        "var/old",
    ] {
        fs::write(lower.join(f), "lower").unwrap();
    }
    aufs_layer(&layer);
    aufs_to_overlay(open(&layer), TRUSTED).unwrap();

    let data = CString::new(format!("lowerdir={}:{}", layer.display(), lower.display())).unwrap();
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        Some(data.as_c_str()),
    )
    .unwrap();
    let guard = Mount(merged.clone());
    let list = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(merged.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(""), ["etc", "home", "link", "usr", "var"]);
    assert_eq!(list("etc"), ["group", "passwd"]);
    assert_eq!(list("home"), ["user2"]);
    assert_eq!(list("usr/bin"), ["ls", "sh"]);
    assert_eq!(list("var"), ["log"]);
    drop(guard);
    assert!(plies_testkit::mounts_under(tmp.path()).is_empty());
}

/// One entry of a generated aufs layer.
#[derive(Debug, Clone)]
enum Gen {
    File(u32),
    Dir,
    Whiteout(u32),
    Opaque,
}

fn gen_entry() -> impl proptest::strategy::Strategy<Value = (Vec<&'static str>, Gen)> {
    use proptest::prelude::*;
    let name = prop::sample::select(vec!["a", "b", "c", ".hidden"]);
    let mode = prop::sample::select(vec![0o644u32, 0o600, 0o444, 0o755, 0o4755]);
    let kind = prop_oneof![
        mode.clone().prop_map(Gen::File),
        Just(Gen::Dir),
        mode.prop_map(Gen::Whiteout),
        Just(Gen::Opaque),
    ];
    (prop::collection::vec(name, 1..4), kind)
}

/// Builds the layer; returns it in its canonical aufs form: without the
/// whiteouts that an entry of the same name shadows.
fn build(root: &Path, entries: &[(Vec<&str>, Gen)]) {
    for (components, kind) in entries {
        let (last, parents) = components.split_last().unwrap();
        let mut dir = root.to_path_buf();
        let mut ok = true;
        for c in parents {
            dir.push(c);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap();
            } else if !dir.is_dir() || dir.is_symlink() {
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        let (name, mode, is_dir) = match kind {
            Gen::File(mode) => (last.to_string(), *mode, false),
            Gen::Dir => (last.to_string(), 0o755, true),
            Gen::Whiteout(mode) => (format!(".wh.{last}"), *mode, false),
            Gen::Opaque => (".wh..wh..opq".to_owned(), 0o755, false),
        };
        let path = dir.join(name);
        if path.exists() {
            continue;
        }
        if is_dir {
            fs::create_dir(&path).unwrap();
        } else {
            fs::write(&path, "").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

fn shadowed_whiteouts(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in snapshot(root) {
        let rel = PathBuf::from(line.split(' ').next().unwrap());
        let name = rel.file_name().unwrap().to_str().unwrap();
        if let Some(target) = name.strip_prefix(".wh.") {
            if !target.starts_with(".wh.") && root.join(rel.with_file_name(target)).exists() {
                out.push(rel);
            }
        }
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any aufs layer converts to overlay and back to itself (less the whiteouts
    /// its own entries shadow), and each conversion is idempotent.
    #[test]
    fn random_layers_round_trip(entries in proptest::collection::vec(gen_entry(), 0..24)) {
        if !plies_testkit::require_root("random_layers_round_trip") {
            return Ok(());
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        build(root, &entries);
        let shadowed = shadowed_whiteouts(root);
        let canonical: Vec<String> = snapshot(root)
            .into_iter()
            .filter(|line| {
                let rel = Path::new(line.split(' ').next().unwrap());
                !shadowed.iter().any(|s| s == rel)
            })
            .collect();

        let there = aufs_to_overlay(open(root), TRUSTED).unwrap();
        proptest::prop_assert_eq!(there.shadowed_whiteouts_removed, shadowed.len() as u64);
        let overlay = snapshot(root);
        proptest::prop_assert!(overlay.iter().all(|l| !l.contains(".wh.")), "{:?}", overlay);
        let devices = overlay.iter().filter(|l| l.contains(" chr 0:0 ")).count() as u64;
        proptest::prop_assert_eq!(devices, there.whiteouts);
        let again = aufs_to_overlay(open(root), TRUSTED).unwrap();
        proptest::prop_assert_eq!((again.whiteouts, again.opaque_dirs), (0, 0));

        let back = overlay_to_aufs(open(root), TRUSTED).unwrap();
        proptest::prop_assert_eq!((back.whiteouts, back.opaque_dirs), (there.whiteouts, there.opaque_dirs));
        proptest::prop_assert_eq!(snapshot(root), canonical.clone());
        let again = overlay_to_aufs(open(root), TRUSTED).unwrap();
        proptest::prop_assert_eq!((again.whiteouts, again.opaque_dirs), (0, 0));
        proptest::prop_assert_eq!(snapshot(root), canonical);
    }
}
