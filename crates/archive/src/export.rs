//! Exporting a layer directory as a layer tar.

mod sparse;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use plies_whiteout::{NameKind, OPAQUE_MARKER, WHITEOUT_PREFIX, XattrNamespace};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Stat};
use rustix::io::Errno;

use crate::dir::{self, open_root, reopen_root};
use crate::error::Error;
use crate::format::WhiteoutFormat;
use crate::idmap::{self, IdMap};
use crate::pax;
use crate::xattrs::{XattrSource, proc_path};

/// Options of [`export`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// The whiteout format of the directory being exported:
    /// [`WhiteoutFormat::Overlay`] (0/0 devices and opaque xattrs become `.wh.`
    /// entries), [`WhiteoutFormat::Aufs`] (`.wh.` files are kept, aufs private
    /// `.wh..wh.*` entries left out), or [`WhiteoutFormat::Merged`] for a plain
    /// tree without whiteouts.
    pub whiteouts: WhiteoutFormat,
    /// Container-to-host uid ranges; owners are mapped back to container ids
    /// (an owner outside the ranges is an error, but for whiteout entries,
    /// which keep it).
    pub uid_map: Vec<IdMap>,
    /// Container-to-host gid ranges; groups are mapped back to container ids.
    pub gid_map: Vec<IdMap>,
}

/// Reads a layer directory as a tar stream, entry by entry.
///
/// Returned by [`export`]. Memory stays small whatever the layer size: one
/// directory listing per level of the walk, the paths of multiply linked
/// files, and the map of the sparse file being read (at most 16384 data
/// segments: past that, the shortest holes are stored as zeros). An error
/// while reading is an [`io::Error`] wrapping this crate's [`Error`] (get it
/// back with `io::Error::into_inner` and `downcast`); after an error every
/// further read fails too.
pub struct Export {
    opts: ExportOptions,
    stack: Vec<Level>,
    out: Vec<u8>,
    out_pos: usize,
    body: Option<Body>,
    links: HashMap<(u64, u64), Vec<u8>>,
    noatime: bool,
    done: bool,
    failed: Option<String>,
    pending: Option<io::Error>,
    /// Whether the kernel can send file contents to the output of [`Export::write_to`].
    sendfile: bool,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("opts", &self.opts)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

struct Level {
    fd: OwnedFd,
    /// Path of this directory below the root, with a trailing `/` (empty for the root).
    path: Vec<u8>,
    names: Vec<OsString>,
    next: usize,
}

struct Body {
    file: File,
    path: Vec<u8>,
    /// Bytes left of the data segment being read (the whole file unless it
    /// is sparse).
    remaining: u64,
    /// A sparse file's data segments `(offset, length)` after the one being
    /// read, in order.
    segments: std::vec::IntoIter<(u64, u64)>,
    pad: usize,
}

/// A sparse file's entry names the file in PAX records: its real path, and
/// its length, which the stored data no longer is.
#[derive(Clone, Copy)]
struct SparseName<'a> {
    path: &'a [u8],
    realsize: u64,
}

/// Xattr names and values, sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

const BLOCK: usize = 512;
/// Output gathered by [`Export::write_to`] before each write.
const WRITE_BUFFER: usize = 1 << 20;
/// File contents at least this long are sent by the kernel in [`Export::write_to`].
const SEND_MIN: u64 = 32 << 10;
const OCTAL_8: u64 = 0o7777777;
const OCTAL_12: u64 = 0o77777777777;

