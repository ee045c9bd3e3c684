//! Applying a layer tar to a directory.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use plies_whiteout::NameKind;
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::dir::{self, open_root, remove_any, reopen_root};
use crate::error::{EntryError, Error};
use crate::format::WhiteoutFormat;
use crate::idmap::{self, IdMap};
use crate::pax;
use crate::resolve::{self, Root};
use crate::stream::{Entry, FileInput, Input, NextError, Reader, Stream};

/// Options of [`apply`].
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
    aufs_links: HashMap<Vec<u8>, Stashed>,
}

/// A regular file of `.wh..wh.plnk`, kept in the root's filesystem until the
/// apply ends.
enum Stashed {
    /// An unnamed file (`O_TMPFILE`), given a name only by a hard link to it.
    Unnamed(OwnedFd),
    /// Where the filesystem has no unnamed files (overlayfs before Linux 6.6,
    /// NFS): a hidden file of this name in the root (the directory), removed
    /// when the apply ends.
    Named(OwnedFd, CString),
}

impl Stashed {
    /// Links the file as `name` in `dir`.
    fn link(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
        match self {
            Stashed::Unnamed(fd) => link_unnamed(fd.as_fd(), dir, name),
            Stashed::Named(root, stash) => {
                rustix::fs::linkat(root, stash.as_c_str(), dir, name, AtFlags::empty())
            }
        }
    }
}

/// Prefix of the hidden files that stand in for unnamed ones.
const STASH_PREFIX: &str = ".plies-plnk-";
static STASH_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// aufs's directory of hard-linked files at the root of a branch.
const AUFS_LINK_DIR: &[u8] = b".wh..wh.plnk";

/// Gives the unnamed file `fd` the name `name` in `dir`: through its
/// `/proc/self/fd` link, or with `AT_EMPTY_PATH` where `/proc` is missing.
fn link_unnamed(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    ) {
        Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => {
            rustix::fs::linkat(fd, "", dir, name, AtFlags::EMPTY_PATH)
        }
        other => other,
    }
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

