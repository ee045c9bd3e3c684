//! One entry as one line of JSON, written byte for byte as Go's `encoding/json`
//! writes tar-split's `storage.Entry`, and read back.
//!
//! Go writes the fields in struct order — `type`, `name`, `name_raw`, `size`,
//! `payload`, `position` — leaving out `name` and `name_raw` when empty and
//! `size` when 0; `payload` is standard padded base64, or `null` for a file
//! without a checksum. Strings escape `<`, `>`, `&`, U+2028 and U+2029 too.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;

use crate::{EntryKind, Error};

/// `type` of a file entry.
const FILE: i64 = 1;
/// `type` of a segment entry.
const SEGMENT: i64 = 2;

/// Go's `base64.StdEncoding`: padded, and (unlike the strict engine) lenient
/// about the unused bits of the last character.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Whether tar-split keeps `name` in the `name` field: when it is UTF-8 without
/// U+FFFD (Go checks for the replacement character, which is also what invalid
/// UTF-8 decodes to). Other names go to `name_raw`.
fn as_text(name: &[u8]) -> Option<&str> {
    std::str::from_utf8(name)
        .ok()
        .filter(|s| !s.contains('\u{FFFD}'))
}

/// Appends `entry` at `position` to `out` as one line, newline included.
pub(crate) fn encode(entry: &EntryKind, position: u64, out: &mut Vec<u8>) {
    match entry {
        EntryKind::Segment(payload) => {
            out.extend_from_slice(b"{\"type\":2,\"payload\":\"");
            encode_base64(payload, out);
            out.push(b'"');
        }
        EntryKind::File { name, size, crc64 } => {
            out.extend_from_slice(b"{\"type\":1");
            if !name.is_empty() {
                match as_text(name) {
                    Some(text) => {
                        out.extend_from_slice(b",\"name\":");
                        encode_string(text, out);
                    }
                    None => {
                        out.extend_from_slice(b",\"name_raw\":\"");
                        encode_base64(name, out);
                        out.push(b'"');
                    }
                }
            }
            if *size != 0 {
                out.extend_from_slice(format!(",\"size\":{size}").as_bytes());
            }
            match crc64 {
                Some(sum) => {
                    out.extend_from_slice(b",\"payload\":\"");
                    encode_base64(sum, out);
                    out.push(b'"');
                }
                None => out.extend_from_slice(b",\"payload\":null"),
            }
        }
    }
    out.extend_from_slice(format!(",\"position\":{position}}}\n").as_bytes());
}

fn encode_base64(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), true).unwrap_or(0),
        0,
    );
    let written = BASE64
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or_default();
    out.truncate(start + written);
}

/// A JSON string as Go's encoder writes it with HTML escaping on (its default).
fn encode_string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            // Go 1.22 and later; older Go wrote \u0008 and \u000c, which read the same.
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\0'..='\u{1f}' | '<' | '>' | '&' => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            _ => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// The fields of one line as they are written; absent and `null` are alike, as
/// for Go, and fields the format does not know are ignored.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", default)]
    kind: Option<i64>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name_raw: Option<Cow<'a, str>>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default, borrow)]
    payload: Option<Cow<'a, str>>,
    #[serde(default)]
    position: Option<i64>,
}

