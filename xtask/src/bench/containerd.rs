//! containerd with plies as its proxy snapshotter against containerd's own
//! overlayfs snapshotter, in one containerd, in one run
//! (`cargo xtask bench --containerd-only`).
//!
//! One private containerd (config, root and state under
//! `target/bench/containerd-<pid>/`, cri disabled) with the proxy plugin `plies`
//! served by `plies --driver overlay2 serve containerd` from the release binary,
//! its root under the same directory. Both are stopped by pid and everything under
//! the directory unmounted and removed at the end, after a failure too; what a
//! killed run left (processes naming its directory, mounts, files) is removed by
//! the next one.
//!
//! - `ctr image import --snapshotter <plies|overlayfs>` (which unpacks the image
//!   into that snapshotter) of `docker save` archives: the generated tree as one
//!   layer, the Debian minbase tree when there is one, and 120 small layers. Each
//!   round imports once into each, in turns that alternate which goes first; before
//!   each import the page cache is dropped and the archive read back in; after it,
//!   outside the timing, the image is removed (`ctr image rm --sync`) and both
//!   snapshotters are waited for until containerd's GC has emptied them.
//! - Prepare+Mounts+Remove of an active snapshot on the image's committed top
//!   (1 layer and 120 layers deep), through containerd's snapshots gRPC service as
//!   an engine calls it (in a lease), with a gRPC client over containerd's socket,
//!   for both snapshotters in alternating turns; and, for context, the same calls
//!   straight to `plies serve containerd`'s socket, without containerd in between.
//!   Medians with the 10th and 90th percentiles of `--calls-iterations` runs.
//!
//! containerd's `Remove` only drops containerd's record: the snapshotter's own
//! removal runs later in containerd's GC, for both snapshotters alike.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};

use super::calls::{Stats, remove_mounted_tree};
use super::docker::terminate;
use super::{Rng, docker_save, load_average, read_input, sync_and_drop_caches, timed};
use crate::Result;

/// The containerd namespace the bench works in.
const NAMESPACE: &str = "plies-bench";

/// The containerd lease the Prepare+Mounts+Remove calls through containerd are made in.
const LEASE: &str = "plies-bench";

/// The snapshotters compared, in the order of the table's columns.
const SNAPSHOTTERS: [&str; 2] = ["overlayfs", "plies"];

/// Layers of the many-layer image.
const MANY: usize = 120;

/// The goal of the issue: plies at most this share of overlayfs' time.
const GOAL: f64 = 0.8;

/// Runs the section: imports of `images` (name, `docker save` archive; the first
/// is the generated one-layer image) and of a 120-layer image made here, then the
/// Prepare+Mounts+Remove latencies; prints the table.
pub(super) fn containerd(
    runs: usize,
    iterations: usize,
    bench: &Path,
    images: &[(String, PathBuf)],
    plies_bin: &Path,
) -> Result {
    for tool in ["containerd", "ctr"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is not installed (Debian: containerd)"));
        }
    }
    sweep_dead_runs(bench);
    let many = many_layers_archive(bench)?;
    let mut images = images.to_vec();
    images.push((format!("{MANY}-layer"), many.clone()));

    let rig = Rig::start(bench, plies_bin)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let (mut via, mut direct) = rt.block_on(async {
        let via = Client::connect(&rig.path("containerd.sock")).await?;
        let direct = Client::connect(&rig.path("plies.sock")).await?;
        Ok::<_, String>((via, direct))
    })?;
    let mut ctx = Ctx {
        rig: &rig,
        rt: &rt,
        direct: &mut direct,
    };
    let load_before = load_average();

    let mut imports = Vec::new();
    for (name, archive) in &images {
        eprintln!("bench: ctr image import of the {name} image ({runs} rounds)");
        imports.push((name.clone(), ctx.import_rounds(runs, archive)?));
    }

    let mut latencies = Vec::new();
    for (depth, archive) in [(1, &images[0].1), (MANY, &many)] {
        eprintln!(
            "bench: Prepare+Mounts+Remove on a {depth}-layer parent ({iterations} runs each)"
        );
        latencies.push(ctx.latency(&mut via, depth, archive, iterations)?);
    }
    let load_after = load_average();
    drop(via);
    drop(direct);
    drop(rt);
    drop(rig);

    print!("{}", table(&imports, &latencies, runs, iterations));
    println!("load average before: {load_before}; after: {load_after}");
    Ok(())
}

