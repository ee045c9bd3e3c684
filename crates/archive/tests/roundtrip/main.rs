//! Random trees exported and applied again come back the same, in overlay and
//! aufs formats; export is deterministic.

#[path = "../common/mod.rs"]
mod common;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use plies_archive::{ApplyOptions, ExportOptions, WhiteoutFormat, XattrNamespace, apply, export};
use plies_testkit::layer_tar::LayerTar;
use plies_testkit::tree::{Record, snapshot};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir { opaque: bool },
    Symlink(String),
    Hardlink(usize),
    Whiteout,
    Fifo,
}

#[derive(Debug, Clone)]
struct Item {
    path: Vec<&'static str>,
    kind: Kind,
    mode: u32,
    owner: u32,
    mtime: (i64, i64),
    xattr: Option<Vec<u8>>,
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "dir",
    "x y",
    "ü",
    "long-name-that-goes-on-and-on-and-on-for-a-while-to-need-pax-records-because-it-is-long",
];

fn item() -> impl Strategy<Value = Item> {
    let kind = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Kind::File),
        3 => any::<bool>().prop_map(|opaque| Kind::Dir { opaque }),
        1 => "[a-z./]{1,20}".prop_map(Kind::Symlink),
        1 => (0usize..8).prop_map(Kind::Hardlink),
        1 => Just(Kind::Whiteout),
        1 => Just(Kind::Fifo),
    ];
    (
        proptest::collection::vec(proptest::sample::select(NAMES), 1..4),
        kind,
        prop_oneof![
            Just(0o644u32),
            Just(0o755),
            Just(0o600),
            Just(0o4755),
            Just(0o1777),
            Just(0o2750)
        ],
        prop_oneof![Just(0u32), Just(1000), Just(65534), Just(3_000_000)],
        (
            0i64..2_000_000_000,
            prop_oneof![Just(0i64), 0i64..1_000_000_000],
        ),
        // No newline: the tar parser splits PAX records at newlines.
        proptest::option::of(proptest::collection::vec(
            any::<u8>().prop_filter("newline", |b| *b != b'\n'),
            0..40,
        )),
    )
        .prop_map(|(path, kind, mode, owner, mtime, xattr)| Item {
            path,
            kind,
            mode,
            owner,
            mtime,
            xattr,
        })
}

/// Builds the tree in `format`; returns nothing, skips items that clash.
fn build(root: &Path, items: &[Item], format: WhiteoutFormat) {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut times: Vec<(PathBuf, (i64, i64))> = Vec::new();
    for it in items {
        let rel: PathBuf = it.path.iter().collect();
        let p = root.join(&rel);
        let parent = p.parent().unwrap();
        if std::fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        // An aufs branch never holds a name beside its own whiteout (aufs hides
        // the name; an apply of both in one layer keeps the name, as OCI says).
        if format == WhiteoutFormat::Aufs
            && rel
                .ancestors()
                .filter(|a| !a.as_os_str().is_empty())
                .any(|a| {
                    let mut wh = OsStr::new(".wh.").to_os_string();
                    wh.push(a.file_name().unwrap());
                    std::fs::symlink_metadata(root.join(a).with_file_name(wh)).is_ok()
                })
        {
            continue;
        }
        // Parents must be real directories made by the tree itself.
        let mut ok = true;
        for anc in rel
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
        {
            match std::fs::symlink_metadata(root.join(anc)) {
                Ok(m) if !m.is_dir() => ok = false,
                _ => {}
            }
        }
        if !ok {
            continue;
        }
        std::fs::create_dir_all(parent).unwrap();
        let name = p.file_name().unwrap().to_owned();
        let set_meta = |p: &Path, xattrs: bool| {
            std::os::unix::fs::lchown(p, Some(it.owner), Some(it.owner)).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(it.mode)).unwrap();
            if let Some(v) = it.xattr.as_ref().filter(|_| xattrs) {
                xattr::set(p, "user.test", v).unwrap();
            }
        };
        match &it.kind {
            Kind::File(data) => {
                std::fs::write(&p, data).unwrap();
                set_meta(&p, true);
                files.push(p.clone());
                times.push((p, it.mtime));
            }
            Kind::Dir { opaque } => {
                std::fs::create_dir(&p).unwrap();
                set_meta(&p, true);
                if *opaque {
                    match format {
                        WhiteoutFormat::Overlay(ns) => {
                            xattr::set(&p, ns.opaque_key(), b"y").unwrap()
                        }
                        _ => {
                            let m = p.join(plies_whiteout::OPAQUE_MARKER);
                            std::fs::write(&m, b"").unwrap();
                            times.push((m, it.mtime));
                        }
                    }
                }
                times.push((p, it.mtime));
            }
            Kind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &p).unwrap();
                std::os::unix::fs::lchown(&p, Some(it.owner), Some(it.owner)).unwrap();
                // The kernel allows no `user.` xattrs on symlinks; `trusted.` it does.
                if let Some(v) = &it.xattr {
                    xattr::set(&p, "trusted.test", v).unwrap();
                }
            }
            Kind::Hardlink(i) => {
                if let Some(f) = files.get(*i) {
                    if f.exists() {
                        std::fs::hard_link(f, &p).unwrap();
                    }
                }
            }
            Kind::Whiteout => match format {
                WhiteoutFormat::Overlay(_) => {
                    let dir = std::fs::File::open(parent).unwrap();
                    plies_whiteout::create_overlay_whiteout(&dir, &name).unwrap();
                    std::os::unix::fs::lchown(&p, Some(it.owner), Some(it.owner)).unwrap();
                }
                _ => {
                    let mut wh = OsStr::new(".wh.").to_os_string();
                    wh.push(&name);
                    let w = parent.join(wh);
                    if std::fs::symlink_metadata(&w).is_err() {
                        std::fs::write(&w, b"").unwrap();
                        times.push((w, it.mtime));
                    }
                }
            },
            Kind::Fifo => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap();
                set_meta(&p, false);
                if let Some(v) = &it.xattr {
                    xattr::set(&p, "trusted.test", v).unwrap();
                }
            }
        }
    }
    // Children first, so making them does not move their parents' times.
    times.sort();
    for (p, t) in times.iter().rev() {
        if std::fs::symlink_metadata(p).is_ok() {
            plies_testkit::set_times(p, t.0, t.1);
        }
    }
}

