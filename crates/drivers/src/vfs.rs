//! The vfs driver: each layer is a full copy of its parent plus its own changes,
//! in `<root>/dir/<id>`. No mounts, so it runs anywhere; it is the fallback and
//! the reference the other drivers are tested against.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use plies_archive::changes::Change;
use plies_layerstore::{
    APPLYING_SUFFIX as APPLYING, CREATING_SUFFIX as CREATING, REMOVING_SUFFIX as REMOVING,
};
use rustix::fs::{Mode, RenameFlags};

use crate::copy::{copy_tree, remove_path};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::idmap::Remap;
use crate::naive;
use crate::native;
use crate::options::{CreateOptions, Options};

/// The copy-based driver.
#[derive(Debug)]
pub struct Vfs {
    root: PathBuf,
    dir: PathBuf,
    scratch: PathBuf,
    remap: Remap,
    locks: plies_layerstore::LayerLocks,
    refs: Mutex<HashMap<String, usize>>,
    /// Layers known to hold exactly their parent's tree, with that parent: made
    /// by this handle and since neither handed out by `get` nor applied to.
    pristine: Mutex<HashMap<String, Option<String>>>,
}

impl Vfs {
    /// Opens (creating if needed) a vfs store at `root`, sweeping layers a crash
    /// left half-created or half-removed. With [id maps](crate::IdMaps), `root`
    /// is left traversable (`0701`) and `root/dir` and every layer directory
    /// belong to the container's root, as in Docker.
    ///
    /// # Errors
    /// [`Error::Io`] when the root cannot be made or read; [`Error::UnknownOption`]
    /// for any `overlay2.*` option given; [`Error::UnmappedRoot`] for id maps
    /// without the container's root.
    pub fn open(root: &Path, options: &Options) -> Result<Vfs> {
        if let Some(key) = options.first_overlay2_key() {
            return Err(Error::UnknownOption {
                key: key.to_owned(),
            });
        }
        let remap = Remap::new(&options.id_maps)?;
        let root = std::path::absolute(root).map_err(|e| Error::io("resolve", root, e))?;
        let dir = root.join("dir");
        let scratch = root.join("tmp");
        for d in [&root, &dir] {
            mkdir_mode(d, 0o700)?;
        }
        if !options.id_maps.is_empty() {
            // The container's root walks through `root` to its layer.
            rustix::fs::chmod(&root, Mode::from_raw_mode(0o701))
                .map_err(|e| Error::io("chmod", &root, e))?;
            remap.own(&dir)?;
        }
        let locks = plies_layerstore::LayerLocks::open(&root).map_err(Error::store_wide)?;
        if options.sweep_on_open {
            sweep(&dir, &locks)?;
        }
        Ok(Vfs {
            root,
            dir,
            scratch,
            remap,
            locks,
            refs: Mutex::new(HashMap::new()),
            pristine: Mutex::new(HashMap::new()),
        })
    }

    fn layer(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn check_id(id: &str) -> Result<()> {
        plies_layerstore::validate_id(id).map_err(|reason| Error::InvalidId {
            id: id.to_owned(),
            reason,
        })
    }

    fn create_layer(&self, id: &str, parent: Option<&str>, opts: &CreateOptions) -> Result<()> {
        Self::check_id(id)?;
        if let Some(key) = opts.storage_opt.keys().next() {
            return Err(Error::StorageOptUnsupported {
                driver: "vfs",
                key: key.clone(),
                reason: "vfs has no quota".to_owned(),
            });
        }
        let _guard = crate::locks::lock(&self.locks, &[id])?;
        if self.exists(id) {
            return Err(Error::LayerExists { id: id.to_owned() });
        }
        let creating = self.dir.join(format!("{id}{CREATING}"));
        let done = self.fill(&creating, parent).and_then(|()| {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &creating,
                rustix::fs::CWD,
                self.layer(id),
                RenameFlags::NOREPLACE,
            )
            .map_err(|e| Error::io("rename", &creating, e))
        });
        if done.is_err() {
            if let Err(e) = remove_path(&creating) {
                tracing::warn!(layer = id, error = %e, "half-created layer left behind");
            }
        } else {
            self.pristine()
                .insert(id.to_owned(), parent.map(str::to_owned));
        }
        done
    }

