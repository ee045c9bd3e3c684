//! Where the tar goes: [`Read`] for any reader, and [`Export::write_to`],
//! which gathers headers and small files into large writes and lets the
//! kernel send larger file contents.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::SeekFrom;
use rustix::io::Errno;

use super::{BLOCK, Export, export_err, shrank};
use crate::error::Error;

/// Output gathered by [`Export::write_to`] before each write.
const WRITE_BUFFER: usize = 1 << 20;
/// File contents at least this long are sent by the kernel in [`Export::write_to`].
const SEND_MIN: u64 = 32 << 10;

impl Read for Export {
    /// Fills `buf` as far as the stream goes, so a large buffer means few
    /// writes downstream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        if let Some(msg) = &self.failed {
            return Err(io::Error::other(format!("export already failed: {msg}")));
        }
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_piece(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                // Hand out what is ready; the error comes with the next read.
                Err(e) if filled > 0 => {
                    self.pending = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

impl Export {
    /// Writes the rest of the tar to `out` (a file, pipe or socket); the
    /// number of bytes written.
    ///
    /// The same bytes as [`Read::read`] gives, with fewer copies: headers and
    /// small files are gathered into large writes, and larger file contents
    /// go from the file to `out` in the kernel (`sendfile`; into a pipe
    /// without being copied at all). Where the kernel cannot send to `out`,
    /// they are read and written.
    ///
    /// # Errors
    /// As [`Read::read`]: an [`io::Error`] wrapping this crate's [`Error`],
    /// or the error writing to `out`. What was ready before the error has
    /// been written.
    pub fn write_to(&mut self, out: impl AsFd) -> io::Result<u64> {
        let out = out.as_fd();
        let mut buf = vec![0u8; WRITE_BUFFER];
        let mut filled = 0;
        let mut total = 0u64;
        let flush = |buf: &[u8], total: &mut u64| -> io::Result<()> {
            write_all(out, buf)?;
            *total += buf.len() as u64;
            Ok(())
        };
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        if let Some(msg) = &self.failed {
            return Err(io::Error::other(format!("export already failed: {msg}")));
        }
        loop {
            if let Err(e) = self.next_segment() {
                flush(&buf[..filled], &mut total)?;
                return Err(e);
            }
            let large = self.out_pos == self.out.len()
                && self.body.as_ref().is_some_and(|b| b.remaining >= SEND_MIN);
            if large && self.sendfile {
                flush(&buf[..filled], &mut total)?;
                filled = 0;
                total += self.send_body(out)?;
                continue;
            }
            if filled == buf.len() {
                flush(&buf, &mut total)?;
                filled = 0;
            }
            match self.read_piece(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    flush(&buf[..filled], &mut total)?;
                    return Err(e);
                }
            }
        }
        flush(&buf[..filled], &mut total)?;
        Ok(total)
    }

    /// Once the data segment being read is done, moves to the next one of a
    /// sparse file (no-op otherwise).
    fn next_segment(&mut self) -> io::Result<()> {
        let Some(body) = &mut self.body else {
            return Ok(());
        };
        while body.remaining == 0 {
            let Some((offset, len)) = body.segments.next() else {
                return Ok(());
            };
            if len == 0 {
                continue;
            }
            if let Err(e) = rustix::fs::seek(&body.file, SeekFrom::Start(offset)) {
                let e = export_err(&body.path, "seek to data")(e);
                return Err(self.fail(e));
            }
            body.remaining = len;
        }
        Ok(())
    }

    /// Sends what is left of the current data segment to `out` in the
    /// kernel; the bytes sent (0 when the kernel cannot, and `sendfile` is
    /// then off).
    fn send_body(&mut self, out: BorrowedFd<'_>) -> io::Result<u64> {
        let Some(body) = &mut self.body else {
            return Ok(0);
        };
        let mut sent = 0u64;
        while body.remaining > 0 {
            let want = usize::try_from(body.remaining.min(1 << 30)).unwrap_or(1 << 30);
            match rustix::fs::sendfile(out, &body.file, None, want) {
                Ok(0) => {
                    let e = shrank(&body.path);
                    return Err(self.fail(e));
                }
                Ok(n) => {
                    body.remaining -= n as u64;
                    sent += n as u64;
                }
                Err(Errno::INTR) => {}
                Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if sent == 0 => {
                    self.sendfile = false;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Export {
    /// Copies out part of the next piece: headers, file data or padding.
    fn read_piece(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out.len() {
                let n = (self.out.len() - self.out_pos).min(buf.len());
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            self.next_segment()?;
            if let Some(body) = &mut self.body {
                if body.remaining > 0 {
                    let want = buf
                        .len()
                        .min(usize::try_from(body.remaining).unwrap_or(usize::MAX));
                    let n = match body.file.read(&mut buf[..want]) {
                        Ok(0) => {
                            let e = shrank(&body.path);
                            return Err(self.fail(e));
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(source) => {
                            let e = Error::Export {
                                path: PathBuf::from(OsString::from_vec(body.path.clone())),
                                op: "read file",
                                source,
                            };
                            return Err(self.fail(e));
                        }
                    };
                    body.remaining -= n as u64;
                    return Ok(n);
                }
                let pad = body.pad;
                self.body = None;
                self.out.clear();
                self.out.resize(pad, 0);
                self.out_pos = 0;
                continue;
            }
            if self.done {
                return Ok(0);
            }
            self.out.clear();
            self.out_pos = 0;
            match self.advance() {
                Ok(true) => {}
                Ok(false) => {
                    self.out.resize(2 * BLOCK, 0);
                    self.done = true;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }
}
