//! The aufs driver: Docker's `aufs` layout (`layers/ diff/ mnt/`, through
//! `plies-layerstore`), mounted with the call lists of `plies-mountopts` through
//! a [`Mounter`], so that the mounts can be recorded where no kernel has aufs.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plies_archive::WhiteoutFormat;
use plies_archive::changes::Change;
use plies_kprobe::Outcome;
use plies_layerstore::{AufsStore, StoreOptions};
use plies_mountopts::AufsStack;
use rustix::io::Errno;

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::idmap::Remap;
use crate::mounts::BUSY_ATTEMPTS;
use crate::naive;
use crate::native;
use crate::options::{CreateOptions, Options};
use crate::refs::{Refs, Released};

mod alias;
mod mounter;
mod recording;
mod staged_apply;

pub use mounter::{DEFAULT_BRANCH_MAX, KernelMounter, Mounter};
pub use recording::{Recorded, RecordingMounter};

const NAME: &str = "aufs";
/// aufs's pseudo-link directory at the root of a branch.
const PSEUDO_LINKS: &str = ".wh..wh.plnk";

/// The aufs driver.
#[derive(Debug)]
pub struct Aufs {
    root: PathBuf,
    scratch: PathBuf,
    store: AufsStore,
    mounter: Arc<dyn Mounter>,
    backing: String,
    dirperm1: bool,
    branch_max: usize,
    remap: Remap,
    refs: Refs,
}

impl Aufs {
    /// Opens (creating if needed) the aufs store at `root` (Docker's
    /// `/var/lib/docker/aufs`), mounting through the kernel.
    ///
    /// # Errors
    /// [`Error::NotSupported`] when the kernel has no aufs (or this is a user
    /// namespace), [`Error::IncompatibleFs`] over btrfs, ecryptfs or aufs;
    /// [`Error::UnknownOption`] for any `overlay2.*` option.
    pub fn open(root: &Path, options: &Options) -> Result<Aufs> {
        let fs = plies_kprobe::filesystems();
        let present = match &fs {
            Outcome::Supported { value } => plies_kprobe::aufs_present(value),
            Outcome::Unsupported { reason } => Outcome::unsupported(reason.clone()),
        };
        if let Outcome::Unsupported { reason } = present {
            return Err(Error::NotSupported {
                driver: NAME,
                reason,
            });
        }
        if plies_kprobe::in_user_namespace() {
            return Err(Error::NotSupported {
                driver: NAME,
                reason: "aufs cannot be used in a user namespace".to_owned(),
            });
        }
        Self::open_with(root, options, Arc::new(KernelMounter))
    }

