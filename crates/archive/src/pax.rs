//! PAX extended headers (POSIX.1-2001 `x` entries): the records export
//! writes and apply reads, each writer beside its parser.
//!
//! A record is `"<len> <key>=<value>\n"`, where `len` counts the whole
//! record, itself included. Records are split by that length, so a value may
//! hold any byte, a newline included.

use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::Timespec;

use crate::error::EntryError;
use crate::stream::MAX_SPARSE_SIZE;

/// Appends one PAX record `"<len> <key>=<value>\n"` to `out`, `len` counting
/// the whole record, its own digits included.
///
/// The bytes of a PAX extended header are such records one after the other.
/// `key` should not hold `=` (a reader splits the record at the first one);
/// `value` may hold any byte.
///
/// ```
/// let mut header = Vec::new();
/// plies_archive::pax::record(&mut header, b"path", b"abc");
/// plies_archive::pax::record(&mut header, b"SCHILY.xattr.user.note", b"a\nb");
/// assert_eq!(header, b"12 path=abc\n30 SCHILY.xattr.user.note=a\nb\n");
/// ```
pub fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The records of a PAX extended header.
#[derive(Default)]
pub(crate) struct Records {
    data: Vec<u8>,
    records: Vec<(Range<usize>, Range<usize>)>,
}

impl Records {
    /// Splits `data` into the records [`record`] writes.
    pub(crate) fn parse(data: Vec<u8>) -> Result<Records, EntryError> {
        let mut records = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let rest = &data[at..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 || digits > 19 || rest.get(digits) != Some(&b' ') || rest[0] == b'0' {
                return Err(EntryError::Pax(format!("record length at byte {at}")));
            }
            let len: usize = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|len| *len > digits + 1 && *len <= rest.len())
                .ok_or_else(|| EntryError::Pax(format!("record length at byte {at}")))?;
            let record = &rest[digits + 1..len];
            if record.last() != Some(&b'\n') {
                return Err(EntryError::Pax(format!(
                    "record at byte {at} does not end with a newline"
                )));
            }
            let eq = record
                .iter()
                .position(|b| *b == b'=')
                .filter(|eq| *eq > 0)
                .ok_or_else(|| EntryError::Pax(format!("record at byte {at} has no key")))?;
            let key = at + digits + 1..at + digits + 1 + eq;
            let value = key.end + 1..at + len - 1;
            records.push((key, value));
            at += len;
        }
        Ok(Records { data, records })
    }

    /// Every record, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.records
            .iter()
            .map(|(k, v)| (&self.data[k.clone()], &self.data[v.clone()]))
    }

    /// The last value given for `key` (a later record of a key wins, as in
    /// Go and GNU tar).
    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .last()
    }
}

/// Parses a PAX decimal number (`size`, `uid`, `gid`, `GNU.sparse.*`),
/// written as `u64::to_string` writes it.
pub(crate) fn number(value: &[u8]) -> Result<u64, EntryError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| EntryError::Pax(format!("number {:?}", String::from_utf8_lossy(value))))
}

/// Writes a PAX time (`mtime`): `[-]seconds[.nanoseconds]`, a negative time
/// counting down from the epoch (secs -2, nsec 750000000 is `-1.25`).
/// `nsec` is below 10⁹.
pub(crate) fn time(secs: i64, nsec: i64) -> String {
    if nsec == 0 {
        secs.to_string()
    } else if secs >= 0 {
        format!("{secs}.{nsec:09}")
    } else {
        let total = -(secs as i128 * 1_000_000_000 + nsec as i128);
        format!("-{}.{:09}", total / 1_000_000_000, total % 1_000_000_000)
    }
}

/// Parses a PAX time: `[-]seconds[.fraction]`, digits past nanoseconds cut.
pub(crate) fn parse_time(value: &[u8]) -> Result<Timespec, EntryError> {
    let bad = || EntryError::Pax(format!("time {:?}", String::from_utf8_lossy(value)));
    let (neg, rest) = match value.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, value),
    };
    let (int, frac) = match rest.iter().position(|b| *b == b'.') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) || !frac.iter().all(u8::is_ascii_digit)
    {
        return Err(bad());
    }
    let secs: i64 = std::str::from_utf8(int)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut nsec: i64 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    Ok(if !neg {
        Timespec {
            tv_sec: secs,
            tv_nsec: nsec as _,
        }
    } else if nsec == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: (1_000_000_000 - nsec) as _,
        }
    })
}

