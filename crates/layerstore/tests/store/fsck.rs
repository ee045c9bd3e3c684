//! fsck: each half-done state is found, typed and (where safe) repaired.

use plies_layerstore::{Finding, Repair};

use crate::{ino, store};

fn findings(report: &plies_layerstore::FsckReport) -> Vec<Finding> {
    report.entries.iter().map(|e| e.finding.clone()).collect()
}

#[test]
fn dangling_link_is_removed() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    std::os::unix::fs::symlink(
        "../gone/diff",
        s.home().join("l/CCCCCCCCCCCCCCCCCCCCCCCCCC"),
    )
    .unwrap();
    let r = s.fsck(false).unwrap();
    assert_eq!(
        findings(&r),
        [Finding::DanglingLink {
            link: "CCCCCCCCCCCCCCCCCCCCCCCCCC".into(),
            layer: "gone".into()
        }]
    );
    assert_eq!(r.entries[0].outcome, Repair::Repairable);
    let r = s.fsck(true).unwrap();
    assert_eq!(r.entries[0].outcome, Repair::Repaired);
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn missing_link_is_recreated() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    let la = s.link_id("a").unwrap();
    std::fs::remove_file(s.home().join("l").join(la.as_str())).unwrap();
    let r = s.fsck(true).unwrap();
    assert!(findings(&r).contains(&Finding::MissingLink {
        layer: "a".into(),
        link: la.as_str().into()
    }));
    assert_eq!(r.unrepairable().count(), 0);
    assert_eq!(s.lowers("b").unwrap(), [s.diff_dir("a")]);
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn missing_link_file_is_restored_from_the_link() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    let la = s.link_id("a").unwrap();
    std::fs::remove_file(s.layer_dir("a").join("link")).unwrap();
    let r = s.fsck(true).unwrap();
    assert_eq!(
        findings(&r),
        [Finding::BadLinkFile {
            layer: "a".into(),
            restored: Some(la.as_str().into())
        }]
    );
    assert_eq!(s.link_id("a").unwrap(), la);
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn empty_link_file_without_link_gets_a_new_id() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    let la = s.link_id("a").unwrap();
    std::fs::write(s.layer_dir("a").join("link"), b"").unwrap();
    std::fs::remove_file(s.home().join("l").join(la.as_str())).unwrap();
    let r = s.fsck(true).unwrap();
    assert_eq!(r.entries.len(), 1);
    assert!(matches!(
        r.entries[0].finding,
        Finding::BadLinkFile {
            restored: Some(_),
            ..
        }
    ));
    let new = s.link_id("a").unwrap();
    assert_ne!(new, la);
    assert_eq!(
        std::fs::read_link(s.home().join("l").join(new.as_str()))
            .unwrap()
            .to_str(),
        Some("../a/diff")
    );
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn unrepairable_states_are_reported_and_diff_kept() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    s.create("c", Some("b")).unwrap();
    std::fs::write(s.diff_dir("a").join("data"), b"keep").unwrap();
    // b's parent disappears behind its back (Docker removes without checking children).
    let lb = s.link_id("b").unwrap();
    s.remove("b").unwrap();
    // a loses its diff.
    let a_ino = ino(&s.layer_dir("a"));
    std::fs::write(
        s.layer_dir("a").join("lower"),
        format!("l/{}", s.link_id("a").unwrap()),
    )
    .unwrap();
    let r = s.fsck(true).unwrap();
    let f = findings(&r);
    assert!(
        f.contains(&Finding::ParentGone {
            layer: "c".into(),
            entry: format!("l/{lb}")
        }),
        "{f:?}"
    );
    assert!(f.contains(&Finding::Cycle { layer: "a".into() }), "{f:?}");
    assert_eq!(r.unrepairable().count(), 2);
    assert_eq!(
        std::fs::read(s.diff_dir("a").join("data")).unwrap(),
        b"keep"
    );
    assert_eq!(ino(&s.layer_dir("a")), a_ino);
}

