//! Checking a store and repairing what can be repaired safely: the findings and
//! the report here, the overlay2 walk in `overlay2`, probe scratch in `scratch`.

mod overlay2;
mod scratch;

use std::path::PathBuf;

use crate::error::Result;

pub(crate) use scratch::check_probe_scratch;
pub use scratch::sweep_probe_scratch;

/// One thing found wrong in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// A `-creating` or `-removing` entry an interrupted operation left
    /// (repair: finish the removal or roll the create back), or a copy of a
    /// layer's diff that an interrupted apply left, `-applying` (repair: delete
    /// the copy; the layer's own diff is whole).
    Leftover {
        /// The entry, relative to the store root.
        path: PathBuf,
    },
    /// Something the store does not know (a non-link in `l/`, a bad name);
    /// left alone.
    UnexpectedEntry {
        /// The entry.
        path: PathBuf,
    },
    /// An `l/` link to a layer that does not exist (repair: delete the link).
    DanglingLink {
        /// The link id.
        link: String,
        /// The layer it names.
        layer: String,
    },
    /// An `l/` link that does not point at `../<id>/diff` (repair: delete the link;
    /// it holds no data).
    BadLinkTarget {
        /// The link id.
        link: String,
        /// Its target (lossy).
        target: String,
    },
    /// A layer whose `l/<link>` is missing (repair: recreate it from the `link` file).
    MissingLink {
        /// The layer.
        layer: String,
        /// Its link id.
        link: String,
    },
    /// A layer whose `link` file is missing, empty or malformed (repair: restore
    /// it from an `l/` link pointing at the layer, else draw a new link id).
    BadLinkFile {
        /// The layer.
        layer: String,
        /// The link id written by the repair, when repaired.
        restored: Option<String>,
    },
    /// A layer's `link` file names a link that points at another layer.
    LinkConflict {
        /// The layer.
        layer: String,
        /// The link id.
        link: String,
        /// The layer the link points at.
        owner: String,
    },
    /// A second `l/` link to a layer that nothing uses (repair: delete it).
    ExtraLink {
        /// The layer.
        layer: String,
        /// The unused link id.
        link: String,
    },
    /// A layer without its `diff` directory. Never repaired.
    MissingDiff {
        /// The layer.
        layer: String,
    },
    /// A malformed `lower` file (or aufs `layers/<id>` file).
    BadLower {
        /// The layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer whose parent is gone: its first lower entry names no layer.
    ParentGone {
        /// The layer.
        layer: String,
        /// The lower entry (link id, or aufs parent id).
        entry: String,
    },
    /// A lower entry below the parent that names no layer.
    MissingLower {
        /// The layer.
        layer: String,
        /// The lower entry (link id, or aufs ancestor id).
        entry: String,
    },
    /// A lower entry naming a link id a layer lost with its `link` file; the layer
    /// is known by the rest of the chain (repair: rewrite the entry to the
    /// layer's new link id).
    StaleLowerEntry {
        /// The layer whose `lower` holds the entry.
        layer: String,
        /// The stale entry (`l/<old>`).
        entry: String,
        /// The layer it belonged to.
        owner: String,
    },
    /// A layer whose ancestry loops.
    Cycle {
        /// The layer.
        layer: String,
    },
    /// A layer with more lower layers than the store allows.
    TooDeep {
        /// The layer.
        layer: String,
        /// Its depth (or a lower bound).
        depth: usize,
        /// The store's maximum.
        max: usize,
    },
    /// An aufs layer without its `mnt/<id>` directory (repair: create it).
    MissingMountDir {
        /// The layer.
        layer: String,
    },
    /// An aufs `diff/<id>` without `layers/<id>`: data of no layer. Never deleted.
    OrphanDiff {
        /// The id.
        id: String,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Leftover { path } => {
                write!(f, "{}: left by an interrupted operation", path.display())
            }
            Finding::UnexpectedEntry { path } => {
                write!(f, "{}: not part of the store's layout", path.display())
            }
            Finding::DanglingLink { link, layer } => {
                write!(
                    f,
                    "link l/{link} points at layer {layer}, which does not exist"
                )
            }
            Finding::BadLinkTarget { link, target } => {
                write!(
                    f,
                    "link l/{link} points at {target:?}, not at a layer's diff"
                )
            }
            Finding::MissingLink { layer, link } => {
                write!(f, "layer {layer}: its link l/{link} is missing")
            }
            Finding::BadLinkFile { layer, restored } => match restored {
                Some(link) => write!(f, "layer {layer}: bad link file, restored as {link}"),
                None => write!(f, "layer {layer}: its link file is missing or malformed"),
            },
            Finding::LinkConflict { layer, link, owner } => write!(
                f,
                "layer {layer}: its link file names l/{link}, which points at layer {owner}"
            ),
            Finding::ExtraLink { layer, link } => {
                write!(f, "layer {layer}: unused second link l/{link}")
            }
            Finding::MissingDiff { layer } => write!(f, "layer {layer}: its diff is missing"),
            Finding::BadLower { layer, reason } => {
                write!(f, "layer {layer}: bad lower file: {reason}")
            }
            Finding::ParentGone { layer, entry } => {
                write!(f, "layer {layer}: its parent {entry} is gone")
            }
            Finding::MissingLower { layer, entry } => {
                write!(f, "layer {layer}: lower {entry} names no layer")
            }
            Finding::StaleLowerEntry {
                layer,
                entry,
                owner,
            } => write!(
                f,
                "layer {layer}: lower entry {entry} is the old link of layer {owner}"
            ),
            Finding::Cycle { layer } => write!(f, "layer {layer}: its ancestry loops"),
            Finding::TooDeep { layer, depth, max } => write!(
                f,
                "layer {layer}: {depth} lower layers, more than the maximum of {max}"
            ),
            Finding::MissingMountDir { layer } => {
                write!(f, "layer {layer}: its mount directory is missing")
            }
            Finding::OrphanDiff { id } => write!(f, "diff/{id}: data of no layer"),
        }
    }
}

