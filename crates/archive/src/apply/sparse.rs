//! Writing sparse files: the stored chunks at their offsets, holes between
//! them, from a map read before the data (old GNU headers, PAX 0.x records)
//! or at its start (GNU PAX 1.0).

use rustix::fd::{AsFd, OwnedFd};

use super::{Applier, io_err, io_err2};
use crate::error::EntryError;
use crate::stream::{Entry, Input, Stream};

impl Applier<'_> {
    /// Writes a sparse file whose map came before its data (old GNU headers,
    /// PAX 0.x records): the stored chunks at their offsets, holes between them.
    pub(super) fn write_gnu_sparse<I: Input>(
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
    pub(super) fn write_pax_sparse<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        fd: &OwnedFd,
        realsize: u64,
    ) -> Result<(), EntryError> {
        let expected = entry.size;
        let (chunks, mut consumed) = read_map(stream, expected, realsize)?;
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
}

/// Reads the map that starts a GNU 1.0 sparse file's data (`expected` bytes
/// of it), and its padding: the chunks, in order and inside `realsize`, and
/// the bytes read.
fn read_map<I: Input>(
    stream: &mut Stream<I>,
    expected: u64,
    realsize: u64,
) -> Result<(Vec<(u64, u64)>, u64), EntryError> {
    let mut consumed: u64 = 0;
    let count = map_number(stream, expected, &mut consumed)?;
    let mut chunks = Vec::new();
    let mut end = 0u64;
    for _ in 0..count {
        let offset = map_number(stream, expected, &mut consumed)?;
        let len = map_number(stream, expected, &mut consumed)?;
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
    Ok((chunks, consumed))
}

/// One decimal line of a GNU 1.0 sparse map; `consumed` counts the bytes read
/// of the entry's `expected`.
fn map_number<I: Input>(
    stream: &mut Stream<I>,
    expected: u64,
    consumed: &mut u64,
) -> Result<u64, EntryError> {
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
}