    /// Makes `dir` afresh as the new layer `id` on `parent`: owned by the
    /// container's root, holding a copy of the parent's tree.
    fn fill(&self, dir: &Path, parent: Option<&str>) -> Result<()> {
        remove_path(dir)?;
        mkdir_mode(dir, 0o755)?;
        self.remap.own(dir)?;
        match parent {
            Some(p) => {
                let _parent_guard = crate::locks::lock(&self.locks, &[p])?;
                Self::check_id(p)?;
                if !self.exists(p) {
                    Err(Error::NoSuchLayer { id: p.to_owned() })
                } else {
                    copy_tree(&self.layer(p), dir)
                }
            }
            None => Ok(()),
        }
    }

    fn pristine(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<String>>> {
        self.pristine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts a layer that a failed apply wrote into back to its parent's tree.
    fn rebuild(&self, id: &str, parent: Option<&str>) -> Result<()> {
        let fresh = self.dir.join(format!("{id}{CREATING}"));
        let made = self
            .fill(&fresh, parent)
            .and_then(|()| native::exchange(&fresh, &self.layer(id)));
        let removed = remove_path(&fresh);
        made.and(removed)
    }
}

fn mkdir_mode(path: &Path, mode: u32) -> Result<()> {
    match rustix::fs::mkdir(path, Mode::from_raw_mode(mode)) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(Error::io("mkdir", path, e)),
    }
}

/// Deletes the `-creating`, `-removing` and `-applying` entries under `dir`
/// whose owner is gone (their layer's lock is free).
fn sweep(dir: &Path, locks: &plies_layerstore::LayerLocks) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let owner = [CREATING, REMOVING, APPLYING]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|id| plies_layerstore::validate_id(id).is_ok());
        let Some(owner) = owner else {
            continue;
        };
        // Only what a dead owner left: work in progress holds the lock.
        let Some(_guard) = locks
            .try_lock(&[owner])
            .map_err(|e| Error::store(owner, e))?
        else {
            continue;
        };
        remove_path(&entry.path())?;
    }
    Ok(())
}