fn export_bytes(root: &Path, format: WhiteoutFormat) -> Vec<u8> {
    let mut out = Vec::new();
    export(root, &ExportOptions::default().with_whiteouts(format))
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn round_trip(items: &[Item], format: WhiteoutFormat) -> Result<(), TestCaseError> {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    build(src.path(), items, format);
    let tar = export_bytes(src.path(), format);
    prop_assert_eq!(
        &tar,
        &export_bytes(src.path(), format),
        "export is not deterministic"
    );
    apply(
        tar.as_slice(),
        dst.path(),
        &ApplyOptions::default()
            .with_whiteouts(format)
            .with_privileged(true),
    )
    .unwrap();
    let before = snapshot(src.path(), &Record::EXACT);
    let after = snapshot(dst.path(), &Record::EXACT);
    prop_assert_eq!(before, after);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        // Seeds of past failures live beside this file.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn overlay_round_trip(items in proptest::collection::vec(item(), 1..40)) {
        if !plies_testkit::require_root("overlay_round_trip") {
            return Ok(());
        }
        round_trip(&items, WhiteoutFormat::Overlay(XattrNamespace::Trusted))?;
    }

    #[test]
    fn aufs_round_trip(items in proptest::collection::vec(item(), 1..40)) {
        if !plies_testkit::require_root("aufs_round_trip") {
            return Ok(());
        }
        round_trip(&items, WhiteoutFormat::Aufs)?;
    }
}

/// One tar entry: name, type, link target, uid, PAX records.
type Listed = (
    String,
    tar::EntryType,
    Option<String>,
    u64,
    Vec<(String, Vec<u8>)>,
);

/// The PAX records of a tar entry, in order.
fn pax_records<R: std::io::Read>(e: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    match e.pax_extensions().unwrap() {
        Some(p) => p
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value_bytes().to_vec())
            })
            .collect(),
        None => Vec::new(),
    }
}

/// The entries of a tar.
fn entries(tar: &[u8]) -> Vec<Listed> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let pax = pax_records(&mut e);
            (
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
                e.link_name().unwrap().map(|l| l.display().to_string()),
                e.header().uid().unwrap(),
                pax,
            )
        })
        .collect()
}

