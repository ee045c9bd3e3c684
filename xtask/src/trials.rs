//! `cargo xtask trials`: kill `plies` at random points and check that the store
//! survives, then hammer one root from many processes at once.
//!
//! Drives the release `plies` binary (built here, in `CARGO_TARGET_DIR` or the
//! workspace's `target/`) with `--driver overlay2` against roots under
//! `<target>/trials/`, which is emptied at the start of every run (unmounting
//! whatever is mounted there). Needs root and overlayfs; without them it says why
//! and skips, or fails when `PLIES_REQUIRE_KERNEL=1`.
//!
//! - Kill trials (`kinds.rs`): for each kind (`import`, `apply-new`,
//!   `apply-content`, `apply-child`, `create`, `rm`, `mount`, `umount`), a
//!   reference run measures the command unkilled; then `--per-kind N` trials each
//!   set up a fresh root, start the command, SIGKILL it after a random delay within
//!   that time, and check fsck (with a repair when needed), every layer's content
//!   against its state before and after the command, leaked mounts, and a re-run.
//! - Concurrency (`concurrency.rs`): `--procs K` workers doing `--rounds M` rounds
//!   each of create → mount → write → umount → rm on one root, beside loops of
//!   `plies ls` and `plies fsck`.
//!
//! The delays come from a xorshift generator seeded by `--seed S` (default: the
//! clock); the seed is printed. Kill timing still depends on the machine, so a seed
//! repeats the delays, not always the outcome. `--kinds a,b` runs only those kinds;
//! `--procs 0` or `--rounds 0` skips the concurrency run. With `--keep`, the root
//! of each failed trial is kept (unmounted) as `<target>/trials/failed-<kind>-<n>`
//! (`failed-concurrency` for that run), and the inputs stay in `inputs/`.
//! `--verbose` prints a line per trial; `--bin PATH` tests that `plies` binary
//! instead of building one (an older build, say).
//!
//! Prints a table with a row per kind and the concurrency figures, then, per kind,
//! each trial that was the first to fail in some way (what failed, with the output
//! of fsck after the kill), and fails when any failure count is not zero. Typed
//! busy/exists refusals in the concurrency run and repairs after a kill are counted
//! but are no failures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use crate::bench::Rng;
use crate::{Result, cargo, run, target_dir};

mod concurrency;
pub(crate) mod inputs;
mod kinds;
mod plies;
mod tarsum;

use kinds::{Fsck, Kind, Trial};
use plies::{Plies, remove_root, unmount_all};

/// The command line of `cargo xtask trials`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Kill trials of each kind.
    #[arg(long, value_name = "N", default_value_t = 50)]
    per_kind: usize,
    /// Worker processes of the concurrency run (0 skips it).
    #[arg(long, value_name = "K", default_value_t = 8)]
    procs: usize,
    /// Rounds of each worker (0 skips the concurrency run).
    #[arg(long, value_name = "M", default_value_t = 1000)]
    rounds: usize,
    /// The kill delays' generator seed (default: the clock; printed).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Only these kinds of kill trial, comma-separated (default: all).
    #[arg(
        long,
        value_enum,
        value_name = "a,b,c",
        value_delimiter = ',',
        default_values_t = Kind::ALL,
        hide_default_value = true
    )]
    kinds: Vec<Kind>,
    /// Keep the root of each failed trial, and the inputs.
    #[arg(long)]
    keep: bool,
    /// A `plies` binary to use instead of building one.
    #[arg(long, value_name = "PLIES")]
    bin: Option<PathBuf>,
    /// A line per trial.
    #[arg(long, short)]
    verbose: bool,
}

/// What every trial needs.
pub(crate) struct Ctx {
    /// The binary under test.
    pub(crate) plies: Plies,
    /// `<target>/trials`, absolute.
    pub(crate) dir: PathBuf,
    /// The tars and images.
    pub(crate) inputs: inputs::Inputs,
    /// `--keep`.
    pub(crate) keep: bool,
    /// `--verbose`: a line per trial.
    pub(crate) verbose: bool,
}

impl Ctx {
    /// Unmounts everything under `root` and moves it to `failed-<name>`.
    pub(crate) fn keep_root(&self, root: &Path, name: &str) -> Result<PathBuf> {
        unmount_all(root);
        let kept = self.dir.join(format!("failed-{name}"));
        remove_root(&kept)?;
        std::fs::rename(root, &kept)
            .with_context(|| format!("moving {} to {}", root.display(), kept.display()))?;
        Ok(kept)
    }
}