fn is_whiteout_like(name: &OsStr) -> bool {
    name.as_bytes()
        .starts_with(plies_whiteout::WHITEOUT_PREFIX.as_bytes())
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

    fn entry<I: Input>(&mut self, stream: &mut Stream<I>, entry: &Entry) -> Result<(), EntryError> {
        let ty = entry.header.entry_type();
        if ty.is_pax_global_extensions() {
            // As Docker: global records are ignored.
            return drain(stream, entry);
        }
        // Every PAX record is checked before anything is made, whiteouts included.
        let meta = self.meta(entry)?;
        let path = match &meta.sparse {
            Some(pax::Sparse {
                name: Some(name), ..
            }) => name.as_slice(),
            _ => entry.path.as_slice(),
        };
        let comps = resolve::components(path)?;
        if let Some(first) = comps.first()
            && matches!(plies_whiteout::classify(first), Ok(NameKind::AufsMeta(_)))
        {
            return self.aufs_meta(stream, entry, &meta, &comps);
        }
        for comp in comps.iter().rev().skip(1) {
            if is_whiteout_like(comp) {
                return Err(EntryError::WhiteoutName(format!(
                    "directory component {}",
                    Path::new(comp).display()
                )));
            }
        }
        let kind = match comps.last() {
            Some(last) if is_whiteout_like(last) => plies_whiteout::classify(last)
                .map_err(|e| EntryError::WhiteoutName(e.to_string()))?,
            _ => NameKind::Plain,
        };
        self.stats.entries += 1;
        match kind {
            NameKind::Plain => {}
            NameKind::AufsMeta(_) => {
                return Err(EntryError::WhiteoutName("aufs private metadata".into()));
            }
            _ => {
                if !(ty.is_file() || ty.is_contiguous() || ty.is_hard_link()) {
                    return Err(EntryError::WhiteoutName(
                        "whiteout entry is not a regular file".into(),
                    ));
                }
                self.stats.whiteouts += 1;
                if self.opts.whiteouts != WhiteoutFormat::Aufs {
                    drain(stream, entry)?;
                    let (dir_comps, last) = comps.split_at(comps.len() - 1);
                    return self.whiteout(&meta, dir_comps, last[0], kind);
                }
            }
        }
        if self.opts.whiteouts == WhiteoutFormat::Merged {
            for i in 1..=comps.len() {
                self.unpacked.insert(resolve::join(&comps[..i]));
            }
        }
        if comps.is_empty() {
            if !ty.is_dir() {
                return Err(EntryError::ReplacesRoot);
            }
            let fd = rustix::fs::openat(
                self.root.fd(),
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_err("open root"))?;
            self.owner_and_xattrs_fd(&fd, &meta, None)?;
            self.dirs.insert(
                Vec::new(),
                DirMeta {
                    mode: meta.mode,
                    times: meta.times,
                },
            );
            return drain(stream, entry);
        }
        let (dir_comps, last) = comps.split_at(comps.len() - 1);
        let name = last[0];
        let parent = self.parent(dir_comps)?;
        let new_owner = (self.my_ids.0, parent.new_gid);
        let parent = parent.fd.as_fd();
        match ty {
            t if t.is_dir() => {
                let (fd, made) = self.make_dir(parent, name)?;
                self.owner_and_xattrs_fd(&fd, &meta, made.then_some(new_owner))?;
                let key = resolve::join(&comps);
                self.dirs.insert(
                    key.clone(),
                    DirMeta {
                        mode: meta.mode,
                        times: meta.times,
                    },
                );
                // Entries of this directory usually follow: keep it open for them.
                self.remember_parent(key, fd)?;
                drain(stream, entry)
            }
            t if t.is_file() || t.is_contiguous() || t.is_gnu_sparse() => {
                let fd = self.create_with(parent, name, |p, n| {
                    rustix::fs::openat(
                        p,
                        n,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                })?;
                self.fill_file(stream, entry, &meta, &fd, new_owner)
            }
            t if t.is_symlink() => {
                let target = entry.link.as_deref().ok_or(EntryError::MissingLinkTarget)?;
                if target.contains(&0) {
                    return Err(EntryError::InvalidName("NUL byte in symlink target"));
                }
                if target.is_empty() {
                    return Err(EntryError::MissingLinkTarget);
                }
                self.create_with(parent, name, |p, n| rustix::fs::symlinkat(target, p, n))?;
                self.node_meta(parent, name, &meta, false, new_owner)?;
                drain(stream, entry)
            }
            t if t.is_hard_link() => {
                let target = entry.link.as_deref().ok_or(EntryError::MissingLinkTarget)?;
                let tcomps =
                    resolve::components(target).map_err(|e| EntryError::LinkTarget(Box::new(e)))?;
                let Some((tname, tdir)) = tcomps.split_last() else {
                    return Err(EntryError::LinkTarget(Box::new(EntryError::ReplacesRoot)));
                };
                if let [meta_dir, base] = tcomps.as_slice()
                    && meta_dir.as_bytes() == AUFS_LINK_DIR
                {
                    let key = base.as_bytes().to_vec();
                    let stashed = self.aufs_links.remove(&key).ok_or_else(|| {
                        EntryError::LinkTarget(Box::new(EntryError::WhiteoutName(format!(
                            "no regular file {} came before it in the archive",
                            Path::new(OsStr::from_bytes(target)).display()
                        ))))
                    })?;
                    let linked = self.create_with(parent, name, |p, n| stashed.link(p, n));
                    self.aufs_links.insert(key, stashed);
                    linked?;
                    return drain(stream, entry);
                }
                let tparent = self
                    .root
                    .open_dir(tdir, false, None)
                    .map_err(io_err2("open hard link target directory"))?;
                if tdir == dir_comps && *tname == name {
                    return drain(stream, entry);
                }
                self.create_with(parent, name, |p, n| {
                    rustix::fs::linkat(&tparent, *tname, p, n, AtFlags::empty())
                })?;
                drain(stream, entry)
            }
            t if t.is_character_special() || t.is_block_special() || t.is_fifo() => {
                let fifo = t.is_fifo();
                let (file_type, dev) = if fifo {
                    (FileType::Fifo, 0)
                } else {
                    if !self.opts.privileged {
                        self.stats.skipped_devices += 1;
                        tracing::warn!(entry = %Path::new(OsStr::from_bytes(path)).display(), "skipping device node in an unprivileged apply");
                        return drain(stream, entry);
                    }
                    let major = entry
                        .header
                        .device_major()
                        .map_err(header_err("devmajor"))?
                        .unwrap_or(0);
                    let minor = entry
                        .header
                        .device_minor()
                        .map_err(header_err("devminor"))?
                        .unwrap_or(0);
                    let ft = if t.is_character_special() {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    (ft, rustix::fs::makedev(major, minor))
                };
                self.create_with(parent, name, |p, n| {
                    rustix::fs::mknodat(p, n, file_type, Mode::from_raw_mode(0o600), dev)
                })?;
                self.node_meta(parent, name, &meta, true, new_owner)?;
                drain(stream, entry)
            }
            other => Err(EntryError::UnsupportedType(other.as_byte() as char)),
        }
    }

    /// Writes a regular file's data into `fd`, then its owner, xattrs, mode and times.
    fn fill_file<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        meta: &Meta,
        fd: &OwnedFd,
        new_owner: (u32, u32),
    ) -> Result<(), EntryError> {
        if let Some(pax::Sparse {
            map: Some(chunks),
            realsize,
            ..
        }) = &meta.sparse
        {
            self.write_gnu_sparse(stream, entry, fd, chunks, *realsize)?;
        } else if let Some(sp) = &meta.sparse {
            self.write_pax_sparse(stream, entry, fd, sp.realsize)?;
        } else if let Some(map) = &entry.sparse {
            self.write_gnu_sparse(stream, entry, fd, &map.chunks, map.real_size)?;
        } else {
            self.write_data(stream, entry, fd)?;
        }
        self.owner_and_xattrs_fd(fd, meta, Some(new_owner))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(io_err("fchmod"))?;
        rustix::fs::futimens(fd, &meta.times).map_err(io_err("futimens"))?;
        Ok(())
    }

    /// An entry under aufs private metadata at the root (`.wh..wh.plnk/…`,
    /// `.wh..wh.aufs`): left out, as Docker does, except that a regular file
    /// directly in `.wh..wh.plnk` (aufs's store of hard-linked files) is kept in an
    /// unnamed file until a hard link to it names it.
    fn aufs_meta<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        meta: &Meta,
        comps: &[&OsStr],
    ) -> Result<(), EntryError> {
        self.stats.entries += 1;
        self.stats.skipped_aufs_meta += 1;
        let ty = entry.header.entry_type();
        let [meta_dir, base] = comps else {
            return drain(stream, entry);
        };
        if meta_dir.as_bytes() != AUFS_LINK_DIR || !(ty.is_file() || ty.is_contiguous()) {
            return drain(stream, entry);
        }
        let new_owner = (self.my_ids.0, self.my_ids.1);
        let key = base.as_bytes().to_vec();
        match rustix::fs::openat(
            self.root.fd(),
            ".",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => {
                self.fill_file(stream, entry, meta, &fd, new_owner)?;
                self.stash(key, Stashed::Unnamed(fd));
            }
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                let (fd, stashed) = self.named_stash()?;
                // Kept before it is filled, so that a failure removes it.
                self.stash(key, stashed);
                self.fill_file(stream, entry, meta, &fd, new_owner)?;
            }
            Err(e) => return Err(io_err("open an unnamed file for a .wh..wh.plnk entry")(e)),
        }
        Ok(())
    }

    fn stash(&mut self, key: Vec<u8>, stashed: Stashed) {
        if let Some(Stashed::Named(_, old)) = self.aufs_links.insert(key, stashed) {
            self.remove_stash(&old);
        }
    }

    /// A new hidden file at the root, for a filesystem without unnamed files.
    fn named_stash(&mut self) -> Result<(OwnedFd, Stashed), EntryError> {
        loop {
            let seq = STASH_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = CString::new(format!("{STASH_PREFIX}{}-{seq}", std::process::id()))
                .map_err(|_| EntryError::Io {
                    op: "name a .wh..wh.plnk stand-in",
                    source: io::ErrorKind::InvalidInput.into(),
                })?;
            match rustix::fs::openat(
                self.root.fd(),
                name.as_c_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => {
                    let root = self
                        .root
                        .fd()
                        .try_clone_to_owned()
                        .map_err(|e| EntryError::Io {
                            op: "dup",
                            source: e,
                        })?;
                    return Ok((fd, Stashed::Named(root, name)));
                }
                Err(Errno::EXIST) => {}
                Err(e) => return Err(io_err("create a .wh..wh.plnk stand-in")(e)),
            }
        }
    }

    fn remove_stash(&self, name: &CStr) {
        if let Err(e) = rustix::fs::unlinkat(self.root.fd(), name, AtFlags::empty()) {
            tracing::warn!(name = ?name, error = %e, "a .wh..wh.plnk stand-in was left at the root");
        }
    }

    /// Removes the hidden files that stood in for unnamed ones.
    fn release_stashes(&mut self) {
        let named: Vec<CString> = self
            .aufs_links
            .drain()
            .filter_map(|(_, stashed)| match stashed {
                Stashed::Named(_, name) => Some(name),
                Stashed::Unnamed(_) => None,
            })
            .collect();
        for name in named {
            self.remove_stash(&name);
        }
    }

    /// The directory `comps` names, made if missing; kept open for the entries that follow.
    fn parent(&mut self, comps: &[&OsStr]) -> Result<Rc<Parent>, EntryError> {
        let key = resolve::join(comps);
        if let Some(i) = self.parents.iter().rposition(|(k, _)| *k == key) {
            let hit = self.parents.remove(i);
            let parent = Rc::clone(&hit.1);
            self.parents.push(hit);
            return Ok(parent);
        }
        let fd = self
            .root
            .open_dir(comps, true, self.implicit_owner)
            .map_err(io_err2("open parent directory"))?;
        self.remember_parent(key, fd)
    }

    fn remember_parent(&mut self, key: Vec<u8>, fd: OwnedFd) -> Result<Rc<Parent>, EntryError> {
        let st = rustix::fs::fstat(&fd).map_err(io_err("stat parent directory"))?;
        let new_gid = if st.st_mode & 0o2000 != 0 {
            st.st_gid
        } else {
            self.my_ids.1
        };
        let parent = Rc::new(Parent { fd, new_gid });
        self.parents.retain(|(k, _)| *k != key);
        if self.parents.len() == PARENT_CACHE {
            self.parents.remove(0);
        }
        self.parents.push((key, Rc::clone(&parent)));
        Ok(parent)
    }

    /// Runs `create`; if the name exists, removes it (a later entry replaces
    /// an earlier one) and runs it again.
    fn create_with<T>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        create: impl Fn(BorrowedFd<'_>, &OsStr) -> rustix::io::Result<T>,
    ) -> Result<T, EntryError> {
        match create(parent, name) {
            Err(Errno::EXIST) => {
                self.remove(parent, name)?;
                create(parent, name).map_err(io_err("create"))
            }
            other => other.map_err(io_err("create")),
        }
    }

    fn remove(&mut self, parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), EntryError> {
        self.parents.clear();
        remove_any(parent, name).map_err(io_err2("remove existing entry"))
    }

    /// Makes (or keeps) the directory `name` and opens it; whether it was made.
    fn make_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(OwnedFd, bool), EntryError> {
        let made = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err("stat"))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    false
                } else {
                    self.remove(parent, name)?;
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .map_err(io_err("mkdir"))?;
                    true
                }
            }
            Err(e) => return Err(io_err("mkdir")(e)),
        };
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open directory"))?;
        Ok((fd, made))
    }

    fn whiteout(
        &mut self,
        meta: &Meta,
        dir_comps: &[&OsStr],
        name: &OsStr,
        kind: NameKind<'_>,
    ) -> Result<(), EntryError> {
        let parent = self.parent(dir_comps)?;
        let new_owner = (self.my_ids.0, parent.new_gid);
        let parent = &parent.fd;
        match (self.opts.whiteouts, kind) {
            (WhiteoutFormat::Overlay(_), NameKind::Whiteout(target)) => {
                self.remove(parent.as_fd(), target)?;
                plies_whiteout::create_overlay_whiteout(parent, target)?;
                if meta.uid != u32::MAX && (meta.uid, meta.gid) != new_owner {
                    let (uid, gid) = (meta.uid, meta.gid);
                    rustix::fs::chownat(
                        parent,
                        target,
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(io_err("chown whiteout"))?;
                }
            }
            (WhiteoutFormat::Overlay(ns), NameKind::Opaque) => {
                plies_whiteout::set_opaque(parent, ns)?;
            }
            (WhiteoutFormat::Merged, NameKind::Whiteout(target)) => {
                self.remove(parent.as_fd(), target)?;
            }
            (WhiteoutFormat::Merged, NameKind::Opaque) => {
                self.parents.clear();
                let mut prefix = resolve::join(dir_comps);
                empty_except(parent, &mut prefix, &self.unpacked)
                    .map_err(io_err2("empty opaque directory"))?;
            }
            _ => {
                let _ = name;
            }
        }
        Ok(())
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

    fn meta(&mut self, entry: &Entry) -> Result<Meta, EntryError> {
        let h = &entry.header;
        let mode = field(&h.as_old().mode, h.mode().map(u64::from), "mode")? as u32 & 0o7777;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(field(&h.as_old().mtime, h.mtime(), "mtime")?)
                .unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut atime = None;
        if let Some(gnu) = h.as_gnu() {
            if let Ok(a) = gnu.atime() {
                if a != 0 {
                    atime = Some(Timespec {
                        tv_sec: i64::try_from(a).unwrap_or(i64::MAX),
                        tv_nsec: 0,
                    });
                }
            }
        }
        let records = pax::NodeRecords::read(&entry.pax)?;
        if let Some(t) = records.mtime {
            mtime = t;
        }
        if let Some(t) = records.atime {
            atime = Some(t);
        }
        let (xattrs, sparse) = (records.xattrs, records.sparse);
        if let Some(sp) = &sparse {
            sp.check(entry.size)?;
        }
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
            xattrs,
            sparse,
        })
    }

    /// Owner and xattrs of an open node; the owner is left alone when it is
    /// already `current` (what the node got when it was made).
    fn owner_and_xattrs_fd(
        &mut self,
        fd: &OwnedFd,
        meta: &Meta,
        current: Option<(u32, u32)>,
    ) -> Result<(), EntryError> {
        if meta.uid != u32::MAX && current != Some((meta.uid, meta.gid)) {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(io_err("fchown"))?;
        }
        for (name, value) in &meta.xattrs {
            let r =
                rustix::fs::fsetxattr(fd, name.as_os_str(), value, rustix::fs::XattrFlags::empty());
            self.xattr_result(name, r)?;
        }
        Ok(())
    }

    fn xattr_result(&mut self, name: &OsStr, r: rustix::io::Result<()>) -> Result<(), EntryError> {
        match r {
            Ok(()) => Ok(()),
            Err(e @ (Errno::NOTSUP | Errno::PERM | Errno::ACCESS)) => {
                self.stats.skipped_xattrs += 1;
                tracing::warn!(xattr = %Path::new(name).display(), error = %e, "xattr not applied");
                Ok(())
            }
            Err(e) => Err(io_err("setxattr")(e)),
        }
    }

    /// Owner, mode, xattrs and times of a node just made that is not opened
    /// (symlink, device, fifo); it was made owned by `current`.
    fn node_meta(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
        current: (u32, u32),
    ) -> Result<(), EntryError> {
        if meta.uid != u32::MAX && (meta.uid, meta.gid) != current {
            rustix::fs::chownat(
                parent,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("chown"))?;
        }
        if chmod {
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(io_err("chmod"))?;
        }
        if !meta.xattrs.is_empty() {
            let path = crate::xattrs::proc_path(parent, name);
            for (xname, value) in &meta.xattrs {
                let r = rustix::fs::lsetxattr(
                    path.as_os_str(),
                    xname.as_os_str(),
                    value,
                    rustix::fs::XattrFlags::empty(),
                );
                self.xattr_result(xname, r)?;
            }
        }
        rustix::fs::utimensat(parent, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("utimensat"))?;
        Ok(())
    }

    fn write_data<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        fd: &OwnedFd,
    ) -> Result<(), EntryError> {
        let got = stream.copy_data(entry.size, fd.as_fd())?;
        self.stats.size += got;
        if got < entry.size {
            return Err(EntryError::Truncated {
                expected: entry.size,
                got,
            });
        }
        Ok(())
    }

    /// Writes a sparse file whose map came before its data (old GNU headers,
    /// PAX 0.x records): the stored chunks at their offsets, holes between them.
    fn write_gnu_sparse<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        fd: &OwnedFd,
        chunks: &[(u64, u64)],
        real_size: u64,
    ) -> Result<(), EntryError> {
        let mut got = 0;
        for &(offset, len) in chunks {
            rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(offset)).map_err(io_err("seek"))?;
            let n = stream.copy_data(len, fd.as_fd())?;
            self.stats.size += n;
            got += n;
            if n < len {
                return Err(EntryError::Truncated {
                    expected: entry.size,
                    got,
                });
            }
        }
        rustix::fs::ftruncate(fd, real_size).map_err(io_err("ftruncate"))?;
        Ok(())
    }

    /// Writes a GNU 1.0 sparse file: a map of decimal lines (count, then
    /// offset and length pairs) padded to a block, then the chunks.
    fn write_pax_sparse<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        fd: &OwnedFd,
        realsize: u64,
    ) -> Result<(), EntryError> {
        let expected = entry.size;
        let mut consumed: u64 = 0;
        let next_number = |stream: &mut Stream<I>, consumed: &mut u64| -> Result<u64, EntryError> {
            let mut v: u64 = 0;
            let mut digits = 0;
            loop {
                let mut b = [0u8; 1];
                let n = stream.read_data(&mut b).map_err(io_err2("read archive"))?;
                if n == 0 {
                    return Err(EntryError::Truncated {
                        expected,
                        got: *consumed,
                    });
                }
                *consumed += 1;
                match b[0] {
                    b'\n' if digits > 0 => return Ok(v),
                    d @ b'0'..=b'9' if digits < 20 => {
                        v = v
                            .checked_mul(10)
                            .and_then(|v| v.checked_add(u64::from(d - b'0')))
                            .ok_or_else(|| EntryError::Pax("sparse map number".into()))?;
                        digits += 1;
                    }
                    _ => return Err(EntryError::Pax("sparse map".into())),
                }
            }
        };
        let count = next_number(stream, &mut consumed)?;
        let mut chunks = Vec::new();
        let mut end = 0u64;
        for _ in 0..count {
            let offset = next_number(stream, &mut consumed)?;
            let len = next_number(stream, &mut consumed)?;
            let chunk_end = offset
                .checked_add(len)
                .filter(|e| offset >= end && *e <= realsize);
            end = chunk_end.ok_or_else(|| EntryError::Pax("sparse map chunks".into()))?;
            chunks.push((offset, len));
        }
        let pad = (512 - consumed % 512) % 512;
        let mut skipped = 0;
        let mut scratch = [0u8; 512];
        while skipped < pad {
            let want = usize::try_from(pad - skipped).unwrap_or(512);
            match stream.read_data(&mut scratch[..want]) {
                Ok(0) => break,
                Ok(n) => skipped += n as u64,
                Err(e) => return Err(io_err2("read archive")(e)),
            }
        }
        consumed += skipped;
        if skipped < pad {
            return Err(EntryError::Truncated {
                expected,
                got: consumed,
            });
        }
        for (offset, len) in chunks {
            rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(offset)).map_err(io_err("seek"))?;
            let n = stream.copy_data(len, fd.as_fd())?;
            self.stats.size += n;
            consumed += n;
            if n < len {
                return Err(EntryError::Truncated {
                    expected,
                    got: consumed,
                });
            }
        }
        rustix::fs::ftruncate(fd, realsize).map_err(io_err("ftruncate"))?;
        let rest = stream.skip_data().map_err(io_err2("read archive"))?;
        if consumed + rest < expected {
            return Err(EntryError::Truncated {
                expected,
                got: consumed + rest,
            });
        }
        Ok(())
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

/// Removes everything below `dir` whose path (joined to `prefix`) this tar did not add.
fn empty_except(dir: &OwnedFd, prefix: &mut Vec<u8>, keep: &HashSet<Vec<u8>>) -> io::Result<()> {
    for child in dir::list(dir)? {
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        prefix.extend_from_slice(child.as_bytes());
        if keep.contains(prefix.as_slice()) {
            if let Ok(sub) = rustix::fs::openat(
                dir,
                &child,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                empty_except(&sub, prefix, keep)?;
            }
        } else {
            remove_any(dir.as_fd(), &child)?;
        }
        prefix.truncate(len);
    }
    Ok(())
}
