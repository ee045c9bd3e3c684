//! The overlay2 store: `<home>/<id>/{diff,link,lower,work}` and `<home>/l/<linkid>`.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, symlinkat, unlinkat};
use rustix::io::Errno;

use crate::disk::{
    file_type, is_mount_point, list_names, make_dir, open_dir, open_or_make_dir_with,
    open_store_root_with, read_link, read_small_file, remove_tree, rename_noreplace, sync,
    utf8_name, write_new_file,
};
use crate::error::{Error, Result, io_err};
use crate::id::{CREATING_SUFFIX, REMOVING_SUFFIX, check_id, validate_id};
use crate::link::{LinkId, parse_link_target};
use crate::locks::LayerLocks;
use crate::lower::{format_lower, parse_lower};
use crate::options::StoreOptions;

/// Name of the link directory under the home.
pub(crate) const LINK_DIR: &str = "l";
/// Mode of the home and of each layer directory (Docker 20.10: `drwx--x---`).
const LAYER_DIR_MODE: u32 = 0o710;
/// Mode of `l/` and `work/`.
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of `diff/`.
const DIFF_MODE: u32 = 0o755;
/// Mode of `link` and `lower`.
pub(crate) const META_FILE_MODE: u32 = 0o644;
/// Mode of `committed`.
const COMMITTED_MODE: u32 = 0o600;
/// How many link ids `create` draws before giving up.
const LINK_ATTEMPTS: usize = 32;

/// A Docker-compatible overlay2 layer store rooted at its home directory
/// (Docker's `/var/lib/docker/overlay2`).
///
/// Layers are created and removed atomically: a crash at any point leaves either
/// the whole layer or nothing, and [`Overlay2Store::open`] sweeps what a crash
/// left half-done. Operations on different ids run in parallel; operations on
/// the same id wait for each other.
#[derive(Debug)]
pub struct Overlay2Store {
    pub(crate) home: PathBuf,
    pub(crate) home_fd: OwnedFd,
    pub(crate) link_fd: OwnedFd,
    pub(crate) opts: StoreOptions,
    pub(crate) locks: LayerLocks,
}

/// Where a new overlay2 layer lives, as returned by [`Overlay2Store::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPaths {
    /// `<home>/<id>`.
    pub dir: PathBuf,
    /// `<home>/<id>/diff`: the layer's files, the upper dir of its mount.
    pub diff: PathBuf,
    /// `<home>/<id>/work` for layers with a parent, else `None`.
    pub work: Option<PathBuf>,
    /// `<home>/<id>/merged`: the mount point (created by whoever mounts).
    pub merged: PathBuf,
    /// The layer's link id (`<home>/l/<link>` points at its `diff`).
    pub link: LinkId,
}

/// A layer's directories as Docker's `GetMetadata` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Absolute lower diff dirs joined by `:`, uppermost first; `None` for a base layer.
    pub lower_dir: Option<String>,
    /// `<home>/<id>/diff`.
    pub upper_dir: PathBuf,
    /// `<home>/<id>/work`.
    pub work_dir: PathBuf,
    /// `<home>/<id>/merged`.
    pub merged_dir: PathBuf,
}

impl Metadata {
    /// The map Docker returns, keyed `LowerDir`, `UpperDir`, `WorkDir`, `MergedDir`.
    pub fn to_map(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        if let Some(lower) = &self.lower_dir {
            m.insert("LowerDir", lower.clone());
        }
        m.insert("UpperDir", self.upper_dir.display().to_string());
        m.insert("WorkDir", self.work_dir.display().to_string());
        m.insert("MergedDir", self.merged_dir.display().to_string());
        m
    }
}

impl Overlay2Store {
    /// Opens the store at `home`, creating `home` (0710) and `home/l` (0700) if
    /// missing, and (with [`StoreOptions::sweep_on_open`], the default) sweeps
    /// what an interrupted create or remove left behind (`<id>-creating`,
    /// `<id>-removing` and their `l/` links; see [`Overlay2Store::sweep`]).
    ///
    /// Fails on bad options, or when the home cannot be created or read.
    pub fn open(home: impl AsRef<Path>, opts: StoreOptions) -> Result<Self> {
        opts.check()?;
        let make = !opts.read_only;
        let (home, home_fd) = open_store_root_with(home.as_ref(), LAYER_DIR_MODE, make)?;
        let link_fd = open_or_make_dir_with(
            &home_fd,
            &home,
            LINK_DIR,
            PRIVATE_DIR_MODE,
            opts.durable,
            make,
        )?;
        let locks = if opts.read_only {
            LayerLocks::read_only(&home)
        } else {
            LayerLocks::open(&home)?
        };
        let store = Self {
            home,
            home_fd,
            link_fd,
            opts,
            locks,
        };
        if store.opts.sweep_on_open && !store.opts.read_only {
            store.sweep()?;
        }
        Ok(store)
    }

