//! Exporting a layer directory as a layer tar: the walk of the tree, the
//! headers of its entries, the output they go to, and sparse files.

mod header;
mod sink;
mod sparse;
mod walk;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::io::Errno;

use crate::dir::{open_root, reopen_root};
use crate::error::Error;
use crate::format::WhiteoutFormat;
use crate::idmap::IdMap;

/// Options of [`export`]: [`ExportOptions::default`] and the `with_*` setters.
#[non_exhaustive]
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

impl ExportOptions {
    /// The same options with the exported directory's whiteout format `whiteouts`.
    pub fn with_whiteouts(mut self, whiteouts: WhiteoutFormat) -> ExportOptions {
        self.whiteouts = whiteouts;
        self
    }

    /// The same options with container-to-host uid ranges `uid_map`.
    pub fn with_uid_map(mut self, uid_map: Vec<IdMap>) -> ExportOptions {
        self.uid_map = uid_map;
        self
    }

    /// The same options with container-to-host gid ranges `gid_map`.
    pub fn with_gid_map(mut self, gid_map: Vec<IdMap>) -> ExportOptions {
        self.gid_map = gid_map;
        self
    }
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

const BLOCK: usize = 512;

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
/// [`apply`](fn@crate::apply) read it. Every other file, and any file on a
/// filesystem that cannot tell its holes, is written whole.
///
/// # Errors
/// [`Error::Root`] if `root` cannot be opened or listed; errors met later come
/// from [`Read::read`](io::Read::read) on the returned reader.
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
    /// Ends the export with `e`: every further read fails.
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

/// A file that ended before the size its header announced.
fn shrank(path: &[u8]) -> Error {
    Error::Export {
        path: PathBuf::from(OsString::from_vec(path.to_vec())),
        op: "read file (it shrank while being exported)",
        source: io::ErrorKind::UnexpectedEof.into(),
    }
}
