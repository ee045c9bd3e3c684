//! Disassembly: a tar passes through unchanged while its tar-split entries are
//! recorded.
//!
//! The entries follow tar-split's Go disassembler: for each member, a segment
//! with every byte since the previous member's contents (its padding, extended
//! headers, the header), then a file entry with the member's name, contents
//! size and CRC-64 (a file entry for every member, directories and links
//! included, with size 0); at the end a segment with the last padding and the
//! end-of-archive blocks, then whatever follows them in segments of 1 MiB.

mod header;

use std::io::{self, Read};
use std::mem;

use header::{BLOCK, Format, MAX_SPECIAL, Pax};

use crate::crc64::Crc64;
use crate::{EntryKind, EntrySink, Error};

/// The largest segment recorded at once: trailing data and the data of sparse
/// files go out in pieces of this size.
const CHUNK: usize = 1 << 20;

/// The extended headers that come before the header they describe.
#[derive(Clone, Copy, Debug)]
enum Special {
    /// `x`: PAX records for the next member.
    Pax,
    /// `g`: global PAX records; Go's reader returns it as a member of its own.
    GlobalPax,
    /// `L`: GNU long name of the next member.
    LongName,
    /// `K`: GNU long link target of the next member.
    LongLink,
}

/// Where in the tar the scanner is.
#[derive(Debug)]
enum State {
    /// Collecting a header block.
    Header,
    /// Collecting the block after a zero block: a second zero block ends the archive.
    SecondZero,
    /// Collecting an old GNU sparse header's extension block.
    SparseExtension { name: Vec<u8>, size: u64 },
    /// The data of an extended header.
    Special {
        kind: Special,
        /// The `g` header's own name, for its entry.
        name: Vec<u8>,
        size: u64,
        remaining: u64,
        /// Where its header starts, for errors.
        at: u64,
    },
    /// A member's contents, summed into its file entry.
    Contents {
        name: Vec<u8>,
        size: u64,
        remaining: u64,
    },
    /// A sparse member's stored data, recorded as segments.
    Raw { size: u64, remaining: u64 },
    /// Padding to the next block.
    Padding { remaining: u64 },
    /// After the end-of-archive blocks.
    Trailing,
    /// The input ended and everything is recorded.
    Ended,
}

/// The tar parser behind [`Disassembler`]: fed the tar's bytes in pieces of
/// any size, it pushes entries to a sink.
#[derive(Debug)]
struct Scanner {
    state: State,
    /// Bytes of the tar consumed.
    offset: u64,
    block: [u8; BLOCK],
    filled: usize,
    /// Raw bytes not yet recorded in a segment.
    pending: Vec<u8>,
    /// The data of the extended header being read.
    special: Vec<u8>,
    /// What `x` and `L` headers said for the coming member.
    pax: Option<Pax>,
    long_name: Option<Vec<u8>>,
    crc: Crc64,
    empty_final_segment: bool,
}

impl Scanner {
    fn new() -> Self {
        Scanner {
            state: State::Header,
            offset: 0,
            block: [0; BLOCK],
            filled: 0,
            pending: Vec::new(),
            special: Vec::new(),
            pax: None,
            long_name: None,
            crc: Crc64::default(),
            empty_final_segment: false,
        }
    }

    /// Takes the next bytes of the tar.
    fn feed(&mut self, mut data: &[u8], sink: &mut dyn EntrySink) -> Result<(), Error> {
        while !data.is_empty() {
            let used = self.step(data, sink)?;
            data = &data[used..];
        }
        Ok(())
    }

