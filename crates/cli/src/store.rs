//! The store a command works on: the driver under `--root`, plus the command's
//! record of each layer's parent and state.
//!
//! Drivers keep files, not lineage (Docker keeps lineage in its `layerdb`): vfs
//! has no notion of a parent, and the parent a diff is taken against is the
//! caller's to give. So `plies` keeps one small JSON record per layer in
//! `<root>/plies/<driver>/layers/<id>.json`.
//!
//! Who may change what:
//! - Commands that change layers hold an exclusive `flock` on
//!   `<root>/plies/<driver>/lock` while they run; the driver underneath also
//!   holds each layer's own lock (see `plies_layerstore::LayerLocks`), which
//!   other front ends on the same root (`plies serve`, library users) share.
//! - A new layer's record is written `complete: false` before the layer is made
//!   and marked complete (by an atomic rename) only once its contents are in and
//!   durable. Only such a layer, made by the same command, is removed when the
//!   command fails; and since the next writer holds the exclusive lock, it knows
//!   an incomplete record's writer is dead and removes that layer.
//! - An apply onto an existing layer never marks it incomplete: the driver
//!   applies to a copy that replaces the layer only on success.
//! - `fsck` without `--repair` takes the lock shared (waiting, within a bound,
//!   for the writer of the moment), so it never reports work in progress as
//!   damage; `ls` and the other readers take no lock and show complete layers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plies_drivers::{Driver, DriverChoice, Options};
use serde::{Deserialize, Serialize};

use crate::args::{DriverArg, Global};

/// What `plies` records about a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Where `plies mount` mounted it, until `plies umount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounted: Option<PathBuf>,
}

/// An opened store.
pub struct Store {
    /// The driver.
    pub driver: Box<dyn Driver>,
    /// The driver options in force.
    pub options: Options,
    /// The graph root (`--root`).
    pub root: PathBuf,
    records: PathBuf,
    _lock: Option<File>,
}

/// Whether a command changes the store (and so takes the lock and sweeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only, beside any writer.
    Read,
    /// Reads a state no writer is in the middle of: the lock, shared.
    Inspect,
    /// Changes layers.
    Write,
    /// Takes the lock but leaves what an interrupted command left, for `fsck` to report.
    Check,
}

/// How long a command waits for the store's lock before it gives up.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The driver choice `--driver` names.
pub fn choice(d: DriverArg) -> DriverChoice {
    match d {
        DriverArg::Auto => DriverChoice::Auto,
        DriverArg::Overlay2 => DriverChoice::Overlay2,
        DriverArg::Aufs => DriverChoice::Aufs,
        DriverArg::Vfs => DriverChoice::Vfs,
    }
}

impl Store {
    /// Opens the driver under the root, and for [`Access::Write`] takes the lock
    /// and removes what an interrupted command left.
    pub fn open(g: &Global, access: Access) -> Result<Store> {
        let options = Options::parse(&g.storage_opt).context("--storage-opt")?;
        Store::open_with(&g.root, choice(g.driver), options, access)
    }

    /// [`Store::open`] with explicit arguments.
    pub fn open_with(
        root: &Path,
        choice: DriverChoice,
        options: Options,
        access: Access,
    ) -> Result<Store> {
        let driver = plies_drivers::open(root, choice, &options)
            .with_context(|| format!("opening {} under {}", choice, root.display()))?;
        let dir = root.join("plies").join(driver.name());
        let records = dir.join("layers");
        std::fs::create_dir_all(&records)
            .with_context(|| format!("creating {}", records.display()))?;
        let lock = match access {
            Access::Read => None,
            Access::Inspect => Some(lock(&dir.join("lock"), false)?),
            Access::Write | Access::Check => Some(lock(&dir.join("lock"), true)?),
        };
        let store = Store {
            driver,
            options,
            root: root.to_path_buf(),
            records,
            _lock: lock,
        };
        if access == Access::Write {
            store.sweep()?;
        }
        Ok(store)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.records.join(format!("{id}.json"))
    }

