//! Applying a layer tar to a directory: the entry loop and each entry's
//! metadata here; making nodes, sparse file data, aufs's `.wh..wh.plnk` and
//! whiteouts in the modules below.

mod node;
mod plnk;
mod sparse;
mod whiteout;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::dir::{open_root, reopen_root};
use crate::error::{EntryError, Error};
use crate::format::WhiteoutFormat;
use crate::idmap::{self, IdMap};
use crate::pax;
use crate::resolve::{self, Root};
use crate::stream::{Entry, FileInput, Input, NextError, Reader, Stream};

/// Options of [`apply`]: [`ApplyOptions::default`] and the `with_*` setters.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// The whiteout format of the target directory.
    pub whiteouts: WhiteoutFormat,
    /// Container-to-host uid ranges; empty means ids are kept as they are.
    pub uid_map: Vec<IdMap>,
    /// Container-to-host gid ranges; empty means ids are kept as they are.
    pub gid_map: Vec<IdMap>,
    /// Whether device nodes may be made and owners set. When `false` (as in a
    /// user namespace) they are skipped, counted in [`ApplyStats`] and logged.
    pub privileged: bool,
}

impl Default for ApplyOptions {
    /// Overlay whiteouts in the `trusted.` namespace, no id maps, privileged
    /// when the process runs as root.
    fn default() -> Self {
        ApplyOptions {
            whiteouts: WhiteoutFormat::default(),
            uid_map: Vec::new(),
            gid_map: Vec::new(),
            privileged: rustix::process::geteuid().is_root(),
        }
    }
}

impl ApplyOptions {
    /// The same options with the target's whiteout format `whiteouts`.
    pub fn with_whiteouts(mut self, whiteouts: WhiteoutFormat) -> ApplyOptions {
        self.whiteouts = whiteouts;
        self
    }

    /// The same options with container-to-host uid ranges `uid_map`.
    pub fn with_uid_map(mut self, uid_map: Vec<IdMap>) -> ApplyOptions {
        self.uid_map = uid_map;
        self
    }

    /// The same options with container-to-host gid ranges `gid_map`.
    pub fn with_gid_map(mut self, gid_map: Vec<IdMap>) -> ApplyOptions {
        self.gid_map = gid_map;
        self
    }

    /// The same options, making device nodes and setting owners or not.
    pub fn with_privileged(mut self, privileged: bool) -> ApplyOptions {
        self.privileged = privileged;
        self
    }
}

/// What [`apply`] did.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries applied (PAX global headers not counted).
    pub entries: u64,
    /// Bytes of the archive read, up to the end of the stream.
    pub bytes: u64,
    /// Bytes of regular file content written.
    pub size: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes skipped because the apply was unprivileged.
    pub skipped_devices: u64,
    /// Owners not set because the apply was unprivileged.
    pub skipped_chowns: u64,
    /// Xattrs the filesystem or the kernel refused (`ENOTSUP`, `EPERM`).
    pub skipped_xattrs: u64,
    /// aufs private entries (`.wh..wh.*` at the root) left out, as Docker does;
    /// regular files of `.wh..wh.plnk` are kept aside for hard links to them.
    pub skipped_aufs_meta: u64,
}

/// Parent directories kept open for the entries that follow.
const PARENT_CACHE: usize = 16;

