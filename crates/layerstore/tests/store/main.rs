//! The stores' behaviour: Docker's fixture, layouts, ids, depth, fsck, hostile stores.

mod aufs;
mod fixture;
mod fsck;
mod hostile;
mod mount;
mod overlay2;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use plies_layerstore::{Overlay2Store, StoreOptions};

/// A fresh overlay2 store in a temp dir.
pub fn store() -> (tempfile::TempDir, Overlay2Store) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Overlay2Store::open(tmp.path().join("overlay2"), StoreOptions::default())
        .expect("open store");
    (tmp, store)
}

/// Permission bits of a path, not following symlinks.
pub fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("lstat")
        .permissions()
        .mode()
        & 0o7777
}

/// The names in a directory, sorted.
pub fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        // The store's own directory (locks), which Docker never looks at.
        .filter(|n| n != plies_layerstore::STORE_DIR)
        .collect();
    v.sort();
    v
}

/// The inode of a path (to tell "the same directory" from "a recreated one").
pub fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).expect("lstat").ino()
}
