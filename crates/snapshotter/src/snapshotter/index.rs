//! The snapshots by key, kept in memory for one generation of the records.

use std::collections::HashMap;
use std::sync::MutexGuard;

use plies_layerdb::{Generation, Record};

use crate::meta::Entry;

/// The snapshots by key, and how many layers sit on each layer, as the records
/// of one generation say.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) generation: Option<Generation>,
    pub(super) by_key: HashMap<String, Entry>,
    pub(super) children: HashMap<String, usize>,
}

impl Index {
    pub(super) fn build(generation: Generation, records: &[Record]) -> Index {
        let mut index = Index {
            generation: Some(generation),
            ..Index::default()
        };
        for record in records {
            if let Some(p) = &record.parent {
                *index.children.entry(p.clone()).or_default() += 1;
            }
            if !record.complete {
                continue;
            }
            if let Some((key, entry)) = Entry::from_record(record) {
                index.by_key.insert(key, entry);
            }
        }
        index
    }

    /// The layer of `entry`'s parent snapshot (what its layer sits on).
    pub(super) fn parent_layer(&self, entry: &Entry) -> Option<String> {
        let parent = self.by_key.get(entry.parent.as_deref()?)?;
        Some(parent.layer.clone())
    }

    pub(super) fn insert(&mut self, key: &str, entry: Entry, parent_layer: Option<&str>) {
        if let Some(p) = parent_layer {
            *self.children.entry(p.to_owned()).or_default() += 1;
        }
        self.by_key.insert(key.to_owned(), entry);
    }

    pub(super) fn remove(&mut self, key: &str, parent_layer: Option<&str>) {
        self.by_key.remove(key);
        if let Some(p) = parent_layer {
            if let Some(n) = self.children.get_mut(p) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// The index a call reads: the kept one, locked, or a fresh copy.
pub(super) enum IndexRef<'s> {
    Kept(MutexGuard<'s, Index>),
    Fresh(Box<Index>),
}

impl std::ops::Deref for IndexRef<'_> {
    type Target = Index;
    fn deref(&self) -> &Index {
        match self {
            IndexRef::Kept(g) => g,
            IndexRef::Fresh(i) => i,
        }
    }
}