/// Applies the layer tar read from `reader` to the directory `root`.
///
/// Streams: memory does not grow with the size of the files (it holds the
/// paths of directories, whose modes and times are set last, and with
/// [`WhiteoutFormat::Merged`] the paths this tar added). Every name is
/// resolved inside `root` and no symlink is followed out of it; names with a
/// `..` component, absolute names and overlay xattrs are refused. A later
/// entry replaces an earlier one (a directory over a directory merges).
/// Where the kernel has no `openat2`, a symlink in a parent path is an error
/// instead of being followed inside the root. The stream is read to its end,
/// so a caller hashing it sees every byte. On error the directory holds a
/// partial layer the caller should delete.
///
/// PAX records are split by their length, so values may hold any byte (a
/// newline in a name or a binary xattr value). Xattrs are set on every kind
/// of node; those the kernel refuses (`user.*` on a symlink or device) or the
/// file system does not support are skipped and counted in
/// [`ApplyStats::skipped_xattrs`]. Sparse files keep their holes: GNU's
/// PAX formats 0.0, 0.1 and 1.0 and old GNU `S` entries.
///
/// aufs private metadata at the root (`.wh..wh.plnk/…`, `.wh..wh.aufs`, …) is
/// left out and counted in [`ApplyStats::skipped_aufs_meta`], as Docker does;
/// below the root it is refused. A hard link to a regular file of
/// `.wh..wh.plnk` (aufs's store of hard-linked files, found in layers made on
/// aufs) links to that file, kept meanwhile in an unnamed `O_TMPFILE` in the
/// root's filesystem, or where the filesystem has none (overlayfs before Linux
/// 6.6, NFS) in a hidden `.plies-plnk-*` file at the root that the apply
/// removes when it ends, failed or not; so nothing of the metadata stays behind.
///
/// # Errors
/// [`Error::Root`] if `root` cannot be opened, [`Error::Tar`] for a malformed
/// archive, [`Error::Entry`] naming the entry that was refused or failed.
pub fn apply<R: Read>(reader: R, root: &Path, opts: &ApplyOptions) -> Result<ApplyStats, Error> {
    let fd = open_root(root)?;
    run(Stream::new(Reader(reader)), fd, opts)
}

/// [`apply`] into an already open directory.
///
/// # Errors
/// As [`apply`].
pub fn apply_at<R: Read>(
    reader: R,
    root: BorrowedFd<'_>,
    opts: &ApplyOptions,
) -> Result<ApplyStats, Error> {
    let fd = reopen_root(root)?;
    run(Stream::new(Reader(reader)), fd, opts)
}

/// [`apply`] of a layer tar in a file, read from its current position.
///
/// Larger file contents are copied from `file` to the files they become by
/// the kernel (`copy_file_range`), without passing through this process;
/// where the kernel cannot (another kind of file, or file systems it does not
/// copy between) they are read and written as by [`apply`].
///
/// # Errors
/// As [`apply`].
pub fn apply_file(file: &File, root: &Path, opts: &ApplyOptions) -> Result<ApplyStats, Error> {
    let fd = open_root(root)?;
    run(Stream::new(FileInput(file)), fd, opts)
}

fn run<I: Input>(
    mut stream: Stream<I>,
    root: OwnedFd,
    opts: &ApplyOptions,
) -> Result<ApplyStats, Error> {
    let mut ctx = Applier::new(Root::new(root), opts)?;
    let mut last: Option<Vec<u8>> = None;
    let shown = |name: Vec<u8>| PathBuf::from(OsString::from_vec(name));
    loop {
        let entry = match stream.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(NextError::Tar(source)) => {
                return Err(Error::Tar {
                    position: stream.position(),
                    after: last.map(shown),
                    source,
                });
            }
            Err(NextError::Entry(name, reason)) => {
                return Err(Error::Entry {
                    entry: shown(name),
                    reason,
                });
            }
        };
        if let Err(reason) = ctx.entry(&mut stream, &entry) {
            return Err(Error::Entry {
                entry: shown(entry.path),
                reason,
            });
        }
        last = Some(entry.path);
    }
    stream.drain_input().map_err(|source| Error::Tar {
        position: stream.position(),
        after: last.map(shown),
        source,
    })?;
    ctx.finish()?;
    ctx.stats.bytes = stream.position();
    Ok(std::mem::take(&mut ctx.stats))
}

/// Metadata of one entry, parsed before anything is created.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(OsString, Vec<u8>)>,
    /// PAX (GNU) sparse file description.
    sparse: Option<pax::Sparse>,
}

impl Meta {
    /// The name the entry makes: a PAX sparse file's real name, else the
    /// entry's own.
    fn name<'e>(&'e self, entry: &'e Entry) -> &'e [u8] {
        match &self.sparse {
            Some(pax::Sparse {
                name: Some(name), ..
            }) => name.as_slice(),
            _ => entry.path.as_slice(),
        }
    }
}

struct DirMeta {
    mode: u32,
    times: Timestamps,
}

