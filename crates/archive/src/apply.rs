//! Applying a layer tar to a directory.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use plies_whiteout::{NameKind, XattrNamespace};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::{EntryError, Error};
use crate::idmap::{self, IdMap};
use crate::resolve::{self, Root};

/// How whiteouts are written into the target directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// overlayfs: `.wh.<name>` becomes a 0/0 character device `<name>`, and
    /// `.wh..wh..opq` sets the opaque xattr (in the given namespace) on its directory.
    Overlay(XattrNamespace),
    /// aufs: `.wh.` entries are kept as the files the tar holds.
    Aufs,
    /// A mounted union or a full tree: `.wh.<name>` deletes `<name>`, and
    /// `.wh..wh..opq` empties its directory of everything this tar did not add.
    Merged,
}

impl Default for WhiteoutFormat {
    fn default() -> Self {
        WhiteoutFormat::Overlay(XattrNamespace::Trusted)
    }
}

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
}

/// Headers, long names and PAX records of one entry may not exceed this.
const METADATA_LIMIT: u64 = 8 << 20;
/// Largest apparent size accepted for a sparse file.
const MAX_SPARSE_SIZE: u64 = 1 << 40;
const COPY_BUFFER: usize = 1 << 20;
const INPUT_BUFFER: usize = 128 << 10;

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
/// Not supported, each a typed error: GNU sparse formats 0.0 and 0.1 (1.0
/// and the old GNU `S` entries are), and PAX values holding a newline (the
/// `tar` parser splits records at newlines).
///
/// # Errors
/// [`Error::Root`] if `root` cannot be opened, [`Error::Tar`] for a malformed
/// archive, [`Error::Entry`] naming the entry that was refused or failed.
pub fn apply<R: Read>(reader: R, root: &Path, opts: &ApplyOptions) -> Result<ApplyStats, Error> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Root {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    apply_at(reader, fd.as_fd(), opts)
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
    let fd = rustix::fs::openat(
        root,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Root {
        path: PathBuf::from("."),
        source: e.into(),
    })?;
    let counter = Rc::new(Counter::default());
    // Headers are read 512 bytes at a time: buffer them; large file data
    // bypasses the buffer.
    let mut archive = tar::Archive::new(Counting {
        inner: io::BufReader::with_capacity(INPUT_BUFFER, reader),
        counter: Rc::clone(&counter),
    });
    let mut ctx = Applier::new(Root::new(fd), opts)?;
    let mut entries = archive.entries().map_err(|source| Error::Tar {
        position: 0,
        after: None,
        source,
    })?;
    let mut last: Option<PathBuf> = None;
    loop {
        counter.metadata_from.set(Some(counter.total.get()));
        let next = entries.next();
        counter.metadata_from.set(None);
        let mut entry = match next {
            None => break,
            Some(Ok(entry)) => entry,
            Some(Err(source)) => {
                return Err(Error::Tar {
                    position: counter.total.get(),
                    after: last,
                    source,
                });
            }
        };
        let name = PathBuf::from(OsString::from_vec(entry.path_bytes().into_owned()));
        ctx.entry(&mut entry).map_err(|reason| Error::Entry {
            entry: name.clone(),
            reason,
        })?;
        last = Some(name);
    }
    // Read what follows the end marker too, so a caller hashing the stream
    // (a layer digest) sees all of it.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|source| Error::Tar {
        position: counter.total.get(),
        after: last,
        source,
    })?;
    ctx.finish()?;
    ctx.stats.bytes = counter.total.get();
    Ok(ctx.stats)
}

#[derive(Default)]
struct Counter {
    total: Cell<u64>,
    /// Set while the parser reads headers: where that started.
    metadata_from: Cell<Option<u64>>,
}

/// Counts archive bytes and bounds what the parser may buffer for one entry.
struct Counting<R> {
    inner: R,
    counter: Rc<Counter>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.counter.total.get() + n as u64;
        self.counter.total.set(total);
        if let Some(from) = self.counter.metadata_from.get() {
            if total - from > METADATA_LIMIT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("headers of one entry exceed {METADATA_LIMIT} bytes"),
                ));
            }
        }
        Ok(n)
    }
}

/// Metadata of one entry, parsed before anything is created.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(OsString, Vec<u8>)>,
    /// PAX (GNU 1.0) sparse file description.
    sparse: Option<PaxSparse>,
}

