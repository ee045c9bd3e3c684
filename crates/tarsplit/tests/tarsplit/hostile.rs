//! Hostile and broken input: each gets its typed error, naming the entry, the
//! file or the byte offset; nothing panics or reads without bound.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use plies_testkit::layer_tar::LayerTar;
use proptest::prelude::*;

use plies_tarsplit::{
    DEFAULT_MAX_LINE_LEN, Disassembler, Entry, EntryKind, Error, Packer, Unpacker, assemble,
};

use crate::{disassemble, pack};

/// The first error reading `json` yields (after any good entries).
fn unpack_error(unpacker: Unpacker<impl Read>) -> Error {
    let mut unpacker = unpacker;
    let error = loop {
        match unpacker.next() {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("no error"),
        }
    };
    assert!(
        unpacker.next().is_none(),
        "the unpacker stops after an error"
    );
    error
}

fn error_of(json: &str) -> Error {
    unpack_error(Unpacker::new(json.as_bytes()))
}

fn a_layer() -> Vec<u8> {
    LayerTar::new()
        .file("etc/motd", "hello\n", 0o644)
        .file("etc/passwd", "root:x:0:0\n", 0o644)
        .finish()
}

#[test]
fn truncated_gzip() {
    let entries = disassemble(&a_layer(), vec![]);
    let mut packer = Packer::gzip(Vec::new());
    for e in &entries {
        packer.add(&e.kind).unwrap();
    }
    let gz = packer.finish().unwrap().finish().unwrap();
    for cut in [10, gz.len() / 2, gz.len() - 4] {
        let error = unpack_error(Unpacker::gzip(&gz[..cut]));
        assert!(
            matches!(error, Error::Read { .. } | Error::TruncatedEntry { .. }),
            "cut at {cut}: {error:?}"
        );
    }
}

#[test]
fn lines_are_bounded() {
    let long = format!(
        "{{\"type\":2,\"payload\":\"{}\",\"position\":0}}\n",
        "A".repeat(200)
    );
    let error = unpack_error(Unpacker::new(long.as_bytes()).max_line_len(100));
    assert!(
        matches!(
            error,
            Error::LineTooLong {
                position: 0,
                limit: 100
            }
        ),
        "{error:?}"
    );

    // An endless line ends at the default limit, not in memory exhaustion.
    let endless = io::repeat(b'a');
    let error = unpack_error(Unpacker::new(endless));
    assert!(
        matches!(error, Error::LineTooLong { position: 0, limit } if limit == DEFAULT_MAX_LINE_LEN),
        "{error:?}"
    );

    let payload = format!(
        "{{\"type\":2,\"payload\":\"{}\",\"position\":0}}\n",
        "AAAA".repeat(30)
    );
    let error = unpack_error(Unpacker::new(payload.as_bytes()).max_payload_len(10));
    assert!(
        matches!(
            error,
            Error::PayloadTooLarge {
                position: 0,
                limit: 10,
                ..
            }
        ),
        "{error:?}"
    );
}