/// Parses the line of the entry at `position` (its index in the stream).
pub(crate) fn decode(line: &[u8], position: u64, max_payload: usize) -> Result<EntryKind, Error> {
    let fields: Line<'_> =
        serde_json::from_slice(line).map_err(|source| Error::Json { position, source })?;
    let found = fields.position.unwrap_or(0);
    if u64::try_from(found).ok() != Some(position) {
        return Err(Error::PositionMismatch {
            expected: position,
            found,
        });
    }
    let base64 = |field: &'static str, text: &str| -> Result<Vec<u8>, Error> {
        // Every 4 characters make at most 3 bytes: refuse before decoding.
        let at_least = (text.len() / 4).saturating_mul(3).saturating_sub(2);
        if at_least > max_payload {
            return Err(Error::PayloadTooLarge {
                position,
                len: at_least,
                limit: max_payload,
            });
        }
        BASE64.decode(text).map_err(|source| Error::Base64 {
            position,
            field,
            source,
        })
    };
    match fields.kind.unwrap_or(0) {
        SEGMENT => {
            let payload = match fields.payload {
                Some(text) => base64("payload", &text)?,
                None => Vec::new(),
            };
            Ok(EntryKind::Segment(payload))
        }
        FILE => {
            let size = fields.size.unwrap_or(0);
            let size = u64::try_from(size).map_err(|_| Error::InvalidEntry {
                position,
                reason: "negative size",
            })?;
            // Go takes `name_raw` where it is not empty, `name` otherwise.
            let raw = match fields.name_raw.as_deref() {
                Some(text) if !text.is_empty() => base64("name_raw", text)?,
                _ => Vec::new(),
            };
            let name = if raw.is_empty() {
                fields
                    .name
                    .map(|n| n.into_owned().into_bytes())
                    .unwrap_or_default()
            } else {
                raw
            };
            // A file without contents has no checksum to check (Go's assembler
            // skips it), so only a sized file needs one.
            let crc64 = match (size, fields.payload) {
                (0, _) => None,
                (_, None) => {
                    return Err(Error::InvalidEntry {
                        position,
                        reason: "file with contents but no checksum",
                    });
                }
                (_, Some(text)) => {
                    let sum: [u8; 8] =
                        base64("payload", &text)?
                            .try_into()
                            .map_err(|_| Error::InvalidEntry {
                                position,
                                reason: "checksum is not 8 bytes",
                            })?;
                    Some(sum)
                }
            };
            Ok(EntryKind::File { name, size, crc64 })
        }
        kind => Err(Error::UnknownType { position, kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(entry: &EntryKind, position: u64) -> String {
        let mut out = Vec::new();
        encode(entry, position, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_go_writes() {
        assert_eq!(
            line(&EntryKind::Segment(b"abc".to_vec()), 0),
            "{\"type\":2,\"payload\":\"YWJj\",\"position\":0}\n"
        );
        assert_eq!(
            line(&EntryKind::Segment(Vec::new()), 22),
            "{\"type\":2,\"payload\":\"\",\"position\":22}\n"
        );
        assert_eq!(
            line(
                &EntryKind::File {
                    name: b"etc/".to_vec(),
                    size: 0,
                    crc64: None
                },
                1
            ),
            "{\"type\":1,\"name\":\"etc/\",\"payload\":null,\"position\":1}\n"
        );
        assert_eq!(
            line(&EntryKind::file("usr/share/zone/c", b"C"), 15),
            "{\"type\":1,\"name\":\"usr/share/zone/c\",\"size\":1,\"payload\":\"AUAAAAAAAAA=\",\"position\":15}\n"
        );
        assert_eq!(
            line(
                &EntryKind::File {
                    name: b"a\xffb".to_vec(),
                    size: 0,
                    crc64: None
                },
                3
            ),
            "{\"type\":1,\"name_raw\":\"Yf9i\",\"payload\":null,\"position\":3}\n"
        );
        assert_eq!(
            line(
                &EntryKind::File {
                    name: "<a&b>\"\\\n\u{1}\u{8}\u{7f}é\u{2028}".into(),
                    size: 0,
                    crc64: None
                },
                4
            ),
            "{\"type\":1,\"name\":\"\\u003ca\\u0026b\\u003e\\\"\\\\\\n\\u0001\\b\u{7f}é\\u2028\",\"payload\":null,\"position\":4}\n"
        );
        // U+FFFD itself is kept raw, as Go does.
        assert!(line(&EntryKind::file("\u{FFFD}", b""), 0).contains("name_raw"));
    }

    #[test]
    fn reads_back_what_it_writes() {
        for entry in [
            EntryKind::Segment(vec![0; 1000]),
            EntryKind::Segment(Vec::new()),
            EntryKind::file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            EntryKind::file(b"\xff\xfe".to_vec(), b"x"),
            EntryKind::file("<&>\u{2029}\t", b""),
        ] {
            let text = line(&entry, 7);
            assert_eq!(
                decode(text.as_bytes(), 7, 1 << 20).unwrap(),
                entry,
                "{text}"
            );
        }
    }
}
