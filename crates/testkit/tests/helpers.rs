//! The layer tar builder and tree snapshots, on their own.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use plies_testkit::layer_tar::{LayerTar, MTIME};
use plies_testkit::tree::{Kind, Node, Record, assert_same, snapshot};

/// `path type mode uid:gid mtime link data pax` for every entry of a tar.
fn listing(tar: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for e in tar::Archive::new(tar).entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let pax: Vec<String> = match e.pax_extensions().unwrap() {
            Some(records) => records
                .map(|r| {
                    let r = r.unwrap();
                    format!("{}={}", r.key().unwrap(), r.value().unwrap())
                })
                .collect(),
            None => Vec::new(),
        };
        let link = e.link_name().unwrap().map(|l| l.display().to_string());
        let mut data = String::new();
        e.read_to_string(&mut data).unwrap();
        out.push(format!(
            "{} {:?} {:o} {}:{} {} {link:?} {data:?} {pax:?}",
            e.path().unwrap().display(),
            h.entry_type(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap(),
        ));
    }
    out
}

#[test]
fn layer_tar_writes_each_kind_of_entry() {
    let tar = LayerTar::new()
        .dir("etc", 0o755)
        .file("etc/motd", "hi", 0o600)
        .whiteout("etc/hosts")
        .whiteout("top")
        .opaque("var/cache")
        .xattr("user.a", b"1")
        .xattr("trusted.b", b"2")
        .file("attr", "x", 0o644)
        .symlink("link", "etc/motd")
        .hardlink("hard", "etc/motd")
        .fifo("pipe", 0o640)
        .finish();
    let m = MTIME;
    assert_eq!(
        listing(&tar),
        [
            format!("etc Directory 755 0:0 {m} None \"\" []"),
            format!("etc/motd Regular 600 0:0 {m} None \"hi\" []"),
            format!("etc/.wh.hosts Regular 644 0:0 {m} None \"\" []"),
            format!(".wh.top Regular 644 0:0 {m} None \"\" []"),
            format!("var/cache/.wh..wh..opq Regular 644 0:0 {m} None \"\" []"),
            format!(
                "attr Regular 644 0:0 {m} None \"x\" [\"SCHILY.xattr.user.a=1\", \"SCHILY.xattr.trusted.b=2\"]"
            ),
            format!("link Symlink 777 0:0 {m} Some(\"etc/motd\") \"\" []"),
            format!("hard Link 644 0:0 {m} Some(\"etc/motd\") \"\" []"),
            format!("pipe Fifo 640 0:0 {m} None \"\" []"),
        ]
    );
}

#[test]
fn owner_and_mtime_hold_for_the_entries_after_them() {
    let mut t = LayerTar::ustar();
    t.file("a", "", 0o644)
        .owner(1000, 100)
        .mtime(5)
        .file("b", "", 0o644);
    t.dir("c", 0o700).owner(0, 0).file("d", "", 0o644);
    let tar = t.finish();
    assert_eq!(&tar[257..263], b"ustar\0");
    let owners: Vec<String> = listing(&tar)
        .iter()
        .map(|l| l.split(' ').take(5).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        owners,
        [
            format!("a Regular 644 0:0 {MTIME}"),
            "b Regular 644 1000:100 5".to_owned(),
            "c Directory 700 1000:100 5".to_owned(),
            "d Regular 644 0:0 5".to_owned(),
        ]
    );
    // The builder starts again empty: just the two end blocks.
    assert_eq!(t.finish(), vec![0u8; 1024]);
}

#[test]
fn long_names_and_targets_fit_either_header() {
    let long = format!("{}/{}", "d".repeat(90), "f".repeat(60));
    for mut t in [LayerTar::new(), LayerTar::ustar()] {
        let tar = t
            .file(&long, "x", 0o644)
            .symlink("s", &long)
            .whiteout(&long)
            .finish();
        let names: Vec<String> = listing(&tar)
            .iter()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect();
        let wh = format!("{}/.wh.{}", "d".repeat(90), "f".repeat(60));
        assert_eq!(names, [long.clone(), "s".to_owned(), wh]);
    }
}

#[test]
#[should_panic(expected = "an xattr with no entry after it")]
fn an_xattr_needs_an_entry_after_it() {
    LayerTar::new().xattr("user.a", b"1").finish();
}

