//! The kill trials: one store-changing command per kind, SIGKILLed at a random
//! point of its run, and the store checked afterwards.
//!
//! Every trial starts from a fresh root set up as the kind's reference run set it
//! up (the same commands, the same inputs; the trial checks that it got the same
//! layers). The reference run measured the command unkilled, and recorded each
//! layer's state before and after it. After the kill:
//!
//! 1. `plies fsck`; when it fails, `plies fsck --repair` and `plies fsck` again,
//!    which must pass (the trial counts as clean, repaired or unrepairable);
//! 2. every layer must be in its state before the command or its state after it
//!    (same parent, same `plies diff` content, see `tarsum`): a layer that was
//!    there and is not the command's to remove stays as it was; a layer the
//!    command creates is absent or whole; an apply's target holds its content from
//!    before or from after the apply, never less. Each layer in neither state
//!    counts as lost, and so does a layer in neither state that should not be
//!    there at all;
//! 3. no mount under the root but those `plies ls` records (`mounted`);
//! 4. the same command, run again unkilled, must succeed, with these exceptions
//!    where the killed one may have finished: `create` may fail with "already
//!    exists" and `rm` with "no such layer" when the layer is (or is no longer)
//!    listed, and `umount` with "not mounted" when `plies ls` records no mount.
//!    After it, the store must be the reference's after-state exactly (layers,
//!    content, which are mounted, and `mount`'s path a real mount point), with no
//!    other mount under the root, and `plies fsck` clean.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::Ctx;
use super::plies::{Plies, mounts_under, remove_root};
use super::tarsum::{self, Fingerprint};
use crate::Result;

/// One kind of trial: what is set up and which command is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `plies import` of the three-layer image into an empty root.
    Import,
    /// `plies apply L` to a layer just created, empty.
    ApplyNew,
    /// `plies apply L` to a layer that holds content already.
    ApplyContent,
    /// As [`Kind::ApplyContent`], with a child layer `C` on `L`.
    ApplyChild,
    /// `plies create X --parent base`.
    Create,
    /// `plies rm X` (X holds content, on `base`).
    Rm,
    /// `plies mount X` (X on `base`, so an overlay mount).
    Mount,
    /// `plies umount X` of X mounted with `plies mount`.
    Umount,
}

impl Kind {
    /// Every kind, in the table's order.
    pub(crate) const ALL: [Kind; 8] = [
        Kind::Import,
        Kind::ApplyNew,
        Kind::ApplyContent,
        Kind::ApplyChild,
        Kind::Create,
        Kind::Rm,
        Kind::Mount,
        Kind::Umount,
    ];

    /// The name `--kinds` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Import => "import",
            Kind::ApplyNew => "apply-new",
            Kind::ApplyContent => "apply-content",
            Kind::ApplyChild => "apply-child",
            Kind::Create => "create",
            Kind::Rm => "rm",
            Kind::Mount => "mount",
            Kind::Umount => "umount",
        }
    }

    /// Builds the state the command starts from in a fresh root.
    fn setup(self, ctx: &Ctx, root: &Path) -> Result {
        let i = &ctx.inputs;
        let steps: Vec<Vec<OsString>> = match self {
            Kind::Import => vec![],
            Kind::ApplyNew => vec![args(&["create", "L"])],
            Kind::ApplyContent => vec![args(&["create", "L"]), with(&["apply", "L"], &i.first)],
            Kind::ApplyChild => vec![
                args(&["create", "L"]),
                with(&["apply", "L"], &i.first),
                args(&["create", "C", "--parent", "L"]),
                with(&["apply", "C"], &i.small),
            ],
            Kind::Create => vec![
                args(&["create", "base"]),
                with(&["apply", "base"], &i.small),
            ],
            Kind::Rm | Kind::Mount | Kind::Umount => {
                let mut steps = vec![
                    args(&["create", "base"]),
                    with(&["apply", "base"], &i.small),
                    args(&["create", "X", "--parent", "base"]),
                    with(&["apply", "X"], &i.first),
                ];
                if self == Kind::Umount {
                    steps.push(args(&["mount", "X"]));
                }
                steps
            }
        };
        for step in steps {
            ctx.plies.ok(root, &step).context("setting up")?;
        }
        Ok(())
    }

    /// The command under test.
    fn command(self, ctx: &Ctx) -> Vec<OsString> {
        let i = &ctx.inputs;
        match self {
            Kind::Import => with(&["-q", "import"], &i.image),
            Kind::ApplyNew => with(&["apply", "L"], &i.fresh),
            Kind::ApplyContent | Kind::ApplyChild => with(&["apply", "L"], &i.second),
            Kind::Create => args(&["create", "X", "--parent", "base"]),
            Kind::Rm => args(&["rm", "X"]),
            Kind::Mount => args(&["mount", "X"]),
            Kind::Umount => args(&["umount", "X"]),
        }
    }
}

