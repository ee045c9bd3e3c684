//! Tidiness of the repository, checked on every `cargo test`: files stay
//! small, error messages leave their source to the chain, and a tree removal
//! lives once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Longest a source file under `crates/*/src` may grow, in lines.
const MAX_LINES: usize = 800;

/// The one place a `remove_tree` is defined: plies-fdtree, below every crate that
/// removes a tree (fd-relative, bounded handles, stays on one filesystem). A new
/// copy fails the test: use plies_fdtree's instead.
const REMOVE_TREE_HOME: &str = "crates/fdtree/src/remove.rs";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `crates/*/src`, as paths relative to the repository.
fn sources() -> Vec<(String, String)> {
    let root = repo();
    let mut out = Vec::new();
    let crates = std::fs::read_dir(root.join("crates")).expect("read crates/");
    for krate in crates {
        let src = krate.expect("crates/ entry").path().join("src");
        if src.is_dir() {
            walk(&root, &src, &mut out);
        }
    }
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            walk(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read source");
            let rel = path.strip_prefix(root).expect("under the repository");
            out.push((rel.to_string_lossy().into_owned(), text));
        }
    }
}

#[test]
fn source_files_stay_under_the_line_limit() {
    let long: Vec<String> = sources()
        .iter()
        .map(|(path, text)| (path, text.lines().count()))
        .filter(|&(_, lines)| lines > MAX_LINES)
        .map(|(path, lines)| format!("{path}: {lines} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines (split the file into modules): {long:#?}"
    );
}

/// The format string of each `#[error(...)]` attribute, with where it is.
fn error_messages(path: &str, text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(at) = rest.find("#[error(") {
        let start = offset + at + "#[error(".len();
        let line = text[..start].lines().count();
        // The attribute's first string literal is its format string.
        let attr = &text[start..];
        let end = attr.find(")]").unwrap_or(attr.len());
        let attr = &attr[..end];
        if let Some(open) = attr.find('"') {
            let literal = &attr[open + 1..];
            let close = literal.find('"').unwrap_or(literal.len());
            out.push((format!("{path}:{line}"), literal[..close].to_owned()));
        }
        offset = start;
        rest = &text[start..];
    }
    out
}

#[test]
fn error_messages_leave_their_source_to_the_chain() {
    let offenders: Vec<String> = sources()
        .iter()
        .flat_map(|(path, text)| error_messages(path, text))
        .filter(|(_, message)| message.contains("{source"))
        .map(|(at, message)| format!("{at}: {message}"))
        .collect();
    assert!(
        offenders.is_empty(),
        "an #[error] message prints its source, which the cause chain prints again: {offenders:#?}"
    );
}

#[test]
fn remove_tree_is_defined_only_in_fdtree() {
    let found: BTreeSet<String> = sources()
        .into_iter()
        .filter(|(_, text)| {
            text.lines().any(|l| {
                let l = l.trim_start();
                let l = l
                    .strip_prefix("pub ")
                    .or_else(|| l.strip_prefix("pub(crate) "))
                    .unwrap_or(l);
                l.starts_with("fn remove_tree(") || l.starts_with("fn remove_tree<")
            })
        })
        .map(|(path, _)| path)
        .collect();
    assert_eq!(
        found,
        BTreeSet::from([REMOVE_TREE_HOME.to_owned()]),
        "remove_tree is defined once, in plies-fdtree (use plies_fdtree::remove_tree)"
    );
}
