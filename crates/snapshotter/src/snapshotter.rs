//! The snapshotter: containerd's snapshot operations on plies layers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use plies_drivers::{CreateOptions, Driver, DriverChoice, Options, Overlay2, Vfs};
use plies_layerdb::{Access, LayerDb, Record};
use rand::RngExt;

use crate::error::{Error, Result, io_err};
use crate::filter::{self, Filter};
use crate::meta::{Entry, Kind, MetaFile};
use crate::proto::{Info, Mount};
use crate::shared::Shared;

mod index;
mod mounts;

use index::{Index, IndexRef};

/// The driver underneath, with what building mounts needs of it.
#[derive(Debug, Clone)]
enum Backend {
    Overlay2(Arc<Overlay2>),
    Vfs(Arc<Vfs>),
}

/// Disk usage of a snapshot's own layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Usage {
    /// Bytes of allocated blocks (`st_blocks` × 512), each inode counted once.
    pub size: u64,
    /// Distinct inodes, the layer's top directory included.
    pub inodes: u64,
}

/// containerd's snapshot operations on a plies layer store.
///
/// Every snapshot is a plies layer: a committed snapshot is an image layer, an
/// active one a read-write layer on its parent's, a view a layer on its
/// parent's that is only ever mounted read-only. A snapshot's key, kind,
/// parent, labels and times are kept in its layer's record (a
/// [`plies_layerdb::Record`]'s `attached`, under `containerd`), so each change
/// writes one file, atomically, together with the layer's own state.
///
/// Each call opens the [`LayerDb`] for that call only: changes take its
/// exclusive lock (so `plies` commands on the same root run between two
/// requests, and a request waits for a command in progress), reads take no
/// lock. A layer is made by the database's crash-safe make, its record, with
/// the snapshot in it, marked complete last: a snapshot counts only while its
/// layer is complete, so a process killed at any point leaves nothing half made
/// that a later call would show, and the next change (under the lock) removes
/// the incomplete layer; [`Snapshotter::cleanup`] drops the records whose
/// layers are gone.
///
/// The records are read once and kept, by key, for as long as the database's
/// [`Generation`](plies_layerdb::Generation) stays the same: a call reads one small file to know, instead
/// of every record.
///
/// The methods block; the gRPC service runs them on blocking threads.
#[derive(Debug)]
pub struct Snapshotter {
    root: PathBuf,
    backend: Backend,
    index: Mutex<Index>,
    index_off: bool,
    /// `<root>/plies/<driver>/containerd/empty`: the lower of an overlay on no
    /// parent, made at open, never written to (a lower is read-only).
    empty_lower: PathBuf,
}

/// The parameter the overlay module has where `index=off` is understood.
const INDEX_PARAMETER: &str = "/sys/module/overlay/parameters/index";

