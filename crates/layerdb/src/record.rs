//! The record files: one JSON file per layer, written atomically.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};

/// What a [`LayerDb`](crate::LayerDb) records about a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Record {
    /// The layer's id.
    pub id: String,
    /// The layer it sits on.
    pub parent: Option<String>,
    /// Whether it is a read-write (container) layer.
    #[serde(default)]
    pub rw: bool,
    /// For an imported layer: the sha256 of its uncompressed tar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    /// Bytes applied from layer tars, as the driver reported.
    #[serde(default)]
    pub size: u64,
    /// False from before the layer's creation until its contents are complete.
    pub complete: bool,
    /// Where [`LayerDb::mount`](crate::LayerDb::mount) mounted it, until
    /// [`LayerDb::unmount`](crate::LayerDb::unmount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounted: Option<PathBuf>,
    /// What a front end keeps with the layer, under the front end's own name
    /// (the containerd snapshotter keeps its snapshot's key, kind and labels
    /// under `containerd`): written and deleted with the record, in the same
    /// atomic step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attached: BTreeMap<String, serde_json::Value>,
}

impl Record {
    /// The record of a new layer `id` on `parent`, not yet complete.
    pub fn new(id: &str, parent: Option<&str>, rw: bool) -> Record {
        Record {
            id: id.to_owned(),
            parent: parent.map(str::to_owned),
            rw,
            diff_id: None,
            size: 0,
            complete: false,
            mounted: None,
            attached: BTreeMap::new(),
        }
    }

    /// The same record, for a layer made from a tar whose sha256 is `diff_id`.
    pub fn with_diff_id(mut self, diff_id: impl Into<String>) -> Record {
        self.diff_id = Some(diff_id.into());
        self
    }
}

/// Refuses ids the record directory cannot hold (drivers check the rest).
pub(crate) fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.contains('/') || id.contains('\0') || id.starts_with('.') {
        return Err(Error::InvalidId { id: id.to_owned() });
    }
    Ok(())
}

/// The driver's path for a layer marked mounted ([`Records::mounted`]).
pub(crate) type PathOf<'a> = &'a dyn Fn(&str) -> Option<PathBuf>;

/// The record files: `layers/<id>.json` for complete layers, `pending/<id>.json`
/// for layers being made. A writer's sweep then reads `pending/` only (empty
/// unless a writer died), never every record.
///
/// That a layer is mounted for whoever asked lives in `mounts/<id>` beside
/// them: an empty file, made without a sync or a rename (a mount does not
/// outlive a crash, and an unreadable file counts as no mount); where it is
/// mounted is the driver's to say ([`Records::mounted`]).
#[derive(Debug)]
pub(crate) struct Records {
    layers: PathBuf,
    pending: PathBuf,
    mounts: PathBuf,
    generation: PathBuf,
}

/// A token that changes before any record is written or deleted: a copy of the
/// records read under the lock at one generation is still exact while the
/// generation reads the same (see [`LayerDb::generation`](crate::LayerDb::generation)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Generation(u128);

impl Records {
    /// The record directories under `dir`, made if missing.
    pub(crate) fn open(dir: &Path) -> Result<Records> {
        let records = Records {
            layers: dir.join("layers"),
            pending: dir.join("pending"),
            mounts: dir.join("mounts"),
            generation: dir.join("generation"),
        };
        for d in [&records.layers, &records.pending, &records.mounts] {
            std::fs::create_dir_all(d).map_err(|e| io_err("create", d, e))?;
        }
        Ok(records)
    }

    /// The record of `id`: the complete one, else the pending one; with where
    /// it is mounted (`path_of` gives the driver's path for a mount marker
    /// without one, see [`Records::mounted`]).
    pub(crate) fn read(&self, id: &str, path_of: PathOf<'_>) -> Result<Option<Record>> {
        let record = match read(&self.layers, id)? {
            Some(r) => Some(r),
            None => read_pending(&self.pending, id)?,
        };
        Ok(record.map(|mut r| {
            if r.mounted.is_none() {
                r.mounted = self.mounted(id, path_of);
            }
            r
        }))
    }

