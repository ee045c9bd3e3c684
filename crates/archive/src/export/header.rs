//! The headers of an exported entry: a PAX extended header when the ustar
//! fields cannot hold a value, then the entry's ustar header.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use plies_whiteout::WHITEOUT_PREFIX;
use rustix::fs::Stat;

use super::{BLOCK, Export, ExportOptions};
use crate::error::Error;
use crate::idmap;
use crate::pax;

/// Largest value of an 8-byte octal field (mode, uid, gid).
const OCTAL_8: u64 = 0o7777777;
/// Largest value of a 12-byte octal field (size, mtime).
const OCTAL_12: u64 = 0o77777777777;

/// A sparse file's entry names the file in PAX records: its real path, and
/// its length, which the stored data no longer is.
#[derive(Clone, Copy)]
struct SparseName<'a> {
    path: &'a [u8],
    realsize: u64,
}

/// What the headers of one entry say: built with [`EntryHeader::new`] and
/// the setters for what differs from a plain node, then written by
/// [`Export::push_header`].
pub(super) struct EntryHeader<'a> {
    /// The entry's name in the tar.
    name: &'a [u8],
    ty: tar::EntryType,
    /// The node: owner, times, device number.
    st: &'a Stat,
    mode: u32,
    /// Bytes of data that follow the header.
    size: u64,
    link: Option<&'a [u8]>,
    /// Xattr names and values, sorted by name.
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
    /// The path errors name (the node's, where the entry's name is a
    /// whiteout or a sparse file's placeholder).
    shown: &'a [u8],
    sparse: Option<SparseName<'a>>,
}

impl<'a> EntryHeader<'a> {
    /// The entry `name` of type `ty` for the node `st`: its permission bits,
    /// no data, no link target, no xattrs, and errors naming `name`.
    pub(super) fn new(name: &'a [u8], ty: tar::EntryType, st: &'a Stat) -> Self {
        EntryHeader {
            name,
            ty,
            st,
            mode: st.st_mode & 0o7777,
            size: 0,
            link: None,
            xattrs: &[],
            shown: name,
            sparse: None,
        }
    }

    /// Another mode than the node's permission bits.
    pub(super) fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// The bytes of data that follow the header.
    pub(super) fn size(mut self, size: u64) -> Self {
        self.size = size;
        self
    }

    /// The link target of a symlink or hard link.
    pub(super) fn link(mut self, link: &'a [u8]) -> Self {
        self.link = Some(link);
        self
    }

    /// The xattrs to carry, sorted by name.
    pub(super) fn xattrs(mut self, xattrs: &'a [(Vec<u8>, Vec<u8>)]) -> Self {
        self.xattrs = xattrs;
        self
    }

    /// The path errors name, where it is not the entry's name.
    pub(super) fn shown(mut self, path: &'a [u8]) -> Self {
        self.shown = path;
        self
    }

    /// The entry is a GNU 1.0 sparse file whose real path is `path` and real
    /// length `realsize` (its name is a placeholder, its data the map and the
    /// data segments).
    pub(super) fn sparse(mut self, path: &'a [u8], realsize: u64) -> Self {
        self.sparse = Some(SparseName { path, realsize });
        self
    }

