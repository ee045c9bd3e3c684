//! The snapshot metadata: a snapshot's key, kind, parent, labels and times,
//! kept in its layer's record (under [`ATTACHED`]), so that a change writes one
//! file, atomically, with the layer's own state: `Commit` rewrites the record
//! under the new name, `Remove` deletes it with the layer.
//!
//! Versions before kept every entry in one file, `snapshots.json`;
//! [`MetaFile`] reads it once to move its entries into the records.

use std::collections::BTreeMap;
use std::fs::File;
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

/// Where in a layer record's `attached` a snapshot is kept.
pub(crate) const ATTACHED: &str = "containerd";

/// A snapshot as its layer's record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attached {
    key: String,
    kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    created: SystemTime,
    updated: SystemTime,
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
    /// The snapshot a layer record keeps, with its key; `None` for a layer
    /// no snapshot names (or whose entry does not parse).
    pub(crate) fn from_record(record: &plies_layerdb::Record) -> Option<(String, Entry)> {
        let value = record.attached.get(ATTACHED)?;
        let a: Attached = match serde_json::from_value(value.clone()) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(layer = %record.id, error = %e, "a snapshot entry that does not parse");
                return None;
            }
        };
        Some((
            a.key,
            Entry {
                layer: record.id.clone(),
                kind: a.kind,
                parent: a.parent,
                labels: a.labels,
                created: a.created,
                updated: a.updated,
            },
        ))
    }

    /// Puts the snapshot `key` into its layer's record.
    pub(crate) fn attach(&self, key: &str, record: &mut plies_layerdb::Record) -> Result<()> {
        let a = Attached {
            key: key.to_owned(),
            kind: self.kind,
            parent: self.parent.clone(),
            labels: self.labels.clone(),
            created: self.created,
            updated: self.updated,
        };
        // Only a time before 1970 fails to encode.
        let value = serde_json::to_value(a).map_err(|e| Error::InvalidArgument {
            reason: format!("snapshot {key:?}: {e}"),
        })?;
        record.attached.insert(ATTACHED.to_owned(), value);
        Ok(())
    }

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

/// The metadata file of earlier versions, `<dir>/snapshots.json`.
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

    /// Whether the file is there.
    pub(crate) fn exists(&self) -> bool {
        self.path.exists()
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

    /// Deletes the file (its entries are in the records by then), durably.
    pub(crate) fn remove(&self) -> Result<()> {
        std::fs::remove_file(&self.path)
            .and_then(|()| File::open(&self.dir)?.sync_all())
            .map_err(|e| io_err("remove", &self.path, e))
    }
}
