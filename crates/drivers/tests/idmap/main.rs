//! User-namespace remapping (Docker's `--userns-remap`) on every driver: layer
//! tars are stored under host ids and come back with container ids, and the
//! directories a container sees belong to the container's root.

#[path = "../common/mod.rs"]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::Rig;
use plies_drivers::{CreateOptions, Driver, DriverChoice, Error, IdMap, IdMaps, Options};
use plies_testkit::layer_tar::LayerTar;

/// Container ids 0..65536 are host ids 100000..165536, for users and groups.
const HOST: u32 = 100_000;

fn maps() -> IdMaps {
    let range = IdMap {
        container_id: 0,
        host_id: HOST,
        size: 65536,
    };
    IdMaps::new(vec![range], vec![range])
}

fn options() -> Options {
    Options::default().with_id_maps(maps())
}

/// One entry of a layer tar, with its owner (whiteouts and opaque markers: 0:0).
enum T {
    Dir(&'static str, u64),
    File(&'static str, &'static str, u64),
    Symlink(&'static str, &'static str, u64),
    Whiteout(&'static str),
    Opaque(&'static str),
}

fn tar_of(entries: &[T]) -> Vec<u8> {
    let mut t = LayerTar::new();
    for e in entries {
        match *e {
            T::Dir(p, o) => t.owner(o, o).dir(p, 0o755),
            T::File(p, data, o) => t.owner(o, o).file(p, data, 0o644),
            T::Symlink(p, target, o) => t.owner(o, o).symlink(p, target),
            T::Whiteout(p) => t.owner(0, 0).whiteout(p),
            T::Opaque(dir) => t.owner(0, 0).opaque(dir),
        };
    }
    t.finish()
}

/// `path owner` for every entry of a layer tar, in tar order.
fn owners(d: &dyn Driver, id: &str, parent: Option<&str>) -> Vec<String> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut d.diff(id, parent).unwrap(), &mut bytes).unwrap();
    let mut out = Vec::new();
    for e in tar::Archive::new(bytes.as_slice()).entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        out.push(format!(
            "{} {}:{}",
            e.path()
                .unwrap()
                .display()
                .to_string()
                .trim_end_matches('/'),
            h.uid().unwrap(),
            h.gid().unwrap()
        ));
    }
    out.sort();
    out
}

fn owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    (m.uid(), m.gid())
}

fn assert_owned(paths: &[PathBuf], ids: (u32, u32)) {
    for p in paths {
        assert_eq!(owner(p), ids, "owner of {p:?}");
    }
}

/// The directories a driver made for layer `id` (under its root `root`) that
/// must belong to the container's root.
type LayerDirs = fn(&Path, &str) -> Vec<PathBuf>;