#[test]
fn export_details() {
    if !plies_testkit::require_root("export_details") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    let long = "n".repeat(150);
    std::fs::write(r.join(&long), b"x").unwrap();
    std::fs::hard_link(r.join(&long), r.join("second")).unwrap();
    std::os::unix::fs::lchown(r.join("second"), Some(100_123), Some(100_000)).unwrap();
    xattr::set(r.join("second"), "user.keep", b"1").unwrap();
    xattr::set(r.join("second"), "trusted.overlay.origin", b"drop").unwrap();
    plies_testkit::set_times(&r.join("second"), 1_600_000_000, 5);
    std::fs::create_dir_all(r.join(".wh..wh.plnk")).unwrap();
    std::fs::write(r.join(".wh..wh.aufs"), b"").unwrap();
    let map = vec![plies_archive::IdMap {
        container_id: 0,
        host_id: 100_000,
        size: 65536,
    }];
    let opts = ExportOptions::default()
        .with_whiteouts(WhiteoutFormat::Aufs)
        .with_uid_map(map.clone())
        .with_gid_map(map);
    let mut tar = Vec::new();
    export(r, &opts).unwrap().read_to_end(&mut tar).unwrap();
    let got = entries(&tar);
    assert_eq!(got.len(), 2, "{got:?}");
    let (name, ty, link, uid, pax) = &got[0];
    assert_eq!(
        (name.as_str(), *ty, link, *uid),
        (long.as_str(), tar::EntryType::Regular, &None, 123)
    );
    assert_eq!(pax[0], ("path".to_string(), long.clone().into_bytes()));
    assert!(pax.contains(&("mtime".to_string(), b"1600000000.000000005".to_vec())));
    assert!(pax.contains(&("SCHILY.xattr.user.keep".to_string(), b"1".to_vec())));
    assert!(!pax.iter().any(|(k, _)| k.contains("overlay")));
    let (name, ty, link, _, _) = &got[1];
    assert_eq!(
        (name.as_str(), *ty, link.as_deref()),
        ("second", tar::EntryType::Link, Some(long.as_str()))
    );
}

#[test]
fn export_maps_owners_but_keeps_whiteouts_outside_the_map() {
    if !plies_testkit::require_root("export_maps_owners_but_keeps_whiteouts_outside_the_map") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    std::fs::create_dir(r.join("d")).unwrap();
    std::os::unix::fs::lchown(r.join("d"), Some(100_000), Some(100_000)).unwrap();
    std::fs::write(r.join("d/f"), b"x").unwrap();
    std::os::unix::fs::lchown(r.join("d/f"), Some(101_000), Some(101_000)).unwrap();
    // A whiteout as the kernel or apply makes it: owned by the host's root.
    let d = std::fs::File::open(r.join("d")).unwrap();
    plies_whiteout::create_overlay_whiteout(&d, OsStr::new("gone")).unwrap();
    let map = vec![plies_archive::IdMap {
        container_id: 0,
        host_id: 100_000,
        size: 65536,
    }];
    let opts = ExportOptions::default()
        .with_whiteouts(WhiteoutFormat::Overlay(XattrNamespace::Trusted))
        .with_uid_map(map.clone())
        .with_gid_map(map);
    let mut tar = Vec::new();
    export(r, &opts).unwrap().read_to_end(&mut tar).unwrap();
    let owners: Vec<(String, u64)> = entries(&tar)
        .into_iter()
        .map(|(name, _, _, uid, _)| (name, uid))
        .collect();
    assert_eq!(
        owners,
        [
            ("d/".to_string(), 0),
            ("d/f".to_string(), 1000),
            ("d/.wh.gone".to_string(), 0)
        ]
    );
    // Any other file outside the map is refused, naming it.
    std::fs::write(r.join("d/host"), b"h").unwrap();
    let err = export(r, &opts)
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    let inner = err
        .into_inner()
        .unwrap()
        .downcast::<plies_archive::Error>()
        .unwrap();
    assert!(
        matches!(*inner, plies_archive::Error::Export { ref path, .. } if path == Path::new("d/host")),
        "{inner:?}"
    );
}

#[test]
fn export_refuses_redirects() {
    if !plies_testkit::require_root("export_refuses_redirects") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("moved")).unwrap();
    xattr::set(
        src.path().join("moved"),
        "trusted.overlay.redirect",
        b"/old",
    )
    .unwrap();
    let opts =
        ExportOptions::default().with_whiteouts(WhiteoutFormat::Overlay(XattrNamespace::Trusted));
    let err = export(src.path(), &opts)
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    let inner = err
        .into_inner()
        .unwrap()
        .downcast::<plies_archive::Error>()
        .unwrap();
    assert!(
        matches!(*inner, plies_archive::Error::Inexpressible { ref path, .. } if path == Path::new("moved")),
        "{inner:?}"
    );
}

