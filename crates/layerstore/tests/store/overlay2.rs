use std::sync::Arc;

use plies_layerstore::{Error, IdError, LinkId, Overlay2Store, StoreOptions};

use crate::{mode, names, store};

#[test]
fn create_writes_docker_layout() {
    let (_tmp, s) = store();
    let base = s.create("base", None).unwrap();
    assert_eq!(base.work, None);
    let child = s.create("child", Some("base")).unwrap();
    let home = s.home();
    assert_eq!(mode(home), 0o710);
    assert_eq!(mode(&home.join("l")), 0o700);
    assert_eq!(names(&home.join("base")), ["diff", "link"]);
    assert_eq!(
        names(&home.join("child")),
        ["diff", "link", "lower", "work"]
    );
    assert_eq!(mode(&home.join("child")), 0o710);
    assert_eq!(mode(&home.join("child/diff")), 0o755);
    assert_eq!(mode(&home.join("child/work")), 0o700);
    assert_eq!(mode(&home.join("child/link")), 0o644);
    assert_eq!(mode(&home.join("child/lower")), 0o644);
    let link = std::fs::read(home.join("base/link")).unwrap();
    assert_eq!(link, base.link.as_str().as_bytes());
    assert_eq!(link.len(), 26);
    assert_eq!(
        std::fs::read_to_string(home.join("child/lower")).unwrap(),
        format!("l/{}", base.link)
    );
    assert_eq!(
        std::fs::read_link(home.join("l").join(child.link.as_str())).unwrap(),
        Path::new("../child/diff")
    );
    assert_eq!(child.diff, home.join("child/diff"));
    assert_eq!(child.work, Some(home.join("child/work")));
}

use std::path::Path;

#[test]
fn chain_lowers_parent_ancestors_metadata() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    s.create("c", Some("b")).unwrap();
    let la = s.link_id("a").unwrap();
    let lb = s.link_id("b").unwrap();
    assert_eq!(
        s.lower_entries("c").unwrap(),
        [format!("l/{lb}"), format!("l/{la}")]
    );
    assert_eq!(s.lowers("c").unwrap(), [s.diff_dir("b"), s.diff_dir("a")]);
    assert_eq!(s.parent("c").unwrap().as_deref(), Some("b"));
    assert_eq!(s.parent("a").unwrap(), None);
    assert_eq!(s.ancestors("c").unwrap(), ["b", "a"]);
    assert_eq!(s.list().unwrap(), ["a", "b", "c"]);
    let m = s.metadata("c").unwrap();
    assert_eq!(
        m.lower_dir.as_deref(),
        Some(
            format!(
                "{}:{}",
                s.diff_dir("b").display(),
                s.diff_dir("a").display()
            )
            .as_str()
        )
    );
    assert_eq!(m.upper_dir, s.diff_dir("c"));
    assert_eq!(m.work_dir, s.layer_dir("c").join("work"));
    assert_eq!(m.merged_dir, s.layer_dir("c").join("merged"));
    let map = m.to_map();
    assert_eq!(
        map.keys().copied().collect::<Vec<_>>(),
        ["LowerDir", "MergedDir", "UpperDir", "WorkDir"]
    );
    assert_eq!(s.metadata("a").unwrap().lower_dir, None);
}

#[test]
fn parent_survives_a_missing_link_through_the_link_files() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    let la = s.link_id("a").unwrap();
    std::fs::remove_file(s.home().join("l").join(la.as_str())).unwrap();
    assert_eq!(s.parent("b").unwrap().as_deref(), Some("a"));
    assert!(
        matches!(s.lowers("b"), Err(Error::MissingLink { ref layer, ref link, .. }) if layer == "b" && *link == la.as_str())
    );
}

#[test]
fn remove_is_complete_and_idempotent() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    let b = s.create("b", Some("a")).unwrap();
    s.remove("b").unwrap();
    assert!(!s.exists("b"));
    assert!(!s.home().join("l").join(b.link.as_str()).exists());
    assert_eq!(names(&s.home().join("l")).len(), 1);
    assert_eq!(names(s.home()), ["a", "l"]);
    s.remove("b").unwrap();
    s.remove("never-was").unwrap();
}

#[test]
fn remove_does_not_follow_symlinks_out_of_the_layer() {
    let (tmp, s) = store();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"x").unwrap();
    s.create("a", None).unwrap();
    std::os::unix::fs::symlink(&outside, s.diff_dir("a").join("escape")).unwrap();
    let mut deep = s.diff_dir("a");
    for i in 0..100 {
        deep = deep.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f"), b"y").unwrap();
    s.remove("a").unwrap();
    assert!(!s.exists("a"));
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"x");
    assert_eq!(names(s.home()), ["l"]);
}

