//! Hostile archives: each must give its exact error or outcome, and leave the
//! canary directory beside the root exactly as it was.

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use common::{Raw, RawTar};
use plies_archive::{
    ApplyOptions, ApplyStats, EntryError, Error, WhiteoutFormat, XattrNamespace, apply,
};
use plies_testkit::tree::{Node, Record, snapshot};

struct Sandbox {
    tmp: tempfile::TempDir,
    root: PathBuf,
    before: BTreeMap<PathBuf, Node>,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let canary = tmp.path().join("canary");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir_all(canary.join("sub")).unwrap();
        std::fs::write(canary.join("secret"), b"do not touch").unwrap();
        std::fs::write(canary.join("sub/file"), b"nor this").unwrap();
        std::os::unix::fs::symlink("secret", canary.join("link")).unwrap();
        let before = outside(tmp.path());
        Sandbox { tmp, root, before }
    }

    fn apply_with(&self, tar: &[u8], opts: &ApplyOptions) -> Result<ApplyStats, Error> {
        let r = apply(tar, &self.root, opts);
        assert_eq!(
            outside(self.tmp.path()),
            self.before,
            "something outside the root changed"
        );
        r
    }

    fn apply(&self, tar: &[u8]) -> Result<ApplyStats, Error> {
        self.apply_with(tar, &overlay())
    }

    fn root(&self) -> &Path {
        &self.root
    }
}

/// Everything beside the root: the canary and anything new.
fn outside(dir: &Path) -> BTreeMap<PathBuf, Node> {
    snapshot(dir, &Record::EXACT)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("root"))
        .collect()
}

fn overlay() -> ApplyOptions {
    ApplyOptions::default()
        .with_whiteouts(WhiteoutFormat::Overlay(XattrNamespace::Trusted))
        .with_privileged(true)
}

#[track_caller]
fn entry_error(r: Result<ApplyStats, Error>, name: &str) -> EntryError {
    match r {
        Err(Error::Entry { entry, reason }) => {
            assert_eq!(entry, Path::new(name));
            reason
        }
        other => panic!("expected an entry error for {name}, got {other:?}"),
    }
}

#[track_caller]
fn io_kind(e: EntryError) -> rustix::io::Errno {
    match e {
        EntryError::Io { source, .. } => rustix::io::Errno::from_io_error(&source).unwrap(),
        other => panic!("expected an io error, got {other:?}"),
    }
}

#[test]
fn dotdot_name() {
    let s = Sandbox::new();
    let tar = RawTar::new().file("../canary/secret", b"pwned").finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "../canary/secret"),
        EntryError::DotDot
    ));
}

/// The message names the entry; why it was refused is the error's source.
#[test]
fn entry_error_message_leaves_the_reason_to_source() {
    let s = Sandbox::new();
    let tar = RawTar::new().file("../canary/secret", b"pwned").finish();
    let err = s.apply(&tar).unwrap_err();
    assert_eq!(err.to_string(), "tar entry ../canary/secret");
    let reason = std::error::Error::source(&err).expect("the reason as source");
    assert_eq!(reason.to_string(), EntryError::DotDot.to_string());
}

#[test]
fn dotdot_inside_name() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .dir("a/")
        .file("a/../../canary/x", b"pwned")
        .finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "a/../../canary/x"),
        EntryError::DotDot
    ));
}

/// An absolute name is cleaned into the root, as Docker loads it: the file
/// lands under the root, never at the absolute path.
#[test]
fn absolute_name_lands_inside_the_root() {
    let s = Sandbox::new();
    let name = format!("{}/canary/secret", s.tmp.path().display());
    let tar = RawTar::new()
        .file(&name, b"inside")
        .file("/./etc/../etc/motd", b"hi")
        .finish();
    s.apply(&tar).unwrap();
    let inside = s.root.join(name.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"inside");
    assert_eq!(std::fs::read(s.root.join("etc/motd")).unwrap(), b"hi");
}

#[test]
fn nul_in_pax_path() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[("path", b"a\0b")])
        .file("x", b"")
        .finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "a\0b"),
        EntryError::InvalidName(_)
    ));
}

