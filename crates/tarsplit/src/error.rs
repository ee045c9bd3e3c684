//! The crate's error type.

use std::io;

/// What went wrong, and where: the tar-split entry's position, the tar's byte
/// offset or the file's name.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the tar-split stream failed (an I/O error, or a corrupt or
    /// truncated gzip stream).
    #[error("reading tar-split entry {position}")]
    Read {
        /// The position of the entry being read.
        position: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// A line of the tar-split stream is longer than the unpacker allows.
    #[error("tar-split entry {position}: line longer than {limit} bytes")]
    LineTooLong {
        /// The position of the entry.
        position: u64,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The stream ends inside an entry: its last line has no newline and is not
    /// a complete entry.
    #[error("tar-split entry {position}: the stream ends inside it")]
    TruncatedEntry {
        /// The position of the entry.
        position: u64,
    },
    /// A line is not a JSON object of the tar-split entry format.
    #[error("tar-split entry {position}: not a tar-split entry")]
    Json {
        /// The position of the entry.
        position: u64,
        /// The JSON parser's error.
        source: serde_json::Error,
    },
    /// A base64 field does not decode.
    #[error("tar-split entry {position}: field `{field}` is not valid base64")]
    Base64 {
        /// The position of the entry.
        position: u64,
        /// The field: `payload` or `name_raw`.
        field: &'static str,
        /// The decoder's error.
        source: base64::DecodeError,
    },
    /// An entry's `type` is neither 1 (file) nor 2 (segment).
    #[error("tar-split entry {position}: unknown type {kind}")]
    UnknownType {
        /// The position of the entry.
        position: u64,
        /// The type found.
        kind: i64,
    },
    /// An entry's `position` is not its index in the stream.
    #[error("tar-split entry {expected}: position field says {found}")]
    PositionMismatch {
        /// The entry's index in the stream.
        expected: u64,
        /// The `position` field.
        found: i64,
    },
    /// A payload is larger than the unpacker allows.
    #[error("tar-split entry {position}: payload of {len} bytes, more than the limit of {limit}")]
    PayloadTooLarge {
        /// The position of the entry.
        position: u64,
        /// The payload's decoded length (at least).
        len: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// An entry is well-formed JSON but breaks the format.
    #[error("tar-split entry {position}: {reason}")]
    InvalidEntry {
        /// The position of the entry.
        position: u64,
        /// What is wrong, such as `negative size`.
        reason: &'static str,
    },
    /// Writing an entry failed.
    #[error("writing tar-split entry {position}")]
    Write {
        /// The position of the entry.
        position: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// A file name comes twice: tar-split readers (Docker's included) refuse a
    /// stream with duplicate paths, so the packer refuses to write one.
    #[error("tar-split entry {position}: file {} comes twice", .name.escape_ascii())]
    DuplicateName {
        /// The position the entry would have had.
        position: u64,
        /// The name, as the tar has it.
        name: Vec<u8>,
    },
    /// Reading the tar being disassembled failed.
    #[error("reading the tar at byte {offset}")]
    ReadTar {
        /// How many bytes of the tar had been read.
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// The tar being disassembled is malformed.
    #[error("tar header at byte {offset}: {reason}")]
    InvalidTar {
        /// The byte offset of the header (or of the extended header data).
        offset: u64,
        /// What is wrong, such as `header checksum mismatch`.
        reason: &'static str,
    },
    /// The tar being disassembled ends in the middle of a header or of data.
    #[error("the tar ends at byte {offset}, inside {inside}")]
    TruncatedTar {
        /// The tar's length.
        offset: u64,
        /// What was being read, such as `a header` or `file data`.
        inside: &'static str,
    },
    /// The file source could not open a file the tar-split names.
    #[error("opening file {} (tar-split entry {position})", .name.escape_ascii())]
    OpenFile {
        /// The file's name in the tar.
        name: Vec<u8>,
        /// The position of its entry.
        position: u64,
        /// The file source's error.
        source: io::Error,
    },
    /// Reading a file's contents failed.
    #[error("reading file {} (tar-split entry {position})", .name.escape_ascii())]
    ReadFile {
        /// The file's name in the tar.
        name: Vec<u8>,
        /// The position of its entry.
        position: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// A file is shorter than the tar-split records.
    #[error(
        "file {} (tar-split entry {position}) has {found} bytes, the tar-split records {expected}",
        .name.escape_ascii()
    )]
    FileTooShort {
        /// The file's name in the tar.
        name: Vec<u8>,
        /// The position of its entry.
        position: u64,
        /// The size the tar-split records.
        expected: u64,
        /// The bytes the file had.
        found: u64,
    },
    /// A file is longer than the tar-split records.
    #[error(
        "file {} (tar-split entry {position}) has more than the {expected} bytes the tar-split records",
        .name.escape_ascii()
    )]
    FileTooLong {
        /// The file's name in the tar.
        name: Vec<u8>,
        /// The position of its entry.
        position: u64,
        /// The size the tar-split records.
        expected: u64,
    },
    /// A file's contents do not have the CRC-64 the tar-split records.
    #[error("file {} (tar-split entry {position}): CRC-64 differs from the tar-split's", .name.escape_ascii())]
    ChecksumMismatch {
        /// The file's name in the tar.
        name: Vec<u8>,
        /// The position of its entry.
        position: u64,
    },
    /// Writing the assembled tar failed.
    #[error("writing the tar at byte {offset}")]
    WriteTar {
        /// How many bytes had been written.
        offset: u64,
        /// The underlying error.
        source: io::Error,
    },
}