    /// The home directory (absolute).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The options the store was opened with.
    pub fn options(&self) -> StoreOptions {
        self.opts
    }

    /// `<home>/<id>` (whether or not it exists).
    pub fn layer_dir(&self, id: &str) -> PathBuf {
        self.home.join(id)
    }

    /// `<home>/<id>/diff` (whether or not it exists).
    pub fn diff_dir(&self, id: &str) -> PathBuf {
        self.home.join(id).join("diff")
    }

    /// Creates layer `id` on top of `parent` (`None` for a base layer) and returns
    /// its paths.
    ///
    /// The layer is built as `<id>-creating`, its `l/` link made, and then renamed
    /// to `<id>`: it becomes visible whole or not at all. With
    /// [`StoreOptions::durable`] every file and directory is fsynced first.
    ///
    /// Errors: [`Error::InvalidId`], [`Error::Exists`], [`Error::ParentNotFound`],
    /// [`Error::TooDeep`] before anything is written; a bad parent `link`/`lower`
    /// file; I/O errors (after which nothing of the layer is left).
    pub fn create(&self, id: &str, parent: Option<&str>) -> Result<LayerPaths> {
        self.create_with(id, parent, self.opts.durable)
    }

    /// [`Overlay2Store::create`], fsyncing the new layer's files and directories
    /// only when `durable`: a caller that syncs the filesystem before it relies
    /// on the layer, and that can tell a half-made one after a crash (as
    /// `plies-layerdb`'s pending records do), skips them.
    ///
    /// Errors: as [`Overlay2Store::create`].
    pub fn create_with(&self, id: &str, parent: Option<&str>, durable: bool) -> Result<LayerPaths> {
        check_id(id)?;
        if let Some(p) = parent {
            check_id(p)?;
        }
        let _guard = match parent {
            Some(p) => self.locks.lock(&[id, p])?,
            None => self.locks.lock(&[id])?,
        };
        if self.layer_exists(id)? {
            return Err(Error::Exists { id: id.to_owned() });
        }
        let lowers = match parent {
            None => Vec::new(),
            Some(p) => {
                let pdir = match self.open_layer(p) {
                    Ok(fd) => fd,
                    Err(Error::NotFound { .. }) => {
                        return Err(Error::ParentNotFound {
                            id: id.to_owned(),
                            parent: p.to_owned(),
                        });
                    }
                    Err(e) => return Err(e),
                };
                let mut lowers = vec![self.read_link_file(p, &pdir)?];
                lowers.extend(self.read_lower(p, &pdir)?);
                if lowers.len() > self.opts.max_depth {
                    return Err(Error::TooDeep {
                        id: id.to_owned(),
                        depth: lowers.len(),
                        max: self.opts.max_depth,
                    });
                }
                lowers
            }
        };
        let tmp = format!("{id}{CREATING_SUFFIX}");
        if file_type(&self.home_fd, &tmp)
            .map_err(|e| io_err("stat", self.home.join(&tmp), e))?
            .is_some()
        {
            self.drop_half_layer(&tmp, id)?;
        }
        let dir = make_dir(&self.home_fd, &tmp, LAYER_DIR_MODE)
            .map_err(|e| io_err("create", self.home.join(&tmp), e))?;
        let mut made_link = None;
        match self.build_layer(id, &tmp, &dir, &lowers, &mut made_link, durable) {
            Ok(link) => Ok(LayerPaths {
                dir: self.layer_dir(id),
                diff: self.diff_dir(id),
                work: (!lowers.is_empty()).then(|| self.layer_dir(id).join("work")),
                merged: self.layer_dir(id).join("merged"),
                link,
            }),
            Err(e) => {
                drop(dir);
                if let Some(link) = made_link {
                    let _ = unlinkat(&self.link_fd, link.as_str(), AtFlags::empty());
                }
                if let Err(cleanup) = remove_tree(&self.home_fd, &tmp) {
                    tracing::warn!(layer = id, error = %cleanup, "cleaning up a failed create");
                }
                Err(e)
            }
        }
    }