/// Exports the layer directory `root` as a layer tar.
///
/// Entries come in sorted order with fixed header fields (no user or group
/// names, no access times), so the same tree always gives the same bytes. PAX
/// records carry long names, nanosecond mtimes, large ids and sizes, and
/// xattrs (`user.*`, `trusted.*`, `security.capability`; overlay's own never)
/// of every kind of node, symlinks and devices included. The root directory
/// itself is not an entry; sockets are skipped with a warning. A `.wh.` name
/// the source format cannot mean, or an overlay redirect or metacopy xattr,
/// is an [`Error::Inexpressible`].
///
/// A regular file with more than one block of its length unallocated is
/// searched for holes (`lseek` `SEEK_DATA`/`SEEK_HOLE`) and, where they save
/// space, written as a GNU PAX 1.0 sparse entry holding only its data, as
/// GNU tar writes it and GNU tar, Go's `archive/tar` and
/// [`apply`](crate::apply) read it. Every other file, and any file on a
/// filesystem that cannot tell its holes, is written whole.
///
/// # Errors
/// [`Error::Root`] if `root` cannot be opened or listed; errors met later come
/// from [`Read::read`] on the returned reader.
pub fn export(root: &Path, opts: &ExportOptions) -> Result<Export, Error> {
    export_fd(open_root(root)?, opts, root)
}

/// [`export`] of an already open directory.
///
/// # Errors
/// As [`export`].
pub fn export_at(root: BorrowedFd<'_>, opts: &ExportOptions) -> Result<Export, Error> {
    export_fd(reopen_root(root)?, opts, Path::new("."))
}

fn export_fd(fd: OwnedFd, opts: &ExportOptions, shown: &Path) -> Result<Export, Error> {
    let mut ex = Export {
        opts: opts.clone(),
        stack: Vec::new(),
        out: Vec::new(),
        out_pos: 0,
        body: None,
        links: HashMap::new(),
        noatime: true,
        done: false,
        failed: None,
        pending: None,
        sendfile: true,
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| Error::Root {
        path: shown.to_path_buf(),
        source: e.into(),
    })?;
    ex.enter_dir(fd, Vec::new(), &st).map_err(|e| match e {
        Error::Export { source, .. } => Error::Root {
            path: shown.to_path_buf(),
            source,
        },
        other => other,
    })?;
    Ok(ex)
}

fn export_err<'p>(path: &'p [u8], op: &'static str) -> impl FnOnce(Errno) -> Error + 'p {
    move |e| Error::Export {
        path: PathBuf::from(OsStr::from_bytes(path)),
        op,
        source: e.into(),
    }
}