/// `--kinds` takes the kinds by [`Kind::name`].
impl clap::ValueEnum for Kind {
    fn value_variants<'a>() -> &'a [Kind] {
        &Kind::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// Command arguments from words.
fn args(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

/// Command arguments from words and a file.
fn with(words: &[&str], file: &Path) -> Vec<OsString> {
    let mut v = args(words);
    v.push(file.as_os_str().to_owned());
    v
}

/// A layer as `plies` shows it.
#[derive(Debug, Clone)]
pub(crate) struct LayerState {
    /// Its parent.
    parent: Option<String>,
    /// Its content, or why `plies diff` could not give it.
    content: std::result::Result<Fingerprint, String>,
    /// Where `plies mount` mounted it.
    mounted: Option<String>,
}

/// Every layer `plies ls` lists, by id.
pub(crate) type State = BTreeMap<String, LayerState>;

/// Lists the layers under `root` and reads each one's content.
pub(crate) fn snapshot(plies: &Plies, root: &Path) -> Result<State> {
    let mut state = State::new();
    for row in plies.ls(root)? {
        let diff = plies.run(root, &["diff", row.id.as_str()])?;
        let content = if diff.ok() {
            tarsum::fingerprint(&diff.stdout).map_err(|e| format!("{e:#}"))
        } else {
            Err(format!("plies diff failed: {}", diff.message()))
        };
        state.insert(
            row.id,
            LayerState {
                parent: row.parent,
                content,
                mounted: row.mounted,
            },
        );
    }
    Ok(state)
}

/// Whether a layer is in the given state (absent on both sides counts).
fn same(now: Option<&LayerState>, want: Option<&LayerState>) -> bool {
    match (now, want) {
        (None, None) => true,
        (Some(n), Some(w)) => {
            n.parent == w.parent && matches!((&n.content, &w.content), (Ok(a), Ok(b)) if a == b)
        }
        _ => false,
    }
}

/// How a layer differs from a wanted state, in a line.
fn describe(now: Option<&LayerState>, want: Option<&LayerState>) -> String {
    match (now, want) {
        (None, None) => "absent, as wanted".into(),
        (None, Some(_)) => "missing".into(),
        (Some(_), None) => "present, but should not be".into(),
        (Some(n), Some(w)) if n.parent != w.parent => {
            format!("parent {:?}, not {:?}", n.parent, w.parent)
        }
        (Some(n), Some(w)) => match (&n.content, &w.content) {
            (Err(e), _) => format!("unreadable: {e}"),
            (_, Err(e)) => format!("the reference is unreadable: {e}"),
            (Ok(a), Ok(b)) => tarsum::difference(b, a),
        },
    }
}

/// Short layer ids for messages.
fn short(id: &str) -> &str {
    match id.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 => &hex[..12],
        _ => id,
    }
}

/// Each layer that is in neither `before`'s nor `after`'s state, with why.
fn lost_layers(now: &State, before: &State, after: &State) -> Vec<String> {
    let ids: BTreeSet<&String> = now
        .keys()
        .chain(before.keys())
        .chain(after.keys())
        .collect();
    ids.into_iter()
        .filter(|id| {
            let n = now.get(*id);
            !same(n, before.get(*id)) && !same(n, after.get(*id))
        })
        .map(|id| {
            let n = now.get(id);
            let (b, a) = (describe(n, before.get(id)), describe(n, after.get(id)));
            if b == a {
                format!("layer {}: {b}", short(id))
            } else {
                format!(
                    "layer {}: against before: {b}; against after: {a}",
                    short(id)
                )
            }
        })
        .collect()
}

/// Mounts under `root` that no listed layer records.
fn leaked_mounts(root: &Path, state: &State) -> Vec<PathBuf> {
    let recorded: BTreeSet<PathBuf> = state
        .values()
        .filter_map(|l| l.mounted.as_ref().map(PathBuf::from))
        .collect();
    mounts_under(root)
        .into_iter()
        .filter(|m| !recorded.contains(m))
        .collect()
}

/// What the unkilled command does, from the kind's reference run.
pub(crate) struct Reference {
    /// The layers before the command.
    before: State,
    /// The layers after it.
    after: State,
    /// How long it ran.
    pub(crate) duration: Duration,
}

/// Sets the kind up in a fresh root, runs its command unkilled and records the
/// states before and after, and the time it took.
pub(crate) fn reference(ctx: &Ctx, kind: Kind) -> Result<Reference> {
    let root = ctx.dir.join(format!("ref-{}", kind.name()));
    remove_root(&root)?;
    let result = (|| {
        kind.setup(ctx, &root)?;
        let before = snapshot(&ctx.plies, &root)?;
        let run = ctx.plies.run(&root, &kind.command(ctx))?;
        if !run.ok() {
            bail!("the unkilled command failed:\n{}", run.transcript());
        }
        let after = snapshot(&ctx.plies, &root)?;
        let fsck = ctx.plies.run(&root, &["fsck"])?;
        if !fsck.ok() {
            bail!(
                "fsck after the unkilled command failed:\n{}",
                fsck.transcript()
            );
        }
        for (id, layer) in before.iter().chain(&after) {
            if let Err(e) = &layer.content {
                bail!("layer {}: {e}", short(id));
            }
        }
        Ok(Reference {
            before,
            after,
            duration: run.elapsed,
        })
    })();
    remove_root(&root)?;
    result
}

/// What fsck made of the store after the kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fsck {
    /// `plies fsck` passed.
    Clean,
    /// It failed, and passed after `plies fsck --repair`.
    Repaired,
    /// It still failed after the repair.
    Unrepairable,
}

/// `plies fsck`, and when it fails, `--repair` and `fsck` again; with the transcript.
pub(crate) fn fsck(plies: &Plies, root: &Path) -> Result<(Fsck, String)> {
    let first = plies.run(root, &["fsck"])?;
    if first.ok() {
        return Ok((Fsck::Clean, first.transcript()));
    }
    let repair = plies.run(root, &["fsck", "--repair"])?;
    let again = plies.run(root, &["fsck"])?;
    let log = format!(
        "{}{}{}",
        first.transcript(),
        repair.transcript(),
        again.transcript()
    );
    let outcome = if again.ok() {
        Fsck::Repaired
    } else {
        Fsck::Unrepairable
    };
    Ok((outcome, log))
}

/// What one trial found.
pub(crate) struct Trial {
    /// The root it ran in.
    pub(crate) root: PathBuf,
    /// The command ended by the SIGKILL (not before it).
    pub(crate) killed: bool,
    /// The kill's delay after the start.
    pub(crate) delay: Duration,
    /// The fsck outcome, and the transcript of the fsck runs.
    pub(crate) fsck: Option<(Fsck, String)>,
    /// Layers lost or wrong, one line each.
    pub(crate) lost: Vec<String>,
    /// Mounts nothing records.
    pub(crate) leaked: Vec<PathBuf>,
    /// Why the re-run failed.
    pub(crate) rerun: Option<String>,
    /// Why the trial could not be run to its end (the harness's or the setup's trouble).
    pub(crate) error: Option<String>,
}

impl Trial {
    /// One line: the kill, fsck's verdict and what failed.
    pub(crate) fn summary(&self) -> String {
        let mut parts = vec![format!(
            "{} at {:.1} ms",
            if self.killed {
                "killed"
            } else {
                "finished before the kill"
            },
            self.delay.as_secs_f64() * 1000.0
        )];
        if let Some((verdict, log)) = &self.fsck {
            let finding = log
                .lines()
                .filter(|l| l.starts_with("    "))
                .map(str::trim)
                .next()
                .unwrap_or("");
            parts.push(format!("fsck {verdict:?} {finding}").trim_end().to_string());
        }
        parts.extend(self.lost.iter().map(|l| format!("lost: {l}")));
        if !self.leaked.is_empty() {
            parts.push(format!("leaked mounts: {:?}", self.leaked));
        }
        if let Some(why) = &self.rerun {
            parts.push(format!("re-run: {}", why.lines().next().unwrap_or("")));
        }
        if let Some(why) = &self.error {
            parts.push(format!("error: {}", why.lines().next().unwrap_or("")));
        }
        parts.join("; ")
    }