/// Key prefix of an xattr record: `SCHILY.xattr.<name>`, as GNU tar, Go and
/// Docker write it.
const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Appends the record of the xattr `name` (without the `SCHILY.xattr.` prefix).
pub(crate) fn xattr_record(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let mut key = XATTR_PREFIX.to_vec();
    key.extend_from_slice(name);
    record(out, &key, value);
}

/// Appends the records that make an entry a GNU 1.0 sparse file (its data
/// starts with the map of its chunks): its real name and size, in the order
/// GNU tar writes them.
pub(crate) fn sparse_records(out: &mut Vec<u8>, name: &[u8], realsize: u64) {
    record(out, b"GNU.sparse.major", b"1");
    record(out, b"GNU.sparse.minor", b"0");
    record(out, b"GNU.sparse.name", name);
    record(out, b"GNU.sparse.realsize", realsize.to_string().as_bytes());
}

/// A PAX sparse file. In GNU format 1.0 the data starts with the map of its
/// chunks; in 0.1 the map is the record `GNU.sparse.map`, and in 0.0 it is
/// repeated `GNU.sparse.offset` / `GNU.sparse.numbytes` records; in both the
/// data is the chunks alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sparse {
    pub(crate) major: Option<u64>,
    pub(crate) minor: Option<u64>,
    /// The file's real name (the entry's own is a placeholder).
    pub(crate) name: Option<Vec<u8>>,
    /// The file's apparent size.
    pub(crate) realsize: u64,
    /// `GNU.sparse.numblocks`: how many chunks the 0.x map has.
    numblocks: Option<u64>,
    /// The 0.x map, `(offset, length)` pairs in order.
    pub(crate) map: Option<Vec<(u64, u64)>>,
    /// A 0.0 `GNU.sparse.offset` waiting for its `GNU.sparse.numbytes`.
    pending_offset: Option<u64>,
}

impl Sparse {
    /// Takes in one `GNU.sparse.*` record; `false` for any other key.
    fn read(this: &mut Option<Sparse>, key: &[u8], value: &[u8]) -> Result<bool, EntryError> {
        let Some(key) = key.strip_prefix(b"GNU.sparse.") else {
            return Ok(false);
        };
        if !matches!(
            key,
            b"major"
                | b"minor"
                | b"name"
                | b"realsize"
                | b"size"
                | b"numblocks"
                | b"map"
                | b"offset"
                | b"numbytes"
        ) {
            return Ok(false);
        }
        let sp = this.get_or_insert_with(Sparse::default);
        match key {
            b"major" => sp.major = Some(number(value)?),
            b"minor" => sp.minor = Some(number(value)?),
            b"name" => sp.name = Some(value.to_vec()),
            b"realsize" | b"size" => sp.realsize = number(value)?,
            b"numblocks" => sp.numblocks = Some(number(value)?),
            b"map" => {
                let numbers = if value.is_empty() {
                    Vec::new()
                } else {
                    value
                        .split(|b| *b == b',')
                        .map(number)
                        .collect::<Result<Vec<u64>, _>>()?
                };
                if numbers.len() % 2 != 0 {
                    return Err(EntryError::Pax("GNU sparse map: an odd count".into()));
                }
                sp.map = Some(numbers.chunks(2).map(|p| (p[0], p[1])).collect());
            }
            b"offset" => {
                let offset = number(value)?;
                if sp.pending_offset.replace(offset).is_some() {
                    return Err(EntryError::Pax(
                        "GNU sparse map: an offset without its length".into(),
                    ));
                }
            }
            b"numbytes" => {
                let offset = sp.pending_offset.take().ok_or_else(|| {
                    EntryError::Pax("GNU sparse map: a length without its offset".into())
                })?;
                let len = number(value)?;
                sp.map.get_or_insert_with(Vec::new).push((offset, len));
            }
            _ => {}
        }
        Ok(true)
    }