fn file(data: &[u8], links: u64, group: Option<u64>) -> Kind {
    Kind::File {
        data: data.to_vec(),
        links,
        group,
    }
}

#[test]
fn snapshots_record_what_record_asks_for() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    let r = tmp.path().join("r");
    std::fs::create_dir_all(r.join("d")).unwrap();
    std::fs::write(&outside, "o").unwrap();
    std::fs::write(r.join("d/f"), "f").unwrap();
    std::fs::hard_link(r.join("d/f"), r.join("g")).unwrap();
    std::fs::hard_link(&outside, r.join("o")).unwrap();
    std::fs::write(r.join("solo"), "s").unwrap();
    std::os::unix::fs::symlink("d/f", r.join("s")).unwrap();
    std::fs::set_permissions(r.join("d"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(r.join("solo"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    xattr::set(r.join("d/f"), "user.kept", b"1").unwrap();
    plies_testkit::set_times(&r.join("solo"), 1_000, 7);
    plies_testkit::set_times(&r.join("d"), 2_000, 9);

    let mounted = snapshot(&r, &Record::MOUNTED);
    let paths: Vec<&Path> = mounted.keys().map(|p| p.as_path()).collect();
    assert_eq!(paths, ["d", "d/f", "g", "o", "s", "solo"].map(Path::new));
    assert_eq!(mounted.get("d"), Some(&Node::dir(0o750)));
    assert_eq!(mounted.get("solo"), Some(&Node::file(0o4755, "s", 1_000)));
    assert_eq!(mounted.get("d/f").unwrap().kind, file(b"f", 2, None));
    assert_eq!(
        mounted.get("d/f").unwrap().xattrs,
        [("user.kept".to_owned(), b"1".to_vec())]
    );
    // The link from outside is not counted: one path of this tree.
    assert_eq!(mounted.get("o").unwrap().kind, file(b"o", 1, None));
    assert_eq!(mounted.get("s").unwrap().kind, Kind::Symlink("d/f".into()));

    let exact = snapshot(&r, &Record::EXACT);
    let owner = Some((0, 0)).filter(|_| rustix::process::geteuid().is_root());
    assert_eq!(exact.get("d").unwrap().mtime, Some((2_000, 9)));
    assert_eq!(exact.get("solo").unwrap().mtime, Some((1_000, 7)));
    if owner.is_some() {
        assert_eq!(exact.get("solo").unwrap().owner, owner);
    }
    // Groups in walk order: d/f and g share the first, o has the second (its
    // other link is outside), solo has one link.
    assert_eq!(exact.get("d/f").unwrap().kind, file(b"f", 2, Some(1)));
    assert_eq!(exact.get("g").unwrap().kind, file(b"f", 2, Some(1)));
    assert_eq!(exact.get("o").unwrap().kind, file(b"o", 1, Some(2)));
    assert_eq!(exact.get("solo").unwrap().kind, file(b"s", 1, Some(0)));
}

#[test]
fn mounted_snapshots_leave_out_overlay_xattrs() {
    if !plies_testkit::require_root("mounted_snapshots_leave_out_overlay_xattrs") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    xattr::set(tmp.path().join("d"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(tmp.path().join("d"), "trusted.plies", b"t").unwrap();
    let mounted = snapshot(tmp.path(), &Record::MOUNTED);
    assert_eq!(
        mounted.get("d").unwrap().xattrs,
        [("trusted.plies".to_owned(), b"t".to_vec())]
    );
    let exact = snapshot(tmp.path(), &Record::EXACT);
    assert_eq!(exact.get("d").unwrap().xattrs.len(), 2);
}

#[test]
fn assert_same_names_the_paths_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("same"), "s").unwrap();
    }
    std::fs::write(a.join("f"), "one").unwrap();
    std::fs::write(b.join("f"), "three").unwrap();
    let (ta, tb) = (
        snapshot(&a, &Record::MOUNTED),
        snapshot(&b, &Record::MOUNTED),
    );
    assert_same(&ta, &ta, "itself");
    let err = std::panic::catch_unwind(|| assert_same(&ta, &tb, "ctx")).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(
        msg.starts_with("ctx: trees differ:\nf: File { 3 bytes"),
        "{msg}"
    );
    assert!(msg.contains("vs File { 5 bytes"), "{msg}");
    assert!(!msg.contains("same"), "{msg}");
}
