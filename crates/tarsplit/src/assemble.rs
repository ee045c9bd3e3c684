//! Assembly: the tar again, from its tar-split entries and the files.

use std::io::{self, Read, Write};

use crate::crc64::Crc64;
use crate::{Entry, EntryKind, Error};

/// Where [`assemble`] gets the contents of the files a tar-split names.
///
/// The names come from the tar-split stream, which is untrusted input: an
/// implementation resolves them inside the layer's directory (for example with
/// `openat2` and `RESOLVE_IN_ROOT`) and never outside it. Any
/// `FnMut(&[u8]) -> io::Result<impl Read>` is a `FileSource`.
pub trait FileSource {
    /// What the contents are read from.
    type File: Read;

    /// Opens the file that the tar names `name` (bytes, as in the tar).
    fn open(&mut self, name: &[u8]) -> io::Result<Self::File>;
}

impl<F, R> FileSource for F
where
    F: FnMut(&[u8]) -> io::Result<R>,
    R: Read,
{
    type File = R;

    fn open(&mut self, name: &[u8]) -> io::Result<R> {
        self(name)
    }
}

/// Writes the tar that `entries` describe to `out`: each segment's bytes, and
/// each sized file's contents from `files`; returns the bytes written.
///
/// Each file must have exactly the size the tar-split records and the same
/// CRC-64, or assembly stops with [`Error::FileTooShort`],
/// [`Error::FileTooLong`] or [`Error::ChecksumMismatch`] naming it. The
/// contents are written as they are read, so on that error `out` already
/// holds them: a caller streaming to someone else ends the stream as failed.
/// A file entry of size 0 opens nothing (directories, links and empty files).
///
/// `entries` is typically an [`Unpacker`](crate::Unpacker); a `Vec<Entry>` goes
/// in as `entries.into_iter().map(Ok)`.
pub fn assemble<I, F, W>(entries: I, mut files: F, mut out: W) -> Result<u64, Error>
where
    I: IntoIterator<Item = Result<Entry, Error>>,
    F: FileSource,
    W: Write,
{
    let mut written: u64 = 0;
    let mut buf = vec![0u8; 64 << 10];
    for entry in entries {
        let Entry { position, kind } = entry?;
        match kind {
            EntryKind::Segment(bytes) => {
                write(&mut out, &bytes, written)?;
                written += bytes.len() as u64;
            }
            EntryKind::File { size: 0, .. } => {}
            EntryKind::File { name, size, crc64 } => {
                let file = match files.open(&name) {
                    Ok(file) => file,
                    Err(source) => {
                        return Err(Error::OpenFile {
                            name,
                            position,
                            source,
                        });
                    }
                };
                let copied = copy_file(file, size, &mut buf, &mut out, written);
                let sum = match copied {
                    Ok(sum) => sum,
                    Err(failure) => return Err(failure.into_error(name, position, size)),
                };
                written += size;
                if crc64 != Some(sum) {
                    return Err(Error::ChecksumMismatch { name, position });
                }
            }
        }
    }
    out.flush().map_err(|source| Error::WriteTar {
        offset: written,
        source,
    })?;
    Ok(written)
}

fn write(out: &mut impl Write, bytes: &[u8], offset: u64) -> Result<(), Error> {
    out.write_all(bytes)
        .map_err(|source| Error::WriteTar { offset, source })
}

/// Why a file's contents could not be copied.
enum CopyFailure {
    Read(io::Error),
    Short(u64),
    Long,
    Write(Error),
}

impl CopyFailure {
    fn into_error(self, name: Vec<u8>, position: u64, expected: u64) -> Error {
        match self {
            CopyFailure::Read(source) => Error::ReadFile {
                name,
                position,
                source,
            },
            CopyFailure::Short(found) => Error::FileTooShort {
                name,
                position,
                expected,
                found,
            },
            CopyFailure::Long => Error::FileTooLong {
                name,
                position,
                expected,
            },
            CopyFailure::Write(e) => e,
        }
    }
}

/// Copies exactly `size` bytes of `file` to `out`; returns their CRC-64.
fn copy_file(
    mut file: impl Read,
    size: u64,
    buf: &mut [u8],
    out: &mut impl Write,
    offset: u64,
) -> Result<[u8; 8], CopyFailure> {
    let mut crc = Crc64::default();
    let mut copied: u64 = 0;
    while copied < size {
        let want = (size - copied).min(buf.len() as u64) as usize;
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Err(CopyFailure::Short(copied)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyFailure::Read(e)),
        };
        crc.update(&buf[..n]);
        write(out, &buf[..n], offset + copied).map_err(CopyFailure::Write)?;
        copied += n as u64;
    }
    // The file must end here: one more byte means it changed since.
    loop {
        match file.read(&mut buf[..1]) {
            Ok(0) => return Ok(crc.sum()),
            Ok(_) => return Err(CopyFailure::Long),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CopyFailure::Read(e)),
        }
    }
}
