//! The overlay2 driver: Docker's `overlay2` layout (through `plies-layerstore`),
//! mounted with `plies-mountopts` plans, features from `plies-kprobe`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use plies_archive::changes::{Change, ChangesError};
use plies_archive::{WhiteoutFormat, XattrNamespace};
use plies_kprobe::Outcome;
use plies_layerstore::{Overlay2Store, StoreOptions};
use plies_mountopts::{LayerPath, MAX_DEPTH, MountMode, OverlayOptions, OverlayStack, UpperDirs};

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::idmap::Remap;
use crate::mounts;
use crate::naive;
use crate::native;
use crate::options::{CreateOptions, Options};
use crate::quota::LayerQuota;
use crate::refs::{Refs, Released};

mod features;
mod staged_apply;

pub use features::forget_probes;
use features::{Features, check_kernel_and_backing};

const NAME: &str = "overlay2";

/// The overlay2 driver.
#[derive(Debug)]
pub struct Overlay2 {
    home: PathBuf,
    scratch: PathBuf,
    store: Overlay2Store,
    features: Features,
    mount_mode: MountMode,
    max_depth: usize,
    quota: LayerQuota,
    remap: Remap,
    /// Layers held by `get`, with their count and whether a mount was made.
    refs: Refs,
    /// Opened with [`Options::read_only`]: no scratch mounts for naive diffs.
    read_only: bool,
}

impl Overlay2 {
    /// Opens (creating if needed) the overlay2 store whose home is `home`
    /// (Docker's `/var/lib/docker/overlay2`), after checking the kernel and the
    /// backing filesystem. Naive diffs are staged in `tmp/` beside the home.
    ///
    /// # Errors
    /// [`Error::NotSupported`], [`Error::IncompatibleFs`] or
    /// [`Error::PrerequisitesMissing`] with the probe's reason;
    /// [`Error::InvalidOption`] for `overlay2.size` without project quota (XFS
    /// mounted with `prjquota`) or a depth the kernel cannot mount;
    /// [`Error::Store`] when the store cannot be opened.
    pub fn open(home: &Path, options: &Options) -> Result<Overlay2> {
        let remap = Remap::new(&options.id_maps)?;
        let home = std::path::absolute(home).map_err(|e| Error::io("resolve", home, e))?;
        // Valid cached answers stand for the checks and the probes: they were
        // made under the same kernel, filesystem and module parameters.
        let features = match home.is_dir().then(|| features::cached(&home)).flatten() {
            Some(f) => f,
            None if options.read_only => {
                if !home.is_dir() {
                    return Err(Error::io(
                        "open",
                        &home,
                        std::io::Error::from(std::io::ErrorKind::NotFound),
                    ));
                }
                features::unprobed(&home)?
            }
            None => Self::check_and_probe(&home)?,
        };
        let fsconfig_needed =
            options.mount_mode == MountMode::Fsconfig || options.max_depth > MAX_DEPTH;
        if fsconfig_needed {
            if let Outcome::Unsupported { reason } = &features.lowerdir_plus {
                return Err(Error::PrerequisitesMissing {
                    driver: NAME,
                    reason: format!("the new mount API with lowerdir+ is needed: {reason}"),
                });
            }
        }
        let store = Overlay2Store::open(
            &home,
            StoreOptions::default()
                .with_max_depth(options.max_depth)
                .with_sweep_on_open(options.sweep_on_open)
                .with_read_only(options.read_only),
        )
        .map_err(Error::store_wide)?;
        let quota = if options.read_only {
            LayerQuota::none(NAME)
        } else {
            let quota = LayerQuota::open(NAME, &home, &features.backing, options.overlay2_size)?;
            remap.own(&home)?;
            remap.own(&home.join("l"))?;
            quota
        };
        let scratch = home
            .parent()
            .map_or_else(|| home.join("..tmp"), |p| p.join("tmp"));
        Ok(Overlay2 {
            home,
            scratch,
            store,
            features,
            mount_mode: options.mount_mode,
            max_depth: options.max_depth,
            quota,
            remap,
            refs: Refs::default(),
            read_only: options.read_only,
        })
    }

    /// The checks that write nothing, then the probes under `home` (made if
    /// missing, and removed again when the driver is refused).
    fn check_and_probe(home: &Path) -> Result<Features> {
        check_kernel_and_backing(&crate::existing_ancestor(home))?;
        let made_home = !home.exists();
        std::fs::create_dir_all(home).map_err(|e| Error::io("mkdir", home, e))?;
        features::features(home).inspect_err(|_| {
            // A refused driver leaves no home behind (`auto` goes on to the next).
            if made_home {
                if let Err(undo) = crate::copy::remove_path(home) {
                    tracing::warn!(home = %home.display(), error = %undo, "could not remove a refused home");
                }
            }
        })
    }

