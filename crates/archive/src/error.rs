//! The errors of this crate.

use std::io;
use std::path::PathBuf;

/// What went wrong while applying or exporting a layer tar.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The layer root could not be opened.
    #[error("cannot open layer root {path}")]
    Root {
        /// The root directory given.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The archive itself is malformed (checksum, truncated header, oversized
    /// metadata) or could not be read.
    #[error("bad tar archive at byte {position}{}", after.as_ref().map(|p| format!(" (after entry {})", p.display())).unwrap_or_default())]
    Tar {
        /// Bytes of the archive read when the error was found.
        position: u64,
        /// The last entry read successfully, if any.
        after: Option<PathBuf>,
        /// What the parser said.
        #[source]
        source: io::Error,
    },
    /// One entry could not be applied; nothing outside the root was touched.
    #[error("tar entry {}", entry.display())]
    Entry {
        /// The entry's name as written in the archive.
        entry: PathBuf,
        /// Why the entry was refused or failed.
        #[source]
        reason: EntryError,
    },
    /// Exporting a layer directory failed on `path` (relative to the root).
    #[error("exporting {}: {op}", path.display())]
    Export {
        /// The path below the root.
        path: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The layer holds something a layer tar cannot express (an overlay
    /// `redirect` or `metacopy` xattr); such layers need a naive diff.
    #[error("exporting {}: {reason}", path.display())]
    Inexpressible {
        /// The path below the root.
        path: PathBuf,
        /// What cannot be expressed.
        reason: &'static str,
    },
    /// A uid or gid has no mapping in the given id map.
    #[error("{kind} {id} has no mapping in the id map")]
    Unmapped {
        /// `"uid"` or `"gid"`.
        kind: &'static str,
        /// The id that could not be mapped.
        id: u64,
    },
}

/// Why one tar entry was refused or failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The name is empty after normalisation, or holds a NUL byte.
    #[error("invalid name: {0}")]
    InvalidName(&'static str),
    /// The name (or a hard link target) climbs above the layer root with `..`.
    #[error("name climbs above the layer root with `..`")]
    DotDot,
    /// A non-directory entry names the layer root itself.
    #[error("entry would replace the layer root")]
    ReplacesRoot,
    /// A `.wh.` name that is not allowed in a layer tar (aufs private
    /// metadata, a `.wh.` directory component, a malformed whiteout).
    #[error("whiteout name not allowed in a layer tar: {0}")]
    WhiteoutName(String),
    /// The entry type is not one a layer may hold.
    #[error("unsupported entry type {0:?}")]
    UnsupportedType(char),
    /// A header field could not be parsed.
    #[error("bad header field {field}")]
    Header {
        /// The field name.
        field: &'static str,
        /// The parser's complaint.
        #[source]
        source: io::Error,
    },
    /// A PAX record could not be parsed.
    #[error("bad PAX record {0}")]
    Pax(String),
    /// An xattr in the overlay namespaces, which would forge overlay metadata.
    #[error("overlay xattr {0} refused")]
    OverlayXattr(String),
    /// The entry's data ended before its declared size.
    #[error("truncated: {got} of {expected} data bytes")]
    Truncated {
        /// Declared size.
        expected: u64,
        /// Bytes actually present.
        got: u64,
    },
    /// A sparse file larger than this crate accepts.
    #[error("sparse file of {0} bytes is larger than allowed")]
    TooLarge(u64),
    /// A hard link entry without a target, or with an invalid target.
    #[error("hard link target")]
    LinkTarget(#[source] Box<EntryError>),
    /// A symlink or hard link entry without a link name.
    #[error("link entry without a target")]
    MissingLinkTarget,
    /// The uid or gid has no mapping.
    #[error("{kind} {id} has no mapping in the id map")]
    Unmapped {
        /// `"uid"` or `"gid"`.
        kind: &'static str,
        /// The unmapped id.
        id: u64,
    },
    /// A system call failed.
    #[error("{op}")]
    Io {
        /// The operation.
        op: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A whiteout or opaque marker could not be created or read on disk.
    #[error(transparent)]
    Whiteout(#[from] plies_whiteout::Error),
}