/// Import medians: [overlayfs, plies].
type ImportRow = (String, [Duration; 2]);

/// Prepare+Mounts+Remove on one parent.
struct LatencyRow {
    depth: usize,
    /// Through containerd: [overlayfs, plies].
    via: [Stats; 2],
    /// Straight to plies' socket.
    direct: Stats,
}

fn table(
    imports: &[ImportRow],
    latencies: &[LatencyRow],
    runs: usize,
    iterations: usize,
) -> String {
    let mut out = String::new();
    let mut goals = Vec::new();
    let _ = writeln!(
        out,
        "\n{:<28} {:>12} {:>12} {:>8}",
        format!("ctr image import (median of {runs})"),
        "overlayfs",
        "plies",
        "ratio"
    );
    for (name, [overlayfs, plies]) in imports {
        let ratio = plies.as_secs_f64() / overlayfs.as_secs_f64();
        let _ = writeln!(
            out,
            "{:<28} {:>10.3} s {:>10.3} s {:>7.2}x",
            format!("{name} image"),
            overlayfs.as_secs_f64(),
            plies.as_secs_f64(),
            ratio
        );
        goals.push(goal(
            &format!("ctr image import of the {name} image <= {GOAL}x overlayfs"),
            &format!("{ratio:.2}x"),
            ratio <= GOAL,
        ));
    }
    let _ = writeln!(
        out,
        "\nPrepare+Mounts+Remove through containerd's snapshots service: median [p10-p90] \
         of {iterations} runs, in ms; ratio of medians"
    );
    let _ = writeln!(
        out,
        "{:<10} {:<24} {:<24} {:>7}   {:<24}",
        "parent", "overlayfs", "plies", "ratio", "plies, no containerd hop"
    );
    for row in latencies {
        let ratio = row.via[1].p50 / row.via[0].p50;
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:<24} {:>6.2}x   {}",
            layers(row.depth),
            row.via[0].show(),
            row.via[1].show(),
            ratio,
            row.direct.show()
        );
        goals.push(goal(
            &format!(
                "prepare+mounts+remove on {} <= {GOAL}x overlayfs",
                layers(row.depth)
            ),
            &format!("{ratio:.2}x"),
            ratio <= GOAL,
        ));
    }
    let _ = writeln!(
        out,
        "\nnote: ctr image import unpacks with containerd's own differ into the mounts the \
         snapshotter returns, so the import time is containerd's work for both; plies-side \
         unpacking is not in this path.\n\
         note: through containerd, Remove drops containerd's record and the snapshotter's own \
         removal runs later in containerd's GC (for both); the no-hop column calls plies' \
         Remove, which removes the layer."
    );
    let _ = writeln!(out, "\ngoals:");
    for g in goals {
        let _ = writeln!(out, "  {g}");
    }
    out
}

/// `1 layer`, `120 layers`.
fn layers(n: usize) -> String {
    format!("{n} layer{}", if n == 1 { "" } else { "s" })
}

/// One line of the goals.
fn goal(what: &str, got: &str, met: bool) -> String {
    format!(
        "{what:<62} {got:>7}  {}",
        if met { "met" } else { "NOT met" }
    )
}

/// What the measurements share.
struct Ctx<'a> {
    rig: &'a Rig,
    rt: &'a tokio::runtime::Runtime,
    /// A client of `plies serve containerd`'s own socket.
    direct: &'a mut Client,
}