    /// Checks the description once all records are read: format 1.0 or a
    /// 0.x map that fits the file and the stored data (`stored` bytes).
    pub(crate) fn check(&self, stored: u64) -> Result<(), EntryError> {
        if self.realsize > MAX_SPARSE_SIZE {
            return Err(EntryError::TooLarge(self.realsize));
        }
        let bad = |what: &str| Err(EntryError::Pax(format!("GNU sparse map: {what}")));
        let Some(map) = &self.map else {
            if (self.major, self.minor) != (Some(1), Some(0)) {
                return Err(EntryError::Pax(format!(
                    "GNU sparse format {:?}.{:?} without a map",
                    self.major, self.minor
                )));
            }
            return Ok(());
        };
        if !matches!(
            (self.major, self.minor),
            (None | Some(0), None | Some(0 | 1))
        ) {
            return bad("a 0.x map in another format's entry");
        }
        if self.pending_offset.is_some() {
            return bad("an offset without its length");
        }
        if self.numblocks.is_some_and(|n| n != map.len() as u64) {
            return bad("numblocks does not match the map");
        }
        let mut end = 0u64;
        let mut total = 0u64;
        for &(offset, len) in map {
            match offset.checked_add(len) {
                Some(chunk_end) if offset >= end && chunk_end <= self.realsize => end = chunk_end,
                _ => return bad("chunks out of order, overlapping or past the size"),
            }
            total += len;
        }
        if total != stored {
            return bad("chunks do not add up to the stored data");
        }
        Ok(())
    }
}

/// What an entry's PAX records say of the node it makes, beyond what the
/// stream reads itself (name, link target, size) and the owner.
#[derive(Debug, Default)]
pub(crate) struct NodeRecords {
    /// `mtime`.
    pub(crate) mtime: Option<Timespec>,
    /// `atime`.
    pub(crate) atime: Option<Timespec>,
    /// `SCHILY.xattr.*`, in order, a later record of a name replacing an
    /// earlier one.
    pub(crate) xattrs: Vec<(OsString, Vec<u8>)>,
    /// `GNU.sparse.*`, not yet checked against the entry's data.
    pub(crate) sparse: Option<Sparse>,
}

