//! containerd on plies: Debian's containerd 1.6 with `plies serve containerd` as
//! its proxy snapshotter, each with its own state under a temporary directory;
//! a `docker save` image built here imported and run with a static busybox that
//! lists, reads, writes and deletes; `ctr snapshots` against the plugin; the
//! image removed and containerd's GC emptying the store; `plies fsck` clean.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use plies_testkit::layer_tar::LayerTar;

use super::{Built, E, Node, chain_ids, docker_archive, expected_tree, image_layers};

/// What the test starts, stopped and removed when dropped, even after a failure.
struct Rig {
    dir: tempfile::TempDir,
    driver: &'static str,
    /// Global options of the server (`--storage-opt …`).
    plies_args: Vec<String>,
    plies: Option<Child>,
    containerd: Option<Child>,
}

impl Rig {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn plies(&self, args: &[&str]) -> Output {
        let root = self.path("plies");
        let mut all = vec!["--root", root.to_str().unwrap(), "--driver", self.driver];
        all.extend_from_slice(args);
        super::plies(&all)
    }

    /// Runs `ctr` against this containerd; returns the output.
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.path("containerd.sock"))
            .args(["--namespace", "plies-e2e"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ctr")
    }

    /// Runs `ctr` and expects success; returns stdout.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\n{}\ncontainerd log:\n{}\nplies log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log("containerd.log"),
            self.log("plies.log"),
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The lines of a log that hold any of `words`, the last 60.
    fn grep_log(&self, name: &str, words: &[&str]) -> String {
        let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| words.iter().any(|w| l.contains(w)))
            .collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn start_plies(&mut self) {
        let root = self.path("plies");
        let socket = self.path("plies.sock");
        let log = std::fs::File::create(self.path("plies.log")).unwrap();
        let child = Command::new(super::plies_bin())
            .args([
                "--root",
                root.to_str().unwrap(),
                "--driver",
                self.driver,
                "-v",
            ])
            .args(&self.plies_args)
            .args(["serve", "containerd", "--socket", socket.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting plies serve containerd");
        self.plies = Some(child);
        wait_for(&socket, "plies serve containerd's socket", || {
            self.log("plies.log")
        });
    }

    fn start_containerd(&mut self) {
        let t = self.dir.path().display().to_string();
        let config = format!(
            r#"version = 2
root = "{t}/containerd/root"
state = "{t}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{t}/containerd.sock"
[ttrpc]
  address = "{t}/containerd.sock.ttrpc"
[debug]
  address = "{t}/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/containerd/opt"

[proxy_plugins]
  [proxy_plugins.plies]
    type = "snapshot"
    address = "{t}/plies.sock"
    # As the README gives it: containerd 2.x reads it, 1.6 passes over it.
    capabilities = ["rebase"]
"#
        );
        std::fs::write(self.path("config.toml"), config).unwrap();
        let log = std::fs::File::create(self.path("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .args(["--log-level", "debug"])
            .arg("--config")
            .arg(self.path("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        self.containerd = Some(child);
        wait_for(&self.path("containerd.sock"), "containerd's socket", || {
            self.log("containerd.log")
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd does not answer:\n{}",
                self.log("containerd.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops a child with SIGTERM, SIGKILL after `patience`; returns whether it
    /// exited by itself with success.
    fn stop(child: &mut Child, patience: Duration) -> bool {
        let pid = rustix::process::Pid::from_child(child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Stops containerd, then the plies server, each expected to exit by
    /// itself within 20 s.
    fn stop_both(&mut self) {
        let mut containerd = self.containerd.take().unwrap();
        assert!(
            Rig::stop(&mut containerd, Duration::from_secs(20)),
            "containerd did not stop"
        );
        let mut plies = self.plies.take().unwrap();
        assert!(
            Rig::stop(&mut plies, Duration::from_secs(20)),
            "plies did not stop:\n{}",
            self.log("plies.log")
        );
    }

    /// The shims this containerd started (their command line names our socket).
    fn shims(&self) -> Vec<i32> {
        let ours = self.path("containerd.sock").display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("containerd-shim") && cmdline.contains(&ours) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            Rig::stop(&mut c, Duration::from_secs(10));
        }
        for pid in self.shims() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if let Some(mut p) = self.plies.take() {
            Rig::stop(&mut p, Duration::from_secs(10));
        }
        // runc's state for this test's namespace (runc leaves the empty directories).
        let _ = std::fs::remove_dir("/run/containerd/runc/plies-e2e");
        let _ = std::fs::remove_dir("/run/containerd/runc");
        let mut mounts = plies_testkit::mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn wait_for(path: &Path, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} never appeared:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Applets the container's script uses, linked to busybox in `/bin`.
const APPLETS: &[&str] = &[
    "sh", "find", "sort", "stat", "od", "tr", "readlink", "cat", "rm", "echo", "test", "[", "ls",
    "wc",
];

/// A layer with a static busybox, its applets as symlinks.
pub(super) fn busybox_layer(busybox: &[u8]) -> Vec<u8> {
    let mut t = LayerTar::ustar();
    t.mtime(1_700_000_000)
        .dir("bin/", 0o755)
        .file("bin/busybox", busybox, 0o755);
    for applet in APPLETS {
        t.symlink(format!("bin/{applet}"), "busybox");
    }
    t.finish()
}

/// The container's view of its tree, one line per path, as `Node`s print.
const LIST_SCRIPT: &str = r#"cd /
for p in $(find etc usr var app | sort); do
  if [ -L "$p" ]; then echo "L $p $(readlink "$p")"
  elif [ -d "$p" ]; then echo "D $p"
  else echo "F $p $(stat -c %a "$p") $(od -An -tx1 "$p" | tr -d ' \n')"; fi
done
if [ "$(stat -c %i usr/lib/libone.so)" = "$(stat -c %i usr/lib/libone.so.1)" ]; then echo "HARDLINKED"; fi
echo written > app/new
rm etc/passwd
test ! -e etc/passwd && echo "DELETED"
cat app/new
"#;

fn expected_lines(tree: &BTreeMap<String, Node>) -> Vec<String> {
    tree.iter()
        .map(|(p, n)| match n {
            Node::Dir => format!("D {p}"),
            Node::Link(t) => format!("L {p} {t}"),
            Node::File(mode, data) => {
                let hex: String = data.bytes().map(|b| format!("{b:02x}")).collect();
                format!("F {p} {mode:o} {hex}")
            }
        })
        .collect()
}

/// Root, the container tools and a static busybox, or `None` after printing
/// why this machine cannot run the test.
fn requirements(test: &str) -> Option<Vec<u8>> {
    if !plies_testkit::require_root(test) {
        return None;
    }
    for tool in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        if !plies_testkit::require(
            test,
            on_path(tool),
            &format!("{tool} is not installed (apt-get install containerd)"),
        ) {
            return None;
        }
    }
    match std::fs::read("/bin/busybox") {
        Ok(busybox) => Some(busybox),
        Err(_) => {
            plies_testkit::require(
                test,
                false,
                "/bin/busybox is missing (apt-get install busybox-static)",
            );
            None
        }
    }
}

/// Writes a `docker save` archive of `tars` (busybox's `PATH`) into the rig's
/// directory, imports it into the plies snapshotter, and returns the chain ids.
fn import(rig: &Rig, tars: Vec<Vec<u8>>) -> Vec<String> {
    let image = Built::with_busybox_path(tars);
    let diff_ids = image.diff_ids();
    let archive = rig.path("image.tar");
    docker_archive(&archive, &image);
    rig.ctr_ok(&[
        "image",
        "import",
        "--snapshotter",
        "plies",
        archive.to_str().unwrap(),
    ]);
    chain_ids(&diff_ids)
}

/// A rig with plies (given `plies_args` before `serve`) and containerd started.
fn started_rig(plies_args: &[&str]) -> Rig {
    let mut rig = Rig {
        dir: tempfile::tempdir().unwrap(),
        driver: super::test_driver(),
        plies_args: plies_args.iter().map(|a| a.to_string()).collect(),
        plies: None,
        containerd: None,
    };
    rig.start_plies();
    rig.start_containerd();
    rig
}

/// The rig with the test image imported: busybox, then the three layers of the
/// other tests (a replaced file, a whiteout, an opaque directory, a hard link,
/// a symlink); `None` when this machine cannot run it.
fn rig_with_image(test: &str) -> Option<(Rig, Vec<Vec<E>>, Vec<String>)> {
    let busybox = requirements(test)?;
    let rig = started_rig(&[]);
    let layers = image_layers();
    let mut tars = vec![busybox_layer(&busybox)];
    tars.extend(Built::new(&layers, &[super::Comp::Plain]).tars);
    let chains = import(&rig, tars);
    Some((rig, layers, chains))
}

#[test]
fn containerd_runs_a_container_on_plies_snapshots() {
    const TEST: &str = "containerd_runs_a_container_on_plies_snapshots";
    let Some((mut rig, layers, chains)) = rig_with_image(TEST) else {
        return;
    };
    let listed = rig.ctr_ok(&["snapshots", "--snapshotter", "plies", "ls"]);
    for chain in &chains {
        assert!(
            listed.contains(chain.as_str()),
            "{chain} not listed:\n{listed}"
        );
    }
    assert_eq!(
        listed.matches("Committed").count(),
        chains.len(),
        "{listed}"
    );

    // The container sees the image's merged tree, and writes and deletes in it.
    let run = rig.ctr_ok(&[
        "run",
        "--snapshotter",
        "plies",
        "docker.io/test/image:1",
        "c1",
        "/bin/sh",
        "-c",
        LIST_SCRIPT,
    ]);
    // containerd unpacks here, not plies: its applier gives a hard link's inode
    // the mode of the link's own tar entry (0644), where Docker keeps the
    // target's.
    let mut tree = expected_tree(&layers);
    for p in ["usr/lib/libone.so", "usr/lib/libone.so.1"] {
        if let Some(Node::File(mode, _)) = tree.get_mut(p) {
            *mode = 0o644;
        }
    }
    let want = expected_lines(&tree);
    check_listing(&run, &want, "the container's tree");

    // The container's active snapshot, as ctr shows it.
    let info = rig.ctr_ok(&["snapshots", "--snapshotter", "plies", "info", "c1"]);
    assert!(info.contains("\"Kind\": \"Active\""), "{info}");
    assert!(info.contains(chains.last().unwrap().as_str()), "{info}");
    let usage = rig.ctr_ok(&["snapshots", "--snapshotter", "plies", "usage", "c1"]);
    assert!(
        usage.lines().count() == 2 && usage.contains("c1"),
        "{usage}"
    );
    let top = chains.last().unwrap();
    rig.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "plies",
        "prepare",
        "extra",
        top,
    ]);
    rig.ctr_ok(&["snapshots", "--snapshotter", "plies", "rm", "extra"]);
    let refused = rig.ctr(&["snapshots", "--snapshotter", "plies", "rm", top]);
    assert!(!refused.status.success(), "a parent was removed");

    // Both restarted with their state kept: containerd and plies show the same
    // snapshots, and a second container runs on the image as the first did.
    let mut before = snapshot_rows(&rig);
    before.sort();
    rig.stop_both();
    rig.start_plies();
    rig.start_containerd();
    let mut after = snapshot_rows(&rig);
    after.sort();
    assert_eq!(after, before, "snapshots after the restart");
    let info = rig.ctr_ok(&["snapshots", "--snapshotter", "plies", "info", "c1"]);
    assert!(info.contains("\"Kind\": \"Active\""), "{info}");
    let run = rig.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "plies",
        "docker.io/test/image:1",
        "c2",
        "/bin/sh",
        "-c",
        LIST_SCRIPT,
    ]);
    check_listing(&run, &want, "the second container's tree");

    // Everything removed: containerd's GC removes the snapshots through plies.
    rig.ctr_ok(&["containers", "rm", "c1"]);
    rig.ctr_ok(&["images", "rm", "--sync", "docker.io/test/image:1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = rig.ctr_ok(&["snapshots", "--snapshotter", "plies", "ls"]);
        if left.lines().count() <= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots left after GC:\n{left}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ls = rig.plies(&["ls", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout).trim(),
        "[]",
        "layers left"
    );
    let fsck = rig.plies(&["fsck"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    rig.stop_both();
    assert!(!rig.path("plies.sock").exists(), "the socket stays");
}

/// Checks what [`LIST_SCRIPT`] printed: the tree `want`, then what the
/// script's writes and deletes gave.
fn check_listing(run: &str, want: &[String], what: &str) {
    let lines: Vec<&str> = run.lines().collect();
    let listing: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("D ") || l.starts_with("F ") || l.starts_with("L "))
        .map(|l| l.to_string())
        .collect();
    assert_eq!(listing, want, "{what}\n{run}");
    assert_eq!(
        lines[listing.len()..],
        ["HARDLINKED", "DELETED", "written"],
        "{run}"
    );
}

/// The snapshots `ctr snapshots ls` shows: (name, parent, kind) rows.
fn snapshot_rows(rig: &Rig) -> Vec<(String, String, String)> {
    let out = rig.ctr_ok(&["snapshots", "--snapshotter", "plies", "ls"]);
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [key, kind] => Some((key.to_string(), String::new(), kind.to_string())),
                [key, parent, kind] => {
                    Some((key.to_string(), parent.to_string(), kind.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn a_plugin_killed_during_prepare_and_commit_restarts_and_containerd_recovers() {
    const TEST: &str = "a_plugin_killed_during_prepare_and_commit_restarts_and_containerd_recovers";
    let Some((mut rig, _, chains)) = rig_with_image(TEST) else {
        return;
    };
    let top = chains.last().unwrap().clone();
    let address = rig.path("containerd.sock");
    for round in 0..8u64 {
        // Prepares and commits in a stream, the server SIGKILLed partway.
        let worker = {
            let (address, top) = (address.clone(), top.clone());
            std::thread::spawn(move || {
                for i in 0..40 {
                    let ctr = |args: &[&str]| {
                        Command::new("ctr")
                            .arg("--address")
                            .arg(&address)
                            .args(["--namespace", "plies-e2e", "--timeout", "10s"])
                            .args(["snapshots", "--snapshotter", "plies"])
                            .args(args)
                            .stdin(Stdio::null())
                            .output()
                            .map(|o| o.status.success())
                            .unwrap_or(false)
                    };
                    let key = format!("k-{round}-{i}");
                    if !ctr(&["prepare", &key, &top]) {
                        break;
                    }
                    if !ctr(&["commit", &format!("c-{round}-{i}"), &key]) {
                        // As containerd's unpacker does after a failed commit.
                        // plies may have committed before its answer was lost:
                        // containerd still has the active key, plies the
                        // committed snapshot, which GC then removes.
                        ctr(&["rm", &key]);
                        break;
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(40 + 45 * round));
        let mut plies = rig.plies.take().unwrap();
        plies.kill().unwrap();
        plies.wait().unwrap();
        worker.join().unwrap();
        rig.start_plies();
        // containerd reconnects to the restarted plugin.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rig
            .ctr(&["snapshots", "--snapshotter", "plies", "ls"])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "containerd does not reach plies again"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Whatever containerd lists, plies can show; then everything goes.
    let rows = snapshot_rows(&rig);
    assert!(rows.len() > chains.len(), "no snapshot was made: {rows:?}");
    let layers = rig.plies(&["ls", "--json"]);
    let layers: serde_json::Value = serde_json::from_slice(&layers.stdout).unwrap();
    eprintln!(
        "after 8 kills: containerd lists {} snapshots, plies holds {} layers",
        rows.len(),
        layers.as_array().map_or(0, Vec::len)
    );
    for (key, _, _) in &rows {
        rig.ctr_ok(&["snapshots", "--snapshotter", "plies", "info", key]);
    }
    for (key, _, kind) in rows.iter().filter(|r| !chains.contains(&r.0)) {
        assert!(kind == "Active" || kind == "Committed", "{key} {kind}");
        rig.ctr_ok(&["snapshots", "--snapshotter", "plies", "rm", key]);
    }
    rig.ctr_ok(&["images", "rm", "--sync", "docker.io/test/image:1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !snapshot_rows(&rig).is_empty() {
        assert!(
            Instant::now() < deadline,
            "snapshots left after GC: {:?}\nleases: {}\ncontainerd log:\n{}",
            snapshot_rows(&rig),
            rig.ctr_ok(&["leases", "ls"]),
            rig.grep_log(
                "containerd.log",
                &["level=error", "level=warn", "gc", "remove"]
            ),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // containerd's GC removed what it never knew of (a kill after plies made a
    // snapshot but before containerd heard so).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ls = rig.plies(&["ls", "--json"]);
        let ls = String::from_utf8_lossy(&ls.stdout).trim().to_owned();
        if ls == "[]" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "layers left: {ls}\n{}",
            rig.log("plies.log")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let fsck = rig.plies(&["fsck"]);
    assert!(
        fsck.status.success(),
        "{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// One layer adding `/d/<n>`.
fn numbered_layer(n: usize) -> Vec<u8> {
    LayerTar::ustar()
        .mtime(1_700_000_000)
        .dir("d/", 0o755)
        .file(format!("d/{n}"), format!("{n}\n"), 0o644)
        .finish()
}

/// An image as deep as the overlay2 store allows by default (128 layers): a
/// container on it has 128 lowers, whose mount data passes a page, and
/// containerd 1.6 mounts it from the lowers' common directory.
/// `PLIES_E2E_DEPTH=N` tries another depth (142 is the deepest that runs from a
/// temporary root; see the snapshotter's README).
#[test]
fn containerd_runs_an_image_of_128_layers() {
    const TEST: &str = "containerd_runs_an_image_of_128_layers";
    let Some(busybox) = requirements(TEST) else {
        return;
    };
    let depth: usize = std::env::var("PLIES_E2E_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(128);
    let max_depth = format!("overlay2.max_depth={}", depth.max(128));
    let rig = started_rig(&["--storage-opt", &max_depth]);
    let mut tars = vec![busybox_layer(&busybox)];
    tars.extend((1..depth).map(numbered_layer));
    let chains = import(&rig, tars);
    assert_eq!(chains.len(), depth);
    let script = "ls /d | wc -l; cat /d/1";
    let run = rig.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "plies",
        "docker.io/test/image:1",
        "deep",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert_eq!(run, format!("{}\n1\n", depth - 1), "{run}");
}

#[test]
fn serve_containerd_refuses_aufs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let socket = dir.path().join("plies.sock");
    let out = super::plies(&[
        "--root",
        root.to_str().unwrap(),
        "--driver",
        "aufs",
        "serve",
        "containerd",
        "--socket",
        socket.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("plies: ") && stderr.contains("driver aufs"),
        "{stderr}"
    );
    assert!(!socket.exists());
}
