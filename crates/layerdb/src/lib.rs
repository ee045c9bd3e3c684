#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod check;
pub mod docker;
mod error;
mod images;
mod lock;
mod record;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use plies_drivers::{CreateOptions, Driver};

pub use check::{Area, Finding};
pub use error::{Error, Result};
pub use images::{Image, ImageStore, chain_id, chain_ids};
pub use record::{Generation, Record};

use error::{driver_err, io_err, store_err};

/// How a [`LayerDb`] is opened: what it may change, and so which lock it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Reads beside any writer, without a lock; shows complete layers only.
    Read,
    /// Reads a state no writer is in the middle of: the lock, shared.
    Inspect,
    /// Changes layers: the lock, exclusive; what a dead writer left is removed.
    Write,
    /// The lock, exclusive, leaving what a dead writer left for `fsck` to report
    /// and repair.
    Check,
}

/// Layer records above a driver: which layer sits on which, how each was made,
/// and whether it is complete.
///
/// Drivers keep files, not lineage (Docker keeps lineage in its `layerdb`): vfs
/// has no notion of a parent, and the parent a diff is taken against is the
/// caller's to give. A `LayerDb` keeps one small JSON record per layer in
/// `<root>/plies/<driver>/layers/<id>.json` (`pending/<id>.json` while it is
/// being made), written atomically.
///
/// The protocol for a root shared by many processes:
/// - Writers ([`Access::Write`]) hold an exclusive `flock` on
///   `<root>/plies/<driver>/lock`; the driver underneath also holds each layer's
///   own lock (see [`plies_layerstore::LayerLocks`]), which every front end on
///   the root shares.
/// - A new layer's record is written incomplete, to `pending/<id>.json`, before
///   the layer is made (only its name must be durable: one fsync of the
///   directory; a pending record a crash cut short still names its layer), and
///   written complete, to `layers/<id>.json`, only once its contents are in and
///   durable: staged beside it, one `syncfs` (for the layers and the staged
///   records of a whole batch), then renamed into place and the directory
///   fsynced once.
/// - Every change of a record first moves the root to a new
///   [`LayerDb::generation`], so a long-lived process can keep the records it
///   read until the generation changes. Only such a layer, made by the
///   same call, is removed when the call fails; the next writer, holding the
///   exclusive lock, knows an incomplete record's writer is dead and removes
///   that layer.
/// - A removal deletes the layer, then its record, each durably: neither comes
///   back after a power cut without the other.
/// - An apply onto an existing layer never marks it incomplete: the driver
///   applies to a copy that replaces the layer only on success.
/// - [`Access::Inspect`] takes the lock shared, so a check never sees a
///   writer's work in progress; [`Access::Read`] takes none and shows complete
///   layers only.
/// - A lock that stays busy gives [`Error::Busy`] after a bounded wait.
#[derive(Debug)]
pub struct LayerDb {
    driver: Box<dyn Driver>,
    root: PathBuf,
    dir: PathBuf,
    records: record::Records,
    images: images::OwnImages,
    _lock: Option<File>,
}

/// The longest parent chain walked before a cycle in the records is assumed.
const MAX_CHAIN: usize = 4096;

impl LayerDb {
    /// Opens the records of `driver`, whose graph root is `root`, taking the lock
    /// `access` asks for; [`Access::Write`] removes the layers a dead writer left
    /// incomplete.
    ///
    /// # Errors
    /// [`Error::Io`] when the record directory cannot be made;
    /// [`Error::Busy`] when the lock stays held; what removing a dead writer's
    /// layer failed with.
    pub fn open(root: &Path, driver: Box<dyn Driver>, access: Access) -> Result<LayerDb> {
        let dir = root.join("plies").join(driver.name());
        let records = record::Records::open(&dir)?;
        let lock = match access {
            Access::Read => None,
            Access::Inspect => Some(lock::take(&dir.join("lock"), false)?),
            Access::Write | Access::Check => Some(lock::take(&dir.join("lock"), true)?),
        };
        let db = LayerDb {
            driver,
            root: root.to_path_buf(),
            images: images::OwnImages::new(&dir),
            dir,
            records,
            _lock: lock,
        };
        if access == Access::Write {
            db.sweep()?;
        }
        Ok(db)
    }

    /// The driver underneath.
    pub fn driver(&self) -> &dyn Driver {
        self.driver.as_ref()
    }

    /// The graph root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/plies/<driver>`: the records and the lock.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record of `id`, if any (complete or not).
    ///
    /// # Errors
    /// [`Error::InvalidId`], [`Error::BadRecord`], [`Error::Io`].
    pub fn record(&self, id: &str) -> Result<Option<Record>> {
        self.records.read(id, &|id| self.mount_path(id))
    }

