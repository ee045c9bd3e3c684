//! What overlay2 needs from the kernel and the backing filesystem: checked at
//! every open without writing, probed once with scratch mounts in the store's
//! probe directory, and cached on disk under `<home>/.plies`.

use std::path::Path;

use plies_kprobe::Outcome;

use super::NAME;
use crate::error::{Error, Result};

/// What the kernel and the backing filesystem offer: probed once, then kept in
/// the store's probe cache until something it depends on changes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Features {
    pub(super) backing: String,
    pub(super) d_type: Outcome<()>,
    pub(super) native_diff: Outcome<()>,
    pub(super) userxattr: bool,
    pub(super) index_off: bool,
    pub(super) lowerdir_plus: Outcome<()>,
}

/// The probe cache file, under the home's store directory.
const FEATURES_FILE: &str = "overlay2-features.json";

/// The cached features of an existing `home`, when the cache is valid: what
/// every open after the first reads instead of checking and probing.
pub(super) fn cached(home: &Path) -> Option<Features> {
    let key = plies_kprobe::cache::CacheKey::for_dir(home, env!("CARGO_PKG_VERSION")).ok()?;
    let file = home.join(plies_layerstore::STORE_DIR).join(FEATURES_FILE);
    plies_kprobe::cache::load::<Features>(&file, &key)
}

/// Checks that overlay2 can run under `home` and finds its features: from the
/// probe cache when it is valid, else by probing in the store's probe directory
/// (and caching the answers). Docker's three kinds of refusal are kept apart.
/// `home` exists; nothing is written outside `home/.plies`.
pub(super) fn features(home: &Path) -> Result<Features> {
    let store_dir = home.join(plies_layerstore::STORE_DIR);
    let cache_file = store_dir.join(FEATURES_FILE);
    let key = plies_kprobe::cache::CacheKey::for_dir(home, env!("CARGO_PKG_VERSION"))
        .map_err(|e| Error::io("stat", home, e))?;
    if let Some(f) = plies_kprobe::cache::load::<Features>(&cache_file, &key) {
        return Ok(f);
    }
    let locks = plies_layerstore::LayerLocks::open(home).map_err(Error::store_wide)?;
    // One prober at a time; the others then find its answers in the cache.
    let _guard = crate::locks::lock(&locks, &[plies_layerstore::PROBE_LOCK])?;
    if let Some(f) = plies_kprobe::cache::load::<Features>(&cache_file, &key) {
        return Ok(f);
    }
    let dir = store_dir.join(plies_layerstore::PROBE_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("mkdir", &dir, e))?;
    // What a killed prober left; nobody else probes while the lock is held.
    plies_layerstore::sweep_probe_scratch(&dir).map_err(Error::store_wide)?;
    let features = probe(&dir)?;
    if let Err(e) = plies_kprobe::cache::store(&cache_file, &key, &features) {
        tracing::warn!(file = %cache_file.display(), error = %e, "probe cache not written");
    }
    Ok(features)
}

/// The checks that write nothing: overlay in the kernel, a backing filesystem
/// overlay2 can sit on.
pub(super) fn check_kernel_and_backing(dir: &Path) -> Result<()> {
    let fs = plies_kprobe::filesystems();
    let has_overlay = match &fs {
        Outcome::Supported { value } => value.has("overlay"),
        Outcome::Unsupported { .. } => false,
    };
    if !has_overlay {
        let reason = fs.reason().map_or_else(
            || "overlay is not in /proc/filesystems".to_owned(),
            str::to_owned,
        );
        return Err(Error::NotSupported {
            driver: NAME,
            reason,
        });
    }
    backing_of(dir).map(drop)
}

fn backing_of(dir: &Path) -> Result<plies_kprobe::BackingFs> {
    let backing = match plies_kprobe::backing_fs(dir) {
        Outcome::Supported { value } => value,
        Outcome::Unsupported { reason } => {
            return Err(Error::IncompatibleFs {
                driver: NAME,
                root: dir.to_path_buf(),
                reason,
            });
        }
    };
    if let Outcome::Supported { value: kernel } = plies_kprobe::kernel_version() {
        if let Outcome::Unsupported { reason } =
            plies_kprobe::overlay2_backing_ok(&backing, &kernel)
        {
            return Err(Error::IncompatibleFs {
                driver: NAME,
                root: dir.to_path_buf(),
                reason,
            });
        }
    }
    Ok(backing)
}

/// What a read-only open knows without a scratch mount: the checks that write
/// nothing, and the module parameters. Native diff is taken as working unless
/// `redirect_dir` or `metacopy` is on (as Docker's probe finds); a layer with a
/// redirected directory is still caught when its changes are listed.
pub(super) fn unprobed(home: &Path) -> Result<Features> {
    check_kernel_and_backing(home)?;
    let backing = backing_of(home)?;
    let on = |name: &str| {
        std::fs::read_to_string(format!("/sys/module/overlay/parameters/{name}"))
            .is_ok_and(|v| v.trim() == "Y")
    };
    let native_diff = if on("redirect_dir") || on("metacopy") {
        Outcome::Unsupported {
            reason: "redirect_dir or metacopy is on (from the module parameters)".to_owned(),
        }
    } else {
        Outcome::Supported { value: () }
    };
    let not_probed = || Outcome::Unsupported {
        reason: "not probed: the store is opened read-only".to_owned(),
    };
    Ok(Features {
        backing: backing.to_string(),
        d_type: Outcome::Supported { value: () },
        native_diff,
        userxattr: false,
        index_off: plies_kprobe::index_parameter().is_supported(),
        lowerdir_plus: not_probed(),
    })
}

/// Runs the mounting probes in `dir` (the store's probe directory).
fn probe(dir: &Path) -> Result<Features> {
    let backing = backing_of(dir)?;
    let d_type = plies_kprobe::d_type(dir);
    if let Outcome::Unsupported { reason } = &d_type {
        return Err(Error::PrerequisitesMissing {
            driver: NAME,
            reason: format!("the backing {backing} filesystem has no d_type: {reason}"),
        });
    }
    if let Outcome::Unsupported { reason } = plies_kprobe::multiple_lowers(dir) {
        return Err(Error::PrerequisitesMissing {
            driver: NAME,
            reason,
        });
    }
    Ok(Features {
        backing: backing.to_string(),
        d_type,
        native_diff: plies_kprobe::native_diff(dir),
        userxattr: plies_kprobe::userxattr_needed(dir).is_true(),
        index_off: plies_kprobe::index_parameter().is_supported(),
        lowerdir_plus: plies_kprobe::lowerdir_plus(dir),
    })
}

/// Forgets the cached probe answers of the overlay2 store at `home`, so that
/// the next open probes again.
///
/// # Errors
/// [`Error::Io`] when the cache file exists and cannot be removed.
pub fn forget_probes(home: &Path) -> Result<()> {
    let file = home.join(plies_layerstore::STORE_DIR).join(FEATURES_FILE);
    match std::fs::remove_file(&file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &file, e)),
    }
}