    /// The owner written: the node's, mapped back to container ids.
    fn owner(&self, opts: &ExportOptions) -> Result<(u64, u64), Error> {
        let unmapped = |e: Error| match e {
            Error::Unmapped { kind, id } => Error::Export {
                path: PathBuf::from(OsStr::from_bytes(self.shown)),
                op: if kind == "uid" {
                    "map uid to the container"
                } else {
                    "map gid to the container"
                },
                source: io::Error::other(format!("{kind} {id} has no mapping")),
            },
            other => other,
        };
        let (uid, gid) = (u64::from(self.st.st_uid), u64::from(self.st.st_gid));
        let base = self.name.rsplit(|b| *b == b'/').next().unwrap_or(self.name);
        Ok(if base.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Whiteouts are made by the kernel or by apply as the host's root,
            // and their owner means nothing: as Docker, an owner outside the
            // map is kept as it is rather than refused.
            (
                idmap::to_container(&opts.uid_map, uid, "uid").unwrap_or(uid),
                idmap::to_container(&opts.gid_map, gid, "gid").unwrap_or(gid),
            )
        } else {
            (
                idmap::to_container(&opts.uid_map, uid, "uid").map_err(unmapped)?,
                idmap::to_container(&opts.gid_map, gid, "gid").map_err(unmapped)?,
            )
        })
    }

    /// The modification time: seconds and nanoseconds.
    fn mtime(&self) -> (i64, i64) {
        (self.st.st_mtime, self.st.st_mtime_nsec as i64)
    }

    /// The PAX records for what the ustar fields cannot hold; empty when they
    /// hold it all.
    fn records(&self, uid: u64, gid: u64) -> Vec<u8> {
        let (secs, nsec) = self.mtime();
        let mut records = Vec::new();
        if let Some(sparse) = self.sparse {
            pax::sparse_records(&mut records, sparse.path, sparse.realsize);
        }
        if self.name.len() > 100 {
            pax::record(&mut records, b"path", self.name);
        }
        if let Some(link) = self.link {
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
        if self.size > OCTAL_12 {
            pax::record(&mut records, b"size", self.size.to_string().as_bytes());
        }
        for (key, value) in self.xattrs {
            pax::xattr_record(&mut records, key, value);
        }
        records
    }

    /// The entry's own ustar header; a value too large for its field is 0
    /// there (the PAX records carry it).
    fn ustar(&self, uid: u64, gid: u64) -> Result<tar::Header, Error> {
        let (secs, _) = self.mtime();
        let mut h = tar::Header::new_ustar();
        set_bytes(&mut h.as_old_mut().name, self.name);
        if let Some(link) = self.link {
            set_bytes(&mut h.as_old_mut().linkname, link);
        }
        h.set_mode(self.mode);
        h.set_uid(if uid > OCTAL_8 { 0 } else { uid });
        h.set_gid(if gid > OCTAL_8 { 0 } else { gid });
        h.set_size(if self.size > OCTAL_12 { 0 } else { self.size });
        h.set_mtime(if secs < 0 || secs as u64 > OCTAL_12 {
            0
        } else {
            secs as u64
        });
        h.set_entry_type(self.ty);
        if matches!(self.ty, tar::EntryType::Char | tar::EntryType::Block) {
            let rdev = self.st.st_rdev;
            let err = |op: &'static str| {
                move |source: io::Error| Error::Export {
                    path: PathBuf::from(OsStr::from_bytes(self.shown)),
                    op,
                    source,
                }
            };
            h.set_device_major(rustix::fs::major(rdev))
                .map_err(err("device major"))?;
            h.set_device_minor(rustix::fs::minor(rdev))
                .map_err(err("device minor"))?;
        } else {
            h.set_device_major(0).ok();
            h.set_device_minor(0).ok();
        }
        h.set_cksum();
        Ok(h)
    }
}

impl Export {
    /// Appends the entry's headers to `out`: a PAX header when needed, then
    /// its own.
    ///
    /// # Errors
    /// [`Error::Export`] naming the node when its owner has no mapping or
    /// its device number does not fit.
    pub(super) fn push_header(&mut self, entry: &EntryHeader<'_>) -> Result<(), Error> {
        let (uid, gid) = entry.owner(&self.opts)?;
        let records = entry.records(uid, gid);
        if !records.is_empty() {
            push_pax_header(&mut self.out, &records);
        }
        let h = entry.ustar(uid, gid)?;
        self.out.extend_from_slice(h.as_bytes());
        Ok(())
    }
}

/// Appends a PAX extended header holding `records`, padded to a block.
fn push_pax_header(out: &mut Vec<u8>, records: &[u8]) {
    let mut h = tar::Header::new_ustar();
    set_bytes(&mut h.as_old_mut().name, b"././@PaxHeader");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(records.len() as u64);
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    let pad = (BLOCK - records.len() % BLOCK) % BLOCK;
    out.extend_from_slice(records);
    out.resize(out.len() + pad, 0);
}

/// Copies `value` into a header field, truncated to fit (PAX carries the whole).
fn set_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}