    /// Consumes what the current state takes of `data`; returns how much.
    fn step(&mut self, data: &[u8], sink: &mut dyn EntrySink) -> Result<usize, Error> {
        let len = data.len() as u64;
        let n = match &self.state {
            State::Header | State::SecondZero | State::SparseExtension { .. } => {
                (BLOCK - self.filled).min(data.len())
            }
            State::Special { remaining, .. }
            | State::Contents { remaining, .. }
            | State::Raw { remaining, .. }
            | State::Padding { remaining } => (*remaining).min(len) as usize,
            State::Trailing | State::Ended => data.len(),
        };
        let data = &data[..n];
        self.offset += n as u64;
        match &mut self.state {
            State::Header | State::SecondZero | State::SparseExtension { .. } => {
                self.block[self.filled..self.filled + n].copy_from_slice(data);
                self.filled += n;
                if self.filled == BLOCK {
                    self.filled = 0;
                    self.on_block(sink)?;
                }
            }
            State::Special { remaining, .. } => {
                *remaining -= n as u64;
                let done = *remaining == 0;
                self.special.extend_from_slice(data);
                self.record(data, sink)?;
                if done {
                    self.on_special_end(sink)?;
                }
            }
            State::Contents { remaining, .. } => {
                *remaining -= n as u64;
                let done = *remaining == 0;
                self.crc.update(data);
                if done {
                    self.on_contents_end(sink)?;
                }
            }
            State::Raw { size, remaining } => {
                *remaining -= n as u64;
                let (size, done) = (*size, *remaining == 0);
                self.record(data, sink)?;
                if done {
                    self.after_data(size);
                }
            }
            State::Padding { remaining } => {
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.state = State::Header;
                }
                self.record(data, sink)?;
            }
            State::Trailing | State::Ended => self.record(data, sink)?,
        }
        Ok(n)
    }

    /// Records raw bytes, cutting segments at [`CHUNK`].
    fn record(&mut self, mut bytes: &[u8], sink: &mut dyn EntrySink) -> Result<(), Error> {
        while !bytes.is_empty() {
            let n = (CHUNK - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.pending.len() == CHUNK {
                self.flush(sink)?;
            }
        }
        Ok(())
    }

    /// Records the raw bytes so far as a segment, if there are any.
    fn flush(&mut self, sink: &mut dyn EntrySink) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let segment = self.pending.to_vec();
        self.pending.clear();
        sink.push(EntryKind::Segment(segment))
    }

    /// Records the block just collected.
    fn record_block(&mut self, sink: &mut dyn EntrySink) -> Result<(), Error> {
        let block = self.block;
        self.record(&block, sink)
    }

    fn on_block(&mut self, sink: &mut dyn EntrySink) -> Result<(), Error> {
        let at = self.offset - BLOCK as u64;
        match mem::replace(&mut self.state, State::Header) {
            State::Header => self.on_header(at, sink),
            State::SecondZero => {
                if self.block != [0; BLOCK] {
                    return Err(Error::InvalidTar {
                        offset: at,
                        reason: "a zero block followed by a non-zero block",
                    });
                }
                self.record_block(sink)?;
                self.flush(sink)?;
                self.state = State::Trailing;
                Ok(())
            }
            State::SparseExtension { name, size } => {
                self.record_block(sink)?;
                if self.block[504] != 0 {
                    self.state = State::SparseExtension { name, size };
                    Ok(())
                } else {
                    self.start_data(name, size, true, sink)
                }
            }
            _ => unreachable!("blocks are collected only in the block states"),
        }
    }

    fn on_header(&mut self, at: u64, sink: &mut dyn EntrySink) -> Result<(), Error> {
        let invalid = |reason| Error::InvalidTar { offset: at, reason };
        if self.block == [0; BLOCK] {
            self.record_block(sink)?;
            self.state = State::SecondZero;
            return Ok(());
        }
        let format = header::format(&self.block).map_err(invalid)?;
        self.record_block(sink)?;
        let size = header::parse_numeric(&self.block[124..136])
            .ok_or_else(|| invalid("invalid size field"))?;
        let size = u64::try_from(size).map_err(|_| invalid("negative size"))?;
        let kind = match self.block[156] {
            b'x' => Special::Pax,
            b'g' => Special::GlobalPax,
            b'L' => Special::LongName,
            b'K' => Special::LongLink,
            _ => return self.on_member(format, size, at, sink),
        };
        if size > MAX_SPECIAL {
            return Err(invalid("extended header data larger than 1 MiB"));
        }
        let name = match kind {
            Special::GlobalPax => header::name(&self.block, format),
            _ => Vec::new(),
        };
        self.special.clear();
        self.state = State::Special {
            kind,
            name,
            size,
            remaining: size,
            at,
        };
        if size == 0 {
            self.on_special_end(sink)?;
        }
        Ok(())
    }

    fn on_special_end(&mut self, sink: &mut dyn EntrySink) -> Result<(), Error> {
        let State::Special {
            kind,
            name,
            size,
            at,
            ..
        } = mem::replace(&mut self.state, State::Header)
        else {
            unreachable!("called at the end of an extended header");
        };
        let parse = |data: &[u8]| {
            header::parse_pax(data).map_err(|reason| Error::InvalidTar { offset: at, reason })
        };
        match kind {
            Special::Pax => self.pax = Some(parse(&self.special)?),
            Special::GlobalPax => {
                let pax = parse(&self.special)?;
                self.flush(sink)?;
                sink.push(EntryKind::File {
                    name: pax.path.unwrap_or(name),
                    size: 0,
                    crc64: None,
                })?;
                // Go's reader forgets what came before a member it returns.
                self.pax = None;
                self.long_name = None;
            }
            Special::LongName => {
                let long = header::c_string(&self.special);
                self.long_name = (!long.is_empty()).then(|| long.to_vec());
            }
            Special::LongLink => {}
        }
        self.after_data(size);
        Ok(())
    }

    /// A member's header: works out its name and how much data follows.
    fn on_member(
        &mut self,
        format: Format,
        header_size: u64,
        at: u64,
        sink: &mut dyn EntrySink,
    ) -> Result<(), Error> {
        let invalid = |reason| Error::InvalidTar { offset: at, reason };
        let pax = self.pax.take().unwrap_or_default();
        let mut name = header::name(&self.block, format);
        if let Some(path) = pax.path {
            name = path;
        }
        if let Some(long) = self.long_name.take() {
            name = long;
        }
        let size = match pax.size {
            Some(size) => u64::try_from(size).map_err(|_| invalid("negative size"))?,
            None => header_size,
        };
        let kind = match self.block[156] {
            // Old archives mark directories by a trailing slash only.
            0 if name.ends_with(b"/") => b'5',
            kind => kind,
        };
        // Links, devices, directories and FIFOs have no data, whatever their size says.
        let header_only = matches!(kind, b'1'..=b'6');
        let sparse = match kind {
            b'S' if format != Format::Gnu => {
                return Err(invalid("old GNU sparse header outside the GNU format"));
            }
            b'S' => true,
            _ => pax.sparse,
        };
        if sparse && header_only {
            return Err(invalid("sparse records on a member without data"));
        }
        if let (true, Some(sparse_name)) = (sparse, pax.sparse_name) {
            name = sparse_name;
        }
        if header_only && size != 0 {
            // Go's tar-split records the size (and an empty checksum) here, which
            // it then cannot assemble; the tar has no data for it, so neither does the entry.
            tracing::debug!(
                name = %name.escape_ascii(),
                size,
                "tar member without data has a non-zero size; recorded with size 0"
            );
        }
        let data = if header_only { 0 } else { size };
        if kind == b'S' && self.block[482] != 0 {
            self.state = State::SparseExtension { name, size: data };
            return Ok(());
        }
        self.start_data(name, data, sparse, sink)
    }

    /// The member's headers are all read: records them, and goes on to its data.
    fn start_data(
        &mut self,
        name: Vec<u8>,
        size: u64,
        sparse: bool,
        sink: &mut dyn EntrySink,
    ) -> Result<(), Error> {
        self.flush(sink)?;
        if sparse || size == 0 {
            if sparse {
                // The files a layer keeps are the expanded contents, which would
                // not reproduce the stored data: record that data as it is.
                tracing::debug!(
                    name = %name.escape_ascii(),
                    size,
                    "sparse tar member: its data is recorded in segments"
                );
            }
            sink.push(EntryKind::File {
                name,
                size: 0,
                crc64: None,
            })?;
            self.state = State::Raw {
                size,
                remaining: size,
            };
            if size == 0 {
                self.after_data(0);
            }
        } else {
            self.crc = Crc64::default();
            self.state = State::Contents {
                name,
                size,
                remaining: size,
            };
        }
        Ok(())
    }

    fn on_contents_end(&mut self, sink: &mut dyn EntrySink) -> Result<(), Error> {
        let State::Contents { name, size, .. } = mem::replace(&mut self.state, State::Header)
        else {
            unreachable!("called at the end of contents");
        };
        sink.push(EntryKind::File {
            name,
            size,
            crc64: Some(self.crc.sum()),
        })?;
        self.after_data(size);
        Ok(())
    }

    /// Goes on after `size` bytes of data: to their padding, or the next header.
    fn after_data(&mut self, size: u64) {
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.state = if padding == 0 {
            State::Header
        } else {
            State::Padding { remaining: padding }
        };
    }

    /// The input ended: records what is left, or says what it ended inside.
    fn finish(&mut self, sink: &mut dyn EntrySink) -> Result<(), Error> {
        let inside = match &self.state {
            State::Header | State::SecondZero if self.filled == 0 => None,
            State::Header | State::SecondZero => Some("a header"),
            State::SparseExtension { .. } => Some("a sparse header extension"),
            State::Special { .. } => Some("extended header data"),
            State::Contents { .. } => Some("file contents"),
            State::Raw { .. } => Some("sparse file data"),
            // Go stops at a short last padding too (and drops it; it is kept here).
            State::Padding { .. } | State::Trailing => None,
            State::Ended => return Ok(()),
        };
        if let Some(inside) = inside {
            return Err(Error::TruncatedTar {
                offset: self.offset,
                inside,
            });
        }
        self.flush(sink)?;
        if self.empty_final_segment {
            sink.push(EntryKind::Segment(Vec::new()))?;
        }
        self.state = State::Ended;
        Ok(())
    }
}