impl Snapshotter {
    /// Opens the snapshotter on the graph root `root` with the driver `choice`:
    /// `overlay2`, `vfs`, or `auto` (overlay2 where this system runs it, else vfs).
    ///
    /// Opening recovers what a killed server left, as [`Snapshotter::cleanup`]
    /// does (it takes the database's lock for that), and moves the entries of
    /// an earlier version's `snapshots.json` into the layers' records.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for aufs (containerd mounts what the snapshotter
    /// returns, and no kernel here has aufs); [`Error::Driver`] when the driver
    /// cannot run here; [`Error::Db`] when the layer database cannot be opened.
    pub fn open(root: &Path, choice: DriverChoice, options: &Options) -> Result<Snapshotter> {
        std::fs::create_dir_all(root).map_err(|e| io_err("create", root, e))?;
        let root = std::path::absolute(root).map_err(|e| io_err("resolve", root, e))?;
        let driver_err = |source| Error::Driver {
            layer: None,
            source: Box::new(source),
        };
        let backend = match choice {
            DriverChoice::Overlay2 => Backend::Overlay2(Arc::new(
                Overlay2::open(&root.join("overlay2"), options).map_err(driver_err)?,
            )),
            DriverChoice::Vfs => Backend::Vfs(Arc::new(
                Vfs::open(&root.join("vfs"), options).map_err(driver_err)?,
            )),
            DriverChoice::Auto => match Overlay2::open(&root.join("overlay2"), options) {
                Ok(d) => Backend::Overlay2(Arc::new(d)),
                Err(e) => {
                    tracing::info!(error = %e, "overlay2 cannot run here; using vfs");
                    Backend::Vfs(Arc::new(
                        Vfs::open(&root.join("vfs"), options).map_err(driver_err)?,
                    ))
                }
            },
            other => {
                return Err(Error::Unsupported {
                    driver: other.to_string(),
                    reason: "containerd mounts what a snapshotter returns; only overlay2 and vfs \
                             layers are served"
                        .to_owned(),
                });
            }
        };
        let empty_lower = root
            .join("plies")
            .join(driver_name(&backend))
            .join("containerd")
            .join("empty");
        if matches!(backend, Backend::Overlay2(_)) {
            std::fs::create_dir_all(&empty_lower).map_err(|e| io_err("create", &empty_lower, e))?;
        }
        let snapshotter = Snapshotter {
            root,
            backend,
            index: Mutex::new(Index::default()),
            index_off: Path::new(INDEX_PARAMETER).exists(),
            empty_lower,
        };
        snapshotter.migrate()?;
        // What a killed server left: incomplete layers (removed by the write
        // lock's sweep) and records whose layers are gone.
        let dropped = snapshotter.cleanup()?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                "dropped snapshots an interrupted call left half made"
            );
        }
        Ok(snapshotter)
    }

    /// The driver's name: `overlay2` or `vfs`.
    pub fn driver_name(&self) -> &'static str {
        driver_name(&self.backend)
    }

    /// The graph root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn driver(&self) -> Arc<dyn Driver> {
        match &self.backend {
            Backend::Overlay2(d) => d.clone(),
            Backend::Vfs(d) => d.clone(),
        }
    }

    fn db(&self, access: Access) -> Result<LayerDb> {
        LayerDb::open(&self.root, Box::new(Shared(self.driver())), access).map_err(|source| {
            Error::Db {
                root: self.root.clone(),
                source: Box::new(source),
            }
        })
    }

    /// Moves the entries of an earlier version's `snapshots.json` into their
    /// layers' records, then deletes the file. Killed halfway, it runs again.
    fn migrate(&self) -> Result<()> {
        let file = MetaFile::new(
            &self
                .root
                .join("plies")
                .join(self.driver_name())
                .join("containerd"),
        );
        if !file.exists() {
            return Ok(());
        }
        let db = self.db(Access::Write)?;
        let meta = file.load()?;
        for (key, entry) in &meta.snapshots {
            let mut record = match db.record(&entry.layer)? {
                Some(r) if r.complete => r,
                // Its layer never completed: the snapshot never existed.
                _ => continue,
            };
            entry.attach(key, &mut record)?;
            db.write_record(&record)?;
        }
        file.remove()?;
        tracing::info!(
            snapshots = meta.snapshots.len(),
            "moved the snapshot entries of snapshots.json into the layer records"
        );
        Ok(())
    }

    /// The index, current for `db`: kept while the generation is the same,
    /// else read again. A database opened without a lock gives a fresh index
    /// that is not kept (a writer may be between two changes). The kept index
    /// is locked only while it is read: a change copies what it needs out and
    /// lets go before its I/O.
    fn index<'s>(&'s self, db: &LayerDb, locked: bool) -> Result<IndexRef<'s>> {
        let generation = db.generation()?;
        let kept = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if kept.generation == Some(generation) {
            return Ok(IndexRef::Kept(kept));
        }
        drop(kept);
        let fresh = Index::build(generation, &db.records()?);
        if locked {
            let mut kept = self.index.lock().unwrap_or_else(|p| p.into_inner());
            *kept = fresh;
            Ok(IndexRef::Kept(kept))
        } else {
            Ok(IndexRef::Fresh(Box::new(fresh)))
        }
    }

    /// After a change of this process's, under the write lock (which every
    /// change that keeps the index holds, so the index was not replaced
    /// meanwhile): `f` updates the kept index, which moves to the generation
    /// the change left.
    fn changed(&self, db: &LayerDb, f: impl FnOnce(&mut Index)) -> Result<()> {
        let generation = db.generation()?;
        let mut kept = self.index.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut kept);
        kept.generation = Some(generation);
        Ok(())
    }

    /// Whether the entry's layer is there: a record is complete only once its
    /// layer is, but a layer can go before its record (a remove killed
    /// between the two).
    fn live(db: &LayerDb, entry: &Entry) -> bool {
        db.driver().exists(&entry.layer)
    }

    /// The live entry of `key`.
    fn entry(db: &LayerDb, index: &Index, key: &str) -> Result<Entry> {
        index
            .by_key
            .get(key)
            .filter(|e| Self::live(db, e))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                key: key.to_owned(),
            })
    }

    /// Prepares the active snapshot `key` on the committed snapshot `parent`
    /// (empty for none) and returns its mounts.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`], [`Error::NotFound`] for the parent,
    /// [`Error::InvalidArgument`] for an empty key or a parent that is not
    /// committed; the layer database's errors.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// Makes the read-only view `key` of the committed snapshot `parent` and
    /// returns its mounts.
    ///
    /// # Errors
    /// As [`Snapshotter::prepare`].
    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument {
                reason: "empty snapshot key".to_owned(),
            });
        }
        let db = self.db(Access::Write)?;
        let index = self.index(&db, true)?;
        if index.by_key.get(key).is_some_and(|e| Self::live(&db, e)) {
            return Err(Error::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let parent = (!parent.is_empty()).then_some(parent);
        let parent_entry = parent.map(|p| Self::entry(&db, &index, p)).transpose()?;
        drop(index);
        let parent_layer = match (parent, parent_entry) {
            (Some(p), Some(e)) => {
                if e.kind != Kind::Committed {
                    return Err(Error::InvalidArgument {
                        reason: format!("parent {p:?} is not a committed snapshot"),
                    });
                }
                Some(e.layer)
            }
            _ => None,
        };
        let layer = new_layer_id();
        let now = SystemTime::now();
        let entry = Entry {
            layer: layer.clone(),
            kind,
            parent: parent.map(str::to_owned),
            labels: labels.into_iter().collect(),
            created: now,
            updated: now,
        };
        let mut record = Record::new(&layer, parent_layer.as_deref(), kind == Kind::Active);
        entry.attach(key, &mut record)?;
        let work = match (&self.backend, kind, &parent_layer) {
            (Backend::Overlay2(d), Kind::Active, None) => Some(d.root().join(&layer).join("work")),
            _ => None,
        };
        db.make(record, &CreateOptions::default(), |_| {
            // An overlay2 layer without parent has no work dir; this one is
            // mounted as an overlay (see `mounts_of`), which needs one.
            if let Some(work) = &work {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(work)
                    .map_err(|e| io_err("create", work, e))?;
            }
            Ok::<_, Error>(0)
        })?;
        self.changed(&db, |ix| {
            ix.insert(key, entry.clone(), parent_layer.as_deref())
        })?;
        self.mounts_of(&entry)
    }

    /// The mounts of the active snapshot or view `key`.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::FailedPrecondition`] for a committed snapshot.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let db = self.db(Access::Read)?;
        let entry = Self::entry(&db, &*self.index(&db, false)?, key)?;
        if entry.kind == Kind::Committed {
            return Err(Error::FailedPrecondition {
                key: key.to_owned(),
                reason: "a committed snapshot has no mounts".to_owned(),
            });
        }
        self.mounts_of(&entry)
    }

    /// Commits the active snapshot `key` as `name` with `labels`: its layer
    /// becomes an image layer (overlay2's `committed` mark), and its record is
    /// rewritten under the name, without copying a file.
    ///
    /// `parent` is containerd's `rebase` (its parallel unpack applies each
    /// layer on no parent, then commits it onto the layer below): empty or the
    /// snapshot's own parent changes nothing; a snapshot without parent is put
    /// on the committed snapshot `parent` (overlay2 writes the layer's `lower`
    /// file: its `diff`, whiteouts included, is its own changes whatever sits
    /// below).
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::AlreadyExists`] for `name`,
    /// [`Error::FailedPrecondition`] when `key` is not active, when `parent`
    /// asks a snapshot that has a parent to move, or for a rebase on vfs;
    /// [`Error::InvalidArgument`] when `parent` is not committed.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
        parent: &str,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument {
                reason: "empty snapshot name".to_owned(),
            });
        }
        let db = self.db(Access::Write)?;
        let index = self.index(&db, true)?;
        let entry = Self::entry(&db, &index, key)?;
        let name_taken = index.by_key.get(name).is_some_and(|e| Self::live(&db, e));
        drop(index);
        if entry.kind != Kind::Active {
            return Err(Error::FailedPrecondition {
                key: key.to_owned(),
                reason: format!("is a {}, not an active snapshot", entry.kind.as_str()),
            });
        }
        // containerd's `rebase` (parallel unpack): a layer applied on no
        // parent is committed onto its real one.
        let rebase = match (parent, entry.parent.as_deref()) {
            ("", _) => None,
            (p, Some(own)) if p == own => None,
            (p, Some(own)) => {
                return Err(Error::FailedPrecondition {
                    key: key.to_owned(),
                    reason: format!(
                        "sits on {own:?}; only a snapshot without parent moves onto {p:?}"
                    ),
                });
            }
            (p, None) => {
                let target = Self::entry(&db, &*self.index(&db, true)?, p)?;
                if target.kind != Kind::Committed {
                    return Err(Error::InvalidArgument {
                        reason: format!("parent {p:?} is not a committed snapshot"),
                    });
                }
                Some((p.to_owned(), target.layer))
            }
        };
        if name_taken {
            return Err(Error::AlreadyExists {
                key: name.to_owned(),
            });
        }
        let store_err = |source| Error::Store {
            layer: entry.layer.clone(),
            source: Box::new(source),
        };
        match (&self.backend, &rebase) {
            (Backend::Overlay2(d), rebase) => {
                if let Some((_, layer)) = rebase {
                    // The layer's `lower` first: a kill before the record is
                    // written leaves the snapshot active, and the commit is
                    // repeated as it was.
                    d.store().rebase(&entry.layer, layer).map_err(store_err)?;
                }
                d.store().mark_committed(&entry.layer).map_err(store_err)?;
            }
            (Backend::Vfs(_), Some(_)) => {
                return Err(Error::FailedPrecondition {
                    key: key.to_owned(),
                    reason: "a vfs layer is a full copy and cannot move onto a parent (rebase \
                             needs overlay2)"
                        .to_owned(),
                });
            }
            (Backend::Vfs(_), None) => {}
        }
        let mut record = db.layer(&entry.layer)?;
        let old_parent_layer = record.parent.clone();
        if let Some((_, layer)) = &rebase {
            record.parent = Some(layer.clone());
        }
        let parent_layer = record.parent.clone();
        let now = SystemTime::now();
        let committed = Entry {
            kind: Kind::Committed,
            parent: match rebase {
                Some((key, _)) => Some(key),
                None => entry.parent,
            },
            labels: labels.into_iter().collect(),
            created: now,
            updated: now,
            ..entry
        };
        record.rw = false;
        record.attached.clear();
        committed.attach(name, &mut record)?;
        // One write moves the snapshot from its key to its name.
        db.write_record(&record)?;
        self.changed(&db, |ix| {
            ix.remove(key, old_parent_layer.as_deref());
            ix.insert(name, committed, parent_layer.as_deref());
        })
    }

    /// Removes the snapshot `key` and its layer.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::FailedPrecondition`] when another snapshot
    /// (or another layer) sits on it.
    pub fn remove(&self, key: &str) -> Result<()> {
        let db = self.db(Access::Write)?;
        let index = self.index(&db, true)?;
        let entry = Self::entry(&db, &index, key)?;
        if index.children.get(&entry.layer).is_some_and(|&n| n > 0) {
            let mut children: Vec<&str> = index
                .by_key
                .iter()
                .filter(|(_, e)| e.parent.as_deref() == Some(key))
                .map(|(k, _)| k.as_str())
                .collect();
            children.sort_unstable();
            let children = if children.is_empty() {
                "plies layers".to_owned()
            } else {
                children.join(", ")
            };
            return Err(Error::FailedPrecondition {
                key: key.to_owned(),
                reason: format!("cannot remove a snapshot with children ({children})"),
            });
        }
        let parent_layer = index.parent_layer(&entry);
        drop(index);
        // The layer, then its record (which holds the snapshot): each durably.
        db.remove_layer(&entry.layer)?;
        self.changed(&db, |ix| ix.remove(key, parent_layer.as_deref()))
    }

    /// The info of the snapshot `key`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn stat(&self, key: &str) -> Result<Info> {
        let db = self.db(Access::Read)?;
        Ok(Self::entry(&db, &*self.index(&db, false)?, key)?.info(key))
    }

    /// Updates the labels of the snapshot `info.name` as containerd does:
    /// without `paths` every label is replaced by `info`'s; a path `labels`
    /// does the same, `labels.<key>` sets that label (an empty or missing value
    /// removes it). Returns the updated info.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidArgument`] for any other path.
    pub fn update(&self, info: &Info, paths: &[String]) -> Result<Info> {
        let key = info.name.as_str();
        let db = self.db(Access::Write)?;
        let mut entry = Self::entry(&db, &*self.index(&db, true)?, key)?;
        if paths.is_empty() {
            entry.labels = info.labels.clone().into_iter().collect();
        }
        for path in paths {
            if path == "labels" {
                entry.labels = info.labels.clone().into_iter().collect();
            } else if let Some(label) = path.strip_prefix("labels.") {
                match info.labels.get(label).filter(|v| !v.is_empty()) {
                    Some(v) => entry.labels.insert(label.to_owned(), v.clone()),
                    None => entry.labels.remove(label),
                };
            } else {
                return Err(Error::InvalidArgument {
                    reason: format!("cannot update field {path:?} of snapshot {key:?}"),
                });
            }
        }
        entry.updated = SystemTime::now();
        let out = entry.info(key);
        let mut record = db.layer(&entry.layer)?;
        entry.attach(key, &mut record)?;
        db.write_record(&record)?;
        self.changed(&db, |ix| {
            ix.by_key.insert(key.to_owned(), entry);
        })?;
        Ok(out)
    }

    /// The snapshots any of `filters` matches (all without filters), by key.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a filter that does not parse.
    pub fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>>>()?;
        let db = self.db(Access::Read)?;
        let index = self.index(&db, false)?;
        let mut out: Vec<Info> = index
            .by_key
            .iter()
            .filter(|(k, e)| Self::live(&db, e) && filter::any_matches(&filters, k, e))
            .map(|(k, e)| e.info(k))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The disk usage of the snapshot's own layer: a walk of its directory
    /// (overlay2's `diff`, vfs's whole copy), each inode counted once.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Io`] naming what could not be read.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let db = self.db(Access::Read)?;
        let entry = Self::entry(&db, &*self.index(&db, false)?, key)?;
        disk_usage(&self.own_dir(&entry.layer))
    }

    /// Drops the records of snapshots whose layers are gone (a remove that a
    /// kill interrupted); the lock it takes also removes the layers a killed
    /// call left incomplete. Returns how many snapshots it dropped.
    ///
    /// # Errors
    /// The layer database's.
    pub fn cleanup(&self) -> Result<usize> {
        let db = self.db(Access::Write)?;
        let gone: Vec<(String, String, Option<String>)> = {
            let index = self.index(&db, true)?;
            index
                .by_key
                .iter()
                .filter(|(_, e)| !Self::live(&db, e))
                .map(|(k, e)| (k.clone(), e.layer.clone(), index.parent_layer(e)))
                .collect()
        };
        for (key, layer, parent_layer) in &gone {
            db.delete_record(layer)?;
            self.changed(&db, |ix| ix.remove(key, parent_layer.as_deref()))?;
        }
        Ok(gone.len())
    }

    /// Every snapshot key and the plies layer it names.
    ///
    /// # Errors
    /// The layer database's.
    pub fn layers(&self) -> Result<BTreeMap<String, String>> {
        let db = self.db(Access::Read)?;
        let index = self.index(&db, false)?;
        Ok(index
            .by_key
            .iter()
            .filter(|(_, e)| Self::live(&db, e))
            .map(|(k, e)| (k.clone(), e.layer.clone()))
            .collect())
    }
}

fn driver_name(backend: &Backend) -> &'static str {
    match backend {
        Backend::Overlay2(_) => "overlay2",
        Backend::Vfs(_) => "vfs",
    }
}

/// A fresh layer id: 64 random hex digits, as Docker's cache ids.
fn new_layer_id() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `du` of a directory: allocated bytes and distinct inodes, not following
/// symlinks nor crossing into other filesystems.
fn disk_usage(dir: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    for entry in walkdir::WalkDir::new(dir).same_file_system(true) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            io_err("walk", path, e.into())
        })?;
        let md = entry
            .metadata()
            .map_err(|e| io_err("stat", entry.path(), e.into()))?;
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes += 1;
            usage.size += md.blocks() * 512;
        }
    }
    Ok(usage)
}
