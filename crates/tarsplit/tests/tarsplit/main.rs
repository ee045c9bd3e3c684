//! plies-tarsplit's tests: round trips of generated tars, Docker's own
//! tar-split files from a real store, GNU tar's sparse files, and hostile input.

mod docker;
mod hostile;
mod roundtrip;
mod sparse;

use std::collections::HashMap;
use std::io::{self, Read};

use plies_tarsplit::{Disassembler, Entry, EntryKind, Packer, Unpacker, assemble};

/// A reader that hands out its bytes in pieces of the given sizes, in turn, so
/// that every boundary of the disassembler's state machine gets a split.
pub(crate) struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    turn: usize,
}

impl<'a> Chunked<'a> {
    pub(crate) fn new(data: &'a [u8], sizes: Vec<usize>) -> Self {
        assert!(sizes.iter().all(|&s| s > 0));
        Chunked {
            data,
            sizes,
            turn: 0,
        }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = if self.sizes.is_empty() {
            usize::MAX
        } else {
            self.sizes[self.turn % self.sizes.len()]
        };
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Reads `tar` through a disassembler in pieces of `chunks`, checks that the
/// bytes pass unchanged, and returns the recorded entries.
pub(crate) fn disassemble(tar: &[u8], chunks: Vec<usize>) -> Vec<Entry> {
    let mut reader = Disassembler::new(Chunked::new(tar, chunks), Vec::new());
    let mut passed = Vec::new();
    let mut buf = [0u8; 777];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        passed.extend_from_slice(&buf[..n]);
    }
    assert!(passed == tar, "the disassembler changed the tar");
    reader.finish().unwrap()
}

/// The tar-split JSON of `entries`, as the packer writes it.
pub(crate) fn pack(entries: &[Entry]) -> Vec<u8> {
    let mut packer = Packer::new(Vec::new());
    for entry in entries {
        assert_eq!(packer.add(&entry.kind).unwrap(), entry.position);
    }
    packer.finish().unwrap()
}

/// Reads every entry of tar-split JSON.
pub(crate) fn unpack(json: &[u8]) -> Vec<Entry> {
    Unpacker::new(json).collect::<Result<_, _>>().unwrap()
}

/// Assembles `entries` with files from `files` (name → contents).
pub(crate) fn assemble_from(entries: &[Entry], files: &HashMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let source = |name: &[u8]| match files.get(name) {
        Some(data) => Ok(&data[..]),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            name.escape_ascii().to_string(),
        )),
    };
    let written = assemble(entries.iter().cloned().map(Ok), source, &mut out).unwrap();
    assert_eq!(written, out.len() as u64);
    out
}

/// The file entries of `entries`, in order.
pub(crate) fn files(entries: &[Entry]) -> Vec<EntryKind> {
    entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .map(|e| e.kind.clone())
        .collect()
}

/// What the `tar` crate reads in `tar`: each member as the file entry it should
/// get (header-only members with size 0), and the contents by name.
pub(crate) fn members(tar: &[u8]) -> (Vec<EntryKind>, HashMap<Vec<u8>, Vec<u8>>) {
    let mut archive = tar::Archive::new(tar);
    let mut entries = Vec::new();
    let mut contents = HashMap::new();
    for member in archive.entries().unwrap() {
        let mut member = member.unwrap();
        let name = member.path_bytes().into_owned();
        let mut data = Vec::new();
        member.read_to_end(&mut data).unwrap();
        entries.push(EntryKind::file(name.clone(), &data));
        contents.insert(name, data);
    }
    (entries, contents)
}