/// Reads a tar through, unchanged, while recording its tar-split entries.
///
/// An importer reads the layer tar from the disassembler (and applies it) as it
/// would from the tar itself; the entries go to the sink as the bytes pass: a
/// [`Packer`](crate::Packer) writes them out as they come, so memory stays
/// bounded for any size of layer, or a `Vec<Entry>` keeps them. Once the
/// importer is done — tar readers stop at the end-of-archive blocks —
/// [`finish`](Disassembler::finish) reads what is left of the stream (Docker
/// keeps the bytes after the end of the archive too) and hands the sink back.
///
/// A malformed tar (a bad header checksum, a negative or unreadable size, a
/// malformed PAX record, an extended header over 1 MiB, a truncated stream)
/// fails the read that meets it, with an `io::Error` carrying the message;
/// `finish` returns the typed [`Error`].
///
/// Differences from Go's tar-split, which never change the assembled tar: a
/// sparse member's stored data is recorded as raw segments (its file entry has
/// size 0), where Go records the expanded contents that it cannot put back; a
/// link, device, directory or FIFO whose header has a non-zero size gets size
/// 0, as no data follows it.
#[derive(Debug)]
pub struct Disassembler<R, S> {
    reader: R,
    sink: S,
    scanner: Scanner,
    failure: Option<Error>,
    ended: bool,
}

