//! The changes an overlay upper directory or an aufs writable branch makes
//! to the layers below it, walking only the upper.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use plies_whiteout::{
    NameKind, OPAQUE_MARKER, WHITEOUT_PREFIX, XattrNamespace, classify, is_opaque,
    is_overlay_whiteout,
};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::Stat;

use super::tree::{Tree, fd_xattrs, is_dir, join};
use super::{Change, ChangeKind, ChangesError, Collected, Level, stat_differs};

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
///
/// [`between`]: fn@super::between
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
            match &old {
                None => out.push(path, ChangeKind::Added),
                // Copied up without a change (a hard link made to it, an open
                // for writing that wrote nothing): what a comparison of the two
                // trees would not report either.
                Some((old_stat, position))
                    if !stat_differs(old_stat, &stat)
                        && walk.same_xattrs(
                            &top.old.dirs[*position],
                            top.new.as_fd(),
                            &name,
                            &path,
                        )? => {}
                Some(_) => out.push(path, ChangeKind::Modified),
            }
            continue;
        }
        let next = walk.enter_dir(top, &name, path, &stat, old, &mut out)?;
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
    /// The level of the upper directory `name` of `top` (at `path`, found in
    /// the lowers as `old`): reports it added or modified as it compares to
    /// the lowers' directory, and opens those of the lowers it is merged with.
    fn enter_dir(
        &self,
        top: &Level<Lowers>,
        name: &[u8],
        path: Vec<u8>,
        stat: &Stat,
        old: Option<(Stat, usize)>,
        out: &mut Collected,
    ) -> Result<Level<Lowers>, ChangesError> {
        let dir = self.upper.open_dir(top.new.as_fd(), name, &path)?;
        if let Marks::Overlay(ns) = self.marks {
            if rustix::fs::fgetxattr_query(&dir, ns.redirect_key()).is_ok() {
                return Err(ChangesError::RedirectedDir {
                    path: self.upper.full(&path),
                });
            }
        }
        let opaque = self.marks.is_opaque(self.upper, &dir, &path)?;
        let (reported, dirs) = match old {
            None => {
                out.push(path.clone(), ChangeKind::Added);
                (true, Vec::new())
            }
            Some((old_stat, index)) if is_dir(&old_stat) => {
                let dirs = self.lower_dirs(&top.old.dirs[index..], name, &path)?;
                let changed = match dirs.first() {
                    Some((layer, lower_dir)) => {
                        stat_differs(&old_stat, stat)
                            || fd_xattrs(&self.lowers[*layer], lower_dir, &path)?
                                != fd_xattrs(self.upper, &dir, &path)?
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
        self.level(dir, lowers, path, out, reported)
    }

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
    /// Whether `name` has the same xattrs in the lower directory `lower` (a
    /// layer and its handle) as in the upper directory `upper`.
    fn same_xattrs(
        &self,
        lower: &(usize, OwnedFd),
        upper: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
    ) -> Result<bool, ChangesError> {
        let (layer, dir) = lower;
        Ok(self.lowers[*layer].xattrs(dir.as_fd(), name, path)?
            == self.upper.xattrs(upper, name, path)?)
    }

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
