//! How overlayfs reads paths out of mount data, and how to write them so it reads
//! them back unchanged.
//!
//! The kernel splits legacy mount data into options at `,` and a `lowerdir` value
//! into layers at `:`, in both cases skipping a character that follows a `\`; it then
//! drops each escaping `\`. So a path is written with `\` before every `\`, `:` and
//! `,` ([`escape_path`]), and [`split_options`] with [`split_lowerdir`] read data back
//! the way the kernel does (useful to check a plan, and in tests).
//!
//! Before overlayfs sees the data, an LSM such as SELinux takes its own options out,
//! splitting at commas *outside double quotes* and ignoring backslashes. That is why
//! `context="…"` labels are quoted, and why a path holding `"` is refused in legacy
//! mount data (see [`check_path`]).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Writes `path` so that overlayfs's option and layer splitting gives it back whole.
pub fn escape_path(path: &OsStr) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + 4);
    escape_into(&mut out, path);
    out
}

/// [`escape_path`], appending to `out`.
pub fn escape_into(out: &mut Vec<u8>, path: &OsStr) {
    let bytes = path.as_bytes();
    let mut start = 0;
    for i in memchr::memchr3_iter(b'\\', b':', b',', bytes) {
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The length of [`escape_path`]`(path)` without building it.
pub fn escaped_len(path: &OsStr) -> usize {
    let bytes = path.as_bytes();
    bytes.len() + memchr::memchr3_iter(b'\\', b':', b',', bytes).count()
}

/// Refuses paths that no mount data can carry: empty, or holding a NUL or a newline;
/// and, for legacy data (`legacy`), a `"`, which the LSM option parser would take
/// for the start of a quoted value.
pub fn check_path(role: &'static str, path: &OsStr, legacy: bool) -> Result<()> {
    let bytes = path.as_bytes();
    // One vectorized pass over the bytes: this runs for every layer of every plan.
    let bad = if legacy {
        memchr::memchr3(0, b'\n', b'"', bytes)
    } else {
        memchr::memchr2(0, b'\n', bytes)
    };
    let reason = match bad.map(|i| bytes[i]) {
        _ if bytes.is_empty() => Some("it is empty"),
        Some(0) => Some("it holds a NUL byte"),
        Some(b'\n') => Some("it holds a newline"),
        Some(_) => {
            Some("a double quote breaks the kernel's LSM option parsing of legacy mount data")
        }
        None => None,
    };
    match reason {
        Some(reason) => Err(Error::InvalidPath {
            role,
            path: PathBuf::from(path),
            reason,
        }),
        None => Ok(()),
    }
}

/// Splits legacy mount data into options the way the kernel does: at commas that are
/// neither escaped by `\` nor inside double quotes. Escapes are kept.
pub fn split_options(data: &OsStr) -> Vec<OsString> {
    split_raw(data.as_bytes(), b',', true)
        .into_iter()
        .map(OsString::from_vec)
        .collect()
}

/// Splits a `lowerdir` value into its layers and unescapes each, as overlayfs does.
pub fn split_lowerdir(value: &OsStr) -> Vec<PathBuf> {
    split_raw(value.as_bytes(), b':', false)
        .into_iter()
        .map(|raw| PathBuf::from(OsString::from_vec(unescape(&raw))))
        .collect()
}

/// Drops each escaping `\`, keeping the character after it.
pub fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            if let Some(&next) = bytes.next() {
                out.push(next);
            }
        } else {
            out.push(b);
        }
    }
    out
}

fn split_raw(bytes: &[u8], sep: u8, quotes: bool) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' && !in_quotes {
            current.push(b);
            if let Some(&next) = bytes.get(i + 1) {
                current.push(next);
            }
            i += 2;
            continue;
        }
        if quotes && b == b'"' {
            in_quotes = !in_quotes;
        }
        if b == sep && !in_quotes {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(b);
        }
        i += 1;
    }
    parts.push(current);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_separators_and_backslash() {
        assert_eq!(
            escape_path(OsStr::new("/a:b,c\\d")),
            b"/a\\:b\\,c\\\\d".to_vec()
        );
        assert_eq!(escaped_len(OsStr::new("/a:b,c\\d")), 11);
    }

    #[test]
    fn lowerdir_round_trip() {
        let paths = ["/x:y", "/p,q", "/back\\slash", "/plain"];
        let value: Vec<u8> = paths
            .iter()
            .map(|p| escape_path(OsStr::new(p)))
            .collect::<Vec<_>>()
            .join(&b':');
        let back = split_lowerdir(OsStr::from_bytes(&value));
        assert_eq!(back, paths.iter().map(PathBuf::from).collect::<Vec<_>>());
    }

    #[test]
    fn options_split_respects_quotes_and_escapes() {
        let data = OsStr::new("lowerdir=/a\\,b,upperdir=/u,context=\"s0:c1,c2\"");
        let opts: Vec<_> = split_options(data)
            .into_iter()
            .map(|o| o.into_string().unwrap())
            .collect();
        assert_eq!(
            opts,
            ["lowerdir=/a\\,b", "upperdir=/u", "context=\"s0:c1,c2\""]
        );
    }

    #[test]
    fn refuses_unmountable_paths() {
        for (p, legacy) in [("", false), ("/a\nb", false), ("/a\"b", true)] {
            assert!(matches!(
                check_path("lowerdir", OsStr::new(p), legacy),
                Err(Error::InvalidPath { .. })
            ));
        }
        assert!(check_path("lowerdir", OsStr::new("/a\"b"), false).is_ok());
        assert!(check_path("lowerdir", OsStr::from_bytes(b"/a\0b"), false).is_err());
    }
}
