//! Size limits of overlay2's read-write layers, as Docker sets them: XFS project
//! quota (`plies_kprobe::quota`) for `overlay2.size` and the storage option
//! `size`.

use std::path::Path;

use plies_kprobe::quota::Control;

use crate::error::{Error, Result};
use crate::options::{CreateOptions, parse_size};

/// The storage option that limits a read-write layer.
const SIZE: &str = "size";

/// Project quota of a driver's home, if the filesystem has it, and the default
/// limit of read-write layers.
#[derive(Debug)]
pub(crate) struct LayerQuota {
    driver: &'static str,
    /// The control, or why there is none.
    control: std::result::Result<Control, String>,
    /// `overlay2.size`: the limit of read-write layers without a `size` of their
    /// own. Never set without a control.
    default_size: Option<u64>,
}

impl LayerQuota {
    /// No quota: for a store opened read-only, which makes no layers (and so
    /// no `backingFsBlockDev` node either).
    pub(crate) fn none(driver: &'static str) -> LayerQuota {
        LayerQuota {
            driver,
            control: Err("the store is opened read-only".to_owned()),
            default_size: None,
        }
    }

    /// Opens project quota for `home` when its backing filesystem is XFS (as
    /// Docker, which tries nothing elsewhere). A `default_size` of 0 means none.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for `overlay2.size` when project quota cannot be
    /// used in `home`.
    pub(crate) fn open(
        driver: &'static str,
        home: &Path,
        backing: &str,
        default_size: Option<u64>,
    ) -> Result<LayerQuota> {
        let control = if backing == "xfs" {
            Control::open(home)
                .map_err(|e| format!("the filesystem does not support project quota: {e}"))
        } else {
            Err(format!(
                "project quota is only supported over xfs; the backing filesystem is {backing}"
            ))
        };
        if let Err(reason) = &control {
            tracing::debug!(home = %home.display(), "no layer size limits: {reason}");
        }
        let default_size = default_size.filter(|&size| size > 0);
        if let (Some(size), Err(reason)) = (default_size, &control) {
            return Err(Error::InvalidOption {
                key: "overlay2.size".to_owned(),
                value: size.to_string(),
                reason: format!("not supported: {reason}"),
            });
        }
        Ok(LayerQuota {
            driver,
            control,
            default_size,
        })
    }

    /// The limit in bytes a new layer gets from its storage options (`size`,
    /// read-write layers only) or `overlay2.size`; `None` for no limit (a size
    /// of 0 is none, as in Docker).
    ///
    /// # Errors
    /// [`Error::StorageOptUnsupported`] for any storage option when the home has
    /// no project quota, for `size` on a read-only layer, and for keys other than
    /// `size`; [`Error::InvalidOption`] for a `size` that is not a size.
    pub(crate) fn size_for(&self, opts: &CreateOptions, read_write: bool) -> Result<Option<u64>> {
        let unsupported = |key: &str, reason: String| Error::StorageOptUnsupported {
            driver: self.driver,
            key: key.to_owned(),
            reason,
        };
        if !read_write {
            if let Some(key) = opts
                .storage_opt
                .keys()
                .find(|k| k.eq_ignore_ascii_case(SIZE))
            {
                return Err(unsupported(
                    key,
                    "only read-write layers take a size".to_owned(),
                ));
            }
        }
        if let (Some(key), Err(reason)) = (opts.storage_opt.keys().next(), &self.control) {
            return Err(unsupported(
                key,
                format!(
                    "storage options are supported only over xfs mounted with project \
                     quota (prjquota): {reason}"
                ),
            ));
        }
        let mut size = None;
        for (key, value) in &opts.storage_opt {
            if !key.eq_ignore_ascii_case(SIZE) {
                return Err(unsupported(key, "unknown storage option".to_owned()));
            }
            size = Some(parse_size(value).ok_or_else(|| Error::InvalidOption {
                key: key.clone(),
                value: value.clone(),
                reason: "not a size".to_owned(),
            })?);
        }
        let size = if read_write {
            size.or(self.default_size)
        } else {
            None
        };
        Ok(size.filter(|&s| s > 0))
    }

    /// Limits the layer `id`, whose directory is `dir`, to `bytes`: its whole
    /// tree gets a project of its own.
    ///
    /// # Errors
    /// [`Error::Quota`] when the kernel refuses;
    /// [`Error::StorageOptUnsupported`] without project quota.
    pub(crate) fn limit(&self, id: &str, dir: &Path, bytes: u64) -> Result<()> {
        match &self.control {
            Ok(control) => control
                .set_quota(dir, bytes)
                .map(|project| {
                    tracing::debug!(layer = id, project, bytes, "layer size limited");
                })
                .map_err(|source| Error::Quota {
                    id: id.to_owned(),
                    source,
                }),
            Err(reason) => Err(Error::StorageOptUnsupported {
                driver: self.driver,
                key: SIZE.to_owned(),
                reason: reason.clone(),
            }),
        }
    }

    /// The project of the layer whose directory is `dir`, if it has one of its
    /// own: to release after the layer is removed.
    pub(crate) fn project_of(&self, id: &str, dir: &Path) -> Option<u32> {
        let control = self.control.as_ref().ok()?;
        control.project_of(dir).unwrap_or_else(|e| {
            tracing::warn!(layer = id, error = %e, "cannot read the layer's project id");
            None
        })
    }

    /// Drops the limit of the removed layer `id`'s project.
    pub(crate) fn release(&self, id: &str, project: u32) {
        if let Ok(control) = &self.control {
            if let Err(e) = control.release_project(project) {
                tracing::warn!(layer = id, project, error = %e, "cannot release the layer's quota");
            }
        }
    }
}
