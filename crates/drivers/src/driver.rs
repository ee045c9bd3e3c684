//! The `Driver` trait: Docker's graph-driver operations.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use plies_archive::changes::Change;

use crate::error::Result;
use crate::options::CreateOptions;

/// A layer driver: stores layers under its root, stacks them into root
/// filesystems, and turns them into layer tars and back.
///
/// Every method is safe to call from many threads at once; calls on different
/// layers run in parallel. `parent` arguments name the layer a diff is taken
/// against (`None`: against nothing, every file is added).
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// The driver's name as Docker spells it: `overlay2`, `aufs` or `vfs`.
    fn name(&self) -> &'static str;

    /// The directory the driver keeps its layers in.
    fn root(&self) -> &Path;

    /// Creates the read-only (image) layer `id` on top of `parent`.
    ///
    /// # Errors
    /// [`Error::LayerExists`](crate::Error::LayerExists),
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer) for a missing parent,
    /// [`Error::InvalidId`](crate::Error::InvalidId), or a storage option the
    /// driver does not take.
    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOptions) -> Result<()>;

    /// Creates the read-write (container) layer `id` on top of `parent`; the
    /// storage option `size` limits it where the driver supports quotas.
    ///
    /// # Errors
    /// As [`Driver::create`].
    fn create_read_write(&self, id: &str, parent: Option<&str>, opts: &CreateOptions)
    -> Result<()>;

    /// Removes the layer `id`, unmounting it first if it is mounted.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer);
    /// [`Error::Busy`](crate::Error::Busy) when its mount stays busy.
    fn remove(&self, id: &str) -> Result<()>;

    /// Returns the path of the root filesystem of `id`, mounting it on the first
    /// call; every `get` must be matched by a [`Driver::put`].
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer), or the mount's error;
    /// a failed `get` holds nothing.
    fn get(&self, id: &str, mount_label: Option<&str>) -> Result<PathBuf>;

    /// Releases one [`Driver::get`] of `id`; the last one unmounts.
    ///
    /// # Errors
    /// [`Error::NotMounted`](crate::Error::NotMounted) when no `get` holds `id`.
    fn put(&self, id: &str) -> Result<()>;

    /// Unmounts `id` whoever mounted it (this process, or another that left its
    /// mount to its caller, as `plies mount` does) and forgets the `get`s this
    /// driver counted for it; returns whether a mount was undone.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer), or the unmount's error
    /// (the mount then stays, and so do the counts).
    fn detach(&self, id: &str) -> Result<bool>;

    /// Every layer the driver holds, sorted; half-made and half-removed layers
    /// and the store's own entries are never listed.
    ///
    /// # Errors
    /// [`Error::Store`](crate::Error::Store) or [`Error::Io`](crate::Error::Io)
    /// when the driver's home cannot be read.
    fn list(&self) -> Result<Vec<String>>;

    /// Checks the driver's layout and, with `repair`, fixes what it safely can
    /// (see [`plies_layerstore::Finding`]). Work another thread or process holds
    /// a layer's lock for is neither reported nor touched.
    ///
    /// # Errors
    /// [`Error::Store`](crate::Error::Store) or [`Error::Io`](crate::Error::Io)
    /// when the check itself cannot proceed (a repair that fails).
    fn fsck(&self, repair: bool) -> Result<plies_layerstore::FsckReport>;

    /// The layer under `id` as the store itself records it (overlay2's
    /// `lower` through `l/`, aufs' `layers/<id>`); `None` for a base layer,
    /// and always for vfs, which keeps no lineage.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer), or a store whose
    /// lineage files are damaged.
    fn parent(&self, id: &str) -> Result<Option<String>>;

    /// Whether the layer `id` exists.
    fn exists(&self, id: &str) -> bool;

    /// Rows describing the driver and its root, in order, as `docker info` shows them.
    fn status(&self) -> Vec<(String, String)>;

    /// Where the layer's directories are, keyed as Docker's `GetMetadata`
    /// (`LowerDir`, `UpperDir`, `WorkDir`, `MergedDir` for overlay2).
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer).
    fn metadata(&self, id: &str) -> Result<BTreeMap<String, String>>;

    /// The directory holding the files the layer's own tar put there, read
    /// without a mount: overlay2's `<id>/diff`, aufs' `diff/<id>`, vfs' layer
    /// directory (its whole tree). Docker's tar-split rebuilds a layer's tar
    /// from it.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer).
    fn layer_files(&self, id: &str) -> Result<PathBuf>;

    /// Where [`Driver::get`] hands `id` out, without mounting or counting
    /// anything: the mount point of a layer `get` mounts (overlay2's
    /// `<id>/merged` over lowers, aufs' `mnt/<id>`), else the directory `get`
    /// returns as it is (a base layer's `diff`, vfs' layer directory).
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer), or the store's error
    /// reading the layer's lineage.
    fn mount_path(&self, id: &str) -> Result<PathBuf>;

    /// Unmounts every mount the driver made under its root.
    ///
    /// # Errors
    /// The first unmount that failed (all are tried).
    fn cleanup(&self) -> Result<()>;

    /// The changes of `id` against `parent` as a layer tar, streamed.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer), or what reading the
    /// layers failed on. Errors met while streaming come from the reader.
    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn Read + Send>>;

    /// The size in bytes of the files that [`Driver::diff`] would carry.
    ///
    /// # Errors
    /// As [`Driver::changes`].
    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64>;

    /// Applies the layer tar read from `diff` to the layer `id` (whose parent is
    /// `parent`), returning the size of the applied layer in bytes.
    ///
    /// A failed apply leaves the layer as it was: a new layer is emptied again,
    /// and a layer that holds a diff already is applied to a copy that replaces
    /// it only once the apply succeeded. Exceptions: a layer that is mounted (in
    /// use) is applied to in place, and so is an aufs branch that holds a diff
    /// when `parent` is not its direct parent.
    ///
    /// # Errors
    /// [`Error::Archive`](crate::Error::Archive) naming the tar entry.
    fn apply_diff(&self, id: &str, parent: Option<&str>, diff: &mut dyn Read) -> Result<u64>;

    /// The paths `id` adds, modifies and deletes against `parent`, sorted.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`](crate::Error::NoSuchLayer),
    /// [`Error::Changes`](crate::Error::Changes) naming the path.
    fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>>;
}