    fn build_layer(
        &self,
        id: &str,
        tmp: &str,
        dir: &OwnedFd,
        lowers: &[LinkId],
        made_link: &mut Option<LinkId>,
        durable: bool,
    ) -> Result<LinkId> {
        let tmp_path = self.home.join(tmp);
        make_dir(dir, "diff", DIFF_MODE).map_err(|e| io_err("create", tmp_path.join("diff"), e))?;
        if !lowers.is_empty() {
            make_dir(dir, "work", PRIVATE_DIR_MODE)
                .map_err(|e| io_err("create", tmp_path.join("work"), e))?;
            write_new_file(
                dir,
                "lower",
                format_lower(lowers).as_bytes(),
                META_FILE_MODE,
                durable,
            )
            .map_err(|e| io_err("write", tmp_path.join("lower"), e))?;
        }
        let target = LinkId::target_for(id);
        for _ in 0..LINK_ATTEMPTS {
            let link = LinkId::generate();
            // The link file is on disk before the symlink so recovery can always
            // find (and remove) the symlink of a half-built layer.
            write_new_file(
                dir,
                "link",
                link.as_str().as_bytes(),
                META_FILE_MODE,
                durable,
            )
            .map_err(|e| io_err("write", tmp_path.join("link"), e))?;
            sync(dir, durable).map_err(|e| io_err("fsync", &tmp_path, e))?;
            match symlinkat(target.as_str(), &self.link_fd, link.as_str()) {
                Ok(()) => {
                    *made_link = Some(link.clone());
                    sync(&self.link_fd, durable)
                        .map_err(|e| io_err("fsync", self.home.join(LINK_DIR), e))?;
                    match rename_noreplace(&self.home_fd, tmp, id) {
                        Ok(()) => {}
                        Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => {
                            return Err(Error::Exists { id: id.to_owned() });
                        }
                        Err(e) => return Err(io_err("rename", &tmp_path, e)),
                    }
                    sync(&self.home_fd, durable).map_err(|e| io_err("fsync", &self.home, e))?;
                    return Ok(link);
                }
                Err(Errno::EXIST) => {
                    unlinkat(dir, "link", AtFlags::empty())
                        .map_err(|e| io_err("unlink", tmp_path.join("link"), e))?;
                }
                Err(e) => {
                    return Err(io_err(
                        "symlink",
                        self.home.join(LINK_DIR).join(link.as_str()),
                        e,
                    ));
                }
            }
        }
        Err(Error::LinkIdsExhausted {
            path: self.home.join(LINK_DIR),
            attempts: LINK_ATTEMPTS,
        })
    }

    /// Removes layer `id`: renames it to `<id>-removing`, deletes its `l/` link,
    /// then deletes the tree (never following symlinks).
    ///
    /// A missing id is not an error; what a killed create or remove of `id` left
    /// (`<id>-creating`, `<id>-removing`) is swept either way. A layer whose `link` file is empty or bad
    /// keeps every `l/` entry: only a link that points at this layer is deleted.
    /// A mounted `merged` makes it fail with `EBUSY` (unmount first). Like
    /// Docker, it does not check for children: that is the caller's business
    /// (`fsck` reports their [`Finding::ParentGone`](crate::Finding::ParentGone)).
    pub fn remove(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let guard = self.locks.lock(&[id])?;
        let removing = format!("{id}{REMOVING_SUFFIX}");
        // Under the layer's lock a leftover of either kind is a dead owner's.
        for leftover in [format!("{id}{CREATING_SUFFIX}"), removing.clone()] {
            if file_type(&self.home_fd, &leftover)
                .map_err(|e| io_err("stat", self.home.join(&leftover), e))?
                .is_some()
            {
                self.drop_half_layer(&leftover, id)?;
            }
        }
        if !self.layer_exists(id)? {
            return Ok(());
        }
        let dir = self.open_layer(id)?;
        let merged = self.layer_dir(id).join("merged");
        if is_mount_point(&dir, "merged").map_err(|e| io_err("stat", &merged, e))? {
            return Err(io_err("remove while mounted", merged, Errno::BUSY));
        }
        drop(dir);
        rename_noreplace(&self.home_fd, id, &removing)
            .map_err(|e| io_err("rename", self.layer_dir(id), e))?;
        sync(&self.home_fd, self.opts.durable).map_err(|e| io_err("fsync", &self.home, e))?;
        // The rename is the durable step: a `-removing` tree or an `l/` link
        // that comes back after a power cut is swept or repaired, so the rest
        // is not synced.
        self.drop_half_layer_with(&removing, id, false)?;
        guard.forget(id);
        Ok(())
    }