/// Image layers: owners mapped in and out, whiteouts, naive diffs, layer roots.
fn image_layers(d: &dyn Driver, layer_dirs: LayerDirs) {
    let root = (HOST, HOST);
    d.create("base", None, &CreateOptions::default()).unwrap();
    let base = tar_of(&[
        T::Dir("etc", 0),
        T::File("etc/hosts", "h", 0),
        T::File("etc/motd", "m", 0),
        // `home` is not in the tar: made on the way, for the container's root.
        T::Dir("home/u", 1000),
        T::File("home/u/f", "f", 1000),
        T::Symlink("home/u/link", "f", 1000),
    ]);
    d.apply_diff("base", None, &mut base.as_slice()).unwrap();
    assert_owned(&layer_dirs(d.root(), "base"), root);
    let path = d.get("base", None).unwrap();
    assert_owned(
        &[
            path.clone(),
            path.join("etc"),
            path.join("etc/hosts"),
            path.join("home"),
        ],
        root,
    );
    assert_owned(
        &[
            path.join("home/u"),
            path.join("home/u/f"),
            path.join("home/u/link"),
        ],
        (HOST + 1000, HOST + 1000),
    );
    d.put("base").unwrap();
    assert_eq!(
        owners(d, "base", None),
        [
            "etc 0:0",
            "etc/hosts 0:0",
            "etc/motd 0:0",
            "home 0:0",
            "home/u 1000:1000",
            "home/u/f 1000:1000",
            "home/u/link 1000:1000",
        ]
    );

    d.create("top", Some("base"), &CreateOptions::default())
        .unwrap();
    let top = tar_of(&[
        T::Dir("etc", 0),
        T::Whiteout("etc/hosts"),
        T::Dir("home/u", 1000),
        T::Opaque("home/u"),
        T::File("home/u/g", "g", 1000),
    ]);
    d.apply_diff("top", Some("base"), &mut top.as_slice())
        .unwrap();
    assert_owned(&layer_dirs(d.root(), "top"), root);
    let listed = owners(d, "top", Some("base"));
    for want in [
        "etc/.wh.hosts 0:0",
        "home/u/g 1000:1000",
        "home/u 1000:1000",
    ] {
        assert!(listed.iter().any(|l| l == want), "{want} in {listed:?}");
    }
    // Against nothing: the naive diff of the whole tree, mapped the same way.
    assert_eq!(
        owners(d, "top", None),
        [
            "etc 0:0",
            "etc/motd 0:0",
            "home 0:0",
            "home/u 1000:1000",
            "home/u/g 1000:1000",
        ]
    );
    let mut tree = d.get("top", None).unwrap();
    assert!(!tree.join("etc/hosts").exists() && !tree.join("home/u/f").exists());
    assert_eq!(owner(&tree.join("home/u/g")), (HOST + 1000, HOST + 1000));
    d.put("top").unwrap();
    tree.clear();

    // An owner outside the map: a typed error naming the entry, the layer left empty.
    d.create("bad", None, &CreateOptions::default()).unwrap();
    let bad = tar_of(&[T::File("far", "2", 70_000), T::File("ok", "1", 5)]);
    let err = d.apply_diff("bad", None, &mut bad.as_slice()).unwrap_err();
    match &err {
        Error::Archive {
            id,
            source: plies_archive::Error::Entry { entry, reason },
        } => {
            assert_eq!(id, "bad");
            assert_eq!(entry, Path::new("far"));
            assert!(
                matches!(
                    reason,
                    plies_archive::EntryError::Unmapped {
                        kind: "uid",
                        id: 70_000
                    }
                ),
                "{reason:?}"
            );
        }
        other => panic!("expected an unmapped entry, got {other:?}"),
    }
    let path = d.get("bad", None).unwrap();
    assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0, "{err}");
    d.put("bad").unwrap();
}

/// A container layer written through its mount: new files under container
/// ids come back mapped, deletions as whiteouts, host-only owners refused.
fn container_layer(d: &dyn Driver) {
    d.create("base", None, &CreateOptions::default()).unwrap();
    let base = tar_of(&[T::Dir("etc", 0), T::File("etc/motd", "m", 0)]);
    d.apply_diff("base", None, &mut base.as_slice()).unwrap();
    d.create_read_write("rw", Some("base"), &CreateOptions::default())
        .unwrap();
    let path = d.get("rw", None).unwrap();
    assert_eq!(
        owner(&path),
        (HOST, HOST),
        "the container's root filesystem"
    );
    std::fs::remove_file(path.join("etc/motd")).unwrap();
    std::fs::write(path.join("etc/new"), b"n").unwrap();
    std::os::unix::fs::lchown(path.join("etc/new"), Some(HOST + 7), Some(HOST + 8)).unwrap();
    d.put("rw").unwrap();
    let listed = owners(d, "rw", Some("base"));
    for want in ["etc/.wh.motd 0:0", "etc/new 7:8"] {
        assert!(listed.iter().any(|l| l == want), "{want} in {listed:?}");
    }

    // A file of the host's root in the layer cannot be expressed in the container.
    let path = d.get("rw", None).unwrap();
    std::fs::write(path.join("hostfile"), b"h").unwrap();
    std::os::unix::fs::lchown(path.join("hostfile"), Some(0), Some(0)).unwrap();
    d.put("rw").unwrap();
    let err = match d.diff("rw", Some("base")) {
        Err(e) => e.to_string(),
        Ok(mut r) => std::io::Read::read_to_end(&mut r, &mut Vec::new())
            .unwrap_err()
            .to_string(),
    };
    assert!(err.contains("hostfile"), "{err}");
    d.remove("rw").unwrap();
}

fn open_rig(choice: DriverChoice) -> Rig {
    let dir = common::tempdir();
    let driver = plies_drivers::open(dir.path(), choice, &options()).unwrap();
    Rig { driver, dir }
}

