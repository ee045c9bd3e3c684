//! `plies probe`: what the kernel and the filesystem under the root support.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::args::Global;
use crate::output::Out;

/// The directory probed: the root, or its nearest existing ancestor when the root
/// does not exist yet (a probe never creates the root).
pub fn probe_dir(root: &Path) -> PathBuf {
    let mut dir = root.to_path_buf();
    loop {
        if dir.is_dir() {
            return dir;
        }
        if !dir.pop() || dir.as_os_str().is_empty() {
            return PathBuf::from("/");
        }
    }
}

/// Runs every probe on the root's directory and prints the report.
pub fn run(g: &Global, out: &Out) -> anyhow::Result<()> {
    let dir = probe_dir(&g.root);
    // A fresh run: the drivers' cached answers go too, so the next open probes.
    plies_drivers::forget_probes(&g.root.join("overlay2"))
        .context("forgetting the cached probe answers")?;
    let report =
        plies_kprobe::probe_all(&dir).with_context(|| format!("probing {}", dir.display()))?;
    if out.json {
        return out.json(&report);
    }
    let mut rows = vec![("Probed Directory".to_owned(), dir.display().to_string())];
    rows.extend(report.rows());
    out.table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_root_probes_its_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(probe_dir(&dir.path().join("a/b")), dir.path());
        assert_eq!(probe_dir(dir.path()), dir.path());
    }
}
