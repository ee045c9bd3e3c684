//! Layer compression, told from the first bytes of the stream.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "plain",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const BZIP2: &[u8] = b"BZh";
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// Tells the compression from the stream's first bytes (at most 6).
///
/// # Errors
/// `InvalidData` for bzip2 and xz, which layers may use but plies does not read.
pub fn detect(head: &[u8]) -> io::Result<Compression> {
    if head.starts_with(GZIP) {
        Ok(Compression::Gzip)
    } else if head.starts_with(ZSTD) {
        Ok(Compression::Zstd)
    } else if head.starts_with(BZIP2) || head.starts_with(XZ) {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bzip2 and xz layers are not supported (only plain, gzip and zstd)",
        ))
    } else {
        Ok(Compression::None)
    }
}

/// Wraps `input` in the decoder its first bytes call for.
pub fn decompress<'a>(
    input: impl Read + Send + 'a,
) -> io::Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    // The first read of a file or a tar entry holds far more than the 6 bytes needed.
    let kind = detect(input.fill_buf()?)?;
    let reader: Box<dyn Read + Send + 'a> = match kind {
        Compression::None => Box::new(input),
        // Concatenated gzip members are valid layers (pigz writes them).
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
    };
    Ok((kind, reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(kind: Compression, data: &[u8]) -> Vec<u8> {
        let bytes = match kind {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
        };
        let (found, mut r) = decompress(&bytes[..]).unwrap();
        assert_eq!(found, kind);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn each_kind_is_detected_and_decoded() {
        let data = b"a tar would be here".repeat(1000);
        for kind in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(roundtrip(kind, &data), data);
        }
        assert_eq!(roundtrip(Compression::None, b""), b"");
    }

    #[test]
    fn xz_and_bzip2_are_refused() {
        assert!(detect(b"BZh91AY").is_err());
        assert!(detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]).is_err());
    }
}
