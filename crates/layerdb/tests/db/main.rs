//! The layer database on the vfs driver (runs anywhere): the crash-safe make,
//! apply that keeps a layer, removal order, prefixes, the sweep of a dead
//! writer's work, and fsck across records and store.

use std::path::Path;

use plies_drivers::{CreateOptions, DriverChoice, Options};
use plies_layerdb::{Access, Area, Error, LayerDb, Record};
use plies_layerstore::Repair;
use plies_testkit::layer_tar::LayerTar;

fn open(root: &Path, access: Access) -> LayerDb {
    let driver = plies_drivers::open(root, DriverChoice::Vfs, &Options::default()).unwrap();
    LayerDb::open(root, driver, access).unwrap()
}

fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut t = LayerTar::new();
    t.mtime(1_700_000_000);
    for (name, data) in files {
        t.file(name, data, 0o644);
    }
    t.finish()
}

fn files(db: &LayerDb, id: &str) -> Vec<(String, String)> {
    let dir = db.driver().get(id, None).unwrap();
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let data = std::fs::read_to_string(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    db.driver().put(id).unwrap();
    out.sort();
    out
}

fn none() -> CreateOptions {
    CreateOptions::default()
}

#[test]
fn a_failed_make_removes_only_its_own_layer() {
    let root = tempfile::tempdir().unwrap();
    let db = open(root.path(), Access::Write);
    db.create("base", None, false, &none()).unwrap();
    let err = db
        .make(Record::new("new", Some("base"), false), &none(), |_| {
            Err(Error::InvalidId { id: "x".into() })
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidId { .. }));
    assert!(!db.driver().exists("new"));
    assert_eq!(db.record("new").unwrap(), None);
    assert!(db.layer("base").is_ok());
    assert!(matches!(
        db.create("base", None, false, &none()),
        Err(Error::Exists { .. })
    ));
    assert!(db.fsck(false).unwrap().is_empty());
}

#[test]
fn a_failed_apply_leaves_the_layer_and_its_record() {
    let root = tempfile::tempdir().unwrap();
    let db = open(root.path(), Access::Write);
    db.create("a", None, false, &none()).unwrap();
    let good = tar_of(&[("f", "content\n")]);
    assert!(db.apply("a", &mut &good[..]).unwrap() > 0);
    let before = files(&db, "a");
    let mut broken = tar_of(&[("g", &"y".repeat(4000))]);
    broken.truncate(1500);
    assert!(db.apply("a", &mut &broken[..]).is_err());
    assert_eq!(files(&db, "a"), before);
    assert!(db.layer("a").unwrap().complete);
    assert!(db.fsck(false).unwrap().is_empty());
}

#[test]
fn removal_checks_children_and_goes_children_first() {
    let root = tempfile::tempdir().unwrap();
    let db = open(root.path(), Access::Write);
    db.create("sha256:aaaa0001", None, false, &none()).unwrap();
    db.create("sha256:bbbb0002", Some("aaaa"), false, &none())
        .unwrap();
    assert_eq!(
        db.layer("bbbb").unwrap().parent.as_deref(),
        Some("sha256:aaaa0001")
    );
    match db.remove(&["aaaa"]) {
        Err(Error::HasChildren { id, children }) => {
            assert_eq!(id, "sha256:aaaa0001");
            assert_eq!(children, "sha256:bbbb0002");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        db.remove(&["aaaa", "bbbb"]).unwrap(),
        ["sha256:bbbb0002", "sha256:aaaa0001"]
    );
    assert!(matches!(db.layer("aaaa"), Err(Error::NoSuchLayer { .. })));
    db.create("sha256:cc01", None, false, &none()).unwrap();
    db.create("sha256:cc02", None, false, &none()).unwrap();
    assert!(matches!(
        db.layer("cc"),
        Err(Error::Ambiguous { count: 2, .. })
    ));
}

#[test]
fn a_dead_writers_incomplete_layer_is_reported_then_swept() {
    let root = tempfile::tempdir().unwrap();
    {
        let db = open(root.path(), Access::Write);
        db.create("keep", None, false, &none()).unwrap();
        // What a writer killed halfway through a make leaves.
        db.write_record(&Record::new("half", Some("keep"), false))
            .unwrap();
        db.driver().create("half", Some("keep"), &none()).unwrap();
    }
    let findings = open(root.path(), Access::Inspect).fsck(false).unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].area, Area::Records);
    assert_eq!(findings[0].outcome, Repair::Repairable);
    assert!(findings[0].text.contains("layer half is incomplete"));
    let db = open(root.path(), Access::Write);
    assert_eq!(db.record("half").unwrap(), None);
    assert!(!db.driver().exists("half"));
    assert!(db.layer("keep").is_ok());
    assert!(db.fsck(false).unwrap().is_empty());
}

