//! A store is input too: bad files get typed errors naming the layer and file.

use std::os::unix::fs::symlink;

use plies_layerstore::{Error, LinkError, LinkTargetError, LowerError};

use crate::store;

fn with_lower(contents: &str) -> (tempfile::TempDir, plies_layerstore::Overlay2Store) {
    let (tmp, s) = store();
    s.create("a", None).unwrap();
    s.create("b", Some("a")).unwrap();
    std::fs::write(s.layer_dir("b").join("lower"), contents).unwrap();
    (tmp, s)
}

fn lower_error(contents: &str) -> LowerError {
    let (_tmp, s) = with_lower(contents);
    match s.lowers("b") {
        Err(Error::BadLower {
            layer,
            path,
            source,
        }) => {
            assert_eq!(layer, "b");
            assert_eq!(path, s.layer_dir("b").join("lower"));
            source
        }
        other => panic!("{contents:?}: {other:?}"),
    }
}

#[test]
fn bad_lower_files() {
    let ok = "l/AAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(lower_error(""), LowerError::Empty);
    assert_eq!(
        lower_error(&format!("{ok}::{ok}")),
        LowerError::EmptySegment { index: 1 }
    );
    assert_eq!(
        lower_error(&format!("{ok}:")),
        LowerError::EmptySegment { index: 1 }
    );
    assert!(matches!(
        lower_error("../../etc"),
        LowerError::NotInLinkDir { index: 0, .. }
    ));
    assert!(matches!(
        lower_error("/etc/passwd"),
        LowerError::NotInLinkDir { index: 0, .. }
    ));
    assert!(matches!(
        lower_error("l/../../etc"),
        LowerError::BadLinkId { index: 0, .. }
    ));
    assert!(matches!(
        lower_error(&format!("{ok}\n")),
        LowerError::BadLinkId { .. }
    ));
    let many: Vec<String> = (0..129)
        .map(|_| plies_layerstore::LinkId::generate().lower_entry())
        .collect();
    let many = many.join(":");
    assert!(matches!(
        lower_error(&many),
        LowerError::TooMany { max: 128, .. }
    ));
    assert!(matches!(
        lower_error(&format!("{ok}:{ok}")),
        LowerError::Repeated { .. }
    ));
}

#[test]
fn links_pointing_outside_are_refused() {
    for target in [
        "/etc",
        "../../etc/diff",
        "../a/diff/../../..",
        "../a",
        "..//diff",
    ] {
        let (_tmp, s) = store();
        s.create("a", None).unwrap();
        s.create("b", Some("a")).unwrap();
        let la = s.link_id("a").unwrap();
        let link = s.home().join("l").join(la.as_str());
        std::fs::remove_file(&link).unwrap();
        symlink(target, &link).unwrap();
        match s.lowers("b") {
            Err(Error::BadLinkTarget { path, source, .. }) => {
                assert_eq!(path, link);
                assert!(matches!(
                    source,
                    LinkTargetError::NotLayerDiff | LinkTargetError::BadId(_)
                ));
            }
            other => panic!("{target}: {other:?}"),
        }
        // fsck removes the bad link (it holds no data) and reports the layer's loss of it.
        let report = s.fsck(true).unwrap();
        assert!(
            report
                .entries
                .iter()
                .any(|e| matches!(e.finding, plies_layerstore::Finding::BadLinkTarget { .. }))
        );
        assert_eq!(s.lowers("b").unwrap(), [s.diff_dir("a")]);
    }
}

#[test]
fn link_file_with_a_slash() {
    let (_tmp, s) = store();
    s.create("a", None).unwrap();
    std::fs::write(s.layer_dir("a").join("link"), "../../../../../../etc/pass").unwrap();
    match s.link_id("a") {
        Err(Error::BadLinkFile {
            layer,
            path,
            source: LinkError::BadByte { byte: b'.', .. },
        }) => {
            assert_eq!(layer, "a");
            assert_eq!(path, s.layer_dir("a").join("link"));
        }
        other => panic!("{other:?}"),
    }
    // Removing the layer leaves l/ and the other links alone.
    s.create("c", None).unwrap();
    s.remove("a").unwrap();
    assert!(s.home().join("l").is_dir());
    assert!(s.lowers("c").is_ok());
}

#[test]
fn symlinked_metadata_files_are_not_followed() {
    let (tmp, s) = with_lower("l/AAAAAAAAAAAAAAAAAAAAAAAAAA");
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "l/BBBBBBBBBBBBBBBBBBBBBBBBBB").unwrap();
    let lower = s.layer_dir("b").join("lower");
    std::fs::remove_file(&lower).unwrap();
    symlink(&secret, &lower).unwrap();
    match s.lowers("b") {
        Err(Error::Io { path, .. }) => assert_eq!(path, lower),
        other => panic!("{other:?}"),
    }
    // A layer directory that is a symlink is no layer.
    std::fs::create_dir(tmp.path().join("elsewhere")).unwrap();
    symlink(tmp.path().join("elsewhere"), s.home().join("evil")).unwrap();
    assert!(!s.exists("evil"));
    assert!(matches!(s.link_id("evil"), Err(Error::NotFound { .. })));
    assert!(!s.list().unwrap().contains(&"evil".to_owned()));
}

#[test]
fn huge_files_are_refused() {
    let (_tmp, s) = with_lower(&"l/AAAAAAAAAAAAAAAAAAAAAAAAAA:".repeat(10_000));
    assert!(matches!(s.lowers("b"), Err(Error::Io { .. })));
}
