//! Arbitrary bytes as tar-split JSON (plain and gzipped) and as a tar to
//! disassemble: never a panic; every entry read packs and reads back the same;
//! every tar disassembled assembles again to exactly its bytes.
//!
//! Half the tar inputs are raw bytes; the other half describe members that are
//! written with valid checksums (PAX, global PAX, GNU long names and links, old
//! GNU sparse headers with extension blocks, sizes that lie), so the fuzzer gets
//! past the checksum into the disassembler's states.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::io::{self, Cursor, Read};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use plies_tarsplit::{Disassembler, Entry, EntryKind, Error, Packer, Unpacker, assemble};

const TYPES: [u8; 14] = [
    b'0', 0, b'5', b'1', b'2', b'3', b'6', b'7', b'x', b'g', b'L', b'K', b'S', b'D',
];

#[derive(Arbitrary, Debug)]
struct Member {
    ty: u8,
    name: Vec<u8>,
    gnu: bool,
    data: Vec<u8>,
    /// Declared size differs from the data by this much.
    size_delta: Option<i8>,
    /// For `S`: how many extension blocks follow the header.
    extensions: u8,
}

fn octal(field: &mut [u8], value: u64) {
    let s = format!("{:0width$o}", value, width = field.len() - 1);
    let s = s.as_bytes();
    let n = s.len().min(field.len() - 1);
    field[..n].copy_from_slice(&s[s.len() - n..]);
}

fn header(m: &Member, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = m.name.len().min(100);
    h[..n].copy_from_slice(&m.name[..n]);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[124..136], size);
    h[156] = TYPES[usize::from(m.ty) % TYPES.len()];
    if m.gnu {
        h[257..265].copy_from_slice(b"ustar  \0");
    } else {
        h[257..265].copy_from_slice(b"ustar\x0000");
    }
    if h[156] == b'S' && m.extensions > 0 {
        h[482] = 1;
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h
}

fn build(members: &[Member], tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members.iter().take(16) {
        let data = &m.data[..m.data.len().min(3000)];
        let size = match m.size_delta {
            Some(d) => (data.len() as i64 + i64::from(d)).max(0) as u64,
            None => data.len() as u64,
        };
        out.extend_from_slice(&header(m, size));
        for i in 0..m.extensions.min(3) {
            let mut ext = [0u8; 512];
            ext[504] = u8::from(i + 1 < m.extensions.min(3));
            out.extend_from_slice(&ext);
        }
        out.extend_from_slice(data);
        out.resize(out.len() + (512 - data.len() % 512) % 512, 0);
    }
    out.extend_from_slice(tail);
    out
}

/// Packs `entries` and reads them back; unchanged, unless the packer refuses a
/// duplicate name as it must.
fn check_round_trip(entries: &[Entry]) {
    let mut packer = Packer::new(Vec::new());
    for e in entries {
        match packer.add(&e.kind) {
            Ok(position) => assert_eq!(position, e.position),
            Err(Error::DuplicateName { .. }) => return,
            Err(e) => panic!("packing into memory failed: {e}"),
        }
    }
    let json = packer.finish().unwrap();
    let back: Vec<Entry> = Unpacker::new(&json[..])
        .collect::<Result<_, _>>()
        .expect("what the packer writes reads back");
    assert_eq!(back, entries);
}

/// Disassembles `tar`, read in pieces of `chunk` bytes; if it is a tar, the
/// entries and the contents cut from `tar` at their offsets assemble to `tar`.
fn check_disassembly(tar: &[u8], chunk: usize) {
    let mut reader = Disassembler::new(tar, Vec::new());
    let mut passed = Vec::new();
    let mut buf = vec![0u8; chunk];
    let read_ok = loop {
        match reader.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => passed.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let Ok(entries) = reader.finish() else {
        return;
    };
    assert!(read_ok, "a read failed but finish did not");
    assert_eq!(passed, tar);

    let mut contents: HashMap<Vec<u8>, VecDeque<Vec<u8>>> = HashMap::new();
    let mut offset = 0usize;
    for e in &entries {
        match &e.kind {
            EntryKind::Segment(bytes) => offset += bytes.len(),
            EntryKind::File { size: 0, .. } => {}
            EntryKind::File { name, size, .. } => {
                let end = offset + *size as usize;
                contents
                    .entry(name.clone())
                    .or_default()
                    .push_back(tar[offset..end].to_vec());
                offset = end;
            }
        }
    }
    assert_eq!(offset, tar.len(), "the entries cover the tar");
    let files = |name: &[u8]| {
        contents
            .get_mut(name)
            .and_then(VecDeque::pop_front)
            .map(Cursor::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    };
    let mut out = Vec::new();
    assemble(entries.iter().cloned().map(Ok), files, &mut out).expect("assembles");
    assert_eq!(out, tar);
    check_round_trip(&entries);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };

    // As tar-split JSON.
    let json = Unpacker::new(rest).max_line_len(1 << 16);
    let entries: Vec<Entry> = json.map_while(Result::ok).collect();
    check_round_trip(&entries);
    let _ = Unpacker::gzip(rest).max_payload_len(1 << 16).count();

    // As a tar.
    let chunk = usize::from(selector >> 4) * 97 + 1;
    if selector & 1 == 0 {
        check_disassembly(rest, chunk);
    } else if let Ok((members, tail)) =
        <(Vec<Member>, Vec<u8>)>::arbitrary(&mut Unstructured::new(rest))
    {
        let mut tar = build(&members, &[]);
        if selector & 2 == 0 {
            tar.extend_from_slice(&[0; 1024]);
        }
        tar.extend_from_slice(&tail[..tail.len().min(2048)]);
        check_disassembly(&tar, chunk);
    }
});
