//! The list of paths a layer adds, modifies and deletes, with Docker's
//! `archive.Change` semantics: from an overlay upper directory or an aufs
//! writable branch and the layers below ([`from_overlay_upper`],
//! [`from_aufs_branch`]: cost grows with the change, not the image), or between
//! two full trees ([`between`], for copy-based drivers and naive diff).
//!
//! Both give the same list for the same change: paths absolute-style (`/etc/passwd`),
//! sorted by their bytes (Docker's order), a deleted directory without its contents,
//! an added directory with all of them, and every directory that holds a change
//! reported [`ChangeKind::Modified`] itself (the layer root excepted).
//!
//! [`between`]: fn@between

mod between;
mod tree;
mod upper;

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use rustix::fd::OwnedFd;
use rustix::fs::Stat;

pub use between::between;
use tree::{is_dir, mtime};
pub use upper::{from_aufs_branch, from_overlay_upper};

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "PascalCase"))]
pub struct Change {
    /// The path inside the layer, absolute-style: `/etc/passwd`.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// What happened to a path. Serialized (feature `serde`) as Docker's numbers (see
/// [`ChangeKind::as_docker_kind`]), so a serialized [`Change`] reads like an
/// item of Docker's container changes API: `{"Path":"/etc","Kind":0}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(into = "u8"))]
pub enum ChangeKind {
    /// Changed in place (content, metadata, or something inside a directory).
    Modified,
    /// New in this layer.
    Added,
    /// Removed by this layer.
    Deleted,
}

impl ChangeKind {
    /// Docker's number for the kind: `Modify` = 0, `Add` = 1, `Delete` = 2.
    pub fn as_docker_kind(self) -> u8 {
        match self {
            ChangeKind::Modified => 0,
            ChangeKind::Added => 1,
            ChangeKind::Deleted => 2,
        }
    }

    /// The letter `docker diff` prints: `C`, `A` or `D`.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Modified => 'C',
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
        }
    }
}

impl From<ChangeKind> for u8 {
    fn from(kind: ChangeKind) -> u8 {
        kind.as_docker_kind()
    }
}

impl fmt::Display for Change {
    /// As `docker diff` prints it: `C /etc`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.letter(), self.path.display())
    }
}

/// What went wrong while listing changes, and where.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// A system call failed on a path of one of the trees.
    #[error("{op} {path:?}")]
    Io {
        /// The operation, such as `fstatat` or `getdents`.
        op: &'static str,
        /// The full path it failed on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A directory of the upper layer was renamed (it has an overlay `redirect`
    /// xattr): its unchanged contents live under another path of a lower layer,
    /// so walking the upper cannot list them. Use [`between`] on the mounted view.
    ///
    /// [`between`]: fn@between
    #[error(
        "{path:?} is a renamed directory (overlay redirect): list this layer's changes with a full comparison"
    )]
    RedirectedDir {
        /// The full path of the directory in the upper layer.
        path: PathBuf,
    },
}

/// Docker's rule for times: equal, or the same second where one side has no
/// nanoseconds (tar and GNU tar keep whole seconds only).
fn same_fs_time(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 == b.0 && (a.1 == b.1 || a.1 == 0 || b.1 == 0)
}

/// Whether the metadata of two entries of the same path differ, by Docker's
/// rules: type and mode, owner, device number; for non-directories the size and
/// modification time too.
fn stat_differs(old: &Stat, new: &Stat) -> bool {
    old.st_mode != new.st_mode
        || old.st_uid != new.st_uid
        || old.st_gid != new.st_gid
        || old.st_rdev != new.st_rdev
        || (!is_dir(new) && (!same_fs_time(mtime(old), mtime(new)) || old.st_size != new.st_size))
}

/// The changes collected by a walk, before sorting.
#[derive(Default)]
struct Collected(Vec<(Vec<u8>, ChangeKind)>);

impl Collected {
    fn push(&mut self, path: Vec<u8>, kind: ChangeKind) {
        self.0.push((path, kind));
    }

    fn into_sorted(mut self) -> Vec<Change> {
        self.0.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.0
            .into_iter()
            .map(|(path, kind)| Change {
                path: PathBuf::from(OsString::from_vec(path)),
                kind,
            })
            .collect()
    }
}

/// One directory on the walk's stack.
struct Level<T> {
    /// The directory's path in the layer, `b""` for the root.
    path: Vec<u8>,
    /// The directory in the new tree (or upper).
    new: OwnedFd,
    /// What the walk compares it against.
    old: T,
    /// Names still to visit, last first.
    pending: Vec<Vec<u8>>,
    /// How many changes were collected before this directory.
    start: usize,
    /// Whether the directory itself is already reported (or is the root).
    reported: bool,
}

impl<T> Level<T> {
    /// Reports a directory that holds a change as modified, as Docker does so that
    /// a layer tar carries its metadata.
    fn finish(self, out: &mut Collected) {
        if out.0.len() > self.start && !self.reported {
            out.push(self.path, ChangeKind::Modified);
        }
    }
}
