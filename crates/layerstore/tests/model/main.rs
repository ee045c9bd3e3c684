//! Random operation sequences against an in-memory model: store and model agree
//! after every step and after reopening.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plies_layerstore::{AufsStore, Error, Overlay2Store, StoreOptions};
use proptest::prelude::*;

/// A small depth so sequences reach the limit.
const MAX_DEPTH: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Create { id: u8, parent: Option<u8> },
    Remove(u8),
    Commit(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..10u8, proptest::option::of(0..10u8)).prop_map(|(id, parent)| Op::Create { id, parent }),
        3 => (0..10u8).prop_map(Op::Remove),
        1 => (0..10u8).prop_map(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

fn name(n: u8) -> String {
    format!("layer-{n}")
}

#[derive(Debug, Default)]
struct Model {
    /// id → (parent, committed)
    layers: BTreeMap<String, (Option<String>, bool)>,
}

impl Model {
    fn ancestors(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = self.layers[id].0.clone();
        while let Some(p) = cur {
            cur = self.layers[&p].0.clone();
            out.push(p);
        }
        out
    }
    fn has_children(&self, id: &str) -> bool {
        self.layers.values().any(|(p, _)| p.as_deref() == Some(id))
    }
}

enum Store {
    Overlay2(Overlay2Store),
    Aufs(AufsStore),
}

impl Store {
    fn open(aufs: bool, path: &Path) -> Self {
        let opts = StoreOptions::default()
            .with_max_depth(MAX_DEPTH)
            .with_durable(false);
        if aufs {
            Store::Aufs(AufsStore::open(path, opts).unwrap())
        } else {
            Store::Overlay2(Overlay2Store::open(path, opts).unwrap())
        }
    }
    fn create(&self, id: &str, parent: Option<&str>) -> Result<(), Error> {
        match self {
            Store::Overlay2(s) => s.create(id, parent).map(drop),
            Store::Aufs(s) => s.create(id, parent).map(drop),
        }
    }
    fn remove(&self, id: &str) -> Result<(), Error> {
        match self {
            Store::Overlay2(s) => s.remove(id),
            Store::Aufs(s) => s.remove(id),
        }
    }
    fn diff(&self, id: &str) -> PathBuf {
        match self {
            Store::Overlay2(s) => s.diff_dir(id),
            Store::Aufs(s) => s.diff_dir(id),
        }
    }

    /// Asserts the store holds exactly what the model says.
    fn agrees(&self, model: &Model) {
        let (list, clean) = match self {
            Store::Overlay2(s) => (s.list().unwrap(), s.fsck(false).unwrap()),
            Store::Aufs(s) => (s.list().unwrap(), s.fsck(false).unwrap()),
        };
        assert_eq!(list, model.layers.keys().cloned().collect::<Vec<_>>());
        assert!(clean.is_clean(), "{clean:?}");
        for (id, (parent, committed)) in &model.layers {
            let ancestors = model.ancestors(id);
            let lowers: Vec<PathBuf> = ancestors.iter().map(|a| self.diff(a)).collect();
            match self {
                Store::Overlay2(s) => {
                    assert!(s.exists(id));
                    assert_eq!(&s.parent(id).unwrap(), parent);
                    assert_eq!(s.ancestors(id).unwrap(), ancestors);
                    assert_eq!(s.lowers(id).unwrap(), lowers);
                    assert_eq!(s.is_committed(id).unwrap(), *committed);
                }
                Store::Aufs(s) => {
                    assert!(s.exists(id));
                    assert_eq!(&s.parent(id).unwrap(), parent);
                    assert_eq!(s.ancestors(id).unwrap(), ancestors);
                    assert_eq!(s.lowers(id).unwrap(), lowers);
                }
            }
        }
    }
}

fn run(aufs: bool, ops: Vec<Op>) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let mut store = Store::open(aufs, &path);
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Create { id, parent } => {
                let (id, parent) = (name(id), parent.map(name));
                let got = store.create(&id, parent.as_deref());
                if model.layers.contains_key(&id) {
                    assert!(matches!(got, Err(Error::Exists { .. })), "{got:?}");
                } else if parent
                    .as_ref()
                    .is_some_and(|p| !model.layers.contains_key(p))
                {
                    assert!(matches!(got, Err(Error::ParentNotFound { .. })), "{got:?}");
                } else if parent
                    .as_ref()
                    .is_some_and(|p| model.ancestors(p).len() + 1 > MAX_DEPTH)
                {
                    assert!(matches!(got, Err(Error::TooDeep { .. })), "{got:?}");
                } else {
                    got.unwrap();
                    model.layers.insert(id, (parent, false));
                }
            }
            Op::Remove(id) => {
                let id = name(id);
                // Removing a parent is the caller's business (Docker's too); the
                // model keeps to leaves.
                if !model.has_children(&id) {
                    store.remove(&id).unwrap();
                    model.layers.remove(&id);
                }
            }
            Op::Commit(id) => {
                let id = name(id);
                if let Store::Overlay2(s) = &store {
                    let got = s.mark_committed(&id);
                    match model.layers.get_mut(&id) {
                        Some(layer) => {
                            got.unwrap();
                            layer.1 = true;
                        }
                        None => assert!(matches!(got, Err(Error::NotFound { .. })), "{got:?}"),
                    }
                }
            }
            Op::Reopen => {
                drop(store);
                store = Store::open(aufs, &path);
            }
        }
        store.agrees(&model);
    }
    drop(store);
    Store::open(aufs, &path).agrees(&model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn overlay2_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(false, ops);
    }

    #[test]
    fn aufs_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(true, ops);
    }
}