    /// The layer store underneath.
    pub fn store(&self) -> &Overlay2Store {
        &self.store
    }

    /// Whether diffs and changes against the direct parent are read from the
    /// layer's own directory (the kernel's overlay keeps them sound).
    pub fn native_diff(&self) -> bool {
        self.features.native_diff.is_supported()
    }

    /// How many `get`s hold `id` (0 when none).
    pub fn refcount(&self, id: &str) -> usize {
        self.refs.count(id)
    }

    fn ns(&self) -> XattrNamespace {
        if self.features.userxattr {
            XattrNamespace::User
        } else {
            XattrNamespace::Trusted
        }
    }

    fn create_layer(
        &self,
        id: &str,
        parent: Option<&str>,
        opts: &CreateOptions,
        read_write: bool,
    ) -> Result<()> {
        let size = self.quota.size_for(opts, read_write)?;
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        let durable = self.store.options().durable && !opts.deferred_sync;
        self.store
            .create_with(id, parent, durable)
            .map_err(|e| Error::store(id, e))?;
        if let Some(parent) = parent {
            // As Docker 20.10: a parent is only read from now on, so it is
            // mounted read-only (no shared work dir, moby#39780).
            if let Err(e) = self.store.mark_committed(parent) {
                self.undo_create(id);
                return Err(Error::store(parent, e));
            }
        }
        if let Err(e) = self.own_layer_dirs(id) {
            self.undo_create(id);
            return Err(e);
        }
        if let Some(bytes) = size {
            // Before anything is written into the layer: its tree joins the
            // project, and what is created in it later inherits it.
            if let Err(e) = self.quota.limit(id, &self.home.join(id), bytes) {
                self.undo_create(id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes a layer whose creation failed halfway; a failure to is logged
    /// (the caller returns the first error).
    /// `<home>/<id>/merged`, where a layer over lowers is mounted.
    fn merged_dir(&self, id: &str) -> PathBuf {
        self.home.join(id).join("merged")
    }

    /// Where `get` hands `id` out: its mount point when mounted, else its `diff`.
    fn handed_out(&self, id: &str, mounted: bool) -> PathBuf {
        if mounted {
            self.merged_dir(id)
        } else {
            self.store.diff_dir(id)
        }
    }

    fn undo_create(&self, id: &str) {
        if let Err(undo) = self.store.remove(id) {
            tracing::warn!(layer = id, error = %undo, "could not undo a layer creation");
        }
    }

    /// Gives the layer's directories to the container's root (with id maps).
    fn own_layer_dirs(&self, id: &str) -> Result<()> {
        let dir = self.home.join(id);
        self.remap.own(&dir)?;
        self.remap.own(&self.store.diff_dir(id))?;
        let work = dir.join("work");
        if work.is_dir() {
            self.remap.own(&work)?;
        }
        Ok(())
    }

    /// Mounts `id` at its `merged` dir; a failure leaves no mount and no `merged`.
    fn mount(
        &self,
        id: &str,
        label: Option<&str>,
        lowers: Vec<String>,
        committed: bool,
    ) -> Result<PathBuf> {
        let (own, upper) = if committed {
            (Some(format!("{id}/diff")), None)
        } else {
            (None, Some(("diff", "work")))
        };
        let merged = self.merged_dir(id);
        self.mount_at(id, label, own, lowers, upper, &merged)?;
        Ok(merged)
    }

    /// Mounts the stack of `id` at `target` (made if missing): `own_lower` (a
    /// path in home) over `lowers`, with `upper` and work directories of the
    /// layer's directory when given. A failure leaves no mount and no `target`.
    fn mount_at(
        &self,
        id: &str,
        label: Option<&str>,
        own_lower: Option<String>,
        lowers: Vec<String>,
        upper: Option<(&str, &str)>,
        target: &Path,
    ) -> Result<()> {
        let layers: Vec<LayerPath> = own_lower
            .into_iter()
            .chain(lowers)
            .map(|l| LayerPath::in_home(&self.home, l))
            .collect();
        let stack = OverlayStack {
            home: self.home.clone(),
            lowers: layers,
            upper: upper.map(|(upper, work)| UpperDirs {
                upper: LayerPath::in_home(&self.home, format!("{id}/{upper}")),
                work: LayerPath::in_home(&self.home, format!("{id}/{work}")),
            }),
        };
        let mut opts = OverlayOptions::default();
        opts.index_off = self.features.index_off;
        opts.userxattr = self.features.userxattr;
        opts.label = label.filter(|l| !l.is_empty()).map(str::to_owned);
        opts.max_depth = (self.max_depth + 1).min(plies_mountopts::KERNEL_MAX_STACK);
        let plan = plies_mountopts::plan(&stack, &opts, self.mount_mode).map_err(|source| {
            Error::Mount {
                id: id.to_owned(),
                source,
            }
        })?;
        match rustix::fs::mkdir(target, rustix::fs::Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(Error::io("mkdir", target, e)),
        }
        if let Err(e) = self.remap.own(target) {
            let _ = std::fs::remove_dir(target);
            return Err(e);
        }
        if let Err(source) = plies_mountopts::mount::mount_overlay(&plan, target) {
            let _ = std::fs::remove_dir(target);
            return Err(Error::Mount {
                id: id.to_owned(),
                source,
            });
        }
        Ok(())
    }

    fn is_direct_parent(&self, id: &str, parent: Option<&str>) -> Result<bool> {
        let actual = self.store.parent(id).map_err(|e| Error::store(id, e))?;
        Ok(actual.as_deref() == parent)
    }

    fn native_ok(&self, id: &str, parent: Option<&str>) -> Result<bool> {
        let native = self.native_diff() && self.is_direct_parent(id, parent)?;
        if !native && self.read_only {
            return Err(self.read_only_err("a diff through a scratch mount"));
        }
        Ok(native)
    }

    fn read_only_err(&self, what: &'static str) -> Error {
        Error::ReadOnly {
            driver: NAME,
            root: self.home.clone(),
            what,
        }
    }
}

impl Driver for Overlay2 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn root(&self) -> &Path {
        &self.home
    }

    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOptions) -> Result<()> {
        self.create_layer(id, parent, opts, false)
    }

    fn create_read_write(
        &self,
        id: &str,
        parent: Option<&str>,
        opts: &CreateOptions,
    ) -> Result<()> {
        self.create_layer(id, parent, opts, true)
    }

    fn remove(&self, id: &str) -> Result<()> {
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        if !self.store.exists(id) {
            // What a killed create or remove of `id` left goes all the same.
            self.store.remove(id).map_err(|e| Error::store(id, e))?;
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        let merged = self.merged_dir(id);
        mounts::unmount_retrying(id, &merged)?;
        self.refs.forget(id);
        let project = self.quota.project_of(id, &self.home.join(id));
        self.store.remove(id).map_err(|e| Error::store(id, e))?;
        if let Some(project) = project {
            self.quota.release(id, project);
        }
        Ok(())
    }

    fn get(&self, id: &str, mount_label: Option<&str>) -> Result<PathBuf> {
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        if let Some(mounted) = self.refs.hold_again(id) {
            return Ok(self.handed_out(id, mounted));
        }
        let (lowers, committed) = self
            .store
            .mount_facts(id)
            .map_err(|e| Error::store(id, e))?;
        let merged = self.merged_dir(id);
        if !lowers.is_empty() && mounts::is_mount_point(&merged) {
            // Mounted by another process that left it to its caller (`plies
            // mount`): used as it is, and counted as held by that caller too, so
            // the matching `put` leaves it mounted.
            self.refs.hold(id, 2, true);
            return Ok(merged);
        }
        let (path, mounted) = if lowers.is_empty() {
            (self.store.diff_dir(id), false)
        } else {
            (self.mount(id, mount_label, lowers, committed)?, true)
        };
        self.refs.hold(id, 1, mounted);
        Ok(path)
    }

    fn put(&self, id: &str) -> Result<()> {
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        match self.refs.release(id) {
            Released::NotHeld => return Err(Error::NotMounted { id: id.to_owned() }),
            Released::StillHeld | Released::Last { mounted: false } => return Ok(()),
            Released::Last { mounted: true } => {}
        }
        let merged = self.merged_dir(id);
        if let Err(e) = mounts::detach(id, &merged) {
            self.refs.hold(id, 1, true);
            return Err(e);
        }
        // Docker removes `merged` too: removing a mount point detaches the
        // copies of the mount that mount namespaces made while it was mounted
        // (a container started meanwhile holds one), which would otherwise keep
        // the layer's upper and work dirs in use by a second overlay. It costs
        // a directory's block freed here and allocated again by the next get.
        if let Err(e) = std::fs::remove_dir(&merged) {
            tracing::warn!(layer = id, error = %e, "could not remove merged");
        }
        Ok(())
    }

    fn detach(&self, id: &str) -> Result<bool> {
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        if !self.store.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        let merged = self.merged_dir(id);
        let mut undone = false;
        while mounts::is_mount_point(&merged) {
            undone |= mounts::detach(id, &merged)?;
        }
        self.refs.forget(id);
        match std::fs::remove_dir(&merged) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(layer = id, error = %e, "could not remove merged"),
        }
        Ok(undone)
    }

    fn list(&self) -> Result<Vec<String>> {
        self.store.list().map_err(Error::store_wide)
    }

    fn fsck(&self, repair: bool) -> Result<plies_layerstore::FsckReport> {
        self.store.fsck(repair).map_err(Error::store_wide)
    }

    fn exists(&self, id: &str) -> bool {
        self.store.exists(id)
    }

    fn status(&self) -> Vec<(String, String)> {
        // In auto mode each mount picks its plan: mount(2) data while it fits,
        // else the new mount API; say which of them this kernel allows.
        let mode = match (self.mount_mode, self.features.lowerdir_plus.is_supported()) {
            (MountMode::Auto, true) => "auto (legacy, fsconfig beyond its limits)",
            (MountMode::Auto, false) => "auto (legacy only: no lowerdir+)",
            (MountMode::Legacy, _) => "legacy",
            (MountMode::Fsconfig, _) => "fsconfig",
        };
        vec![
            (
                "Backing Filesystem".to_owned(),
                self.features.backing.clone(),
            ),
            (
                "Supports d_type".to_owned(),
                self.features.d_type.is_supported().to_string(),
            ),
            (
                "Native Overlay Diff".to_owned(),
                self.native_diff().to_string(),
            ),
            ("userxattr".to_owned(), self.features.userxattr.to_string()),
            ("Mount Mode".to_owned(), mode.to_owned()),
            ("Max Depth".to_owned(), self.max_depth.to_string()),
        ]
    }

    fn metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let m = self.store.metadata(id).map_err(|e| Error::store(id, e))?;
        Ok(m.to_map()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect())
    }

    fn layer_files(&self, id: &str) -> Result<PathBuf> {
        if !self.store.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        Ok(self.store.diff_dir(id))
    }

    fn mount_path(&self, id: &str) -> Result<PathBuf> {
        if !self.store.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        let lowers = self
            .store
            .lower_entries(id)
            .map_err(|e| Error::store(id, e))?;
        Ok(self.handed_out(id, !lowers.is_empty()))
    }

    fn parent(&self, id: &str) -> Result<Option<String>> {
        self.store.parent(id).map_err(|e| Error::store(id, e))
    }

    fn cleanup(&self) -> Result<()> {
        let mut first = None;
        for mount in mounts::mounts_under(&self.home) {
            let id = mount
                .strip_prefix(&self.home)
                .ok()
                .and_then(|p| p.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            let _guard = match crate::locks::lock_mount_owner(self.store.locks(), &id) {
                Ok(g) => g,
                Err(e) => {
                    first.get_or_insert(e);
                    continue;
                }
            };
            match mounts::detach(&id, &mount) {
                Ok(_) => {
                    if self.refs.forget(&id) {
                        let _ = std::fs::remove_dir(&mount);
                    }
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        self.refs.clear();
        first.map_or(Ok(()), Err)
    }

    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
        if !self.native_ok(id, parent)? {
            return naive::diff(self, id, parent, &self.scratch, false, self.remap.maps());
        }
        native::export(
            id,
            &self.store.diff_dir(id),
            &self
                .remap
                .maps()
                .export_options(WhiteoutFormat::Overlay(self.ns())),
        )
    }

    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        if !self.native_ok(id, parent)? {
            return naive::diff_size(self, id, parent, &self.scratch);
        }
        native::size(id, &self.store.diff_dir(id))
    }

    fn apply_diff(&self, id: &str, parent: Option<&str>, diff: &mut dyn Read) -> Result<u64> {
        let own = self.store.diff_dir(id);
        if !self.is_direct_parent(id, parent)? {
            return self.apply_naive(id, diff).map(|s| s.size);
        }
        {
            let _guard = crate::locks::lock(self.store.locks(), &[id])?;
            let opts = self
                .remap
                .maps()
                .apply_options(WhiteoutFormat::Overlay(self.ns()));
            let in_use = self.refcount(id) > 0 || mounts::is_mount_point(&self.merged_dir(id));
            native::apply_into(id, &own, diff, &opts, !in_use)?;
        }
        self.diff_size(id, parent)
    }

    fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>> {
        if !self.native_ok(id, parent)? {
            return naive::changes(self, id, parent, &self.scratch);
        }
        let lowers = self.store.lowers(id).map_err(|e| Error::store(id, e))?;
        match plies_archive::changes::from_overlay_upper(
            &self.store.diff_dir(id),
            &lowers,
            self.ns(),
        ) {
            Ok(list) => Ok(list),
            Err(ChangesError::RedirectedDir { .. }) if self.read_only => {
                Err(self.read_only_err("listing changes through a scratch mount"))
            }
            Err(ChangesError::RedirectedDir { .. }) => {
                naive::changes(self, id, parent, &self.scratch)
            }
            Err(source) => Err(Error::Changes {
                id: id.to_owned(),
                source,
            }),
        }
    }
}
