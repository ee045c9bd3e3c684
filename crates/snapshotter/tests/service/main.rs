//! The snapshots.v1 service, in-process over a unix socket with a tonic client:
//! every method, kinds, parent chains, labels, filters and error codes, against
//! the vfs driver everywhere and overlay2 as root, whose mounts are mounted.

mod harness;

use std::collections::HashMap;
use std::path::Path;

use harness::{Harness, Mounted};
use plies_snapshotter::DriverChoice;
use plies_snapshotter::proto::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, Mount, MountsRequest,
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest,
    UsageRequest, ViewSnapshotRequest,
};
use tonic::Code;

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn prepare(key: &str, parent: &str) -> PrepareSnapshotRequest {
    PrepareSnapshotRequest {
        key: key.to_owned(),
        parent: parent.to_owned(),
        ..Default::default()
    }
}

fn view(key: &str, parent: &str) -> ViewSnapshotRequest {
    ViewSnapshotRequest {
        key: key.to_owned(),
        parent: parent.to_owned(),
        ..Default::default()
    }
}

fn commit(name: &str, key: &str) -> CommitSnapshotRequest {
    CommitSnapshotRequest {
        name: name.to_owned(),
        key: key.to_owned(),
        ..Default::default()
    }
}

/// A request that names one snapshot.
macro_rules! req {
    ($t:ident, $key:expr) => {
        $t {
            key: $key.to_owned(),
            ..Default::default()
        }
    };
}