/// A malformed line, and what its error must match.
type Case = (&'static str, fn(&Error) -> bool);

#[test]
fn malformed_entries() {
    let good = "{\"type\":2,\"payload\":\"AA==\",\"position\":0}\n";
    let cases: [Case; 10] = [
        ("{\"type\":2,\"payload\":\"!!!!\",\"position\":1}\n", |e| {
            matches!(
                e,
                Error::Base64 {
                    position: 1,
                    field: "payload",
                    ..
                }
            )
        }),
        ("{\"type\":1,\"name_raw\":\"%%\",\"position\":1}\n", |e| {
            matches!(
                e,
                Error::Base64 {
                    position: 1,
                    field: "name_raw",
                    ..
                }
            )
        }),
        (
            "{\"type\":1,\"name\":\"a\",\"size\":-5,\"payload\":null,\"position\":1}\n",
            |e| {
                matches!(
                    e,
                    Error::InvalidEntry {
                        position: 1,
                        reason: "negative size"
                    }
                )
            },
        ),
        (
            "{\"type\":1,\"name\":\"a\",\"size\":5,\"payload\":null,\"position\":1}\n",
            |e| matches!(e, Error::InvalidEntry { position: 1, .. }),
        ),
        (
            "{\"type\":1,\"name\":\"a\",\"size\":5,\"payload\":\"AAAA\",\"position\":1}\n",
            |e| {
                matches!(
                    e,
                    Error::InvalidEntry {
                        position: 1,
                        reason: "checksum is not 8 bytes"
                    }
                )
            },
        ),
        ("{\"type\":3,\"payload\":\"\",\"position\":1}\n", |e| {
            matches!(
                e,
                Error::UnknownType {
                    position: 1,
                    kind: 3
                }
            )
        }),
        ("{\"type\":2,\"payload\":\"\",\"position\":7}\n", |e| {
            matches!(
                e,
                Error::PositionMismatch {
                    expected: 1,
                    found: 7
                }
            )
        }),
        ("{\"type\":2,\"payload\":\"\",\"position\":1}{}\n", |e| {
            matches!(e, Error::Json { position: 1, .. })
        }),
        ("\n", |e| matches!(e, Error::Json { position: 1, .. })),
        ("{\"type\":2,\"payload\":\"AAAA", |e| {
            matches!(e, Error::TruncatedEntry { position: 1 })
        }),
    ];
    for (bad, check) in cases {
        let error = error_of(&format!("{good}{bad}"));
        assert!(check(&error), "{bad:?}: {error:?}");
        // Every error says which entry.
        assert!(error.to_string().contains("entry 1"), "{bad:?}: {error}");
    }
    // A last line without its newline is still an entry when it is complete.
    let entries: Vec<_> = Unpacker::new(good.trim_end().as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        entries,
        [Entry {
            position: 0,
            kind: EntryKind::Segment(vec![0])
        }]
    );
}

/// Assembles `a_layer()`'s entries with `files` for its files.
fn assemble_layer(files: HashMap<&'static str, Vec<u8>>) -> Result<u64, Error> {
    let entries = disassemble(&a_layer(), vec![]);
    let source = |name: &[u8]| {
        let name = std::str::from_utf8(name).unwrap();
        files
            .get(name)
            .map(|data| io::Cursor::new(data.clone()))
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    };
    assemble(entries.into_iter().map(Ok), source, io::sink())
}

#[test]
fn files_that_changed_since() {
    let motd = || ("etc/motd", b"hello\n".to_vec());
    let good = assemble_layer(HashMap::from([
        motd(),
        ("etc/passwd", b"root:x:0:0\n".to_vec()),
    ]));
    assert_eq!(good.unwrap(), a_layer().len() as u64);

    let error = assemble_layer(HashMap::from([
        motd(),
        ("etc/passwd", b"root:x:0:1\n".to_vec()),
    ]))
    .unwrap_err();
    assert!(
        matches!(&error, Error::ChecksumMismatch { name, position: 3 } if name == b"etc/passwd"),
        "{error:?}"
    );
    assert!(error.to_string().contains("etc/passwd"), "{error}");

    let error =
        assemble_layer(HashMap::from([motd(), ("etc/passwd", b"root".to_vec())])).unwrap_err();
    assert!(
        matches!(&error, Error::FileTooShort { name, expected: 11, found: 4, .. } if name == b"etc/passwd"),
        "{error:?}"
    );

    let error = assemble_layer(HashMap::from([
        motd(),
        ("etc/passwd", b"root:x:0:0\nmore".to_vec()),
    ]))
    .unwrap_err();
    assert!(
        matches!(&error, Error::FileTooLong { name, expected: 11, .. } if name == b"etc/passwd"),
        "{error:?}"
    );

    let error = assemble_layer(HashMap::from([motd()])).unwrap_err();
    assert!(
        matches!(&error, Error::OpenFile { name, position: 3, .. } if name == b"etc/passwd"),
        "{error:?}"
    );
}

/// A writer that fails after `room` bytes.
#[derive(Debug)]
struct Full {
    room: usize,
}

impl Write for Full {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn failing_writers() {
    let entries = disassemble(&a_layer(), vec![]);
    let files = |_: &[u8]| Ok(&b"hello\n"[..]);
    let error = assemble(entries.into_iter().map(Ok), files, Full { room: 700 }).unwrap_err();
    // The segment after the first file (its padding and the next header) fails.
    assert!(
        matches!(error, Error::WriteTar { offset: 518, .. }),
        "{error:?}"
    );

    // The packer's failure stops the disassembler: its read fails, and finish
    // says why.
    let tar = a_layer();
    let mut reader = Disassembler::new(&tar[..], Packer::new(Full { room: 100 }));
    let mut passed = Vec::new();
    assert!(reader.read_to_end(&mut passed).is_err());
    let error = reader.finish().unwrap_err();
    assert!(
        matches!(error, Error::Write { position: 0, .. }),
        "{error:?}"
    );
}

/// Reads `tar` through a disassembler; returns the read's error and finish's.
fn disassemble_error(tar: &[u8]) -> (io::Error, Error) {
    let mut reader = Disassembler::new(tar, Vec::new());
    let mut passed = Vec::new();
    let read = reader.read_to_end(&mut passed).unwrap_err();
    (read, reader.finish().unwrap_err())
}

fn header(name: &str, kind: u8, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_path(name).unwrap();
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_size(size);
    header.set_cksum();
    header
}

#[test]
fn malformed_tars() {
    // A header whose checksum does not add up.
    let mut tar = a_layer();
    tar[10] ^= 1;
    let (read, error) = disassemble_error(&tar);
    assert_eq!(read.kind(), io::ErrorKind::InvalidData);
    assert!(read.to_string().contains("checksum"), "{read}");
    assert!(
        matches!(
            error,
            Error::InvalidTar {
                offset: 0,
                reason: "header checksum mismatch"
            }
        ),
        "{error:?}"
    );

    // Cut inside a file's contents, and inside a header.
    let tar = a_layer();
    for (cut, inside) in [(515, "file contents"), (1100, "a header")] {
        let (read, error) = disassemble_error(&tar[..cut]);
        assert_eq!(read.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            matches!(error, Error::TruncatedTar { offset, inside: i } if offset == cut as u64 && i == inside),
            "{error:?}"
        );
    }

    // A zero block, then a header.
    let mut tar = vec![0u8; 512];
    tar.extend_from_slice(&a_layer());
    let (_, error) = disassemble_error(&tar);
    assert!(
        matches!(error, Error::InvalidTar { offset: 512, .. }),
        "{error:?}"
    );

    // A negative size, in base-256.
    let mut bad = header("a", b'0', 0);
    bad.as_mut_bytes()[124..136].copy_from_slice(&[0xff; 12]);
    bad.set_cksum();
    let (_, error) = disassemble_error(bad.as_bytes());
    assert!(
        matches!(
            error,
            Error::InvalidTar {
                offset: 0,
                reason: "negative size"
            }
        ),
        "{error:?}"
    );

    // An extended header over 1 MiB, and one with a malformed record.
    let mut tar = header("pax", b'x', (1 << 20) + 1).as_bytes().to_vec();
    tar.resize(tar.len() + (2 << 20), b'9');
    let (_, error) = disassemble_error(&tar);
    assert!(
        matches!(error, Error::InvalidTar { offset: 0, .. }),
        "{error:?}"
    );
    let records = b"99 path=a\n";
    let mut tar = header("pax", b'x', records.len() as u64)
        .as_bytes()
        .to_vec();
    tar.extend_from_slice(records);
    tar.resize(2048, 0);
    let (_, error) = disassemble_error(&tar);
    assert!(
        matches!(
            error,
            Error::InvalidTar {
                offset: 0,
                reason: "malformed PAX record"
            }
        ),
        "{error:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = Unpacker::new(&data[..]).count();
        let _ = Unpacker::gzip(&data[..]).count();
        let _ = Disassembler::new(&data[..], Vec::new()).finish();
    }

    #[test]
    fn damaged_tars_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut tar = a_layer();
        for (at, byte) in flips {
            let i = at.index(tar.len());
            tar[i] = byte;
        }
        let tar = &tar[..cut.index(tar.len() + 1)];
        if let Ok(entries) = Disassembler::new(tar, Vec::new()).finish() {
            // Whatever was recorded packs and reads back.
            let json = pack(&entries);
            prop_assert_eq!(crate::unpack(&json), entries);
        }
    }
}
