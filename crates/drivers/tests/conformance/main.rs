//! One conformance suite, run against every driver: each check is a function of
//! a `&dyn Driver`, and `conformance!` instantiates all of them for one setup.

#[path = "../common/mod.rs"]
mod common;

use std::os::unix::fs::MetadataExt;

use common::{E, changes, layer, mounted_tree, tar_listing};
use plies_drivers::{CreateOptions, Driver, Error};
use plies_testkit::layer_tar::LayerTar;
use plies_testkit::tree::{Kind, Node};

fn none() -> CreateOptions {
    CreateOptions::default()
}

/// Empty, base and snapshot layers; ids, parents, duplicates and misuse.
fn create_layers(d: &dyn Driver) {
    d.create("base", None, &none()).unwrap();
    assert!(d.exists("base"));
    assert!(!d.exists("nope"));
    let root = d.get("base", None).unwrap();
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "an empty layer is empty"
    );
    d.put("base").unwrap();
    layer(
        d,
        "img",
        Some("base"),
        &[E::Dir("etc", 0o755), E::File("etc/motd", "hi", 0o644)],
    );
    d.create_read_write("rw", Some("img"), &none()).unwrap();
    let t = mounted_tree(d, "rw");
    assert_eq!(
        t.get("etc/motd"),
        Some(&Node::file(0o644, "hi", 1_600_000_000))
    );
    assert!(matches!(
        d.create("img", None, &none()),
        Err(Error::LayerExists { .. })
    ));
    assert!(matches!(
        d.create("x", Some("missing"), &none()),
        Err(Error::NoSuchLayer { .. })
    ));
    assert!(matches!(
        d.create("a/b", None, &none()),
        Err(Error::InvalidId { .. })
    ));
    assert!(matches!(d.put("rw"), Err(Error::NotMounted { .. })));
    assert!(matches!(
        d.get("missing", None),
        Err(Error::NoSuchLayer { .. })
    ));
    let mut opts = none();
    opts.storage_opt.insert("size".into(), "1G".into());
    // Only overlay2 over XFS with project quota limits sizes; elsewhere a typed
    // refusal, nothing created.
    let sized = d.create_read_write("sized", Some("img"), &opts);
    if d.name() == "overlay2" && common::project_quota_at(d.root()) {
        sized.unwrap();
        d.remove("sized").unwrap();
    } else {
        assert!(matches!(sized, Err(Error::StorageOptUnsupported { .. })));
    }
    assert!(!d.exists("sized"));
    assert!(d.metadata("img").is_ok());
    assert!(matches!(
        d.metadata("missing"),
        Err(Error::NoSuchLayer { .. })
    ));
    assert!(!d.status().is_empty());
    d.remove("rw").unwrap();
    assert!(!d.exists("rw"));
    assert!(matches!(d.remove("rw"), Err(Error::NoSuchLayer { .. })));
    // A layer taken twice is still there after one put.
    let a = d.get("img", None).unwrap();
    let b = d.get("img", None).unwrap();
    assert_eq!(a, b);
    d.put("img").unwrap();
    assert!(a.join("etc/motd").exists());
    d.put("img").unwrap();
}

/// A chain of `depth` layers, each adding one file, read back through the top.
fn deep_chain(d: &dyn Driver, depth: usize) {
    let mut parent: Option<String> = None;
    for i in 0..depth {
        let id = format!("l{i}");
        let name = format!("f{i}");
        d.create(&id, parent.as_deref(), &none()).unwrap();
        let tar = LayerTar::new()
            .file(&name, format!("layer {i}"), 0o644)
            .finish();
        d.apply_diff(&id, parent.as_deref(), &mut tar.as_slice())
            .unwrap();
        parent = Some(id);
    }
    let top = parent.unwrap();
    let root = d.get(&top, None).unwrap();
    for i in 0..depth {
        assert_eq!(
            std::fs::read_to_string(root.join(format!("f{i}"))).unwrap(),
            format!("layer {i}")
        );
    }
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), depth);
    d.put(&top).unwrap();
}

