//! Every endpoint by hand over the socket, with the vfs driver (runs anywhere)
//! and, as root, overlay2.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use plies_dockerplugin::{Config, DriverChoice, Error, Server};
use serde_json::json;

use crate::client::{Reply, call, post, post_chunked, request};
use crate::tars::{Entry, file, layer, names};

/// A server on its own thread, shut down and joined on drop.
pub struct Running {
    pub socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<plies_dockerplugin::Result<()>>>,
}

impl Running {
    pub fn start(config: Config) -> Running {
        let socket = config.socket.clone();
        let server = Server::bind(config).expect("bind");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            server.run(async move {
                let _ = rx.await;
            })
        });
        Running {
            socket,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Shuts the server down and returns what `run` returned.
    pub fn stop(mut self) -> plies_dockerplugin::Result<()> {
        self.stop_inner().expect("stopped once")
    }

    fn stop_inner(&mut self) -> Option<plies_dockerplugin::Result<()>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.thread.take().map(|t| t.join().expect("server thread"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

fn ok(r: &Reply) -> serde_json::Value {
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// The `Err` of a failed call.
fn err(r: &Reply) -> String {
    assert_eq!(r.status, 500, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let e = v["Err"].as_str().expect("Err").to_owned();
    assert!(!e.is_empty());
    e
}

fn init(socket: &Path, home: &Path) {
    let r = call(
        socket,
        "/GraphDriver.Init",
        json!({"Home": home, "Opts": null, "UIDMaps": null, "GIDMaps": null}),
    );
    assert_eq!(ok(&r), json!({}));
}

/// Splits `bytes` into chunks of `size` bytes.
fn chunks(bytes: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    bytes.chunks(size)
}

/// `path uid:gid` of every entry of a tar, in order.
fn owners(tar_bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar_bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            format!(
                "{} {}:{}",
                e.path().unwrap().to_string_lossy().trim_end_matches('/'),
                h.uid().unwrap(),
                h.gid().unwrap()
            )
        })
        .collect()
}

#[test]
fn userns_remap_with_vfs() {
    if !plies_testkit::require_root("userns_remap_with_vfs") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let server =
        Running::start(Config::new(tmp.path().join("p.sock")).with_driver(DriverChoice::Vfs));
    let s = server.socket.clone();
    let range = json!([{"container_id": 0, "host_id": 100000, "size": 65536}]);
    let r = call(
        &s,
        "/GraphDriver.Init",
        json!({"Home": home, "Opts": [], "UIDMaps": range, "GIDMaps": range}),
    );
    assert_eq!(ok(&r), json!({}));
    ok(&call(&s, "/GraphDriver.Create", json!({"ID": "base"})));
    let base = layer(&[Entry::Dir("etc"), Entry::File("etc/a", b"hello")]);
    ok(&post_chunked(
        &s,
        "/GraphDriver.ApplyDiff?id=base&parent=",
        chunks(&base, 300),
    ));
    let dir = PathBuf::from(
        ok(&call(&s, "/GraphDriver.Get", json!({"ID": "base"})))["Dir"]
            .as_str()
            .unwrap(),
    );
    for p in [dir.clone(), dir.join("etc"), dir.join("etc/a")] {
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (100_000, 100_000), "{p:?}");
    }
    ok(&call(&s, "/GraphDriver.Put", json!({"ID": "base"})));
    let r = call(&s, "/GraphDriver.Diff", json!({"ID": "base"}));
    assert_eq!(r.status, 200);
    assert_eq!(owners(&r.body), ["etc 0:0", "etc/a 0:0"]);
    server.stop().unwrap();
}

#[test]
fn every_endpoint_with_vfs() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let server =
        Running::start(Config::new(tmp.path().join("p.sock")).with_driver(DriverChoice::Vfs));
    let s = server.socket.clone();

    // Activation, and what runs before Init.
    let r = post(&s, "/Plugin.Activate", b"");
    assert_eq!(ok(&r), json!({"Implements": ["GraphDriver"]}));
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.docker.plugins.v1+json")
    );
    let e = err(&call(&s, "/GraphDriver.Create", json!({"ID": "a"})));
    assert!(e.contains("before GraphDriver.Init"), "{e}");
    assert_eq!(
        ok(&call(&s, "/GraphDriver.Exists", json!({"ID": "a"}))),
        json!({})
    );

    // Init: refused maps and options leave nothing open; then the real one.
    let e = err(&call(
        &s,
        "/GraphDriver.Init",
        json!({"Home": home, "Opts": [], "UIDMaps": [{"container_id": 0, "host_id": -1, "size": 65536}], "GIDMaps": null}),
    ));
    assert!(e.contains("UIDMaps") && e.contains("0:-1:65536"), "{e}");
    let e = err(&call(
        &s,
        "/GraphDriver.Init",
        json!({"Home": home, "UIDMaps": null, "GIDMaps": [{"container_id": 1, "host_id": 100001, "size": 10}]}),
    ));
    assert!(e.contains("container's root"), "{e}");
    let e = err(&call(
        &s,
        "/GraphDriver.Init",
        json!({"Home": home, "Opts": ["nope=1"]}),
    ));
    assert!(e.contains("nope"), "{e}");
    assert!(
        err(&call(&s, "/GraphDriver.Get", json!({"ID": "a"}))).contains("before GraphDriver.Init")
    );
    init(&s, &home);
    init(&s, &home); // dockerd restarted: the same driver goes on
    assert!(home.join("vfs").is_dir());

    assert_eq!(
        ok(&call(&s, "/GraphDriver.Capabilities", json!({}))),
        json!({"Capabilities": {"ReproducesExactDiffs": false}})
    );
    let status = ok(&post(&s, "/GraphDriver.Status", b"{}"));
    assert!(status.as_object().unwrap().keys().all(|k| k == "Status"));

    // A base layer, its tar sent in small chunks.
    let base = layer(&[
        Entry::Dir("etc"),
        Entry::File("etc/a", b"hello"),
        Entry::File("etc/b", b"bee"),
        Entry::Dir("keep"),
        Entry::File("keep/x", b"x"),
        Entry::Symlink("link", "etc/a"),
    ]);
    assert_eq!(
        ok(&call(
            &s,
            "/GraphDriver.Create",
            json!({"ID": "base", "Parent": "", "MountLabel": ""})
        )),
        json!({})
    );
    let r = post_chunked(
        &s,
        "/GraphDriver.ApplyDiff?id=base&parent=",
        chunks(&base, 700),
    );
    assert_eq!(ok(&r)["Size"], json!(9));
    let e = err(&call(&s, "/GraphDriver.Create", json!({"ID": "base"})));
    assert!(e.contains("already exists"), "{e}");

    // A refused tar (its first entry climbs out of the layer), 8 MiB long: the
    // whole upload is read, and the answer says why, as dockerd needs.
    ok(&call(&s, "/GraphDriver.Create", json!({"ID": "refused"})));
    let hostile = crate::tars::climbing_layer(8 << 20);
    let r = crate::client::post_chunked_whole(
        &s,
        "/GraphDriver.ApplyDiff?id=refused&parent=",
        chunks(&hostile, 64 << 10),
    );
    let e = err(&r);
    assert!(e.contains("../escape") && e.contains("climbs above"), "{e}");
    ok(&call(&s, "/GraphDriver.Remove", json!({"ID": "refused"})));

    // A layer deleting a file and making a directory opaque.
    let top = layer(&[
        Entry::Dir("etc"),
        Entry::File("etc/.wh.b", b""),
        Entry::File("etc/c", b"sea"),
        Entry::Dir("keep"),
        Entry::File("keep/.wh..wh..opq", b""),
        Entry::File("keep/y", b"why"),
    ]);
    ok(&call(
        &s,
        "/GraphDriver.Create",
        json!({"ID": "top", "Parent": "base"}),
    ));
    let r = post_chunked(
        &s,
        "/GraphDriver.ApplyDiff?id=top&parent=base",
        chunks(&top, 512),
    );
    assert_eq!(ok(&r)["Size"], json!(6));

    assert_eq!(
        ok(&call(&s, "/GraphDriver.Exists", json!({"ID": "top"}))),
        json!({"Exists": true})
    );
    assert_eq!(
        ok(&call(&s, "/GraphDriver.Exists", json!({"ID": "nope"}))),
        json!({})
    );

    // Get gives the merged tree; Put releases it, once.
    let dir = PathBuf::from(
        ok(&call(
            &s,
            "/GraphDriver.Get",
            json!({"ID": "top", "MountLabel": ""}),
        ))["Dir"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(std::fs::read(dir.join("etc/a")).unwrap(), b"hello");
    assert_eq!(std::fs::read(dir.join("etc/c")).unwrap(), b"sea");
    assert!(!dir.join("etc/b").exists());
    let mut kept: Vec<_> = std::fs::read_dir(dir.join("keep"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    kept.sort();
    assert_eq!(kept, ["y"]);
    assert_eq!(
        std::fs::read_link(dir.join("link")).unwrap(),
        Path::new("etc/a")
    );
    assert_eq!(
        ok(&call(&s, "/GraphDriver.Put", json!({"ID": "top"}))),
        json!({})
    );
    let e = err(&call(&s, "/GraphDriver.Put", json!({"ID": "top"})));
    assert!(e.contains("top"), "{e}");

    let meta = ok(&call(&s, "/GraphDriver.GetMetadata", json!({"ID": "top"})));
    assert!(
        meta.as_object().unwrap().keys().all(|k| k == "Metadata"),
        "{meta}"
    );
    assert!(
        err(&call(&s, "/GraphDriver.GetMetadata", json!({"ID": "nope"})))
            .contains("does not exist")
    );

    // Changes, DiffSize and the streamed Diff of top against base.
    let changes = ok(&call(
        &s,
        "/GraphDriver.Changes",
        json!({"ID": "top", "Parent": "base"}),
    ));
    assert_eq!(
        changes,
        json!({"Changes": [
            {"Path": "/etc", "Kind": 0},
            {"Path": "/etc/b", "Kind": 2},
            {"Path": "/etc/c", "Kind": 1},
            {"Path": "/keep", "Kind": 0},
            {"Path": "/keep/x", "Kind": 2},
            {"Path": "/keep/y", "Kind": 1},
        ]})
    );
    assert_eq!(
        ok(&call(
            &s,
            "/GraphDriver.DiffSize",
            json!({"ID": "top", "Parent": "base"})
        )),
        json!({"Size": 6})
    );
    let r = call(
        &s,
        "/GraphDriver.Diff",
        json!({"ID": "top", "Parent": "base"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let mut got = names(&r.body);
    got.sort();
    assert_eq!(
        got,
        ["etc", "etc/.wh.b", "etc/c", "keep", "keep/.wh.x", "keep/y"]
    );
    assert_eq!(file(&r.body, "etc/c").unwrap(), b"sea");
    assert!(err(&call(&s, "/GraphDriver.Diff", json!({"ID": "nope"}))).contains("does not exist"));

    // A container layer: storage options vfs cannot take are refused.
    let e = err(&call(
        &s,
        "/GraphDriver.CreateReadWrite",
        json!({"ID": "rw", "Parent": "top", "StorageOpt": {"size": "1G"}}),
    ));
    assert!(e.contains("size"), "{e}");
    ok(&call(
        &s,
        "/GraphDriver.CreateReadWrite",
        json!({"ID": "rw", "Parent": "top", "StorageOpt": null}),
    ));
    let dir = PathBuf::from(
        ok(&call(&s, "/GraphDriver.Get", json!({"ID": "rw"})))["Dir"]
            .as_str()
            .unwrap(),
    );
    std::fs::write(dir.join("etc/a"), b"changed").unwrap();
    std::fs::remove_file(dir.join("link")).unwrap();
    ok(&call(&s, "/GraphDriver.Put", json!({"ID": "rw"})));
    assert_eq!(
        ok(&call(
            &s,
            "/GraphDriver.Changes",
            json!({"ID": "rw", "Parent": "top"})
        )),
        json!({"Changes": [
            {"Path": "/etc", "Kind": 0},
            {"Path": "/etc/a", "Kind": 0},
            {"Path": "/link", "Kind": 2},
        ]})
    );

    // A bad tar fails with the driver's message and creates nothing.
    ok(&call(
        &s,
        "/GraphDriver.Create",
        json!({"ID": "bad", "Parent": "base"}),
    ));
    let mut garbage = layer(&[Entry::File("ok", b"fine")]);
    garbage.truncate(700);
    garbage.extend_from_slice(&[0xff; 1024]);
    let e = err(&post_chunked(
        &s,
        "/GraphDriver.ApplyDiff?id=bad&parent=base",
        chunks(&garbage, 100),
    ));
    assert!(e.contains("bad"), "{e}");

    // Remove, protocol errors, Cleanup.
    for id in ["rw", "bad", "top"] {
        assert_eq!(
            ok(&call(&s, "/GraphDriver.Remove", json!({"ID": id}))),
            json!({})
        );
    }
    assert_eq!(
        ok(&call(&s, "/GraphDriver.Exists", json!({"ID": "top"}))),
        json!({})
    );
    assert!(err(&call(&s, "/GraphDriver.Remove", json!({"ID": "top"}))).contains("does not exist"));
    let e = err(&post(&s, "/GraphDriver.Create", b"{not json"));
    assert!(e.contains("bad request"), "{e}");
    let r = post(&s, "/GraphDriver.Nope", b"{}");
    assert_eq!(r.status, 404);
    assert!(
        r.json()["Err"]
            .as_str()
            .unwrap()
            .contains("GraphDriver.Nope")
    );
    assert_eq!(request(&s, "GET", "/Plugin.Activate", None).status, 405);
    assert_eq!(ok(&call(&s, "/GraphDriver.Cleanup", json!({}))), json!({}));

    let socket = server.socket.clone();
    server.stop().unwrap();
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

/// A layer of many MiB streams in and out chunk by chunk, byte for byte.
#[test]
fn large_layer_streams_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let server =
        Running::start(Config::new(tmp.path().join("p.sock")).with_driver(DriverChoice::Vfs));
    let s = server.socket.clone();
    init(&s, &tmp.path().join("home"));
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let tar = layer(&[
        Entry::Dir("data"),
        Entry::File("data/big", &big),
        Entry::File("data/small", b"s"),
    ]);
    ok(&call(&s, "/GraphDriver.Create", json!({"ID": "big"})));
    let r = post_chunked(&s, "/GraphDriver.ApplyDiff?id=big", chunks(&tar, 100_000));
    assert_eq!(ok(&r)["Size"], json!(big.len() + 1));
    let r = call(&s, "/GraphDriver.Diff", json!({"ID": "big"}));
    assert_eq!(r.status, 200);
    assert!(
        file(&r.body, "data/big").unwrap() == big,
        "the big file comes back byte for byte"
    );
    assert_eq!(file(&r.body, "data/small").unwrap(), b"s");
    server.stop().unwrap();
}

#[test]
fn socket_in_use_and_stale_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sub/dir/p.sock");
    let first = Running::start(Config::new(&path).with_driver(DriverChoice::Vfs));
    assert!(matches!(
        Server::bind(Config::new(&path)),
        Err(Error::SocketInUse { path: p }) if p == path
    ));
    first.stop().unwrap();

    // A socket file nobody listens on is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let second = Running::start(Config::new(&path).with_driver(DriverChoice::Vfs));
    assert_eq!(
        ok(&post(&second.socket, "/Plugin.Activate", b"")),
        json!({"Implements": ["GraphDriver"]})
    );
    second.stop().unwrap();

    let not_dir = tmp.path().join("file");
    std::fs::write(&not_dir, b"").unwrap();
    assert!(matches!(
        Server::bind(Config::new(not_dir.join("p.sock"))),
        Err(Error::Socket { .. })
    ));
}

/// Shutting down puts the layers dockerd left mounted: no mount stays behind.
#[test]
fn shutdown_unmounts_overlay2_layers() {
    if !plies_testkit::require_overlay("shutdown_unmounts_overlay2_layers") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let _unmount = crate::docker::UnmountOnDrop(tmp.path().to_path_buf());
    let server =
        Running::start(Config::new(tmp.path().join("p.sock")).with_driver(DriverChoice::Overlay2));
    let s = server.socket.clone();
    init(&s, &home);
    ok(&call(&s, "/GraphDriver.Create", json!({"ID": "base"})));
    let r = post_chunked(
        &s,
        "/GraphDriver.ApplyDiff?id=base",
        chunks(&layer(&[Entry::File("f", b"base")]), 300),
    );
    ok(&r);
    ok(&call(
        &s,
        "/GraphDriver.CreateReadWrite",
        json!({"ID": "c1", "Parent": "base"}),
    ));
    ok(&call(
        &s,
        "/GraphDriver.CreateReadWrite",
        json!({"ID": "c2", "Parent": "base"}),
    ));
    for id in ["c1", "c2", "c2"] {
        let dir = PathBuf::from(
            ok(&call(&s, "/GraphDriver.Get", json!({"ID": id})))["Dir"]
                .as_str()
                .unwrap(),
        );
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"base");
    }
    let status = ok(&call(&s, "/GraphDriver.Status", json!({})));
    assert!(
        status["Status"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row[0] == "Backing Filesystem"),
        "{status}"
    );
    assert_eq!(plies_testkit::mounts_under(&home).len(), 2);
    server.stop().unwrap();
    assert_eq!(plies_testkit::mounts_under(&home), Vec::<PathBuf>::new());
}

/// ApplyDiff writes files while the body is still arriving: the first file of
/// the tar is on disk before the client has sent the rest.
#[test]
fn apply_diff_applies_while_the_body_arrives() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let server =
        Running::start(Config::new(tmp.path().join("p.sock")).with_driver(DriverChoice::Vfs));
    let s = server.socket.clone();
    init(&s, &home);
    ok(&call(&s, "/GraphDriver.Create", json!({"ID": "slow"})));
    let tar = layer(&[
        Entry::File("first", b"one"),
        Entry::File("second", &[7u8; 4096]),
    ]);
    // The first entry (header and one data block) and part of the second header.
    let (head, rest) = tar.split_at(1024 + 100);

    let mut c = std::os::unix::net::UnixStream::connect(&s).unwrap();
    write!(c, "POST /GraphDriver.ApplyDiff?id=slow&parent= HTTP/1.1\r\nHost: plugin\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    write!(c, "{:x}\r\n", head.len()).unwrap();
    c.write_all(head).unwrap();
    c.write_all(b"\r\n").unwrap();
    c.flush().unwrap();
    let first = home.join("vfs/dir/slow/first");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read(&first).ok().as_deref() != Some(b"one") {
        assert!(
            std::time::Instant::now() < deadline,
            "{first:?} never appeared while the body was open"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!home.join("vfs/dir/slow/second").exists());
    write!(c, "{:x}\r\n", rest.len()).unwrap();
    c.write_all(rest).unwrap();
    c.write_all(b"\r\n0\r\n\r\n").unwrap();
    assert_eq!(ok(&crate::client::read_reply(c))["Size"], json!(3 + 4096));
    assert_eq!(
        std::fs::read(home.join("vfs/dir/slow/second")).unwrap(),
        [7u8; 4096]
    );
    server.stop().unwrap();
}

/// SIGTERM stops `run_until_signal`: the mounted layers are put and the socket
/// removed.
#[test]
fn sigterm_puts_layers_and_removes_the_socket() {
    if !plies_testkit::require_overlay("sigterm_puts_layers_and_removes_the_socket") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let _unmount = crate::docker::UnmountOnDrop(tmp.path().to_path_buf());
    let socket = tmp.path().join("p.sock");
    let server = Server::bind(Config::new(&socket).with_driver(DriverChoice::Overlay2)).unwrap();
    let thread = std::thread::spawn(move || server.run_until_signal());
    // An answer means the signal handlers are in place: they are installed
    // before the server accepts.
    assert_eq!(
        ok(&post(&socket, "/Plugin.Activate", b"")),
        json!({"Implements": ["GraphDriver"]})
    );
    init(&socket, &home);
    ok(&call(&socket, "/GraphDriver.Create", json!({"ID": "base"})));
    ok(&post_chunked(
        &socket,
        "/GraphDriver.ApplyDiff?id=base",
        [&layer(&[Entry::File("f", b"x")])[..]],
    ));
    ok(&call(
        &socket,
        "/GraphDriver.CreateReadWrite",
        json!({"ID": "rw", "Parent": "base"}),
    ));
    ok(&call(&socket, "/GraphDriver.Get", json!({"ID": "rw"})));
    assert_eq!(plies_testkit::mounts_under(&home).len(), 1);

    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM)
        .unwrap();
    thread.join().unwrap().unwrap();
    assert_eq!(plies_testkit::mounts_under(&home), Vec::<PathBuf>::new());
    assert!(!socket.exists());
}
