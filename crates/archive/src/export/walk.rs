//! The walk of the layer directory: sorted, depth first, one entry per node,
//! whiteouts in the tar's format, hard links after their first name.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use plies_whiteout::{NameKind, OPAQUE_MARKER, WHITEOUT_PREFIX, XattrNamespace};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::header::EntryHeader;
use super::{Body, Export, Level, export_err, pad, shrank, sparse};
use crate::dir;
use crate::error::Error;
use crate::format::WhiteoutFormat;
use crate::xattrs::{XattrSource, proc_path};

/// Xattr names and values, sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A name of the walk, and what it is.
struct Node {
    name: OsString,
    /// Its path below the root.
    path: Vec<u8>,
    st: Stat,
}

impl Export {
    /// Lists a directory (already emitted) and pushes it on the walk; emits
    /// its opaque marker first if it has one.
    pub(super) fn enter_dir(&mut self, fd: OwnedFd, path: Vec<u8>, st: &Stat) -> Result<(), Error> {
        let mut names = dir::list(&fd).map_err(|e| Error::Export {
            path: PathBuf::from(OsStr::from_bytes(&path)),
            op: "list directory",
            source: e,
        })?;
        if self.opts.whiteouts == WhiteoutFormat::Aufs {
            // A whiteout where the name it deletes sorts, as overlay's are.
            names.sort_unstable_by(|a, b| aufs_order(a).cmp(&aufs_order(b)));
        } else {
            names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        }
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
            let header = EntryHeader::new(&marker, tar::EntryType::Regular, &marker_st)
                .mode(mode)
                .shown(&path);
            self.push_header(&header)?;
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
    pub(super) fn advance(&mut self) -> Result<bool, Error> {
        while let Some(node) = self.next_node()? {
            if self.emit(node)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The next name of the walk; directories whose names are all taken are
    /// left, names gone since they were listed skipped. `None` at the end.
    fn next_node(&mut self) -> Result<Option<Node>, Error> {
        loop {
            let Some(level) = self.stack.last_mut() else {
                return Ok(None);
            };
            if level.next == level.names.len() {
                self.stack.pop();
                continue;
            }
            let name = std::mem::take(&mut level.names[level.next]);
            level.next += 1;
            let mut path = level.path.clone();
            path.extend_from_slice(name.as_bytes());
            match rustix::fs::statat(level.fd.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => return Ok(Some(Node { name, path, st })),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(export_err(&path, "stat")(e)),
            }
        }
    }

    /// The directory being walked, which holds the node taken last.
    fn dir(&self) -> BorrowedFd<'_> {
        self.stack[self.stack.len() - 1].fd.as_fd()
    }

    /// Emits the entry of `node`; `false` when it has none (aufs metadata, a socket).
    fn emit(&mut self, node: Node) -> Result<bool, Error> {
        if let Some(emitted) = self.emit_dot_wh(&node)? {
            return Ok(emitted);
        }
        match FileType::from_raw_mode(node.st.st_mode) {
            FileType::Directory => self.emit_dir(node),
            FileType::RegularFile => self.emit_file(node),
            FileType::Symlink => self.emit_symlink(node),
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                self.emit_device(node)
            }
            _ => {
                tracing::warn!(path = %Path::new(OsStr::from_bytes(&node.path)).display(), "skipping socket: a layer tar cannot carry it");
                Ok(false)
            }
        }
    }

    /// A `.wh.` name in the tree: an aufs whiteout is emitted as it is
    /// (`Some(true)`), aufs's own metadata left out (`Some(false)`), any other
    /// is inexpressible. `None` for a name without the prefix.
    fn emit_dot_wh(&mut self, node: &Node) -> Result<Option<bool>, Error> {
        if !node.name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Ok(None);
        }
        let kind = plies_whiteout::classify(&node.name).map_err(|_| Error::Inexpressible {
            path: PathBuf::from(OsStr::from_bytes(&node.path)),
            reason: "malformed `.wh.` name",
        })?;
        let ft = FileType::from_raw_mode(node.st.st_mode);
        match (self.opts.whiteouts, kind) {
            (WhiteoutFormat::Aufs, NameKind::AufsMeta(_)) => Ok(Some(false)),
            (WhiteoutFormat::Aufs, NameKind::Whiteout(_)) if ft == FileType::RegularFile => {
                // aufs whiteouts are often hard links of one another: always plain empty files.
                self.push_header(&EntryHeader::new(
                    &node.path,
                    tar::EntryType::Regular,
                    &node.st,
                ))?;
                Ok(Some(true))
            }
            _ => Err(Error::Inexpressible {
                path: PathBuf::from(OsStr::from_bytes(&node.path)),
                reason: "a `.wh.` name a layer tar cannot carry",
            }),
        }
    }

