//! Reading tar header blocks and PAX records as Go's `archive/tar` (tar-split's
//! fork of it) reads them, for what decides the entries: the name, the size,
//! the type and whether data follows.

/// A tar block.
pub(super) const BLOCK: usize = 512;

/// The largest PAX or GNU long-name data accepted (Go's limit for special files).
pub(super) const MAX_SPECIAL: u64 = 1 << 20;

/// Which layout a header block has, from its magic (after its checksum checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    V7,
    /// POSIX ustar, PAX included: `ustar\0` `00`.
    Ustar,
    /// Schily's star: ustar magic and a `tar\0` trailer.
    Star,
    /// Old GNU: `ustar ` ` \0`.
    Gnu,
}

/// Checks the header checksum (Go accepts the unsigned and the signed sum) and
/// tells the format, or why the block is no header.
pub(super) fn format(block: &[u8; BLOCK]) -> Result<Format, &'static str> {
    let recorded = parse_octal(&block[148..156]).ok_or("invalid checksum field")?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if recorded != unsigned && recorded != signed {
        return Err("header checksum mismatch");
    }
    let magic = &block[257..263];
    let version = &block[263..265];
    Ok(match magic {
        b"ustar\0" if &block[508..512] == b"tar\0" => Format::Star,
        b"ustar\0" => Format::Ustar,
        b"ustar " if version == b" \0" => Format::Gnu,
        _ => Format::V7,
    })
}

/// The bytes before the first NUL.
pub(super) fn c_string(field: &[u8]) -> &[u8] {
    field.split(|&b| b == 0).next().unwrap_or_default()
}

/// An octal field: leading and trailing spaces and NULs ignored, empty is 0.
fn parse_octal(field: &[u8]) -> Option<i64> {
    let start = field.iter().position(|&b| b != b' ' && b != 0);
    let Some(start) = start else { return Some(0) };
    let end = field.iter().rposition(|&b| b != b' ' && b != 0)? + 1;
    let digits = c_string(&field[start..end]);
    let value = u64::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok()?;
    // A leading sign is no octal digit, though Rust's parser would take `+`.
    (digits.first() != Some(&b'+')).then_some(value as i64)
}

/// A numeric field: base-256 (two's complement, big-endian) when its first bit
/// is set, octal otherwise; `None` where Go's parser fails.
pub(super) fn parse_numeric(field: &[u8]) -> Option<i64> {
    let first = *field.first()?;
    if first & 0x80 == 0 {
        return parse_octal(field);
    }
    let invert = if first & 0x40 != 0 { 0xff } else { 0 };
    let mut x: u64 = 0;
    for (i, &c) in field.iter().enumerate() {
        let mut c = c ^ invert;
        if i == 0 {
            c &= 0x7f;
        }
        if x >> 56 != 0 {
            return None;
        }
        x = (x << 8) | u64::from(c);
    }
    if x >> 63 != 0 {
        return None;
    }
    Some(if invert == 0xff {
        !(x as i64)
    } else {
        x as i64
    })
}

/// The name a header gives, before any extended header: `prefix/name` where
/// the format has a prefix field.
pub(super) fn name(block: &[u8; BLOCK], format: Format) -> Vec<u8> {
    let name = c_string(&block[0..100]);
    let prefix = match format {
        Format::Ustar => c_string(&block[345..500]),
        Format::Star => c_string(&block[345..476]),
        Format::Gnu => {
            // Go before 1.8 wrote a ustar prefix into GNU headers; where the
            // atime/ctime fields do not parse, Go reads them as that prefix.
            let bad = |field: &[u8]| field[0] != 0 && parse_numeric(field).is_none();
            let prefix = c_string(&block[345..500]);
            if (bad(&block[345..357]) || bad(&block[357..369])) && prefix.is_ascii() {
                prefix
            } else {
                &[]
            }
        }
        Format::V7 => &[],
    };
    if prefix.is_empty() {
        name.to_vec()
    } else {
        [prefix, b"/", name].concat()
    }
}