/// The one mount a call returned, checked for its type and access.
fn one(mounts: Vec<Mount>, kind: &str, ro: bool) -> Mount {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = mounts.into_iter().next().unwrap();
    assert_eq!(m.r#type, kind, "{m:?}");
    if kind == "bind" {
        assert!(m.options.contains(&"rbind".to_owned()), "{m:?}");
        let flag = if ro { "ro" } else { "rw" };
        assert!(m.options.contains(&flag.to_owned()), "{m:?}");
    } else {
        assert_eq!(m.source, "overlay");
        let upper = m.options.iter().any(|o| o.starts_with("upperdir="));
        assert_eq!(upper, !ro, "{m:?}");
        let last = m.options.last().unwrap();
        assert!(last.starts_with("lowerdir="), "{m:?}");
    }
    m
}

/// Where containerd's applier writes a layer into a mount: a bind's source,
/// an overlay's upper dir.
fn written_dir(m: &Mount) -> std::path::PathBuf {
    match m.options.iter().find_map(|o| o.strip_prefix("upperdir=")) {
        Some(upper) => upper.into(),
        None => m.source.clone().into(),
    }
}

fn lowers(m: &Mount) -> usize {
    let o = m
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .unwrap();
    o.split(':').count()
}

fn names(infos: &[Info]) -> Vec<&str> {
    infos.iter().map(|i| i.name.as_str()).collect()
}

/// The whole life of a three-snapshot chain, as containerd's unpack and run use it.
async fn life_of_a_chain(h: &Harness) {
    let mut c = h.client().await;
    let overlay = h.driver == DriverChoice::Overlay2;

    // A base layer: containerd unpacks into an active snapshot without parent.
    let mut req = prepare("default/1/extract-1 sha256:aaa", "");
    req.labels = labels(&[("containerd.io/snapshot.ref", "sha256:aaa")]);
    // overlay2 gives an overlay on an empty lower (so the applier keeps
    // whiteouts, as a layer rebased later needs), vfs a bind.
    let m = one(
        c.prepare(req).await.unwrap().into_inner().mounts,
        if overlay { "overlay" } else { "bind" },
        false,
    );
    let dir = written_dir(&m);
    std::fs::create_dir(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/base"), "base\n").unwrap();
    std::fs::write(dir.join("gone"), "x").unwrap();
    let again = c
        .prepare(prepare("default/1/extract-1 sha256:aaa", ""))
        .await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);

    let info = c.stat(req!(StatSnapshotRequest, "default/1/extract-1 sha256:aaa"));
    let info = info.await.unwrap().into_inner().info.unwrap();
    assert_eq!(info.kind, Kind::Active as i32);
    assert_eq!(info.labels["containerd.io/snapshot.ref"], "sha256:aaa");
    assert!(info.created_at.is_some() && info.updated_at.is_some());

    let mut req = commit("sha256:aaa", "default/1/extract-1 sha256:aaa");
    req.labels = labels(&[("containerd.io/snapshot.ref", "sha256:aaa")]);
    c.commit(req).await.unwrap();
    let gone = c.stat(req!(StatSnapshotRequest, "default/1/extract-1 sha256:aaa"));
    assert_eq!(gone.await.unwrap_err().code(), Code::NotFound);
    let again = c
        .commit(commit("sha256:aaa", "default/1/extract-1 sha256:aaa"))
        .await;
    assert_eq!(again.unwrap_err().code(), Code::NotFound);
    let info = c.stat(req!(StatSnapshotRequest, "sha256:aaa"));
    assert_eq!(
        info.await.unwrap().into_inner().info.unwrap().kind,
        Kind::Committed as i32
    );
    let committed_mounts = c.mounts(req!(MountsRequest, "sha256:aaa"));
    assert_eq!(
        committed_mounts.await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // A layer on it: written through the mount as containerd's differ does.
    let m = c
        .prepare(prepare("default/2/extract-2 sha256:bbb", "sha256:aaa"))
        .await;
    let m = m.unwrap().into_inner().mounts;
    let m = one(m, if overlay { "overlay" } else { "bind" }, false);
    if overlay {
        // containerd's overlayfs order: index=off (where the kernel has it),
        // workdir, upperdir, lowerdir; lowers through the store's short links.
        let home = h.root().join("overlay2");
        let index = Path::new("/sys/module/overlay/parameters/index").exists();
        let opts: Vec<&str> = m.options.iter().map(String::as_str).collect();
        let opts = if index {
            assert_eq!(opts[0], "index=off", "{m:?}");
            &opts[1..]
        } else {
            &opts[..]
        };
        let [work, upper, lower] = opts else {
            panic!("{m:?}")
        };
        let layer = upper
            .strip_prefix(&format!("upperdir={}/", home.display()))
            .and_then(|l| l.strip_suffix("/diff"))
            .unwrap_or_else(|| panic!("{m:?}"));
        assert_eq!(layer.len(), 64, "{m:?}");
        assert_eq!(*work, format!("workdir={}/{layer}/work", home.display()));
        assert!(
            lower.starts_with(&format!("lowerdir={}/l/", home.display())),
            "{m:?}"
        );
        assert_eq!(lowers(&m), 1);
    }
    {
        let root = Mounted::new(h, &m);
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/base")).unwrap(),
            "base\n"
        );
        std::fs::write(root.path().join("etc/top"), "top\n").unwrap();
        std::fs::remove_file(root.path().join("gone")).unwrap();
    }
    let again = c.mounts(req!(MountsRequest, "default/2/extract-2 sha256:bbb"));
    assert_eq!(again.await.unwrap().into_inner().mounts, vec![m]);
    c.commit(commit("sha256:bbb", "default/2/extract-2 sha256:bbb"))
        .await
        .unwrap();

    // Views: two layers are an overlay of lowers only, one layer a read-only bind.
    let v = c
        .view(view("view/top", "sha256:bbb"))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let v = one(v, if overlay { "overlay" } else { "bind" }, true);
    if overlay {
        assert_eq!(lowers(&v), 2);
    }
    {
        let root = Mounted::new(h, &v);
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/top")).unwrap(),
            "top\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/base")).unwrap(),
            "base\n"
        );
        assert!(!root.path().join("gone").exists());
    }
    let v1 = c
        .view(view("view/base", "sha256:aaa"))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let v1 = one(v1, "bind", true);
    assert!(Path::new(&v1.source).join("gone").exists());
    let v0 = c
        .view(view("view/empty", ""))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    one(v0, "bind", true);

    // A container's active snapshot on top, three layers deep.
    let m = c
        .prepare(prepare("ctr", "sha256:bbb"))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let m = one(m, if overlay { "overlay" } else { "bind" }, false);
    if overlay {
        assert_eq!(lowers(&m), 2);
    }

    // Error codes containerd maps back.
    let cases = [
        (
            c.prepare(prepare("x", "nope")).await.unwrap_err(),
            Code::NotFound,
        ),
        (
            c.prepare(prepare("x", "view/top")).await.unwrap_err(),
            Code::InvalidArgument,
        ),
        (
            c.prepare(prepare("x", "ctr")).await.unwrap_err(),
            Code::InvalidArgument,
        ),
        (
            c.prepare(prepare("", "")).await.unwrap_err(),
            Code::InvalidArgument,
        ),
        (
            c.view(view("view/top", "sha256:aaa")).await.unwrap_err(),
            Code::AlreadyExists,
        ),
        (
            c.commit(commit("c2", "view/top")).await.unwrap_err(),
            Code::FailedPrecondition,
        ),
        (
            c.commit(commit("sha256:aaa", "ctr")).await.unwrap_err(),
            Code::AlreadyExists,
        ),
        (
            c.commit(commit("c2", "nope")).await.unwrap_err(),
            Code::NotFound,
        ),
        (
            c.mounts(req!(MountsRequest, "nope")).await.unwrap_err(),
            Code::NotFound,
        ),
        (
            c.remove(req!(RemoveSnapshotRequest, "nope"))
                .await
                .unwrap_err(),
            Code::NotFound,
        ),
        (
            c.remove(req!(RemoveSnapshotRequest, "sha256:aaa"))
                .await
                .unwrap_err(),
            Code::FailedPrecondition,
        ),
        (
            c.usage(req!(UsageRequest, "nope")).await.unwrap_err(),
            Code::NotFound,
        ),
    ];
    for (i, (status, code)) in cases.into_iter().enumerate() {
        assert_eq!(status.code(), code, "case {i}: {status:?}");
    }
    let mut rebase = commit("c2", "ctr");
    rebase.parent = "sha256:aaa".to_owned();
    assert_eq!(
        c.commit(rebase).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // Update: every label, one label, a field that cannot change.
    let update = |name: &str, l: &[(&str, &str)], paths: &[&str]| UpdateSnapshotRequest {
        info: Some(Info {
            name: name.to_owned(),
            labels: labels(l),
            ..Default::default()
        }),
        update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
        ..Default::default()
    };
    let u = c
        .update(update("sha256:bbb", &[("a", "1"), ("b", "2")], &[]))
        .await;
    assert_eq!(
        u.unwrap().into_inner().info.unwrap().labels,
        labels(&[("a", "1"), ("b", "2")])
    );
    let u = c
        .update(update(
            "sha256:bbb",
            &[("a", "3"), ("b", "x")],
            &["labels.a"],
        ))
        .await;
    assert_eq!(
        u.unwrap().into_inner().info.unwrap().labels,
        labels(&[("a", "3"), ("b", "2")])
    );
    let u = c.update(update("sha256:bbb", &[], &["labels.b"])).await;
    assert_eq!(
        u.unwrap().into_inner().info.unwrap().labels,
        labels(&[("a", "3")])
    );
    let u = c.update(update("sha256:bbb", &[], &["parent"])).await;
    assert_eq!(u.unwrap_err().code(), Code::InvalidArgument);
    let u = c.update(update("nope", &[], &[])).await;
    assert_eq!(u.unwrap_err().code(), Code::NotFound);
    let s = c
        .stat(req!(StatSnapshotRequest, "sha256:bbb"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.info.unwrap().labels, labels(&[("a", "3")]));

    // List, streamed, with containerd's filters.
    let list = |filters: &[&str]| ListSnapshotsRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    };
    let all = h.list(&mut c, list(&[])).await.unwrap();
    assert_eq!(
        names(&all),
        [
            "ctr",
            "sha256:aaa",
            "sha256:bbb",
            "view/base",
            "view/empty",
            "view/top"
        ]
    );
    let some = h.list(&mut c, list(&["parent==sha256:bbb"])).await.unwrap();
    assert_eq!(names(&some), ["ctr", "view/top"]);
    let some = h
        .list(&mut c, list(&[r#"labels."a"==3"#, "kind==active"]))
        .await
        .unwrap();
    assert_eq!(names(&some), ["ctr", "sha256:bbb"]);
    let some = h
        .list(
            &mut c,
            list(&[r#"labels."containerd.io/snapshot.ref",kind==committed"#]),
        )
        .await
        .unwrap();
    assert_eq!(names(&some), ["sha256:aaa"]);
    let bad = h.list(&mut c, list(&["name~=x"])).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // Usage of a layer's own files only.
    let u = c
        .usage(req!(UsageRequest, "sha256:aaa"))
        .await
        .unwrap()
        .into_inner();
    assert!(u.inodes >= 4 && u.size > 0, "{u:?}");

    // Removal, children first.
    for k in [
        "view/top",
        "view/base",
        "view/empty",
        "ctr",
        "sha256:bbb",
        "sha256:aaa",
    ] {
        c.remove(req!(RemoveSnapshotRequest, k))
            .await
            .unwrap_or_else(|e| panic!("{k}: {e}"));
    }
    c.cleanup(plies_snapshotter::proto::CleanupRequest::default())
        .await
        .unwrap();
    assert!(h.list(&mut c, list(&[])).await.unwrap().is_empty());
    assert!(h.layers().is_empty(), "{:?}", h.layers());
}

#[test]
fn vfs_serves_every_method() {
    let h = Harness::start(DriverChoice::Vfs);
    h.block_on(life_of_a_chain(&h));
}

#[test]
fn overlay2_serves_every_method_and_its_mounts_mount() {
    if !plies_testkit::require_overlay("overlay2_serves_every_method_and_its_mounts_mount") {
        return;
    }
    let h = Harness::start(DriverChoice::Overlay2);
    h.block_on(life_of_a_chain(&h));
}

/// What a kill leaves, made by hand: a snapshot whose layer never completed
/// (its record still pending), and a snapshot whose layer a remove took before
/// its record. Neither shows; the next change removes the incomplete layer,
/// cleanup (and a restart) drops the other record.
#[test]
fn half_made_snapshots_never_show_and_cleanup_drops_them() {
    use plies_layerdb::{Access, LayerDb};
    use plies_snapshotter::{Options, Snapshotter};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let s = Snapshotter::open(&root, DriverChoice::Vfs, &Options::default()).unwrap();
    s.prepare("kept", "", HashMap::new()).unwrap();
    s.prepare("removed", "", HashMap::new()).unwrap();
    let layers = s.layers().unwrap();

    let db = || {
        let driver = plies_drivers::open(&root, DriverChoice::Vfs, &Options::default()).unwrap();
        LayerDb::open(&root, driver, Access::Write).unwrap()
    };
    // A killed Prepare: the layer made, its record (naming the key "half")
    // still incomplete.
    let kept = db().record(&layers["kept"]).unwrap().unwrap();
    let half = "f".repeat(64);
    {
        let db = db();
        db.driver()
            .create(&half, None, &Default::default())
            .unwrap();
        let mut record = kept.clone();
        record.id = half.clone();
        record.complete = false;
        let text = serde_json::to_string(&record.attached).unwrap();
        record.attached = serde_json::from_str(&text.replace("\"kept\"", "\"half\"")).unwrap();
        db.write_record(&record).unwrap();
    }
    // A killed Remove: the layer gone, the record left.
    db().driver().remove(&layers["removed"]).unwrap();

    assert_eq!(s.stat("half").unwrap_err().status().code(), Code::NotFound);
    assert_eq!(
        s.stat("removed").unwrap_err().status().code(),
        Code::NotFound
    );
    assert_eq!(names(&s.list(&[]).unwrap()), ["kept"]);
    // A new snapshot may take a half-made key.
    s.prepare("half", "", HashMap::new()).unwrap();
    s.remove("half").unwrap();

    assert_eq!(s.cleanup().unwrap(), 1, "the removed snapshot's record");
    assert!(db().record(&layers["removed"]).unwrap().is_none());
    assert!(
        db().record(&half).unwrap().is_none(),
        "the incomplete layer is gone with its record"
    );
    assert_eq!(s.layers().unwrap().keys().collect::<Vec<_>>(), ["kept"]);
}

/// A store written by an earlier version kept every snapshot in one
/// `snapshots.json`: opening it moves each entry into its layer's record and
/// deletes the file; what it said stays what the server says.
#[test]
fn an_earlier_snapshots_json_moves_into_the_records() {
    use plies_layerdb::{Access, LayerDb};
    use plies_snapshotter::{Options, Snapshotter};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let s = Snapshotter::open(&root, DriverChoice::Vfs, &Options::default()).unwrap();
    s.prepare("base-key", "", HashMap::new()).unwrap();
    s.commit("base", "base-key", labels(&[("a", "1")]), "")
        .unwrap();
    s.prepare("top", "base", HashMap::new()).unwrap();
    let layers = s.layers().unwrap();
    drop(s);
    // The same store as an earlier version left it: no snapshot in any
    // record, every entry in snapshots.json.
    let db = || {
        let driver = plies_drivers::open(&root, DriverChoice::Vfs, &Options::default()).unwrap();
        LayerDb::open(&root, driver, Access::Write).unwrap()
    };
    for layer in layers.values() {
        let db = db();
        let mut record = db.record(layer).unwrap().unwrap();
        record.attached.clear();
        db.write_record(&record).unwrap();
    }
    let entry = |layer: &str, kind: &str, parent: Option<&str>, labels: &str| {
        let parent = parent
            .map(|p| format!(",\"parent\":\"{p}\""))
            .unwrap_or_default();
        format!(
            "{{\"layer\":\"{layer}\",\"kind\":\"{kind}\"{parent},\"labels\":{{{labels}}},\
             \"created\":{{\"secs_since_epoch\":1,\"nanos_since_epoch\":0}},\
             \"updated\":{{\"secs_since_epoch\":2,\"nanos_since_epoch\":0}}}}"
        )
    };
    let text = format!(
        "{{\"snapshots\":{{\"base\":{},\"top\":{},\"ghost\":{}}}}}\n",
        entry(&layers["base"], "committed", None, "\"a\":\"1\""),
        entry(&layers["top"], "active", Some("base"), ""),
        entry(&"e".repeat(64), "active", None, ""),
    );
    let file = root.join("plies/vfs/containerd/snapshots.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, text).unwrap();

    let s = Snapshotter::open(&root, DriverChoice::Vfs, &Options::default()).unwrap();
    assert!(!file.exists(), "snapshots.json stays after the move");
    assert_eq!(s.layers().unwrap(), layers);
    let base = s.stat("base").unwrap();
    assert_eq!(base.kind, Kind::Committed as i32);
    assert_eq!(base.labels.get("a").map(String::as_str), Some("1"));
    let top = s.stat("top").unwrap();
    assert_eq!(
        (top.kind, top.parent.as_str()),
        (Kind::Active as i32, "base")
    );
    assert_eq!(top.created_at.unwrap().seconds, 1);
    assert_eq!(s.stat("ghost").unwrap_err().status().code(), Code::NotFound);
    s.remove("top").unwrap();
    s.remove("base").unwrap();
    assert!(s.layers().unwrap().is_empty());
}

/// A `plies` command holding the database's lock does not stop reads; a change
/// waits for it and then goes through.
#[test]
fn reads_go_on_beside_a_cli_writer_and_changes_wait_for_it() {
    use plies_layerdb::{Access, LayerDb};
    use plies_snapshotter::{Options, Snapshotter};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let s = std::sync::Arc::new(
        Snapshotter::open(&root, DriverChoice::Vfs, &Options::default()).unwrap(),
    );
    s.prepare("a", "", HashMap::new()).unwrap();
    let driver = plies_drivers::open(&root, DriverChoice::Vfs, &Options::default()).unwrap();
    let held = LayerDb::open(&root, driver, Access::Write).unwrap();
    assert_eq!(s.stat("a").unwrap().name, "a");
    assert_eq!(s.mounts("a").unwrap().len(), 1);
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || s.commit("b", "a", HashMap::new(), ""))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !writer.is_finished(),
        "the commit did not wait for the lock"
    );
    drop(held);
    writer.join().unwrap().unwrap();
    assert_eq!(s.stat("b").unwrap().kind, Kind::Committed as i32);
}

/// Kinds, parents, labels and times are on disk: a new server on the root sees
/// what the last one made.
#[test]
fn snapshots_survive_a_restart() {
    use plies_snapshotter::{Options, Snapshotter};

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let before = {
        let s = Snapshotter::open(&root, DriverChoice::Vfs, &Options::default()).unwrap();
        s.prepare("a", "", labels(&[("x", "1")])).unwrap();
        s.commit("base", "a", labels(&[("y", "2")]), "").unwrap();
        s.view("v", "base", labels(&[("z", "3")])).unwrap();
        s.prepare("ctr/1", "base", HashMap::new()).unwrap();
        s.list(&[]).unwrap()
    };
    let s = Snapshotter::open(&root, DriverChoice::Vfs, &Options::default()).unwrap();
    let after = s.list(&[]).unwrap();
    assert_eq!(after, before);
    assert_eq!(names(&after), ["base", "ctr/1", "v"]);
    assert_eq!(after[0].labels, labels(&[("y", "2")]));
    assert_eq!(after[1].parent, "base");
    assert_eq!(after[2].kind, Kind::View as i32);
}

/// A second server does not take a socket another one answers on.
#[test]
fn a_live_socket_is_not_taken_over() {
    use plies_snapshotter::{Options, Server, Snapshotter};

    let h = Harness::start(DriverChoice::Vfs);
    let root = h.dir.path().join("root2");
    let s = Snapshotter::open(&root, DriverChoice::Vfs, &Options::default()).unwrap();
    let err = Server::bind(&h.socket, s).unwrap_err();
    assert!(err.to_string().contains("bind"), "{err}");
    h.block_on(async {
        let mut c = h.client().await;
        c.cleanup(plies_snapshotter::proto::CleanupRequest::default())
            .await
            .unwrap();
    });
}

/// containerd's parallel unpack: each layer applied on no parent (through an
/// overlay on an empty lower, so its whiteouts and opaque dirs are stored as
/// overlayfs stores them), then committed onto the layer below (`parent` in
/// Commit). A container on the top sees the stack as a sequential unpack
/// would have made it.
#[test]
fn overlay2_rebases_a_layer_applied_on_no_parent() {
    if !plies_testkit::require_overlay("overlay2_rebases_a_layer_applied_on_no_parent") {
        return;
    }
    let h = Harness::start(DriverChoice::Overlay2);
    h.block_on(async {
        let mut c = h.client().await;
        let active = |key: &str, parent: &str| prepare(key, parent);
        let m = one(
            c.prepare(active("extract-base", ""))
                .await
                .unwrap()
                .into_inner()
                .mounts,
            "overlay",
            false,
        );
        let base = written_dir(&m);
        std::fs::create_dir_all(base.join("d")).unwrap();
        std::fs::write(base.join("d/old"), "old").unwrap();
        std::fs::write(base.join("gone"), "x").unwrap();
        std::fs::write(base.join("kept"), "kept").unwrap();
        c.commit(commit("base", "extract-base")).await.unwrap();

        // The upper layer, applied without its parent: a whiteout for `gone`,
        // `d` opaque with a new file, a file added.
        let m = one(
            c.prepare(active("extract-top", ""))
                .await
                .unwrap()
                .into_inner()
                .mounts,
            "overlay",
            false,
        );
        let top = written_dir(&m);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0),
            0,
        )
        .unwrap();
        std::fs::create_dir(top.join("d")).unwrap();
        xattr_set(&top.join("d"), "trusted.overlay.opaque", b"y");
        std::fs::write(top.join("d/new"), "new").unwrap();
        std::fs::write(top.join("added"), "added").unwrap();
        let mut req = commit("top", "extract-top");
        req.parent = "base".to_owned();
        c.commit(req).await.unwrap();

        let info = c.stat(req!(StatSnapshotRequest, "top")).await.unwrap();
        let info = info.into_inner().info.unwrap();
        assert_eq!(
            (info.kind, info.parent.as_str()),
            (Kind::Committed as i32, "base")
        );

        // A container on it sees the stack.
        let m = one(
            c.prepare(active("run", "top"))
                .await
                .unwrap()
                .into_inner()
                .mounts,
            "overlay",
            false,
        );
        assert_eq!(lowers(&m), 2, "{m:?}");
        let root = Mounted::new(&h, &m);
        let mut seen: Vec<String> = walkdir(root.path());
        seen.sort();
        assert_eq!(seen, ["added", "d", "d/new", "kept"]);
        drop(root);

        // The parent now has a child: it cannot go first.
        let refused = c.remove(req!(RemoveSnapshotRequest, "base")).await;
        assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
        // Only a snapshot without parent moves.
        c.prepare(active("extract-again", "base")).await.unwrap();
        let mut req = commit("again", "extract-again");
        req.parent = "top".to_owned();
        let refused = c.commit(req).await;
        assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
        for k in ["extract-again", "run", "top", "base"] {
            c.remove(req!(RemoveSnapshotRequest, k))
                .await
                .unwrap_or_else(|e| panic!("{k}: {e}"));
        }
    });
    assert!(h.layers().is_empty(), "{:?}", h.layers());
}

/// The paths under `dir`, relative, not following links.
fn walkdir(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("set {name} on {}: {e}", path.display()));
}
