//! The concurrency run: one root, a base layer imported first, and K workers (each
//! a thread running `plies` commands) doing M rounds each of
//! `create w<k>-<i> --parent BASE` → `mount` → a file written into the mount →
//! `umount` → `rm`, while one loop runs `plies ls` and another `plies fsck` beside
//! them until the workers are done.
//!
//! A round fails at its first failing step. A failure whose message says the layer
//! is busy, in use or already exists is a typed error (the store refused, and said
//! why); anything else is counted as another failure. After a failed round the
//! worker unmounts and removes its layer (uncounted), so only what even that
//! could not remove is left for the end: `plies fsck`, ghost layers (listed, other
//! than BASE), leftovers in `<root>/overlay2` (entries other than `l`, BASE's
//! directory and the store's own `.plies`), dangling `l/` links, and mounts no
//! layer records.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use super::Ctx;
use super::plies::{Plies, Run, mounts_under, remove_root};
use crate::Result;

/// The store's own entries in the driver's home, besides `l` and the layers.
const STORE_OWN: &[&str] = &[".plies"];

/// How many messages of each sort are kept for the report.
const KEEP_MESSAGES: usize = 5;

/// What the concurrency run found.
#[derive(Default)]
pub(crate) struct Report {
    /// Worker processes.
    pub(crate) procs: usize,
    /// Rounds each.
    pub(crate) rounds: usize,
    /// Wall time of the workers.
    pub(crate) elapsed: Duration,
    /// Rounds that went through.
    pub(crate) ok: usize,
    /// Rounds that failed with a typed busy/exists error.
    pub(crate) busy: usize,
    /// Rounds that failed otherwise.
    pub(crate) other: usize,
    /// The first busy/exists messages.
    pub(crate) busy_messages: Vec<String>,
    /// The first other failures' messages.
    pub(crate) other_messages: Vec<String>,
    /// `plies ls` runs beside the workers.
    pub(crate) ls_runs: usize,
    /// Those that failed.
    pub(crate) ls_failures: usize,
    /// Their first messages.
    pub(crate) ls_messages: Vec<String>,
    /// `plies fsck` runs beside the workers.
    pub(crate) fsck_runs: usize,
    /// Those that failed (work in progress reported as damage, or an error).
    pub(crate) fsck_failures: usize,
    /// Their first outputs.
    pub(crate) fsck_messages: Vec<String>,
    /// The exit code of `plies fsck` at the end (`None`: killed by a signal).
    pub(crate) final_fsck: Option<i32>,
    /// Its transcript.
    pub(crate) final_fsck_log: String,
    /// Layers listed at the end other than BASE.
    pub(crate) ghosts: Vec<String>,
    /// Entries of `<root>/overlay2` that should not be there.
    pub(crate) leftovers: Vec<String>,
    /// `l/` links to nothing.
    pub(crate) dangling: Vec<String>,
    /// Mounts under the root no layer records.
    pub(crate) leaked: Vec<PathBuf>,
    /// Where the root was kept (`--keep`, on failure).
    pub(crate) kept: Option<PathBuf>,
}

impl Report {
    /// Whether anything failed (typed busy/exists errors do not count).
    pub(crate) fn failed(&self) -> bool {
        self.other > 0
            || self.ls_failures > 0
            || self.fsck_failures > 0
            || self.final_fsck != Some(0)
            || !self.ghosts.is_empty()
            || !self.leftovers.is_empty()
            || !self.dangling.is_empty()
            || !self.leaked.is_empty()
    }
}

/// What one worker counted.
#[derive(Default)]
struct Worker {
    ok: usize,
    busy: Vec<String>,
    other: Vec<String>,
}

/// Whether a failure is the store's typed "busy" or "exists" refusal.
fn typed(message: &str) -> bool {
    let m = message.to_lowercase();
    m.contains("busy") || m.contains("in use") || m.contains("already exists")
}

/// The failure of one step, as a message naming it.
fn step_failed(run: &Run) -> String {
    format!("{}: {}", run.shown, run.message())
}

/// One round of worker `k`.
fn round(plies: &Plies, root: &Path, base: &str, name: &str) -> Result {
    let must = |args: &[&str]| -> Result<Run> {
        let run = plies.run(root, args)?;
        if run.ok() {
            Ok(run)
        } else {
            Err(anyhow!(step_failed(&run)))
        }
    };
    must(&["create", name, "--parent", base])?;
    let path = PathBuf::from(must(&["mount", name])?.text());
    if !mounts_under(root).contains(&path) {
        bail!(
            "plies mount {name} printed {}, which is not a mount point",
            path.display()
        );
    }
    let file = path.join(format!("{name}.txt"));
    std::fs::write(&file, name).with_context(|| format!("writing {}", file.display()))?;
    must(&["umount", name])?;
    must(&["rm", name])?;
    Ok(())
}