/// Why the trials cannot run on this machine, if they cannot.
fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() != Some("0") {
        return Some("not root: the trials mount overlayfs".into());
    }
    let has_overlay = || {
        std::fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    };
    if !has_overlay() {
        let _ = std::process::Command::new("modprobe")
            .arg("overlay")
            .stderr(std::process::Stdio::null())
            .status();
    }
    if !has_overlay() {
        return Some("the kernel has no overlayfs".into());
    }
    None
}

/// `cargo xtask trials`.
pub(crate) fn trials(opts: Options) -> Result {
    if let Some(why) = unsupported() {
        if std::env::var_os("PLIES_REQUIRE_KERNEL").is_some_and(|v| v == "1") {
            bail!("trials: {why} (PLIES_REQUIRE_KERNEL=1)");
        }
        eprintln!("trials: skipped: {why}");
        return Ok(());
    }
    let bin = match opts.bin {
        Some(bin) => {
            std::path::absolute(&bin).with_context(|| format!("--bin {}", bin.display()))?
        }
        None => {
            run(cargo().args(["build", "--release", "-p", "plies"]))?;
            target_dir().join("release/plies")
        }
    };

    let dir = target_dir().join("trials");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let stale = unmount_all(&dir);
    if stale > 0 {
        eprintln!("trials: unmounted {stale} mounts a previous run left");
    }
    let listing = || format!("reading {}", dir.display());
    for entry in std::fs::read_dir(&dir).with_context(listing)? {
        let path = entry.with_context(listing)?.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    let started = Instant::now();
    let inputs = inputs::make(&dir.join("inputs"))?;
    eprintln!(
        "trials: inputs made in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let ctx = Ctx {
        plies: Plies { bin },
        dir,
        inputs,
        keep: opts.keep,
        verbose: opts.verbose,
    };

    let seed = opts.seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        t.as_secs() ^ u64::from(t.subsec_nanos()) << 20 ^ u64::from(std::process::id())
    });
    eprintln!("trials: seed {seed} (repeat the delays with --seed {seed})");
    let mut rng = Rng(splitmix(seed));

    let mut tallies = Vec::new();
    for &kind in &opts.kinds {
        tallies.push(run_kind(&ctx, kind, opts.per_kind, &mut rng));
    }
    let concurrency = if opts.procs > 0 && opts.rounds > 0 {
        eprintln!(
            "trials: concurrency: {} workers x {} rounds",
            opts.procs, opts.rounds
        );
        Some(concurrency::run(&ctx, opts.procs, opts.rounds))
    } else {
        None
    };

    if !tallies.is_empty() {
        print_table(&tallies);
    }
    let mut failed = tallies.iter().any(Tally::failed);
    match &concurrency {
        Some(Ok(report)) => {
            print_concurrency(report);
            failed |= report.failed();
        }
        Some(Err(e)) => {
            println!("\nconcurrency: could not run: {e:#}");
            failed = true;
        }
        None => {}
    }
    for t in &tallies {
        for report in &t.reports {
            println!("\n{} {report}", t.kind.name());
        }
    }
    let inputs = ctx.dir.join("inputs");
    if ctx.keep {
        println!("\ninputs kept in {}", inputs.display());
    } else if let Err(e) = std::fs::remove_dir_all(&inputs) {
        eprintln!("trials: removing {}: {e}", inputs.display());
    }
    println!("\nseed {seed}");
    if failed {
        bail!("trials found failures (above)")
    } else {
        Ok(())
    }
}

/// A seed spread over all 64 bits (splitmix64), never zero.
pub(crate) fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).max(1)
}

/// One kind's counts, and reports of the first failures.
struct Tally {
    kind: Kind,
    /// The unkilled command's time: the kill window.
    window: Option<Duration>,
    trials: usize,
    killed: usize,
    clean: usize,
    repaired: usize,
    unrepairable: usize,
    lost: usize,
    leaked: usize,
    rerun: usize,
    errors: usize,
    /// The sorts of failure reported so far.
    seen: Vec<&'static str>,
    /// A report of each trial that was the first to fail in some sort.
    reports: Vec<String>,
}

