//! Trees on disk as comparable values: every entry below a root, not following
//! symlinks, with what it is and what [`Record`] asks for.
//!
//! ```
//! use plies_testkit::tree::{Kind, Record, snapshot};
//!
//! let dir = std::env::temp_dir().join(format!("plies-tree-doc-{}", std::process::id()));
//! std::fs::create_dir_all(dir.join("etc")).unwrap();
//! std::fs::write(dir.join("etc/motd"), "hi").unwrap();
//! let t = snapshot(&dir, &Record::MOUNTED);
//! assert_eq!(t.get("etc").unwrap().kind, Kind::Dir);
//! assert!(matches!(&t.get("etc/motd").unwrap().kind, Kind::File { data, links: 1, .. } if data == b"hi"));
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What an entry is, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Its contents.
        data: Vec<u8>,
        /// How many paths of the tree share its inode (`st_nlink` may count
        /// more: links outside the tree, or in a union's lower layers).
        links: u64,
        /// With [`Record::link_groups`]: 0 for a file of one link (`st_nlink`),
        /// else the number of its inode among those of more than one link, in
        /// walk order from 1, so that a link from outside the tree shows.
        group: Option<u64>,
    },
    /// A symlink, with its target.
    Symlink(PathBuf),
    /// A character device, with its device number.
    CharDevice(u64),
    /// A block device, with its device number.
    BlockDevice(u64),
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Its permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// `(uid, gid)`, with [`Record::owners`].
    pub owner: Option<(u32, u32)>,
    /// `(seconds, nanoseconds)` of its modification, as [`Record::times`] says.
    pub mtime: Option<(i64, i64)>,
    /// The xattrs [`Record::xattr`] keeps, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Node {
    /// A directory with permission bits `mode`, as [`Record::MOUNTED`] records
    /// one without xattrs.
    pub fn dir(mode: u32) -> Node {
        Node {
            kind: Kind::Dir,
            mode,
            owner: None,
            mtime: None,
            xattrs: Vec::new(),
        }
    }

    /// A file of one link with permission bits `mode`, contents `data` and
    /// modification time `secs`, as [`Record::MOUNTED`] records one without
    /// xattrs.
    pub fn file(mode: u32, data: impl Into<Vec<u8>>, secs: i64) -> Node {
        Node {
            kind: Kind::File {
                data: data.into(),
                links: 1,
                group: None,
            },
            mode,
            owner: None,
            mtime: Some((secs, 0)),
            xattrs: Vec::new(),
        }
    }
}

/// Which modification times a snapshot records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// Whole seconds, of regular files only.
    FileSeconds,
    /// Seconds and nanoseconds, of regular files and directories.
    FilesAndDirs,
}

/// What a snapshot records of each entry beyond its kind, permission bits,
/// contents, symlink target, device number and links in the tree.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Owners of every entry.
    pub owners: bool,
    /// Modification times.
    pub times: Times,
    /// Whether the xattr `name` of an entry of `kind` is recorded.
    pub xattr: fn(kind: &Kind, name: &str) -> bool,
    /// Hard-link groups numbered from `st_nlink` ([`Kind::File`]'s `group`).
    pub link_groups: bool,
}

impl Record {
    /// Everything a layer tar carries and an apply must give back: owners,
    /// modification times of files and directories to the nanosecond, `user.`
    /// and `trusted.` xattrs of every entry, and hard-link groups.
    pub const EXACT: Record = Record {
        owners: true,
        times: Times::FilesAndDirs,
        xattr: |_, name| name.starts_with("user.") || name.starts_with("trusted."),
        link_groups: true,
    };

    /// A layer as a container sees it through a graph driver: no owners, the
    /// modification times of files in seconds (a directory's changes as the
    /// driver writes to it), the xattrs of files and directories but overlay's
    /// own, and links counted within the tree.
    pub const MOUNTED: Record = Record {
        owners: false,
        times: Times::FileSeconds,
        xattr: |kind, name| {
            matches!(kind, Kind::Dir | Kind::File { .. })
                && !name.starts_with("trusted.overlay.")
                && !name.starts_with("user.overlay.")
        },
        link_groups: false,
    };
}

/// Every entry below a root (not the root), by its path relative to the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree(BTreeMap<PathBuf, Node>);

impl Tree {
    /// The entry at `path`, relative to the root.
    pub fn get(&self, path: impl AsRef<Path>) -> Option<&Node> {
        self.0.get(path.as_ref())
    }

    /// Whether there is an entry at `path`, relative to the root.
    pub fn contains_key(&self, path: impl AsRef<Path>) -> bool {
        self.0.contains_key(path.as_ref())
    }
}

