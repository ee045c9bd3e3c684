//! The tar stream, read entry by entry: PAX records, GNU long names and GNU
//! sparse maps folded into the entry they describe, data handed straight from
//! the input buffer (or copied in the kernel when the input is a file).
//!
//! `tar` parses the fields of each 512-byte header; the stream structure is
//! read here, and the PAX records that describe the entry's name, link and size
//! (split by [`crate::pax`]).

mod gnu_sparse;

use std::fs::File;
use std::io::{self, Read};

use rustix::fd::{AsFd, BorrowedFd};
use rustix::io::Errno;

use self::gnu_sparse::SparseMap;
use crate::error::EntryError;
use crate::pax::{self, Records};

const BLOCK: usize = 512;

/// Headers, long names, PAX records and sparse maps of one entry may not
/// exceed this.
pub(crate) const METADATA_LIMIT: u64 = 8 << 20;
/// Largest apparent size accepted for a sparse file.
pub(crate) const MAX_SPARSE_SIZE: u64 = 1 << 40;

/// Input buffer for a reader that is not a file: large reads, few syscalls.
const READER_BUFFER: usize = 1 << 20;
/// Input buffer for a file: big enough for the headers and small files
/// around them; larger data is copied file to file by the kernel.
const FILE_BUFFER: usize = 64 << 10;
/// Data at least this long (beyond what is buffered) goes through
/// `copy_file_range` when the input is a file.
const KERNEL_COPY_MIN: u64 = 32 << 10;

/// Where the archive comes from.
pub(crate) trait Input: Read {
    /// The input as a file, whose data the kernel can copy without this
    /// process reading it.
    fn file(&self) -> Option<BorrowedFd<'_>>;
}

/// Any reader: everything it yields goes through the buffer.
pub(crate) struct Reader<R>(pub(crate) R);

impl<R: Read> Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Input for Reader<R> {
    fn file(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// A regular file, read from its current position.
pub(crate) struct FileInput<'f>(pub(crate) &'f File);

impl Read for FileInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Input for FileInput<'_> {
    fn file(&self) -> Option<BorrowedFd<'_>> {
        Some(self.0.as_fd())
    }
}

/// Why the next entry could not be read.
#[derive(Debug)]
pub(crate) enum NextError {
    /// The stream itself is malformed or unreadable.
    Tar(io::Error),
    /// The entry's own metadata is bad; named as the archive names it.
    Entry(Vec<u8>, EntryError),
}

impl From<io::Error> for NextError {
    fn from(e: io::Error) -> Self {
        NextError::Tar(e)
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One entry with its extension headers applied.
pub(crate) struct Entry {
    /// The entry's own header.
    pub(crate) header: tar::Header,
    /// Its name: PAX `path`, else the GNU long name, else the header's.
    pub(crate) path: Vec<u8>,
    /// Its link target: PAX `linkpath`, else the GNU long link, else the header's.
    pub(crate) link: Option<Vec<u8>>,
    /// Bytes of data following the header in the archive.
    pub(crate) size: u64,
    /// Its PAX records (a later record of the same key wins, as in Go and GNU tar).
    pub(crate) pax: Records,
    /// The chunk map of an old GNU sparse entry (type `S`).
    pub(crate) sparse: Option<SparseMap>,
}

/// A string field of a header or a GNU long name: up to the first NUL.
fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|c| *c == 0).map_or(b, |n| &b[..n])
}

/// The tar stream being applied.
pub(crate) struct Stream<I> {
    input: I,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Bytes of the stream consumed so far.
    total: u64,
    /// Data bytes of the current entry not consumed yet.
    remaining: u64,
    /// Padding after them.
    pad: u64,
    /// Whether `copy_file_range` is worth trying.
    kernel_copy: bool,
}

impl<I: Input> Stream<I> {
    pub(crate) fn new(input: I) -> Self {
        let kernel_copy = input.file().is_some_and(|fd| {
            rustix::fs::fstat(fd)
                .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
        });
        let size = if kernel_copy {
            FILE_BUFFER
        } else {
            READER_BUFFER
        };
        Stream {
            input,
            buf: vec![0; size].into_boxed_slice(),
            pos: 0,
            len: 0,
            total: 0,
            remaining: 0,
            pad: 0,
            kernel_copy,
        }
    }

    /// Bytes of the stream consumed so far.
    pub(crate) fn position(&self) -> u64 {
        self.total
    }