impl Tally {
    /// Nothing counted yet.
    fn new(kind: Kind) -> Tally {
        Tally {
            kind,
            window: None,
            trials: 0,
            killed: 0,
            clean: 0,
            repaired: 0,
            unrepairable: 0,
            lost: 0,
            leaked: 0,
            rerun: 0,
            errors: 0,
            seen: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// Whether any failure was counted.
    fn failed(&self) -> bool {
        self.unrepairable + self.lost + self.leaked + self.rerun + self.errors > 0
    }

    /// Keeps `report` when it is the first failure of one of `sorts`.
    fn report(&mut self, sorts: &[&'static str], report: String) {
        if sorts.iter().any(|s| !self.seen.contains(s)) {
            self.seen.extend(sorts);
            self.reports.push(report);
        }
    }

    /// Counts trial `n` (its root kept at `kept`, if it was) and keeps its report
    /// when it is the first of some sort of failure.
    fn record(&mut self, n: usize, t: &Trial, kept: Option<&Path>) {
        self.trials += 1;
        self.killed += usize::from(t.killed);
        let mut sorts = Vec::new();
        let mut text = format!(
            "trial {n}: {} {:.1} ms after the start; root {}",
            if t.killed {
                "killed"
            } else {
                "finished before the kill at"
            },
            t.delay.as_secs_f64() * 1000.0,
            kept.unwrap_or(&t.root).display()
        );
        match &t.fsck {
            Some((Fsck::Clean, _)) => self.clean += 1,
            Some((Fsck::Repaired, _)) => self.repaired += 1,
            Some((Fsck::Unrepairable, _)) => {
                self.unrepairable += 1;
                sorts.push("unrepairable");
                text.push_str("\n  unrepairable: fsck fails after fsck --repair");
            }
            None => {}
        }
        if !t.lost.is_empty() {
            self.lost += t.lost.len();
            sorts.push("layers lost");
            for line in &t.lost {
                text.push_str(&format!("\n  lost: {line}"));
            }
        }
        if !t.leaked.is_empty() {
            self.leaked += t.leaked.len();
            sorts.push("leaked mounts");
            text.push_str(&format!(
                "\n  leaked mounts (mounted, not recorded): {:?}",
                t.leaked
            ));
        }
        if let Some(why) = &t.rerun {
            self.rerun += 1;
            sorts.push("re-run");
            text.push_str(&format!("\n  re-run: {}", hang(why)));
        }
        if let Some(why) = &t.error {
            self.errors += 1;
            sorts.push("error");
            text.push_str(&format!("\n  error: {}", hang(why)));
        }
        if let Some((_, log)) = &t.fsck {
            text.push_str(&format!("\n  fsck after the kill:\n{}", indent(log)));
        }
        if !sorts.is_empty() {
            self.report(&sorts, text);
        }
    }
}

/// The first line as it is, the rest indented under it.
fn hang(text: &str) -> String {
    match text.trim_end().split_once('\n') {
        Some((first, rest)) => format!("{first}\n{}", indent(rest)),
        None => text.trim_end().to_string(),
    }
}

/// Every line indented by four spaces.
fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The reference run and `per_kind` trials of one kind.
fn run_kind(ctx: &Ctx, kind: Kind, per_kind: usize, rng: &mut Rng) -> Tally {
    let mut tally = Tally::new(kind);
    let started = Instant::now();
    let reference = match kinds::reference(ctx, kind) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trials: {}: the reference run failed", kind.name());
            tally.errors += 1;
            tally.report(
                &["error"],
                format!("reference run failed:\n{}", indent(&format!("{e:#}"))),
            );
            return tally;
        }
    };
    tally.window = Some(reference.duration);
    let window_us = reference.duration.as_micros() as u64;
    for n in 0..per_kind {
        let delay = Duration::from_micros(rng.below(window_us + 1));
        let trial = kinds::trial(ctx, kind, n, &reference, delay);
        let kept = if trial.failed() && ctx.keep {
            ctx.keep_root(&trial.root, &format!("{}-{n}", kind.name()))
                .map(Some)
        } else {
            remove_root(&trial.root).map(|()| None)
        };
        let kept = kept.unwrap_or_else(|e| {
            tally.errors += 1;
            tally.report(&["cleanup"], format!("trial {n}: cleaning up: {e:#}"));
            None
        });
        tally.record(n, &trial, kept.as_deref());
        if ctx.verbose {
            eprintln!("trials: {} {n}: {}", kind.name(), trial.summary());
        }
    }
    eprintln!(
        "trials: {}: {} trials in {:.1}s (kill window {:.1} ms)",
        kind.name(),
        tally.trials,
        started.elapsed().as_secs_f64(),
        reference.duration.as_secs_f64() * 1000.0
    );
    tally
}

/// The table: a row per kind.
fn print_table(tallies: &[Tally]) {
    println!(
        "\n{:<14} {:>9} {:>6} {:>7} {:>6} {:>8} {:>12} {:>6} {:>7} {:>7} {:>6}",
        "kind",
        "window",
        "trials",
        "killed",
        "clean",
        "repaired",
        "unrepairable",
        "lost",
        "leaked",
        "re-run",
        "errors"
    );
    for t in tallies {
        let window = t.window.map_or("-".to_string(), |w| {
            format!("{:.0} ms", w.as_secs_f64() * 1000.0)
        });
        println!(
            "{:<14} {:>9} {:>6} {:>7} {:>6} {:>8} {:>12} {:>6} {:>7} {:>7} {:>6}",
            t.kind.name(),
            window,
            t.trials,
            t.killed,
            t.clean,
            t.repaired,
            t.unrepairable,
            t.lost,
            t.leaked,
            t.rerun,
            t.errors
        );
    }
    println!(
        "(window: the unkilled command's time; clean/repaired/unrepairable: fsck after the kill; \
         lost: layers missing or in neither the state before nor after; leaked: mounts nothing \
         records; re-run: the command run again failed or did not end in the after-state; \
         errors: trials that could not run)"
    );
}

/// The concurrency figures, and the first messages of each sort of failure.
fn print_concurrency(r: &concurrency::Report) {
    let total = r.procs * r.rounds;
    println!(
        "\nconcurrency: {} workers x {} rounds in {:.1}s",
        r.procs,
        r.rounds,
        r.elapsed.as_secs_f64()
    );
    let rows: [(&str, String); 12] = [
        ("rounds succeeded", format!("{} of {total}", r.ok)),
        ("rounds failed, busy/exists", r.busy.to_string()),
        ("rounds failed, other", r.other.to_string()),
        (
            "ls runs / failures",
            format!("{} / {}", r.ls_runs, r.ls_failures),
        ),
        (
            "fsck runs / failures",
            format!("{} / {}", r.fsck_runs, r.fsck_failures),
        ),
        (
            "final fsck exit",
            r.final_fsck.map_or("signal".into(), |c| c.to_string()),
        ),
        ("ghost layers", list(&r.ghosts)),
        ("leftovers in overlay2/", list(&r.leftovers)),
        ("dangling l/ links", list(&r.dangling)),
        (
            "leaked mounts",
            list(
                &r.leaked
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>(),
            ),
        ),
        ("busy/exists messages", first_lines(&r.busy_messages)),
        (
            "kept root",
            r.kept
                .as_ref()
                .map_or("-".into(), |p| p.display().to_string()),
        ),
    ];
    for (what, value) in rows {
        println!("  {what:<28} {value}");
    }
    for (what, messages) in [
        ("other failures", &r.other_messages),
        ("ls failures", &r.ls_messages),
        ("fsck failures", &r.fsck_messages),
    ] {
        if !messages.is_empty() {
            println!("  first {what}:");
            for m in messages {
                println!("    {m}");
            }
        }
    }
    if r.final_fsck != Some(0) {
        println!("  final fsck:\n{}", indent(&r.final_fsck_log));
    }
}

/// A count, and the first few items.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "0".into();
    }
    let shown: Vec<&str> = items.iter().take(5).map(String::as_str).collect();
    let more = if items.len() > 5 { ", …" } else { "" };
    format!("{} ({}{more})", items.len(), shown.join(", "))
}

/// The first message, if any.
fn first_lines(messages: &[String]) -> String {
    messages.first().cloned().unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Options, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let args = std::iter::once("trials").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(args).map(|c| c.options)
    }

    #[test]
    fn options() {
        let o = parse(&["--per-kind", "5", "--kinds", "rm,apply-child", "--keep"]).unwrap();
        assert_eq!(o.per_kind, 5);
        assert_eq!((o.procs, o.rounds), (8, 1000));
        assert_eq!(o.kinds, vec![Kind::Rm, Kind::ApplyChild]);
        assert!(o.keep);
        assert_eq!(parse(&[]).unwrap().kinds, Kind::ALL);
        assert!(parse(&["--kinds", "nope"]).is_err());
        assert!(parse(&["--rounds"]).is_err());
    }

    #[test]
    fn seeds_spread() {
        assert_ne!(splitmix(0), 0);
        assert_ne!(splitmix(1), splitmix(2));
    }
}
