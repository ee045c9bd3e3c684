//! aufs through the recording mounter: every mount and unmount call is checked
//! (no kernel here has aufs; the VM rig runs the kernel mounter).

#[path = "../common/mod.rs"]
mod common;

use std::ffi::OsString;
use std::io::Read;

use common::{E, layer};
use plies_drivers::{CreateOptions, Driver, DriverChoice, Error, Options, Recorded};
use plies_mountopts::AufsCall;

#[test]
fn mounts_are_refcounted_and_recorded() {
    let Some((rig, mounter)) = common::aufs_recorded() else {
        return;
    };
    let d = &*rig.driver;
    let root = d.root().to_path_buf();
    layer(d, "base", None, &[E::File("a", "a", 0o644)]);
    layer(d, "mid", Some("base"), &[E::File("b", "b", 0o644)]);
    d.create_read_write("top", Some("mid"), &CreateOptions::default())
        .unwrap();

    // A base layer is its diff dir: nothing is mounted.
    assert_eq!(d.get("base", None).unwrap(), root.join("diff/base"));
    d.put("base").unwrap();
    assert!(mounter.calls().is_empty());

    let target = d.get("top", None).unwrap();
    assert_eq!(target, root.join("mnt/top"));
    assert_eq!(d.get("top", None).unwrap(), target);
    let data = format!(
        "br:{r}/diff/top=rw:{r}/diff/mid=ro+wh:{r}/diff/base=ro+wh,dio,xino=/dev/shm/aufs.xino",
        r = root.display()
    );
    assert_eq!(
        mounter.calls(),
        [Recorded::Mount {
            target: target.clone(),
            calls: vec![AufsCall::Mount(OsString::from(data))]
        }]
    );
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"a");
    assert_eq!(std::fs::read(target.join("b")).unwrap(), b"b");
    d.put("top").unwrap();
    assert_eq!(mounter.calls().len(), 1, "the first put keeps the mount");
    d.put("top").unwrap();
    assert_eq!(
        mounter.calls()[1],
        Recorded::Unmount {
            target: target.clone()
        }
    );
    assert!(mounter.mounted().is_empty());
    assert!(matches!(d.put("top"), Err(Error::NotMounted { .. })));
}

#[test]
fn deep_chains_append_branches() {
    let Some((rig, mounter)) = common::aufs_recorded() else {
        return;
    };
    let d = &*rig.driver;
    let mut parent: Option<String> = None;
    // Long ids make the branches overflow one page.
    let ids: Vec<String> = (0..100)
        .map(|i| format!("{i:03}{}", "x".repeat(60)))
        .collect();
    for id in &ids {
        d.create(id, parent.as_deref(), &CreateOptions::default())
            .unwrap();
        parent = Some(id.clone());
    }
    let top = ids.last().unwrap();
    d.get(top, None).unwrap();
    let Recorded::Mount { calls, .. } = &mounter.calls()[0] else {
        panic!("no mount")
    };
    assert!(calls.len() > 1, "appends follow the first mount");
    assert!(calls[1..].iter().all(|c| matches!(c, AufsCall::Append(_))));
    let limit = plies_mountopts::mount_data_limit();
    assert!(calls.iter().all(|c| c.data().len() <= limit));
    let (rw, ro) = plies_mountopts::aufs::decode_branches(calls).unwrap();
    assert_eq!(rw, d.root().join("diff").join(top));
    let want: Vec<_> = ids
        .iter()
        .rev()
        .skip(1)
        .map(|id| d.root().join("diff").join(id))
        .collect();
    assert_eq!(ro, want, "every ancestor, nearest first");
    d.put(top).unwrap();
}

#[test]
fn failed_mount_holds_nothing() {
    let Some((rig, mounter)) = common::aufs_recorded() else {
        return;
    };
    let d = &*rig.driver;
    d.create("base", None, &CreateOptions::default()).unwrap();
    d.create("top", Some("base"), &CreateOptions::default())
        .unwrap();
    mounter.fail_next_mount(5);
    assert!(matches!(d.get("top", None), Err(Error::Mount { .. })));
    assert!(matches!(d.put("top"), Err(Error::NotMounted { .. })));
    d.get("top", None).unwrap();
    d.put("top").unwrap();
    assert_eq!(mounter.calls().len(), 3);
}

#[test]
fn labels_reach_the_mount_data() {
    let Some((rig, mounter)) = common::aufs_recorded() else {
        return;
    };
    let d = &*rig.driver;
    d.create("base", None, &CreateOptions::default()).unwrap();
    d.create("top", Some("base"), &CreateOptions::default())
        .unwrap();
    d.get("top", Some("system_u:object_r:container_file_t:s0:c1,c2"))
        .unwrap();
    let Recorded::Mount { calls, .. } = &mounter.calls()[0] else {
        panic!("no mount")
    };
    let data = calls[0].data().to_string_lossy().into_owned();
    assert!(
        data.ends_with(",context=\"system_u:object_r:container_file_t:s0:c1,c2\""),
        "{data}"
    );
    d.put("top").unwrap();
}

#[test]
fn private_entries_never_leave_the_driver() {
    let Some((rig, _mounter)) = common::aufs_recorded() else {
        return;
    };
    let d = &*rig.driver;
    layer(
        d,
        "base",
        None,
        &[E::File("a", "a", 0o644), E::Whiteout("gone")],
    );
    let diff = d.root().join("diff/base");
    std::fs::create_dir(diff.join(".wh..wh.plnk")).unwrap();
    std::fs::write(diff.join(".wh..wh.plnk/12.34"), b"x").unwrap();
    std::fs::write(diff.join(".wh..wh.aufs"), b"").unwrap();
    let mut tar = Vec::new();
    d.diff("base", None).unwrap().read_to_end(&mut tar).unwrap();
    let names: Vec<String> = tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    // A whiteout sorts where the name it deletes would.
    assert_eq!(names, ["a", ".wh.gone"]);
}

