//! containerd's filter syntax, as far as snapshot listings use it.
//!
//! A filter is clauses joined by `,`, all of which must hold; a listing given
//! several filters shows what any one matches. A clause is a field path
//! (`name`, `parent`, `kind`, `labels.<key>`, components quoted with `"` where
//! they hold `.` or other punctuation), alone (the field is present) or followed by
//! `==` or `!=` and a value, bare or quoted. `~=` (regular expressions) is
//! refused.

use crate::error::{Error, Result};
use crate::meta::Entry;

/// One parsed filter: clauses that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    clauses: Vec<Clause>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    field: Vec<String>,
    op: Option<(Op, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
}

fn invalid(filter: &str, why: &str) -> Error {
    Error::InvalidArgument {
        reason: format!("filter {filter:?}: {why}"),
    }
}

/// Reads a quoted string starting after its opening `"`; returns it and the rest.
fn quoted<'a>(filter: &str, s: &'a str) -> Result<(String, &'a str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, c)) => out.push(c),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(invalid(filter, "unterminated quote"))
}

impl Filter {
    /// Parses one filter string.
    pub(crate) fn parse(filter: &str) -> Result<Filter> {
        let mut clauses = Vec::new();
        let mut rest = filter.trim_start();
        loop {
            // The field path.
            let mut field = Vec::new();
            loop {
                if let Some(after) = rest.strip_prefix('"') {
                    let (part, after) = quoted(filter, after)?;
                    field.push(part);
                    rest = after;
                } else {
                    let end = rest
                        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '/'))
                        .unwrap_or(rest.len());
                    if end == 0 {
                        return Err(invalid(filter, "a field name is missing"));
                    }
                    field.push(rest[..end].to_owned());
                    rest = &rest[end..];
                }
                match rest.strip_prefix('.') {
                    Some(after) => rest = after,
                    None => break,
                }
            }
            rest = rest.trim_start();
            let op = if let Some(after) = rest.strip_prefix("==") {
                Some((Op::Equal, after))
            } else if let Some(after) = rest.strip_prefix("!=") {
                Some((Op::NotEqual, after))
            } else if rest.starts_with("~=") {
                return Err(invalid(
                    filter,
                    "regular expressions (~=) are not supported",
                ));
            } else {
                None
            };
            let op = match op {
                None => None,
                Some((op, after)) => {
                    let after = after.trim_start();
                    let (value, after) = if let Some(q) = after.strip_prefix('"') {
                        quoted(filter, q)?
                    } else {
                        let end = after.find(',').unwrap_or(after.len());
                        (after[..end].trim_end().to_owned(), &after[end..])
                    };
                    rest = after;
                    Some((op, value))
                }
            };
            clauses.push(Clause { field, op });
            rest = rest.trim_start();
            match rest.strip_prefix(',') {
                Some(after) => rest = after.trim_start(),
                None if rest.is_empty() => break,
                None => return Err(invalid(filter, "expected `,` between clauses")),
            }
        }
        Ok(Filter { clauses })
    }

    /// Whether the snapshot `key` matches every clause.
    pub(crate) fn matches(&self, key: &str, entry: &Entry) -> bool {
        self.clauses.iter().all(|c| c.matches(key, entry))
    }
}

impl Clause {
    fn matches(&self, key: &str, entry: &Entry) -> bool {
        let value: Option<&str> = match self.field.as_slice() {
            [f] if f == "name" => Some(key),
            [f] if f == "parent" => entry.parent.as_deref(),
            [f] if f == "kind" => Some(entry.kind.as_str()),
            [f, label @ ..] if f == "labels" && !label.is_empty() => {
                entry.labels.get(&label.join(".")).map(String::as_str)
            }
            _ => None,
        };
        match (&self.op, value) {
            (None, v) => v.is_some_and(|v| !v.is_empty()),
            (Some((Op::Equal, want)), v) => v == Some(want.as_str()),
            (Some((Op::NotEqual, want)), v) => v != Some(want.as_str()),
        }
    }
}

/// Whether `key` is listed under `filters`: any of them matches, or there are none.
pub(crate) fn any_matches(filters: &[Filter], key: &str, entry: &Entry) -> bool {
    filters.is_empty() || filters.iter().any(|f| f.matches(key, entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Kind;
    use std::time::SystemTime;

    fn entry() -> Entry {
        Entry {
            layer: "l".to_owned(),
            kind: Kind::Committed,
            parent: Some("sha256:p".to_owned()),
            labels: [("containerd.io/gc.root".to_owned(), "x, y".to_owned())].into(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn label_parent_kind_and_name_clauses() {
        let e = entry();
        for (f, want) in [
            (r#"labels."containerd.io/gc.root"=="x, y""#, true),
            (r#"labels."containerd.io/gc.root""#, true),
            (r#"labels."other""#, false),
            ("parent==sha256:p", true),
            ("parent==sha256:p,kind==committed", true),
            ("parent==sha256:p, kind==active", false),
            ("kind!=active", true),
            ("name==k", true),
            (r#"name=="k""#, true),
        ] {
            assert_eq!(Filter::parse(f).unwrap().matches("k", &e), want, "{f}");
        }
    }

    proptest::proptest! {
        /// containerd sends whatever a user typed: any string parses or is an
        /// invalid argument, never a panic.
        #[test]
        fn any_filter_parses_or_is_refused(f in r#"[a-z."=!~,\\ /:-]{0,40}"#) {
            match Filter::parse(&f) {
                Ok(filter) => {
                    filter.matches("k", &entry());
                }
                Err(e) => {
                    let refused = matches!(e, Error::InvalidArgument { .. });
                    proptest::prop_assert!(refused, "{}", e);
                }
            }
        }
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        for f in [r#"labels."x"#, "name~=k.*", "==k", ""] {
            assert!(
                matches!(Filter::parse(f), Err(Error::InvalidArgument { .. })),
                "{f}"
            );
        }
    }
}