    /// The records' generation: it changes before any record is written or
    /// deleted (the mount state, kept apart, is not covered). A copy of
    /// [`LayerDb::records`] taken under a lock ([`Access::Inspect`] or
    /// [`Access::Write`]) at one generation is exact for as long as the
    /// generation reads the same, so a long-lived process can keep one instead
    /// of reading every record on each call.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn generation(&self) -> Result<Generation> {
        self.records.generation()
    }

    /// Every record, sorted by id.
    ///
    /// # Errors
    /// As [`LayerDb::record`].
    pub fn records(&self) -> Result<Vec<Record>> {
        self.records.read_all(&|id| self.mount_path(id))
    }

    /// Where the driver hands `id` out, for a layer marked mounted; `None`
    /// when the driver cannot say (the layer went).
    fn mount_path(&self, id: &str) -> Option<PathBuf> {
        self.driver.mount_path(id).ok()
    }

    /// Writes a record atomically (temporary file, fsync, rename, fsync of the
    /// directory).
    ///
    /// # Errors
    /// [`Error::InvalidId`], [`Error::Io`].
    pub fn write_record(&self, record: &Record) -> Result<()> {
        self.records.write(record)
    }

    /// Deletes a record (a missing one is no error).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn delete_record(&self, id: &str) -> Result<()> {
        // The layer's tar-split goes first: a record never outlives it.
        let tar_split = self.tar_split_path(id);
        match std::fs::remove_file(&tar_split) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", tar_split, e)),
        }
        self.records.delete(id)
    }

    /// Where the tar-split of layer `id` is kept
    /// (`<root>/plies/<driver>/tar-split/<id>.json.gz`): written by an import
    /// as it applies the layer's tar, so that [`ImageStore::write_layer_tar`]
    /// gives the same tar back byte for byte. Deleted with the record.
    pub fn tar_split_path(&self, id: &str) -> PathBuf {
        self.dir.join("tar-split").join(format!("{id}.json.gz"))
    }

    /// Keeps an imported image's config (the bytes its id is the digest of)
    /// and points `tags` at it (taking them from any image that had them);
    /// returns the image's id. Written durably.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn add_image(&self, config: &[u8], tags: &[String]) -> Result<String> {
        self.images.add(config, tags)
    }

    /// The record of an existing, complete layer, found by its id or by a unique
    /// prefix of it (`sha256:` may be left out, as in `docker`).
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`], [`Error::Incomplete`], [`Error::Ambiguous`], and
    /// those of [`LayerDb::record`].
    pub fn layer(&self, id: &str) -> Result<Record> {
        record::check_id(id)?;
        let record = match self.record(id)? {
            Some(r) => Some(r),
            None => self.by_prefix(id)?,
        };
        match record {
            Some(r) if r.complete && self.driver.exists(&r.id) => Ok(r),
            Some(r) if !r.complete => Err(Error::Incomplete { id: r.id }),
            Some(r) => Err(Error::NoSuchLayer { id: r.id }),
            None => Err(Error::NoSuchLayer { id: id.to_owned() }),
        }
    }

    /// Every layer with its lineage: the records; on a root plies holds no
    /// record for (a store `plies serve docker` wrote for dockerd, a bare
    /// store in Docker's layout), the store's own lineage (overlay2's `lower`,
    /// aufs' `layers/<id>`), every layer complete.
    ///
    /// # Errors
    /// As [`LayerDb::records`], and the driver's when the store's lineage is
    /// read.
    pub fn lineage(&self) -> Result<Vec<Record>> {
        // The records are read once: they are the answer unless there are none.
        let records = self.records()?;
        if !records.is_empty() || !self.records.pending()?.is_empty() {
            return Ok(records);
        }
        let mut out = Vec::new();
        for id in self.driver.list().map_err(store_err(self.driver.name()))? {
            let parent = self.driver.parent(&id).map_err(driver_err(&id))?;
            let mut record = Record::new(&id, parent.as_deref(), false);
            record.complete = true;
            record.mounted = self.records.mounted(&id, &|id| self.mount_path(id));
            out.push(record);
        }
        Ok(out)
    }

    /// Whether plies holds no record on this root at all: its layers, if any,
    /// were made by another front end on the driver (dockerd through `plies
    /// serve docker`), whose lineage is the store's own.
    ///
    /// # Errors
    /// As [`LayerDb::records`].
    pub fn is_unrecorded(&self) -> Result<bool> {
        Ok(self.records()?.is_empty() && self.records.pending()?.is_empty())
    }

    /// The layer whose id is `prefix`, else whose id starts with `prefix` (or
    /// `sha256:<prefix>`), when exactly one does.
    fn by_prefix(&self, prefix: &str) -> Result<Option<Record>> {
        let sha = format!("sha256:{prefix}");
        let lineage = self.lineage()?;
        if let Some(exact) = lineage.iter().find(|r| r.id == prefix) {
            return Ok(Some(exact.clone()));
        }
        let mut matches: Vec<Record> = lineage
            .into_iter()
            .filter(|r| r.id.starts_with(prefix) || r.id.starts_with(&sha))
            .collect();
        match matches.len() {
            0 | 1 => Ok(matches.pop()),
            count => Err(Error::Ambiguous {
                id: prefix.to_owned(),
                count,
            }),
        }
    }

    /// The number of layers below `id` in `records` (0 for a base layer).
    pub fn depth(records: &BTreeMap<String, Record>, id: &str) -> usize {
        let mut depth = 0;
        let mut cur = records.get(id).and_then(|r| r.parent.clone());
        while let Some(p) = cur {
            depth += 1;
            if depth > MAX_CHAIN {
                break;
            }
            cur = records.get(&p).and_then(|r| r.parent.clone());
        }
        depth
    }

    /// Creates the empty layer `id` on `parent` (a complete layer, by id or
    /// prefix): the record is written incomplete, the layer made, the record
    /// marked complete. A failure leaves neither.
    ///
    /// # Errors
    /// [`Error::Exists`], [`Error::NoSuchLayer`] for the parent, the driver's
    /// error, and those of the record files.
    pub fn create(
        &self,
        id: &str,
        parent: Option<&str>,
        rw: bool,
        opts: &CreateOptions,
    ) -> Result<Record> {
        let parent = match parent {
            Some(p) => Some(self.layer(p)?.id),
            None => None,
        };
        let record = Record::new(id, parent.as_deref(), rw);
        self.make(record, opts, |_| Ok::<_, Error>(0))
    }

    /// Creates layer `record.id` on `record.parent` and fills it with `fill`
    /// (which returns the bytes it applied), as one crash-safe step: the record
    /// is written incomplete first, the layer made and filled, everything synced
    /// to disk, and the record marked complete last. On any failure the layer
    /// and its record are removed again; a process killed meanwhile leaves an
    /// incomplete record that the next writer removes with its layer.
    ///
    /// # Errors
    /// What `fill` returned; [`Error::Exists`] when the id is taken, and the
    /// driver's and the record files' errors, converted into `fill`'s error type.
    pub fn make<E: From<Error>>(
        &self,
        record: Record,
        opts: &CreateOptions,
        fill: impl FnOnce(&dyn Driver) -> Result<u64, E>,
    ) -> Result<Record, E> {
        let mut batch = self.batch();
        batch.make(record, opts, fill)?;
        Ok(batch.commit()?.remove(0))
    }

    /// Several new layers made as one (the layers of an image): each is made
    /// and filled as by [`LayerDb::make`], but the data is synced once and the
    /// records marked complete together by [`Batch::commit`]; a batch dropped
    /// without a commit removes every layer it made.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            db: self,
            made: Vec::new(),
        }
    }

    /// Applies a layer tar to the existing layer `id` (by id or prefix), against
    /// its recorded parent; returns the bytes applied. A failed or killed apply
    /// leaves the layer as it was (the driver applies to a copy that replaces the
    /// layer only on success); the data is synced before the record's size is.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`], [`Error::Incomplete`], the driver's error.
    pub fn apply(&self, id: &str, tar: &mut dyn Read) -> Result<u64> {
        let mut record = self.layer(id)?;
        let id = record.id.clone();
        let n = self
            .driver
            .apply_diff(&id, record.parent.as_deref(), tar)
            .map_err(driver_err(&id))?;
        record.size = n;
        self.records
            .write_complete(std::slice::from_ref(&record), || self.sync_data())?;
        Ok(n)
    }

    /// Removes the layers `ids` (by id or prefix), children before parents;
    /// every id is checked before any is removed, and a layer that another
    /// layer not being removed sits on is refused. Returns the full ids removed.
    ///
    /// # Errors
    /// [`Error::HasChildren`], [`Error::NoSuchLayer`], the driver's error.
    pub fn remove(&self, ids: &[&str]) -> Result<Vec<String>> {
        let ids = ids
            .iter()
            .map(|id| self.layer(id).map(|r| r.id))
            .collect::<Result<Vec<String>>>()?;
        let records = self.lineage()?;
        for id in &ids {
            let children: Vec<&str> = records
                .iter()
                .filter(|r| r.parent.as_deref() == Some(id.as_str()) && !ids.contains(&r.id))
                .map(|r| r.id.as_str())
                .collect();
            if !children.is_empty() {
                return Err(Error::HasChildren {
                    id: id.clone(),
                    children: children.join(", "),
                });
            }
        }
        let by_id: BTreeMap<String, Record> =
            records.into_iter().map(|r| (r.id.clone(), r)).collect();
        let mut order: Vec<String> = ids;
        order.sort_by_key(|id| std::cmp::Reverse(Self::depth(&by_id, id)));
        order.dedup();
        for id in &order {
            self.driver.remove(id).map_err(driver_err(id))?;
            self.delete_record(id)?;
        }
        Ok(order)
    }

    /// Mounts the layer `id` (by id or prefix) and records where, so that
    /// [`LayerDb::unmount`] in another process can undo it; a layer already
    /// mounted that way gives the same path. Returns the layer's full id and its
    /// root filesystem's path.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`], the driver's mount error.
    pub fn mount(&self, id: &str, label: Option<&str>) -> Result<(String, PathBuf)> {
        let record = self.layer(id)?;
        let id = record.id.clone();
        if let Some(path) = record.mounted.as_ref().filter(|p| is_mount_point(p)) {
            return Ok((id, path.clone()));
        }
        // `get` uses a mount another (killed) process left rather than stacking
        // a second one.
        let path = self.driver.get(&id, label).map_err(driver_err(&id))?;
        if record.mounted.as_deref() != Some(path.as_path()) {
            self.records.set_mounted(&id, true)?;
        }
        Ok((id, path))
    }

    /// Undoes a [`LayerDb::mount`]: detaches the mount under the layer's lock
    /// and clears the record. Returns the layer's full id and the path it was
    /// mounted at.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`]; [`Error::Driver`] with
    /// [`plies_drivers::Error::NotMounted`] when no mount is recorded.
    pub fn unmount(&self, id: &str) -> Result<(String, PathBuf)> {
        let mut record = self.layer(id)?;
        let id = record.id.clone();
        let Some(path) = record.mounted.take() else {
            return Err(Error::driver(
                &id,
                plies_drivers::Error::NotMounted { id: id.clone() },
            ));
        };
        self.driver.detach(&id).map_err(driver_err(&id))?;
        self.records.set_mounted(&id, false)?;
        if self
            .records
            .read_stored(&id)?
            .is_some_and(|r| r.mounted.is_some())
        {
            // A record of an older version kept the mount itself.
            record.mounted = None;
            self.write_record(&record)?;
        }
        Ok((id, path))
    }

    /// Makes everything written to the store's filesystem durable: one
    /// `syncfs`, done before a layer is marked complete.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn sync_data(&self) -> Result<()> {
        let root = self.driver.root();
        let dir = File::open(root).map_err(|e| io_err("open", root, e))?;
        rustix::fs::syncfs(&dir).map_err(|e| io_err("syncfs", root, e))
    }

    /// Removes a layer and its record: the rollback of a failed make.
    ///
    /// # Errors
    /// The driver's error, [`Error::Io`].
    pub fn remove_layer(&self, id: &str) -> Result<()> {
        // A layer a killed create never finished is missing, but what it left
        // (`-creating` entries) goes with the removal all the same.
        match self.driver.remove(id) {
            Ok(()) | Err(plies_drivers::Error::NoSuchLayer { .. }) => {}
            Err(e) => return Err(driver_err(id)(e)),
        }
        self.delete_record(id)
    }

    /// Removes the layers of pending records (what a killed writer left). Only
    /// called with the exclusive lock held; reads `pending/` only, which is
    /// empty unless a writer died.
    fn sweep(&self) -> Result<()> {
        for id in self.records.pending()? {
            match self.record(&id)? {
                Some(r) if r.complete => self.records.delete_pending(&id)?,
                _ => {
                    tracing::warn!(layer = %id, "removing a layer an interrupted command left incomplete");
                    self.remove_layer(&id)?;
                }
            }
        }
        Ok(())
    }
}

