//! Helpers shared by the integration tests: raw tar writing and sparse files
//! (tree snapshots are `plies_testkit::tree`'s).
#![allow(dead_code)]

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// A tar written header by header, so tests can say things `tar::Builder` refuses.
#[derive(Default)]
pub struct RawTar {
    pub bytes: Vec<u8>,
}

/// One raw entry.
pub struct Raw<'a> {
    pub name: &'a [u8],
    pub ty: u8,
    pub data: &'a [u8],
    pub link: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: Option<u64>,
}

impl<'a> Raw<'a> {
    pub fn new(name: &'a [u8], ty: u8) -> Self {
        Raw {
            name,
            ty,
            data: b"",
            link: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            size: None,
        }
    }
    pub fn data(mut self, data: &'a [u8]) -> Self {
        self.data = data;
        self
    }
    pub fn link(mut self, link: &'a [u8]) -> Self {
        self.link = link;
        self
    }
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
}

pub fn header(e: &Raw<'_>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..e.name.len()].copy_from_slice(e.name);
        gnu.linkname[..e.link.len()].copy_from_slice(e.link);
    }
    h.set_entry_type(tar::EntryType::new(e.ty));
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    h.set_size(e.size.unwrap_or(e.data.len() as u64));
    h.set_cksum();
    h
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn entry(&mut self, e: Raw<'_>) -> &mut Self {
        let h = header(&e);
        self.header(&h);
        self.data(e.data);
        self
    }
    pub fn header(&mut self, h: &tar::Header) -> &mut Self {
        self.bytes.extend_from_slice(h.as_bytes());
        self
    }
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    /// A PAX extended header describing the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            plies_archive::pax::record(&mut body, k.as_bytes(), v);
        }
        let h = header(&Raw::new(b"././@PaxHeader", b'x').data(&body));
        self.header(&h);
        self.data(&body);
        self
    }
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(Raw::new(name.as_bytes(), b'0').data(data))
    }
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(Raw::new(name.as_bytes(), b'5').mode(0o755))
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            Raw::new(name.as_bytes(), b'2')
                .link(target.as_bytes())
                .mode(0o777),
        )
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(Raw::new(name.as_bytes(), b'1').link(target.as_bytes()))
    }
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.bytes);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// `len` bytes that differ from those of another `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(37))
        .collect()
}

/// Makes `path` a file `len` bytes long, holes but for each `(offset, bytes)`.
pub fn sparse_file(path: &Path, len: u64, data: &[(u64, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    for (offset, bytes) in data {
        f.write_all_at(bytes, *offset).unwrap();
    }
    f.set_len(len).unwrap();
}

/// Bytes the filesystem holds for the file at `path`.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Where the file at `path` holds data, `(offset, length)` in order, as
/// `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)` tell.
pub fn data_extents(path: &Path) -> Vec<(u64, u64)> {
    use rustix::fs::SeekFrom;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
            Ok(data) => data,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => panic!("SEEK_DATA on {}: {e}", path.display()),
        };
        let hole = rustix::fs::seek(&f, SeekFrom::Hole(data)).unwrap();
        out.push((data, hole - data));
        pos = hole;
    }
    out
}

/// Asserts that two files have the same length and bytes, reading only
/// where either holds data (holes read as zeros), so that sparse files a
/// terabyte long compare in a moment.
pub fn assert_same_content(a: &Path, b: &Path) {
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let len = fa.metadata().unwrap().len();
    assert_eq!(len, fb.metadata().unwrap().len(), "{}", b.display());
    let mut extents = data_extents(a);
    extents.extend(data_extents(b));
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for (offset, extent) in extents {
        let mut done = 0;
        while done < extent {
            let n = (extent - done).min(1 << 20) as usize;
            let at = offset + done;
            fa.read_exact_at(&mut x[..n], at).unwrap();
            fb.read_exact_at(&mut y[..n], at).unwrap();
            assert!(x[..n] == y[..n], "{} differs near byte {at}", b.display());
            done += n as u64;
        }
    }
}
