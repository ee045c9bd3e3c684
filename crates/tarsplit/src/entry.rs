//! The entries of a tar-split stream.

/// One entry of a tar-split stream: its place in the stream and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The entry's index in the stream, from 0 (the format's `position`).
    pub position: u64,
    /// What the entry holds.
    pub kind: EntryKind,
}

/// What an entry holds: raw tar bytes, or a reference to a file's contents.
///
/// A tar is the concatenation, in order, of every segment's bytes and every
/// file's contents (for files with a non-zero size).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Raw bytes of the tar (format type 2): headers, extended headers, padding,
    /// the end-of-archive blocks and anything after them.
    Segment(Vec<u8>),
    /// A tar member (format type 1); its contents, if `size` is not 0, come from
    /// the file of that name when the tar is assembled.
    File {
        /// The member's name, as the tar has it (after extended headers): bytes,
        /// as tar names need not be UTF-8.
        name: Vec<u8>,
        /// The length of the contents that follow the header in the tar.
        size: u64,
        /// The CRC-64 (ISO polynomial, big-endian) of the contents; `None`
        /// where `size` is 0.
        crc64: Option<[u8; 8]>,
    },
}

impl EntryKind {
    /// A file entry for contents `data`, with its size and CRC-64 (none when
    /// `data` is empty, as tar-split writes it).
    pub fn file(name: impl Into<Vec<u8>>, data: &[u8]) -> EntryKind {
        let crc64 = (!data.is_empty()).then(|| crate::crc64::checksum(data));
        EntryKind::File {
            name: name.into(),
            size: data.len() as u64,
            crc64,
        }
    }
}

impl std::fmt::Debug for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryKind::Segment(bytes) => {
                // The start is enough to tell segments apart; a whole one is kilobytes.
                let shown = &bytes[..bytes.len().min(48)];
                let more = if shown.len() < bytes.len() { "…" } else { "" };
                write!(
                    f,
                    "Segment({} bytes: \"{}\"{more})",
                    bytes.len(),
                    shown.escape_ascii()
                )
            }
            EntryKind::File { name, size, crc64 } => f
                .debug_struct("File")
                .field("name", &format_args!("\"{}\"", name.escape_ascii()))
                .field("size", size)
                .field("crc64", &crc64.map(u64::from_be_bytes))
                .finish(),
        }
    }
}