#[test]
fn dotdot_in_pax_path() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[("path", b"../canary/secret")])
        .file("x", b"pwned")
        .finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "../canary/secret"),
        EntryError::DotDot
    ));
}

#[test]
fn dotdot_in_gnu_long_name() {
    let s = Sandbox::new();
    let long = format!("{}{}canary/secret", "a/".repeat(60), "../".repeat(61));
    let mut t = RawTar::new();
    t.entry(Raw::new(b"././@LongLink", b'L').data(long.as_bytes()));
    let tar = t.file("short", b"pwned").finish();
    assert!(matches!(
        entry_error(s.apply(&tar), &long),
        EntryError::DotDot
    ));
}

#[test]
fn symlink_then_write_through_relative() {
    // `../canary` is clamped at the root: it names root/canary, which does not exist.
    let s = Sandbox::new();
    let tar = RawTar::new()
        .symlink("link", "../canary")
        .file("link/secret", b"pwned")
        .finish();
    let e = entry_error(s.apply(&tar), "link/secret");
    assert_eq!(io_kind(e), rustix::io::Errno::NOTDIR);
}

#[test]
fn symlink_then_write_through_absolute() {
    // An absolute target resolves from the root: the file lands inside it.
    let s = Sandbox::new();
    let tar = RawTar::new()
        .symlink("link", "/")
        .file("link/f", b"inside")
        .finish();
    s.apply(&tar).unwrap();
    assert_eq!(std::fs::read(s.root().join("f")).unwrap(), b"inside");
}

#[test]
fn symlink_to_outside_dir_then_write() {
    let s = Sandbox::new();
    let target = s.tmp.path().join("canary");
    let tar = RawTar::new()
        .symlink("link", target.to_str().unwrap())
        .file("link/secret", b"pwned")
        .finish();
    let e = entry_error(s.apply(&tar), "link/secret");
    assert_eq!(io_kind(e), rustix::io::Errno::NOTDIR);
}

#[test]
fn symlink_then_dir_replaces_symlink() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .symlink("link", "../canary")
        .dir("link/")
        .file("link/f", b"x")
        .finish();
    s.apply(&tar).unwrap();
    let m = std::fs::symlink_metadata(s.root().join("link")).unwrap();
    assert!(m.is_dir());
    assert_eq!(std::fs::read(s.root().join("link/f")).unwrap(), b"x");
}

#[test]
fn file_over_symlink_replaces_symlink() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .symlink("link", "../canary/secret")
        .file("link", b"mine")
        .finish();
    s.apply(&tar).unwrap();
    let m = std::fs::symlink_metadata(s.root().join("link")).unwrap();
    assert!(m.is_file());
    assert_eq!(std::fs::read(s.root().join("link")).unwrap(), b"mine");
}

#[test]
fn hardlink_dotdot() {
    let s = Sandbox::new();
    let tar = RawTar::new().hardlink("h", "../canary/secret").finish();
    let e = entry_error(s.apply(&tar), "h");
    assert!(matches!(e, EntryError::LinkTarget(b) if matches!(*b, EntryError::DotDot)));
}

#[test]
fn hardlink_absolute() {
    let s = Sandbox::new();
    let target = s.tmp.path().join("canary/secret");
    let tar = RawTar::new()
        .hardlink("h", target.to_str().unwrap())
        .finish();
    // Cleaned into the root, where no such file is: refused, nothing outside touched.
    let e = entry_error(s.apply(&tar), "h");
    assert!(
        matches!(e, EntryError::LinkTarget(_) | EntryError::Io { .. }),
        "{e:?}"
    );
}

#[test]
fn hardlink_through_symlink_stays_inside() {
    let s = Sandbox::new();
    let target = s.tmp.path().join("canary");
    let tar = RawTar::new()
        .symlink("link", target.to_str().unwrap())
        .hardlink("h", "link/secret")
        .finish();
    let e = entry_error(s.apply(&tar), "h");
    assert_eq!(io_kind(e), rustix::io::Errno::NOENT);
}

