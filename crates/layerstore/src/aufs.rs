//! The aufs store: `<root>/layers/<id>` (ancestors, one per line, nearest first),
//! `<root>/diff/<id>/` and `<root>/mnt/<id>/`.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, unlinkat};
use rustix::io::Errno;

use crate::disk::{
    file_type, is_mount_point, list_names, make_dir, open_or_make_dir_with, open_store_root_with,
    read_small_file, remove_tree, rename_noreplace, sync, utf8_name, write_new_file,
};
use crate::error::{Error, Result, io_err};
use crate::fsck::{Finding, FsckReport, Repair};
use crate::id::{APPLYING_SUFFIX, CREATING_SUFFIX, REMOVING_SUFFIX, check_id, validate_id};
use crate::locks::LayerLocks;
use crate::options::StoreOptions;

/// Mode of the root and of `layers/`, `diff/`, `mnt/`.
const ROOT_MODE: u32 = 0o700;
/// Mode of `diff/<id>` and `mnt/<id>`.
const LAYER_DIR_MODE: u32 = 0o755;
/// Mode of `layers/<id>`.
const LAYERS_FILE_MODE: u32 = 0o644;

/// A Docker-compatible aufs layer store rooted at Docker's `/var/lib/docker/aufs`.
///
/// `layers/<id>` is what makes a layer exist: create writes it last (by a rename)
/// and remove takes it away first, so a crash leaves the whole layer or nothing.
#[derive(Debug)]
pub struct AufsStore {
    root: PathBuf,
    layers_fd: OwnedFd,
    diff_fd: OwnedFd,
    mnt_fd: OwnedFd,
    opts: StoreOptions,
    locks: LayerLocks,
}

/// Where a new aufs layer lives, as returned by [`AufsStore::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AufsPaths {
    /// `<root>/diff/<id>`: the layer's files.
    pub diff: PathBuf,
    /// `<root>/mnt/<id>`: its mount point.
    pub mnt: PathBuf,
    /// `<root>/layers/<id>`: its ancestors.
    pub layers_file: PathBuf,
}

/// Parses an aufs `layers/<id>` file: one id per line, nearest ancestor first,
/// each line ending in a newline (a missing last newline is accepted).
///
/// Returns `(line, reason)` for the first bad line (1-based).
pub(crate) fn parse_layers_file(bytes: &[u8], max: usize) -> Result<Vec<String>, (usize, String)> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if i >= max {
            return Err((n, format!("more than {max} ancestors")));
        }
        let id = std::str::from_utf8(line).map_err(|_| (n, "not UTF-8".to_owned()))?;
        validate_id(id).map_err(|e| (n, format!("invalid id {id:?}: {e}")))?;
        if out.iter().any(|o| o == id) {
            return Err((n, format!("{id} appears twice")));
        }
        out.push(id.to_owned());
    }
    Ok(out)
}