/// The image used by several checks: a base and a child that modifies, deletes,
/// makes a directory opaque, replaces a file by a directory and a directory by a file.
fn image(d: &dyn Driver) {
    layer(
        d,
        "A",
        None,
        &[
            E::Dir("etc", 0o755),
            E::File("etc/passwd", "root:x:0:0", 0o644),
            E::File("etc/hosts", "127.0.0.1", 0o644),
            E::Dir("var", 0o755),
            E::Dir("var/cache", 0o755),
            E::File("var/cache/a", "a", 0o644),
            E::File("var/cache/b", "b", 0o644),
            E::File("x", "file x", 0o644),
            E::Dir("y", 0o755),
            E::File("y/inside", "in y", 0o644),
            E::Dir("bin", 0o755),
            E::File("bin/tool", "#!tool", 0o4755),
            E::Link("bin/tool-link", "bin/tool"),
            E::Symlink("bin/sh", "/bin/tool"),
            E::XattrFile("attr", "xattr file", "user.plies", "yes"),
        ],
    );
    layer(
        d,
        "B",
        Some("A"),
        &[
            E::Dir("etc", 0o755),
            E::File("etc/passwd", "root:x:0:0\nuser:x:1:1", 0o600),
            E::Whiteout("etc/hosts"),
            E::Dir("var", 0o755),
            E::Dir("var/cache", 0o750),
            E::Opaque("var/cache"),
            E::File("var/cache/c", "c", 0o644),
            E::Whiteout("x"),
            E::Dir("x", 0o755),
            E::File("x/now-a-dir", "z", 0o644),
            E::Whiteout("y"),
            E::File("y", "now a file", 0o644),
            E::Dir("new", 0o700),
            E::File("new/file", "new", 0o644),
        ],
    );
}

/// Whiteouts and opaque dirs, a file replaced by a dir and back, through the mount.
fn whiteouts_through_mount(d: &dyn Driver) {
    image(d);
    let t = mounted_tree(d, "B");
    assert!(!t.contains_key("etc/hosts"), "whiteout hides etc/hosts");
    assert_eq!(
        t.get("etc/passwd"),
        Some(&Node::file(0o600, "root:x:0:0\nuser:x:1:1", 1_600_000_000))
    );
    let cache: Vec<&str> = t
        .keys()
        .filter_map(|k| k.to_str())
        .filter(|k| k.starts_with("var/cache/"))
        .collect();
    assert_eq!(
        cache,
        ["var/cache/c"],
        "opaque dir shows only its own entries"
    );
    assert_eq!(t.get("var/cache"), Some(&Node::dir(0o750)));
    assert_eq!(
        t.get("x"),
        Some(&Node::dir(0o755)),
        "file replaced by a dir"
    );
    assert!(t.contains_key("x/now-a-dir"));
    assert!(
        matches!(
            t.get("y"),
            Some(Node {
                kind: Kind::File { .. },
                ..
            })
        ),
        "dir replaced by a file"
    );
    assert!(!t.contains_key("y/inside"));
    // The parent is unchanged.
    let a = mounted_tree(d, "A");
    assert!(
        a.contains_key("etc/hosts") && a.contains_key("var/cache/a") && a.contains_key("y/inside")
    );
}

/// Hard links stay one inode, setuid bits, symlinks and xattrs survive, through the mount.
fn links_and_xattrs(d: &dyn Driver) {
    image(d);
    for id in ["A", "B"] {
        let root = d.get(id, None).unwrap();
        let tool = std::fs::symlink_metadata(root.join("bin/tool")).unwrap();
        let link = std::fs::symlink_metadata(root.join("bin/tool-link")).unwrap();
        assert_eq!(
            (tool.ino(), tool.dev()),
            (link.ino(), link.dev()),
            "{id}: hard link"
        );
        assert_eq!(tool.mode() & 0o7777, 0o4755, "{id}: setuid kept");
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap().to_str(),
            Some("/bin/tool")
        );
        assert_eq!(
            xattr::get(root.join("attr"), "user.plies")
                .unwrap()
                .as_deref(),
            Some(&b"yes"[..]),
            "{id}: xattr"
        );
        d.put(id).unwrap();
    }
}