impl Export {
    /// Lists a directory (already emitted) and pushes it on the walk; emits
    /// its opaque marker first if it has one.
    fn enter_dir(&mut self, fd: OwnedFd, path: Vec<u8>, st: &Stat) -> Result<(), Error> {
        let mut names = dir::list(&fd).map_err(|e| Error::Export {
            path: PathBuf::from(OsStr::from_bytes(&path)),
            op: "list directory",
            source: e,
        })?;
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let opaque = match self.opts.whiteouts {
            WhiteoutFormat::Overlay(ns) => {
                plies_whiteout::is_opaque(&fd, ns).map_err(|e| Error::Export {
                    path: PathBuf::from(OsStr::from_bytes(&path)),
                    op: "read opaque xattr",
                    source: io::Error::other(e.to_string()),
                })?
            }
            WhiteoutFormat::Aufs => match names.iter().position(|n| n == OPAQUE_MARKER) {
                Some(i) => {
                    names.remove(i);
                    true
                }
                None => false,
            },
            WhiteoutFormat::Merged => false,
        };
        if opaque {
            let mut marker = path.clone();
            marker.extend_from_slice(OPAQUE_MARKER.as_bytes());
            // aufs keeps the marker as a file of its own; overlay's marker
            // takes the directory's permissions and owner, as Docker writes it.
            let marker_st = match self.opts.whiteouts {
                WhiteoutFormat::Aufs => {
                    rustix::fs::statat(&fd, OPAQUE_MARKER, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(export_err(&marker, "stat"))?
                }
                _ => *st,
            };
            let mode = marker_st.st_mode & 0o777;
            self.push_header(
                &marker,
                tar::EntryType::Regular,
                &marker_st,
                mode,
                0,
                None,
                &[],
                &path,
                None,
            )?;
        }
        self.stack.push(Level {
            fd,
            path,
            names,
            next: 0,
        });
        Ok(())
    }

    /// Emits the next entry into `out` (and `body`); `false` once the walk is over.
    fn advance(&mut self) -> Result<bool, Error> {
        loop {
            let Some(level) = self.stack.last_mut() else {
                return Ok(false);
            };
            if level.next == level.names.len() {
                self.stack.pop();
                continue;
            }
            let name = std::mem::take(&mut level.names[level.next]);
            level.next += 1;
            let mut path = level.path.clone();
            path.extend_from_slice(name.as_bytes());
            let dir = level.fd.as_fd();
            let st = match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(export_err(&path, "stat")(e)),
            };
            let kind = if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
                Some(
                    plies_whiteout::classify(&name).map_err(|_| Error::Inexpressible {
                        path: PathBuf::from(OsStr::from_bytes(&path)),
                        reason: "malformed `.wh.` name",
                    })?,
                )
            } else {
                None
            };
            let ft = FileType::from_raw_mode(st.st_mode);
            match (self.opts.whiteouts, kind) {
                (_, None) => {}
                (WhiteoutFormat::Aufs, Some(NameKind::AufsMeta(_))) => continue,
                (WhiteoutFormat::Aufs, Some(NameKind::Whiteout(_)))
                    if ft == FileType::RegularFile =>
                {
                    // aufs whiteouts are often hard links of one another: always plain empty files.
                    self.push_header(
                        &path,
                        tar::EntryType::Regular,
                        &st,
                        st.st_mode & 0o7777,
                        0,
                        None,
                        &[],
                        &path,
                        None,
                    )?;
                    return Ok(true);
                }
                _ => {
                    return Err(Error::Inexpressible {
                        path: PathBuf::from(OsStr::from_bytes(&path)),
                        reason: "a `.wh.` name a layer tar cannot carry",
                    });
                }
            }
            let dir = self.stack[self.stack.len() - 1].fd.as_fd();
            match ft {
                FileType::Directory => {
                    let fd = rustix::fs::openat(
                        dir,
                        &name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(export_err(&path, "open directory"))?;
                    let xattrs = self.xattrs(XattrSource::Fd(fd.as_fd()), &path)?;
                    path.push(b'/');
                    self.push_header(
                        &path,
                        tar::EntryType::Directory,
                        &st,
                        st.st_mode & 0o7777,
                        0,
                        None,
                        &xattrs,
                        &path,
                        None,
                    )?;
                    self.enter_dir(fd, path, &st)?;
                    return Ok(true);
                }
                FileType::RegularFile => {
                    if st.st_nlink > 1 {
                        let key = (st.st_dev, st.st_ino);
                        if let Some(first) = self.links.get(&key) {
                            let first = first.clone();
                            self.push_header(
                                &path,
                                tar::EntryType::Link,
                                &st,
                                st.st_mode & 0o7777,
                                0,
                                Some(&first),
                                &[],
                                &path,
                                None,
                            )?;
                            return Ok(true);
                        }
                        self.links.insert(key, path.clone());
                    }
                    let fd = open_file(&mut self.noatime, dir, &name, &path)?;
                    let xattrs = self.xattrs(XattrSource::Fd(fd.as_fd()), &path)?;
                    let size = st.st_size as u64;
                    let layout = if sparse::may_have_holes(&st) {
                        sparse_layout(&fd, size, &path)?
                    } else {
                        None
                    };
                    let Some(layout) = layout else {
                        self.push_header(
                            &path,
                            tar::EntryType::Regular,
                            &st,
                            st.st_mode & 0o7777,
                            size,
                            None,
                            &xattrs,
                            &path,
                            None,
                        )?;
                        self.body = Some(Body {
                            file: File::from(fd),
                            path,
                            remaining: size,
                            segments: Vec::new().into_iter(),
                            pad: pad(size),
                        });
                        return Ok(true);
                    };
                    let stored = layout.stored();
                    self.push_header(
                        &sparse::placeholder(&path),
                        tar::EntryType::Regular,
                        &st,
                        st.st_mode & 0o7777,
                        stored,
                        None,
                        &xattrs,
                        &path,
                        Some(SparseName {
                            path: &path,
                            realsize: size,
                        }),
                    )?;
                    self.out.extend_from_slice(&layout.map);
                    self.body = Some(Body {
                        file: File::from(fd),
                        path,
                        remaining: 0,
                        segments: layout.segments.into_iter(),
                        pad: pad(stored),
                    });
                    return Ok(true);
                }
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(dir, &name, Vec::new())
                        .map_err(export_err(&path, "readlink"))?;
                    let target = target.into_bytes();
                    let node = proc_path(dir, &name);
                    let xattrs = self.xattrs(XattrSource::Path(&node), &path)?;
                    self.push_header(
                        &path,
                        tar::EntryType::Symlink,
                        &st,
                        0o777,
                        0,
                        Some(&target),
                        &xattrs,
                        &path,
                        None,
                    )?;
                    return Ok(true);
                }
                FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                    if let WhiteoutFormat::Overlay(_) = self.opts.whiteouts {
                        if plies_whiteout::is_overlay_whiteout(&st) {
                            let mut wh = self
                                .stack
                                .last()
                                .map(|l| l.path.clone())
                                .unwrap_or_default();
                            wh.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
                            wh.extend_from_slice(name.as_bytes());
                            self.push_header(
                                &wh,
                                tar::EntryType::Regular,
                                &st,
                                0o600,
                                0,
                                None,
                                &[],
                                &path,
                                None,
                            )?;
                            return Ok(true);
                        }
                    }
                    let ty = match ft {
                        FileType::CharacterDevice => tar::EntryType::Char,
                        FileType::BlockDevice => tar::EntryType::Block,
                        _ => tar::EntryType::Fifo,
                    };
                    let dir = self.stack[self.stack.len() - 1].fd.as_fd();
                    let node = proc_path(dir, &name);
                    let xattrs = self.xattrs(XattrSource::Path(&node), &path)?;
                    self.push_header(
                        &path,
                        ty,
                        &st,
                        st.st_mode & 0o7777,
                        0,
                        None,
                        &xattrs,
                        &path,
                        None,
                    )?;
                    return Ok(true);
                }
                _ => {
                    tracing::warn!(path = %Path::new(OsStr::from_bytes(&path)).display(), "skipping socket: a layer tar cannot carry it");
                    continue;
                }
            }
        }
    }

    /// The xattrs to carry, sorted; refuses layers with overlay redirects or metacopy.
    fn xattrs(&self, node: XattrSource<'_>, path: &[u8]) -> Result<Xattrs, Error> {
        let mut list = vec![0u8; 4096];
        let n = loop {
            match node.list(&mut list[..]) {
                Ok(n) => break n,
                Err(Errno::RANGE) if list.len() < 1 << 20 => list.resize(list.len() * 4, 0),
                Err(Errno::NOTSUP) => return Ok(Vec::new()),
                Err(e) => return Err(export_err(path, "list xattrs")(e)),
            }
        };
        let ns = match self.opts.whiteouts {
            WhiteoutFormat::Overlay(ns) => Some(ns),
            _ => None,
        };
        let mut out = Vec::new();
        for key in list[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
            if let Some(ns) = ns {
                if key == ns.redirect_key().as_bytes() || key == ns.metacopy_key().as_bytes() {
                    return Err(Error::Inexpressible {
                        path: PathBuf::from(OsStr::from_bytes(path)),
                        reason: "overlay redirect or metacopy xattr (needs a naive diff)",
                    });
                }
            }
            let carried = (key.starts_with(b"user.")
                && !key.starts_with(XattrNamespace::User.overlay_prefix().as_bytes()))
                || (key.starts_with(b"trusted.")
                    && !key.starts_with(XattrNamespace::Trusted.overlay_prefix().as_bytes()))
                || key == b"security.capability";
            if !carried {
                continue;
            }
            let mut value = vec![0u8; 65536];
            let len = match node.value(OsStr::from_bytes(key), &mut value[..]) {
                Ok(len) => len,
                Err(Errno::NODATA) => continue,
                Err(e) => return Err(export_err(path, "read xattr")(e)),
            };
            value.truncate(len);
            out.push((key.to_vec(), value));
        }
        out.sort();
        Ok(out)
    }

    /// Appends a PAX header (when needed) and the entry's header to `out`;
    /// `sparse` names a sparse file whose entry is `name`.
    #[allow(clippy::too_many_arguments)]
    fn push_header(
        &mut self,
        name: &[u8],
        ty: tar::EntryType,
        st: &Stat,
        mode: u32,
        size: u64,
        link: Option<&[u8]>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        shown: &[u8],
        sparse: Option<SparseName<'_>>,
    ) -> Result<(), Error> {
        let unmapped = |e: Error| match e {
            Error::Unmapped { kind, id } => Error::Export {
                path: PathBuf::from(OsStr::from_bytes(shown)),
                op: if kind == "uid" {
                    "map uid to the container"
                } else {
                    "map gid to the container"
                },
                source: io::Error::other(format!("{kind} {id} has no mapping")),
            },
            other => other,
        };
        let (uid, gid) = (u64::from(st.st_uid), u64::from(st.st_gid));
        let base = name.rsplit(|b| *b == b'/').next().unwrap_or(name);
        let (uid, gid) = if base.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Whiteouts are made by the kernel or by apply as the host's root,
            // and their owner means nothing: as Docker, an owner outside the
            // map is kept as it is rather than refused.
            (
                idmap::to_container(&self.opts.uid_map, uid, "uid").unwrap_or(uid),
                idmap::to_container(&self.opts.gid_map, gid, "gid").unwrap_or(gid),
            )
        } else {
            (
                idmap::to_container(&self.opts.uid_map, uid, "uid").map_err(unmapped)?,
                idmap::to_container(&self.opts.gid_map, gid, "gid").map_err(unmapped)?,
            )
        };
        let (secs, nsec) = (st.st_mtime, st.st_mtime_nsec as i64);
        let mut records = Vec::new();
        if let Some(sparse) = sparse {
            pax::sparse_records(&mut records, sparse.path, sparse.realsize);
        }
        if name.len() > 100 {
            pax::record(&mut records, b"path", name);
        }
        if let Some(link) = link {
            if link.len() > 100 {
                pax::record(&mut records, b"linkpath", link);
            }
        }
        if nsec != 0 || secs < 0 || secs as u64 > OCTAL_12 {
            pax::record(&mut records, b"mtime", pax::time(secs, nsec).as_bytes());
        }
        if uid > OCTAL_8 {
            pax::record(&mut records, b"uid", uid.to_string().as_bytes());
        }
        if gid > OCTAL_8 {
            pax::record(&mut records, b"gid", gid.to_string().as_bytes());
        }
        if size > OCTAL_12 {
            pax::record(&mut records, b"size", size.to_string().as_bytes());
        }
        for (key, value) in xattrs {
            pax::xattr_record(&mut records, key, value);
        }
        if !records.is_empty() {
            let mut h = tar::Header::new_ustar();
            set_bytes(&mut h.as_old_mut().name, b"././@PaxHeader");
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(records.len() as u64);
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_cksum();
            self.out.extend_from_slice(h.as_bytes());
            let pad = (BLOCK - records.len() % BLOCK) % BLOCK;
            self.out.extend_from_slice(&records);
            self.out.resize(self.out.len() + pad, 0);
        }
        let mut h = tar::Header::new_ustar();
        set_bytes(&mut h.as_old_mut().name, name);
        if let Some(link) = link {
            set_bytes(&mut h.as_old_mut().linkname, link);
        }
        h.set_mode(mode);
        h.set_uid(if uid > OCTAL_8 { 0 } else { uid });
        h.set_gid(if gid > OCTAL_8 { 0 } else { gid });
        h.set_size(if size > OCTAL_12 { 0 } else { size });
        h.set_mtime(if secs < 0 || secs as u64 > OCTAL_12 {
            0
        } else {
            secs as u64
        });
        h.set_entry_type(ty);
        if matches!(ty, tar::EntryType::Char | tar::EntryType::Block) {
            let rdev = st.st_rdev;
            h.set_device_major(rustix::fs::major(rdev))
                .map_err(|e| Error::Export {
                    path: PathBuf::from(OsStr::from_bytes(shown)),
                    op: "device major",
                    source: e,
                })?;
            h.set_device_minor(rustix::fs::minor(rdev))
                .map_err(|e| Error::Export {
                    path: PathBuf::from(OsStr::from_bytes(shown)),
                    op: "device minor",
                    source: e,
                })?;
        } else {
            h.set_device_major(0).ok();
            h.set_device_minor(0).ok();
        }
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        Ok(())
    }

    fn fail(&mut self, e: Error) -> io::Error {
        self.failed = Some(e.to_string());
        self.done = true;
        io::Error::other(e)
    }
}

