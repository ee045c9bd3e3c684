//! The overlay2 `lower` file: `l/<linkid>` entries joined by `:`, uppermost first.

use crate::link::{LinkError, LinkId};

/// Why the contents of a `lower` file are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LowerError {
    /// The file is empty (Docker writes no `lower` file for a base layer).
    #[error("empty lower file")]
    Empty,
    /// Two `:` in a row, or one at either end.
    #[error("entry {index} is empty")]
    EmptySegment {
        /// 0-based index of the entry.
        index: usize,
    },
    /// The entry is not `l/<linkid>` (an absolute path, `..`, another directory).
    #[error("entry {index} ({entry:?}) is not of the form l/<linkid>")]
    NotInLinkDir {
        /// 0-based index of the entry.
        index: usize,
        /// The entry (lossy).
        entry: String,
    },
    /// The part after `l/` is not a link id.
    #[error("entry {index} has a bad link id")]
    BadLinkId {
        /// 0-based index of the entry.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: LinkError,
    },
    /// More entries than the store allows.
    #[error("{count} entries, more than the maximum of {max}")]
    TooMany {
        /// Entries found (counting stops soon after the maximum).
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// The same link appears twice: the chain loops.
    #[error("link {link} appears twice (entries {first} and {second})")]
    Repeated {
        /// The repeated link id.
        link: String,
        /// First index.
        first: usize,
        /// Second index.
        second: usize,
    },
}

/// Parses a `lower` file, refusing more than `max` entries.
///
/// ```
/// use plies_layerstore::parse_lower;
/// let lowers = parse_lower(b"l/BQYWYRYSEVCHHB74JJ3ZYGMUDL:l/77FT77EAJ2HCEEG5K6LS5HCDKW", 128).unwrap();
/// assert_eq!(lowers[1].as_str(), "77FT77EAJ2HCEEG5K6LS5HCDKW");
/// assert!(parse_lower(b"l/../../etc", 128).is_err());
/// ```
pub fn parse_lower(bytes: &[u8], max: usize) -> Result<Vec<LinkId>, LowerError> {
    if bytes.is_empty() {
        return Err(LowerError::Empty);
    }
    let mut out: Vec<LinkId> = Vec::with_capacity(bytes.len() / 29 + 1);
    // Where each link was seen, for the loop check in one pass (not quadratic).
    let mut seen: std::collections::HashMap<LinkId, usize> = std::collections::HashMap::new();
    for (index, entry) in bytes.split(|&b| b == b':').enumerate() {
        if index >= max {
            return Err(LowerError::TooMany {
                count: bytes.split(|&b| b == b':').count(),
                max,
            });
        }
        if entry.is_empty() {
            return Err(LowerError::EmptySegment { index });
        }
        let id = entry
            .strip_prefix(b"l/")
            .ok_or_else(|| LowerError::NotInLinkDir {
                index,
                entry: String::from_utf8_lossy(entry).into_owned(),
            })?;
        let link = LinkId::parse(id).map_err(|source| LowerError::BadLinkId { index, source })?;
        if let Some(&first) = seen.get(&link) {
            return Err(LowerError::Repeated {
                link: link.as_str().to_owned(),
                first,
                second: index,
            });
        }
        seen.insert(link.clone(), index);
        out.push(link);
    }
    Ok(out)
}

/// Formats lower entries as Docker writes them: `l/A:l/B`, no newline.
pub fn format_lower(links: &[LinkId]) -> String {
    links
        .iter()
        .map(LinkId::lower_entry)
        .collect::<Vec<_>>()
        .join(":")
}
