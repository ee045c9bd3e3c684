//! Reading a tar-split stream, one entry at a time.

use std::io::{self, BufRead, BufReader, Read};

use flate2::read::MultiGzDecoder;

use crate::{Entry, Error, json};

/// The default longest line: room for a segment of the default largest payload
/// in base64, and a long name.
pub const DEFAULT_MAX_LINE_LEN: usize = 32 << 20;

/// The default largest payload of one entry, decoded. Segments written by
/// tar-split (and by [`Disassembler`](crate::Disassembler)) hold headers and
/// padding, and trailing data in chunks of 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 16 << 20;

/// Reads the entries of a tar-split stream: JSON objects, one a line.
///
/// The stream is untrusted: lines and payloads are bounded, every field is
/// checked (types, positions in order, sizes, base64, 8-byte checksums), and
/// whatever is wrong comes back as an [`Error`] naming the entry's position.
/// After the first error the iterator ends.
///
/// A last line cut short is an error ([`Error::TruncatedEntry`]), as for Go's
/// current reader (older tar-split, Docker 20.10's, ended there silently).
/// Duplicate names are let through; the [`Packer`](crate::Packer) refuses to
/// write them.
#[derive(Debug)]
pub struct Unpacker<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    position: u64,
    max_line_len: usize,
    max_payload_len: usize,
    done: bool,
}

impl<R: Read> Unpacker<R> {
    /// Reads entries from `reader`, as they are (not compressed).
    pub fn new(reader: R) -> Self {
        Unpacker {
            reader: BufReader::with_capacity(64 << 10, reader),
            line: Vec::new(),
            position: 0,
            max_line_len: DEFAULT_MAX_LINE_LEN,
            max_payload_len: DEFAULT_MAX_PAYLOAD_LEN,
            done: false,
        }
    }

    /// Sets the longest line allowed, newline excluded
    /// ([`DEFAULT_MAX_LINE_LEN`] otherwise).
    pub fn max_line_len(mut self, bytes: usize) -> Self {
        self.max_line_len = bytes;
        self
    }

    /// Sets the largest payload allowed, decoded
    /// ([`DEFAULT_MAX_PAYLOAD_LEN`] otherwise).
    pub fn max_payload_len(mut self, bytes: usize) -> Self {
        self.max_payload_len = bytes;
        self
    }

    /// The next entry, or `None` at the end of the stream.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        if self.done {
            return Ok(None);
        }
        let result = self.read_entry();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    fn read_entry(&mut self) -> Result<Option<Entry>, Error> {
        let position = self.position;
        let complete = self.read_line()?;
        if !complete && self.line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let kind = match json::decode(&self.line, position, self.max_payload_len) {
            Ok(kind) => kind,
            Err(Error::Json { .. }) if !complete => {
                return Err(Error::TruncatedEntry { position });
            }
            Err(e) => return Err(e),
        };
        self.position += 1;
        Ok(Some(Entry { position, kind }))
    }

    /// Reads the next line into `self.line`, without its newline; returns
    /// whether it ended with one (rather than with the stream).
    fn read_line(&mut self) -> Result<bool, Error> {
        self.line.clear();
        loop {
            let available = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Read {
                        position: self.position,
                        source,
                    });
                }
            };
            if available.is_empty() {
                return Ok(false);
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.unwrap_or(available.len());
            if self.line.len() + take > self.max_line_len {
                return Err(Error::LineTooLong {
                    position: self.position,
                    limit: self.max_line_len,
                });
            }
            self.line.extend_from_slice(&available[..take]);
            match newline {
                Some(_) => {
                    self.reader.consume(take + 1);
                    return Ok(true);
                }
                None => self.reader.consume(take),
            }
        }
    }
}

impl<R: Read> Unpacker<MultiGzDecoder<R>> {
    /// Reads entries from a gzip stream (`tar-split.json.gz`), as Docker stores
    /// them.
    pub fn gzip(reader: R) -> Self {
        Unpacker::new(MultiGzDecoder::new(reader))
    }
}

impl<R: Read> Iterator for Unpacker<R> {
    type Item = Result<Entry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

impl<R: Read> std::iter::FusedIterator for Unpacker<R> {}
