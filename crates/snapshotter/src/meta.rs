//! The snapshot metadata: which plies layer each snapshot key names, its kind,
//! parent, labels and times, in one JSON file rewritten atomically.
//!
//! One file rather than one per snapshot: `Commit` moves an entry from its key to
//! its name, and one atomic rename of the whole file makes that a single step
//! that a crash leaves either before or after, with no roll-forward rule. The
//! file is small (a few hundred bytes per snapshot), and every change holds the
//! database's exclusive lock anyway, so rewriting it costs no concurrency.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};
use crate::proto;

/// The kind of a snapshot, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    Active,
    View,
    Committed,
}

impl Kind {
    pub(crate) fn proto(self) -> proto::Kind {
        match self {
            Kind::Active => proto::Kind::Active,
            Kind::View => proto::Kind::View,
            Kind::Committed => proto::Kind::Committed,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The plies layer holding its files.
    pub layer: String,
    pub kind: Kind,
    /// The parent snapshot's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

impl Entry {
    pub(crate) fn info(&self, key: &str) -> proto::Info {
        proto::Info {
            name: key.to_owned(),
            parent: self.parent.clone().unwrap_or_default(),
            kind: self.kind.proto() as i32,
            created_at: Some(self.created.into()),
            updated_at: Some(self.updated.into()),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// Every snapshot, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub snapshots: BTreeMap<String, Entry>,
}

/// The metadata file `<dir>/snapshots.json`.
#[derive(Debug, Clone)]
pub(crate) struct MetaFile {
    dir: PathBuf,
    path: PathBuf,
}

impl MetaFile {
    pub(crate) fn new(dir: &Path) -> MetaFile {
        MetaFile {
            dir: dir.to_path_buf(),
            path: dir.join("snapshots.json"),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata; a missing file is an empty store.
    pub(crate) fn load(&self) -> Result<Meta> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::BadMetadata {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Meta::default()),
            Err(e) => Err(io_err("read", &self.path, e)),
        }
    }

    /// Replaces the file atomically: a temporary file, fsync, rename, fsync of
    /// the directory. Only called with the database's exclusive lock held.
    pub(crate) fn save(&self, meta: &Meta) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err("create", &self.dir, e))?;
        let tmp = self.dir.join(".snapshots.json.tmp");
        let written = (|| -> std::io::Result<()> {
            // One write: serde_json writes a token at a time.
            let mut bytes = serde_json::to_vec(meta)?;
            bytes.push(b'\n');
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(|e| io_err("write", &self.path, e))
    }
}