const B_CHANGES: [&str; 13] = [
    "C /etc",
    "C /etc/passwd",
    "D /etc/hosts",
    "A /new",
    "A /new/file",
    "C /var",
    "C /var/cache",
    "D /var/cache/a",
    "D /var/cache/b",
    "A /var/cache/c",
    "C /x",
    "A /x/now-a-dir",
    "C /y",
];

/// `changes` of the child against its parent, and of the base against nothing.
fn changes_of_layers(d: &dyn Driver) {
    image(d);
    let mut got = changes(d, "B", Some("A"));
    let mut want: Vec<String> = B_CHANGES.iter().map(|s| s.to_string()).collect();
    got.sort();
    want.sort();
    // /x: a file replaced by a dir. overlay reports it as a modified entry with an
    // added child; /y: a dir replaced by a file, modified.
    assert_eq!(got, want);
    let base = changes(d, "A", None);
    assert!(base.iter().all(|c| c.starts_with("A ")), "{base:?}");
    assert_eq!(base.len(), 15);
}

/// diff of B against A applied to a fresh layer on A gives B's tree, its
/// changes, and the same diff again.
fn diff_apply_roundtrip(d: &dyn Driver) {
    image(d);
    let mut tar = Vec::new();
    d.diff("B", Some("A"))
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    d.create("C", Some("A"), &none()).unwrap();
    d.apply_diff("C", Some("A"), &mut tar.as_slice()).unwrap();
    assert_eq!(mounted_tree(d, "C"), mounted_tree(d, "B"));
    assert_eq!(changes(d, "C", Some("A")), changes(d, "B", Some("A")));
    let mut again = Vec::new();
    d.diff("C", Some("A"))
        .unwrap()
        .read_to_end(&mut again)
        .unwrap();
    // Directory mtimes are left out: applying a whiteout into a directory touches it.
    assert_eq!(
        tar_listing(&again),
        tar_listing(&tar),
        "diff of the applied layer is the same tar"
    );
    assert!(d.diff_size("B", Some("A")).unwrap() > 0);
    // Against a non-parent (nothing): every file of B's view.
    let mut full = Vec::new();
    d.diff("B", None).unwrap().read_to_end(&mut full).unwrap();
    d.create("D", None, &none()).unwrap();
    d.apply_diff("D", None, &mut full.as_slice()).unwrap();
    assert_eq!(mounted_tree(d, "D"), mounted_tree(d, "B"));
    // Naive diffs stage in scratch directories that go with their readers.
    let graph = d.root().parent().unwrap();
    let staged: Vec<_> = walkdir::WalkDir::new(graph)
        .max_depth(3)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("naive-"))
        .map(|e| e.path().to_path_buf())
        .collect();
    assert!(staged.is_empty(), "scratch left behind: {staged:?}");
}

/// Removing a layer that is mounted unmounts it first.
fn remove_while_mounted(d: &dyn Driver) {
    image(d);
    d.create_read_write("rw", Some("B"), &none()).unwrap();
    let root = d.get("rw", None).unwrap();
    std::fs::write(root.join("scratch"), b"x").unwrap();
    d.get("rw", None).unwrap();
    d.remove("rw").unwrap();
    assert!(!d.exists("rw"));
    assert!(plies_testkit::mounts_under(d.root()).is_empty());
    assert!(matches!(d.put("rw"), Err(Error::NotMounted { .. })));
    // Its parents are untouched.
    assert!(mounted_tree(d, "B").contains_key("new/file"));
}

/// `cleanup` with mounts still held leaves no mount.
fn cleanup_with_mounts_held(d: &dyn Driver) {
    image(d);
    d.create_read_write("rw", Some("B"), &none()).unwrap();
    for id in ["A", "B", "rw", "rw"] {
        d.get(id, None).unwrap();
    }
    d.cleanup().unwrap();
    assert!(plies_testkit::mounts_under(d.root()).is_empty());
    // The layers are still there and mount again.
    assert!(mounted_tree(d, "rw").contains_key("new/file"));
}

