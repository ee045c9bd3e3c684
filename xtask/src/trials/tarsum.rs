//! What a layer holds, from its `plies diff` tar: one hash per entry of its path,
//! type, mode, owner, size, mtime, link target, device numbers, xattrs and data.
//!
//! Whiteouts (`.wh.*` entries) are hashed without their mtime: a whiteout is a
//! 0/0 device the apply makes, stamped with the time it made it, so the same layer
//! applied in two roots differs there and nowhere else.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use anyhow::{Context as _, bail};

use crate::Result;

/// A layer's content: each entry's path (without `./` or a trailing `/`) and hash.
pub(crate) type Fingerprint = BTreeMap<String, u64>;

/// Reads a tar (ustar, GNU and pax headers) into a [`Fingerprint`].
pub(crate) fn fingerprint(tar: &[u8]) -> Result<Fingerprint> {
    let mut out = Fingerprint::new();
    let mut pos = 0usize;
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    loop {
        let Some(header) = tar.get(pos..pos + 512) else {
            bail!("tar ends inside a header at byte {pos}");
        };
        if header.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let typeflag = match header[156] {
            0 => b'0',
            t => t,
        };
        let pax_value = |key: &str| pax.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let mut size =
            number(&header[124..136]).with_context(|| format!("bad size at byte {pos}"))?;
        if let Some(v) = pax_value("size") {
            size = text(&v).parse().context("bad pax size")?;
        }
        let start = pos + 512;
        let Some(data) = tar.get(start..start + size as usize) else {
            bail!("tar ends inside the data of the entry at byte {pos}");
        };
        pos = start + (size as usize).div_ceil(512) * 512;
        match typeflag {
            b'x' => {
                pax = pax_records(data)?;
                continue;
            }
            b'g' => continue,
            b'L' => {
                long_name = Some(cstr(data).to_vec());
                continue;
            }
            b'K' => {
                long_link = Some(cstr(data).to_vec());
                continue;
            }
            _ => {}
        }
        let name = pax_value("path").or(long_name.take()).unwrap_or_else(|| {
            let name = cstr(&header[0..100]);
            let prefix = cstr(&header[345..500]);
            if &header[257..262] == b"ustar" && header[263] == b'0' && !prefix.is_empty() {
                [prefix, b"/", name].concat()
            } else {
                name.to_vec()
            }
        });
        let link = pax_value("linkpath")
            .or(long_link.take())
            .unwrap_or_else(|| cstr(&header[157..257]).to_vec());
        let path = normalize(&text(&name));
        let whiteout = path.rsplit('/').next().unwrap_or("").starts_with(".wh.");

        let mut h = DefaultHasher::new();
        typeflag.hash(&mut h);
        (number(&header[100..108]).unwrap_or(0) & 0o7777).hash(&mut h);
        pax_value("uid")
            .map(|v| text(&v))
            .unwrap_or_else(|| number(&header[108..116]).unwrap_or(0).to_string())
            .hash(&mut h);
        pax_value("gid")
            .map(|v| text(&v))
            .unwrap_or_else(|| number(&header[116..124]).unwrap_or(0).to_string())
            .hash(&mut h);
        size.hash(&mut h);
        if !whiteout {
            // Whole seconds: GNU headers have no more, pax records may.
            let mtime = pax_value("mtime")
                .map(|v| text(&v).split('.').next().unwrap_or("").to_string())
                .unwrap_or_else(|| number(&header[136..148]).unwrap_or(0).to_string());
            mtime.hash(&mut h);
        }
        link.hash(&mut h);
        if matches!(typeflag, b'3' | b'4') {
            number(&header[329..337]).hash(&mut h);
            number(&header[337..345]).hash(&mut h);
        }
        let mut attrs: Vec<&(String, Vec<u8>)> = pax
            .iter()
            .filter(|(k, _)| {
                k.starts_with("SCHILY.xattr.")
                    || k.starts_with("LIBARCHIVE.xattr.")
                    || k.starts_with("GNU.sparse.")
            })
            .collect();
        attrs.sort();
        attrs.hash(&mut h);
        data.hash(&mut h);
        out.insert(path, h.finish());
        pax.clear();
    }
}