#[test]
fn hardlink_to_directory() {
    let s = Sandbox::new();
    let tar = RawTar::new().dir("d/").hardlink("h", "d").finish();
    let e = entry_error(s.apply(&tar), "h");
    assert_eq!(io_kind(e), rustix::io::Errno::PERM);
}

#[test]
fn hardlink_to_root() {
    let s = Sandbox::new();
    let tar = RawTar::new().hardlink("h", "./").finish();
    let e = entry_error(s.apply(&tar), "h");
    assert!(matches!(e, EntryError::LinkTarget(b) if matches!(*b, EntryError::ReplacesRoot)));
}

#[test]
fn whiteout_of_dotdot() {
    let s = Sandbox::new();
    let tar = RawTar::new().file(".wh...", b"").finish();
    assert!(matches!(
        entry_error(s.apply(&tar), ".wh..."),
        EntryError::WhiteoutName(_)
    ));
}

#[test]
fn whiteout_of_dot() {
    let s = Sandbox::new();
    let tar = RawTar::new().file("a/.wh..", b"").finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "a/.wh.."),
        EntryError::WhiteoutName(_)
    ));
}

#[test]
fn whiteout_without_target() {
    let s = Sandbox::new();
    let tar = RawTar::new().file(".wh.", b"").finish();
    assert!(matches!(
        entry_error(s.apply(&tar), ".wh."),
        EntryError::WhiteoutName(_)
    ));
}

#[test]
fn whiteout_through_symlink_stays_inside() {
    // `d` points at the root's parent, clamped to the root: the whiteout of
    // `canary` lands in the root, the real canary is untouched.
    let s = Sandbox::new();
    let tar = RawTar::new()
        .symlink("d", "..")
        .file("d/.wh.canary", b"")
        .finish();
    s.apply(&tar).unwrap();
    let m = std::fs::symlink_metadata(s.root().join("canary")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &m.file_type()
    ));
}

#[test]
fn merged_whiteout_of_symlink_removes_only_the_symlink() {
    let s = Sandbox::new();
    let opts = overlay().with_whiteouts(WhiteoutFormat::Merged);
    let tar = RawTar::new()
        .symlink("x", "../canary")
        .file(".wh.x", b"")
        .finish();
    s.apply_with(&tar, &opts).unwrap();
    assert!(std::fs::symlink_metadata(s.root().join("x")).is_err());
}

#[test]
fn merged_opaque_through_outside_symlink() {
    let s = Sandbox::new();
    let opts = overlay().with_whiteouts(WhiteoutFormat::Merged);
    let target = s.tmp.path().join("canary");
    let tar = RawTar::new()
        .symlink("d", target.to_str().unwrap())
        .file("d/.wh..wh..opq", b"")
        .finish();
    let e = entry_error(s.apply_with(&tar, &opts), "d/.wh..wh..opq");
    assert_eq!(io_kind(e), rustix::io::Errno::NOTDIR);
}

#[test]
fn aufs_private_metadata_at_the_root_is_left_out() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/unreferenced", b"gone")
        .dir(".wh..wh.plnk/sub/")
        .file(".wh..wh.aufs", b"")
        .dir(".wh..wh.orph/")
        .file(".wh..wh.orph/x", b"")
        .finish();
    let stats = s.apply(&tar).unwrap();
    assert_eq!(stats.skipped_aufs_meta, 6);
    // Nothing of it in the root, and the unreferenced unnamed file is gone with it.
    assert_eq!(std::fs::read_dir(s.root()).unwrap().count(), 0);
}

#[test]
fn aufs_private_metadata_below_the_root_is_refused() {
    let s = Sandbox::new();
    let tar = RawTar::new().dir("d/").file("d/.wh..wh.aufs", b"").finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "d/.wh..wh.aufs"),
        EntryError::WhiteoutName(_)
    ));
}