/// Writes through a read-write layer's mount show up in its changes and diff.
fn container_writes(d: &dyn Driver) {
    image(d);
    d.create_read_write("rw", Some("B"), &none()).unwrap();
    let root = d.get("rw", None).unwrap();
    std::fs::write(root.join("etc/passwd"), b"changed").unwrap();
    std::fs::remove_file(root.join("new/file")).unwrap();
    std::fs::create_dir(root.join("run")).unwrap();
    d.put("rw").unwrap();
    assert_eq!(
        changes(d, "rw", Some("B")),
        ["C /etc", "C /etc/passwd", "C /new", "D /new/file", "A /run"]
    );
}

/// A layer tar that adds `new/one`, then breaks at the header of `new/two`.
fn broken_tar() -> Vec<u8> {
    let mut tar = common::layer_tar(&[
        E::Dir("new", 0o755),
        E::File("new/one", "1", 0o644),
        E::File("new/two", "2", 0o644),
    ]);
    let header = (0..tar.len())
        .step_by(512)
        .find(|at| tar[*at..].starts_with(b"new/two"))
        .unwrap();
    // A wrong checksum: the entry before it is applied, this one is refused.
    tar[header + 148..header + 156].copy_from_slice(b"0000000\0");
    tar
}

/// A failed apply leaves the layer as it was: a new layer (against its direct
/// parent or another one), and a layer that already holds a diff.
fn failed_apply_leaves_layer_as_it_was(d: &dyn Driver) {
    image(d);
    let leftovers = || {
        walkdir::WalkDir::new(d.root())
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with("-applying"))
            .count()
    };
    // New, against the direct parent.
    d.create("C", Some("A"), &none()).unwrap();
    let err = d.apply_diff("C", Some("A"), &mut broken_tar().as_slice());
    assert!(matches!(err, Err(Error::Archive { .. })), "{err:?}");
    assert_eq!(mounted_tree(d, "C"), mounted_tree(d, "A"));
    assert!(changes(d, "C", Some("A")).is_empty());
    // New, against another layer than its parent (naive apply).
    d.create("D", Some("B"), &none()).unwrap();
    let err = d.apply_diff("D", Some("A"), &mut broken_tar().as_slice());
    assert!(matches!(err, Err(Error::Archive { .. })), "{err:?}");
    assert_eq!(mounted_tree(d, "D"), mounted_tree(d, "B"));
    assert!(changes(d, "D", Some("B")).is_empty());
    // Holding a diff already: applied to a copy that replaces it only whole.
    // Its whiteouts, opaque directory, hard links and xattrs survive the copy.
    let good = common::layer_tar(&[
        E::File("kept", "k", 0o644),
        E::Link("kept-link", "kept"),
        E::XattrFile("kept-attr", "xa", "user.plies", "kept"),
        E::Dir("etc", 0o755),
        E::Whiteout("etc/hosts"),
        E::Dir("var", 0o755),
        E::Dir("var/cache", 0o755),
        E::Opaque("var/cache"),
        E::File("var/cache/c", "c", 0o644),
    ]);
    d.apply_diff("C", Some("A"), &mut good.as_slice()).unwrap();
    let before = mounted_tree(d, "C");
    let listed = changes(d, "C", Some("A"));
    assert!(listed.contains(&"D /etc/hosts".to_owned()), "{listed:?}");
    let err = d.apply_diff("C", Some("A"), &mut broken_tar().as_slice());
    assert!(matches!(err, Err(Error::Archive { .. })), "{err:?}");
    assert_eq!(mounted_tree(d, "C"), before);
    assert_eq!(changes(d, "C", Some("A")), listed);
    // And a good diff still applies over it.
    let more = common::layer_tar(&[E::File("more", "m", 0o644)]);
    d.apply_diff("C", Some("A"), &mut more.as_slice()).unwrap();
    let mut with_more = listed.clone();
    with_more.push("A /more".to_owned());
    with_more.sort();
    let mut after = changes(d, "C", Some("A"));
    after.sort();
    assert_eq!(after, with_more);
    // Holding a diff, against another layer than its parent: a naive apply,
    // onto a view over a copy of the layer's own directory.
    let before = mounted_tree(d, "C");
    let err = d.apply_diff("C", Some("B"), &mut broken_tar().as_slice());
    assert!(matches!(err, Err(Error::Archive { .. })), "{err:?}");
    assert_eq!(mounted_tree(d, "C"), before);
    // (The recording aufs mounter's views are snapshots: what is written
    // through them never reaches the branch.)
    if !common::recorded(d) {
        let delete = common::layer_tar(&[E::Whiteout("kept"), E::File("naive", "n", 0o644)]);
        d.apply_diff("C", Some("B"), &mut delete.as_slice())
            .unwrap();
        let tree = mounted_tree(d, "C");
        assert!(!tree.contains_key("kept") && tree.contains_key("naive"));
        assert!(tree.contains_key("kept-link") && tree.contains_key("more"));
    }
    assert_eq!(leftovers(), 0, "copies of layers left behind");
}

