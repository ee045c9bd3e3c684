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

use anyhow::{Context as _, bail};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};

use super::calls::{Stats, remove_mounted_tree};
use super::docker::terminate;
use super::{Rng, docker_save, load_average, read_input, sync_and_drop_caches, timed};
use crate::Result;

mod client;
mod rig;

use client::*;
use rig::*;

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
            bail!("{tool} is not installed (Debian: containerd)");
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
        .context("building the tokio runtime")?;
    let (mut via, mut direct) = rt.block_on(async {
        let via = Client::connect(&rig.path("containerd.sock")).await?;
        let direct = Client::connect(&rig.path("plies.sock")).await?;
        anyhow::Ok((via, direct))
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
                bail!(
                    "containerd's GC left {} overlayfs and {} plies snapshots (want {} and {})",
                    have[0],
                    have[1],
                    want[0],
                    want[1]
                );
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
        bail!(
            "{} committed snapshots without children, want one",
            tops.len()
        );
    };
    let mut chain = 0;
    let mut at = top;
    while let Some(parent) = committed.get(at) {
        chain += 1;
        at = parent;
    }
    if chain != depth {
        bail!("the top {top} is {chain} layers deep, not {depth}");
    }
    Ok(top.to_string())
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
    let io = || format!("making {}", staging.display());
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(io)?;
    }
    let mut rng = Rng(0x51ed_270b_2d1f_3a97);
    let mut tars = Vec::with_capacity(MANY);
    for i in 0..MANY {
        let content = staging.join(i.to_string());
        let own = content.join(format!("l{i:03}"));
        std::fs::create_dir_all(&own).with_context(io)?;
        std::fs::create_dir_all(content.join("etc")).with_context(io)?;
        for (name, size) in [("a", 1024), ("b", 3072), ("c", 8192)] {
            let data: Vec<u8> = (0..size / 8)
                .flat_map(|_| rng.next().to_le_bytes())
                .collect();
            std::fs::write(own.join(name), data).with_context(io)?;
        }
        std::fs::write(content.join("etc/stamp"), format!("layer {i}\n")).with_context(io)?;
        if i > 0 && i % 10 == 0 {
            let before = content.join(format!("l{:03}", i - 1));
            std::fs::create_dir_all(&before).with_context(io)?;
            std::fs::write(before.join(".wh.a"), "").with_context(io)?;
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
            .context("starting tar")?;
        if !status.success() {
            bail!("tar -cf {}: {status}", tar.display());
        }
        tars.push(tar);
    }
    let partial = bench.join(format!("layers{MANY}-image.tar.partial"));
    let layers: Vec<&Path> = tars.iter().map(PathBuf::as_path).collect();
    docker_save(&partial, &layers, &format!("bench{MANY}:latest"))?;
    std::fs::rename(&partial, &archive)
        .with_context(|| format!("renaming {} to {}", partial.display(), archive.display()))?;
    std::fs::remove_dir_all(&staging).with_context(io)?;
    Ok(archive)
}
