//! Sparse files in GNU's PAX format 1.0: where a file's data lies, the map
//! that starts its stored data, and the placeholder name of its entry.

use rustix::fd::AsFd;
use rustix::fs::{SeekFrom, Stat};
use rustix::io::Errno;

/// Most data segments kept for one file. Past this the shortest holes are
/// stored as the zeros they read as, so the map (held in memory while the
/// file is exported) stays small whatever the file's layout.
pub(super) const MAX_SEGMENTS: usize = 1 << 14;

const BLOCK: usize = 512;

/// Where a sparse file's data lies, and what its entry stores.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Layout {
    /// The data segments `(offset, length)` in order, then `(size, 0)` as GNU
    /// tar ends every map.
    pub(super) segments: Vec<(u64, u64)>,
    /// The map as the entry's data starts with it: decimal lines (the number
    /// of segments, then each one's offset and length), zeros to a block.
    pub(super) map: Vec<u8>,
    /// The bytes of data in the segments.
    pub(super) data: u64,
}

impl Layout {
    /// What the entry stores: the map, then the segments back to back.
    pub(super) fn stored(&self) -> u64 {
        self.map.len() as u64 + self.data
    }
}

/// Whether `st` may have holes: more than one block of its length is not
/// allocated. A dense file never passes (at most its last block is partly
/// used), so only candidates pay for the search for holes.
pub(super) fn may_have_holes(st: &Stat) -> bool {
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let allocated = u64::try_from(st.st_blocks)
        .unwrap_or(0)
        .saturating_mul(BLOCK as u64);
    let block = u64::try_from(st.st_blksize).unwrap_or(0).max(BLOCK as u64);
    allocated.saturating_add(block) < size
}

/// The data segments of the open file `fd`, `size` bytes long, found with
/// `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)`; `None` when the file is better
/// stored whole: the filesystem cannot tell holes (it reports all the file as
/// data), or the holes save less than the map costs.
///
/// # Errors
/// What the kernel said, but for a filesystem without these seeks.
pub(super) fn scan(fd: impl AsFd, size: u64) -> Result<Option<Layout>, Errno> {
    let fd = fd.as_fd();
    let mut segments = Segments::default();
    let mut pos = 0;
    while pos < size {
        let data = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(data) => data,
            // Only a hole from `pos` to the end.
            Err(Errno::NXIO) => break,
            // Kernels and filesystems without the seeks.
            Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => return Ok(None),
            Err(e) => return Err(e),
        };
        if data >= size {
            break;
        }
        let hole = match rustix::fs::seek(fd, SeekFrom::Hole(data)) {
            Ok(hole) => hole.min(size),
            // The file shrank since `data`: reading it will say so.
            Err(Errno::NXIO) => size,
            Err(Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS) => return Ok(None),
            Err(e) => return Err(e),
        };
        if data < pos || hole <= data {
            // A filesystem that contradicts itself gets the file read whole.
            return Ok(None);
        }
        segments.push(data, hole - data);
        pos = hole;
    }
    let layout = layout(segments.list, size);
    Ok((layout.stored() < size).then_some(layout))
}

/// The layout of a file of `size` bytes whose data lies in `segments`.
fn layout(mut segments: Vec<(u64, u64)>, size: u64) -> Layout {
    segments.push((size, 0));
    let data = segments.iter().map(|(_, len)| len).sum();
    let mut map = format!("{}\n", segments.len()).into_bytes();
    for (offset, len) in &segments {
        map.extend_from_slice(format!("{offset}\n{len}\n").as_bytes());
    }
    map.resize(map.len().div_ceil(BLOCK) * BLOCK, 0);
    Layout {
        segments,
        map,
        data,
    }
}

/// Data segments in order, at most [`MAX_SEGMENTS`] of them: each time there
/// would be more, the holes shorter than a doubled threshold are merged into
/// the data around them. The result depends on the layout alone: every hole
/// shorter than the final threshold is merged, wherever it lies.
#[derive(Debug, Default)]
struct Segments {
    list: Vec<(u64, u64)>,
    /// Holes shorter than this are stored as data.
    min_hole: u64,
}

impl Segments {
    fn push(&mut self, offset: u64, len: u64) {
        if let Some(last) = self.list.last_mut() {
            if offset - (last.0 + last.1) < self.min_hole {
                last.1 = offset + len - last.0;
                return;
            }
        }
        self.list.push((offset, len));
        while self.list.len() > MAX_SEGMENTS {
            self.min_hole = self.min_hole.saturating_mul(2).max(BLOCK as u64);
            self.merge();
        }
    }

    /// Merges every hole shorter than `min_hole` into the data around it.
    fn merge(&mut self) {
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.list.len());
        for &(offset, len) in &self.list {
            match merged.last_mut() {
                Some(last) if offset - (last.0 + last.1) < self.min_hole => {
                    last.1 = offset + len - last.0;
                }
                _ => merged.push((offset, len)),
            }
        }
        self.list = merged;
    }
}

/// The name of a sparse file's own entry, as GNU tar writes it:
/// `<dir>/GNUSparseFile.0/<name>` (`.` for a file at the root; GNU tar puts
/// its process id where this has `0`, which would make export vary). Readers
/// that know the format take the real name from `GNU.sparse.name`.
pub(super) fn placeholder(path: &[u8]) -> Vec<u8> {
    let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b"."[..], path),
    };
    let mut out = dir.to_vec();
    out.extend_from_slice(b"/GNUSparseFile.0/");
    out.extend_from_slice(name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_is_decimal_lines_padded_to_a_block() {
        let l = layout(vec![(0, 4096), (10_481_664, 4096)], 10_485_760);
        let text = b"3\n0\n4096\n10481664\n4096\n10485760\n0\n";
        assert_eq!(&l.map[..text.len()], text);
        assert!(l.map[text.len()..].iter().all(|b| *b == 0));
        assert_eq!((l.map.len(), l.data, l.stored()), (512, 8192, 8704));
        assert_eq!(l.segments.last(), Some(&(10_485_760, 0)));
    }

    #[test]
    fn a_file_of_holes_alone_has_one_empty_segment() {
        let l = layout(Vec::new(), 1 << 20);
        assert_eq!(&l.map[..12], b"1\n1048576\n0\n");
        assert_eq!(l.stored(), 512);
    }

    #[test]
    fn placeholder_names_as_gnu_tar() {
        assert_eq!(placeholder(b"f"), b"./GNUSparseFile.0/f");
        assert_eq!(placeholder(b"a/b/f"), b"a/b/GNUSparseFile.0/f");
    }

    #[test]
    fn segments_stay_few_and_cover_the_data() {
        let mut s = Segments::default();
        // Data blocks 4 KiB long, holes alternately 4 KiB and 1 MiB long.
        let mut offset = 0u64;
        let mut data = Vec::new();
        for i in 0..(2 * MAX_SEGMENTS as u64) {
            s.push(offset, 4096);
            data.push((offset, 4096u64));
            offset += 4096 + if i % 2 == 0 { 4096 } else { 1 << 20 };
        }
        assert!(s.list.len() <= MAX_SEGMENTS, "{}", s.list.len());
        // Only the short holes were merged.
        assert_eq!(s.list.len(), data.len() / 2);
        assert!(s.list.iter().all(|&(_, len)| len == 3 * 4096));
        // In order, apart, and every original segment inside one of them.
        assert!(s.list.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0));
        for (o, l) in data {
            assert!(s.list.iter().any(|&(so, sl)| so <= o && o + l <= so + sl));
        }
    }
}