impl Ctx<'_> {
    /// Median import times of `archive`: [overlayfs, plies].
    fn import_rounds(&mut self, runs: usize, archive: &Path) -> Result<[Duration; 2]> {
        let mut times = [Vec::new(), Vec::new()];
        for round in 0..runs.max(1) {
            for k in 0..2 {
                let which = (round + k) % 2;
                let snapshotter = SNAPSHOTTERS[which];
                sync_and_drop_caches();
                read_input(archive)?;
                let took = timed(
                    self.rig
                        .ctr()
                        .args(["image", "import", "--snapshotter", snapshotter])
                        .arg(archive),
                )?;
                eprintln!(
                    "bench: ctr image import into {snapshotter}: {:.3} s",
                    took.as_secs_f64()
                );
                times[which].push(took);
                self.remove_images()?;
            }
        }
        Ok(times.map(|mut t| {
            t.sort();
            t[t.len() / 2]
        }))
    }

    /// Removes every image and waits until containerd's GC has emptied both
    /// snapshotters.
    fn remove_images(&mut self) -> Result {
        let names = self.rig.ctr_ok(&["image", "ls", "-q"])?;
        let names: Vec<&str> = names.split_whitespace().collect();
        if !names.is_empty() {
            let mut args = vec!["image", "rm", "--sync"];
            args.extend(names);
            self.rig.ctr_ok(&args)?;
        }
        self.settle([0, 0])
    }

    /// Waits until the snapshotters' own stores hold `want` snapshots
    /// ([overlayfs, plies]), running containerd's GC every few seconds.
    fn settle(&mut self, want: [usize; 2]) -> Result {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut next_gc = Instant::now();
        loop {
            let have = [
                self.rig.overlayfs_snapshots()?,
                self.rt.block_on(self.direct.list(""))?.len(),
            ];
            if have == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd's GC left {} overlayfs and {} plies snapshots (want {} and {})",
                    have[0], have[1], want[0], want[1]
                ));
            }
            if Instant::now() >= next_gc {
                self.rig.gc()?;
                next_gc = Instant::now() + Duration::from_secs(3);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Imports `archive` into both snapshotters (its top `depth` layers deep), then
    /// times Prepare+Mounts+Remove on the top: straight to plies, then through
    /// containerd for both in turns. Removes the image at the end.
    fn latency(
        &mut self,
        via: &mut Client,
        depth: usize,
        archive: &Path,
        iterations: usize,
    ) -> Result<LatencyRow> {
        let archive = archive.display().to_string();
        for snapshotter in SNAPSHOTTERS {
            self.rig
                .ctr_ok(&["image", "import", "--snapshotter", snapshotter, &archive])?;
        }
        self.settle([depth, depth])?;
        let rt = self.rt;
        let parents: Vec<String> = SNAPSHOTTERS
            .iter()
            .map(|s| {
                rt.block_on(via.list(s))
                    .and_then(|infos| top(&infos, depth))
            })
            .collect::<Result<_>>()?;
        let direct_parent = top(&rt.block_on(self.direct.list(""))?, depth)?;
        let warm = iterations.div_ceil(20);

        // Straight to plies first, while containerd is idle: its GC removes what
        // it finds in a snapshotter and does not know, and runs only after
        // containerd's own changes.
        let mut direct = Vec::with_capacity(iterations);
        for i in 0..warm + iterations {
            let key = format!("bench-direct-{depth}-{i}");
            let took = rt.block_on(self.direct.prepare_mounts_remove("", &key, &direct_parent))?;
            if i >= warm {
                direct.push(took);
            }
        }

        // In a lease, as an engine makes them: containerd's GC removes active
        // snapshots nothing refers to.
        self.rig
            .ctr_ok(&["leases", "create", "--expires", "0", "--id", LEASE])?;
        via.set_lease(Some(LEASE))?;
        let mut times = [
            Vec::with_capacity(iterations),
            Vec::with_capacity(iterations),
        ];
        for i in 0..warm + iterations {
            for k in 0..2 {
                let which = (i + k) % 2;
                let key = format!("bench-{depth}-{i}");
                let took = rt.block_on(via.prepare_mounts_remove(
                    SNAPSHOTTERS[which],
                    &key,
                    &parents[which],
                ))?;
                if i >= warm {
                    times[which].push(took);
                }
            }
        }
        via.set_lease(None)?;
        self.rig.ctr_ok(&["leases", "rm", "--sync", LEASE])?;
        self.remove_images()?;
        let [mut o, mut p] = times;
        Ok(LatencyRow {
            depth,
            via: [Stats::of(&mut o), Stats::of(&mut p)],
            direct: Stats::of(&mut direct),
        })
    }
}