    /// [`Aufs::open`] with mounts made by `mounter` (the kernel's aufs is not
    /// looked for: the mounter stands in for it, and answers whether mounts take
    /// `dirperm1` and how many branches they stack).
    ///
    /// # Errors
    /// As [`Aufs::open`], but for the kernel check.
    pub fn open_with(root: &Path, options: &Options, mounter: Arc<dyn Mounter>) -> Result<Aufs> {
        if let Some(key) = options.first_overlay2_key() {
            return Err(Error::UnknownOption {
                key: key.to_owned(),
            });
        }
        let remap = Remap::new(&options.id_maps)?;
        let root = std::path::absolute(root).map_err(|e| Error::io("resolve", root, e))?;
        let probe_dir = crate::existing_ancestor(&root);
        let backing = match plies_kprobe::backing_fs(&probe_dir) {
            Outcome::Supported { value } => value,
            Outcome::Unsupported { reason } => {
                return Err(Error::IncompatibleFs {
                    driver: NAME,
                    root,
                    reason,
                });
            }
        };
        if let Outcome::Unsupported { reason } = plies_kprobe::aufs_backing_ok(&backing) {
            return Err(Error::IncompatibleFs {
                driver: NAME,
                root,
                reason,
            });
        }
        let store = AufsStore::open(
            &root,
            StoreOptions::default()
                .with_sweep_on_open(options.sweep_on_open)
                .with_read_only(options.read_only),
        )
        .map_err(Error::store_wide)?;
        if !options.read_only {
            for dir in ["", "mnt", "diff", "layers"] {
                remap.own(&root.join(dir))?;
            }
        }
        // A read-only open mounts nothing, so needs no probe of dirperm1.
        let dirperm1 = !options.read_only && {
            // Probe scratch goes to the store's probe directory, never the layout.
            let dir = root
                .join(plies_layerstore::STORE_DIR)
                .join(plies_layerstore::PROBE_DIR);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("mkdir", &dir, e))?;
            let _probing = crate::locks::lock(store.locks(), &[plies_layerstore::PROBE_LOCK])?;
            plies_layerstore::sweep_probe_scratch(&dir).map_err(Error::store_wide)?;
            mounter.dirperm1(&dir)
        };
        let branch_max = mounter.branch_max().max(1);
        let scratch = root
            .parent()
            .map_or_else(|| root.join("..tmp"), |p| p.join("tmp"));
        Ok(Aufs {
            root,
            scratch,
            store,
            mounter,
            backing: backing.to_string(),
            dirperm1,
            branch_max,
            remap,
            refs: Refs::default(),
        })
    }

    /// The layer store underneath.
    pub fn store(&self) -> &AufsStore {
        &self.store
    }

    /// How many `get`s hold `id` (0 when none).
    pub fn refcount(&self, id: &str) -> usize {
        self.refs.count(id)
    }

    /// The pseudo-links in layer `id`'s branch: the entries of its
    /// `.wh..wh.plnk` directory, sorted.
    ///
    /// aufs keeps a file with other hard links in the lower branches there when
    /// it copies the file up, and makes the other links in the branch only when
    /// the pseudo-links are flushed (`auplink`, at unmount). Until then the
    /// branch lacks those links, and so do its diff and changes, which warn
    /// (through `tracing`) when this list is not empty.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`]; [`Error::Io`] when the directory cannot be read.
    pub fn pseudo_links(&self, id: &str) -> Result<Vec<PathBuf>> {
        if !self.store.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        let dir = self.store.diff_dir(id).join(PSEUDO_LINKS);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            out.push(entry.map_err(|e| Error::io("read", &dir, e))?.path());
        }
        out.sort();
        Ok(out)
    }

    /// Where `get` hands `id` out: `mnt/<id>` when mounted, else `diff/<id>`.
    fn handed_out(&self, id: &str, mounted: bool) -> PathBuf {
        if mounted {
            self.store.mnt_dir(id)
        } else {
            self.store.diff_dir(id)
        }
    }

    fn report_pseudo_links(&self, id: &str) {
        match self.pseudo_links(id) {
            Ok(links) if links.is_empty() => {}
            Ok(links) => tracing::warn!(
                layer = id,
                count = links.len(),
                first = %links[0].display(),
                "aufs pseudo-links not flushed: hard links to these files are missing from the branch and its diff"
            ),
            Err(e) => {
                tracing::warn!(layer = id, error = %e, "could not read the aufs pseudo-links")
            }
        }
    }

    fn is_direct_parent(&self, id: &str, parent: Option<&str>) -> Result<bool> {
        let actual = self.store.parent(id).map_err(|e| Error::store(id, e))?;
        Ok(actual.as_deref() == parent)
    }

    fn unmount(&self, id: &str, retries: bool) -> Result<()> {
        self.unmount_at(id, &self.store.mnt_dir(id), retries)
    }

    /// Unmounts `target`, a mount of layer `id`; nothing mounted there is fine.
    fn unmount_at(&self, id: &str, target: &Path, retries: bool) -> Result<()> {
        let target = target.to_path_buf();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.mounter.unmount(&target) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(Errno::BUSY.raw_os_error()) && retries => {
                    if attempts >= BUSY_ATTEMPTS {
                        return Err(Error::Busy {
                            id: id.to_owned(),
                            path: target,
                            attempts,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(source) => {
                    return Err(Error::Unmount {
                        id: id.to_owned(),
                        path: target,
                        source,
                    });
                }
            }
        }
    }
}

impl Driver for Aufs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOptions) -> Result<()> {
        if let Some(key) = opts.storage_opt.keys().next() {
            return Err(Error::StorageOptUnsupported {
                driver: NAME,
                key: key.clone(),
                reason: "aufs has no storage options".to_owned(),
            });
        }
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        if let Some(parent) = parent.filter(|p| self.store.exists(p)) {
            // Its branches: its own, its parent's and the parent's lowers. aufs
            // refuses one past its maximum (ENOSPC) only when mounting.
            let lowers = 1 + self
                .store
                .lowers(parent)
                .map_err(|e| Error::store(parent, e))?
                .len();
            if lowers + 1 > self.branch_max {
                return Err(Error::store(
                    id,
                    plies_layerstore::Error::TooDeep {
                        id: id.to_owned(),
                        depth: lowers,
                        max: self.branch_max - 1,
                    },
                ));
            }
        }
        self.store
            .create(id, parent)
            .map_err(|e| Error::store(id, e))?;
        let owned = self
            .remap
            .own(&self.store.diff_dir(id))
            .and_then(|()| self.remap.own(&self.store.mnt_dir(id)));
        if owned.is_err() {
            if let Err(e) = self.store.remove(id) {
                tracing::warn!(layer = id, error = %e, "could not undo a layer creation");
            }
        }
        owned
    }

    fn create_read_write(
        &self,
        id: &str,
        parent: Option<&str>,
        opts: &CreateOptions,
    ) -> Result<()> {
        self.create(id, parent, opts)
    }

    fn remove(&self, id: &str) -> Result<()> {
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        if !self.store.exists(id) {
            // What a killed create or remove of `id` left goes all the same.
            self.store.remove(id).map_err(|e| Error::store(id, e))?;
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        if self.refs.is_mounted(id) {
            self.unmount(id, true)?;
        }
        self.refs.forget(id);
        alias::forget(self.store.root(), &self.store.diff_dir(id));
        self.store.remove(id).map_err(|e| Error::store(id, e))
    }

    fn get(&self, id: &str, mount_label: Option<&str>) -> Result<PathBuf> {
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        if let Some(mounted) = self.refs.hold_again(id) {
            return Ok(self.handed_out(id, mounted));
        }
        let lowers = self.store.lowers(id).map_err(|e| Error::store(id, e))?;
        if lowers.is_empty() {
            self.refs.hold(id, 1, false);
            return Ok(self.handed_out(id, false));
        }
        let root = self.store.root();
        let stack = AufsStack {
            rw: alias::mountable(root, self.store.diff_dir(id))?,
            ro: lowers
                .into_iter()
                .map(|p| alias::mountable(root, p))
                .collect::<Result<_>>()?,
            label: mount_label.filter(|l| !l.is_empty()).map(str::to_owned),
            dirperm1: self.dirperm1,
        };
        let mount_err = |source| Error::Mount {
            id: id.to_owned(),
            source,
        };
        let calls = plies_mountopts::plan_aufs(&stack).map_err(mount_err)?;
        let target = self.store.mnt_dir(id);
        self.mounter.mount(&calls, &target).map_err(mount_err)?;
        self.refs.hold(id, 1, true);
        Ok(target)
    }

    fn put(&self, id: &str) -> Result<()> {
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        match self.refs.release(id) {
            Released::NotHeld => Err(Error::NotMounted { id: id.to_owned() }),
            Released::StillHeld | Released::Last { mounted: false } => Ok(()),
            Released::Last { mounted: true } => self.unmount(id, false).inspect_err(|_| {
                self.refs.hold(id, 1, true);
            }),
        }
    }

    fn detach(&self, id: &str) -> Result<bool> {
        let _guard = crate::locks::lock(self.store.locks(), &[id])?;
        if !self.store.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        let counted = self.refs.is_mounted(id);
        let undone = if counted {
            self.unmount(id, true)?;
            true
        } else {
            // Another process's mount: the kernel knows whether there is one.
            let target = self.store.mnt_dir(id);
            match self.mounter.unmount(&target) {
                Ok(()) => true,
                Err(e)
                    if [Errno::INVAL, Errno::NOENT]
                        .iter()
                        .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
                {
                    false
                }
                Err(source) => {
                    return Err(Error::Unmount {
                        id: id.to_owned(),
                        path: target,
                        source,
                    });
                }
            }
        };
        self.refs.forget(id);
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
        let dirs = self.store.list().map_or(0, |l| l.len());
        vec![
            ("Root Dir".to_owned(), self.root.display().to_string()),
            ("Backing Filesystem".to_owned(), self.backing.clone()),
            ("Dirs".to_owned(), dirs.to_string()),
            ("Dirperm1 Supported".to_owned(), self.dirperm1.to_string()),
            ("Max Branches".to_owned(), self.branch_max.to_string()),
        ]
    }

    fn metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        if !self.store.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        Ok(BTreeMap::new())
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
        let parent = self.store.parent(id).map_err(|e| Error::store(id, e))?;
        Ok(self.handed_out(id, parent.is_some()))
    }

    fn parent(&self, id: &str) -> Result<Option<String>> {
        self.store.parent(id).map_err(|e| Error::store(id, e))
    }

    fn cleanup(&self) -> Result<()> {
        let held = self.refs.mounted();
        let mut first = None;
        for id in held {
            let _guard = match crate::locks::lock_mount_owner(self.store.locks(), &id) {
                Ok(g) => g,
                Err(e) => {
                    first.get_or_insert(e);
                    continue;
                }
            };
            if let Err(e) = self.unmount(&id, false) {
                first.get_or_insert(e);
            }
        }
        self.refs.clear();
        first.map_or(Ok(()), Err)
    }

    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
        if !self.is_direct_parent(id, parent)? {
            return naive::diff(self, id, parent, &self.scratch, false, self.remap.maps());
        }
        // aufs's own `.wh..wh.*` entries are left out by the export.
        self.report_pseudo_links(id);
        native::export(
            id,
            &self.store.diff_dir(id),
            &self.remap.maps().export_options(WhiteoutFormat::Aufs),
        )
    }

    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        if !self.is_direct_parent(id, parent)? {
            return naive::diff_size(self, id, parent, &self.scratch);
        }
        native::size(id, &self.store.diff_dir(id))
    }

    fn apply_diff(&self, id: &str, parent: Option<&str>, diff: &mut dyn Read) -> Result<u64> {
        let own = self.store.diff_dir(id);
        let stats = if self.is_direct_parent(id, parent)? {
            let _guard = crate::locks::lock(self.store.locks(), &[id])?;
            let opts = self.remap.maps().apply_options(WhiteoutFormat::Aufs);
            native::apply_into(id, &own, diff, &opts, self.refcount(id) == 0)?
        } else {
            self.apply_naive(id, diff)?
        };
        if stats.skipped_aufs_meta > 0 {
            // Older Docker only warned that such links were not supported.
            tracing::info!(
                layer = id,
                entries = stats.skipped_aufs_meta,
                "the diff held aufs private entries (.wh..wh.*): left out, hard links to pseudo-links resolved"
            );
        }
        self.diff_size(id, parent)
    }

    fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>> {
        if !self.is_direct_parent(id, parent)? {
            return naive::changes(self, id, parent, &self.scratch);
        }
        self.report_pseudo_links(id);
        let lowers = self.store.lowers(id).map_err(|e| Error::store(id, e))?;
        plies_archive::changes::from_aufs_branch(&self.store.diff_dir(id), &lowers).map_err(
            |source| Error::Changes {
                id: id.to_owned(),
                source,
            },
        )
    }
}