    /// Whether anything failed.
    pub(crate) fn failed(&self) -> bool {
        matches!(self.fsck, Some((Fsck::Unrepairable, _)))
            || !self.lost.is_empty()
            || !self.leaked.is_empty()
            || self.rerun.is_some()
            || self.error.is_some()
    }
}

/// Runs trial `n` of `kind`, killing the command `delay` after its start. Leaves the
/// root in place for the caller to remove or keep.
pub(crate) fn trial(
    ctx: &Ctx,
    kind: Kind,
    n: usize,
    reference: &Reference,
    delay: Duration,
) -> Trial {
    let root = ctx.dir.join(format!("{}-{n}", kind.name()));
    let mut t = Trial {
        root: root.clone(),
        killed: false,
        delay,
        fsck: None,
        lost: Vec::new(),
        leaked: Vec::new(),
        rerun: None,
        error: None,
    };
    if let Err(e) = run_trial(ctx, kind, &root, reference, &mut t) {
        t.error = Some(format!("{e:#}"));
    }
    t
}

/// The body of [`trial`]: fills `t` in, or says why it could not go on.
fn run_trial(ctx: &Ctx, kind: Kind, root: &Path, reference: &Reference, t: &mut Trial) -> Result {
    let plies = &ctx.plies;
    remove_root(root)?;
    kind.setup(ctx, root)?;
    let before = snapshot(plies, root)?;
    let differs = lost_layers(&before, &reference.before, &reference.before);
    if !differs.is_empty() {
        bail!(
            "the setup differs from the reference's: {}",
            differs.join("; ")
        );
    }

    let run = plies.start(root, &kind.command(ctx))?.kill_after(t.delay);
    t.killed = run.killed();

    t.fsck = Some(fsck(plies, root)?);
    let now = match snapshot(plies, root) {
        Ok(now) => {
            t.lost = lost_layers(&now, &before, &reference.after);
            now
        }
        Err(e) => {
            t.lost = vec![format!("the layers cannot be listed: {e:#}")];
            State::new()
        }
    };
    t.leaked = leaked_mounts(root, &now);
    if let Err(e) = rerun(ctx, kind, root, &now, reference) {
        t.rerun = Some(format!("{e:#}"));
    }
    Ok(())
}

/// Runs the command again, unkilled, and checks that it ends in the reference's
/// after-state.
fn rerun(ctx: &Ctx, kind: Kind, root: &Path, now: &State, reference: &Reference) -> Result {
    let plies = &ctx.plies;
    let run = plies.run(root, &kind.command(ctx))?;
    let message = run.message();
    let listed = |id: &str| now.contains_key(id);
    let excused = match kind {
        Kind::Create => listed("X") && message.contains("already exists"),
        Kind::Rm => !listed("X") && message.contains("no such layer"),
        Kind::Umount => {
            now.get("X").is_none_or(|x| x.mounted.is_none()) && message.contains("not mounted")
        }
        _ => false,
    };
    if !run.ok() && !excused {
        bail!("the command failed again:\n{}", run.transcript());
    }
    let last = snapshot(plies, root)?;
    let wrong = lost_layers(&last, &reference.after, &reference.after);
    if !wrong.is_empty() {
        bail!(
            "after it, the store is not the reference's: {}",
            wrong.join("; ")
        );
    }
    for (id, layer) in &last {
        let want = reference.after.get(id).and_then(|l| l.mounted.as_ref());
        if layer.mounted.is_some() != want.is_some() {
            bail!(
                "after it, layer {} is recorded as mounted at {:?}, the reference's at {:?}",
                short(id),
                layer.mounted,
                want
            );
        }
    }
    if kind == Kind::Mount {
        let path = PathBuf::from(run.text());
        if !mounts_under(root).contains(&path) {
            bail!(
                "plies mount X printed {}, which is not a mount point",
                path.display()
            );
        }
    }
    let leaked = leaked_mounts(root, &last);
    if !leaked.is_empty() {
        bail!("after it, mounts nothing records: {leaked:?}");
    }
    let fsck = plies.run(root, &["fsck"])?;
    if !fsck.ok() {
        bail!("after it, fsck fails:\n{}", fsck.transcript());
    }
    Ok(())
}