/// The committed snapshot of `infos` that no other sits on; checks that its
/// chain is `depth` long.
fn top(infos: &[Info], depth: usize) -> Result<String> {
    let committed: HashMap<&str, &str> = infos
        .iter()
        .filter(|i| i.kind == KIND_COMMITTED)
        .map(|i| (i.name.as_str(), i.parent.as_str()))
        .collect();
    let parents: HashSet<&str> = committed.values().copied().collect();
    let tops: Vec<&str> = committed
        .keys()
        .copied()
        .filter(|n| !parents.contains(n))
        .collect();
    let [top] = tops[..] else {
        return Err(format!(
            "{} committed snapshots without children, want one",
            tops.len()
        ));
    };
    let mut chain = 0;
    let mut at = top;
    while let Some(parent) = committed.get(at) {
        chain += 1;
        at = parent;
    }
    if chain != depth {
        return Err(format!("the top {top} is {chain} layers deep, not {depth}"));
    }
    Ok(top.to_string())
}

/// The private containerd and the plies server behind it, under
/// `target/bench/containerd-<pid>/`: stopped by pid, unmounted and removed on drop.
struct Rig {
    dir: PathBuf,
    plies: Option<Child>,
    containerd: Option<Child>,
}

impl Rig {
    fn start(bench: &Path, plies_bin: &Path) -> Result<Rig> {
        let mut rig = Rig {
            dir: bench.join(format!("containerd-{}", std::process::id())),
            plies: None,
            containerd: None,
        };
        let dir = rig.dir.clone();
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        std::fs::create_dir_all(&dir).map_err(io)?;

        let log = std::fs::File::create(rig.path("plies.log")).map_err(io)?;
        rig.plies = Some(
            Command::new(plies_bin)
                .arg("--root")
                .arg(rig.path("plies"))
                .args(["--driver", "overlay2", "serve", "containerd", "--socket"])
                .arg(rig.path("plies.sock"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(io)?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", plies_bin.display()))?,
        );
        rig.wait_for("plies.sock", "plies.log")?;

        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[proxy_plugins]
  [proxy_plugins.plies]
    type = "snapshot"
    address = "{d}/plies.sock"
"#
        );
        std::fs::write(rig.path("config.toml"), config).map_err(io)?;
        let log = std::fs::File::create(rig.path("containerd.log")).map_err(io)?;
        rig.containerd = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(rig.path("config.toml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(io)?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting containerd: {e}"))?,
        );
        rig.wait_for("containerd.sock", "containerd.log")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while rig.ctr_ok(&["version"]).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd does not answer: {}",
                    rig.log_tail("containerd.log")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(rig)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn wait_for(&mut self, socket: &str, log: &str) -> Result {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.path(socket).exists() {
            let exited = [&mut self.plies, &mut self.containerd]
                .into_iter()
                .flatten()
                .any(|c| !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() > deadline {
                return Err(format!(
                    "{} never appeared: {}",
                    self.path(socket).display(),
                    self.log_tail(log)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The last lines of a log, joined.
    fn log_tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.path(log)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// `ctr` talking to this containerd, in the bench's namespace.
    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.path("containerd.sock"))
            .args(["--namespace", NAMESPACE])
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr` and returns its stdout; its stderr and containerd's last log
    /// lines in the error.
    fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self
            .ctr()
            .args(args)
            .output()
            .map_err(|e| format!("ctr: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ctr {}: {}; containerd: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_tail("containerd.log")
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A synchronous GC: a lease made and removed with `--sync`.
    fn gc(&self) -> Result {
        let id = self.ctr_ok(&["leases", "create"])?;
        let id = id.split_whitespace().next().unwrap_or_default().to_string();
        self.ctr_ok(&["leases", "rm", "--sync", &id]).map(drop)
    }

    /// The snapshot directories of containerd's overlayfs snapshotter.
    fn overlayfs_snapshots(&self) -> Result<usize> {
        let dir = self.path("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
        match std::fs::read_dir(&dir) {
            Ok(entries) => Ok(entries.count()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
        if let Some(mut p) = self.plies.take() {
            terminate(&mut p, Duration::from_secs(30));
        }
        if let Err(e) = remove_mounted_tree(&self.dir) {
            eprintln!("bench: {e}");
        }
    }
}

/// Removes what runs killed before their end left: the processes whose command
/// line names their directory (SIGKILL, by pid), mounts under it, the directory.
fn sweep_dead_runs(bench: &Path) {
    let Ok(entries) = std::fs::read_dir(bench) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("containerd-") else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = e.path();
        eprintln!("bench: removing {} (left by a killed run)", dir.display());
        for pid in processes_naming(&dir) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Err(e) = remove_mounted_tree(&dir) {
            eprintln!("bench: {e}");
        }
    }
}

/// The pids whose command line names a path under `dir`.
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            out.push(pid);
        }
    }
    out
}

/// A `docker save` archive of 120 small layers, cached as
/// `target/bench/layers120-image.tar`: layer `i` adds `l<i>/` with three files
/// (1, 3 and 8 KiB), replaces `etc/stamp`, and every tenth layer deletes a file of
/// the layer before it (a whiteout).
fn many_layers_archive(bench: &Path) -> Result<PathBuf> {
    let archive = bench.join(format!("layers{MANY}-image.tar"));
    if archive.exists() {
        return Ok(archive);
    }
    let staging = bench.join(format!("layers{MANY}"));
    let io = |e: std::io::Error| format!("{}: {e}", staging.display());
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io)?;
    }
    let mut rng = Rng(0x51ed_270b_2d1f_3a97);
    let mut tars = Vec::with_capacity(MANY);
    for i in 0..MANY {
        let content = staging.join(i.to_string());
        let own = content.join(format!("l{i:03}"));
        std::fs::create_dir_all(&own).map_err(io)?;
        std::fs::create_dir_all(content.join("etc")).map_err(io)?;
        for (name, size) in [("a", 1024), ("b", 3072), ("c", 8192)] {
            let data: Vec<u8> = (0..size / 8)
                .flat_map(|_| rng.next().to_le_bytes())
                .collect();
            std::fs::write(own.join(name), data).map_err(io)?;
        }
        std::fs::write(content.join("etc/stamp"), format!("layer {i}\n")).map_err(io)?;
        if i > 0 && i % 10 == 0 {
            let before = content.join(format!("l{:03}", i - 1));
            std::fs::create_dir_all(&before).map_err(io)?;
            std::fs::write(before.join(".wh.a"), "").map_err(io)?;
        }
        let tar = staging.join(format!("{i}.tar"));
        let status = Command::new("tar")
            .args([
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--mtime=@1600000000",
                "--sort=name",
                "-cf",
            ])
            .arg(&tar)
            .arg("-C")
            .arg(&content)
            .arg(".")
            .status()
            .map_err(|e| format!("tar: {e}"))?;
        if !status.success() {
            return Err(format!("tar -cf {}: {status}", tar.display()));
        }
        tars.push(tar);
    }
    let partial = bench.join(format!("layers{MANY}-image.tar.partial"));
    let layers: Vec<&Path> = tars.iter().map(PathBuf::as_path).collect();
    docker_save(&partial, &layers, &format!("bench{MANY}:latest"))?;
    std::fs::rename(&partial, &archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    std::fs::remove_dir_all(&staging).map_err(io)?;
    Ok(archive)
}

/// `containerd.services.snapshots.v1.Kind.COMMITTED`.
const KIND_COMMITTED: i32 = 3;

/// `containerd.types.Mount` (the fields read here).
#[derive(Clone, PartialEq, prost::Message)]
struct Mount {
    #[prost(string, tag = "1")]
    r#type: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PrepareSnapshotRequest {
    #[prost(string, tag = "1")]
    snapshotter: String,
    #[prost(string, tag = "2")]
    key: String,
    #[prost(string, tag = "3")]
    parent: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MountsResponse {
    #[prost(message, repeated, tag = "1")]
    mounts: Vec<Mount>,
}

/// The request of `Mounts` and of `Remove`.
#[derive(Clone, PartialEq, prost::Message)]
struct KeyRequest {
    #[prost(string, tag = "1")]
    snapshotter: String,
    #[prost(string, tag = "2")]
    key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListSnapshotsRequest {
    #[prost(string, tag = "1")]
    snapshotter: String,
}

/// `Info` (the fields read here).
#[derive(Clone, PartialEq, prost::Message)]
struct Info {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    parent: String,
    #[prost(int32, tag = "3")]
    kind: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListSnapshotsResponse {
    #[prost(message, repeated, tag = "1")]
    info: Vec<Info>,
}

/// A client of the snapshots service on a unix socket (containerd's, or a
/// snapshotter's own), calling in the bench's namespace.
struct Client {
    grpc: tonic::client::Grpc<Channel>,
    /// The containerd lease the calls are made in (`containerd-lease`).
    lease: Option<tonic::metadata::AsciiMetadataValue>,
}

impl Client {
    async fn connect(socket: &Path) -> Result<Client> {
        let path = socket.to_path_buf();
        let channel = Endpoint::from_static("http://[::1]:1")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        Ok(Client {
            grpc: tonic::client::Grpc::new(channel),
            lease: None,
        })
    }

    /// Makes the calls in lease `id` (none for `None`).
    fn set_lease(&mut self, id: Option<&str>) -> Result {
        self.lease = id
            .map(|id| {
                id.parse()
                    .map_err(|_| format!("lease id '{id}' is no header value"))
            })
            .transpose()?;
        Ok(())
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        let metadata = r.metadata_mut();
        metadata.insert(
            "containerd-namespace",
            tonic::metadata::MetadataValue::from_static(NAMESPACE),
        );
        if let Some(lease) = &self.lease {
            metadata.insert("containerd-lease", lease.clone());
        }
        r
    }

    async fn unary<Q, R>(&mut self, method: &'static str, message: Q) -> Result<R>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        self.grpc
            .unary(
                self.request(message),
                PathAndQuery::from_static(method),
                tonic::codec::ProstCodec::default(),
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{method}: {}", s.message()))
    }

    /// Prepare `key` on `parent`, its Mounts, and Remove; the time of the three.
    async fn prepare_mounts_remove(
        &mut self,
        snapshotter: &str,
        key: &str,
        parent: &str,
    ) -> Result<Duration> {
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
        };
        let by_key = KeyRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        let start = Instant::now();
        let _: MountsResponse = self
            .unary(
                "/containerd.services.snapshots.v1.Snapshots/Prepare",
                prepare,
            )
            .await?;
        let mounts: MountsResponse = self
            .unary(
                "/containerd.services.snapshots.v1.Snapshots/Mounts",
                by_key.clone(),
            )
            .await?;
        let () = self
            .unary("/containerd.services.snapshots.v1.Snapshots/Remove", by_key)
            .await?;
        let took = start.elapsed();
        if mounts.mounts.is_empty() || mounts.mounts[0].r#type.is_empty() {
            return Err(format!("Mounts of {key} on {snapshotter}: no mounts"));
        }
        Ok(took)
    }

    /// Every snapshot a `List` streams.
    async fn list(&mut self, snapshotter: &str) -> Result<Vec<Info>> {
        const LIST: &str = "/containerd.services.snapshots.v1.Snapshots/List";
        self.grpc.ready().await.map_err(|e| format!("List: {e}"))?;
        let request = self.request(ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
        });
        let codec =
            tonic::codec::ProstCodec::<ListSnapshotsRequest, ListSnapshotsResponse>::default();
        let mut stream = self
            .grpc
            .server_streaming(request, PathAndQuery::from_static(LIST), codec)
            .await
            .map_err(|s| format!("List: {}", s.message()))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream
            .message()
            .await
            .map_err(|s| format!("List: {}", s.message()))?
        {
            out.extend(batch.info);
        }
        Ok(out)
    }
}
