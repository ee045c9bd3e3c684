//! The one error type of this crate.

use std::path::PathBuf;

/// Which kind of mount a plan or call list describes; carried by errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// Legacy `mount(2)` data with absolute paths.
    Absolute,
    /// Legacy `mount(2)` data with paths relative to the store's home.
    Relative,
    /// New mount API: `fsopen`/`fsconfig` parameters.
    Fsconfig,
    /// aufs: a first `mount(2)` then `MS_REMOUNT` appends.
    Aufs,
}

impl std::fmt::Display for PlanKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlanKind::Absolute => "absolute overlay mount data",
            PlanKind::Relative => "relative overlay mount data",
            PlanKind::Fsconfig => "fsconfig overlay plan",
            PlanKind::Aufs => "aufs mount calls",
        })
    }
}

/// Why a layer stack could not be planned or mounted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Even the shortest form of the mount data does not fit in one page.
    #[error("overlay mount data needs {needed} bytes, the kernel takes at most {limit}")]
    TooLong {
        /// Bytes the shortest possible data needs (without its NUL).
        needed: usize,
        /// Bytes the kernel takes (`page_size() - 1`).
        limit: usize,
    },
    /// More lower layers than allowed.
    #[error("{depth} lower layers exceed the maximum of {max}")]
    TooDeep {
        /// Lower layers asked for.
        depth: usize,
        /// The maximum in force.
        max: usize,
    },
    /// The requested maximum depth is above what the kernel can stack.
    #[error("a maximum depth of {requested} is above the kernel's stack limit of {limit}")]
    MaxDepthAboveKernel {
        /// The maximum asked for.
        requested: usize,
        /// [`crate::KERNEL_MAX_STACK`].
        limit: usize,
    },
    /// An overlay mount needs at least one lower layer.
    #[error("an overlay mount needs at least one lower layer")]
    NoLowers,
    /// A read-only overlay mount (no upper dir) needs at least two lower layers.
    #[error("a read-only overlay mount needs at least two lower layers, got {0}")]
    ReadOnlyNeedsTwoLowers(usize),
    /// A path cannot be written into mount data at all.
    #[error("{role} path {path:?} cannot be mounted: {reason}")]
    InvalidPath {
        /// What the path is for (`lowerdir`, `upperdir`, `workdir`, `aufs branch`, …).
        role: &'static str,
        /// The path as given.
        path: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A single `fsconfig` value is longer than the kernel takes.
    #[error("fsconfig value for {key} is {len} bytes, the kernel takes at most {limit}: {value:?}")]
    ValueTooLong {
        /// The parameter (`lowerdir+`, `upperdir`, …).
        key: &'static str,
        /// The value.
        value: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// [`crate::FSCONFIG_VALUE_MAX`].
        limit: usize,
    },
    /// An aufs branch does not fit in one mount call even on its own.
    #[error(
        "aufs branch {branch:?} needs {needed} bytes in one mount call, the kernel takes at most {limit}"
    )]
    BranchTooLong {
        /// The branch.
        branch: PathBuf,
        /// Bytes its call needs.
        needed: usize,
        /// Bytes the kernel takes.
        limit: usize,
    },
    /// The SELinux label is unusable in mount data.
    #[error("mount label {label:?} cannot be used: {reason}")]
    InvalidLabel {
        /// The label.
        label: String,
        /// Why.
        reason: &'static str,
    },
    /// A syscall carrying out a plan failed.
    #[error("{kind} at {target:?}: {step} failed{}", kernel_log_suffix(.kernel_log))]
    Mount {
        /// The kind of plan being carried out.
        kind: PlanKind,
        /// The mount point.
        target: PathBuf,
        /// The step that failed (`mount`, `fsconfig lowerdir+`, `remount append`, …).
        step: String,
        /// Messages the kernel left on the fs context (new mount API only).
        kernel_log: Vec<String>,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}

fn kernel_log_suffix(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (kernel: {})", log.join("; "))
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