    /// Reads more input after what is buffered; `false` at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.len == self.buf.len() {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        loop {
            match self.input.read(&mut self.buf[self.len..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.len += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.total += n as u64;
    }

    /// The next 512-byte block; `None` at a clean end of the input.
    fn block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        while self.len - self.pos < BLOCK {
            if !self.fill()? {
                if self.pos == self.len {
                    return Ok(None);
                }
                let n = self.len - self.pos;
                self.consume(n);
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "archive ends inside a header",
                ));
            }
        }
        let mut block = [0u8; BLOCK];
        block.copy_from_slice(&self.buf[self.pos..self.pos + BLOCK]);
        self.consume(BLOCK);
        Ok(Some(block))
    }

    /// Skips `n` bytes; how many were there before the input ended.
    fn skip(&mut self, mut n: u64) -> io::Result<u64> {
        let want = n;
        while n > 0 {
            if self.pos == self.len && !self.fill()? {
                break;
            }
            let take = (self.len - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
            self.consume(take);
            n -= take as u64;
        }
        Ok(want - n)
    }

    /// Reads `n` bytes of extension data (and their padding) into memory.
    fn read_extension(&mut self, n: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        let mut left = n;
        while left > 0 {
            if self.pos == self.len && !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "archive ends inside an extension header",
                ));
            }
            let take = (self.len - self.pos).min(usize::try_from(left).unwrap_or(usize::MAX));
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.consume(take);
            left -= take as u64;
        }
        let pad = padding(n);
        if self.skip(pad)? < pad {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ends inside an extension header",
            ));
        }
        Ok(out)
    }

    /// Skips what is left of the current entry's data and padding.
    fn finish_entry(&mut self) -> io::Result<()> {
        let n = self.remaining + self.pad;
        self.remaining = 0;
        self.pad = 0;
        if self.skip(n)? < n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ends inside an entry's data",
            ));
        }
        Ok(())
    }

    /// Reads to the end of the input (what follows the end marker too, so a
    /// caller hashing the stream sees all of it).
    pub(crate) fn drain_input(&mut self) -> io::Result<()> {
        self.finish_entry()?;
        self.skip(u64::MAX)?;
        Ok(())
    }

    /// The next entry; `None` after the end marker or at the end of the input.
    /// Whatever the previous entry left of its data is skipped first.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Entry>, NextError> {
        self.finish_entry()?;
        let start = self.total;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax_data: Option<Vec<u8>> = None;
        let within_limit = |total: u64| {
            if total - start > METADATA_LIMIT {
                Err(bad(format!(
                    "headers of one entry exceed {METADATA_LIMIT} bytes"
                )))
            } else {
                Ok(())
            }
        };
        loop {
            let Some(block) = self.block()? else {
                if self.total > start {
                    return Err(bad("archive ends after an extension header").into());
                }
                return Ok(None);
            };
            if block.iter().all(|b| *b == 0) {
                if self.total - BLOCK as u64 > start {
                    return Err(bad("end marker after an extension header").into());
                }
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block).clone();
            check_sum(&header)?;
            let ty = header.entry_type();
            let size = header.entry_size()?;
            let is_extension =
                ty.is_gnu_longname() || ty.is_gnu_longlink() || ty.is_pax_local_extensions();
            if is_extension {
                within_limit(self.total.saturating_add(size))?;
                let slot = if ty.is_gnu_longname() {
                    &mut long_name
                } else if ty.is_gnu_longlink() {
                    &mut long_link
                } else {
                    &mut pax_data
                };
                if slot.is_some() {
                    return Err(bad(format!(
                        "two {} headers describe the same entry",
                        ty.as_byte() as char
                    ))
                    .into());
                }
                *slot = Some(self.read_extension(size)?);
                continue;
            }
            let mut path = match &long_name {
                Some(name) => until_nul(name).to_vec(),
                None => header.path_bytes().into_owned(),
            };
            let pax = match pax_data.take() {
                Some(data) => {
                    Records::parse(data).map_err(|e| NextError::Entry(path.clone(), e))?
                }
                None => Records::default(),
            };
            if let Some(p) = pax.get(b"path") {
                path = p.to_vec();
            }
            let link = match (pax.get(b"linkpath"), &long_link) {
                (Some(l), _) => Some(l.to_vec()),
                (None, Some(l)) => Some(until_nul(l).to_vec()),
                (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
            };
            let size = match pax.get(b"size") {
                Some(v) => pax::number(v).map_err(|e| NextError::Entry(path.clone(), e))?,
                None => size,
            };
            let sparse = if ty.is_gnu_sparse() {
                let map = self
                    .gnu_sparse_map(&header, size, start)
                    .map_err(|e| match e {
                        NextError::Entry(_, reason) => NextError::Entry(path.clone(), reason),
                        other => other,
                    })?;
                Some(map)
            } else {
                None
            };
            self.remaining = size;
            self.pad = padding(size);
            return Ok(Some(Entry {
                header,
                path,
                link,
                size,
                pax,
                sparse,
            }));
        }
    }

    /// Reads data of the current entry into `out`; 0 at its end or the input's.
    pub(crate) fn read_data(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.len && !self.fill()? {
            return Ok(0);
        }
        let n = (self.len - self.pos)
            .min(out.len())
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.consume(n);
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Skips what is left of the current entry's data; how many bytes there were.
    pub(crate) fn skip_data(&mut self) -> io::Result<u64> {
        let n = self.remaining;
        let got = self.skip(n)?;
        self.remaining -= got;
        Ok(got)
    }

    /// Copies up to `n` bytes of the current entry's data to `out` at its
    /// position; how many were there (fewer at the end of the input).
    pub(crate) fn copy_data(&mut self, n: u64, out: BorrowedFd<'_>) -> Result<u64, CopyError> {
        let n = n.min(self.remaining);
        let mut left = n;
        while left > 0 {
            if self.pos == self.len {
                if self.kernel_copy && left >= KERNEL_COPY_MIN {
                    let copied = self.kernel_copy(left, out)?;
                    left -= copied;
                    if copied > 0 {
                        continue;
                    }
                    if self.kernel_copy {
                        // The input ended.
                        break;
                    }
                }
                if !self.fill().map_err(CopyError::Read)? {
                    break;
                }
            }
            let take = (self.len - self.pos).min(usize::try_from(left).unwrap_or(usize::MAX));
            write_all(out, &self.buf[self.pos..self.pos + take])?;
            self.consume(take);
            self.remaining -= take as u64;
            left -= take as u64;
        }
        Ok(n - left)
    }

    /// Copies up to `n` bytes from the input file at its position to `out`
    /// in the kernel. 0 at the end of the input, or when the kernel cannot
    /// copy between these files (then `kernel_copy` is off).
    fn kernel_copy(&mut self, n: u64, out: BorrowedFd<'_>) -> Result<u64, CopyError> {
        let Some(input) = self.input.file() else {
            self.kernel_copy = false;
            return Ok(0);
        };
        let mut done = 0u64;
        while done < n {
            let want = usize::try_from(n - done).unwrap_or(usize::MAX).min(1 << 30);
            match rustix::fs::copy_file_range(input, None, out, None, want) {
                Ok(0) => break,
                Ok(k) => {
                    done += k as u64;
                    self.total += k as u64;
                    self.remaining -= k as u64;
                }
                Err(Errno::INTR) => {}
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::BADF)
                    if done == 0 =>
                {
                    self.kernel_copy = false;
                    break;
                }
                Err(e) => return Err(CopyError::Write("copy_file_range", e)),
            }
        }
        Ok(done)
    }
}

/// Why data could not be copied.
pub(crate) enum CopyError {
    /// Reading the archive failed.
    Read(io::Error),
    /// Writing (or seeking) the target failed.
    Write(&'static str, Errno),
}

impl From<CopyError> for EntryError {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Read(source) => EntryError::Io {
                op: "read archive",
                source,
            },
            CopyError::Write(op, e) => EntryError::Io {
                op,
                source: e.into(),
            },
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> Result<(), CopyError> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(CopyError::Write("write", Errno::NOSPC)),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(CopyError::Write("write", e)),
        }
    }
    Ok(())
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Checks a header's checksum (unsigned sum of its bytes, the checksum
/// field counted as spaces).
fn check_sum(header: &tar::Header) -> io::Result<()> {
    let bytes = header.as_bytes();
    let sum: u32 = bytes[..148]
        .iter()
        .chain(&bytes[156..])
        .map(|b| u32::from(*b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    if header.cksum()? != sum {
        return Err(bad("header checksum mismatch"));
    }
    Ok(())
}
