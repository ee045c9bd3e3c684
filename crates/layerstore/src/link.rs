//! overlay2 link ids (`<home>/<id>/link`) and the `l/<linkid>` symlinks.

use std::fmt;

use plies_mountopts::LINK_ID_LEN;
use rand::RngExt;

use crate::id::validate_id;

/// The base32 alphabet link ids are drawn from.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A layer's short link id: [`LINK_ID_LEN`] characters of `A-Z2-7`.
///
/// Mount data names lower layers as `l/<linkid>` to stay within a page. The id
/// is kept inline, not on the heap: every mount parses one per lower layer.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId([u8; LINK_ID_LEN]);

/// Why the contents of a `link` file (or a lower entry) are not a link id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Nothing there.
    #[error("empty link id")]
    Empty,
    /// Not [`LINK_ID_LEN`] bytes long.
    #[error("link id is {len} bytes, not {LINK_ID_LEN}")]
    WrongLength {
        /// The length found.
        len: usize,
    },
    /// A byte outside the base32 alphabet (a `/`, a newline, `.`…).
    #[error("byte {byte:#04x} at offset {offset} is not in the base32 alphabet")]
    BadByte {
        /// Its offset.
        offset: usize,
        /// The byte.
        byte: u8,
    },
}

impl LinkId {
    /// Parses the exact bytes of a `link` file: no newline, no padding.
    pub fn parse(bytes: &[u8]) -> Result<Self, LinkError> {
        if bytes.is_empty() {
            return Err(LinkError::Empty);
        }
        // The base32 alphabet: A-Z and 2-7.
        if let Some(offset) = bytes
            .iter()
            .position(|b| !matches!(b, b'A'..=b'Z' | b'2'..=b'7'))
        {
            return Err(LinkError::BadByte {
                offset,
                byte: bytes[offset],
            });
        }
        if bytes.len() != LINK_ID_LEN {
            return Err(LinkError::WrongLength { len: bytes.len() });
        }
        let mut id = [0; LINK_ID_LEN];
        id.copy_from_slice(bytes);
        Ok(Self(id))
    }

    /// Draws a fresh random link id.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut id = [0; LINK_ID_LEN];
        for b in &mut id {
            *b = ALPHABET[rng.random_range(0..ALPHABET.len())];
        }
        Self(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only `parse` and `generate` make one, both of base32 ASCII bytes, so
        // the bytes are always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The entry naming this link in a `lower` file: `l/<linkid>`.
    pub fn lower_entry(&self) -> String {
        let mut entry = String::with_capacity(2 + LINK_ID_LEN);
        entry.push_str("l/");
        entry.push_str(self.as_str());
        entry
    }

    /// The symlink target of `l/<linkid>` for layer `id`: `../<id>/diff`.
    pub fn target_for(id: &str) -> String {
        format!("../{id}/diff")
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LinkId").field(&self.as_str()).finish()
    }
}

/// Why a `l/<linkid>` symlink's target is not `../<id>/diff`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkTargetError {
    /// Not of the form `../<id>/diff` (absolute, deeper, elsewhere).
    #[error("target is not of the form ../<id>/diff")]
    NotLayerDiff,
    /// The `<id>` part is not a valid layer id.
    #[error("target names an invalid layer id")]
    BadId(#[source] crate::IdError),
}

/// Parses the target of a `l/<linkid>` symlink, which must be exactly
/// `../<id>/diff` with a valid `<id>`, and returns the layer id.
///
/// Anything else (an absolute path, `..` escapes, another directory) is refused,
/// so resolving a link never leaves the store.
pub fn parse_link_target(target: &[u8]) -> Result<String, LinkTargetError> {
    let inner = target
        .strip_prefix(b"../")
        .and_then(|t| t.strip_suffix(b"/diff"))
        .ok_or(LinkTargetError::NotLayerDiff)?;
    let id = std::str::from_utf8(inner).map_err(|_| LinkTargetError::NotLayerDiff)?;
    validate_id(id).map_err(LinkTargetError::BadId)?;
    Ok(id.to_owned())
}