#[test]
fn remove_with_empty_link_file_keeps_l() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", None).unwrap();
    std::fs::write(s.layer_dir("a").join("link"), b"").unwrap();
    s.remove("a").unwrap();
    assert!(s.home().join("l").is_dir());
    // b's link is untouched, and so is a's (it is now dangling; fsck removes it).
    assert_eq!(names(&s.home().join("l")).len(), 2);
    assert_eq!(s.lowers("b").unwrap(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn remove_keeps_a_link_it_does_not_own() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", None).unwrap();
    let lb = s.link_id("b").unwrap();
    // a's link file claims b's link: remove must not delete it.
    std::fs::write(s.layer_dir("a").join("link"), lb.as_str()).unwrap();
    s.remove("a").unwrap();
    assert!(s.home().join("l").join(lb.as_str()).exists());
}

#[test]
fn ids_are_checked_before_any_write() {
    let (_tmp, s) = store();
    let long = "x".repeat(plies_layerstore::MAX_ID_LEN + 1);
    let cases: [(&str, IdError); 10] = [
        ("", IdError::Empty),
        ("a/b", IdError::Slash),
        (".", IdError::Dot),
        ("..", IdError::Dot),
        ("l", IdError::LinkDir),
        ("a\nb", IdError::Newline),
        ("a\0b", IdError::Nul),
        (&long, IdError::TooLong),
        ("a-removing", IdError::ReservedSuffix),
        ("a-applying", IdError::ReservedSuffix),
    ];
    for (id, reason) in cases {
        match s.create(id, None) {
            Err(Error::InvalidId { reason: r, .. }) => assert_eq!(r, reason, "{id:?}"),
            other => panic!("{id:?}: {other:?}"),
        }
    }
    assert!(matches!(
        s.create("ok", Some("../x")),
        Err(Error::InvalidId { .. })
    ));
    assert_eq!(names(s.home()), ["l"]);
    let max = "y".repeat(plies_layerstore::MAX_ID_LEN);
    s.create(&max, None).unwrap();
    s.remove(&max).unwrap();
}

#[test]
fn exists_parent_missing_and_duplicates() {
    let (_tmp, s) = store();
    assert!(matches!(
        s.create("a", Some("nope")),
        Err(Error::ParentNotFound { .. })
    ));
    assert_eq!(names(s.home()), ["l"]);
    s.create("a", None).unwrap();
    assert!(matches!(s.create("a", None), Err(Error::Exists { .. })));
    assert!(matches!(s.parent("zz"), Err(Error::NotFound { .. })));
    assert!(!s.exists("a/.."));
}

#[test]
fn depth_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default()
        .with_max_depth(128)
        .with_durable(false);
    let s = Overlay2Store::open(tmp.path(), opts).unwrap();
    s.create("0", None).unwrap();
    for i in 1..=128 {
        s.create(&i.to_string(), Some(&(i - 1).to_string()))
            .unwrap();
    }
    assert_eq!(s.lowers("128").unwrap().len(), 128);
    match s.create("129", Some("128")) {
        Err(Error::TooDeep {
            depth: 129,
            max: 128,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(!s.home().join("129-creating").exists());
    drop(s);
    // The fsconfig mode goes deeper.
    let deep = Overlay2Store::open(
        tmp.path(),
        StoreOptions::default()
            .with_max_depth(500)
            .with_durable(false),
    )
    .unwrap();
    deep.create("129", Some("128")).unwrap();
    assert_eq!(deep.ancestors("129").unwrap().len(), 129);
    assert!(matches!(
        Overlay2Store::open(
            tmp.path(),
            StoreOptions::default()
                .with_max_depth(501)
                .with_durable(false)
        ),
        Err(Error::InvalidOptions { .. })
    ));
    // A store opened with the default limit refuses the deeper lower file.
    let shallow = Overlay2Store::open(tmp.path(), StoreOptions::default()).unwrap();
    assert!(matches!(shallow.lowers("129"), Err(Error::BadLower { .. })));
}

#[test]
fn committed_marks() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    assert!(!s.is_committed("a").unwrap());
    s.mark_committed("a").unwrap();
    s.mark_committed("a").unwrap();
    assert!(s.is_committed("a").unwrap());
    let f = s.layer_dir("a").join("committed");
    assert_eq!(mode(&f), 0o600);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
}

#[test]
fn open_sweeps_interrupted_work() {
    let (tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    let home = s.home().to_path_buf();
    let la = s.link_id("a").unwrap();
    let lb = s.link_id("b").unwrap();
    drop(s);
    // A create that made its link, a remove that renamed its layer.
    std::fs::rename(home.join("b"), home.join("b-creating")).unwrap();
    std::fs::rename(home.join("a"), home.join("a-removing")).unwrap();
    let s = Overlay2Store::open(&home, StoreOptions::default()).unwrap();
    assert_eq!(s.list().unwrap(), Vec::<String>::new());
    assert_eq!(names(&home), ["l"]);
    assert!(!home.join("l").join(la.as_str()).exists());
    assert!(!home.join("l").join(lb.as_str()).exists());
    assert!(s.fsck(false).unwrap().is_clean());
    drop(tmp);
}

#[test]
fn without_the_open_sweep_leftovers_go_with_their_id_or_a_sweep() {
    let (tmp, s) = store();
    for id in ["a", "b", "c"] {
        s.create(id, None).unwrap();
    }
    let home = s.home().to_path_buf();
    let links: Vec<LinkId> = ["a", "b", "c"]
        .iter()
        .map(|id| s.link_id(id).unwrap())
        .collect();
    drop(s);
    std::fs::rename(home.join("a"), home.join("a-creating")).unwrap();
    std::fs::rename(home.join("b"), home.join("b-removing")).unwrap();
    std::fs::rename(home.join("c"), home.join("c-creating")).unwrap();
    let lazy = StoreOptions::default().with_sweep_on_open(false);
    let s = Overlay2Store::open(&home, lazy).unwrap();
    // Opened without touching them; no layer is visible.
    assert_eq!(
        names(&home),
        ["a-creating", "b-removing", "c-creating", "l"]
    );
    assert_eq!(s.list().unwrap(), Vec::<String>::new());
    // A remove of a missing id sweeps what a killed create or remove left.
    s.remove("a").unwrap();
    s.remove("b").unwrap();
    assert_eq!(names(&home), ["c-creating", "l"]);
    assert!(!home.join("l").join(links[0].as_str()).exists());
    assert!(!home.join("l").join(links[1].as_str()).exists());
    // So does the sweep, and fsck finds nothing left.
    s.sweep().unwrap();
    assert_eq!(names(&home), ["l"]);
    assert!(!home.join("l").join(links[2].as_str()).exists());
    assert!(s.fsck(false).unwrap().is_clean());
    drop(tmp);
}

#[test]
fn a_read_only_store_reads_and_writes_nothing() {
    let (tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    let home = s.home().to_path_buf();
    drop(s);
    std::fs::remove_dir_all(home.join(".plies")).unwrap();
    let ro = StoreOptions::default().with_read_only(true);
    assert!(Overlay2Store::open(tmp.path().join("missing"), ro).is_err());
    assert!(!tmp.path().join("missing").exists());
    let s = Overlay2Store::open(&home, ro).unwrap();
    assert_eq!(s.list().unwrap(), ["a", "b"]);
    assert_eq!(s.lowers("b").unwrap().len(), 1);
    assert!(s.fsck(false).unwrap().is_clean());
    for refused in [
        s.create("c", None).map(drop),
        s.remove("a"),
        s.sweep(),
        s.fsck(true).map(drop),
    ] {
        assert!(
            matches!(refused, Err(Error::ReadOnly { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(s.list().unwrap(), ["a", "b"]);
    assert!(
        !home.join(".plies").exists(),
        "a read-only open made .plies"
    );
    drop(tmp);
}

#[test]
fn link_ids_are_base32_and_unique() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let l = LinkId::generate();
        assert!(LinkId::parse(l.as_str().as_bytes()).is_ok());
        assert!(seen.insert(l));
    }
}

#[test]
fn parallel_creates_and_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Arc::new(
        Overlay2Store::open(tmp.path(), StoreOptions::default().with_durable(false)).unwrap(),
    );
    s.create("root", None).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let id = format!("t{t}-{i}");
                    s.create(&id, Some("root")).unwrap();
                    // Everyone fights over the same id too.
                    let _ = s.create("shared", Some("root"));
                    let _ = s.remove("shared");
                    if i % 2 == 0 {
                        s.remove(&id).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let _ = s.remove("shared");
    assert_eq!(s.list().unwrap().len(), 1 + 8 * 25);
    let report = s.fsck(false).unwrap();
    assert!(report.is_clean(), "{report:?}");
}