use std::io::Read;

macro_rules! conformance {
    ($name:ident, $setup:expr) => {
        mod $name {
            use super::*;

            fn rig() -> Option<common::Rig> {
                $setup
            }

            #[test]
            fn create_layers() {
                let Some(r) = rig() else { return };
                super::create_layers(&*r.driver);
            }

            /// 128 layers (Docker's format), or as many as aufs stacks.
            #[test]
            fn chain_128_deep() {
                let Some(r) = rig() else { return };
                super::deep_chain(&*r.driver, common::max_chain(&*r.driver));
            }

            #[test]
            fn whiteouts_through_mount() {
                let Some(r) = rig() else { return };
                super::whiteouts_through_mount(&*r.driver);
            }

            #[test]
            fn links_and_xattrs() {
                let Some(r) = rig() else { return };
                super::links_and_xattrs(&*r.driver);
            }

            #[test]
            fn changes_of_layers() {
                let Some(r) = rig() else { return };
                super::changes_of_layers(&*r.driver);
            }

            #[test]
            fn diff_apply_roundtrip() {
                let Some(r) = rig() else { return };
                super::diff_apply_roundtrip(&*r.driver);
            }

            #[test]
            fn remove_while_mounted() {
                let Some(r) = rig() else { return };
                super::remove_while_mounted(&*r.driver);
            }

            #[test]
            fn failed_apply_leaves_layer_as_it_was() {
                let Some(r) = rig() else { return };
                super::failed_apply_leaves_layer_as_it_was(&*r.driver);
            }

            #[test]
            fn cleanup_with_mounts_held() {
                let Some(r) = rig() else { return };
                super::cleanup_with_mounts_held(&*r.driver);
            }
        }
    };
}

/// Checks that write through a mounted read-write layer (not for aufs through
/// the recording mounter, whose mounts are read-only snapshots).
macro_rules! writable_mounts {
    ($name:ident, $setup:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn container_writes() {
                let Some(r) = $setup else { return };
                super::container_writes(&*r.driver);
            }
        }
    };
}

conformance!(vfs, common::vfs());
conformance!(overlay2, common::overlay2());
conformance!(overlay2_fsconfig, common::overlay2_fsconfig());
conformance!(aufs_recorded, common::aufs_recorded().map(|(rig, _)| rig));
conformance!(aufs_kernel, common::aufs_kernel());
writable_mounts!(vfs_writes, common::vfs());
writable_mounts!(overlay2_writes, common::overlay2());
writable_mounts!(overlay2_fsconfig_writes, common::overlay2_fsconfig());
writable_mounts!(aufs_kernel_writes, common::aufs_kernel());

#[test]
fn overlay2_fsconfig_chain_400_deep() {
    let Some(r) = common::overlay2_fsconfig() else {
        return;
    };
    deep_chain(&*r.driver, 400);
}
