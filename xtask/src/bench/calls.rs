//! Every call against the kernel's floor (`cargo xtask bench --calls-only`).
//!
//! For stacks of 1, 16, 128 and 400 lower layers (a read-write layer `top` over
//! that many layers of one file each):
//! - the library's `get`+`put` of `top` beside a raw `mount(2)`+`umount2(2)` loop
//!   of the same stack with the same data (`fsopen`/`fsconfig` `lowerdir+` at
//!   400, as plies mounts it there), both from the example
//!   `crates/drivers/examples/get_put_floor.rs`, which runs them in turns;
//! - `plies mount top` and `plies umount top` as processes, in a store that holds
//!   the same stack (imported as an image, `top` made by `plies create --rw`);
//! - in the 1-lower store, `plies create` and `plies rm` of a base layer as
//!   processes, after the probe answers are cached (the imports cached them);
//! - the floor of any `plies` process: `plies --version`.
//!
//! Medians of `--calls-iterations N` (default 200) runs, with the 10th and 90th
//! percentiles, and the ratios to the raw loop. Everything is made under
//! `target/bench/calls-<pid>/` and unmounted and removed at the end, after a
//! failure too; what a killed run left is removed by the next one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{docker_save, load_average, timed};
use crate::{Result, cargo, root, run, target_dir};

/// The stack depths measured.
const DEPTHS: [usize; 4] = [1, 16, 128, 400];

/// Median and spread of a set of times, in milliseconds.
#[derive(Clone, Copy)]
pub(super) struct Stats {
    pub(super) p50: f64,
    pub(super) p10: f64,
    pub(super) p90: f64,
}

impl Stats {
    pub(super) fn of(times: &mut [Duration]) -> Stats {
        times.sort();
        let at = |q: usize| times[(times.len() - 1) * q / 100].as_secs_f64() * 1e3;
        Stats {
            p50: at(50),
            p10: at(10),
            p90: at(90),
        }
    }

    /// `1.234 [1.100-1.500]`.
    pub(super) fn show(self) -> String {
        format!(
            "{} [{}-{}]",
            fmt_ms(self.p50),
            fmt_ms(self.p10),
            fmt_ms(self.p90)
        )
    }
}

/// Three significant digits or so, in ms.
fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

/// One line of the example's output.
struct LibRow {
    plan: String,
    lib: Stats,
    raw: Stats,
    /// The raw loop with the mount point made and removed around it, as
    /// Docker's get and put do with `merged`.
    mp: Stats,
}

/// What the `plies` processes took on one stack.
struct CliRow {
    mount: Stats,
    umount: Stats,
    both: Stats,
}

/// Runs the whole section and prints its table.
pub(super) fn calls(iterations: usize) -> Result {
    run(cargo().args(["build", "--release", "-p", "plies"]))?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "plies-drivers",
        "--example",
        "get_put_floor",
    ]))?;
    let target = target_dir();
    let plies = target.join("release/plies");
    let floor = target.join("release/examples/get_put_floor");

    let bench = root().join("target/bench");
    std::fs::create_dir_all(&bench).with_context(|| format!("creating {}", bench.display()))?;
    sweep_dead_runs(&bench);
    let scratch = Scratch(bench.join(format!("calls-{}", std::process::id())));
    let dir = &scratch.0;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let load_before = load_average();

    eprintln!("bench: library get+put beside raw mount+umount2 ({iterations} runs per depth)");
    let lib = lib_rows(&floor, dir, iterations)?;

    let layers = layer_tars(dir, DEPTHS[DEPTHS.len() - 1])?;
    let mut cli = Vec::new();
    let mut roots = Vec::new();
    for depth in DEPTHS {
        let store = CliStore::make(&plies, dir, depth, &layers)?;
        eprintln!("bench: plies mount+umount over {depth} lowers ({iterations} runs)");
        cli.push(store.mount_umount(iterations)?);
        roots.push(store);
    }
    let small = &roots[0];
    if !small
        .root
        .join("overlay2/.plies/overlay2-features.json")
        .exists()
    {
        eprintln!(
            "bench: no probe cache in {}: create+rm probes",
            small.root.display()
        );
    }
    eprintln!("bench: plies create+rm ({iterations} runs)");
    let (create, rm, create_rm) = small.create_rm(iterations)?;
    let mut version = (0..iterations)
        .map(|_| timed(Command::new(&plies).arg("--version")))
        .collect::<Result<Vec<_>>>()?;
    let version = Stats::of(&mut version);
    drop(roots);
    let load_after = load_average();

    print!(
        "{}",
        table(&lib, &cli, (create, rm, create_rm), version, iterations)
    );
    println!("load average before: {load_before}; after: {load_after}");
    Ok(())
}