impl Finding {
    /// Whether `fsck(true)` knows a safe repair for this finding.
    pub fn is_repairable(&self) -> bool {
        matches!(
            self,
            Finding::Leftover { .. }
                | Finding::DanglingLink { .. }
                | Finding::BadLinkTarget { .. }
                | Finding::MissingLink { .. }
                | Finding::BadLinkFile { .. }
                | Finding::ExtraLink { .. }
                | Finding::StaleLowerEntry { .. }
                | Finding::MissingMountDir { .. }
        )
    }
}

/// What became of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Repaired.
    Repaired,
    /// Repairable, but `fsck` ran without `repair`.
    Repairable,
    /// No safe repair: it needs a person (or it is data the store never deletes).
    Unrepairable,
}

/// A finding and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsckEntry {
    /// What was found.
    pub finding: Finding,
    /// What was done about it.
    pub outcome: Repair,
}

/// Everything `fsck` found, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// The findings.
    pub entries: Vec<FsckEntry>,
}

impl FsckReport {
    /// True when nothing was found.
    pub fn is_clean(&self) -> bool {
        self.entries.is_empty()
    }

    /// The findings left without a repair.
    pub fn unrepairable(&self) -> impl Iterator<Item = &Finding> {
        self.entries
            .iter()
            .filter(|e| e.outcome == Repair::Unrepairable)
            .map(|e| &e.finding)
    }

    /// Records a finding with what was done about it.
    pub fn push(&mut self, finding: Finding, outcome: Repair) {
        tracing::debug!(?finding, ?outcome, "fsck");
        self.entries.push(FsckEntry { finding, outcome });
    }

    /// Records a finding: repaired by `fix` when `repair` is set and the finding is
    /// repairable, else marked as such.
    ///
    /// # Errors
    /// What `fix` failed with.
    pub fn handle(
        &mut self,
        finding: Finding,
        repair: bool,
        fix: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let outcome = if !finding.is_repairable() {
            Repair::Unrepairable
        } else if repair {
            fix()?;
            Repair::Repaired
        } else {
            Repair::Repairable
        };
        self.push(finding, outcome);
        Ok(())
    }
}
