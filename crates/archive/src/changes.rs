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

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use plies_whiteout::{
    NameKind, OPAQUE_MARKER, WHITEOUT_PREFIX, XattrNamespace, classify, is_opaque,
    is_overlay_whiteout,
};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::xattrs::{XattrSource, proc_path};

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Change {
    /// The path inside the layer, absolute-style: `/etc/passwd`.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// What happened to a path. Serialized as Docker's numbers (see
/// [`ChangeKind::as_docker_kind`]), so a serialized [`Change`] reads like an
/// item of Docker's container changes API: `{"Path":"/etc","Kind":0}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(into = "u8")]
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
    #[error("{op} {path:?}: {source}")]
    Io {
        /// The operation, such as `fstatat` or `getdents`.
        op: &'static str,
        /// The full path it failed on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A directory of the upper layer was renamed (it has an overlay `redirect`
    /// xattr): its unchanged contents live under another path of a lower layer,
    /// so walking the upper cannot list them. Use [`between`] on the mounted view.
    #[error(
        "{path:?} is a renamed directory (overlay redirect): list this layer's changes with a full comparison"
    )]
    RedirectedDir {
        /// The full path of the directory in the upper layer.
        path: PathBuf,
    },
}

/// A tree being read: its root path (for error messages only).
#[derive(Clone, Copy)]
struct Tree<'a> {
    root: &'a Path,
}