impl<R: Read, S: EntrySink> Disassembler<R, S> {
    /// Reads the tar from `reader`, recording its entries into `sink`.
    pub fn new(reader: R, sink: S) -> Self {
        Disassembler {
            reader,
            sink,
            scanner: Scanner::new(),
            failure: None,
            ended: false,
        }
    }

    /// Ends the entries with an empty segment, as the tar-split that Docker
    /// 20.10 vendors does (newer tar-split does not): set it to write the same
    /// bytes as that Docker. Readers are indifferent to it.
    pub fn empty_final_segment(mut self, on: bool) -> Self {
        self.scanner.empty_final_segment = on;
        self
    }

    /// Reads the rest of the tar, records it, and hands back the sink.
    ///
    /// Fails with the first error the disassembler met, if any, or the one met
    /// now: reading, a malformed or truncated tar, the sink's.
    pub fn finish(mut self) -> Result<S, Error> {
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        let mut buf = vec![0u8; 64 << 10];
        while !self.ended {
            let n = match self.reader.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::ReadTar {
                        offset: self.scanner.offset,
                        source,
                    });
                }
            };
            if n == 0 {
                self.scanner.finish(&mut self.sink)?;
                self.ended = true;
            } else {
                self.scanner.feed(&buf[..n], &mut self.sink)?;
            }
        }
        Ok(self.sink)
    }

    /// How many bytes of the tar have passed.
    pub fn offset(&self) -> u64 {
        self.scanner.offset
    }
}

impl<R: Read, S: EntrySink> Read for Disassembler<R, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(failure) = &self.failure {
            return Err(to_io(failure));
        }
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        let n = self.reader.read(buf)?;
        let recorded = if n == 0 {
            self.scanner.finish(&mut self.sink)
        } else {
            self.scanner.feed(&buf[..n], &mut self.sink)
        };
        match recorded {
            Ok(()) => {
                self.ended = n == 0;
                Ok(n)
            }
            Err(e) => {
                let io = to_io(&e);
                self.failure = Some(e);
                Err(io)
            }
        }
    }
}

/// An `io::Error` with the message of `error` and its causes.
fn to_io(error: &Error) -> io::Error {
    let kind = match error {
        Error::TruncatedTar { .. } => io::ErrorKind::UnexpectedEof,
        Error::InvalidTar { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        message.push_str(": ");
        message.push_str(&e.to_string());
        cause = e.source();
    }
    io::Error::new(kind, message)
}
