//! Layer tars built entry by entry.

use plies_testkit::layer_tar::LayerTar;

/// One entry of a layer tar.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    /// An executable file.
    Exec(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// A layer tar holding `entries`, in order, owned by 0:0 with mtime
/// 1_600_000_000 (whiteouts are empty files named `.wh.<name>`, opaque markers
/// `.wh..wh..opq`).
pub fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut t = LayerTar::new();
    for e in entries {
        match *e {
            Entry::Dir(p) => t.dir(p, 0o755),
            Entry::File(p, d) => t.file(p, d, 0o644),
            Entry::Exec(p, d) => t.file(p, d, 0o755),
            Entry::Symlink(p, target) => t.symlink(p, target),
        };
    }
    t.finish()
}

/// The entry names of a tar, in order.
pub fn names(tar_bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar_bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            e.path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned()
        })
        .collect()
}

/// The content of the regular file `name` in a tar.
pub fn file(tar_bytes: &[u8], name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut a = tar::Archive::new(tar_bytes);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            let mut out = Vec::new();
            e.read_to_end(&mut out).unwrap();
            return Some(out);
        }
    }
    None
}

/// A layer tar whose first entry, `../escape`, climbs out of the layer,
/// followed by a file of `size` bytes (the `tar` crate refuses to write `..`:
/// the name is patched in and the header's checksum made again).
pub fn climbing_layer(size: usize) -> Vec<u8> {
    let big = vec![7u8; size];
    let mut tar = layer(&[Entry::File("xx/escape", b"x"), Entry::File("big", &big)]);
    tar[..9].copy_from_slice(b"../escape");
    let sum: u32 = tar[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    tar[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar
}