impl AufsStore {
    /// Opens the store at `root`, creating `root`, `layers/`, `diff/`, `mnt/` (0700)
    /// if missing, and (with [`StoreOptions::sweep_on_open`], the default)
    /// finishes or rolls back what a crash interrupted ([`AufsStore::sweep`]).
    pub fn open(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Self> {
        opts.check()?;
        let make = !opts.read_only;
        let (root, root_fd) = open_store_root_with(root.as_ref(), ROOT_MODE, make)?;
        let dir =
            |name| open_or_make_dir_with(&root_fd, &root, name, ROOT_MODE, opts.durable, make);
        let locks = if opts.read_only {
            LayerLocks::read_only(&root)
        } else {
            LayerLocks::open(&root)?
        };
        let store = Self {
            layers_fd: dir("layers")?,
            diff_fd: dir("diff")?,
            mnt_fd: dir("mnt")?,
            root,
            opts,
            locks,
        };
        if store.opts.sweep_on_open && !store.opts.read_only {
            store.sweep()?;
        }
        Ok(store)
    }

    /// The root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/diff/<id>`.
    pub fn diff_dir(&self, id: &str) -> PathBuf {
        self.root.join("diff").join(id)
    }

    /// `<root>/mnt/<id>`.
    pub fn mnt_dir(&self, id: &str) -> PathBuf {
        self.root.join("mnt").join(id)
    }

    fn layers_file(&self, id: &str) -> PathBuf {
        self.root.join("layers").join(id)
    }

    /// Creates layer `id` on top of `parent` (`None` for a base layer).
    ///
    /// Writes `layers/<id>-creating` first, makes `diff/` and `mnt/` entries, and
    /// renames `layers/<id>-creating` to `layers/<id>` last.
    ///
    /// Errors: [`Error::InvalidId`], [`Error::Exists`], [`Error::ParentNotFound`],
    /// [`Error::TooDeep`], [`Error::Occupied`] (a `diff/<id>` of no layer) before
    /// anything is written; I/O errors (after which nothing of the layer is left).
    pub fn create(&self, id: &str, parent: Option<&str>) -> Result<AufsPaths> {
        check_id(id)?;
        if let Some(p) = parent {
            check_id(p)?;
        }
        let _guard = match parent {
            Some(p) => self.locks.lock(&[id, p])?,
            None => self.locks.lock(&[id])?,
        };
        if self.exists(id) {
            return Err(Error::Exists { id: id.to_owned() });
        }
        let mut ancestors = Vec::new();
        if let Some(p) = parent {
            if !self.exists(p) {
                return Err(Error::ParentNotFound {
                    id: id.to_owned(),
                    parent: p.to_owned(),
                });
            }
            ancestors.push(p.to_owned());
            ancestors.extend(self.ancestors(p)?);
            if ancestors.len() > self.opts.max_depth {
                return Err(Error::TooDeep {
                    id: id.to_owned(),
                    depth: ancestors.len(),
                    max: self.opts.max_depth,
                });
            }
        }
        if self.stat(&self.diff_fd, id, "diff")?.is_some() {
            return Err(Error::Occupied {
                id: id.to_owned(),
                path: self.diff_dir(id),
            });
        }
        if self.stat(&self.mnt_fd, id, "mnt")?.is_some() {
            // An empty mount point is what a crashed Docker remove leaves; reuse
            // means removing it, anything else stays.
            unlinkat(&self.mnt_fd, id, AtFlags::REMOVEDIR).map_err(|_| Error::Occupied {
                id: id.to_owned(),
                path: self.mnt_dir(id),
            })?;
        }
        let tmp = format!("{id}{CREATING_SUFFIX}");
        self.rollback_create(id)?;
        let result = self.build_layer(id, &tmp, &ancestors);
        if result.is_err() {
            if let Err(e) = self.rollback_create(id) {
                tracing::warn!(layer = id, error = %e, "cleaning up a failed create");
            }
        }
        result
    }

    fn build_layer(&self, id: &str, tmp: &str, ancestors: &[String]) -> Result<AufsPaths> {
        let durable = self.opts.durable;
        let mut contents = String::new();
        for a in ancestors {
            contents.push_str(a);
            contents.push('\n');
        }
        write_new_file(
            &self.layers_fd,
            tmp,
            contents.as_bytes(),
            LAYERS_FILE_MODE,
            durable,
        )
        .map_err(|e| io_err("write", self.layers_file(tmp), e))?;
        sync(&self.layers_fd, durable).map_err(|e| io_err("fsync", self.root.join("layers"), e))?;
        for (fd, dir) in [(&self.diff_fd, "diff"), (&self.mnt_fd, "mnt")] {
            let base = self.root.join(dir);
            make_dir(fd, tmp, LAYER_DIR_MODE).map_err(|e| io_err("create", base.join(tmp), e))?;
            sync(fd, durable).map_err(|e| io_err("fsync", &base, e))?;
            rename_noreplace(fd, tmp, id).map_err(|e| io_err("rename", base.join(tmp), e))?;
            sync(fd, durable).map_err(|e| io_err("fsync", &base, e))?;
        }
        rename_noreplace(&self.layers_fd, tmp, id)
            .map_err(|e| io_err("rename", self.layers_file(tmp), e))?;
        sync(&self.layers_fd, durable).map_err(|e| io_err("fsync", self.root.join("layers"), e))?;
        Ok(AufsPaths {
            diff: self.diff_dir(id),
            mnt: self.mnt_dir(id),
            layers_file: self.layers_file(id),
        })
    }

    fn stat(&self, fd: &OwnedFd, id: &str, dir: &str) -> Result<Option<FileType>> {
        file_type(fd, id).map_err(|e| io_err("stat", self.root.join(dir).join(id), e))
    }

    /// Undoes a create of `id` that has not reached `layers/<id>`: deletes its
    /// `diff/` and `mnt/` entries and then the `layers/<id>-creating` marker.
    fn rollback_create(&self, id: &str) -> Result<()> {
        let tmp = format!("{id}{CREATING_SUFFIX}");
        if self.stat(&self.layers_fd, &tmp, "layers")?.is_none() {
            return Ok(());
        }
        let durable = self.opts.durable;
        let done = self.stat(&self.layers_fd, id, "layers")?.is_some();
        for (fd, dir) in [(&self.diff_fd, "diff"), (&self.mnt_fd, "mnt")] {
            let base = self.root.join(dir);
            remove_tree(fd, &tmp).map_err(|e| io_err("remove", base.join(&tmp), e))?;
            if !done {
                // The marker proves these were made by this create.
                remove_tree(fd, id).map_err(|e| io_err("remove", base.join(id), e))?;
            }
            sync(fd, durable).map_err(|e| io_err("fsync", &base, e))?;
        }
        match unlinkat(&self.layers_fd, tmp.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err("unlink", self.layers_file(&tmp), e)),
        }
        sync(&self.layers_fd, durable).map_err(|e| io_err("fsync", self.root.join("layers"), e))
    }