#[test]
fn xattrs_of_symlinks_and_devices_round_trip() {
    if !plies_testkit::require_root("xattrs_of_symlinks_and_devices_round_trip") {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    std::os::unix::fs::symlink("target", r.join("link")).unwrap();
    xattr::set(r.join("link"), "trusted.link", b"on the link").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    xattr::set(r.join("null"), "trusted.dev", b"1").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    xattr::set(r.join("fifo"), "trusted.fifo", b"f").unwrap();
    // The target of the link has xattrs of its own, which stay its own.
    std::fs::write(r.join("target"), b"t").unwrap();
    xattr::set(r.join("target"), "user.target", b"t").unwrap();
    let format = WhiteoutFormat::Overlay(XattrNamespace::Trusted);
    let tar = export_bytes(r, format);
    type Records = Vec<(String, Vec<u8>)>;
    let pax: Vec<(String, Records)> = entries(&tar)
        .into_iter()
        .map(|(name, _, _, _, pax)| {
            let xattrs = pax
                .into_iter()
                .filter(|(k, _)| k.starts_with("SCHILY.xattr."))
                .collect();
            (name, xattrs)
        })
        .collect();
    assert_eq!(
        pax,
        [
            (
                "fifo".to_string(),
                vec![("SCHILY.xattr.trusted.fifo".to_string(), b"f".to_vec())]
            ),
            (
                "link".to_string(),
                vec![(
                    "SCHILY.xattr.trusted.link".to_string(),
                    b"on the link".to_vec()
                )]
            ),
            (
                "null".to_string(),
                vec![("SCHILY.xattr.trusted.dev".to_string(), b"1".to_vec())]
            ),
            (
                "target".to_string(),
                vec![("SCHILY.xattr.user.target".to_string(), b"t".to_vec())]
            ),
        ]
    );
    let dst = tempfile::tempdir().unwrap();
    let stats = apply(
        tar.as_slice(),
        dst.path(),
        &ApplyOptions::default()
            .with_whiteouts(format)
            .with_privileged(true),
    )
    .unwrap();
    assert_eq!(stats.skipped_xattrs, 0);
    assert_eq!(
        snapshot(r, &Record::EXACT),
        snapshot(dst.path(), &Record::EXACT)
    );
}

#[test]
fn user_xattrs_on_a_symlink_are_skipped_and_counted() {
    // The kernel refuses `user.` xattrs on symlinks (EPERM): as Docker, the
    // entry is applied without them and the refusal counted.
    let tar = LayerTar::ustar()
        .xattr("user.no", b"x")
        .symlink("link", "target")
        .finish();
    let dst = tempfile::tempdir().unwrap();
    let stats = apply(
        tar.as_slice(),
        dst.path(),
        &ApplyOptions::default().with_whiteouts(WhiteoutFormat::Overlay(XattrNamespace::Trusted)),
    )
    .unwrap();
    assert_eq!((stats.entries, stats.skipped_xattrs), (1, 1));
    assert_eq!(
        std::fs::read_link(dst.path().join("link")).unwrap(),
        Path::new("target")
    );
}

/// Asserts that [`Export::write_to`] gives the bytes the reader gives, to a
/// file, to a file opened for appending and to a pipe; returns them.
fn assert_write_to_matches_read(r: &Path, opts: &ExportOptions) -> Vec<u8> {
    let mut expected = Vec::new();
    export(r, opts).unwrap().read_to_end(&mut expected).unwrap();

    let out = tempfile::tempdir().unwrap();
    // A plain file, and one opened for appending (where the kernel will not
    // send file contents, so they are read and written).
    for append in [false, true] {
        let path = out.path().join(format!("layer-{append}.tar"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .open(&path)
            .unwrap();
        let n = export(r, opts).unwrap().write_to(&file).unwrap();
        assert_eq!(n, expected.len() as u64);
        assert!(std::fs::read(&path).unwrap() == expected, "append {append}");
    }

    let (rx, tx) = rustix::pipe::pipe().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        std::fs::File::from(rx).read_to_end(&mut got).unwrap();
        got
    });
    let n = export(r, opts).unwrap().write_to(&tx).unwrap();
    drop(tx);
    assert_eq!(n, expected.len() as u64);
    assert!(reader.join().unwrap() == expected);
    expected
}

#[test]
fn write_to_gives_the_same_bytes_to_files_and_pipes() {
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    std::fs::create_dir(r.join("d")).unwrap();
    for (i, size) in [0usize, 100, 32 << 10, (32 << 10) + 1, 300_000, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..size).map(|j| (j * 7 + i) as u8).collect();
        std::fs::write(r.join(format!("d/f{i}")), data).unwrap();
    }
    std::fs::hard_link(r.join("d/f4"), r.join("hard")).unwrap();
    std::os::unix::fs::symlink("d/f1", r.join("link")).unwrap();
    let opts = ExportOptions::default().with_whiteouts(WhiteoutFormat::Merged);
    assert_write_to_matches_read(r, &opts);
}