/// Runs `plies <args>` in a loop until `done`, counting runs and failures.
fn beside(plies: &Plies, root: &Path, args: &[&str], done: &AtomicBool) -> (usize, Vec<String>) {
    let (mut runs, mut failures) = (0, Vec::new());
    while !done.load(Ordering::Relaxed) {
        runs += 1;
        match plies.run(root, args) {
            Ok(run) if run.ok() => {}
            Ok(run) => {
                // fsck's findings are on stdout; its errors, and ls's, on stderr.
                let said = run
                    .text()
                    .lines()
                    .next()
                    .map(str::to_string)
                    .unwrap_or_else(|| run.message());
                failures.push(format!("{} ({}): {said}", run.shown, run.end()));
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (runs, failures)
}

/// Runs the whole concurrency check.
pub(crate) fn run(ctx: &Ctx, procs: usize, rounds: usize) -> Result<Report> {
    let plies = &ctx.plies;
    let root = ctx.dir.join("concurrency");
    remove_root(&root)?;
    let imported = plies.ok(
        &root,
        &[
            OsStr::new("-q"),
            OsStr::new("import"),
            ctx.inputs.base_image.as_os_str(),
        ],
    )?;
    let base = imported
        .lines()
        .last()
        .context("plies import printed no layer id")?
        .trim()
        .to_string();

    let mut report = Report {
        procs,
        rounds,
        ..Report::default()
    };
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let (workers, ls, fsck) = std::thread::scope(|s| {
        let ls = s.spawn(|| beside(plies, &root, &["ls"], &done));
        let fsck = s.spawn(|| beside(plies, &root, &["fsck"], &done));
        let handles: Vec<_> = (0..procs)
            .map(|k| {
                let (root, base) = (&root, &base);
                s.spawn(move || {
                    let mut w = Worker::default();
                    for i in 0..rounds {
                        let name = format!("w{k}-{i}");
                        match round(plies, root, base, &name) {
                            Ok(()) => w.ok += 1,
                            Err(e) => {
                                let e = format!("{e:#}");
                                if typed(&e) {
                                    w.busy.push(e);
                                } else {
                                    w.other.push(e);
                                }
                                let _ = plies.run(root, &["umount", name.as_str()]);
                                let _ = plies.run(root, &["rm", name.as_str()]);
                            }
                        }
                    }
                    w
                })
            })
            .collect();
        let workers: Vec<Worker> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        done.store(true, Ordering::Relaxed);
        (
            workers,
            ls.join().unwrap_or_default(),
            fsck.join().unwrap_or_default(),
        )
    });
    report.elapsed = start.elapsed();
    for w in workers {
        report.ok += w.ok;
        report.busy += w.busy.len();
        report.other += w.other.len();
        report.busy_messages.extend(w.busy);
        report.other_messages.extend(w.other);
    }
    report.busy_messages.truncate(KEEP_MESSAGES);
    report.other_messages.truncate(KEEP_MESSAGES);
    (report.ls_runs, report.ls_failures) = (ls.0, ls.1.len());
    report.ls_messages = ls.1.into_iter().take(KEEP_MESSAGES).collect();
    (report.fsck_runs, report.fsck_failures) = (fsck.0, fsck.1.len());
    report.fsck_messages = fsck.1.into_iter().take(KEEP_MESSAGES).collect();

    let last = plies.run(&root, &["fsck"])?;
    report.final_fsck = last.status.and_then(|s| s.code());
    report.final_fsck_log = last.transcript();
    let listed = plies.ls(&root)?;
    report.ghosts = listed
        .iter()
        .filter(|l| l.id != base)
        .map(|l| l.id.clone())
        .collect();
    let home = root.join("overlay2");
    let listing = || format!("reading {}", home.display());
    for entry in std::fs::read_dir(&home).with_context(listing)? {
        let name = entry.with_context(listing)?.file_name();
        let name = name.to_string_lossy();
        if name != "l" && name != base && !STORE_OWN.contains(&name.as_ref()) {
            report.leftovers.push(name.into_owned());
        }
    }
    let links = home.join("l");
    let listing = || format!("reading {}", links.display());
    for entry in std::fs::read_dir(&links).with_context(listing)? {
        let entry = entry.with_context(listing)?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        match std::fs::read_link(&path) {
            Ok(target) if std::fs::metadata(&path).is_err() => report
                .dangling
                .push(format!("l/{name} -> {}", target.display())),
            Ok(_) => {}
            Err(_) => report.leftovers.push(format!("l/{name} (not a link)")),
        }
    }
    let recorded: Vec<PathBuf> = listed
        .iter()
        .filter_map(|l| l.mounted.as_ref().map(PathBuf::from))
        .collect();
    report.leaked = mounts_under(&root)
        .into_iter()
        .filter(|m| !recorded.contains(m))
        .collect();

    if report.failed() && ctx.keep {
        report.kept = Some(ctx.keep_root(&root, "concurrency")?);
    } else {
        remove_root(&root)?;
    }
    Ok(report)
}