#[test]
fn the_sweep_of_a_pending_record_takes_a_half_made_layer_with_it() {
    let root = tempfile::tempdir().unwrap();
    let lazy = Options::default().with_sweep_on_open(false);
    let open_lazy = || {
        let driver = plies_drivers::open(root.path(), DriverChoice::Vfs, &lazy).unwrap();
        LayerDb::open(root.path(), driver, Access::Write).unwrap()
    };
    let leftover = {
        let db = open_lazy();
        db.create("keep", None, false, &none()).unwrap();
        // A writer killed while the driver made the layer: a pending record
        // and the driver's `-creating` directory, no layer.
        db.write_record(&Record::new("half", None, false)).unwrap();
        let leftover = db.driver().root().join("dir").join("half-creating");
        std::fs::create_dir_all(leftover.join("etc")).unwrap();
        leftover
    };
    // The driver's own open sweep is off: the record's sweep removes it.
    let db = open_lazy();
    assert_eq!(db.record("half").unwrap(), None);
    assert!(!leftover.exists(), "{} is left", leftover.display());
    assert!(db.layer("keep").is_ok());
    assert!(db.fsck(false).unwrap().is_empty());
}

#[test]
fn fsck_repairs_records_of_layers_that_are_gone() {
    let root = tempfile::tempdir().unwrap();
    let db = open(root.path(), Access::Write);
    db.create("gone", None, false, &none()).unwrap();
    db.driver().remove("gone").unwrap();
    let found = db.fsck(false).unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].text.contains("recorded but missing"), "{found:?}");
    let repaired = db.fsck(true).unwrap();
    assert_eq!(repaired[0].outcome, Repair::Repaired);
    assert!(db.fsck(false).unwrap().is_empty());
}

/// Root with overlayfs, or `None` after saying why (a failure when
/// `PLIES_REQUIRE_KERNEL=1` asks for the kernel tests).
fn overlay_here(test: &str) -> Option<()> {
    let root = rustix::process::geteuid().is_root();
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|f| f.lines().any(|l| l.ends_with("\toverlay")));
    if root && overlay {
        return Some(());
    }
    assert!(
        std::env::var_os("PLIES_REQUIRE_KERNEL").is_none(),
        "{test}: needs root and overlayfs"
    );
    eprintln!("skipping {test}: needs root and overlayfs");
    None
}

/// Layers made on the driver alone, as dockerd makes them through `plies serve
/// docker`: plies holds no record there, so the store's own lineage stands in,
/// fsck finds nothing amiss, and removal still goes children first.
#[test]
fn a_store_without_records_shows_the_stores_own_lineage() {
    const TEST: &str = "a_store_without_records_shows_the_stores_own_lineage";
    if overlay_here(TEST).is_none() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let options = Options::default();
    {
        let driver = plies_drivers::open(root.path(), DriverChoice::Overlay2, &options).unwrap();
        driver.create("base", None, &none()).unwrap();
        driver.create("mid", Some("base"), &none()).unwrap();
        driver
            .create_read_write("ctr", Some("mid"), &none())
            .unwrap();
    }
    let driver = plies_drivers::open(root.path(), DriverChoice::Overlay2, &options).unwrap();
    let db = LayerDb::open(root.path(), driver, Access::Write).unwrap();
    assert!(db.is_unrecorded().unwrap());
    let lineage: Vec<(String, Option<String>)> = db
        .lineage()
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.parent))
        .collect();
    assert_eq!(
        lineage,
        [
            ("base".to_owned(), None),
            ("ctr".to_owned(), Some("mid".to_owned())),
            ("mid".to_owned(), Some("base".to_owned())),
        ]
    );
    assert!(db.fsck(false).unwrap().is_empty());
    assert_eq!(db.layer("mi").unwrap().id, "mid");
    assert!(matches!(
        db.remove(&["base"]),
        Err(Error::HasChildren { .. })
    ));
    assert_eq!(db.remove(&["ctr", "mid"]).unwrap(), ["ctr", "mid"]);
    assert_eq!(db.lineage().unwrap().len(), 1);
}