/// An open directory entries are made in.
struct Parent {
    fd: OwnedFd,
    /// The group a node made in it gets: the directory's own when it has
    /// the set-group-ID bit, else this process's.
    new_gid: u32,
}

struct Applier<'o> {
    root: Root,
    opts: &'o ApplyOptions,
    stats: ApplyStats,
    /// Recently used parent directories by path, most recent last; emptied
    /// whenever an entry is removed, so a path always resolves afresh after
    /// the tree changed shape.
    parents: Vec<(Vec<u8>, Rc<Parent>)>,
    /// Directory modes and times, set once their children are in place.
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// Paths this tar added (only for [`WhiteoutFormat::Merged`]).
    unpacked: HashSet<Vec<u8>>,
    /// Owner of directories made implicitly.
    implicit_owner: Option<(u32, u32)>,
    my_ids: (u32, u32),
    /// Regular files of `.wh..wh.plnk`, by name, kept for hard links to them.
    aufs_links: HashMap<Vec<u8>, plnk::Stashed>,
}

fn io_err(op: &'static str) -> impl FnOnce(Errno) -> EntryError {
    move |e| EntryError::Io {
        op,
        source: e.into(),
    }
}

fn io_err2(op: &'static str) -> impl FnOnce(io::Error) -> EntryError {
    move |source| EntryError::Io { op, source }
}

/// A numeric header field; blank (all NUL or space) reads as 0, as Go and GNU tar read it.
fn field(raw: &[u8], parsed: io::Result<u64>, name: &'static str) -> Result<u64, EntryError> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        return Ok(0);
    }
    parsed.map_err(header_err(name))
}

fn header_err(field: &'static str) -> impl FnOnce(io::Error) -> EntryError {
    move |source| EntryError::Header { field, source }
}

fn unmapped(e: Error) -> EntryError {
    match e {
        Error::Unmapped { kind, id } => EntryError::Unmapped { kind, id },
        other => EntryError::Io {
            op: "map id",
            source: io::Error::other(other.to_string()),
        },
    }
}

/// Reads and discards what is left of an entry's data, checking it is all there.
fn drain<I: Input>(stream: &mut Stream<I>, entry: &Entry) -> Result<(), EntryError> {
    let got = stream.skip_data().map_err(io_err2("read archive"))?;
    if got < entry.size {
        return Err(EntryError::Truncated {
            expected: entry.size,
            got,
        });
    }
    Ok(())
}

impl<'o> Applier<'o> {
    fn new(root: Root, opts: &'o ApplyOptions) -> Result<Self, Error> {
        let implicit_owner =
            if opts.privileged && (!opts.uid_map.is_empty() || !opts.gid_map.is_empty()) {
                let uid = idmap::to_host(&opts.uid_map, 0, "uid")?;
                let gid = idmap::to_host(&opts.gid_map, 0, "gid")?;
                Some((uid as u32, gid as u32))
            } else {
                None
            };
        Ok(Applier {
            root,
            opts,
            stats: ApplyStats::default(),
            parents: Vec::with_capacity(PARENT_CACHE),
            dirs: HashMap::new(),
            unpacked: HashSet::new(),
            implicit_owner,
            my_ids: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            aufs_links: HashMap::new(),
        })
    }

    /// Applies one entry: its records and name are checked, then it is made
    /// as the node, whiteout or aufs metadata it is.
    fn entry<I: Input>(&mut self, stream: &mut Stream<I>, entry: &Entry) -> Result<(), EntryError> {
        if entry.header.entry_type().is_pax_global_extensions() {
            // As Docker: global records are ignored.
            return drain(stream, entry);
        }
        // Every PAX record is checked before anything is made, whiteouts included.
        let meta = self.meta(entry)?;
        let comps = resolve::components(meta.name(entry))?;
        if plnk::is_aufs_meta(&comps) {
            return self.aufs_meta(stream, entry, &meta, &comps);
        }
        let kind = whiteout::name_kind(&comps)?;
        self.stats.entries += 1;
        if self.whiteout_entry(stream, entry, &meta, &comps, kind)? {
            return Ok(());
        }
        if self.opts.whiteouts == WhiteoutFormat::Merged {
            for i in 1..=comps.len() {
                self.unpacked.insert(resolve::join(&comps[..i]));
            }
        }
        self.node(stream, entry, &meta, &comps)
    }

