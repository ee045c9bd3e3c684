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
    // The entries are parsed first and checked for a loop after; an error is
    // still the one a scan from the top meets first (a repeat before a bad entry
    // is the repeat).
    let refuse = |out: &[LinkId], error: LowerError| match first_repeat(out) {
        Some(repeat) => repeat,
        None => error,
    };
    for (index, entry) in bytes.split(|&b| b == b':').enumerate() {
        if index >= max {
            let count = bytes.split(|&b| b == b':').count();
            return Err(refuse(&out, LowerError::TooMany { count, max }));
        }
        if entry.is_empty() {
            return Err(refuse(&out, LowerError::EmptySegment { index }));
        }
        let Some(id) = entry.strip_prefix(b"l/") else {
            let entry = String::from_utf8_lossy(entry).into_owned();
            return Err(refuse(&out, LowerError::NotInLinkDir { index, entry }));
        };
        match LinkId::parse(id) {
            Ok(link) => out.push(link),
            Err(source) => return Err(refuse(&out, LowerError::BadLinkId { index, source })),
        }
    }
    match first_repeat(&out) {
        Some(repeat) => Err(repeat),
        None => Ok(out),
    }
}

/// The repeat a scan from the top meets first: the smallest second index of a
/// link seen before, with that link's first index. Sorting the indices by link
/// finds it without hashing or copying a link (this runs on every mount).
fn first_repeat(links: &[LinkId]) -> Option<LowerError> {
    let mut order: Vec<usize> = (0..links.len()).collect();
    order.sort_unstable_by(|&a, &b| links[a].cmp(&links[b]).then(a.cmp(&b)));
    let mut best: Option<(usize, usize)> = None;
    // Where the run of equal links that `order[pos]` belongs to starts.
    let mut run = 0;
    for pos in 1..order.len() {
        if links[order[pos]] != links[order[run]] {
            run = pos;
        } else if pos == run + 1 {
            // The link's second appearance; its run starts at its first.
            let (first, second) = (order[run], order[pos]);
            match best {
                Some((_, earliest)) if earliest < second => {}
                _ => best = Some((first, second)),
            }
        }
    }
    best.map(|(first, second)| LowerError::Repeated {
        link: links[first].as_str().to_owned(),
        first,
        second,
    })
}

/// Formats lower entries as Docker writes them: `l/A:l/B`, no newline.
pub fn format_lower(links: &[LinkId]) -> String {
    links
        .iter()
        .map(LinkId::lower_entry)
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain reading of the format: entries from the top, the first fault
    /// met wins. `parse_lower` must agree with it on every input.
    fn model(bytes: &[u8], max: usize) -> Result<Vec<LinkId>, LowerError> {
        if bytes.is_empty() {
            return Err(LowerError::Empty);
        }
        let mut out: Vec<LinkId> = Vec::new();
        for (index, entry) in bytes.split(|&b| b == b':').enumerate() {
            if index >= max {
                let count = bytes.split(|&b| b == b':').count();
                return Err(LowerError::TooMany { count, max });
            }
            if entry.is_empty() {
                return Err(LowerError::EmptySegment { index });
            }
            let Some(id) = entry.strip_prefix(b"l/") else {
                let entry = String::from_utf8_lossy(entry).into_owned();
                return Err(LowerError::NotInLinkDir { index, entry });
            };
            let link =
                LinkId::parse(id).map_err(|source| LowerError::BadLinkId { index, source })?;
            if let Some(first) = out.iter().position(|l| *l == link) {
                return Err(LowerError::Repeated {
                    link: link.as_str().to_owned(),
                    first,
                    second: index,
                });
            }
            out.push(link);
        }
        Ok(out)
    }

    const A: &str = "l/AAAAAAAAAAAAAAAAAAAAAAAAAA";
    const B: &str = "l/BBBBBBBBBBBBBBBBBBBBBBBBBB";
    const C: &str = "l/CCCCCCCCCCCCCCCCCCCCCCCCCC";

    fn repeated(entries: &[&str]) -> (String, usize, usize) {
        match parse_lower(entries.join(":").as_bytes(), 128) {
            Err(LowerError::Repeated {
                link,
                first,
                second,
            }) => (link, first, second),
            other => panic!("{entries:?}: {other:?}"),
        }
    }

    #[test]
    fn the_first_repeat_from_the_top_is_reported() {
        let a = A[2..].to_owned();
        let b = B[2..].to_owned();
        assert_eq!(repeated(&[A, B, A, B]), (a.clone(), 0, 2));
        assert_eq!(repeated(&[A, B, B, A]), (b.clone(), 1, 2));
        assert_eq!(repeated(&[C, A, B, A, A]), (a.clone(), 1, 3));
        // A repeat above a bad entry is the repeat; a bad entry above it is the entry.
        assert_eq!(repeated(&[A, A, "l/bad"]), (a, 0, 1));
        assert!(matches!(
            parse_lower(format!("{A}:etc:{A}").as_bytes(), 128),
            Err(LowerError::NotInLinkDir { index: 1, .. })
        ));
        assert!(matches!(
            parse_lower(format!("{B}:{B}:{A}:{C}").as_bytes(), 3),
            Err(LowerError::Repeated {
                first: 0,
                second: 1,
                ..
            })
        ));
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_plain_reading(
            picks in proptest::collection::vec(0usize..6, 0..12),
            max in 1usize..10,
        ) {
            let entries = ["", A, B, C, "l/x", "etc"];
            let text = picks.iter().map(|&i| entries[i]).collect::<Vec<_>>().join(":");
            proptest::prop_assert_eq!(
                parse_lower(text.as_bytes(), max),
                model(text.as_bytes(), max)
            );
        }
    }
}