/// Hard links into aufs's `.wh..wh.plnk` (layers made on aufs hosts hold them)
/// point at the file kept aside, which stays out of the root.
#[test]
fn hard_links_into_aufs_plnk_are_resolved() {
    use std::os::unix::fs::MetadataExt;
    let s = Sandbox::new();
    let tar = RawTar::new()
        .dir(".wh..wh.plnk/")
        .entry(
            Raw::new(b".wh..wh.plnk/1234.5678", b'0')
                .data(b"shared")
                .mode(0o640),
        )
        .hardlink("a", ".wh..wh.plnk/1234.5678")
        .dir("b/")
        .hardlink("b/c", "./.wh..wh.plnk/1234.5678")
        .finish();
    let stats = s.apply(&tar).unwrap();
    assert_eq!(stats.skipped_aufs_meta, 2);
    let a = std::fs::metadata(s.root().join("a")).unwrap();
    let c = std::fs::metadata(s.root().join("b/c")).unwrap();
    assert_eq!(std::fs::read(s.root().join("b/c")).unwrap(), b"shared");
    assert_eq!((a.ino(), a.nlink(), a.mode() & 0o7777), (c.ino(), 2, 0o640));
    let mut names: Vec<_> = std::fs::read_dir(s.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn hard_link_into_aufs_plnk_without_the_file() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .hardlink("a", ".wh..wh.plnk/1234.5678")
        .finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "a"),
        EntryError::LinkTarget(_)
    ));
}

#[test]
fn whiteout_as_directory_component() {
    let s = Sandbox::new();
    let tar = RawTar::new().file(".wh.d/f", b"").finish();
    assert!(matches!(
        entry_error(s.apply(&tar), ".wh.d/f"),
        EntryError::WhiteoutName(_)
    ));
}

#[test]
fn whiteout_that_is_a_symlink() {
    let s = Sandbox::new();
    let tar = RawTar::new().symlink(".wh.x", "../canary").finish();
    assert!(matches!(
        entry_error(s.apply(&tar), ".wh.x"),
        EntryError::WhiteoutName(_)
    ));
}

#[test]
fn forged_trusted_overlay_xattr() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        .dir("d/")
        .finish();
    let e = entry_error(s.apply(&tar), "d/");
    assert!(matches!(e, EntryError::OverlayXattr(ref n) if n == "trusted.overlay.opaque"));
}

#[test]
fn forged_user_overlay_xattr() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[("SCHILY.xattr.user.overlay.redirect", b"/x")])
        .dir("d/")
        .finish();
    let e = entry_error(s.apply(&tar), "d/");
    assert!(matches!(e, EntryError::OverlayXattr(ref n) if n == "user.overlay.redirect"));
}

#[test]
fn truncated_header() {
    let s = Sandbox::new();
    let mut tar = RawTar::new().file("a", b"hello").finish();
    tar.truncate(1024 + 100);
    match s.apply(&tar) {
        Err(Error::Tar {
            position,
            after: Some(p),
            ..
        }) => {
            assert_eq!(p, Path::new("a"));
            assert_eq!(position, 1124);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_data() {
    let s = Sandbox::new();
    let mut t = RawTar::new();
    let mut e = Raw::new(b"big", b'0').data(b"only this");
    e.size = Some(100_000);
    let tar = t.entry(e).bytes.clone();
    let r = entry_error(s.apply(&tar), "big");
    assert!(
        matches!(
            r,
            EntryError::Truncated {
                expected: 100_000,
                got: 512
            }
        ),
        "{r:?}"
    );
}

#[test]
fn absurd_size_without_data() {
    let s = Sandbox::new();
    let mut e = Raw::new(b"huge", b'0');
    e.size = Some(1 << 60);
    let tar = RawTar::new().entry(e).bytes.clone();
    assert!(
        matches!(entry_error(s.apply(&tar), "huge"), EntryError::Truncated { expected, got: 0 } if expected == 1 << 60)
    );
}

#[test]
fn bad_checksum() {
    let s = Sandbox::new();
    let mut tar = RawTar::new().file("a", b"x").finish();
    tar[0] = b'b';
    assert!(matches!(
        s.apply(&tar),
        Err(Error::Tar {
            position: 512,
            after: None,
            ..
        })
    ));
}

#[test]
fn bad_mode_field() {
    let s = Sandbox::new();
    let mut h = common::header(&Raw::new(b"a", b'0'));
    h.as_gnu_mut().unwrap().mode = *b"09x4\0\0\0\0";
    h.set_cksum();
    let tar = RawTar::new().header(&h).finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "a"),
        EntryError::Header { field: "mode", .. }
    ));
}