impl NodeRecords {
    /// Reads every record, refusing a malformed value or an xattr in overlay's
    /// namespaces (which would forge overlay metadata) before anything is made.
    pub(crate) fn read(records: &Records) -> Result<NodeRecords, EntryError> {
        let mut out = NodeRecords::default();
        for (key, value) in records.iter() {
            match key {
                b"mtime" => out.mtime = Some(parse_time(value)?),
                b"atime" => out.atime = Some(parse_time(value)?),
                _ if Sparse::read(&mut out.sparse, key, value)? => {}
                _ => {
                    if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
                        out.xattr(name, value)?;
                    }
                }
            }
        }
        Ok(out)
    }

    fn xattr(&mut self, name: &[u8], value: &[u8]) -> Result<(), EntryError> {
        if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
            return Err(EntryError::OverlayXattr(
                String::from_utf8_lossy(name).into_owned(),
            ));
        }
        if name.is_empty() || name.contains(&0) {
            return Err(EntryError::Pax("xattr name".into()));
        }
        // A later record of the same name replaces an earlier one.
        self.xattrs.retain(|(n, _)| n.as_bytes() != name);
        self.xattrs
            .push((OsStr::from_bytes(name).to_os_string(), value.to_vec()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn records(data: &[u8]) -> Result<Pairs, EntryError> {
        Records::parse(data.to_vec())
            .map(|p| p.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect())
    }

    #[test]
    fn record_lengths_count_themselves() {
        let mut out = Vec::new();
        record(&mut out, b"path", b"abc");
        assert_eq!(out, b"12 path=abc\n");
        let mut out = Vec::new();
        record(&mut out, b"k", &[b'v'; 95]);
        assert_eq!(&out[..4], b"102 ");
        assert_eq!(out.len(), 102);
    }

    #[test]
    fn records_split_by_length() {
        assert_eq!(
            records(b"12 path=abc\n16 SCHILY.x=a\nb\n").unwrap(),
            [
                (b"path".to_vec(), b"abc".to_vec()),
                (b"SCHILY.x".to_vec(), b"a\nb".to_vec())
            ]
        );
        // An `=` in the value is part of it; an empty value is allowed.
        assert_eq!(
            records(b"8 k=a=b\n5 k=\n").unwrap(),
            [
                (b"k".to_vec(), b"a=b".to_vec()),
                (b"k".to_vec(), b"".to_vec())
            ]
        );
        assert!(records(b"").unwrap().is_empty());
    }

    #[test]
    fn malformed_records_are_refused() {
        for bad in [
            &b"11 path=abc\n"[..], // length one short: record does not end in '\n'
            b"13 path=abc\n",      // length past the end
            b"12path=abc\n\n",     // no space
            b"x path=abc\n",
            b"0 =\n",
            b"012 path=abc\n",
            b"5 =x\n",  // empty key
            b"6 abc\n", // no '='
            b"2 \n",
            b"99999999999999999999 k=v\n",
            b"12 path=abc\n\0\0\0",
        ] {
            assert!(
                matches!(records(bad), Err(EntryError::Pax(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn times() {
        let t = parse_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (1_700_000_000, 500_000_000));
        let t = parse_time(b"12").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (12, 0));
        let t = parse_time(b"-1.25").unwrap();
        assert_eq!((t.tv_sec, t.tv_nsec), (-2, 750_000_000));
        let t = parse_time(b"1.1234567891").unwrap();
        assert_eq!(t.tv_nsec, 123_456_789);
        for bad in [
            &b""[..],
            b"x",
            b"1.2.3",
            b"-",
            b".5",
            b"99999999999999999999999",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
        assert_eq!(time(-2, 750_000_000), "-1.250000000");
        assert_eq!(time(-2, 0), "-2");
        assert_eq!(time(1, 5), "1.000000005");
    }

    /// A key as a reader can split it off: not empty, no `=`.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>().prop_filter("no =", |b| *b != b'='), 1..24)
    }

    proptest! {
        #[test]
        fn records_round_trip(
            // Values up to past 1000 bytes, so lengths cross 2, 3 and 4 digits.
            pairs in prop::collection::vec(
                (key(), prop::collection::vec(any::<u8>(), 0..1100)),
                0..6,
            )
        ) {
            let mut data = Vec::new();
            for (k, v) in &pairs {
                record(&mut data, k, v);
            }
            prop_assert_eq!(records(&data).unwrap(), pairs);
        }

        #[test]
        fn numbers_round_trip(n in any::<u64>()) {
            prop_assert_eq!(number(n.to_string().as_bytes()).unwrap(), n);
        }

        #[test]
        fn times_round_trip(
            // i64::MIN has no positive counterpart: its digits do not parse as an i64.
            secs in (i64::MIN + 1)..=i64::MAX,
            nsec in prop_oneof![Just(0i64), 0..1_000_000_000i64],
        ) {
            let t = parse_time(time(secs, nsec).as_bytes()).unwrap();
            prop_assert_eq!((t.tv_sec, t.tv_nsec), (secs, nsec));
        }

        #[test]
        fn sparse_records_round_trip(
            name in prop::collection::vec(any::<u8>(), 0..300),
            realsize in 0..=MAX_SPARSE_SIZE,
            stored in any::<u64>(),
        ) {
            let mut data = Vec::new();
            sparse_records(&mut data, &name, realsize);
            let read = NodeRecords::read(&Records::parse(data).unwrap()).unwrap();
            let sparse = read.sparse.unwrap();
            prop_assert_eq!(
                (sparse.major, sparse.minor, sparse.name.as_deref(), sparse.realsize, &sparse.map),
                (Some(1), Some(0), Some(name.as_slice()), realsize, &None)
            );
            // A 1.0 map is in the data: any amount of it passes here.
            prop_assert!(sparse.check(stored).is_ok());
        }

        #[test]
        fn xattr_records_round_trip(
            xattrs in prop::collection::btree_map(
                (prop_oneof![Just("user."), Just("trusted."), Just("security.")], key())
                    .prop_map(|(ns, rest)| [ns.as_bytes(), &rest].concat())
                    .prop_filter("a name", |n| !n.contains(&0) && !n.starts_with(b"trusted.overlay.") && !n.starts_with(b"user.overlay.")),
                prop::collection::vec(any::<u8>(), 0..300),
                0..6,
            )
        ) {
            let mut data = Vec::new();
            for (name, value) in &xattrs {
                xattr_record(&mut data, name, value);
            }
            let read = NodeRecords::read(&Records::parse(data).unwrap()).unwrap();
            let got: Pairs = read.xattrs.into_iter().map(|(n, v)| (n.into_encoded_bytes(), v)).collect();
            prop_assert_eq!(got, xattrs.into_iter().collect::<Pairs>());
        }
    }
}