    /// Where `id` is mounted for whoever asked [`LayerDb::mount`](crate::LayerDb::mount):
    /// `mounts/<id>` marks it. The marker is empty and the path the driver's
    /// (`path_of`, [`plies_drivers::Driver::mount_path`]); an earlier version
    /// wrote the path into it, which is still read. `None` when there is no
    /// marker or it cannot be read.
    ///
    /// An empty file is one inode and a directory entry: a file with the path
    /// also took a data block, which the unmount's sync of the filesystem
    /// (overlayfs syncs its upper filesystem when it goes) had to allocate and
    /// write, and its removal to free again: 0.2 ms of every `plies mount` and
    /// `plies umount` pair.
    pub(crate) fn mounted(&self, id: &str, path_of: PathOf<'_>) -> Option<PathBuf> {
        let bytes = std::fs::read(self.mounts.join(id)).ok()?;
        if bytes.is_empty() {
            return path_of(id);
        }
        let path = std::str::from_utf8(&bytes).ok()?.trim_end_matches('\n');
        (!path.is_empty()).then(|| PathBuf::from(path))
    }

    /// Marks `id` as mounted for whoever asked (an empty `mounts/<id>`), or
    /// with `false` removes the mark.
    pub(crate) fn set_mounted(&self, id: &str, mounted: bool) -> Result<()> {
        check_id(id)?;
        let file = self.mounts.join(id);
        if mounted {
            return File::create(&file)
                .map(drop)
                .map_err(|e| io_err("create", &file, e));
        }
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &file, e)),
        }
    }

    /// Every record, complete or pending, sorted by id; `path_of` as for
    /// [`Records::read`].
    pub(crate) fn read_all(&self, path_of: PathOf<'_>) -> Result<Vec<Record>> {
        let mut all = read_all(&self.layers)?;
        for r in self
            .pending()?
            .iter()
            .filter_map(|id| read_pending(&self.pending, id).transpose())
        {
            let r = r?;
            if !all.iter().any(|c| c.id == r.id) {
                all.push(r);
            }
        }
        for r in &mut all {
            if r.mounted.is_none() {
                r.mounted = self.mounted(&r.id, path_of);
            }
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    /// The record of `id` as its file holds it (no mount file read).
    pub(crate) fn read_stored(&self, id: &str) -> Result<Option<Record>> {
        match read(&self.layers, id)? {
            Some(r) => Ok(Some(r)),
            None => read_pending(&self.pending, id),
        }
    }

    /// The generation token; a root without one is at the zero generation.
    pub(crate) fn generation(&self) -> Result<Generation> {
        match std::fs::read(&self.generation) {
            Ok(bytes) => Ok(Generation(
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|t| u128::from_str_radix(t.trim_end(), 16).ok())
                    // Unreadable (torn, or cut short by a crash): a value no
                    // copy was taken at.
                    .unwrap_or(u128::MAX),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Generation(0)),
            Err(e) => Err(io_err("read", &self.generation, e)),
        }
    }

    /// Moves to a new generation, before a change: a reader that copies the
    /// records between this and the change copies them under the lock, which
    /// the change holds, so it waits. Not synced: copies do not outlive a crash.
    fn bump(&self) -> Result<()> {
        let token: u128 = rand::random::<u128>() | 1;
        let text = format!("{token:032x}\n");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.generation)
            .and_then(|f| f.write_all_at(text.as_bytes(), 0))
            .map_err(|e| io_err("write", &self.generation, e))
    }

    /// Writes a record where its state says: a complete one to `layers/` (and
    /// its pending one goes), an incomplete one to `pending/`. Where it is
    /// mounted is not part of it: that is `mounts/<id>`.
    pub(crate) fn write(&self, record: &Record) -> Result<()> {
        let record = &Record {
            mounted: None,
            ..record.clone()
        };
        self.bump()?;
        if record.complete {
            write(&self.layers, record)?;
            // A pending record left by a crash right here is swept: the
            // complete one wins.
            delete(&self.pending, &record.id).map(drop)
        } else {
            write(&self.pending, record)
        }
    }

    /// Deletes both records of `id`, and its mount file.
    /// Writes the incomplete record of a layer about to be made: only its name
    /// must be durable before the layer is made (one fsync, of the directory),
    /// for a pending record is read leniently: one a crash left empty or cut
    /// short still names the layer to remove.
    pub(crate) fn write_pending(&self, record: &Record) -> Result<()> {
        check_id(&record.id)?;
        self.bump()?;
        let path = path_of(&self.pending, &record.id);
        let record = &Record {
            mounted: None,
            complete: false,
            ..record.clone()
        };
        let written = (|| -> std::io::Result<()> {
            File::create(&path)?.write_all(&encode(record)?)?;
            File::open(&self.pending)?.sync_all()
        })();
        written.map_err(|e| io_err("write", path, e))
    }

    /// Writes `records` complete in one step with the data they describe:
    /// each written to a temporary file, then `sync` (which must make the
    /// filesystem's data durable: the layers' and these files'), then each
    /// renamed into place and the directory fsynced once. A failure leaves the
    /// records as they were.
    pub(crate) fn write_complete(
        &self,
        records: &[Record],
        sync: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(records.len());
        let result = (|| -> Result<()> {
            for record in records {
                check_id(&record.id)?;
                let record = &Record {
                    mounted: None,
                    complete: true,
                    ..record.clone()
                };
                let path = path_of(&self.layers, &record.id);
                let tmp = tmp_of(&self.layers, &record.id);
                staged.push((tmp.clone(), path.clone()));
                let bytes = encode(record).map_err(|e| io_err("encode", &path, e))?;
                File::create(&tmp)
                    .and_then(|mut f| f.write_all(&bytes))
                    .map_err(|e| io_err("write", &tmp, e))?;
            }
            sync()?;
            self.bump()?;
            for (tmp, path) in &staged {
                std::fs::rename(tmp, path).map_err(|e| io_err("rename", tmp, e))?;
            }
            File::open(&self.layers)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("fsync", &self.layers, e))
        })();
        if result.is_err() {
            for (tmp, _) in &staged {
                let _ = std::fs::remove_file(tmp);
            }
            return result;
        }
        // A pending record left by a crash right here is swept: the complete
        // one wins.
        for record in records {
            delete(&self.pending, &record.id)?;
        }
        Ok(())
    }

    pub(crate) fn delete(&self, id: &str) -> Result<()> {
        self.bump()?;
        if delete(&self.layers, id)? {
            // The layer is gone: its record must not come back after a crash.
            File::open(&self.layers)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err("fsync", &self.layers, e))?;
        }
        delete(&self.pending, id)?;
        self.set_mounted(id, false)
    }

    /// Deletes the pending record of `id` only (its complete one stays).
    pub(crate) fn delete_pending(&self, id: &str) -> Result<()> {
        delete(&self.pending, id).map(drop)
    }

    /// The ids with a pending record.
    pub(crate) fn pending(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in
            std::fs::read_dir(&self.pending).map_err(|e| io_err("read", &self.pending, e))?
        {
            let entry = entry.map_err(|e| io_err("read", &self.pending, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_suffix(".json")
                .filter(|_| !name.starts_with('.'))
            {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }

    /// Removes the temporary files of writes a killed process left.
    pub(crate) fn sweep_temporaries(&self) {
        sweep_temporaries(&self.layers);
        sweep_temporaries(&self.pending);
    }
}

fn path_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

fn read(dir: &Path, id: &str) -> Result<Option<Record>> {
    check_id(id)?;
    let path = path_of(dir, id);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::BadRecord { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path, e)),
    }
}

/// A pending record: one that does not parse (a crash cut it short) still
/// names an incomplete layer.
fn read_pending(dir: &Path, id: &str) -> Result<Option<Record>> {
    match read(dir, id) {
        Err(Error::BadRecord { .. }) => Ok(Some(Record::new(id, None, false))),
        other => other.map(|r| {
            r.map(|mut r| {
                r.complete = false;
                r
            })
        }),
    }
}

/// A record as its file holds it: pretty JSON and a newline.
fn encode(record: &Record) -> std::io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(record)?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn tmp_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".{}.{}.tmp", id, std::process::id()))
}

fn read_all(dir: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("read", dir, e))? {
        let entry = entry.map_err(|e| io_err("read", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        if let Some(id) = name.strip_suffix(".json") {
            if let Some(r) = read(dir, id)? {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Writes `record` atomically and durably: a temporary file, fsynced, renamed
/// over the old one, and the directory fsynced.
fn write(dir: &Path, record: &Record) -> Result<()> {
    check_id(&record.id)?;
    let path = path_of(dir, &record.id);
    let tmp = tmp_of(dir, &record.id);
    let written = (|| -> std::io::Result<()> {
        let bytes = encode(record)?;
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| io_err("write", path, e))
}

/// Deletes the record of `id` in `dir`; whether there was one.
fn delete(dir: &Path, id: &str) -> Result<bool> {
    let path = path_of(dir, id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path, e)),
    }
}

fn sweep_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