#[test]
fn bad_size_field() {
    let s = Sandbox::new();
    let mut h = common::header(&Raw::new(b"a", b'0'));
    h.as_gnu_mut().unwrap().size = *b"zzzzzzzzzzz\0";
    h.set_cksum();
    let tar = RawTar::new().header(&h).finish();
    assert!(matches!(s.apply(&tar), Err(Error::Tar { after: None, .. })));
}

#[test]
fn bad_uid_field() {
    let s = Sandbox::new();
    let mut h = common::header(&Raw::new(b"a", b'0'));
    h.as_gnu_mut().unwrap().uid = *b"-1\0\0\0\0\0\0";
    h.set_cksum();
    let tar = RawTar::new().header(&h).finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "a"),
        EntryError::Header { field: "uid", .. }
    ));
}

#[test]
fn unsupported_entry_types() {
    for ty in [b'V', b'M', b'N', b'X'] {
        let s = Sandbox::new();
        let tar = RawTar::new().entry(Raw::new(b"odd", ty)).finish();
        let e = entry_error(s.apply(&tar), "odd");
        assert!(
            matches!(e, EntryError::UnsupportedType(c) if c == ty as char),
            "{e:?}"
        );
    }
}

#[test]
fn endless_long_name_is_bounded() {
    let s = Sandbox::new();
    let mut e = Raw::new(b"././@LongLink", b'L');
    e.size = Some(1 << 40);
    let head = RawTar::new().entry(e).bytes.clone();
    let reader = head.as_slice().chain(std::io::repeat(b'a').take(1 << 40));
    let r = apply(reader, s.root(), &overlay());
    assert!(matches!(r, Err(Error::Tar { after: None, .. })), "{r:?}");
    assert_eq!(outside(s.tmp.path()), s.before);
}

#[test]
fn absurd_sparse_size() {
    let s = Sandbox::new();
    let mut h = common::header(&Raw::new(b"sparse", b'S'));
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(1 << 50);
        gnu.sparse[0].set_offset(1 << 50);
        gnu.sparse[0].set_length(0);
    }
    h.set_cksum();
    let tar = RawTar::new().header(&h).finish();
    assert!(
        matches!(entry_error(s.apply(&tar), "sparse"), EntryError::TooLarge(n) if n == 1 << 50)
    );
}

#[test]
fn file_replacing_the_root() {
    let s = Sandbox::new();
    let tar = RawTar::new().file("./", b"").finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "./"),
        EntryError::ReplacesRoot
    ));
}

#[test]
fn symlink_without_target() {
    let s = Sandbox::new();
    let tar = RawTar::new().entry(Raw::new(b"l", b'2')).finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "l"),
        EntryError::MissingLinkTarget
    ));
}

#[test]
fn bad_pax_time() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[("mtime", b"12x")])
        .file("a", b"")
        .finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "a"),
        EntryError::Pax(_)
    ));
}

#[test]
fn symlink_loop_in_parent() {
    let s = Sandbox::new();
    let tar = RawTar::new().symlink("a", "a").file("a/f", b"").finish();
    let e = entry_error(s.apply(&tar), "a/f");
    assert_eq!(io_kind(e), rustix::io::Errno::LOOP);
}

#[test]
fn file_under_a_file() {
    let s = Sandbox::new();
    let tar = RawTar::new().file("a", b"").file("a/f", b"").finish();
    let e = entry_error(s.apply(&tar), "a/f");
    assert_eq!(io_kind(e), rustix::io::Errno::NOTDIR);
}