/// The table, with the goals of the issue checked.
fn table(
    lib: &HashMap<usize, LibRow>,
    cli: &[CliRow],
    (create, rm, create_rm): (Stats, Stats, Stats),
    version: Stats,
    iterations: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncalls: median [p10-p90] of {iterations} runs, in ms; ratios of medians\n\
         (raw with mkdir+rmdir, \"mp\": the raw loop plus the mount point's mkdir before and rmdir\n\
         after, as Docker's overlay2 get and put do with merged; the goal is against raw alone)"
    );
    let _ = writeln!(
        out,
        "{:>6} {:<9} {:<24} {:<24} {:<24} {:>7} {:>7}   {:<24} {:>7}   {:<24} {:<24}",
        "lowers",
        "plan",
        "raw mount+umount2",
        "raw with mkdir+rmdir",
        "plies get+put (library)",
        "lib/raw",
        "lib/mp",
        "plies mount+umount (CLI)",
        "CLI/raw",
        "plies mount",
        "plies umount"
    );
    let mut goals = Vec::new();
    for (depth, c) in DEPTHS.into_iter().zip(cli) {
        let Some(l) = lib.get(&depth) else {
            continue;
        };
        let lib_ratio = l.lib.p50 / l.raw.p50;
        let _ = writeln!(
            out,
            "{depth:>6} {:<9} {:<24} {:<24} {:<24} {:>6.2}x {:>6.2}x   {:<24} {:>6.1}x   {:<24} {:<24}",
            l.plan,
            l.raw.show(),
            l.mp.show(),
            l.lib.show(),
            lib_ratio,
            l.lib.p50 / l.mp.p50,
            c.both.show(),
            c.both.p50 / l.raw.p50,
            c.mount.show(),
            c.umount.show(),
        );
        goals.push(goal(
            &format!("library get+put <= 1.5x raw at {depth} lowers"),
            &format!("{lib_ratio:.2}x"),
            lib_ratio <= 1.5,
        ));
        let cli_goal = match depth {
            1 => Some(5.0),
            400 => Some(8.0),
            _ => None,
        };
        if let Some(limit) = cli_goal {
            goals.push(goal(
                &format!("plies mount+umount <= {limit} ms at {depth} lowers"),
                &format!("{} ms", fmt_ms(c.both.p50)),
                c.both.p50 <= limit,
            ));
        }
    }
    let _ = writeln!(
        out,
        "\nplies create+rm (base layer, 1-lower store, cached probes): {}  (create {}, rm {})",
        create_rm.show(),
        create.show(),
        rm.show()
    );
    let _ = writeln!(
        out,
        "a plies process that does nothing (plies --version): {}",
        version.show()
    );
    goals.push(goal(
        "plies create+rm <= 10 ms",
        &format!("{} ms", fmt_ms(create_rm.p50)),
        create_rm.p50 <= 10.0,
    ));
    let _ = writeln!(out, "\ngoals:");
    for g in goals {
        let _ = writeln!(out, "  {g}");
    }
    out
}

fn goal(what: &str, got: &str, met: bool) -> String {
    format!(
        "{what:<48} {got:>12}  {}",
        if met { "met" } else { "NOT met" }
    )
}

/// Runs the example and reads its lines: depth → row.
fn lib_rows(floor: &Path, dir: &Path, iterations: usize) -> Result<HashMap<usize, LibRow>> {
    let depths: Vec<String> = DEPTHS.iter().map(usize::to_string).collect();
    let out = Command::new(floor)
        .arg("--dir")
        .arg(dir.join("lib"))
        .args(["--iterations", &iterations.to_string()])
        .args(["--depths", &depths.join(",")])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", floor.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", floor.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = HashMap::new();
    for line in text.lines() {
        let words: HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let num = |key: &str| -> Result<f64> {
            words
                .get(key)
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no {key} in '{line}'"))
        };
        let stats = |side: &str| -> Result<Stats> {
            Ok(Stats {
                p50: num(&format!("{side}_p50_us"))? / 1e3,
                p10: num(&format!("{side}_p10_us"))? / 1e3,
                p90: num(&format!("{side}_p90_us"))? / 1e3,
            })
        };
        rows.insert(
            num("depth")? as usize,
            LibRow {
                plan: words.get("plan").unwrap_or(&"?").to_string(),
                lib: stats("lib")?,
                raw: stats("raw")?,
                mp: stats("mp")?,
            },
        );
    }
    Ok(rows)
}