    /// Deletes `<home>/<name>`, the half-created or half-removed layer `id`, and
    /// its `l/` link when that link points at `../<id>/diff` and no live layer
    /// `id` owns it.
    pub(crate) fn drop_half_layer(&self, name: &str, id: &str) -> Result<()> {
        self.drop_half_layer_with(name, id, self.opts.durable)
    }

    /// [`Overlay2Store::drop_half_layer`], syncing the link directory and the
    /// home only when `durable`.
    fn drop_half_layer_with(&self, name: &str, id: &str, durable: bool) -> Result<()> {
        let link = open_dir(&self.home_fd, name)
            .ok()
            .and_then(|d| read_small_file(&d, "link").ok().flatten())
            .and_then(|bytes| LinkId::parse(&bytes).ok());
        if let Some(link) = link {
            let target = read_link(&self.link_fd, link.as_str()).ok().flatten();
            let owned_by_live = self.link_of(id).is_some_and(|l| l == link);
            if target.as_deref() == Some(LinkId::target_for(id).as_bytes()) && !owned_by_live {
                match unlinkat(&self.link_fd, link.as_str(), AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => {
                        return Err(io_err(
                            "unlink",
                            self.home.join(LINK_DIR).join(link.as_str()),
                            e,
                        ));
                    }
                }
                sync(&self.link_fd, durable)
                    .map_err(|e| io_err("fsync", self.home.join(LINK_DIR), e))?;
            }
        }
        remove_tree(&self.home_fd, name).map_err(|e| io_err("remove", self.home.join(name), e))?;
        sync(&self.home_fd, durable).map_err(|e| io_err("fsync", &self.home, e))
    }

    /// The link id in a live layer's `link` file, if it has a valid one.
    pub(crate) fn link_of(&self, id: &str) -> Option<LinkId> {
        let dir = open_dir(&self.home_fd, id).ok()?;
        let bytes = read_small_file(&dir, "link").ok()??;
        LinkId::parse(&bytes).ok()
    }

    /// Sweeps the `<id>-creating` and `<id>-removing` entries whose owner is
    /// gone (the layer's lock can be taken); work in progress is left alone.
    /// Lists the whole home: [`Overlay2Store::open`] runs it unless
    /// [`StoreOptions::sweep_on_open`] is off.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] on a store opened read-only; the home cannot be
    /// read, a lock cannot be taken, a leftover cannot be deleted.
    pub fn sweep(&self) -> Result<()> {
        if self.opts.read_only {
            return Err(Error::ReadOnly {
                path: self.home.clone(),
            });
        }
        for (name, _) in list_names(&self.home_fd).map_err(|e| io_err("read", &self.home, e))? {
            let Some(name) = utf8_name(&name) else {
                continue;
            };
            let id = name
                .strip_suffix(CREATING_SUFFIX)
                .or_else(|| name.strip_suffix(REMOVING_SUFFIX));
            let Some(id) = id.filter(|id| validate_id(id).is_ok()) else {
                continue;
            };
            let Some(_guard) = self.locks.try_lock(&[id])? else {
                continue;
            };
            // Checked again under the lock: the owner may have finished meanwhile.
            if file_type(&self.home_fd, name)
                .map_err(|e| io_err("stat", self.home.join(name), e))?
                .is_some()
            {
                tracing::info!(entry = name, "sweeping an interrupted create or remove");
                self.drop_half_layer(name, id)?;
            }
        }
        Ok(())
    }

    /// The layer locks of this store, shared with every process that opens it
    /// (see [`LayerLocks`]); drivers hold them across their own work on a layer.
    pub fn locks(&self) -> &LayerLocks {
        &self.locks
    }

    /// Whether layer `id` exists. An invalid id never exists.
    pub fn exists(&self, id: &str) -> bool {
        validate_id(id).is_ok() && self.layer_exists(id).unwrap_or(false)
    }

