//! Probe answers kept on disk, so that only the first open of a store (and
//! `plies probe`) mounts scratch filesystems.
//!
//! A cache file holds the answers together with the [`CacheKey`] they were
//! probed under: everything that can change them (the kernel release, the
//! backing filesystem and its device and mount flags, the overlay module's
//! parameters, whether the process runs in a user namespace, and the caller's
//! version). [`load`] gives the answers back only while the key is the same; a
//! missing, unreadable or malformed file, or another key, means probing again.
//! [`store`] writes the file atomically (a temporary file renamed over it).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The overlay module parameters that change what a mount does.
const OVERLAY_PARAMS: [&str; 6] = [
    "index",
    "metacopy",
    "redirect_dir",
    "redirect_always_follow",
    "xino_auto",
    "nfs_export",
];

/// Everything a cached probe answer depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// The caller's version (a new release may probe differently).
    pub version: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// `statfs` `f_type` of the probed directory.
    pub fs_magic: u64,
    /// `st_dev` of the probed directory.
    pub device: u64,
    /// `statvfs` mount flags of its filesystem (read-only, nosuid, …).
    pub mount_flags: u64,
    /// `/sys/module/overlay/parameters/<name>` values, `None` where absent.
    pub overlay_params: Vec<(String, Option<String>)>,
    /// Whether the process runs in a user namespace (userxattr, mount rights).
    pub user_namespace: bool,
}

impl CacheKey {
    /// The key of `dir` now, for answers of a caller at `version`. Costs a few
    /// system calls and reads; mounts nothing.
    ///
    /// # Errors
    /// The `stat`/`statfs` error on `dir`.
    pub fn for_dir(dir: &Path, version: &str) -> std::io::Result<CacheKey> {
        let st = rustix::fs::stat(dir)?;
        // One statfs gives the magic and the mount flags (what statvfs's
        // `f_flag` is made from).
        let fs = rustix::fs::statfs(dir)?;
        let overlay_params = OVERLAY_PARAMS
            .iter()
            .map(|p| {
                let path = format!("/sys/module/overlay/parameters/{p}");
                let value = crate::kfile::read_attribute(path)
                    .ok()
                    .map(|v| v.trim().to_owned());
                ((*p).to_owned(), value)
            })
            .collect();
        // f_type and f_flags are signed words on some targets; the key keeps
        // their bit patterns.
        #[allow(clippy::unnecessary_cast)]
        let (fs_magic, mount_flags) = (fs.f_type as u64, fs.f_flags as u64);
        Ok(CacheKey {
            version: version.to_owned(),
            kernel_release: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            fs_magic,
            device: st.st_dev,
            mount_flags,
            overlay_params,
            user_namespace: crate::in_user_namespace(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Entry<T> {
    key: CacheKey,
    value: T,
}

/// The answers cached in `file` under `key`; `None` when the file is missing,
/// unreadable, malformed, or holds answers for another key.
pub fn load<T: DeserializeOwned>(file: &Path, key: &CacheKey) -> Option<T> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::debug!(file = %file.display(), error = %e, "probe cache unreadable");
            return None;
        }
    };
    match serde_json::from_slice::<Entry<T>>(&bytes) {
        Ok(entry) if entry.key == *key => Some(entry.value),
        Ok(_) => {
            tracing::debug!(file = %file.display(), "probe cache is for another key");
            None
        }
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "malformed probe cache ignored");
            None
        }
    }
}

/// Writes `value` under `key` to `file`: a temporary file beside it, renamed
/// over it, so readers see the old file or the new one, never a part.
///
/// # Errors
/// The I/O error of writing or renaming.
pub fn store<T: Serialize>(file: &Path, key: &CacheKey, value: &T) -> std::io::Result<()> {
    let entry = Entry {
        key: key.clone(),
        value,
    };
    let bytes = serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = file.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.write_all(b"\n")?;
        std::fs::rename(&tmp, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_invalidation() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("features.json");
        let key = CacheKey::for_dir(dir.path(), "1.0").unwrap();
        assert_eq!(load::<u32>(&file, &key), None);
        store(&file, &key, &7u32).unwrap();
        assert_eq!(load::<u32>(&file, &key), Some(7));
        let mut other = key.clone();
        other.kernel_release.push_str("-changed");
        assert_eq!(load::<u32>(&file, &other), None);
        let newer = CacheKey::for_dir(dir.path(), "1.1").unwrap();
        assert_eq!(load::<u32>(&file, &newer), None);
        std::fs::write(&file, b"{\"key\": garbage").unwrap();
        assert_eq!(load::<u32>(&file, &key), None);
        std::fs::write(&file, b"").unwrap();
        assert_eq!(load::<u32>(&file, &key), None);
    }
}
