//! Writing a tar-split stream, and where a disassembler's entries go.

use std::collections::HashSet;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::{Entry, EntryKind, Error, json};

/// Where a [`Disassembler`](crate::Disassembler) puts the entries it records,
/// in order.
///
/// A [`Packer`] writes them out as they come (memory stays bounded however large
/// the tar); a `Vec<Entry>` keeps them.
pub trait EntrySink {
    /// Takes the next entry.
    fn push(&mut self, entry: EntryKind) -> Result<(), Error>;
}

impl EntrySink for Vec<Entry> {
    fn push(&mut self, kind: EntryKind) -> Result<(), Error> {
        let position = self.len() as u64;
        Vec::push(self, Entry { position, kind });
        Ok(())
    }
}

impl<S: EntrySink + ?Sized> EntrySink for &mut S {
    fn push(&mut self, entry: EntryKind) -> Result<(), Error> {
        (**self).push(entry)
    }
}

/// Writes tar-split entries as Go's tar-split writes them: one JSON object a
/// line, byte for byte the same for the same entries, positions counted from 0.
///
/// Like Go's packer, it refuses a second file entry whose name cleans
/// (`filepath.Clean`) to the same path as an earlier one: Docker could not read
/// the stream back. Each entry is one `write_all` of one line: give it a
/// buffered or compressing writer.
#[derive(Debug)]
pub struct Packer<W: Write> {
    writer: W,
    position: u64,
    line: Vec<u8>,
    seen: HashSet<Vec<u8>>,
}

impl<W: Write> Packer<W> {
    /// Writes entries to `writer`, as they are (not compressed).
    pub fn new(writer: W) -> Self {
        Packer {
            writer,
            position: 0,
            line: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Writes `entry` as the next one; returns its position.
    pub fn add(&mut self, entry: &EntryKind) -> Result<u64, Error> {
        let position = self.position;
        if let EntryKind::File { name, .. } = entry {
            let key = clean(name);
            if !self.seen.insert(key) {
                return Err(Error::DuplicateName {
                    position,
                    name: name.clone(),
                });
            }
        }
        self.line.clear();
        json::encode(entry, position, &mut self.line);
        self.writer
            .write_all(&self.line)
            .map_err(|source| Error::Write { position, source })?;
        self.position += 1;
        Ok(position)
    }

    /// How many entries were written.
    pub fn len(&self) -> u64 {
        self.position
    }

    /// Whether no entry was written yet.
    pub fn is_empty(&self) -> bool {
        self.position == 0
    }

    /// Flushes the writer and hands it back. A gzip writer still needs its own
    /// `finish` to write the gzip trailer.
    pub fn finish(mut self) -> Result<W, Error> {
        self.writer.flush().map_err(|source| Error::Write {
            position: self.position,
            source,
        })?;
        Ok(self.writer)
    }
}

impl<W: Write> Packer<GzEncoder<W>> {
    /// Writes entries gzip-compressed (`tar-split.json.gz`, as Docker stores
    /// them), at the default level as Docker does. Finish with
    /// `packer.finish()?.finish()`.
    pub fn gzip(writer: W) -> Self {
        Packer::new(GzEncoder::new(writer, Compression::default()))
    }
}

impl<W: Write> EntrySink for Packer<W> {
    fn push(&mut self, entry: EntryKind) -> Result<(), Error> {
        self.add(&entry).map(|_| ())
    }
}

/// Go's `filepath.Clean` on Unix: the shortest lexically equal path.
fn clean(path: &[u8]) -> Vec<u8> {
    let rooted = path.first() == Some(&b'/');
    let mut parts: Vec<&[u8]> = Vec::new();
    // `..` that climb above the start of a relative path stay in front.
    let mut climbs = 0usize;
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() && !rooted {
                    climbs += 1;
                }
            }
            _ => parts.push(part),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    if rooted {
        out.push(b'/');
    }
    let all = std::iter::repeat_n(&b".."[..], climbs).chain(parts);
    for (i, part) in all.enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_go() {
        for (path, want) in [
            ("", "."),
            (".", "."),
            ("etc/", "etc"),
            ("./etc//passwd", "etc/passwd"),
            ("/", "/"),
            ("/../a", "/a"),
            ("a/../../b", "../b"),
            ("../../a/./b/..", "../../a"),
            ("a/b/../..", "."),
            ("//a//", "/a"),
        ] {
            assert_eq!(clean(path.as_bytes()), want.as_bytes(), "{path:?}");
        }
    }

    #[test]
    fn refuses_duplicate_paths_as_go_does() {
        let mut packer = Packer::new(Vec::new());
        packer.add(&EntryKind::file("etc/", b"")).unwrap();
        packer.add(&EntryKind::Segment(vec![1])).unwrap();
        assert!(matches!(
            packer.add(&EntryKind::file("./etc", b"")),
            Err(Error::DuplicateName { position: 2, .. })
        ));
        packer.add(&EntryKind::file(b"\xff".to_vec(), b"")).unwrap();
        packer.add(&EntryKind::file(b"\xfe".to_vec(), b"")).unwrap();
        assert!(matches!(
            packer.add(&EntryKind::file(b"\xfe/".to_vec(), b"")),
            Err(Error::DuplicateName { position: 4, .. })
        ));
        assert_eq!(packer.len(), 4);
    }
}