    /// The record of `id`, if any.
    pub fn record(&self, id: &str) -> Result<Option<Record>> {
        check_id(id)?;
        let path = self.record_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("layer record {}", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("reading {}", path.display()))),
        }
    }

    /// The record of an existing, complete layer, found by its id or by a
    /// unique prefix of it (`sha256:` may be left out, as in `docker`).
    pub fn layer(&self, id: &str) -> Result<Record> {
        let id = &self.resolve(id)?;
        match self.record(id)? {
            Some(r) if r.complete && self.driver.exists(id) => Ok(r),
            Some(r) if !r.complete => {
                bail!("layer {id}: incomplete (an import or apply was interrupted)")
            }
            _ => bail!("layer {id}: no such layer"),
        }
    }

    /// The full id a prefix names; the id itself when no record starts with it.
    fn resolve(&self, id: &str) -> Result<String> {
        check_id(id)?;
        if self.record(id)?.is_some() {
            return Ok(id.to_owned());
        }
        let sha = format!("sha256:{id}");
        let matches: Vec<String> = self
            .records()?
            .into_iter()
            .map(|r| r.id)
            .filter(|r| r.starts_with(id) || r.starts_with(&sha))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Ok(id.to_owned()),
            many => bail!("layer {id}: the prefix names {} layers", many.len()),
        }
    }

    /// Writes a record atomically (temp file, fsync, rename, fsync of the directory).
    pub fn write_record(&self, record: &Record) -> Result<()> {
        check_id(&record.id)?;
        let path = self.record_path(&record.id);
        let tmp = self.records.join(format!(".{}.tmp", record.id));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            serde_json::to_writer_pretty(&mut f, record)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.records)?.sync_all()
        };
        write().with_context(|| format!("writing {}", path.display()))
    }

    /// Makes everything written to the store's filesystem durable (one `syncfs`):
    /// called before a layer is marked complete, so a complete layer survives a
    /// power cut.
    pub fn sync_data(&self) -> Result<()> {
        let root = File::open(self.driver.root())
            .with_context(|| format!("opening {}", self.driver.root().display()))?;
        rustix::fs::syncfs(&root)
            .with_context(|| format!("syncing {}", self.driver.root().display()))
    }

    /// Deletes a record.
    pub fn delete_record(&self, id: &str) -> Result<()> {
        let path = self.record_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("removing {}", path.display()))),
        }
    }

    /// Every record, sorted by id.
    pub fn records(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.records)
            .with_context(|| format!("{}", self.records.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            if let Some(id) = name.strip_suffix(".json") {
                if let Some(r) = self.record(id)? {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The number of layers below `id` (0 for a base layer).
    pub fn depth(&self, records: &BTreeMap<String, Record>, id: &str) -> usize {
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

    /// Removes a layer and its record (used to roll back a failed import/apply).
    pub fn remove_layer(&self, id: &str) -> Result<()> {
        if self.driver.exists(id) {
            self.driver
                .remove(id)
                .with_context(|| format!("layer {id}: removing"))?;
        }
        self.delete_record(id)
    }

    /// Removes the layers of incomplete records: what a killed import left.
    fn sweep(&self) -> Result<()> {
        for tmp in std::fs::read_dir(&self.records)? {
            let tmp = tmp?;
            if tmp.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(tmp.path());
            }
        }
        for r in self.records()? {
            if !r.complete {
                tracing::warn!(layer = %r.id, "removing a layer an interrupted command left incomplete");
                self.remove_layer(&r.id)?;
            }
        }
        Ok(())
    }
}

/// The longest parent chain walked before a cycle in the records is assumed.
const MAX_CHAIN: usize = 4096;

/// Refuses ids the record directory cannot hold (drivers check the rest).
pub fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.contains('/') || id.contains('\0') || id.starts_with('.') {
        bail!("invalid layer id {id:?}");
    }
    Ok(())
}

/// Takes the store's lock, exclusive or shared, waiting up to [`LOCK_WAIT`].
fn lock(path: &Path, exclusive: bool) -> Result<File> {
    use rustix::fs::FlockOperation;
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = std::time::Duration::from_micros(500);
    loop {
        match rustix::fs::flock(&file, op) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(20));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                bail!(
                    "store busy: another plies command (pid {}) has held {} for {} s",
                    holder.trim(),
                    path.display(),
                    LOCK_WAIT.as_secs()
                );
            }
            Err(e) => return Err(anyhow!(e).context(format!("locking {}", path.display()))),
        }
    }
    if exclusive {
        // Who holds it, for the message a waiter gives up with.
        use std::io::Seek;
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        write!(file, "{}", std::process::id())?;
    }
    Ok(file)
}