#[test]
fn two_long_names_for_one_entry() {
    let s = Sandbox::new();
    let mut t = RawTar::new();
    t.entry(Raw::new(b"././@LongLink", b'L').data(b"one"));
    t.entry(Raw::new(b"././@LongLink", b'L').data(b"two"));
    let tar = t.file("x", b"").finish();
    assert!(matches!(s.apply(&tar), Err(Error::Tar { after: None, .. })));
}

#[test]
fn unprivileged_skips_devices_and_owners() {
    let s = Sandbox::new();
    let mut t = RawTar::new();
    let mut dev = Raw::new(b"null", b'3');
    dev.uid = 5;
    t.entry(dev);
    let tar = t.file("f", b"x").finish();
    let opts = overlay().with_privileged(false);
    let stats = s.apply_with(&tar, &opts).unwrap();
    assert_eq!(stats.skipped_devices, 1);
    assert!(std::fs::symlink_metadata(s.root().join("null")).is_err());
    assert_eq!(stats.entries, 2);
}

#[test]
fn unmapped_owner() {
    let s = Sandbox::new();
    let mut e = Raw::new(b"f", b'0');
    e.uid = 70_000;
    let tar = RawTar::new().entry(e).finish();
    let opts = overlay()
        .with_uid_map(vec![plies_archive::IdMap {
            container_id: 0,
            host_id: 100_000,
            size: 65536,
        }])
        .with_gid_map(vec![plies_archive::IdMap {
            container_id: 0,
            host_id: 100_000,
            size: 65536,
        }]);
    let e = entry_error(s.apply_with(&tar, &opts), "f");
    assert!(matches!(
        e,
        EntryError::Unmapped {
            kind: "uid",
            id: 70_000
        }
    ));
}

#[test]
fn device_replacing_canary_path_stays_inside() {
    if !plies_testkit::require_root("device_replacing_canary_path_stays_inside") {
        return;
    }
    let s = Sandbox::new();
    let tar = RawTar::new()
        .symlink("up", "../..")
        .entry(Raw::new(b"up/canary", b'6'))
        .finish();
    s.apply(&tar).unwrap();
    let m = std::fs::symlink_metadata(s.root().join("canary")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
}

#[test]
fn pax_sparse_chunk_past_the_end() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"s"),
            ("GNU.sparse.realsize", b"10"),
        ])
        .file("GNUSparseFile.0/s", b"1\n8\n5\n")
        .finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "GNUSparseFile.0/s"),
        EntryError::Pax(_)
    ));
}

/// GNU's PAX sparse formats 0.0 (repeated offset/numbytes records) and 0.1
/// (one map record): the chunks land at their offsets, holes between them.
#[test]
fn pax_sparse_0x_formats_keep_holes() {
    let want = b"\0\0abc\0\0\0de\0\0";
    for (name, records) in [
        (
            "zero-zero",
            vec![
                ("GNU.sparse.size", &b"12"[..]),
                ("GNU.sparse.numblocks", b"2"),
                ("GNU.sparse.offset", b"2"),
                ("GNU.sparse.numbytes", b"3"),
                ("GNU.sparse.offset", b"8"),
                ("GNU.sparse.numbytes", b"2"),
            ],
        ),
        (
            "zero-one",
            vec![
                ("GNU.sparse.size", &b"12"[..]),
                ("GNU.sparse.numblocks", b"2"),
                ("GNU.sparse.map", b"2,3,8,2"),
            ],
        ),
        (
            "zero-one-named",
            vec![
                ("GNU.sparse.major", &b"0"[..]),
                ("GNU.sparse.minor", b"1"),
                ("GNU.sparse.name", b"zero-one-named"),
                ("GNU.sparse.size", b"12"),
                ("GNU.sparse.map", b"2,3,8,2"),
            ],
        ),
    ] {
        let s = Sandbox::new();
        let tar = RawTar::new()
            .pax(&records)
            .file("GNUSparseFile.1/stored-as", b"abcde")
            .finish();
        let stats = s.apply(&tar).unwrap();
        assert_eq!(stats.size, 5, "{name}");
        let at = if name.ends_with("named") {
            name
        } else {
            "GNUSparseFile.1/stored-as"
        };
        assert_eq!(std::fs::read(s.root().join(at)).unwrap(), want, "{name}");
    }
}