/// `count` layer tars of one file each (`f<i>`, holding `x`), as
/// `dir/layers/<i>.tar`.
fn layer_tars(dir: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let layers = dir.join("layers");
    let io = || format!("making {}", layers.display());
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let content = layers.join(format!("{i}"));
        std::fs::create_dir_all(&content).with_context(io)?;
        std::fs::write(content.join(format!("f{i}")), "x").with_context(io)?;
        let tar = layers.join(format!("{i}.tar"));
        let status = Command::new("tar")
            .args(["--numeric-owner", "--mtime=@1600000000", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(&content)
            .arg(format!("f{i}"))
            .status()
            .context("starting tar")?;
        if !status.success() {
            bail!("tar -cf {}: {status}", tar.display());
        }
        out.push(tar);
    }
    Ok(out)
}

/// A `plies` store under its own root holding one stack.
struct CliStore {
    plies: PathBuf,
    root: PathBuf,
    depth: usize,
}

impl CliStore {
    /// Imports `depth` layers as one image and makes `top`, read-write, on it.
    fn make(plies: &Path, dir: &Path, depth: usize, layers: &[PathBuf]) -> Result<CliStore> {
        let store = CliStore {
            plies: plies.to_path_buf(),
            root: dir.join(format!("cli-d{depth}")),
            depth,
        };
        let image = dir.join(format!("image-{depth}.tar"));
        let layers: Vec<&Path> = layers[..depth].iter().map(PathBuf::as_path).collect();
        docker_save(&image, &layers, &format!("calls:{depth}"))?;
        let out = store
            .cmd()
            .arg("import")
            .arg(&image)
            .stderr(Stdio::inherit())
            .output()
            .context("starting plies import")?;
        if !out.status.success() {
            bail!("plies import of {}: {}", image.display(), out.status);
        }
        let top = String::from_utf8_lossy(&out.stdout).trim().to_string();
        run(store
            .cmd()
            .args(["create", "--rw", "--parent", &top, "top"])
            .stdout(Stdio::null()))?;
        std::fs::remove_file(&image).with_context(|| format!("removing {}", image.display()))?;
        Ok(store)
    }

    /// `plies` on this store, quiet, with the options of its depth.
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.plies);
        c.arg("--root")
            .arg(&self.root)
            .args(["--driver", "overlay2", "-q"])
            .stdin(Stdio::null());
        if self.depth > 128 {
            c.args([
                "--storage-opt",
                "overlay2.mount_mode=fsconfig",
                "--storage-opt",
                "overlay2.max_depth=500",
            ]);
        }
        c
    }

    /// `plies mount top` then `plies umount top`, after a warm-up.
    fn mount_umount(&self, iterations: usize) -> Result<CliRow> {
        let once = || -> Result<(Duration, Duration)> {
            let m = timed(self.cmd().args(["mount", "top"]))?;
            let u = timed(self.cmd().args(["umount", "top"]))?;
            Ok((m, u))
        };
        for _ in 0..iterations.div_ceil(20) {
            once()?;
        }
        let (mut mount, mut umount, mut both) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iterations {
            let (m, u) = once()?;
            mount.push(m);
            umount.push(u);
            both.push(m + u);
        }
        Ok(CliRow {
            mount: Stats::of(&mut mount),
            umount: Stats::of(&mut umount),
            both: Stats::of(&mut both),
        })
    }

    /// `plies create c` then `plies rm c`, after a warm-up: (create, rm, both).
    fn create_rm(&self, iterations: usize) -> Result<(Stats, Stats, Stats)> {
        let once = || -> Result<(Duration, Duration)> {
            let c = timed(self.cmd().args(["create", "c"]))?;
            let r = timed(self.cmd().args(["rm", "c"]))?;
            Ok((c, r))
        };
        for _ in 0..iterations.div_ceil(20) {
            once()?;
        }
        let (mut create, mut rm, mut both) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iterations {
            let (c, r) = once()?;
            create.push(c);
            rm.push(r);
            both.push(c + r);
        }
        Ok((
            Stats::of(&mut create),
            Stats::of(&mut rm),
            Stats::of(&mut both),
        ))
    }
}

/// The run's directory: everything mounted under it is detached and it is
/// removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = remove_mounted_tree(&self.0) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// Removes the directories of earlier runs whose process is gone.
fn sweep_dead_runs(bench: &Path) {
    let Ok(entries) = std::fs::read_dir(bench) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("calls-") else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        eprintln!(
            "bench: removing {} (left by a killed run)",
            e.path().display()
        );
        if let Err(e) = remove_mounted_tree(&e.path()) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// Detaches every mount at or under `dir` (deepest first), then removes it.
pub(super) fn remove_mounted_tree(dir: &Path) -> Result {
    for _ in 0..10 {
        let mut mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        mounts.sort();
        for m in mounts.iter().rev() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(m)
                .stderr(Stdio::null())
                .status();
        }
    }
    if !mounts_under(dir).is_empty() {
        bail!("mounts left under {}; not removed", dir.display());
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Mount points at or under `dir`, from this process's mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