    /// A directory: its entry, then the walk goes into it.
    fn emit_dir(&mut self, node: Node) -> Result<bool, Error> {
        let Node { name, mut path, st } = node;
        let fd = rustix::fs::openat(
            self.dir(),
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(export_err(&path, "open directory"))?;
        let xattrs = self.xattrs(XattrSource::Fd(fd.as_fd()), &path)?;
        path.push(b'/');
        self.push_header(&EntryHeader::new(&path, tar::EntryType::Directory, &st).xattrs(&xattrs))?;
        self.enter_dir(fd, path, &st)?;
        Ok(true)
    }

    /// A regular file: a hard link to its first name when it has more than
    /// one, else its entry and data (its data segments if it has holes).
    fn emit_file(&mut self, node: Node) -> Result<bool, Error> {
        let Node { name, path, st } = node;
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                self.push_header(&EntryHeader::new(&path, tar::EntryType::Link, &st).link(&first))?;
                return Ok(true);
            }
            self.links.insert(key, path.clone());
        }
        let dir = self.stack[self.stack.len() - 1].fd.as_fd();
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
                &EntryHeader::new(&path, tar::EntryType::Regular, &st)
                    .size(size)
                    .xattrs(&xattrs),
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
            &EntryHeader::new(&sparse::placeholder(&path), tar::EntryType::Regular, &st)
                .size(stored)
                .xattrs(&xattrs)
                .shown(&path)
                .sparse(&path, size),
        )?;
        self.out.extend_from_slice(&layout.map);
        self.body = Some(Body {
            file: File::from(fd),
            path,
            remaining: 0,
            segments: layout.segments.into_iter(),
            pad: pad(stored),
        });
        Ok(true)
    }

    fn emit_symlink(&mut self, node: Node) -> Result<bool, Error> {
        let Node { name, path, st } = node;
        let dir = self.dir();
        let target = rustix::fs::readlinkat(dir, &name, Vec::new())
            .map_err(export_err(&path, "readlink"))?;
        let target = target.into_bytes();
        let node = proc_path(dir, &name);
        let xattrs = self.xattrs(XattrSource::Path(&node), &path)?;
        self.push_header(
            &EntryHeader::new(&path, tar::EntryType::Symlink, &st)
                .mode(0o777)
                .link(&target)
                .xattrs(&xattrs),
        )?;
        Ok(true)
    }

    /// A device node or fifo; in an overlay layer, a 0/0 character device is
    /// a whiteout and becomes the `.wh.` entry of its name.
    fn emit_device(&mut self, node: Node) -> Result<bool, Error> {
        let Node { name, path, st } = node;
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
                    &EntryHeader::new(&wh, tar::EntryType::Regular, &st)
                        .mode(0o600)
                        .shown(&path),
                )?;
                return Ok(true);
            }
        }
        let ty = match FileType::from_raw_mode(st.st_mode) {
            FileType::CharacterDevice => tar::EntryType::Char,
            FileType::BlockDevice => tar::EntryType::Block,
            _ => tar::EntryType::Fifo,
        };
        let node = proc_path(self.dir(), &name);
        let xattrs = self.xattrs(XattrSource::Path(&node), &path)?;
        self.push_header(&EntryHeader::new(&path, ty, &st).xattrs(&xattrs))?;
        Ok(true)
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

/// Where an aufs branch's name sorts: a whiteout (`.wh.<name>`, not aufs
/// metadata) just before `<name>`, any other name as itself.
fn aufs_order(name: &OsStr) -> (&[u8], bool) {
    let bytes = name.as_bytes();
    match bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        Some(deleted) if !deleted.starts_with(WHITEOUT_PREFIX.as_bytes()) => (deleted, false),
        _ => (bytes, true),
    }
}