/// PAX records, key and value.
type Records<'a> = &'a [(&'a str, &'a [u8])];

/// Malformed 0.x sparse maps are refused before anything is written.
#[test]
fn pax_sparse_0x_maps_are_checked() {
    let cases: &[(&str, Records<'_>)] = &[
        (
            "odd count",
            &[("GNU.sparse.size", b"9"), ("GNU.sparse.map", b"0,1,4")],
        ),
        (
            "past the size",
            &[("GNU.sparse.size", b"3"), ("GNU.sparse.map", b"2,3")],
        ),
        (
            "overlapping",
            &[("GNU.sparse.size", b"9"), ("GNU.sparse.map", b"0,3,2,2")],
        ),
        (
            "numblocks",
            &[
                ("GNU.sparse.size", b"9"),
                ("GNU.sparse.numblocks", b"2"),
                ("GNU.sparse.map", b"0,5"),
            ],
        ),
        (
            "more data than chunks",
            &[("GNU.sparse.size", b"9"), ("GNU.sparse.map", b"0,4")],
        ),
        (
            "not a number",
            &[("GNU.sparse.size", b"9"), ("GNU.sparse.map", b"0,+5")],
        ),
        (
            "offset alone",
            &[("GNU.sparse.size", b"9"), ("GNU.sparse.offset", b"0")],
        ),
        (
            "two offsets",
            &[
                ("GNU.sparse.size", b"9"),
                ("GNU.sparse.offset", b"0"),
                ("GNU.sparse.offset", b"1"),
                ("GNU.sparse.numbytes", b"5"),
            ],
        ),
        (
            "length alone",
            &[("GNU.sparse.size", b"9"), ("GNU.sparse.numbytes", b"5")],
        ),
        (
            "a map in a 1.0 entry",
            &[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.size", b"9"),
                ("GNU.sparse.map", b"0,5"),
            ],
        ),
        (
            "no map",
            &[("GNU.sparse.major", b"0"), ("GNU.sparse.minor", b"1")],
        ),
    ];
    for (what, records) in cases {
        let s = Sandbox::new();
        let tar = RawTar::new().pax(records).file("s", b"12345").finish();
        assert!(
            matches!(entry_error(s.apply(&tar), "s"), EntryError::Pax(_)),
            "{what}"
        );
        assert!(!s.root().join("s").exists(), "{what}");
    }
}

#[test]
fn pax_sparse_name_with_dotdot() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"../canary/secret"),
            ("GNU.sparse.realsize", b"1"),
        ])
        .file("GNUSparseFile.0/s", b"0\n")
        .finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "GNUSparseFile.0/s"),
        EntryError::DotDot
    ));
}

/// A PAX header holding `body` as is, then a file `name`.
fn raw_pax(body: &[u8], name: &str) -> Vec<u8> {
    let mut t = RawTar::new();
    t.entry(Raw::new(b"././@PaxHeader", b'x').data(body));
    t.file(name, b"content").finish()
}

#[test]
fn pax_record_length_past_the_end() {
    let s = Sandbox::new();
    let tar = raw_pax(b"99 path=../canary/secret\n", "a");
    assert!(matches!(
        entry_error(s.apply(&tar), "a"),
        EntryError::Pax(_)
    ));
    assert!(!s.root().join("a").exists());
}

#[test]
fn pax_record_length_too_short() {
    // 10 would end the record inside the value: it must end with a newline.
    let s = Sandbox::new();
    let tar = raw_pax(b"10 path=../x\n", "a");
    assert!(matches!(
        entry_error(s.apply(&tar), "a"),
        EntryError::Pax(_)
    ));
}