/// A GNU 1.0 sparse file: the data starts with the map of its chunks.
#[derive(Default)]
struct PaxSparse {
    major: Option<u64>,
    minor: Option<u64>,
    name: Option<Vec<u8>>,
    realsize: u64,
}

struct DirMeta {
    mode: u32,
    times: Timestamps,
}

struct Applier<'o> {
    root: Root,
    opts: &'o ApplyOptions,
    stats: ApplyStats,
    /// The parent directory of the previous entry, kept open.
    parent_cache: Option<(Vec<u8>, Rc<OwnedFd>)>,
    /// Directory modes and times, set once their children are in place.
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// Paths this tar added (only for [`WhiteoutFormat::Merged`]).
    unpacked: HashSet<Vec<u8>>,
    /// Owner of directories made implicitly.
    implicit_owner: Option<(u32, u32)>,
    my_ids: (u32, u32),
    buf: Vec<u8>,
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
            parent_cache: None,
            dirs: HashMap::new(),
            unpacked: HashSet::new(),
            implicit_owner,
            my_ids: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
            buf: Vec::new(),
        })
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), EntryError> {
        let ty = entry.header().entry_type();
        if ty.is_pax_global_extensions() {
            return drain(entry);
        }
        // Every PAX record is checked before anything is made, whiteouts included.
        let meta = self.meta(entry)?;
        let path = match &meta.sparse {
            Some(PaxSparse {
                name: Some(name), ..
            }) => name.clone(),
            _ => entry.path_bytes().into_owned(),
        };
        let comps = resolve::components(&path)?;
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
                    drain(entry)?;
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
            self.owner_and_xattrs_fd(&fd, &meta)?;
            self.dirs.insert(
                Vec::new(),
                DirMeta {
                    mode: meta.mode,
                    times: meta.times,
                },
            );
            return drain(entry);
        }
        let (dir_comps, last) = comps.split_at(comps.len() - 1);
        let name = last[0];
        let parent = self.parent(dir_comps)?;
        let parent = parent.as_fd();
        match ty {
            t if t.is_dir() => {
                let fd = self.make_dir(parent, name)?;
                self.owner_and_xattrs_fd(&fd, &meta)?;
                self.dirs.insert(
                    resolve::join(&comps),
                    DirMeta {
                        mode: meta.mode,
                        times: meta.times,
                    },
                );
                drain(entry)
            }
            t if t.is_file() || t.is_contiguous() || t.is_gnu_sparse() => {
                let sparse = t.is_gnu_sparse();
                if sparse && entry.size() > MAX_SPARSE_SIZE {
                    return Err(EntryError::TooLarge(entry.size()));
                }
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
                if meta.sparse.is_some() {
                    let realsize = meta.sparse.as_ref().map_or(0, |sp| sp.realsize);
                    self.write_pax_sparse(entry, &fd, realsize)?;
                } else {
                    self.write_data(entry, &fd, sparse)?;
                }
                self.owner_and_xattrs_fd(&fd, &meta)?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                    .map_err(io_err("fchmod"))?;
                rustix::fs::futimens(&fd, &meta.times).map_err(io_err("futimens"))?;
                Ok(())
            }
            t if t.is_symlink() => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(EntryError::MissingLinkTarget)?
                    .into_owned();
                if target.contains(&0) {
                    return Err(EntryError::InvalidName("NUL byte in symlink target"));
                }
                if target.is_empty() {
                    return Err(EntryError::MissingLinkTarget);
                }
                self.create_with(parent, name, |p, n| {
                    rustix::fs::symlinkat(target.as_slice(), p, n)
                })?;
                self.node_meta(parent, name, &meta, false)?;
                drain(entry)
            }
            t if t.is_hard_link() => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(EntryError::MissingLinkTarget)?
                    .into_owned();
                let tcomps = resolve::components(&target)
                    .map_err(|e| EntryError::LinkTarget(Box::new(e)))?;
                let Some((tname, tdir)) = tcomps.split_last() else {
                    return Err(EntryError::LinkTarget(Box::new(EntryError::ReplacesRoot)));
                };
                let tparent = self
                    .root
                    .open_dir(tdir, false, None)
                    .map_err(io_err2("open hard link target directory"))?;
                if tdir == dir_comps && *tname == name {
                    return drain(entry);
                }
                self.create_with(parent, name, |p, n| {
                    rustix::fs::linkat(&tparent, *tname, p, n, AtFlags::empty())
                })?;
                drain(entry)
            }
            t if t.is_character_special() || t.is_block_special() || t.is_fifo() => {
                let fifo = t.is_fifo();
                let (file_type, dev) = if fifo {
                    (FileType::Fifo, 0)
                } else {
                    if !self.opts.privileged {
                        self.stats.skipped_devices += 1;
                        tracing::warn!(entry = %Path::new(OsStr::from_bytes(&path)).display(), "skipping device node in an unprivileged apply");
                        return drain(entry);
                    }
                    let major = entry
                        .header()
                        .device_major()
                        .map_err(header_err("devmajor"))?
                        .unwrap_or(0);
                    let minor = entry
                        .header()
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
                self.node_meta(parent, name, &meta, true)?;
                drain(entry)
            }
            other => Err(EntryError::UnsupportedType(other.as_byte() as char)),
        }
    }

    /// The directory `comps` names, made if missing; kept open for the next entry.
    fn parent(&mut self, comps: &[&OsStr]) -> Result<Rc<OwnedFd>, EntryError> {
        let key = resolve::join(comps);
        if let Some((k, fd)) = &self.parent_cache {
            if *k == key {
                return Ok(Rc::clone(fd));
            }
        }
        let fd = Rc::new(
            self.root
                .open_dir(comps, true, self.implicit_owner)
                .map_err(io_err2("open parent directory"))?,
        );
        self.parent_cache = Some((key, Rc::clone(&fd)));
        Ok(fd)
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
        self.parent_cache = None;
        remove_any(parent, name).map_err(io_err2("remove existing entry"))
    }

    fn make_dir(&mut self, parent: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, EntryError> {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err("stat"))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    self.remove(parent, name)?;
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .map_err(io_err("mkdir"))?;
                }
            }
            Err(e) => return Err(io_err("mkdir")(e)),
        }
        rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open directory"))
    }

    fn whiteout(
        &mut self,
        meta: &Meta,
        dir_comps: &[&OsStr],
        name: &OsStr,
        kind: NameKind<'_>,
    ) -> Result<(), EntryError> {
        let parent = self.parent(dir_comps)?;
        match (self.opts.whiteouts, kind) {
            (WhiteoutFormat::Overlay(_), NameKind::Whiteout(target)) => {
                self.remove(parent.as_fd(), target)?;
                plies_whiteout::create_overlay_whiteout(&parent, target)?;
                if meta.uid != u32::MAX {
                    let (uid, gid) = (meta.uid, meta.gid);
                    rustix::fs::chownat(
                        &parent,
                        target,
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(io_err("chown whiteout"))?;
                }
            }
            (WhiteoutFormat::Overlay(ns), NameKind::Opaque) => {
                plies_whiteout::set_opaque(&parent, ns)?;
            }
            (WhiteoutFormat::Merged, NameKind::Whiteout(target)) => {
                self.remove(parent.as_fd(), target)?;
            }
            (WhiteoutFormat::Merged, NameKind::Opaque) => {
                self.parent_cache = None;
                let mut prefix = resolve::join(dir_comps);
                empty_except(&parent, &mut prefix, &self.unpacked)
                    .map_err(io_err2("empty opaque directory"))?;
            }
            _ => {
                let _ = name;
            }
        }
        Ok(())
    }

    /// The mapped owner to set, or `None` when not privileged.
    fn owner<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
    ) -> Result<Option<(u32, u32)>, EntryError> {
        let h = entry.header();
        let uid = field(&h.as_old().uid, h.uid(), "uid")?;
        let gid = field(&h.as_old().gid, h.gid(), "gid")?;
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

    fn meta<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, EntryError> {
        let h = entry.header();
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
        let mut xattrs = Vec::new();
        let mut sparse: Option<PaxSparse> = None;
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(io_err2("read PAX records"))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| EntryError::Pax(e.to_string()))?;
                let key = ext.key_bytes();
                match key {
                    b"mtime" => mtime = pax_time(ext.value_bytes())?,
                    b"GNU.sparse.major" | b"GNU.sparse.minor" => {
                        let v = pax_number(ext.value_bytes())?;
                        let sp = sparse.get_or_insert_with(PaxSparse::default);
                        if key == b"GNU.sparse.major" {
                            sp.major = Some(v);
                        } else {
                            sp.minor = Some(v);
                        }
                    }
                    b"GNU.sparse.name" => {
                        sparse.get_or_insert_with(PaxSparse::default).name =
                            Some(ext.value_bytes().to_vec());
                    }
                    b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                        sparse.get_or_insert_with(PaxSparse::default).realsize =
                            pax_number(ext.value_bytes())?;
                    }
                    b"GNU.sparse.map" | b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                        return Err(EntryError::Pax(
                            "GNU sparse format 0.x (only 1.0 is supported)".into(),
                        ));
                    }
                    b"atime" => atime = Some(pax_time(ext.value_bytes())?),
                    _ => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            if name.starts_with(b"trusted.overlay.")
                                || name.starts_with(b"user.overlay.")
                            {
                                return Err(EntryError::OverlayXattr(
                                    String::from_utf8_lossy(name).into_owned(),
                                ));
                            }
                            if name.is_empty() || name.contains(&0) {
                                return Err(EntryError::Pax("xattr name".into()));
                            }
                            xattrs.push((
                                OsStr::from_bytes(name).to_os_string(),
                                ext.value_bytes().to_vec(),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(sp) = &sparse {
            if (sp.major, sp.minor) != (Some(1), Some(0)) {
                return Err(EntryError::Pax(format!(
                    "GNU sparse format {:?}.{:?} (only 1.0 is supported)",
                    sp.major, sp.minor
                )));
            }
            if sp.realsize > MAX_SPARSE_SIZE {
                return Err(EntryError::TooLarge(sp.realsize));
            }
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

    fn owner_and_xattrs_fd(&mut self, fd: &OwnedFd, meta: &Meta) -> Result<(), EntryError> {
        if meta.uid != u32::MAX {
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

    /// Owner, mode, xattrs and times of a node that is not opened
    /// (symlink, device, fifo).
    fn node_meta(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), EntryError> {
        if meta.uid != u32::MAX {
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
            // No fd-relative lsetxattr: go through this process's fd of the parent.
            let mut path = format!(
                "/proc/self/fd/{}/",
                std::os::fd::AsRawFd::as_raw_fd(&parent)
            )
            .into_bytes();
            path.extend_from_slice(name.as_bytes());
            for (xname, value) in &meta.xattrs {
                let r = rustix::fs::lsetxattr(
                    path.as_slice(),
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

    fn write_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        fd: &OwnedFd,
        sparse: bool,
    ) -> Result<(), EntryError> {
        let expected = entry.size();
        if self.buf.len() < COPY_BUFFER {
            self.buf.resize(COPY_BUFFER, 0);
        }
        let mut got: u64 = 0;
        let mut hole = false;
        loop {
            let want =
                usize::try_from((expected - got).min(COPY_BUFFER as u64)).unwrap_or(COPY_BUFFER);
            if want == 0 {
                break;
            }
            let n = match entry.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err2("read archive")(e)),
            };
            let data = &self.buf[..n];
            if sparse && data.iter().all(|b| *b == 0) {
                rustix::fs::seek(fd, rustix::fs::SeekFrom::Current(n as i64))
                    .map_err(io_err("seek"))?;
                hole = true;
            } else {
                write_all(fd, data)?;
                self.stats.size += n as u64;
            }
            got += n as u64;
        }
        if got < expected {
            return Err(EntryError::Truncated { expected, got });
        }
        if hole {
            rustix::fs::ftruncate(fd, got).map_err(io_err("ftruncate"))?;
        }
        Ok(())
    }

    /// Writes a GNU 1.0 sparse file: a map of decimal lines (count, then
    /// offset and length pairs) padded to a block, then the chunks.
    fn write_pax_sparse<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        fd: &OwnedFd,
        realsize: u64,
    ) -> Result<(), EntryError> {
        let expected = entry.size();
        let mut consumed: u64 = 0;
        let mut next_number = |consumed: &mut u64| -> Result<u64, EntryError> {
            let mut v: u64 = 0;
            let mut digits = 0;
            loop {
                let mut b = [0u8; 1];
                let n = entry.read(&mut b).map_err(io_err2("read archive"))?;
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
        let count = next_number(&mut consumed)?;
        let mut chunks = Vec::new();
        let mut end = 0u64;
        for _ in 0..count {
            let offset = next_number(&mut consumed)?;
            let len = next_number(&mut consumed)?;
            let chunk_end = offset
                .checked_add(len)
                .filter(|e| offset >= end && *e <= realsize);
            end = chunk_end.ok_or_else(|| EntryError::Pax("sparse map chunks".into()))?;
            chunks.push((offset, len));
        }
        let pad = (512 - consumed % 512) % 512;
        let skipped = io::copy(&mut entry.by_ref().take(pad), &mut io::sink())
            .map_err(io_err2("read archive"))?;
        consumed += skipped;
        if skipped < pad {
            return Err(EntryError::Truncated {
                expected,
                got: consumed,
            });
        }
        if self.buf.len() < COPY_BUFFER {
            self.buf.resize(COPY_BUFFER, 0);
        }
        for (offset, len) in chunks {
            rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(offset)).map_err(io_err("seek"))?;
            let mut left = len;
            while left > 0 {
                let want = usize::try_from(left.min(COPY_BUFFER as u64)).unwrap_or(COPY_BUFFER);
                let n = match entry.read(&mut self.buf[..want]) {
                    Ok(0) => {
                        return Err(EntryError::Truncated {
                            expected,
                            got: consumed,
                        });
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err2("read archive")(e)),
                };
                write_all(fd, &self.buf[..n])?;
                self.stats.size += n as u64;
                consumed += n as u64;
                left -= n as u64;
            }
        }
        rustix::fs::ftruncate(fd, realsize).map_err(io_err("ftruncate"))?;
        let rest = io::copy(entry, &mut io::sink()).map_err(io_err2("read archive"))?;
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
            let fd = match comps.split_last() {
                None => rustix::fs::openat(
                    self.root.fd(),
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
                Some((last, dir)) => {
                    let Ok(parent) = self.root.open_dir(dir, false, None) else {
                        continue;
                    };
                    rustix::fs::openat(
                        &parent,
                        *last,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                }
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

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> Result<(), EntryError> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io_err("write")(Errno::NOSPC)),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(io_err("write")(e)),
        }
    }
    Ok(())
}

/// Reads and discards what is left of an entry, checking it is all there.
fn drain<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<(), EntryError> {
    let expected = entry.size();
    let got = io::copy(entry, &mut io::sink()).map_err(io_err2("read archive"))?;
    if got < expected {
        // Whatever the caller already consumed is not counted here; callers
        // drain only entries whose data they did not read.
        return Err(EntryError::Truncated { expected, got });
    }
    Ok(())
}

/// Parses a PAX decimal number.
fn pax_number(value: &[u8]) -> Result<u64, EntryError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| EntryError::Pax(format!("number {:?}", String::from_utf8_lossy(value))))
}

/// Parses a PAX time: `[-]seconds[.fraction]`.
fn pax_time(value: &[u8]) -> Result<Timespec, EntryError> {
    let bad = || EntryError::Pax(format!("time {:?}", String::from_utf8_lossy(value)));
    let (neg, rest) = match value.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, value),
    };
    let (int, frac) = match rest.iter().position(|b| *b == b'.') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) || !frac.iter().all(u8::is_ascii_digit)
    {
        return Err(bad());
    }
    let secs: i64 = std::str::from_utf8(int)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut nsec: i64 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    Ok(if !neg {
        Timespec {
            tv_sec: secs,
            tv_nsec: nsec as _,
        }
    } else if nsec == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: (1_000_000_000 - nsec) as _,
        }
    })
}

/// Removes `name` in `parent` whatever it is; missing is fine.
pub(crate) fn remove_any(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return Err(Errno::PERM.into());
            }
            let dir = rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            for child in list_dir(&dir)? {
                remove_any(dir.as_fd(), &child)?;
            }
            rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory, without `.` and `..`.
pub(crate) fn list_dir(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(dir)? {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(names)
}

/// Removes everything below `dir` whose path (joined to `prefix`) this tar did not add.
fn empty_except(dir: &OwnedFd, prefix: &mut Vec<u8>, keep: &HashSet<Vec<u8>>) -> io::Result<()> {
    for child in list_dir(dir)? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = pax_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = pax_time(b"12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        let t = pax_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        let t = pax_time(b"1.1234567891").unwrap();
        assert_eq!(t.tv_nsec, 123_456_789);
        for bad in [
            &b""[..],
            b"x",
            b"1.2.3",
            b"-",
            b".5",
            b"99999999999999999999999",
        ] {
            assert!(pax_time(bad).is_err(), "{bad:?}");
        }
    }
}
