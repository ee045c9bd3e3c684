//! Layer tars built entry by entry.

/// One entry of a layer tar.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    /// An executable file.
    Exec(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
}

/// A layer tar holding `entries`, in order (whiteouts are empty files named
/// `.wh.<name>`, opaque markers `.wh..wh..opq`).
pub fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let (path, data): (&str, &[u8]) = match *e {
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (p, b"")
            }
            Entry::File(p, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (p, d)
            }
            Entry::Exec(p, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                (p, d)
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_link_name(target).unwrap();
                (p, b"")
            }
        };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap()
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
