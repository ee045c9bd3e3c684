//! The aufs layout: `layers/<id>`, `diff/<id>`, `mnt/<id>`.

use plies_layerstore::{AufsStore, Error, Finding, StoreOptions};

use crate::{mode, names};

fn aufs() -> (tempfile::TempDir, AufsStore) {
    let tmp = tempfile::tempdir().unwrap();
    let s = AufsStore::open(tmp.path().join("aufs"), StoreOptions::default()).unwrap();
    (tmp, s)
}

#[test]
fn create_writes_dockers_layout() {
    let (_tmp, s) = aufs();
    let root = s.root().to_path_buf();
    assert_eq!(names(&root), ["diff", "layers", "mnt"]);
    for d in ["diff", "layers", "mnt"] {
        assert_eq!(mode(&root.join(d)), 0o700);
    }
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    let c = s.create("c", Some("b")).unwrap();
    assert_eq!(std::fs::read(root.join("layers/a")).unwrap(), b"");
    assert_eq!(
        std::fs::read_to_string(root.join("layers/c")).unwrap(),
        "b\na\n"
    );
    assert_eq!(mode(&c.diff), 0o755);
    assert_eq!(mode(&c.mnt), 0o755);
    assert_eq!(mode(&c.layers_file), 0o644);
    assert_eq!(s.ancestors("c").unwrap(), ["b", "a"]);
    assert_eq!(s.parent("c").unwrap().as_deref(), Some("b"));
    assert_eq!(s.lowers("c").unwrap(), [s.diff_dir("b"), s.diff_dir("a")]);
    assert_eq!(s.list().unwrap(), ["a", "b", "c"]);
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn remove_and_recovery() {
    let (_tmp, s) = aufs();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    std::fs::write(s.diff_dir("b").join("f"), b"x").unwrap();
    s.remove("b").unwrap();
    s.remove("b").unwrap();
    assert!(!s.exists("b"));
    let root = s.root().to_path_buf();
    for d in ["diff", "layers", "mnt"] {
        assert_eq!(names(&root.join(d)), ["a"]);
    }
    drop(s);
    // Interrupted: a remove after its marker, a create before its commit, and
    // Docker's own -removing leftovers.
    std::fs::rename(root.join("layers/a"), root.join("layers/a-removing")).unwrap();
    std::fs::write(root.join("layers/n-creating"), b"").unwrap();
    std::fs::create_dir(root.join("diff/n")).unwrap();
    std::fs::create_dir(root.join("mnt/n-creating")).unwrap();
    std::fs::create_dir(root.join("diff/old-removing")).unwrap();
    std::fs::create_dir_all(root.join("diff/n-applying/partial")).unwrap();
    let s = AufsStore::open(&root, StoreOptions::default()).unwrap();
    for d in ["diff", "layers", "mnt"] {
        assert_eq!(names(&root.join(d)), Vec::<String>::new(), "{d}");
    }
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn checks_and_hostile_files() {
    let (_tmp, s) = aufs();
    assert!(matches!(
        s.create("a", Some("none")),
        Err(Error::ParentNotFound { .. })
    ));
    assert!(matches!(
        s.create("a/b", None),
        Err(Error::InvalidId { .. })
    ));
    s.create("a", None).unwrap();
    assert!(matches!(s.create("a", None), Err(Error::Exists { .. })));
    s.create("b", Some("a")).unwrap();
    let root = s.root().to_path_buf();
    for (bad, line) in [
        ("../../etc\n", 1),
        ("a\n\n", 2),
        ("a\nb\n", 2),
        ("x/y\n", 1),
    ] {
        std::fs::write(root.join("layers/b"), bad).unwrap();
        match s.ancestors("b") {
            Err(Error::BadLayersFile { layer, line: l, .. }) if layer == "b" => {
                assert_eq!(l, line, "{bad:?}")
            }
            Err(Error::Cycle { .. }) if bad == "a\nb\n" => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    std::fs::write(root.join("layers/b"), "a\n").unwrap();
    // An orphan diff (a crashed Docker create) blocks the id and is never deleted.
    std::fs::create_dir(root.join("diff/orphan")).unwrap();
    assert!(matches!(
        s.create("orphan", None),
        Err(Error::Occupied { .. })
    ));
    std::fs::remove_dir(s.mnt_dir("a")).unwrap();
    let r = s.fsck(true).unwrap();
    let f: Vec<_> = r.entries.iter().map(|e| e.finding.clone()).collect();
    assert!(
        f.contains(&Finding::OrphanDiff {
            id: "orphan".into()
        }),
        "{f:?}"
    );
    assert!(
        f.contains(&Finding::MissingMountDir { layer: "a".into() }),
        "{f:?}"
    );
    assert!(root.join("diff/orphan").is_dir());
    assert!(s.mnt_dir("a").is_dir());
}

#[test]
fn depth_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let s = AufsStore::open(
        tmp.path(),
        StoreOptions::default()
            .with_max_depth(3)
            .with_durable(false),
    )
    .unwrap();
    s.create("0", None).unwrap();
    for i in 1..=3 {
        s.create(&i.to_string(), Some(&(i - 1).to_string()))
            .unwrap();
    }
    assert!(matches!(
        s.create("4", Some("3")),
        Err(Error::TooDeep {
            depth: 4,
            max: 3,
            ..
        })
    ));
    assert_eq!(s.list().unwrap().len(), 4);
}
