//! Layer tars built entry by entry, with the `tar` crate's own writer.
//!
//! ```
//! use plies_testkit::layer_tar::LayerTar;
//!
//! let tar = LayerTar::new()
//!     .dir("etc", 0o755)
//!     .file("etc/motd", "hi", 0o644)
//!     .whiteout("etc/hosts")
//!     .opaque("var/cache")
//!     .xattr("user.plies", b"yes")
//!     .file("attr", "with an xattr", 0o600)
//!     .symlink("etc/link", "motd")
//!     .hardlink("etc/again", "etc/motd")
//!     .finish();
//! let names: Vec<String> = tar::Archive::new(tar.as_slice())
//!     .entries()
//!     .unwrap()
//!     .map(|e| e.unwrap().path().unwrap().display().to_string())
//!     .collect();
//! assert_eq!(
//!     names,
//!     ["etc", "etc/motd", "etc/.wh.hosts", "var/cache/.wh..wh..opq", "attr", "etc/link", "etc/again"]
//! );
//! ```

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

/// The modification time of every entry unless [`LayerTar::mtime`] says another.
pub const MTIME: u64 = 1_600_000_000;

/// A tar written entry by entry: each header gets its type, mode, size, owner
/// and modification time set, then the `tar` crate writes it (long names as GNU
/// long-name entries or ustar prefixes) and its checksum. Every method but
/// [`finish`](LayerTar::finish) returns the builder, to chain.
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
    ustar: bool,
    mtime: u64,
    owner: (u64, u64),
    /// PAX records for the next entry.
    pax: Vec<(String, Vec<u8>)>,
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LayerTar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerTar")
            .field("bytes", &self.builder.get_ref().len())
            .field("ustar", &self.ustar)
            .field("mtime", &self.mtime)
            .field("owner", &self.owner)
            .field("pax", &self.pax)
            .finish()
    }
}

impl LayerTar {
    /// An empty tar of GNU headers, entries owned by 0:0 with mtime [`MTIME`].
    pub fn new() -> Self {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
            ustar: false,
            mtime: MTIME,
            owner: (0, 0),
            pax: Vec::new(),
        }
    }

    /// [`LayerTar::new`], with ustar headers instead.
    pub fn ustar() -> Self {
        LayerTar {
            ustar: true,
            ..Self::new()
        }
    }

    /// The modification time of the entries that follow.
    pub fn mtime(&mut self, mtime: u64) -> &mut Self {
        self.mtime = mtime;
        self
    }

    /// The owner of the entries that follow.
    pub fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.owner = (uid, gid);
        self
    }

    /// The xattr `key` (`user.plies`, say) on the next entry: a PAX record
    /// `SCHILY.xattr.<key>`, in one PAX header with the next entry's others.
    pub fn xattr(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.pax
            .push((format!("SCHILY.xattr.{key}"), value.to_vec()));
        self
    }

    /// A directory. The name is written as given (a trailing `/` is the tar
    /// crate's to keep or drop).
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32) -> &mut Self {
        let mut h = self.header(tar::EntryType::Directory, mode, 0);
        self.flush_pax();
        self.builder.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// A regular file holding `data`.
    pub fn file(&mut self, path: impl AsRef<Path>, data: impl AsRef<[u8]>, mode: u32) -> &mut Self {
        let data = data.as_ref();
        let mut h = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        self.flush_pax();
        self.builder.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A symlink to `target`, mode 0777.
    pub fn symlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> &mut Self {
        self.link(tar::EntryType::Symlink, 0o777, path, target)
    }

    /// A hard link to the earlier entry `target`, mode 0644.
    pub fn hardlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> &mut Self {
        self.link(tar::EntryType::Link, 0o644, path, target)
    }

    /// A FIFO.
    pub fn fifo(&mut self, path: impl AsRef<Path>, mode: u32) -> &mut Self {
        let mut h = self.header(tar::EntryType::Fifo, mode, 0);
        self.flush_pax();
        self.builder.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// The whiteout of `path`: an empty file `.wh.<name>` beside it, mode 0644.
    pub fn whiteout(&mut self, path: impl AsRef<Path>) -> &mut Self {
        let path = path.as_ref();
        let name = path.file_name().expect("a whiteout names an entry");
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        let parent = path.parent().unwrap_or(Path::new(""));
        self.file(parent.join(wh), b"", 0o644)
    }

    /// The opaque marker of directory `dir`: an empty file `.wh..wh..opq` in it,
    /// mode 0644.
    pub fn opaque(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.file(dir.as_ref().join(".wh..wh..opq"), b"", 0o644)
    }

    /// Ends the tar (two zero blocks) and returns its bytes; the builder is
    /// empty again after.
    pub fn finish(&mut self) -> Vec<u8> {
        assert!(self.pax.is_empty(), "an xattr with no entry after it");
        std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }

    fn link(
        &mut self,
        kind: tar::EntryType,
        mode: u32,
        path: impl AsRef<Path>,
        target: impl AsRef<Path>,
    ) -> &mut Self {
        let mut h = self.header(kind, mode, 0);
        self.flush_pax();
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = if self.ustar {
            tar::Header::new_ustar()
        } else {
            tar::Header::new_gnu()
        };
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(self.mtime);
        h.set_uid(self.owner.0);
        h.set_gid(self.owner.1);
        h
    }

    fn flush_pax(&mut self) {
        if !self.pax.is_empty() {
            let records = std::mem::take(&mut self.pax);
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
    }
}