impl Driver for Vfs {
    fn name(&self) -> &'static str {
        "vfs"
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOptions) -> Result<()> {
        self.create_layer(id, parent, opts)
    }

    fn create_read_write(
        &self,
        id: &str,
        parent: Option<&str>,
        opts: &CreateOptions,
    ) -> Result<()> {
        self.create_layer(id, parent, opts)
    }

    fn remove(&self, id: &str) -> Result<()> {
        Self::check_id(id)?;
        let guard = crate::locks::lock(&self.locks, &[id])?;
        let path = self.layer(id);
        let removing = self.dir.join(format!("{id}{REMOVING}"));
        match rustix::fs::rename(&path, &removing) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) => {
                // What a killed create or remove of `id` left goes all the same.
                for suffix in [CREATING, REMOVING, APPLYING] {
                    remove_path(&self.dir.join(format!("{id}{suffix}")))?;
                }
                return Err(Error::NoSuchLayer { id: id.to_owned() });
            }
            Err(e) => return Err(Error::io("rename", &path, e)),
        }
        // Gone for good before the caller forgets the layer: a crash must not
        // bring back a directory whose record was deleted.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync", &self.dir, e))?;
        self.refs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        self.pristine().remove(id);
        remove_path(&removing)?;
        guard.forget(id);
        Ok(())
    }

    fn get(&self, id: &str, _mount_label: Option<&str>) -> Result<PathBuf> {
        Self::check_id(id)?;
        let _guard = crate::locks::lock(&self.locks, &[id])?;
        if !self.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        self.pristine().remove(id);
        *self
            .refs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default() += 1;
        Ok(self.layer(id))
    }

    fn put(&self, id: &str) -> Result<()> {
        let _guard = crate::locks::lock(&self.locks, &[id])?;
        let mut refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
        match refs.get_mut(id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                Ok(())
            }
            Some(_) => {
                refs.remove(id);
                Ok(())
            }
            None => Err(Error::NotMounted { id: id.to_owned() }),
        }
    }

    fn detach(&self, id: &str) -> Result<bool> {
        Self::check_id(id)?;
        let _guard = crate::locks::lock(&self.locks, &[id])?;
        if !self.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        // A vfs layer is its own directory: nothing is ever mounted.
        self.refs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        Ok(false)
    }

    fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io("read", &self.dir, e))? {
            let entry = entry.map_err(|e| Error::io("read", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if plies_layerstore::validate_id(&name).is_ok() && self.exists(&name) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn fsck(&self, repair: bool) -> Result<plies_layerstore::FsckReport> {
        use plies_layerstore::Finding;
        let mut report = plies_layerstore::FsckReport::default();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io("read", &self.dir, e))? {
            let entry = entry.map_err(|e| Error::io("read", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = [CREATING, REMOVING, APPLYING]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|id| plies_layerstore::validate_id(id).is_ok());
            let finding = || Finding::Leftover {
                path: Path::new("dir").join(&name),
            };
            match owner {
                Some(owner) => {
                    // Work in progress holds the layer's lock and is no damage.
                    let Some(_guard) = self
                        .locks
                        .try_lock(&[owner])
                        .map_err(|e| Error::store(owner, e))?
                    else {
                        continue;
                    };
                    if !entry.path().exists() {
                        continue;
                    }
                    report
                        .handle(finding(), repair, || {
                            remove_path(&entry.path()).map_err(|e| plies_layerstore::Error::Io {
                                op: "remove",
                                path: entry.path(),
                                source: std::io::Error::other(e.to_string()),
                            })
                        })
                        .map_err(|e| Error::store(owner, e))?;
                }
                None if plies_layerstore::validate_id(&name).is_err() => report.push(
                    Finding::UnexpectedEntry {
                        path: Path::new("dir").join(&name),
                    },
                    plies_layerstore::Repair::Unrepairable,
                ),
                None => {}
            }
        }
        Ok(report)
    }

    fn exists(&self, id: &str) -> bool {
        Self::check_id(id).is_ok()
            && rustix::fs::statat(
                rustix::fs::CWD,
                self.layer(id),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
    }

    fn status(&self) -> Vec<(String, String)> {
        let backing = plies_kprobe::backing_fs(&self.root)
            .value()
            .map(|fs| {
                fs.name
                    .map_or_else(|| format!("{:#x}", fs.magic), str::to_owned)
            })
            .unwrap_or_else(|| "<unknown>".to_owned());
        vec![
            ("Root Dir".to_owned(), self.root.display().to_string()),
            ("Backing Filesystem".to_owned(), backing),
        ]
    }

    fn metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        if !self.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        Ok(BTreeMap::new())
    }

    fn layer_files(&self, id: &str) -> Result<PathBuf> {
        Self::check_id(id)?;
        if !self.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        Ok(self.layer(id))
    }

    fn mount_path(&self, id: &str) -> Result<PathBuf> {
        // `get` hands the layer's own directory out.
        self.layer_files(id)
    }

    fn parent(&self, id: &str) -> Result<Option<String>> {
        if !self.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        Ok(None)
    }

    fn cleanup(&self) -> Result<()> {
        // Nothing is ever mounted.
        Ok(())
    }

    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
        naive::diff(self, id, parent, &self.scratch, true, self.remap.maps())
    }

    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        naive::diff_size(self, id, parent, &self.scratch)
    }

    fn apply_diff(&self, id: &str, _parent: Option<&str>, diff: &mut dyn Read) -> Result<u64> {
        Self::check_id(id)?;
        let _guard = crate::locks::lock(&self.locks, &[id])?;
        if !self.exists(id) {
            return Err(Error::NoSuchLayer { id: id.to_owned() });
        }
        let path = self.layer(id);
        let opts = self
            .remap
            .maps()
            .apply_options(plies_archive::WhiteoutFormat::Merged);
        let pristine = self.pristine().remove(id);
        let rebuildable = pristine.filter(|p| p.as_deref().is_none_or(|p| self.exists(p)));
        let stats = match rebuildable {
            // Still a plain copy of its parent: applied in place and, should the
            // apply fail, copied afresh.
            Some(parent) => plies_archive::apply(diff, &path, &opts).map_err(|source| {
                if let Err(e) = self.rebuild(id, parent.as_deref()) {
                    tracing::warn!(layer = id, error = %e, "a failed apply left files behind");
                }
                Error::Archive {
                    id: id.to_owned(),
                    source,
                }
            })?,
            None => {
                let held = self
                    .refs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(id);
                native::apply_into(id, &path, diff, &opts, !held)?
            }
        };
        Ok(stats.size)
    }

    fn changes(&self, id: &str, parent: Option<&str>) -> Result<Vec<Change>> {
        naive::changes(self, id, parent, &self.scratch)
    }
}