const TIB: u64 = 1 << 40;

/// One tar entry: name, PAX records, stored data.
type Stored = (String, Vec<(String, Vec<u8>)>, Vec<u8>);

/// Name, PAX records and stored data of each entry of a tar.
fn contents(tar: &[u8]) -> Vec<Stored> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let pax = pax_records(&mut e);
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, pax, data)
        })
        .collect()
}

/// The GNU PAX 1.0 sparse records of an entry, in order.
fn sparse_records(pax: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    pax.iter()
        .filter(|(k, _)| k.starts_with("GNU.sparse."))
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect()
}

/// A sparse entry's data: the map text, zeros to a block, then `segments`.
fn sparse_data(map: &str, segments: &[&[u8]]) -> Vec<u8> {
    let mut out = map.as_bytes().to_vec();
    out.resize(out.len().div_ceil(512) * 512, 0);
    for s in segments {
        out.extend_from_slice(s);
    }
    out
}

#[test]
fn sparse_files_export_as_gnu_sparse_entries_and_apply_back_sparse() {
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    let (a, b, dense) = (
        common::pattern(8192, 1),
        common::pattern(4096, 2),
        common::pattern(20_000, 3),
    );
    // A terabyte with a little data at its start and in its middle.
    common::sparse_file(&r.join("big"), TIB, &[(0, &a), (TIB / 2, &b)]);
    std::fs::create_dir(r.join("d")).unwrap();
    std::fs::write(r.join("d/dense"), &dense).unwrap();
    common::sparse_file(&r.join("d/head-hole"), 8 << 20, &[((8 << 20) - 4096, &b)]);
    common::sparse_file(&r.join("d/holes-only"), 1 << 20, &[]);
    common::sparse_file(&r.join("d/tail-hole"), 8 << 20, &[(0, &a)]);
    let tar = export_bytes(r, WhiteoutFormat::Merged);
    assert!(tar.len() < 64 << 10, "{} bytes", tar.len());
    assert!(
        tar == export_bytes(r, WhiteoutFormat::Merged),
        "export is not deterministic"
    );

    let got = contents(&tar);
    let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "./GNUSparseFile.0/big",
            "d/",
            "d/dense",
            "d/GNUSparseFile.0/head-hole",
            "d/GNUSparseFile.0/holes-only",
            "d/GNUSparseFile.0/tail-hole",
        ]
    );
    let expect = |i: usize, name: &str, size: u64, data: Vec<u8>| {
        let (_, pax, stored) = &got[i];
        let size = size.to_string();
        assert_eq!(
            sparse_records(pax),
            [
                ("GNU.sparse.major", &b"1"[..]),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.name", name.as_bytes()),
                ("GNU.sparse.realsize", size.as_bytes()),
            ]
        );
        assert!(*stored == data, "{name}");
    };
    expect(
        0,
        "big",
        TIB,
        sparse_data(
            "3\n0\n8192\n549755813888\n4096\n1099511627776\n0\n",
            &[&a, &b],
        ),
    );
    // A dense file is written whole, as a plain entry.
    let (_, pax, stored) = &got[2];
    assert_eq!(sparse_records(pax), []);
    assert!(*stored == dense);
    expect(
        3,
        "d/head-hole",
        8 << 20,
        sparse_data("2\n8384512\n4096\n8388608\n0\n", &[&b]),
    );
    expect(
        4,
        "d/holes-only",
        1 << 20,
        sparse_data("1\n1048576\n0\n", &[]),
    );
    expect(
        5,
        "d/tail-hole",
        8 << 20,
        sparse_data("2\n0\n8192\n8388608\n0\n", &[&a]),
    );

    let dst = tempfile::tempdir().unwrap();
    let opts = ApplyOptions::default().with_whiteouts(WhiteoutFormat::Merged);
    apply(tar.as_slice(), dst.path(), &opts).unwrap();
    for name in [
        "big",
        "d/dense",
        "d/head-hole",
        "d/holes-only",
        "d/tail-hole",
    ] {
        common::assert_same_content(&r.join(name), &dst.path().join(name));
    }
    for name in ["big", "d/head-hole", "d/holes-only", "d/tail-hole"] {
        let held = common::allocated(&dst.path().join(name));
        assert!(held < 1 << 20, "{name}: {held} bytes allocated");
    }
    let big = std::fs::File::open(dst.path().join("big")).unwrap();
    let mut at = vec![0u8; b.len()];
    std::os::unix::fs::FileExt::read_exact_at(&big, &mut at, TIB / 2).unwrap();
    assert!(at == b);
}

