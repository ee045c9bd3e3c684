//! Docker 20.10's own store: plies opens it, and builds the same layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use plies_layerstore::{Overlay2Store, StoreOptions};

use crate::{mode, names};

const L1: &str = "3832b58771903bd628946f5e93c1670628781d0c33a148bc3ba36f8eeb8e3d91";
const L2: &str = "78ebb24dde171fd44393ca594d635a2a6eb77c01adb73c025d528c0871f6ccb2";
const L3: &str = "9060cfb51cbb6b38f9fe70cc4c15f137b677540aee0cf295c3742d699a5c437d";
const INIT: &str = "a44a1aee50359f8d10ffc3355a22ca9ed1ce1a7ad96b5584d0dc81b099558c3a-init";
const RW: &str = "a44a1aee50359f8d10ffc3355a22ca9ed1ce1a7ad96b5584d0dc81b099558c3a";

/// The fixture's layers, each with its parent, bottom first.
const CHAIN: [(&str, Option<&str>); 5] = [
    (L1, None),
    (L2, Some(L1)),
    (L3, Some(L2)),
    (INIT, Some(L3)),
    (RW, Some(INIT)),
];

/// Extracts the Docker store; `None` (test skipped) without root.
fn extract(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if !plies_testkit::require_root(test) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tarball = plies_testkit::fixtures_dir().join("docker-20.10-overlay2-store.tar.gz");
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xzf"])
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "extracting {}", tarball.display());
    let home = tmp.path().join("overlay2");
    Some((tmp, home))
}

#[test]
fn docker_store_opens_lists_and_resolves() {
    let Some((_tmp, home)) = extract("docker_store_opens_lists_and_resolves") else {
        return;
    };
    let s = Overlay2Store::open(&home, StoreOptions::default()).unwrap();
    let mut ids: Vec<&str> = CHAIN.iter().map(|(id, _)| *id).collect();
    ids.sort();
    assert_eq!(s.list().unwrap(), ids);
    for (id, parent) in CHAIN {
        assert_eq!(s.parent(id).unwrap().as_deref(), parent, "{id}");
        assert!(s.exists(id));
        let link = std::fs::read_to_string(home.join(id).join("link")).unwrap();
        assert_eq!(s.link_id(id).unwrap().as_str(), link);
    }
    assert_eq!(s.ancestors(RW).unwrap(), [INIT, L3, L2, L1]);
    let lowers: Vec<PathBuf> = [INIT, L3, L2, L1]
        .iter()
        .map(|l| home.join(l).join("diff"))
        .collect();
    assert_eq!(s.lowers(RW).unwrap(), lowers);
    let raw = std::fs::read_to_string(home.join(RW).join("lower")).unwrap();
    assert_eq!(s.lower_entries(RW).unwrap().join(":"), raw);
    let m = s.metadata(RW).unwrap();
    let joined: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(m.lower_dir, Some(joined.join(":")));
    assert_eq!(m.upper_dir, home.join(RW).join("diff"));
    assert_eq!(s.metadata(L1).unwrap().lower_dir, None);
    for id in [L1, L2, L3, INIT] {
        assert!(s.is_committed(id).unwrap(), "{id}");
    }
    assert!(!s.is_committed(RW).unwrap());
    let report = s.fsck(false).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// Checks an entry's kind, mode and contents format against Docker's.
fn same_entry(ours: &Path, docker: &Path) {
    let a = std::fs::symlink_metadata(ours).unwrap();
    let b = std::fs::symlink_metadata(docker).unwrap();
    assert_eq!(a.file_type(), b.file_type(), "{}", ours.display());
    assert_eq!(mode(ours), mode(docker), "{}", ours.display());
}

fn is_link_id(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

#[test]
fn plies_builds_dockers_layout() {
    let Some((tmp, docker)) = extract("plies_builds_dockers_layout") else {
        return;
    };
    let ours = tmp.path().join("plies");
    let s = Overlay2Store::open(&ours, StoreOptions::default()).unwrap();
    for (id, parent) in CHAIN {
        s.create(id, parent).unwrap();
    }
    for id in [L1, L2, L3, INIT] {
        s.mark_committed(id).unwrap();
    }
    same_entry(&ours, &docker);
    same_entry(&ours.join("l"), &docker.join("l"));
    assert_eq!(names(&ours), names(&docker));
    assert_eq!(names(&ours.join("l")).len(), names(&docker.join("l")).len());
    for (id, _) in CHAIN {
        let (o, d) = (ours.join(id), docker.join(id));
        same_entry(&o, &d);
        // Docker's work dirs of mounted layers hold the kernel's `work/work`.
        assert_eq!(names(&o), names(&d), "{id}");
        for name in names(&d) {
            same_entry(&o.join(&name), &d.join(&name));
        }
        let (ol, dl) = (
            std::fs::read_to_string(o.join("link")).unwrap(),
            std::fs::read_to_string(d.join("link")).unwrap(),
        );
        assert!(is_link_id(&ol) && is_link_id(&dl), "{ol:?} {dl:?}");
        // The l/ link: same target form, same mode.
        let (olink, dlink) = (ours.join("l").join(&ol), docker.join("l").join(&dl));
        same_entry(&olink, &dlink);
        assert_eq!(
            std::fs::read_link(&olink).unwrap(),
            std::fs::read_link(&dlink).unwrap()
        );
        if d.join("lower").exists() {
            let shape = |p: &Path| -> Vec<usize> {
                std::fs::read_to_string(p)
                    .unwrap()
                    .split(':')
                    .map(|e| {
                        assert!(e.starts_with("l/") && is_link_id(&e[2..]), "{e:?}");
                        e.len()
                    })
                    .collect()
            };
            assert_eq!(shape(&o.join("lower")), shape(&d.join("lower")), "{id}");
            // Same chain: each entry names the same layer in both stores.
            let resolve = |home: &Path, lower: &Path| -> Vec<PathBuf> {
                std::fs::read_to_string(lower)
                    .unwrap()
                    .split(':')
                    .map(|e| std::fs::read_link(home.join(e)).unwrap())
                    .collect()
            };
            assert_eq!(
                resolve(&ours, &o.join("lower")),
                resolve(&docker, &d.join("lower"))
            );
        }
    }
}