impl Tree<'_> {
    fn full(&self, rel: &[u8]) -> PathBuf {
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        self.root.join(OsStr::from_bytes(rel))
    }

    fn err(&self, op: &'static str, rel: &[u8], e: Errno) -> ChangesError {
        ChangesError::Io {
            op,
            path: self.full(rel),
            source: e.into(),
        }
    }

    fn open_root(&self) -> Result<OwnedFd, ChangesError> {
        rustix::fs::open(
            self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err("open", b"", e))
    }

    fn open_dir(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
    ) -> Result<OwnedFd, ChangesError> {
        rustix::fs::openat(
            dir,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.err("openat", rel, e))
    }

    /// `lstat` of `name` in `dir`; `None` when it does not exist.
    fn stat(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
    ) -> Result<Option<Stat>, ChangesError> {
        match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(e) => Err(self.err("fstatat", rel, e)),
        }
    }

    /// The names in `dir`, sorted by their bytes.
    fn names(&self, dir: BorrowedFd<'_>, rel: &[u8]) -> Result<Vec<Vec<u8>>, ChangesError> {
        let reader = rustix::fs::Dir::read_from(dir).map_err(|e| self.err("opendir", rel, e))?;
        let mut names = Vec::new();
        for entry in reader {
            let entry = entry.map_err(|e| self.err("getdents", rel, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// The xattrs of `name` in `dir` (sorted, storage-private overlay ones left
    /// out), listed by path through `/proc/self/fd/<dir>/<name>`: no open, and a
    /// symlink at the end is not followed. Where `/proc` is not mounted, through
    /// the full path.
    fn xattrs(&self, dir: BorrowedFd<'_>, name: &[u8], rel: &[u8]) -> Result<Xattrs, ChangesError> {
        let path = proc_path(dir, OsStr::from_bytes(name));
        match read_xattrs(XattrSource::Path(&path)) {
            Err(Errno::NOENT | Errno::NOTDIR) if !Path::new("/proc/self/fd").exists() => {
                read_xattrs(XattrSource::Path(self.full(rel).as_os_str()))
            }
            result => result,
        }
        .map_err(|e| self.err("llistxattr", rel, e))
    }

    fn readlink(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        rel: &[u8],
    ) -> Result<Vec<u8>, ChangesError> {
        rustix::fs::readlinkat(dir, OsStr::from_bytes(name), Vec::new())
            .map(|target| target.into_bytes())
            .map_err(|e| self.err("readlinkat", rel, e))
    }
}

type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn is_private_xattr(key: &[u8]) -> bool {
    [XattrNamespace::Trusted, XattrNamespace::User]
        .iter()
        .any(|ns| ns.is_overlay_xattr(key))
}

fn read_xattrs(source: XattrSource<'_>) -> Result<Xattrs, Errno> {
    loop {
        let size = match source.list_len() {
            Ok(size) => size,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut list = vec![0u8; size];
        let len = match source.list(&mut list) {
            Ok(len) => len,
            // Grew since the size query: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for key in list[..len].split(|b| *b == 0).filter(|k| !k.is_empty()) {
            if is_private_xattr(key) {
                continue;
            }
            let key_str = OsStr::from_bytes(key);
            let value = loop {
                let size = match source.value_len(key_str) {
                    Ok(size) => size,
                    Err(Errno::NODATA) => break None,
                    Err(e) => return Err(e),
                };
                let mut value = vec![0u8; size];
                match source.value(key_str, &mut value) {
                    Ok(len) => {
                        value.truncate(len);
                        break Some(value);
                    }
                    Err(Errno::RANGE) => continue,
                    Err(Errno::NODATA) => break None,
                    Err(e) => return Err(e),
                }
            };
            if let Some(value) = value {
                out.push((key.to_vec(), value));
            }
        }
        out.sort();
        return Ok(out);
    }
}

fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

fn is_dir(stat: &Stat) -> bool {
    file_type(stat) == FileType::Directory
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(parent.len() + 1 + name.len());
    path.extend_from_slice(parent);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
fn mtime(stat: &Stat) -> (i64, i64) {
    (stat.st_mtime as i64, stat.st_mtime_nsec as i64)
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

/// The changes that turn the tree `old_root` into the tree `new_root`, comparing
/// every entry of both: Docker's `ChangesDirs`.
///
/// An entry of both trees is modified when its type, permissions, owner, device
/// number or xattrs differ, or its symlink target, or, for a non-directory, its
/// size or modification time (equal seconds count as equal where one side has no
/// nanoseconds, as after a tar round trip; then the contents decide). A directory's
/// size and times are not compared; a directory holding a change is reported
/// modified. Entries with the same device and inode number in both trees are the
/// same entry and are not looked into. Overlay's private xattrs (`trusted.overlay.*`,
/// `user.overlay.*`) are not compared. Symlinks are never followed (the two roots
/// themselves excepted).
///
/// # Errors
///
/// [`ChangesError::Io`] naming the path when a root cannot be opened or a tree
/// cannot be read.
pub fn between(old_root: &Path, new_root: &Path) -> Result<Vec<Change>, ChangesError> {
    let old_tree = Tree { root: old_root };
    let new_tree = Tree { root: new_root };
    let old = old_tree.open_root()?;
    let new = new_tree.open_root()?;
    let mut out = Collected::default();
    let mut stack = vec![level(
        &old_tree,
        &new_tree,
        Some(old),
        new,
        Vec::new(),
        0,
        true,
    )?];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.pending.pop() else {
            if let Some(done) = stack.pop() {
                done.finish(&mut out);
            }
            continue;
        };
        let path = join(&top.path, &name);
        let old_stat = match &top.old {
            Some(dir) => old_tree.stat(dir.as_fd(), &name, &path)?,
            None => None,
        };
        let new_stat = new_tree.stat(top.new.as_fd(), &name, &path)?;
        let next = match (old_stat, new_stat) {
            (None, None) => None,
            (Some(_), None) => {
                out.push(path, ChangeKind::Deleted);
                None
            }
            (None, Some(new_stat)) => {
                out.push(path.clone(), ChangeKind::Added);
                is_dir(&new_stat).then(|| {
                    let new = new_tree.open_dir(top.new.as_fd(), &name, &path)?;
                    level(&old_tree, &new_tree, None, new, path, out.0.len(), true)
                })
            }
            (Some(old_stat), Some(new_stat)) => {
                if old_stat.st_dev == new_stat.st_dev && old_stat.st_ino == new_stat.st_ino {
                    continue;
                }
                let old_dir = top.old.as_ref().map(|fd| fd.as_fd());
                let changed = match old_dir {
                    Some(old_dir) => entry_differs(
                        (&old_tree, old_dir, &old_stat),
                        (&new_tree, top.new.as_fd(), &new_stat),
                        &name,
                        &path,
                    )?,
                    None => true,
                };
                if changed {
                    out.push(path.clone(), ChangeKind::Modified);
                }
                is_dir(&new_stat).then(|| {
                    let new = new_tree.open_dir(top.new.as_fd(), &name, &path)?;
                    let old = match (old_dir, is_dir(&old_stat)) {
                        (Some(dir), true) => Some(old_tree.open_dir(dir, &name, &path)?),
                        _ => None,
                    };
                    level(&old_tree, &new_tree, old, new, path, out.0.len(), changed)
                })
            }
        };
        if let Some(next) = next {
            stack.push(next?);
        }
    }
    Ok(out.into_sorted())
}

fn level(
    old_tree: &Tree<'_>,
    new_tree: &Tree<'_>,
    old: Option<OwnedFd>,
    new: OwnedFd,
    path: Vec<u8>,
    start: usize,
    reported: bool,
) -> Result<Level<Option<OwnedFd>>, ChangesError> {
    let mut pending = new_tree.names(new.as_fd(), &path)?;
    if let Some(old) = &old {
        pending.extend(old_tree.names(old.as_fd(), &path)?);
        pending.sort_unstable();
        pending.dedup();
    }
    pending.reverse();
    Ok(Level {
        path,
        new,
        old,
        pending,
        start,
        reported,
    })
}

/// Whether the entry `name` differs between the old and the new tree (both exist).
fn entry_differs(
    (old_tree, old_dir, old): (&Tree<'_>, BorrowedFd<'_>, &Stat),
    (new_tree, new_dir, new): (&Tree<'_>, BorrowedFd<'_>, &Stat),
    name: &[u8],
    path: &[u8],
) -> Result<bool, ChangesError> {
    if stat_differs(old, new) {
        return Ok(true);
    }
    let kind = file_type(new);
    if kind == FileType::Symlink
        && old_tree.readlink(old_dir, name, path)? != new_tree.readlink(new_dir, name, path)?
    {
        return Ok(true);
    }
    if old_tree.xattrs(old_dir, name, path)? != new_tree.xattrs(new_dir, name, path)? {
        return Ok(true);
    }
    if kind == FileType::RegularFile && mtime(old) != mtime(new) {
        // Equal only by the whole-second rule: let the contents decide.
        return contents_differ((old_tree, old_dir), (new_tree, new_dir), name, path);
    }
    Ok(false)
}

fn contents_differ(
    (old_tree, old_dir): (&Tree<'_>, BorrowedFd<'_>),
    (new_tree, new_dir): (&Tree<'_>, BorrowedFd<'_>),
    name: &[u8],
    path: &[u8],
) -> Result<bool, ChangesError> {
    let open = |tree: &Tree<'_>, dir| {
        rustix::fs::openat(
            dir,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| tree.err("openat", path, e))
    };
    let (a, b) = (open(old_tree, old_dir)?, open(new_tree, new_dir)?);
    let mut buf_a = vec![0u8; 64 * 1024];
    let mut buf_b = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&a, &mut buf_a).map_err(|e| old_tree.err("read", path, e))?;
        let m = read_full(&b, &mut buf_b).map_err(|e| new_tree.err("read", path, e))?;
        if buf_a[..n] != buf_b[..m] {
            return Ok(true);
        }
        if n == 0 {
            return Ok(false);
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::io::read(fd, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// How a layer directory marks deletions and opaque directories.
#[derive(Clone, Copy)]
enum Marks {
    /// Overlay: 0/0 character devices and the `opaque` xattr of `ns`.
    Overlay(XattrNamespace),
    /// aufs: `.wh.<name>` entries and a `.wh..wh..opq` entry in the directory.
    Aufs,
}

/// What one name of an upper directory stands for.
enum UpperEntry {
    /// An entry of the layer.
    Node(Stat),
    /// A whiteout deleting the entry of this name.
    Whiteout(Vec<u8>),
    /// Nothing of the layer's own: private marks, or gone since listed.
    Skip,
}

impl Marks {
    fn is_opaque(self, tree: &Tree<'_>, dir: &OwnedFd, rel: &[u8]) -> Result<bool, ChangesError> {
        match self {
            Marks::Overlay(ns) => is_opaque(dir, ns).map_err(|e| whiteout_err(tree, rel, e)),
            Marks::Aufs => Ok(tree.stat(dir.as_fd(), AUFS_OPAQUE, rel)?.is_some()),
        }
    }

    /// What `name` in the upper directory `dir` (at `path`, below `parent`) is.
    fn upper_entry(
        self,
        tree: &Tree<'_>,
        dir: BorrowedFd<'_>,
        parent: &[u8],
        name: &[u8],
        path: &[u8],
    ) -> Result<UpperEntry, ChangesError> {
        let kind = classify(OsStr::from_bytes(name));
        match self {
            Marks::Overlay(_) => {
                if parent.is_empty() && matches!(kind, Ok(NameKind::AufsMeta(_))) {
                    return Ok(UpperEntry::Skip);
                }
                Ok(match tree.stat(dir, name, path)? {
                    Some(stat) if is_overlay_whiteout(&stat) => UpperEntry::Whiteout(name.to_vec()),
                    Some(stat) => UpperEntry::Node(stat),
                    None => UpperEntry::Skip,
                })
            }
            Marks::Aufs => match kind {
                Ok(NameKind::Opaque | NameKind::AufsMeta(_)) => Ok(UpperEntry::Skip),
                Ok(NameKind::Whiteout(target)) => {
                    let target = target.as_bytes();
                    // A whiteout beside an entry of its name hides nothing the
                    // union shows.
                    if tree.stat(dir, target, &join(parent, target))?.is_some() {
                        Ok(UpperEntry::Skip)
                    } else {
                        Ok(UpperEntry::Whiteout(target.to_vec()))
                    }
                }
                _ => Ok(tree
                    .stat(dir, name, path)?
                    .map_or(UpperEntry::Skip, UpperEntry::Node)),
            },
        }
    }

    /// `lstat` of `name` in the lower directory `dir`: `Some(None)` when a
    /// whiteout there hides it (and everything below), `None` when the directory
    /// has nothing of that name.
    fn lower_entry(
        self,
        tree: &Tree<'_>,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<Option<Option<Stat>>, ChangesError> {
        match self {
            Marks::Overlay(_) => Ok(tree
                .stat(dir, name, path)?
                .map(|stat| (!is_overlay_whiteout(&stat)).then_some(stat))),
            Marks::Aufs => {
                if is_aufs_special(name) {
                    return Ok(None);
                }
                if let Some(stat) = tree.stat(dir, name, path)? {
                    return Ok(Some(Some(stat)));
                }
                let mut whiteout = AUFS_WHITEOUT.to_vec();
                whiteout.extend_from_slice(name);
                Ok(tree.stat(dir, &whiteout, path)?.map(|_| None))
            }
        }
    }

    /// What a name in a lower directory shows: `Some(name)` for an entry of that
    /// name, `Some(target)` with `hidden` for a whiteout of `target`, `None` for
    /// a private mark.
    fn lower_name<'n>(
        self,
        tree: &Tree<'_>,
        dir: BorrowedFd<'_>,
        name: &'n [u8],
        path: &[u8],
    ) -> Result<Option<(&'n [u8], bool)>, ChangesError> {
        match self {
            Marks::Overlay(_) => {
                let whiteout = tree
                    .stat(dir, name, path)?
                    .is_some_and(|stat| is_overlay_whiteout(&stat));
                Ok(Some((name, whiteout)))
            }
            Marks::Aufs => Ok(match classify(OsStr::from_bytes(name)) {
                Ok(NameKind::Plain) => Some((name, false)),
                Ok(NameKind::Whiteout(target)) => Some((target.as_bytes(), true)),
                _ => None,
            }),
        }
    }
}

const AUFS_OPAQUE: &[u8] = OPAQUE_MARKER.as_bytes();
const AUFS_WHITEOUT: &[u8] = WHITEOUT_PREFIX.as_bytes();

/// Whether a name is one of aufs's marks rather than an entry.
fn is_aufs_special(name: &[u8]) -> bool {
    name.starts_with(AUFS_WHITEOUT)
}

/// What the upper's directory is compared against: the lower layers' view of
/// the same path.
struct Lowers {
    /// The lower directories that make up the old view of this path, uppermost
    /// first (the list ends at an opaque one), each with the index of its layer.
    dirs: Vec<(usize, OwnedFd)>,
    /// Whether the mounted view merges them under the upper directory; when it
    /// does not (an opaque upper directory, or one below it), everything of
    /// theirs that the upper lacks is deleted.
    merged: bool,
}

/// The changes an overlay upper directory makes to its lower layers (given
/// uppermost first), walking only the upper: cost grows with the change, not the
/// image. Docker's overlay `Changes`.
///
/// A 0/0 character device is a deletion; any other entry is modified when the
/// lowers have its path and added when they do not. An opaque directory deletes
/// what the lowers have in it and the upper does not (down its whole subtree). A
/// directory the lowers also have is modified when its permissions, owner or xattrs
/// differ, or when it holds a change, as in [`between`]; so for a mounted overlay,
/// this list is the one [`between`] gives for the lowers' view and the mounted
/// view. The lowers are read with their own whiteouts and opaque directories, in
/// the namespace `ns`. aufs private entries (`/.wh..wh.*`) at the root are skipped.
///
/// Like Docker's, this list calls modified any entry the upper holds: one copied
/// up without a lasting change (a chmod and back, a file opened for writing and
/// not written) is modified here and unchanged for [`between`]. A whiteout is a
/// deletion even where the lowers have nothing of that name.
///
/// # Errors
///
/// [`ChangesError::RedirectedDir`] for a renamed directory (overlay `redirect`),
/// which only [`between`] can handle; [`ChangesError::Io`] naming the path when a
/// tree cannot be read.
pub fn from_overlay_upper(
    upper: &Path,
    lowers: &[PathBuf],
    ns: XattrNamespace,
) -> Result<Vec<Change>, ChangesError> {
    from_upper(upper, lowers, Marks::Overlay(ns))
}

/// The changes an aufs writable branch makes to the read-only branches below it
/// (given uppermost first), walking only the branch: Docker's aufs `Changes`,
/// with the lowers' own whiteouts honoured.
///
/// The same list as [`from_overlay_upper`] gives for the same change, read in
/// aufs's format: `.wh.<name>` is a deletion of `<name>`, a directory holding
/// `.wh..wh..opq` is opaque, and the other `.wh..wh.*` entries (the pseudo-link
/// directory `.wh..wh.plnk`, `.wh..wh.aufs`, `.wh..wh.orph`) are aufs's own and
/// not changes. The lower branches are read with their `.wh.` whiteouts and
/// opaque markers, so a path deleted by a lower branch and made again here is
/// added, where Docker, which only asks whether any branch holds the path, calls
/// it modified.
///
/// # Errors
///
/// [`ChangesError::Io`] naming the path when a branch cannot be read.
pub fn from_aufs_branch(branch: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>, ChangesError> {
    from_upper(branch, lowers, Marks::Aufs)
}

fn from_upper(upper: &Path, lowers: &[PathBuf], marks: Marks) -> Result<Vec<Change>, ChangesError> {
    let upper_tree = Tree { root: upper };
    let upper_fd = upper_tree.open_root()?;
    let lower_trees: Vec<Tree<'_>> = lowers.iter().map(|root| Tree { root }).collect();
    let lower_tree = lower_trees.as_slice();
    let mut root_lowers = Vec::new();
    for (index, tree) in lower_trees.iter().enumerate() {
        let fd = tree.open_root()?;
        let opaque = marks.is_opaque(tree, &fd, b"")?;
        root_lowers.push((index, fd));
        if opaque {
            break;
        }
    }
    let upper_opaque = marks.is_opaque(&upper_tree, &upper_fd, b"")?;
    let mut out = Collected::default();
    let root = Lowers {
        dirs: root_lowers,
        merged: !upper_opaque,
    };
    let walk = Walk {
        upper: &upper_tree,
        lowers: lower_tree,
        marks,
    };
    let mut stack = vec![walk.level(upper_fd, root, Vec::new(), &mut out, true)?];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.pending.pop() else {
            if let Some(done) = stack.pop() {
                done.finish(&mut out);
            }
            continue;
        };
        let path = join(&top.path, &name);
        let stat = match marks.upper_entry(&upper_tree, top.new.as_fd(), &top.path, &name, &path)? {
            UpperEntry::Skip => continue,
            UpperEntry::Whiteout(target) => {
                out.push(join(&top.path, &target), ChangeKind::Deleted);
                continue;
            }
            UpperEntry::Node(stat) => stat,
        };
        let old = walk.lookup_lower(&top.old.dirs, &name, &path)?;
        if !is_dir(&stat) {
            let kind = if old.is_some() {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            };
            out.push(path, kind);
            continue;
        }
        let dir = upper_tree.open_dir(top.new.as_fd(), &name, &path)?;
        if let Marks::Overlay(ns) = marks {
            if rustix::fs::fgetxattr_query(&dir, ns.redirect_key()).is_ok() {
                return Err(ChangesError::RedirectedDir {
                    path: upper_tree.full(&path),
                });
            }
        }
        let opaque = marks.is_opaque(&upper_tree, &dir, &path)?;
        let (reported, dirs) = match old {
            None => {
                out.push(path.clone(), ChangeKind::Added);
                (true, Vec::new())
            }
            Some((old_stat, index)) if is_dir(&old_stat) => {
                let dirs = walk.lower_dirs(&top.old.dirs[index..], &name, &path)?;
                let changed = match dirs.first() {
                    Some((layer, lower_dir)) => {
                        stat_differs(&old_stat, &stat)
                            || fd_xattrs(&lower_tree[*layer], lower_dir, &path)?
                                != fd_xattrs(&upper_tree, &dir, &path)?
                    }
                    None => true,
                };
                if changed {
                    out.push(path.clone(), ChangeKind::Modified);
                }
                (changed, dirs)
            }
            Some(_) => {
                out.push(path.clone(), ChangeKind::Modified);
                (true, Vec::new())
            }
        };
        let lowers = Lowers {
            dirs,
            merged: top.old.merged && !opaque,
        };
        let next = walk.level(dir, lowers, path, &mut out, reported)?;
        stack.push(next);
    }
    Ok(out.into_sorted())
}

fn whiteout_err(tree: &Tree<'_>, rel: &[u8], e: plies_whiteout::Error) -> ChangesError {
    let source = match e {
        plies_whiteout::Error::Io { source, .. } => source,
        other => std::io::Error::other(other),
    };
    ChangesError::Io {
        op: "fgetxattr",
        path: tree.full(rel),
        source,
    }
}

/// The trees of an upper walk and how they mark deletions.
struct Walk<'a> {
    upper: &'a Tree<'a>,
    lowers: &'a [Tree<'a>],
    marks: Marks,
}

impl Walk<'_> {
    /// Opens the level of an upper directory; where the mounted view does not
    /// merge the lowers, reports what they have and the upper lacks as deleted.
    fn level(
        &self,
        dir: OwnedFd,
        lowers: Lowers,
        path: Vec<u8>,
        out: &mut Collected,
        reported: bool,
    ) -> Result<Level<Lowers>, ChangesError> {
        let mut pending = self.upper.names(dir.as_fd(), &path)?;
        let start = out.0.len();
        if !lowers.merged && !lowers.dirs.is_empty() {
            // A whiteout in the upper stands for its target: that deletion is
            // reported when the walk reaches it.
            let mut upper_names: HashSet<&[u8]> = HashSet::new();
            for name in &pending {
                upper_names.insert(name.as_slice());
                if let (Marks::Aufs, Some(target)) = (self.marks, name.strip_prefix(AUFS_WHITEOUT))
                {
                    upper_names.insert(target);
                }
            }
            for name in self.lower_names(&lowers.dirs, &path)? {
                if !upper_names.contains(name.as_slice()) {
                    out.push(join(&path, &name), ChangeKind::Deleted);
                }
            }
        }
        pending.reverse();
        Ok(Level {
            path,
            new: dir,
            old: lowers,
            pending,
            start,
            reported,
        })
    }

    /// The entry the lowers show for `name`, and the position in `dirs` of the
    /// directory it is in.
    fn lookup_lower(
        &self,
        dirs: &[(usize, OwnedFd)],
        name: &[u8],
        path: &[u8],
    ) -> Result<Option<(Stat, usize)>, ChangesError> {
        for (position, (layer, dir)) in dirs.iter().enumerate() {
            match self
                .marks
                .lower_entry(&self.lowers[*layer], dir.as_fd(), name, path)?
            {
                Some(Some(stat)) => return Ok(Some((stat, position))),
                Some(None) => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// The lower directories named `name` under `dirs` that the lowers' view
    /// merges, uppermost first, down to the first opaque one, whiteout or
    /// non-directory.
    fn lower_dirs(
        &self,
        dirs: &[(usize, OwnedFd)],
        name: &[u8],
        path: &[u8],
    ) -> Result<Vec<(usize, OwnedFd)>, ChangesError> {
        let mut out = Vec::new();
        for (layer, dir) in dirs {
            let tree = &self.lowers[*layer];
            let stat = match self.marks.lower_entry(tree, dir.as_fd(), name, path)? {
                None => continue,
                Some(None) => break,
                Some(Some(stat)) => stat,
            };
            if !is_dir(&stat) {
                break;
            }
            let child = tree.open_dir(dir.as_fd(), name, path)?;
            let opaque = self.marks.is_opaque(tree, &child, path)?;
            out.push((*layer, child));
            if opaque {
                break;
            }
        }
        Ok(out)
    }

    /// The names the lowers' view shows in a directory made of `dirs`.
    fn lower_names(
        &self,
        dirs: &[(usize, OwnedFd)],
        path: &[u8],
    ) -> Result<Vec<Vec<u8>>, ChangesError> {
        let mut shown: Vec<Vec<u8>> = Vec::new();
        let mut decided: HashSet<Vec<u8>> = HashSet::new();
        for (layer, dir) in dirs {
            let tree = &self.lowers[*layer];
            for name in tree.names(dir.as_fd(), path)? {
                let child = join(path, &name);
                let Some((shows, hidden)) =
                    self.marks.lower_name(tree, dir.as_fd(), &name, &child)?
                else {
                    continue;
                };
                if decided.contains(shows) {
                    continue;
                }
                if !hidden {
                    shown.push(shows.to_vec());
                }
                decided.insert(shows.to_vec());
            }
        }
        shown.sort_unstable();
        Ok(shown)
    }
}

/// The xattrs of an open directory.
fn fd_xattrs(tree: &Tree<'_>, dir: &OwnedFd, path: &[u8]) -> Result<Xattrs, ChangesError> {
    read_xattrs(XattrSource::Fd(dir.as_fd())).map_err(|e| tree.err("flistxattr", path, e))
}
