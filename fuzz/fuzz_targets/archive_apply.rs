//! Arbitrary bytes applied as a layer tar: never a panic, never a change
//! outside the root.
//!
//! Half the inputs are raw bytes; the other half describe entries that are
//! written with valid checksums and well-formed PAX records, so the fuzzer
//! reaches past the header checks into names, links, whiteouts, PAX values
//! and replacement rules.
#![no_main]

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use plies_archive::{ApplyOptions, WhiteoutFormat, XattrNamespace, apply, pax};

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), m.len())
        })
        .collect();
    out.sort();
    out
}

/// Name components, few enough that entries meet each other.
const WORDS: [&[u8]; 12] = [
    b"a",
    b"b",
    b"..",
    b".",
    b"",
    b".wh.a",
    b".wh..wh..opq",
    b".wh..wh.plnk",
    b"canary",
    b"/",
    b"a\nb",
    b"\0",
];

#[derive(Arbitrary, Debug)]
struct Name(Vec<u8>);

impl Name {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, w) in self.0.iter().take(6).enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(WORDS[usize::from(*w) % WORDS.len()]);
        }
        out
    }
}

#[derive(Arbitrary, Debug)]
enum PaxKey {
    Path,
    LinkPath,
    Size,
    Uid,
    Mtime,
    UserXattr,
    OverlayXattr,
    SparseMajor,
    SparseMinor,
    SparseName,
    SparseRealSize,
    SparseSize,
    SparseNumBlocks,
    SparseMap,
    SparseOffset,
    SparseNumBytes,
    Other(Vec<u8>),
}

impl PaxKey {
    fn bytes(&self) -> Vec<u8> {
        match self {
            PaxKey::Path => b"path".to_vec(),
            PaxKey::LinkPath => b"linkpath".to_vec(),
            PaxKey::Size => b"size".to_vec(),
            PaxKey::Uid => b"uid".to_vec(),
            PaxKey::Mtime => b"mtime".to_vec(),
            PaxKey::UserXattr => b"SCHILY.xattr.user.x".to_vec(),
            PaxKey::OverlayXattr => b"SCHILY.xattr.trusted.overlay.opaque".to_vec(),
            PaxKey::SparseMajor => b"GNU.sparse.major".to_vec(),
            PaxKey::SparseMinor => b"GNU.sparse.minor".to_vec(),
            PaxKey::SparseName => b"GNU.sparse.name".to_vec(),
            PaxKey::SparseRealSize => b"GNU.sparse.realsize".to_vec(),
            PaxKey::SparseSize => b"GNU.sparse.size".to_vec(),
            PaxKey::SparseNumBlocks => b"GNU.sparse.numblocks".to_vec(),
            PaxKey::SparseMap => b"GNU.sparse.map".to_vec(),
            PaxKey::SparseOffset => b"GNU.sparse.offset".to_vec(),
            PaxKey::SparseNumBytes => b"GNU.sparse.numbytes".to_vec(),
            PaxKey::Other(k) => k.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Member {
    /// Index into the entry types tried.
    ty: u8,
    name: Name,
    link: Name,
    mode: u16,
    uid: u16,
    pax: Vec<(PaxKey, Vec<u8>)>,
    /// The name as a GNU long name entry.
    long_name: bool,
    data: Vec<u8>,
    /// Declared size differs from the data by this much.
    size_delta: Option<i8>,
}

const TYPES: [u8; 12] = [
    b'0', b'5', b'2', b'1', b'3', b'4', b'6', b'S', b'7', b'x', b'g', b'V',
];

fn octal(field: &mut [u8], value: u64) {
    let s = format!("{:0width$o}", value, width = field.len() - 1);
    let s = s.as_bytes();
    let n = s.len().min(field.len() - 1);
    field[..n].copy_from_slice(&s[s.len() - n..]);
}

fn header(name: &[u8], ty: u8, size: u64, mode: u16, uid: u16, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], u64::from(uid));
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_600_000_000);
    h[156] = ty;
    let n = link.len().min(100);
    h[157..157 + n].copy_from_slice(&link[..n]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h
}

fn push_entry(out: &mut Vec<u8>, h: [u8; 512], data: &[u8]) {
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len() + (512 - data.len() % 512) % 512, 0);
}

/// Writes the members as a tar (with an end marker).
fn build(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members.iter().take(24) {
        let name = m.name.bytes();
        let link = m.link.bytes();
        if !m.pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in m.pax.iter().take(6) {
                pax::record(&mut body, &k.bytes(), v);
            }
            push_entry(
                &mut out,
                header(b"././@PaxHeader", b'x', body.len() as u64, 0o644, 0, b""),
                &body,
            );
        }
        if m.long_name {
            let mut long = name.clone();
            long.push(0);
            push_entry(
                &mut out,
                header(b"././@LongLink", b'L', long.len() as u64, 0o644, 0, b""),
                &long,
            );
        }
        let ty = TYPES[usize::from(m.ty) % TYPES.len()];
        let data = &m.data[..m.data.len().min(4096)];
        let size = match m.size_delta {
            Some(d) => (data.len() as i64 + i64::from(d)).max(0) as u64,
            None => data.len() as u64,
        };
        push_entry(
            &mut out,
            header(&name, ty, size, m.mode, m.uid, &link),
            data,
        );
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let tar = if selector & 8 == 0 {
        rest.to_vec()
    } else {
        match Vec::<Member>::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(members) => build(&members),
            Err(_) => return,
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let canary = tmp.path().join("canary");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("secret"), b"canary").unwrap();
    let whiteouts = match selector % 3 {
        0 => WhiteoutFormat::Overlay(XattrNamespace::Trusted),
        1 => WhiteoutFormat::Aufs,
        _ => WhiteoutFormat::Merged,
    };
    let opts = ApplyOptions::default()
        .with_whiteouts(whiteouts)
        .with_privileged(selector & 4 == 0);
    let before = (listing(tmp.path()), listing(&canary));
    let _ = apply(tar.as_slice(), &root, &opts);
    assert_eq!(
        (listing(tmp.path()), listing(&canary)),
        before,
        "something outside the root changed"
    );
    assert_eq!(std::fs::read(canary.join("secret")).unwrap(), b"canary");
});