/// `LayerDb::mount` marks a layer with an empty `mounts/<id>` (the path is the
/// driver's), its record shows where it is mounted, a second mount gives the
/// same path without a second mount, and `unmount` takes mount and mark away. A
/// mark an earlier version wrote, holding the path, still reads as a mount.
#[test]
fn a_mount_is_marked_by_an_empty_file_and_the_path_is_the_drivers() {
    const TEST: &str = "a_mount_is_marked_by_an_empty_file_and_the_path_is_the_drivers";
    if overlay_here(TEST).is_none() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let open_db = || {
        let driver =
            plies_drivers::open(root.path(), DriverChoice::Overlay2, &Options::default()).unwrap();
        LayerDb::open(root.path(), driver, Access::Write).unwrap()
    };
    let db = open_db();
    db.create("base", None, false, &none()).unwrap();
    db.create("top", Some("base"), true, &none()).unwrap();
    let merged = root.path().join("overlay2/top/merged");
    // Declared after `root`, so dropped (unmounting) before the directory goes,
    // also when an assertion fails.
    let _unmount = DetachOnDrop(merged.clone());
    let mark = db.dir().join("mounts/top");

    let (id, path) = db.mount("top", None).unwrap();
    assert_eq!((id.as_str(), path.as_path()), ("top", merged.as_path()));
    assert_eq!(std::fs::read(&mark).unwrap(), b"");
    // The next writer (a second `plies mount`) sees the mark and the mount.
    drop(db);
    let other = open_db();
    assert_eq!(other.layer("top").unwrap().mounted, Some(merged.clone()));
    assert_eq!(other.mount("top", None).unwrap().1, merged);
    assert_eq!(
        plies_kprobe::mount_points()
            .unwrap()
            .iter()
            .filter(|m| **m == merged)
            .count(),
        1
    );
    let mounted: Vec<_> = other
        .records()
        .unwrap()
        .into_iter()
        .filter_map(|r| r.mounted.map(|m| (r.id, m)))
        .collect();
    assert_eq!(mounted, [("top".to_owned(), merged.clone())]);
    assert_eq!(other.unmount("top").unwrap().1, merged);
    assert!(!mark.exists());
    assert!(!merged.exists());
    drop(other);
    let db = open_db();
    assert_eq!(db.layer("top").unwrap().mounted, None);

    // A base layer is handed out as its diff, marked all the same.
    let (_, base) = db.mount("base", None).unwrap();
    assert_eq!(base, root.path().join("overlay2/base/diff"));
    assert_eq!(db.layer("base").unwrap().mounted, Some(base.clone()));
    assert_eq!(db.unmount("base").unwrap().1, base);

    // An earlier version's mark holds the path it mounted at.
    std::fs::write(&mark, "/somewhere/else\n").unwrap();
    assert_eq!(
        db.layer("top").unwrap().mounted,
        Some(std::path::PathBuf::from("/somewhere/else"))
    );
    db.unmount("top").unwrap();
    assert!(!mark.exists());
    assert!(db.fsck(false).unwrap().is_empty());
}

/// Detaches whatever is mounted at its path when dropped.
struct DetachOnDrop(std::path::PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        while rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH).is_ok() {}
    }
}