    /// Removes layer `id`: `layers/<id>` is renamed to `layers/<id>-removing`
    /// (the layer is gone from then on), `diff/<id>` and `mnt/<id>` are renamed to
    /// `-removing` and deleted, and the marker goes last. A missing id is not an
    /// error. A mounted `mnt/<id>` makes it fail with `EBUSY` (unmount first).
    pub fn remove(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let guard = self.locks.lock(&[id])?;
        // Under the layer's lock a leftover of either kind is a dead owner's.
        self.rollback_create(id)?;
        self.finish_remove(id)?;
        if !self.exists(id) {
            return Ok(());
        }
        guard.forget(id);
        if is_mount_point(&self.mnt_fd, id).map_err(|e| io_err("stat", self.mnt_dir(id), e))? {
            return Err(io_err(
                "remove while mounted",
                self.mnt_dir(id),
                Errno::BUSY,
            ));
        }
        let removing = format!("{id}{REMOVING_SUFFIX}");
        rename_noreplace(&self.layers_fd, id, &removing)
            .map_err(|e| io_err("rename", self.layers_file(id), e))?;
        sync(&self.layers_fd, self.opts.durable)
            .map_err(|e| io_err("fsync", self.root.join("layers"), e))?;
        self.finish_remove(id)
    }

    /// Completes a removal whose `layers/<id>-removing` marker exists.
    fn finish_remove(&self, id: &str) -> Result<()> {
        let removing = format!("{id}{REMOVING_SUFFIX}");
        if self.stat(&self.layers_fd, &removing, "layers")?.is_none() {
            return Ok(());
        }
        let durable = self.opts.durable;
        let live = self.stat(&self.layers_fd, id, "layers")?.is_some();
        for (fd, dir) in [(&self.diff_fd, "diff"), (&self.mnt_fd, "mnt")] {
            let base = self.root.join(dir);
            if !live {
                match rename_noreplace(fd, id, &removing) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(Errno::EXIST) => {
                        remove_tree(fd, &removing)
                            .map_err(|e| io_err("remove", base.join(&removing), e))?;
                        rename_noreplace(fd, id, &removing)
                            .map_err(|e| io_err("rename", base.join(id), e))?;
                    }
                    Err(e) => return Err(io_err("rename", base.join(id), e)),
                }
                sync(fd, durable).map_err(|e| io_err("fsync", &base, e))?;
            }
            remove_tree(fd, &removing).map_err(|e| io_err("remove", base.join(&removing), e))?;
            sync(fd, durable).map_err(|e| io_err("fsync", &base, e))?;
        }
        match unlinkat(&self.layers_fd, removing.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err("unlink", self.layers_file(&removing), e)),
        }
        sync(&self.layers_fd, durable).map_err(|e| io_err("fsync", self.root.join("layers"), e))
    }

    /// The layer locks of this store, shared with every process that opens it
    /// (see [`LayerLocks`]); drivers hold them across their own work on a layer.
    pub fn locks(&self) -> &LayerLocks {
        &self.locks
    }

    /// Rolls back the creates and finishes the removes a killed process left
    /// (only those whose layer lock is free: work in progress is left alone),
    /// and deletes `-removing`/`-applying` copies under `diff/` and `mnt/`.
    /// Lists the store's directories: [`AufsStore::open`] runs it unless
    /// [`StoreOptions::sweep_on_open`] is off.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] on a store opened read-only; a directory cannot be
    /// read, a lock cannot be taken, a leftover cannot be deleted.
    pub fn sweep(&self) -> Result<()> {
        if self.opts.read_only {
            return Err(Error::ReadOnly {
                path: self.root.clone(),
            });
        }
        let names =
            list_names(&self.layers_fd).map_err(|e| io_err("read", self.root.join("layers"), e))?;
        for (name, _) in names {
            let Some(name) = utf8_name(&name) else {
                continue;
            };
            let (id, creating) = match (
                name.strip_suffix(CREATING_SUFFIX),
                name.strip_suffix(REMOVING_SUFFIX),
            ) {
                (Some(id), _) => (id, true),
                (None, Some(id)) => (id, false),
                (None, None) => continue,
            };
            if validate_id(id).is_err() {
                continue;
            }
            // Work in progress holds the layer's lock: only a dead owner's is swept.
            let Some(_guard) = self.locks.try_lock(&[id])? else {
                continue;
            };
            if creating {
                tracing::info!(entry = name, "rolling back an interrupted create");
                self.rollback_create(id)?;
            } else {
                tracing::info!(entry = name, "finishing an interrupted remove");
                self.finish_remove(id)?;
            }
        }
        // Docker's own leftovers, ours from a remove that lost its marker, and
        // copies of branches an interrupted apply left.
        for (fd, dir) in [(&self.diff_fd, "diff"), (&self.mnt_fd, "mnt")] {
            let base = self.root.join(dir);
            for (name, _) in list_names(fd).map_err(|e| io_err("read", &base, e))? {
                let Some(name) = utf8_name(&name) else {
                    continue;
                };
                let Some(id) = name
                    .strip_suffix(REMOVING_SUFFIX)
                    .or_else(|| name.strip_suffix(APPLYING_SUFFIX))
                    .filter(|id| validate_id(id).is_ok())
                else {
                    continue;
                };
                let Some(_guard) = self.locks.try_lock(&[id])? else {
                    continue;
                };
                if self.stat(fd, name, dir)?.is_some() {
                    remove_tree(fd, name).map_err(|e| io_err("remove", base.join(name), e))?;
                    sync(fd, self.opts.durable).map_err(|e| io_err("fsync", &base, e))?;
                }
            }
        }
        Ok(())
    }

    /// Whether layer `id` exists (has a `layers/<id>` file). An invalid id never exists.
    pub fn exists(&self, id: &str) -> bool {
        validate_id(id).is_ok()
            && matches!(
                file_type(&self.layers_fd, id),
                Ok(Some(FileType::RegularFile))
            )
    }

    /// The layer's ancestors, nearest first, from `layers/<id>`.
    pub fn ancestors(&self, id: &str) -> Result<Vec<String>> {
        check_id(id)?;
        let path = self.layers_file(id);
        let bytes = read_small_file(&self.layers_fd, id)
            .map_err(|e| io_err("read", &path, e))?
            .ok_or_else(|| Error::NotFound { id: id.to_owned() })?;
        let ancestors =
            parse_layers_file(&bytes, self.opts.max_depth).map_err(|(line, reason)| {
                Error::BadLayersFile {
                    layer: id.to_owned(),
                    path: path.clone(),
                    line,
                    reason,
                }
            })?;
        if ancestors.iter().any(|a| a == id) {
            return Err(Error::Cycle {
                layer: id.to_owned(),
                through: id.to_owned(),
            });
        }
        Ok(ancestors)
    }

    /// The layer's parent (first line of `layers/<id>`); `None` for a base layer.
    pub fn parent(&self, id: &str) -> Result<Option<String>> {
        Ok(self.ancestors(id)?.into_iter().next())
    }

    /// The diff dirs of the layer's ancestors, nearest first (the read-only branches).
    pub fn lowers(&self, id: &str) -> Result<Vec<PathBuf>> {
        Ok(self
            .ancestors(id)?
            .iter()
            .map(|a| self.diff_dir(a))
            .collect())
    }

    /// Every layer id, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let names =
            list_names(&self.layers_fd).map_err(|e| io_err("read", self.root.join("layers"), e))?;
        let mut out: Vec<String> = names
            .into_iter()
            .filter_map(|(n, _)| utf8_name(&n).map(str::to_owned))
            .filter(|n| validate_id(n).is_ok() && self.exists(n))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Checks the store and, with `repair`, fixes what it safely can (interrupted
    /// operations, missing `mnt/<id>`). `diff/` entries are never deleted.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        if repair && self.opts.read_only {
            return Err(Error::ReadOnly {
                path: self.root.clone(),
            });
        }
        let mut report = FsckReport::default();
        let base = self.root.join("layers");
        for (name, _) in list_names(&self.layers_fd).map_err(|e| io_err("read", &base, e))? {
            let Some(name) = utf8_name(&name) else {
                continue;
            };
            let owner = name
                .strip_suffix(CREATING_SUFFIX)
                .or_else(|| name.strip_suffix(REMOVING_SUFFIX))
                .filter(|id| validate_id(id).is_ok());
            let Some(owner) = owner else {
                continue;
            };
            // Work in progress holds its layer's lock and is no damage.
            let Some(_guard) = self.locks.try_lock(&[owner])? else {
                continue;
            };
            if self.stat(&self.layers_fd, name, "layers")?.is_none() {
                continue;
            }
            if let Some(id) = name.strip_suffix(CREATING_SUFFIX) {
                report.handle(
                    Finding::Leftover {
                        path: PathBuf::from("layers").join(name),
                    },
                    repair,
                    || self.rollback_create(id),
                )?;
            } else if let Some(id) = name.strip_suffix(REMOVING_SUFFIX) {
                report.handle(
                    Finding::Leftover {
                        path: PathBuf::from("layers").join(name),
                    },
                    repair,
                    || self.finish_remove(id),
                )?;
            }
        }
        let diff_base = self.root.join("diff");
        for (name, _) in list_names(&self.diff_fd).map_err(|e| io_err("read", &diff_base, e))? {
            let Some(name) = utf8_name(&name) else {
                continue;
            };
            if let Some(id) = name
                .strip_suffix(APPLYING_SUFFIX)
                .filter(|id| validate_id(id).is_ok())
            {
                let Some(_guard) = self.locks.try_lock(&[id])? else {
                    continue;
                };
                if self.stat(&self.diff_fd, name, "diff")?.is_none() {
                    continue;
                }
                report.handle(
                    Finding::Leftover {
                        path: PathBuf::from("diff").join(name),
                    },
                    repair,
                    || {
                        remove_tree(&self.diff_fd, name)
                            .map_err(|e| io_err("remove", diff_base.join(name), e))
                    },
                )?;
            }
        }
        crate::fsck::check_probe_scratch(&self.root, &self.locks, repair, &mut report)?;
        let layers = self.list()?;
        let live: BTreeSet<&str> = layers.iter().map(String::as_str).collect();
        for layer in &layers {
            let Some(_guard) = self.locks.try_lock(&[layer.as_str()])? else {
                continue;
            };
            match self.ancestors(layer) {
                Ok(ancestors) => {
                    for (i, a) in ancestors.iter().enumerate() {
                        if live.contains(a.as_str()) {
                            continue;
                        }
                        let finding = if i == 0 {
                            Finding::ParentGone {
                                layer: layer.clone(),
                                entry: a.clone(),
                            }
                        } else {
                            Finding::MissingLower {
                                layer: layer.clone(),
                                entry: a.clone(),
                            }
                        };
                        report.push(finding, Repair::Unrepairable);
                    }
                }
                Err(Error::Cycle { .. }) => report.push(
                    Finding::Cycle {
                        layer: layer.clone(),
                    },
                    Repair::Unrepairable,
                ),
                Err(Error::BadLayersFile { reason, line, .. }) => {
                    let finding = if reason.starts_with("more than") {
                        Finding::TooDeep {
                            layer: layer.clone(),
                            depth: line,
                            max: self.opts.max_depth,
                        }
                    } else {
                        Finding::BadLower {
                            layer: layer.clone(),
                            reason: format!("line {line}: {reason}"),
                        }
                    };
                    report.push(finding, Repair::Unrepairable);
                }
                Err(e) => return Err(e),
            }
            if self.stat(&self.diff_fd, layer, "diff")? != Some(FileType::Directory) {
                report.push(
                    Finding::MissingDiff {
                        layer: layer.clone(),
                    },
                    Repair::Unrepairable,
                );
            }
            if self.stat(&self.mnt_fd, layer, "mnt")?.is_none() {
                report.handle(
                    Finding::MissingMountDir {
                        layer: layer.clone(),
                    },
                    repair,
                    || {
                        make_dir(&self.mnt_fd, layer, LAYER_DIR_MODE)
                            .map_err(|e| io_err("create", self.mnt_dir(layer), e))?;
                        sync(&self.mnt_fd, self.opts.durable)
                            .map_err(|e| io_err("fsync", self.root.join("mnt"), e))
                    },
                )?;
            }
        }
        let diff_base = self.root.join("diff");
        for (name, _) in list_names(&self.diff_fd).map_err(|e| io_err("read", &diff_base, e))? {
            let name = String::from_utf8_lossy(&name).into_owned();
            if !live.contains(name.as_str()) {
                report.push(Finding::OrphanDiff { id: name }, Repair::Unrepairable);
            }
        }
        Ok(report)
    }
}