#[test]
fn write_to_gives_the_same_bytes_for_sparse_files() {
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    let (small, large, larger) = (
        common::pattern(4096, 1),
        common::pattern(64 << 10, 2),
        common::pattern(100 << 10, 3),
    );
    common::sparse_file(&r.join("big"), TIB, &[(1 << 30, &large), (TIB / 2, &small)]);
    // Segments long enough for the kernel to send, and one too short.
    common::sparse_file(
        &r.join("mixed"),
        16 << 20,
        &[(0, &large), (1 << 20, &small), (4 << 20, &larger)],
    );
    common::sparse_file(
        &r.join("ends-in-data"),
        8 << 20,
        &[((8 << 20) - (64 << 10), &large)],
    );
    std::fs::write(r.join("plain"), common::pattern(300_000, 4)).unwrap();
    std::fs::hard_link(r.join("mixed"), r.join("second")).unwrap();
    let opts = ExportOptions::default().with_whiteouts(WhiteoutFormat::Merged);
    let tar = assert_write_to_matches_read(r, &opts);
    let sparse: Vec<String> = contents(&tar)
        .into_iter()
        .filter(|(_, pax, _)| !sparse_records(pax).is_empty())
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(
        sparse,
        [
            "./GNUSparseFile.0/big",
            "./GNUSparseFile.0/ends-in-data",
            "./GNUSparseFile.0/mixed"
        ]
    );
    let dst = tempfile::tempdir().unwrap();
    let aopts = ApplyOptions::default().with_whiteouts(WhiteoutFormat::Merged);
    apply(tar.as_slice(), dst.path(), &aopts).unwrap();
    for name in ["big", "ends-in-data", "mixed", "plain", "second"] {
        common::assert_same_content(&r.join(name), &dst.path().join(name));
    }
}

#[test]
fn a_sparse_file_cut_short_while_exported_is_an_error() {
    let src = tempfile::tempdir().unwrap();
    let r = src.path();
    let opts = ExportOptions::default().with_whiteouts(WhiteoutFormat::Merged);
    let data = common::pattern(64 << 10, 1);
    for to_pipe in [false, true] {
        common::sparse_file(&r.join("f"), 64 << 20, &[(0, &data), (32 << 20, &data)]);
        let mut ex = export(r, &opts).unwrap();
        // The first read finds the file's holes and writes its header.
        let mut first = [0u8; 1];
        assert_eq!(ex.read(&mut first).unwrap(), 1);
        std::fs::File::options()
            .write(true)
            .open(r.join("f"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let err = if to_pipe {
            let (rx, tx) = rustix::pipe::pipe().unwrap();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                std::fs::File::from(rx).read_to_end(&mut got).unwrap();
            });
            let err = ex.write_to(&tx).unwrap_err();
            drop(tx);
            reader.join().unwrap();
            err
        } else {
            ex.read_to_end(&mut Vec::new()).unwrap_err()
        };
        let inner = err
            .into_inner()
            .unwrap()
            .downcast::<plies_archive::Error>()
            .unwrap();
        assert!(
            matches!(*inner, plies_archive::Error::Export { ref path, op, .. } if path == Path::new("f") && op.contains("shrank")),
            "{inner:?}"
        );
    }
}
