//! The crate's error type.

use std::path::PathBuf;

/// What went wrong in a parser, with the directory handed to [`crate::probe_all`],
/// or with a [`crate::quota::Control`].
///
/// Probes themselves never return this: a probe that cannot run answers
/// [`crate::Outcome::Unsupported`] with its reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A kernel release string (`uname -r`) has no `major.minor` prefix.
    #[error("kernel release {release:?} is not of the form major.minor[.patch][suffix]")]
    KernelRelease {
        /// The release string as given.
        release: String,
    },
    /// A line of `/proc/filesystems` is not `[nodev]\t<name>`.
    #[error("line {line} of /proc/filesystems is malformed: {text:?}")]
    FilesystemsLine {
        /// 1-based line number.
        line: usize,
        /// The line's text.
        text: String,
    },
    /// A line of a `uid_map`/`gid_map` file is not three unsigned numbers.
    #[error("line {line} of the id map is malformed: {text:?}")]
    IdMapLine {
        /// 1-based line number.
        line: usize,
        /// The line's text.
        text: String,
    },
    /// The directory to probe could not be inspected.
    #[error("cannot probe {path}")]
    ProbeDir {
        /// The directory given to the probe.
        path: PathBuf,
        /// Why it could not be used.
        #[source]
        source: std::io::Error,
    },
    /// The path to probe exists but is not a directory.
    #[error("cannot probe {path}: not a directory")]
    NotADirectory {
        /// The path given to the probe.
        path: PathBuf,
    },
    /// Project quota cannot be used at a directory: the kernel or the filesystem
    /// refused (no block device node allowed, quota accounting or enforcement off,
    /// no project ids on this filesystem).
    #[error("project quota is not usable at {path}: {reason}")]
    QuotaUnsupported {
        /// The directory quota was asked for.
        path: PathBuf,
        /// What refused, with the kernel's error.
        reason: String,
    },
    /// A quota system call or a file operation for it failed.
    #[error("{call} on {path}")]
    QuotaCall {
        /// The call, e.g. `quotactl(Q_XSETQLIM) for project 7`.
        call: String,
        /// The path it was made on.
        path: PathBuf,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// Every project id above the home directory's is taken.
    #[error("no free project id left under {path}")]
    ProjectIdsExhausted {
        /// The quota control's home directory.
        path: PathBuf,
    },
}
