//! Generated tars — files, empty files, directories, symlinks, hard links, long
//! names and link targets, PAX records, ustar prefixes, extra end blocks and
//! trailing bytes — disassemble, pack, unpack and assemble to the same bytes.

use proptest::prelude::*;

use plies_tarsplit::EntryKind;

use crate::{assemble_from, disassemble, files, members, pack, unpack};

#[derive(Clone, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    HardLink(String),
}

#[derive(Clone, Debug)]
struct Member {
    name: String,
    kind: Kind,
    gnu: bool,
    pax: Vec<(String, Vec<u8>)>,
    /// Whether a PAX `path` record names the member instead of its header.
    pax_path: bool,
}

fn name() -> impl Strategy<Value = String> {
    // Short parts and long ones: past 100 bytes a name needs a ustar prefix,
    // a PAX path or a GNU long name.
    prop::collection::vec(
        prop_oneof![3 => "[a-z0-9_-][a-z0-9._-]{0,11}", 1 => "[a-z]{40,90}", 1 => "[a-zé€ <&>]{1,8}"],
        1..5,
    )
    .prop_map(|parts| parts.join("/"))
}

fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..600),
        1 => (0usize..3, any::<u8>()).prop_map(|(blocks, byte)| vec![byte; blocks * 512]),
        1 => (1usize..20_000).prop_map(|len| (0..len).map(|i| (i * 7 % 251) as u8).collect()),
    ]
}

fn member() -> impl Strategy<Value = Member> {
    let kind = prop_oneof![
        4 => contents().prop_map(Kind::File),
        1 => Just(Kind::Dir),
        1 => name().prop_map(Kind::Symlink),
        1 => name().prop_map(Kind::HardLink),
    ];
    let pax = prop::collection::vec(
        (
            prop_oneof![
                Just("mtime".to_string()),
                Just("SCHILY.xattr.user.plies".to_string()),
                Just("comment".to_string()),
            ],
            // Any bytes but newlines, which the `tar` crate (the oracle here)
            // takes for the end of a record.
            prop::collection::vec(any::<u8>().prop_filter("newline", |&b| b != b'\n'), 0..40),
        ),
        0..3,
    );
    (name(), kind, any::<bool>(), pax, prop::bool::weighted(0.2)).prop_map(
        |(name, kind, gnu, pax, pax_path)| Member {
            name,
            kind,
            gnu,
            pax,
            pax_path,
        },
    )
}

/// Builds the tar with the `tar` crate; the members' names get their index in
/// front so that they are unique.
fn build(members: &[Member], end: Ending) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (i, m) in members.iter().enumerate() {
        let name = format!("{i}{}", m.name);
        let mut records: Vec<(&str, Vec<u8>)> =
            m.pax.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        if m.pax_path {
            records.push(("path", format!("{i}pax/{}", m.name).into_bytes()));
        }
        if !records.is_empty() {
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (*k, &v[..])))
                .unwrap();
        }
        let mut header = if m.gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        match &m.kind {
            Kind::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, &name, &data[..]).unwrap();
            }
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{name}/"), std::io::empty())
                    .unwrap();
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, &name, target).unwrap();
            }
            Kind::HardLink(target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                builder.append_link(&mut header, &name, target).unwrap();
            }
        }
    }
    let mut tar = match end {
        Ending::Missing => builder.get_ref().clone(),
        _ => builder.into_inner().unwrap(),
    };
    match end {
        Ending::Record => tar.resize(tar.len().div_ceil(10240) * 10240, 0),
        Ending::Garbage(extra) => tar.extend_from_slice(&extra),
        Ending::Missing | Ending::Standard => {}
    }
    tar
}

/// How the archive ends.
#[derive(Clone, Debug)]
enum Ending {
    /// Two zero blocks.
    Standard,
    /// Zero blocks up to a 10 KiB record, as GNU tar writes.
    Record,
    /// Bytes of any kind after the end-of-archive blocks.
    Garbage(Vec<u8>),
    /// No end-of-archive blocks at all.
    Missing,
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        Just(Ending::Standard),
        Just(Ending::Record),
        prop::collection::vec(any::<u8>(), 1..3000).prop_map(Ending::Garbage),
        Just(Ending::Missing),
    ]
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![]),
        prop::collection::vec(1usize..1500, 1..8),
        Just(vec![1]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn generated_tars_come_back_byte_for_byte(
        spec in prop::collection::vec(member(), 0..12),
        end in ending(),
        chunks in chunks(),
    ) {
        let tar = build(&spec, end);
        let entries = disassemble(&tar, chunks);

        // Positions count from 0, and the segments and contents make up the tar.
        for (i, e) in entries.iter().enumerate() {
            prop_assert_eq!(e.position, i as u64);
        }

        // One file entry per member, with the name the tar crate reads.
        let (expected, contents) = members(&tar);
        prop_assert_eq!(files(&entries), expected);

        // The JSON reads back to the same entries.
        let json = pack(&entries);
        prop_assert_eq!(unpack(&json), entries.clone());

        // And the tar comes back from the entries and the files.
        prop_assert!(assemble_from(&entries, &contents) == tar);
    }
}

#[test]
fn an_empty_stream_and_a_bare_end_of_archive() {
    assert!(disassemble(b"", vec![]).is_empty());
    let entries = disassemble(&[0; 1024], vec![100]);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind, EntryKind::Segment(vec![0; 1024]));
    // Trailing data goes out in segments of 1 MiB.
    let mut tar = vec![0u8; 1024];
    tar.extend((0..(2 << 20) + 5).map(|i| i as u8));
    let entries = disassemble(&tar, vec![]);
    let sizes: Vec<usize> = entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::Segment(bytes) => bytes.len(),
            EntryKind::File { .. } => panic!("no file here"),
        })
        .collect();
    assert_eq!(sizes, [1024, 1 << 20, 1 << 20, 5]);
}

#[test]
fn a_global_pax_header_is_a_member_of_its_own() {
    let mut builder = tar::Builder::new(Vec::new());
    let records = b"15 path=global\n12 comment=\n";
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XGlobalHeader);
    header.set_size(records.len() as u64);
    builder
        .append_data(&mut header, "pax_global_header", &records[..])
        .unwrap();
    let mut header = tar::Header::new_ustar();
    header.set_size(3);
    builder.append_data(&mut header, "a", &b"abc"[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let entries = disassemble(&tar, vec![]);
    let kinds: Vec<_> = entries.iter().map(|e| e.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            EntryKind::Segment(tar[..512 + records.len()].to_vec()),
            EntryKind::file("global", b""),
            EntryKind::Segment(tar[512 + records.len()..1536].to_vec()),
            EntryKind::file("a", b"abc"),
            EntryKind::Segment(tar[1539..].to_vec()),
        ]
    );
}

#[test]
fn an_old_style_directory_has_no_data_whatever_its_size() {
    // Type '\0' with a trailing slash is a directory; so is a '5' whose size
    // field says 1000: no data follows either.
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind) in [("old/", 0), ("new/", b'5')] {
        let mut header = tar::Header::new_ustar();
        // Written by hand: the tar crate drops the trailing slash, and writes
        // type '0' for 0.
        header.as_old_mut().name[..4].copy_from_slice(name.as_bytes());
        header.as_mut_bytes()[156] = kind;
        header.set_size(1000);
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    assert_eq!(tar.len(), 4 * 512);
    let entries = disassemble(&tar, vec![]);
    assert_eq!(
        files(&entries),
        [EntryKind::file("old/", b""), EntryKind::file("new/", b"")]
    );
    assert!(assemble_from(&entries, &Default::default()) == tar);
}