/// What a PAX extended header says that matters here.
#[derive(Debug, Default)]
pub(super) struct Pax {
    /// `path`, where not empty.
    pub(super) path: Option<Vec<u8>>,
    /// `size`, where not empty.
    pub(super) size: Option<i64>,
    /// Whether GNU sparse records make the entry a sparse file.
    pub(super) sparse: bool,
    /// `GNU.sparse.name`, where not empty.
    pub(super) sparse_name: Option<Vec<u8>>,
}

/// Parses PAX records (`"<len> <key>=<value>\n"`), as strictly as Go does.
pub(super) fn parse_pax(mut data: &[u8]) -> Result<Pax, &'static str> {
    const BAD: &str = "malformed PAX record";
    let mut pax = Pax::default();
    let (mut major, mut minor) = (Vec::new(), Vec::new());
    let mut map = false;
    // Go joins format 0.0's offset/numbytes values with commas into the map,
    // which is empty only for a single empty value.
    let (mut offsets, mut offsets_empty) = (0usize, true);
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ').ok_or(BAD)?;
        let len: i64 = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(BAD)?;
        let len = usize::try_from(len).map_err(|_| BAD)?;
        if len < 5 || len > data.len() || len <= space + 1 {
            return Err(BAD);
        }
        let (record, rest) = data.split_at(len);
        data = rest;
        let record = record[space + 1..].strip_suffix(b"\n").ok_or(BAD)?;
        let eq = record.iter().position(|&b| b == b'=').ok_or(BAD)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let nul_in = if matches!(key, b"path" | b"linkpath" | b"uname" | b"gname") {
            value
        } else {
            key
        };
        if key.is_empty() || nul_in.contains(&0) {
            return Err(BAD);
        }
        match key {
            b"path" if !value.is_empty() => pax.path = Some(value.to_vec()),
            b"size" if !value.is_empty() => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or("invalid PAX size")?;
                pax.size = Some(size);
            }
            b"GNU.sparse.major" => major = value.to_vec(),
            b"GNU.sparse.minor" => minor = value.to_vec(),
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                offsets += 1;
                offsets_empty &= value.is_empty();
            }
            b"GNU.sparse.map" => map = !value.is_empty(),
            b"GNU.sparse.name" if !value.is_empty() => pax.sparse_name = Some(value.to_vec()),
            _ => {}
        }
    }
    pax.sparse = match (&major[..], &minor[..]) {
        (b"0", b"0" | b"1") | (b"1", b"0") => true,
        // An unknown sparse version: Go reads the entry as a regular file.
        (a, b) if !a.is_empty() || !b.is_empty() => false,
        _ if offsets > 0 => offsets > 1 || !offsets_empty,
        _ => map,
    };
    Ok(pax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields_parse_as_go_parses_them() {
        assert_eq!(parse_numeric(b"00000000012\0"), Some(10));
        assert_eq!(parse_numeric(b"  12 \0\0\0\0\0\0\0"), Some(10));
        assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(parse_numeric(b"0000000009\0\0"), None);
        assert_eq!(parse_numeric(b"+000000001\0\0"), None);
        assert_eq!(
            parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert_eq!(parse_numeric(&[0xff; 12]), Some(-1));
        assert_eq!(
            parse_numeric(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
    }

    #[test]
    fn pax_records() {
        let pax = parse_pax(b"30 mtime=1432668921.098285006\n11 path=ab\n9 size=7\n").unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"ab"[..]));
        assert_eq!(pax.size, Some(7));
        assert!(!pax.sparse);
        // Records are counted, not split at newlines: a value may hold one.
        let pax = parse_pax(b"11 mtime=\n\n11 path=ab\n").unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"ab"[..]));
        assert!(parse_pax(b"10 path=ab\n").is_err());
        assert!(parse_pax(b"9 path=a\0\n").is_err());
        assert!(parse_pax(b"8 size=x\n").is_err());
        assert!(parse_pax(b"4 a=\n").is_err());
        let sparse = parse_pax(b"22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n").unwrap();
        assert!(sparse.sparse);
        let unknown = parse_pax(b"22 GNU.sparse.major=2\n22 GNU.sparse.map=0,1\n").unwrap();
        assert!(!unknown.sparse);
    }
}