fn vfs() -> Option<Rig> {
    plies_testkit::require_root("idmap vfs (chown)").then(|| open_rig(DriverChoice::Vfs))
}

fn overlay2() -> Option<Rig> {
    plies_testkit::require_overlay("idmap overlay2").then(|| open_rig(DriverChoice::Overlay2))
}

fn aufs() -> Option<Rig> {
    plies_testkit::require_root("idmap aufs (chown)").then(|| {
        let dir = common::tempdir();
        let driver = plies_drivers::Aufs::open_with(
            &dir.path().join("aufs"),
            &options(),
            std::sync::Arc::new(plies_drivers::RecordingMounter::new()),
        )
        .unwrap();
        Rig {
            driver: Box::new(driver),
            dir,
        }
    })
}

fn vfs_dirs(root: &Path, id: &str) -> Vec<PathBuf> {
    vec![root.join("dir"), root.join("dir").join(id)]
}

fn overlay2_dirs(root: &Path, id: &str) -> Vec<PathBuf> {
    let layer = root.join(id);
    let mut dirs = vec![root.to_path_buf(), root.join("l"), layer.join("diff")];
    if layer.join("work").exists() {
        dirs.push(layer.join("work"));
    }
    dirs.push(layer);
    dirs
}

fn aufs_dirs(root: &Path, id: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["", "mnt", "diff", "layers"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    dirs.push(root.join("diff").join(id));
    dirs.push(root.join("mnt").join(id));
    dirs
}

#[test]
fn vfs_image_layers() {
    let Some(r) = vfs() else { return };
    image_layers(&*r.driver, vfs_dirs);
    let mode = std::fs::metadata(r.driver.root())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o701,
        "the container's root can pass the root"
    );
}

#[test]
fn vfs_container_layer() {
    let Some(r) = vfs() else { return };
    container_layer(&*r.driver);
}

#[test]
fn overlay2_image_layers() {
    let Some(r) = overlay2() else { return };
    image_layers(&*r.driver, overlay2_dirs);
}

#[test]
fn overlay2_container_layer() {
    let Some(r) = overlay2() else { return };
    container_layer(&*r.driver);
    assert!(
        !r.driver.root().join("rw").exists(),
        "removed with its merged dir"
    );
}

#[test]
fn overlay2_merged_belongs_to_the_container_root() {
    let Some(r) = overlay2() else { return };
    let d = &*r.driver;
    d.create("base", None, &CreateOptions::default()).unwrap();
    d.create_read_write("rw", Some("base"), &CreateOptions::default())
        .unwrap();
    let merged = d.get("rw", None).unwrap();
    assert_eq!(merged, d.root().join("rw/merged"));
    assert_owned(&[merged], (HOST, HOST));
    d.put("rw").unwrap();
}

#[test]
fn aufs_image_layers() {
    let Some(r) = aufs() else { return };
    image_layers(&*r.driver, aufs_dirs);
}

#[test]
fn maps_without_the_container_root_are_refused() {
    let dir = common::tempdir();
    let no_root = IdMaps::new(
        vec![IdMap {
            container_id: 1,
            host_id: HOST + 1,
            size: 10,
        }],
        Vec::new(),
    );
    let options = Options::default().with_id_maps(no_root);
    for choice in [DriverChoice::Vfs, DriverChoice::Overlay2] {
        let err = plies_drivers::open(&dir.path().join(choice.as_str()), choice, &options)
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, Error::UnmappedRoot { kind: "uid" }),
            "{choice}: {err:?}"
        );
    }
}

#[test]
fn no_maps_keep_ids_as_they_are() {
    let Some(r) = plies_testkit::require_root("no_maps_keep_ids_as_they_are").then(|| {
        let dir = common::tempdir();
        let driver =
            plies_drivers::open(dir.path(), DriverChoice::Vfs, &Options::default()).unwrap();
        Rig { driver, dir }
    }) else {
        return;
    };
    let d = &*r.driver;
    d.create("plain", None, &CreateOptions::default()).unwrap();
    let tar = tar_of(&[T::File("f", "x", 70_000)]);
    d.apply_diff("plain", None, &mut tar.as_slice()).unwrap();
    assert_eq!(owners(d, "plain", None), ["f 70000:70000"]);
    assert_eq!(owner(&r.driver.root().join("dir/plain")), (0, 0));
}
