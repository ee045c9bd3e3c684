//! Whether the process runs in a user namespace other than the initial one.

use crate::Error;

/// One line of `/proc/<pid>/uid_map` (or `gid_map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IdMapping {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id outside (in the parent namespace).
    pub outside: u32,
    /// How many ids the line maps.
    pub count: u32,
}

/// Parses the contents of a `uid_map`/`gid_map` file: one `inside outside count`
/// triple per line, blank lines ignored.
///
/// Fails with [`Error::IdMapLine`] on a line that is not three `u32`s.
pub fn parse_id_map(text: &str) -> Result<Vec<IdMapping>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let bad = || Error::IdMapLine {
            line: i + 1,
            text: line.to_owned(),
        };
        let [inside, outside, count] = fields[..] else {
            return Err(bad());
        };
        out.push(IdMapping {
            inside: inside.parse().map_err(|_| bad())?,
            outside: outside.parse().map_err(|_| bad())?,
            count: count.parse().map_err(|_| bad())?,
        });
    }
    Ok(out)
}

/// Whether an id map is the initial namespace's: the single line `0 0 4294967295`.
pub fn is_initial_id_map(map: &[IdMapping]) -> bool {
    map == [IdMapping {
        inside: 0,
        outside: 0,
        count: u32::MAX,
    }]
}

/// Whether the process runs in a user namespace other than the initial one.
///
/// Reads `/proc/self/uid_map`. A kernel without user namespaces has no such file:
/// that is the initial namespace. An unreadable or malformed map counts as nested,
/// the cautious answer (it turns off features a nested namespace cannot use).
pub fn in_user_namespace() -> bool {
    match crate::kfile::read_proc("/proc/self/uid_map") {
        Ok(text) => match parse_id_map(&text) {
            Ok(map) => !is_initial_id_map(&map),
            Err(e) => {
                tracing::warn!("treating the process as in a user namespace: {e}");
                true
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!("cannot read /proc/self/uid_map ({e}); assuming a user namespace");
            true
        }
    }
}