#[test]
fn kernel_aufs_is_probed() {
    if plies_testkit::kernel_has_filesystem("aufs") {
        eprintln!("skipping kernel_aufs_is_probed: this kernel has aufs");
        return;
    }
    let dir = common::tempdir();
    let err = plies_drivers::open(dir.path(), DriverChoice::Aufs, &Options::default()).unwrap_err();
    assert!(
        matches!(err, Error::NotSupported { driver: "aufs", .. }),
        "{err}"
    );
    assert!(
        !dir.path().join("aufs").exists(),
        "nothing is made for a refused driver"
    );
}

/// Against its direct parent, `changes` walks the writable branch alone; it lists
/// what comparing the two unions in full lists, aufs whiteouts, opaque
/// directories and private entries included.
#[test]
fn branch_changes_match_the_full_comparison() {
    let Some((rig, _mounter)) = common::aufs_recorded() else {
        return;
    };
    let d = &*rig.driver;
    layer(
        d,
        "base",
        None,
        &[
            E::Dir("etc", 0o755),
            E::File("etc/passwd", "root", 0o644),
            E::File("etc/group", "root", 0o644),
            E::Dir("var/cache", 0o755),
            E::File("var/cache/a", "a", 0o644),
            E::File("var/cache/b", "b", 0o644),
            E::File("old", "old", 0o644),
        ],
    );
    layer(
        d,
        "mid",
        Some("base"),
        &[
            E::Whiteout("old"),
            E::Opaque("var/cache"),
            E::File("var/cache/c", "c", 0o644),
        ],
    );
    d.create_read_write("top", Some("mid"), &CreateOptions::default())
        .unwrap();
    // What aufs writes into the branch of a running container.
    let branch = d.root().join("diff/top");
    let write = |rel: &str, data: &str| {
        let path = branch.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    write("etc/passwd", "root:x:0:0");
    write("etc/.wh.group", "");
    write("old", "made again");
    write("var/cache/.wh..wh..opq", "");
    write("var/cache/d", "d");
    write("run/pid", "1");
    write(".wh..wh.plnk/9.1", "pseudo-link");
    write(".wh..wh.aufs", "");

    let native = common::changes(d, "top", Some("mid"));
    assert_eq!(
        native,
        [
            "C /etc",
            "D /etc/group",
            "C /etc/passwd",
            "A /old",
            "A /run",
            "A /run/pid",
            "C /var",
            "C /var/cache",
            "D /var/cache/c",
            "A /var/cache/d",
        ]
    );
    let scratch = common::tempdir();
    let full: Vec<String> = plies_drivers::naive::changes(d, "top", Some("mid"), scratch.path())
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(native, full);
    // Against another layer than its parent, the unions are compared.
    let against_base = common::changes(d, "top", Some("base"));
    assert!(
        against_base.contains(&"D /var/cache/a".to_owned()),
        "{against_base:?}"
    );
}

/// A tracing subscriber that keeps the messages of warnings.
#[derive(Default)]
struct Warnings(std::sync::Mutex<Vec<String>>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message<'a>(&'a mut String);
        impl tracing::field::Visit for Message<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    *self.0 = format!("{value:?}");
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = String::new();
            event.record(&mut Message(&mut text));
            self.0.lock().unwrap().push(text);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Pseudo-links aufs has not flushed into the branch are listed, and a diff or
/// a change list of the branch warns of them.
#[test]
fn pseudo_links_are_reported() {
    if !plies_testkit::require_root("pseudo_links_are_reported") {
        return;
    }
    let dir = common::tempdir();
    let mounter = std::sync::Arc::new(plies_drivers::RecordingMounter::new());
    let aufs =
        plies_drivers::Aufs::open_with(&dir.path().join("aufs"), &Options::default(), mounter)
            .unwrap();
    layer(&aufs, "base", None, &[E::File("a", "a", 0o644)]);
    assert!(aufs.pseudo_links("base").unwrap().is_empty());
    assert!(matches!(
        aufs.pseudo_links("missing"),
        Err(Error::NoSuchLayer { .. })
    ));
    let plnk = dir.path().join("aufs/diff/base/.wh..wh.plnk");
    std::fs::create_dir(&plnk).unwrap();
    let quiet = std::sync::Arc::new(Warnings::default());
    tracing::subscriber::with_default(quiet.clone(), || {
        aufs.changes("base", None).unwrap();
    });
    assert!(quiet.0.lock().unwrap().is_empty(), "an empty plnk is fine");

    // `a` was copied up with a link in a lower branch that aufs has not made yet.
    std::fs::hard_link(dir.path().join("aufs/diff/base/a"), plnk.join("1234.0")).unwrap();
    assert_eq!(aufs.pseudo_links("base").unwrap(), [plnk.join("1234.0")]);
    let warnings = std::sync::Arc::new(Warnings::default());
    let mut tar = Vec::new();
    tracing::subscriber::with_default(warnings.clone(), || {
        assert_eq!(common::changes(&aufs, "base", None), ["A /a"]);
        aufs.diff("base", None)
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
    });
    let seen = warnings.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|w| w.contains("pseudo-links")), "{seen:?}");
    // The diff holds the file once, as a file, and nothing of plnk.
    assert_eq!(common::tar_listing(&tar).len(), 1);
    aufs.cleanup().unwrap();
}
