//! Old GNU sparse entries (type `S`): the chunk map in the header and the
//! extension blocks after it.

use std::io;

use super::{Input, MAX_SPARSE_SIZE, METADATA_LIMIT, NextError, Stream, bad};
use crate::error::EntryError;

/// Where the data of a sparse file lies in it.
pub(crate) struct SparseMap {
    /// The file's apparent size.
    pub(crate) real_size: u64,
    /// `(offset, length)` of each stored chunk, in order, not overlapping.
    pub(crate) chunks: Vec<(u64, u64)>,
}

impl<I: Input> Stream<I> {
    /// Reads the chunk map of an old GNU sparse entry: four chunks in the
    /// header, then 21 per extension block while the "extended" flag is set.
    pub(super) fn gnu_sparse_map(
        &mut self,
        header: &tar::Header,
        size: u64,
        start: u64,
    ) -> Result<SparseMap, NextError> {
        let map_err = |e: io::Error| {
            NextError::Entry(
                Vec::new(),
                EntryError::Header {
                    field: "sparse map",
                    source: e,
                },
            )
        };
        let gnu = header
            .as_gnu()
            .ok_or_else(|| map_err(bad("sparse entry without a GNU header")))?;
        let real_size = gnu.real_size().map_err(map_err)?;
        if real_size > MAX_SPARSE_SIZE {
            return Err(NextError::Entry(
                Vec::new(),
                EntryError::TooLarge(real_size),
            ));
        }
        let mut chunks = Vec::new();
        let push = |chunks: &mut Vec<(u64, u64)>, c: &tar::GnuSparseHeader| {
            if c.is_empty() {
                return Ok(());
            }
            let offset = c.offset().map_err(map_err)?;
            let len = c.length().map_err(map_err)?;
            chunks.push((offset, len));
            Ok::<(), NextError>(())
        };
        for c in &gnu.sparse {
            push(&mut chunks, c)?;
        }
        let mut extended = gnu.is_extended();
        while extended {
            if self.total - start > METADATA_LIMIT {
                return Err(bad(format!(
                    "headers of one entry exceed {METADATA_LIMIT} bytes"
                ))
                .into());
            }
            let Some(block) = self.block()? else {
                return Err(bad("archive ends inside a sparse map").into());
            };
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&block);
            for c in ext.sparse() {
                push(&mut chunks, c)?;
            }
            extended = ext.is_extended();
        }
        check_chunks(&chunks, real_size, size).map_err(|what| map_err(bad(what)))?;
        Ok(SparseMap { real_size, chunks })
    }
}

/// Chunks in order, not overlapping, inside the file, and as much data as
/// the entry holds.
fn check_chunks(chunks: &[(u64, u64)], real_size: u64, data: u64) -> Result<(), &'static str> {
    let mut end = 0u64;
    let mut total = 0u64;
    for &(offset, len) in chunks {
        if offset < end {
            return Err("chunks out of order or overlapping");
        }
        end = offset
            .checked_add(len)
            .filter(|e| *e <= real_size)
            .ok_or("chunk past the end of the file")?;
        total = total.checked_add(len).ok_or("chunk lengths overflow")?;
    }
    if total != data {
        return Err("chunk lengths do not add up to the entry's data");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_chunks_are_checked() {
        assert!(check_chunks(&[(0, 5), (10, 5)], 20, 10).is_ok());
        assert!(check_chunks(&[(10, 5), (0, 5)], 20, 10).is_err());
        assert!(check_chunks(&[(0, 5), (3, 5)], 20, 10).is_err());
        assert!(check_chunks(&[(18, 5)], 20, 5).is_err());
        assert!(check_chunks(&[(0, 5)], 20, 6).is_err());
        assert!(check_chunks(&[(u64::MAX, 5)], u64::MAX, 5).is_err());
    }
}