/// New layers made as one; see [`LayerDb::batch`].
#[derive(Debug)]
#[must_use = "a batch dropped without a commit removes the layers it made"]
pub struct Batch<'a> {
    db: &'a LayerDb,
    made: Vec<Record>,
}

impl Batch<'_> {
    /// [`LayerDb::tar_split_path`] of the database the batch writes to.
    pub fn tar_split_path(&self, id: &str) -> PathBuf {
        self.db.tar_split_path(id)
    }

    /// Creates layer `record.id` on `record.parent` and fills it with `fill`
    /// (which returns the bytes it applied). The record is written incomplete
    /// (durably) before the layer is made; on any failure the layer and its
    /// record are removed again (the layers made before stay in the batch).
    ///
    /// # Errors
    /// What `fill` returned; [`Error::Exists`] when the id is taken, and the
    /// driver's and the record files' errors, converted into `fill`'s error type.
    pub fn make<E: From<Error>>(
        &mut self,
        mut record: Record,
        opts: &CreateOptions,
        fill: impl FnOnce(&dyn Driver) -> Result<u64, E>,
    ) -> Result<&Record, E> {
        let db = self.db;
        let id = record.id.clone();
        record::check_id(&id)?;
        if db.record(&id)?.is_some() || db.driver.exists(&id) {
            return Err(Error::Exists { id }.into());
        }
        record.complete = false;
        db.records.write_pending(&record)?;
        // The pending record, synced above, marks the layer until the batch's
        // one syncfs: the driver need not sync each step of its creation.
        let opts = &opts.clone().with_deferred_sync(true);
        let made = if record.rw {
            db.driver
                .create_read_write(&id, record.parent.as_deref(), opts)
        } else {
            db.driver.create(&id, record.parent.as_deref(), opts)
        };
        if let Err(e) = made {
            db.delete_record(&id)?;
            return Err(driver_err(&id)(e).into());
        }
        match fill(db.driver()) {
            Ok(size) => {
                record.size = size;
                self.made.push(record);
                Ok(&self.made[self.made.len() - 1])
            }
            Err(e) => {
                if let Err(undo) = db.remove_layer(&id) {
                    tracing::warn!(layer = %id, error = %undo, "removing the partial layer");
                }
                Err(e)
            }
        }
    }

    /// Makes the data of every layer in the batch durable (one `syncfs`), then
    /// marks their records complete; returns them.
    ///
    /// # Errors
    /// [`Error::Io`]; the batch's layers are removed then.
    pub fn commit(mut self) -> Result<Vec<Record>> {
        // Durable before they are called complete: a power cut keeps them
        // whole. The sync covers the staged records too.
        self.db
            .records
            .write_complete(&self.made, || self.db.sync_data())?;
        for record in &mut self.made {
            record.complete = true;
        }
        Ok(std::mem::take(&mut self.made))
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for record in self.made.iter().rev() {
            if let Err(e) = self.db.remove_layer(&record.id) {
                tracing::warn!(layer = %record.id, error = %e, "rolling back a batch");
            }
        }
    }
}