    /// The entry's mode, owner, times, xattrs and sparse description, from
    /// its header and PAX records; every record is checked.
    fn meta(&mut self, entry: &Entry) -> Result<Meta, EntryError> {
        let h = &entry.header;
        let mode = field(&h.as_old().mode, h.mode().map(u64::from), "mode")? as u32 & 0o7777;
        let header_mtime = Timespec {
            tv_sec: i64::try_from(field(&h.as_old().mtime, h.mtime(), "mtime")?)
                .unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let header_atime = h
            .as_gnu()
            .and_then(|gnu| gnu.atime().ok())
            .filter(|a| *a != 0)
            .map(|a| Timespec {
                tv_sec: i64::try_from(a).unwrap_or(i64::MAX),
                tv_nsec: 0,
            });
        let records = pax::NodeRecords::read(&entry.pax)?;
        if let Some(sp) = &records.sparse {
            sp.check(entry.size)?;
        }
        let mtime = records.mtime.unwrap_or(header_mtime);
        let atime = records.atime.or(header_atime);
        let owner = self.owner(entry)?;
        let (uid, gid) = owner.unwrap_or((u32::MAX, u32::MAX));
        Ok(Meta {
            mode,
            uid,
            gid,
            times: Timestamps {
                last_access: atime.unwrap_or(mtime),
                last_modification: mtime,
            },
            xattrs: records.xattrs,
            sparse: records.sparse,
        })
    }

    /// The mapped owner to set, or `None` when not privileged.
    fn owner(&mut self, entry: &Entry) -> Result<Option<(u32, u32)>, EntryError> {
        let h = &entry.header;
        let uid = match entry.pax.get(b"uid") {
            Some(v) => pax::number(v)?,
            None => field(&h.as_old().uid, h.uid(), "uid")?,
        };
        let gid = match entry.pax.get(b"gid") {
            Some(v) => pax::number(v)?,
            None => field(&h.as_old().gid, h.gid(), "gid")?,
        };
        let uid = idmap::to_host(&self.opts.uid_map, uid, "uid").map_err(unmapped)?;
        let gid = idmap::to_host(&self.opts.gid_map, gid, "gid").map_err(unmapped)?;
        let uid = u32::try_from(uid).map_err(|_| EntryError::Unmapped {
            kind: "uid",
            id: uid,
        })?;
        let gid = u32::try_from(gid).map_err(|_| EntryError::Unmapped {
            kind: "gid",
            id: gid,
        })?;
        if self.opts.privileged {
            Ok(Some((uid, gid)))
        } else {
            if (uid, gid) != self.my_ids {
                self.stats.skipped_chowns += 1;
            }
            Ok(None)
        }
    }

    /// Sets directory modes and times, deepest first, once all entries are in.
    fn finish(&mut self) -> Result<(), Error> {
        // Before the root's times are set.
        self.release_stashes();
        let mut dirs: Vec<(Vec<u8>, DirMeta)> = self.dirs.drain().collect();
        dirs.sort_by_key(|(k, _)| {
            std::cmp::Reverse(k.iter().filter(|b| **b == b'/').count() + usize::from(!k.is_empty()))
        });
        for (key, meta) in dirs {
            let err = |reason| Error::Entry {
                entry: PathBuf::from(OsString::from_vec(key.clone())),
                reason,
            };
            let comps = resolve::components(&key).map_err(err)?;
            let fd = if comps.is_empty() {
                rustix::fs::openat(
                    self.root.fd(),
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io::Error::from)
            } else {
                self.root.open_dir_nofollow(&comps)
            };
            // A later entry replaced the directory (by a file or symlink) or
            // a whiteout removed it: nothing left to set.
            let Ok(fd) = fd else { continue };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| err(io_err("fchmod")(e)))?;
            rustix::fs::futimens(&fd, &meta.times).map_err(|e| err(io_err("futimens")(e)))?;
        }
        Ok(())
    }
}

impl Drop for Applier<'_> {
    /// A failed apply leaves no stand-in behind either.
    fn drop(&mut self) {
        self.release_stashes();
    }
}