#[test]
fn pax_record_length_not_a_number() {
    for body in [
        &b"x2 path=b\n"[..],
        b" 11 path=b\n",
        b"011 path=b\n",
        b"0 =\n",
        b"4 =\n",
        b"99999999999999999999999 path=b\n",
        b"11path=bcd\n",
    ] {
        let s = Sandbox::new();
        let tar = raw_pax(body, "a");
        assert!(
            matches!(entry_error(s.apply(&tar), "a"), EntryError::Pax(_)),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn pax_record_without_key() {
    for body in [&b"7 =abc\n"[..], b"7 abcd\n"] {
        let s = Sandbox::new();
        let tar = raw_pax(body, "a");
        assert!(matches!(
            entry_error(s.apply(&tar), "a"),
            EntryError::Pax(_)
        ));
    }
}

#[test]
fn pax_trailing_bytes_after_records() {
    let s = Sandbox::new();
    let tar = raw_pax(b"10 path=b\n\0\0", "a");
    assert!(matches!(
        entry_error(s.apply(&tar), "a"),
        EntryError::Pax(_)
    ));
}

#[test]
fn pax_value_cannot_smuggle_records() {
    // A value holding what looks like a `size` and a `path` record stays one
    // value: split at newlines it would move the data boundary and the name.
    let s = Sandbox::new();
    let value = b"x\n10 size=0\n24 path=../canary/secret\n";
    let tar = RawTar::new()
        .pax(&[("SCHILY.xattr.user.v", value)])
        .file("a", b"content")
        .file("b", b"more")
        .finish();
    s.apply(&tar).unwrap();
    assert_eq!(std::fs::read(s.root().join("a")).unwrap(), b"content");
    assert_eq!(std::fs::read(s.root().join("b")).unwrap(), b"more");
    assert_eq!(
        xattr::get(s.root().join("a"), "user.v").unwrap().unwrap(),
        value
    );
}

#[test]
fn pax_size_not_a_number() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[("size", b"12abc")])
        .file("a", b"")
        .finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "a"),
        EntryError::Pax(_)
    ));
}

#[test]
fn pax_size_past_the_end() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .pax(&[("size", b"1000000")])
        .file("a", b"short")
        .finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "a"),
        EntryError::Truncated {
            expected: 1_000_000,
            got: 1536
        }
    ));
}

#[test]
fn pax_header_cut_short() {
    let s = Sandbox::new();
    let mut e = Raw::new(b"././@PaxHeader", b'x').data(b"12 path=abc\n");
    e.size = Some(5000);
    let tar = RawTar::new().entry(e).bytes.clone();
    assert!(matches!(s.apply(&tar), Err(Error::Tar { after: None, .. })));
}

#[test]
fn pax_header_without_an_entry() {
    let s = Sandbox::new();
    let tar = RawTar::new()
        .file("a", b"x")
        .pax(&[("path", b"b")])
        .finish();
    match s.apply(&tar) {
        Err(Error::Tar { after: Some(p), .. }) => assert_eq!(p, Path::new("a")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn gnu_sparse_chunks_out_of_order() {
    let s = Sandbox::new();
    let mut h = common::header(&Raw::new(b"sparse", b'S'));
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(4096);
        gnu.sparse[0].set_offset(2048);
        gnu.sparse[0].set_length(512);
        gnu.sparse[1].set_offset(0);
        gnu.sparse[1].set_length(512);
    }
    h.set_size(1024);
    h.set_cksum();
    let tar = RawTar::new().header(&h).data(&[1u8; 1024]).finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "sparse"),
        EntryError::Header {
            field: "sparse map",
            ..
        }
    ));
}

#[test]
fn gnu_sparse_chunks_past_the_end() {
    let s = Sandbox::new();
    let mut h = common::header(&Raw::new(b"sparse", b'S'));
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(1000);
        gnu.sparse[0].set_offset(900);
        gnu.sparse[0].set_length(512);
    }
    h.set_size(512);
    h.set_cksum();
    let tar = RawTar::new().header(&h).data(&[1u8; 512]).finish();
    assert!(matches!(
        entry_error(s.apply(&tar), "sparse"),
        EntryError::Header {
            field: "sparse map",
            ..
        }
    ));
}