/// How `now` differs from `want`, in a line: counts and the first paths.
pub(crate) fn difference(want: &Fingerprint, now: &Fingerprint) -> String {
    let missing: Vec<&String> = want.keys().filter(|k| !now.contains_key(*k)).collect();
    let extra: Vec<&String> = now.keys().filter(|k| !want.contains_key(*k)).collect();
    let changed: Vec<&String> = want
        .iter()
        .filter(|(k, v)| now.get(*k).is_some_and(|n| n != *v))
        .map(|(k, _)| k)
        .collect();
    let first = |paths: &[&String]| {
        paths
            .iter()
            .take(3)
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    for (what, paths) in [
        ("missing", &missing),
        ("extra", &extra),
        ("changed", &changed),
    ] {
        if !paths.is_empty() {
            parts.push(format!("{} {what} ({})", paths.len(), first(paths)));
        }
    }
    format!(
        "{} of {} entries: {}",
        missing.len() + extra.len() + changed.len(),
        want.len(),
        parts.join("; ")
    )
}

/// `./a/b/` → `a/b`; the top directory is `.`.
fn normalize(name: &str) -> String {
    let trimmed = name.trim_start_matches("./").trim_end_matches('/');
    let trimmed = trimmed.trim_start_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        ".".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The bytes before the first NUL.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Bytes as text, lossily.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A numeric header field: octal text, or base-256 when the high bit of the first
/// byte is set.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(n);
    }
    let digits = text(cstr(field));
    let digits = digits.trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// The records of a pax extended header: `<len> <key>=<value>\n`, each.
fn pax_records(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() && data[0] != 0 {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .context("pax record without a length")?;
        let len: usize = text(&data[..space])
            .parse()
            .context("bad pax record length")?;
        if len <= space + 1 || len > data.len() {
            bail!("pax record length out of range");
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .context("pax record without '='")?;
        out.push((text(&record[..eq]), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header block (checksum left blank: the reader does not check it).
    fn header(name: &str, typeflag: u8, size: usize, mtime: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(format!("{mtime:011o}").as_bytes());
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h
    }

    fn entry(tar: &mut Vec<u8>, name: &str, typeflag: u8, data: &[u8], mtime: u64) {
        tar.extend(header(name, typeflag, data.len(), mtime));
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }

    #[test]
    fn entries_and_what_counts() {
        let build = |data: &[u8], file_mtime: u64, wh_mtime: u64| {
            let mut tar = Vec::new();
            entry(&mut tar, "./a/", b'5', b"", 7);
            entry(&mut tar, "./a/f", b'0', data, file_mtime);
            entry(&mut tar, "./a/.wh.g", b'0', b"", wh_mtime);
            let long = format!("{}/x", "d".repeat(150));
            let body = format!(" path={long}\n");
            let record = format!("{}{body}", body.len() + 3);
            entry(&mut tar, "", b'x', record.as_bytes(), 0);
            entry(&mut tar, "ignored", b'0', b"xy", 1);
            tar.extend([0u8; 1024]);
            fingerprint(&tar).unwrap()
        };
        let one = build(b"hello", 5, 100);
        assert_eq!(one.len(), 4);
        assert!(one.contains_key("a") && one.contains_key("a/f"));
        assert!(one.keys().any(|k| k.len() == 152));
        assert_eq!(one, build(b"hello", 5, 200), "whiteout mtimes do not count");
        assert_ne!(one, build(b"hellO", 5, 100));
        assert_ne!(one, build(b"hello", 6, 100));
        let d = difference(&one, &build(b"hellO", 5, 100));
        assert!(d.starts_with("1 of 4 entries: 1 changed (a/f)"), "{d}");
        assert!(fingerprint(&[0u8; 100]).is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644 \0"), Some(0o644));
        assert_eq!(number(&[0x80, 0, 0, 1, 0]), Some(256));
        assert_eq!(number(b"\0\0\0"), Some(0));
    }
}