/// Zeros that fill the last block of `size` bytes of data.
fn pad(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Where the data of the open file `fd` lies, if it is better exported as a
/// sparse file (`size` bytes long when it was listed).
fn sparse_layout(fd: &OwnedFd, size: u64, path: &[u8]) -> Result<Option<sparse::Layout>, Error> {
    let Some(layout) = sparse::scan(fd, size).map_err(export_err(path, "find holes"))? else {
        return Ok(None);
    };
    // A file cut short before the search would pass for one with a hole at its end.
    let now = rustix::fs::fstat(fd).map_err(export_err(path, "stat"))?;
    if (now.st_size as u64) < size {
        return Err(shrank(path));
    }
    Ok(Some(layout))
}

/// Opens a file to export, without touching its atime where allowed.
fn open_file(
    noatime: &mut bool,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    path: &[u8],
) -> Result<OwnedFd, Error> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if *noatime {
        match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
            Err(Errno::PERM) => *noatime = false,
            other => return other.map_err(export_err(path, "open file")),
        }
    }
    rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(export_err(path, "open file"))
}

/// Copies `value` into a header field, truncated to fit (PAX carries the whole).
fn set_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

impl Read for Export {
    /// Fills `buf` as far as the stream goes, so a large buffer means few
    /// writes downstream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        if let Some(msg) = &self.failed {
            return Err(io::Error::other(format!("export already failed: {msg}")));
        }
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_piece(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                // Hand out what is ready; the error comes with the next read.
                Err(e) if filled > 0 => {
                    self.pending = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

impl Export {
    /// Writes the rest of the tar to `out` (a file, pipe or socket); the
    /// number of bytes written.
    ///
    /// The same bytes as [`Read::read`] gives, with fewer copies: headers and
    /// small files are gathered into large writes, and larger file contents
    /// go from the file to `out` in the kernel (`sendfile`; into a pipe
    /// without being copied at all). Where the kernel cannot send to `out`,
    /// they are read and written.
    ///
    /// # Errors
    /// As [`Read::read`]: an [`io::Error`] wrapping this crate's [`Error`],
    /// or the error writing to `out`. What was ready before the error has
    /// been written.
    pub fn write_to(&mut self, out: impl AsFd) -> io::Result<u64> {
        let out = out.as_fd();
        let mut buf = vec![0u8; WRITE_BUFFER];
        let mut filled = 0;
        let mut total = 0u64;
        let flush = |buf: &[u8], total: &mut u64| -> io::Result<()> {
            write_all(out, buf)?;
            *total += buf.len() as u64;
            Ok(())
        };
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        if let Some(msg) = &self.failed {
            return Err(io::Error::other(format!("export already failed: {msg}")));
        }
        loop {
            if let Err(e) = self.next_segment() {
                flush(&buf[..filled], &mut total)?;
                return Err(e);
            }
            let large = self.out_pos == self.out.len()
                && self.body.as_ref().is_some_and(|b| b.remaining >= SEND_MIN);
            if large && self.sendfile {
                flush(&buf[..filled], &mut total)?;
                filled = 0;
                total += self.send_body(out)?;
                continue;
            }
            if filled == buf.len() {
                flush(&buf, &mut total)?;
                filled = 0;
            }
            match self.read_piece(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    flush(&buf[..filled], &mut total)?;
                    return Err(e);
                }
            }
        }
        flush(&buf[..filled], &mut total)?;
        Ok(total)
    }

    /// Once the data segment being read is done, moves to the next one of a
    /// sparse file (no-op otherwise).
    fn next_segment(&mut self) -> io::Result<()> {
        let Some(body) = &mut self.body else {
            return Ok(());
        };
        while body.remaining == 0 {
            let Some((offset, len)) = body.segments.next() else {
                return Ok(());
            };
            if len == 0 {
                continue;
            }
            if let Err(e) = rustix::fs::seek(&body.file, SeekFrom::Start(offset)) {
                let e = export_err(&body.path, "seek to data")(e);
                return Err(self.fail(e));
            }
            body.remaining = len;
        }
        Ok(())
    }

    /// Sends what is left of the current data segment to `out` in the
    /// kernel; the bytes sent (0 when the kernel cannot, and `sendfile` is
    /// then off).
    fn send_body(&mut self, out: BorrowedFd<'_>) -> io::Result<u64> {
        let Some(body) = &mut self.body else {
            return Ok(0);
        };
        let mut sent = 0u64;
        while body.remaining > 0 {
            let want = usize::try_from(body.remaining.min(1 << 30)).unwrap_or(1 << 30);
            match rustix::fs::sendfile(out, &body.file, None, want) {
                Ok(0) => {
                    let e = shrank(&body.path);
                    return Err(self.fail(e));
                }
                Ok(n) => {
                    body.remaining -= n as u64;
                    sent += n as u64;
                }
                Err(Errno::INTR) => {}
                Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if sent == 0 => {
                    self.sendfile = false;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    }
}

/// A file that ended before the size its header announced.
fn shrank(path: &[u8]) -> Error {
    Error::Export {
        path: PathBuf::from(OsString::from_vec(path.to_vec())),
        op: "read file (it shrank while being exported)",
        source: io::ErrorKind::UnexpectedEof.into(),
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Export {
    /// Copies out part of the next piece: headers, file data or padding.
    fn read_piece(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out.len() {
                let n = (self.out.len() - self.out_pos).min(buf.len());
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            self.next_segment()?;
            if let Some(body) = &mut self.body {
                if body.remaining > 0 {
                    let want = buf
                        .len()
                        .min(usize::try_from(body.remaining).unwrap_or(usize::MAX));
                    let n = match body.file.read(&mut buf[..want]) {
                        Ok(0) => {
                            let e = shrank(&body.path);
                            return Err(self.fail(e));
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(source) => {
                            let e = Error::Export {
                                path: PathBuf::from(OsString::from_vec(body.path.clone())),
                                op: "read file",
                                source,
                            };
                            return Err(self.fail(e));
                        }
                    };
                    body.remaining -= n as u64;
                    return Ok(n);
                }
                let pad = body.pad;
                self.body = None;
                self.out.clear();
                self.out.resize(pad, 0);
                self.out_pos = 0;
                continue;
            }
            if self.done {
                return Ok(0);
            }
            self.out.clear();
            self.out_pos = 0;
            match self.advance() {
                Ok(true) => {}
                Ok(false) => {
                    self.out.resize(2 * BLOCK, 0);
                    self.done = true;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }
}