/// Whether `path` is a mount point: on another device than its parent.
fn is_mount_point(path: &Path) -> bool {
    let (Ok(here), Some(parent)) = (rustix::fs::lstat(path), path.parent()) else {
        return false;
    };
    rustix::fs::stat(parent).is_ok_and(|p| p.st_dev != here.st_dev)
}

impl ImageStore for LayerDb {
    /// The images `plies import` kept.
    fn images(&self) -> Result<Vec<Image>> {
        self.images.list()
    }

    fn config(&self, id: &str) -> Result<Vec<u8>> {
        self.images.config(id)
    }

    fn layer_tar_size(&self, chain_id: &str) -> Result<u64> {
        let (record, path) = self.tar_split_of(chain_id)?;
        images::tar_split_size(&path, &record.id)
    }

    /// The layer's tar as imported: the headers and padding from the
    /// tar-split the import kept, the contents from the driver's files of the
    /// layer, the whole checked against the layer's diff id.
    fn write_layer_tar(&self, chain_id: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        let (record, path) = self.tar_split_of(chain_id)?;
        let files = self
            .driver
            .layer_files(&record.id)
            .map_err(driver_err(&record.id))?;
        let diff_id = record.diff_id.clone().unwrap_or_default();
        images::reproduce(&path, &files, &record.id, &diff_id, out)
    }
}

impl LayerDb {
    /// The complete record of `chain_id` and its tar-split.
    fn tar_split_of(&self, chain_id: &str) -> Result<(Record, PathBuf)> {
        let record = self.layer(chain_id)?;
        let path = self.tar_split_path(&record.id);
        if !path.is_file() {
            return Err(Error::BadDockerFile {
                path,
                reason: "missing: the layer was not imported with its tar-split".to_owned(),
            });
        }
        Ok((record, path))
    }
}
