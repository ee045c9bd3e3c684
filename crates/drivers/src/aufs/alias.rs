//! Branch paths aufs can read: aufs's mount data separates branches with `:`
//! and their modes with `=` and options with `,`, and escapes none of them, so
//! a branch whose path holds one (a layer named by its chain id,
//! `sha256:…`) is given to aufs through a symlink without them, under
//! `<root>/.plies/branches/`. aufs follows the symlink when it mounts, so the
//! branch is the layer's own directory; the symlink is the store's private
//! state, which Docker never reads.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The directory of the aliases, under the store's own directory.
const ALIAS_DIR: &str = "branches";

/// Whether aufs's mount data cannot hold `path` as it is.
fn needs_alias(path: &Path) -> bool {
    path.as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b':' | b'=' | b','))
}

/// `rel` with `%`, `/`, `:`, `=` and `,` written as `%XX`: one name per path,
/// and different paths never share one.
fn alias_name(rel: &Path) -> OsString {
    let mut out = Vec::new();
    for &b in rel.as_os_str().as_bytes() {
        if matches!(b, b'%' | b'/' | b':' | b'=' | b',') {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    OsString::from_vec(out)
}

/// `path` (a directory under `root`) as aufs can take it: itself, or a
/// symlink to it under `<root>/.plies/branches/`, made or corrected here.
pub(super) fn mountable(root: &Path, path: PathBuf) -> Result<PathBuf> {
    if !needs_alias(&path) {
        return Ok(path);
    }
    let Ok(rel) = path.strip_prefix(root) else {
        // Outside the store: aufs's own refusal names it.
        return Ok(path);
    };
    let dir = root.join(plies_layerstore::STORE_DIR).join(ALIAS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("mkdir", &dir, e))?;
    let alias = dir.join(alias_name(rel));
    match std::fs::read_link(&alias) {
        Ok(target) if target == path => return Ok(alias),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("readlink", &alias, e)),
    }
    // Made beside and renamed over: another process may read it meanwhile.
    let tmp = dir.join(format!(
        ".{}.{}",
        std::process::id(),
        alias_name(rel).to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&path, &tmp).map_err(|e| Error::io("symlink", &tmp, e))?;
    std::fs::rename(&tmp, &alias).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("rename", &alias, e)
    })?;
    Ok(alias)
}

/// Removes the alias of `path`, if it has one (its layer is gone).
pub(super) fn forget(root: &Path, path: &Path) {
    if !needs_alias(path) {
        return;
    }
    if let Ok(rel) = path.strip_prefix(root) {
        let alias = root
            .join(plies_layerstore::STORE_DIR)
            .join(ALIAS_DIR)
            .join(alias_name(rel));
        if let Err(e) = std::fs::remove_file(&alias) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(alias = %alias.display(), error = %e, "branch alias left");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_per_path() {
        assert_eq!(
            alias_name(Path::new("diff/sha256:ab")),
            "diff%2Fsha256%3Aab"
        );
        assert_eq!(alias_name(Path::new("diff/a%3Ab")), "diff%2Fa%253Ab");
        assert_ne!(
            alias_name(Path::new("diff/a:b")),
            alias_name(Path::new("diff/a%3Ab"))
        );
        assert!(!needs_alias(Path::new("/var/lib/plies/aufs/diff/abc")));
        assert!(needs_alias(Path::new("/r/aufs/diff/sha256:abc")));
    }

    #[test]
    fn aliases_point_at_the_branch() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("aufs");
        let branch = root.join("diff").join("sha256:ab");
        std::fs::create_dir_all(&branch).unwrap();
        let alias = mountable(&root, branch.clone()).unwrap();
        assert!(!needs_alias(&alias));
        assert_eq!(std::fs::read_link(&alias).unwrap(), branch);
        assert_eq!(mountable(&root, branch.clone()).unwrap(), alias);
        let plain = root.join("diff").join("abc");
        assert_eq!(mountable(&root, plain.clone()).unwrap(), plain);
        forget(&root, &branch);
        assert!(!alias.exists());
    }
}