#[test]
fn too_deep_is_reported() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    let mut entries = vec![format!("l/{}", s.link_id("a").unwrap())];
    entries.extend((0..128).map(|_| plies_layerstore::LinkId::generate().lower_entry()));
    std::fs::write(s.layer_dir("b").join("lower"), entries.join(":")).unwrap();
    let r = s.fsck(true).unwrap();
    assert_eq!(
        findings(&r),
        [Finding::TooDeep {
            layer: "b".into(),
            depth: 129,
            max: 128
        }]
    );
}

#[test]
fn leftovers_and_unexpected_entries() {
    let (_tmp, s) = store();
    std::fs::create_dir(s.home().join("x-creating")).unwrap();
    std::fs::write(s.home().join("l/not-a-link"), b"").unwrap();
    // A copy of a diff an interrupted apply left beside it.
    s.create("a", None).unwrap();
    std::fs::write(s.diff_dir("a").join("kept"), b"k").unwrap();
    std::fs::create_dir_all(s.layer_dir("a").join("diff-applying/partial")).unwrap();
    std::fs::create_dir_all(s.layer_dir("a").join("work-applying/work")).unwrap();
    let r = s.fsck(true).unwrap();
    let f = findings(&r);
    assert!(f.contains(&Finding::Leftover {
        path: "x-creating".into()
    }));
    assert!(f.contains(&Finding::Leftover {
        path: "a/diff-applying".into()
    }));
    assert!(f.contains(&Finding::Leftover {
        path: "a/work-applying".into()
    }));
    assert!(!s.layer_dir("a").join("diff-applying").exists());
    assert!(!s.layer_dir("a").join("work-applying").exists());
    assert!(s.diff_dir("a").join("kept").exists());
    assert!(f.contains(&Finding::UnexpectedEntry {
        path: "l/not-a-link".into()
    }));
    assert!(!s.home().join("x-creating").exists());
    assert!(s.home().join("l/not-a-link").exists());
}

#[test]
fn extra_unused_link_is_removed() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    std::os::unix::fs::symlink("../a/diff", s.home().join("l/DDDDDDDDDDDDDDDDDDDDDDDDDD")).unwrap();
    let r = s.fsck(true).unwrap();
    assert_eq!(
        findings(&r),
        [Finding::ExtraLink {
            layer: "a".into(),
            link: "DDDDDDDDDDDDDDDDDDDDDDDDDD".into()
        }]
    );
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn lost_link_id_is_replaced_and_lowers_rewritten() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    s.create("c", Some("b")).unwrap();
    s.create("other", None).unwrap();
    let (la, lb) = (s.link_id("a").unwrap(), s.link_id("b").unwrap());
    // b loses both its link file and its l/ link.
    std::fs::remove_file(s.layer_dir("b").join("link")).unwrap();
    std::fs::remove_file(s.home().join("l").join(lb.as_str())).unwrap();
    let r = s.fsck(false).unwrap();
    assert!(findings(&r).contains(&Finding::StaleLowerEntry {
        layer: "c".into(),
        entry: format!("l/{lb}"),
        owner: "b".into()
    }));
    assert_eq!(r.unrepairable().count(), 0, "{r:?}");
    let r = s.fsck(true).unwrap();
    assert_eq!(r.unrepairable().count(), 0, "{r:?}");
    let nb = s.link_id("b").unwrap();
    assert_ne!(nb, lb);
    assert_eq!(
        s.lower_entries("c").unwrap(),
        [format!("l/{nb}"), format!("l/{la}")]
    );
    assert_eq!(s.parent("c").unwrap().as_deref(), Some("b"));
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn a_directory_that_is_no_layer_is_left_alone() {
    let (_tmp, s) = store();
    std::fs::create_dir(s.home().join("lost+found")).unwrap();
    let r = s.fsck(true).unwrap();
    assert_eq!(
        findings(&r),
        [Finding::UnexpectedEntry {
            path: "lost+found".into()
        }]
    );
    assert_eq!(
        crate::names(&s.home().join("lost+found")),
        Vec::<String>::new()
    );
    assert_eq!(crate::names(&s.home().join("l")), Vec::<String>::new());
}