    pub(crate) fn layer_exists(&self, id: &str) -> Result<bool> {
        match file_type(&self.home_fd, id) {
            Ok(Some(FileType::Directory)) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(io_err("stat", self.layer_dir(id), e)),
        }
    }

    /// Opens `<home>/<id>` without following symlinks.
    pub(crate) fn open_layer(&self, id: &str) -> Result<OwnedFd> {
        check_id(id)?;
        match open_dir(&self.home_fd, id) {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                Err(Error::NotFound { id: id.to_owned() })
            }
            Err(e) => Err(io_err("open", self.layer_dir(id), e)),
        }
    }

    pub(crate) fn read_link_file(&self, id: &str, dir: &OwnedFd) -> Result<LinkId> {
        let path = self.layer_dir(id).join("link");
        let bytes = read_small_file(dir, "link")
            .map_err(|e| io_err("read", &path, e))?
            .ok_or_else(|| io_err("read", &path, io::Error::from(io::ErrorKind::NotFound)))?;
        LinkId::parse(&bytes).map_err(|source| Error::BadLinkFile {
            layer: id.to_owned(),
            path,
            source,
        })
    }

    /// The parsed `lower` file; empty for a base layer (no file).
    pub(crate) fn read_lower(&self, id: &str, dir: &OwnedFd) -> Result<Vec<LinkId>> {
        let path = self.layer_dir(id).join("lower");
        match read_small_file(dir, "lower").map_err(|e| io_err("read", &path, e))? {
            None => Ok(Vec::new()),
            Some(bytes) => {
                parse_lower(&bytes, self.opts.max_depth).map_err(|source| Error::BadLower {
                    layer: id.to_owned(),
                    path,
                    source,
                })
            }
        }
    }

    /// The layer a link points at, checking the target is `../<id>/diff`.
    /// `Ok(None)` when the link does not exist.
    pub(crate) fn link_target(&self, link: &LinkId) -> Result<Option<String>> {
        let path = self.home.join(LINK_DIR).join(link.as_str());
        let target = match read_link(&self.link_fd, link.as_str()) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(Errno::INVAL) => {
                return Err(Error::BadLinkTarget {
                    path,
                    target: String::new(),
                    source: crate::LinkTargetError::NotLayerDiff,
                });
            }
            Err(e) => return Err(io_err("readlink", path, e)),
        };
        parse_link_target(&target)
            .map(Some)
            .map_err(|source| Error::BadLinkTarget {
                path,
                target: String::from_utf8_lossy(&target).into_owned(),
                source,
            })
    }

    /// Resolves a lower entry of layer `id` to the layer it names: through the
    /// `l/` symlink, or, when that is missing, the layer whose `link` file holds it.
    fn resolve(
        &self,
        id: &str,
        link: &LinkId,
        owners: &mut Option<BTreeMap<LinkId, String>>,
    ) -> Result<String> {
        if let Some(layer) = self.link_target(link)? {
            return Ok(layer);
        }
        let owners = match owners {
            Some(o) => o,
            None => owners.insert(self.link_owners()?),
        };
        owners.get(link).cloned().ok_or_else(|| Error::MissingLink {
            layer: id.to_owned(),
            path: self.layer_dir(id).join("lower"),
            link: link.as_str().to_owned(),
        })
    }

    /// Every layer's link id, from the `link` files.
    pub(crate) fn link_owners(&self) -> Result<BTreeMap<LinkId, String>> {
        let mut owners = BTreeMap::new();
        for layer in self.list()? {
            if let Some(link) = self.link_of(&layer) {
                owners.insert(link, layer);
            }
        }
        Ok(owners)
    }

    /// The layer's parent, found by resolving the first `lower` entry back to its
    /// layer (overlay2 stores no parent id); `None` for a base layer.
    pub fn parent(&self, id: &str) -> Result<Option<String>> {
        let dir = self.open_layer(id)?;
        let lowers = self.read_lower(id, &dir)?;
        let Some(first) = lowers.first() else {
            return Ok(None);
        };
        let parent = self.resolve(id, first, &mut None)?;
        if parent == id {
            return Err(Error::Cycle {
                layer: id.to_owned(),
                through: parent,
            });
        }
        Ok(Some(parent))
    }

    /// Every ancestor of the layer, nearest first (the layers its `lower` names).
    pub fn ancestors(&self, id: &str) -> Result<Vec<String>> {
        let dir = self.open_layer(id)?;
        let lowers = self.read_lower(id, &dir)?;
        let mut owners = None;
        let mut out: Vec<String> = Vec::with_capacity(lowers.len());
        for link in &lowers {
            let layer = self.resolve(id, link, &mut owners)?;
            if layer == id || out.contains(&layer) {
                return Err(Error::Cycle {
                    layer: id.to_owned(),
                    through: layer,
                });
            }
            out.push(layer);
        }
        Ok(out)
    }

    /// The absolute diff dirs of the layer's lowers, uppermost first, resolved
    /// through `l/` (each link checked to point at `../<id>/diff`).
    pub fn lowers(&self, id: &str) -> Result<Vec<PathBuf>> {
        let dir = self.open_layer(id)?;
        let lowers = self.read_lower(id, &dir)?;
        lowers
            .iter()
            .map(|link| match self.link_target(link)? {
                Some(layer) => Ok(self.diff_dir(&layer)),
                None => Err(Error::MissingLink {
                    layer: id.to_owned(),
                    path: self.layer_dir(id).join("lower"),
                    link: link.as_str().to_owned(),
                }),
            })
            .collect()
    }

    /// The raw `lower` entries (`l/<linkid>`), uppermost first; empty for a base layer.
    pub fn lower_entries(&self, id: &str) -> Result<Vec<String>> {
        let dir = self.open_layer(id)?;
        Ok(self
            .read_lower(id, &dir)?
            .iter()
            .map(LinkId::lower_entry)
            .collect())
    }

    /// What mounting `id` needs from its directory, read through one handle:
    /// its `lower` entries (as [`Overlay2Store::lower_entries`]) and whether
    /// it is `committed` (as [`Overlay2Store::is_committed`]).
    ///
    /// # Errors
    /// As [`Overlay2Store::lower_entries`].
    pub fn mount_facts(&self, id: &str) -> Result<(Vec<String>, bool)> {
        let dir = self.open_layer(id)?;
        let lowers = self
            .read_lower(id, &dir)?
            .iter()
            .map(LinkId::lower_entry)
            .collect();
        let committed = file_type(&dir, "committed")
            .map_err(|e| io_err("stat", self.layer_dir(id).join("committed"), e))?
            .is_some();
        Ok((lowers, committed))
    }

    /// The layer's link id, from its `link` file.
    pub fn link_id(&self, id: &str) -> Result<LinkId> {
        let dir = self.open_layer(id)?;
        self.read_link_file(id, &dir)
    }

    /// Every layer id in the store, sorted. Half-created and half-removed layers,
    /// `l/` and names that are not valid ids are never listed.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (name, kind) in list_names(&self.home_fd).map_err(|e| io_err("read", &self.home, e))? {
            let Some(name) = utf8_name(&name) else {
                continue;
            };
            if validate_id(name).is_err() {
                continue;
            }
            let is_dir = match kind {
                FileType::Directory => true,
                FileType::Unknown => self.layer_exists(name)?,
                _ => false,
            };
            if is_dir {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// The layer's directories, like Docker's `GetMetadata`.
    pub fn metadata(&self, id: &str) -> Result<Metadata> {
        let lowers = self.lowers(id)?;
        let lower_dir = (!lowers.is_empty()).then(|| {
            lowers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        });
        let dir = self.layer_dir(id);
        Ok(Metadata {
            lower_dir,
            upper_dir: dir.join("diff"),
            work_dir: dir.join("work"),
            merged_dir: dir.join("merged"),
        })
    }

    /// Marks the layer committed, as Docker 20.10 does once a layer becomes a
    /// parent: an empty `committed` file (0600). Such a layer is mounted read-only.
    pub fn mark_committed(&self, id: &str) -> Result<()> {
        let _guard = self.locks.lock(&[id])?;
        let dir = self.open_layer(id)?;
        // Empty: its name is all there is to make durable (the directory's sync).
        match write_new_file(&dir, "committed", b"", COMMITTED_MODE, false) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(io_err("write", self.layer_dir(id).join("committed"), e)),
        }
        sync(&dir, self.opts.durable).map_err(|e| io_err("fsync", self.layer_dir(id), e))
    }

    /// Whether the layer has a `committed` file.
    pub fn is_committed(&self, id: &str) -> Result<bool> {
        let dir = self.open_layer(id)?;
        file_type(&dir, "committed")
            .map(|t| t.is_some())
            .map_err(|e| io_err("stat", self.layer_dir(id).join("committed"), e))
    }
}