impl Deref for Tree {
    type Target = BTreeMap<PathBuf, Node>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl IntoIterator for Tree {
    type Item = (PathBuf, Node);
    type IntoIter = std::collections::btree_map::IntoIter<PathBuf, Node>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Tree {
    type Item = (&'a PathBuf, &'a Node);
    type IntoIter = std::collections::btree_map::Iter<'a, PathBuf, Node>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<(PathBuf, Node)> for Tree {
    fn from_iter<I: IntoIterator<Item = (PathBuf, Node)>>(iter: I) -> Self {
        Tree(iter.into_iter().collect())
    }
}

/// Every entry below `root`, not following symlinks, with what `record` asks
/// for; panics on anything it cannot read.
pub fn snapshot(root: &Path, record: &Record) -> Tree {
    let mut out = BTreeMap::new();
    // (device, inode) of every regular file: its paths, and its link group.
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let mut groups: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap_or_else(|e| panic!("walk {}: {e}", root.display()));
        let path = entry.path();
        let md = path
            .symlink_metadata()
            .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            let inode = (md.dev(), md.ino());
            inodes.entry(inode).or_default().push(rel.clone());
            let group = record.link_groups.then(|| {
                if md.nlink() > 1 {
                    let next = groups.len() as u64 + 1;
                    *groups.entry(inode).or_insert(next)
                } else {
                    0
                }
            });
            Kind::File {
                data: std::fs::read(path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
                links: 0,
                group,
            }
        } else if ft.is_symlink() {
            Kind::Symlink(
                std::fs::read_link(path)
                    .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display())),
            )
        } else if ft.is_char_device() {
            Kind::CharDevice(md.rdev())
        } else if ft.is_block_device() {
            Kind::BlockDevice(md.rdev())
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            assert!(ft.is_socket(), "{}: unknown file type", path.display());
            Kind::Socket
        };
        let mtime = match record.times {
            Times::FileSeconds if ft.is_file() => Some((md.mtime(), 0)),
            Times::FilesAndDirs if ft.is_file() || ft.is_dir() => {
                Some((md.mtime(), md.mtime_nsec()))
            }
            _ => None,
        };
        let xattrs = xattrs(path, |name| (record.xattr)(&kind, name));
        let node = Node {
            kind,
            mode: md.mode() & 0o7777,
            owner: record.owners.then(|| (md.uid(), md.gid())),
            mtime,
            xattrs,
        };
        out.insert(rel, node);
    }
    for paths in inodes.values() {
        for p in paths {
            if let Some(Node {
                kind: Kind::File { links, .. },
                ..
            }) = out.get_mut(p)
            {
                *links = paths.len() as u64;
            }
        }
    }
    Tree(out)
}

/// The xattrs of `path` (not following a symlink) whose names `keep` keeps,
/// sorted; none where the filesystem has none.
fn xattrs(path: &Path, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<u8>)> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return Vec::new(),
        Err(e) => panic!("list xattrs of {}: {e}", path.display()),
    };
    let mut out: Vec<(String, Vec<u8>)> = names
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| keep(n))
        .map(|n| {
            let value = xattr::get(path, &n)
                .unwrap_or_else(|e| panic!("get xattr {n} of {}: {e}", path.display()))
                .unwrap_or_default();
            (n, value)
        })
        .collect();
    out.sort();
    out
}

/// Asserts two trees are equal, naming the first five paths that differ (a
/// file's contents shown by their length).
#[track_caller]
pub fn assert_same(a: &Tree, b: &Tree, ctx: &str) {
    let paths: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    let diffs: Vec<String> = paths
        .into_iter()
        .filter(|p| a.get(p) != b.get(p))
        .take(5)
        .map(|p| {
            format!(
                "{}: {} vs {}",
                p.display(),
                short(a.get(p)),
                short(b.get(p))
            )
        })
        .collect();
    assert!(
        diffs.is_empty(),
        "{ctx}: trees differ:\n{}",
        diffs.join("\n")
    );
}

/// A node as [`assert_same`] shows it: modes in octal, file contents by length.
fn short(node: Option<&Node>) -> String {
    let Some(n) = node else {
        return "None".to_owned();
    };
    let kind = match &n.kind {
        Kind::File { data, links, group } => {
            format!(
                "File {{ {} bytes, links: {links}, group: {group:?} }}",
                data.len()
            )
        }
        other => format!("{other:?}"),
    };
    format!(
        "{kind} mode {:o} owner {:?} mtime {:?} xattrs {:?}",
        n.mode, n.owner, n.mtime, n.xattrs
    )
}
