//! Store costs: create + remove in a 10k-layer store (durable and not), open of
//! a 10k-layer store, lowers of a 128-deep chain.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use plies_layerstore::{Overlay2Store, StoreOptions};

const LAYERS: usize = 10_000;

/// Creates `LAYERS` layers in chains of 100 (so depth stays within limits).
fn fill(store: &Overlay2Store) {
    for i in 0..LAYERS {
        let parent = (i % 100 != 0).then(|| format!("layer-{}", i - 1));
        store
            .create(&format!("layer-{i}"), parent.as_deref())
            .unwrap();
    }
}

/// One create + remove in a store already holding `LAYERS` layers; a full
/// 10k-layer create + remove costs `LAYERS` times this.
fn create_remove(c: &mut Criterion) {
    let mut group = c.benchmark_group("create_remove_in_10k");
    group.sample_size(20);
    for durable in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let fast = StoreOptions::default().with_durable(false);
        fill(&Overlay2Store::open(tmp.path(), fast).unwrap());
        let opts = StoreOptions::default().with_durable(durable);
        let store = Overlay2Store::open(tmp.path(), opts).unwrap();
        let name = if durable { "durable" } else { "not_durable" };
        let mut n = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let id = format!("bench-{n}");
                let parent = format!("layer-{}", n % LAYERS);
                store.create(&id, Some(&parent)).unwrap();
                store.remove(&id).unwrap();
            })
        });
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default().with_durable(false);
    fill(&Overlay2Store::open(tmp.path(), opts).unwrap());
    let mut group = c.benchmark_group("open_10k");
    group.sample_size(20);
    group.bench_function("open", |b| {
        b.iter(|| black_box(Overlay2Store::open(tmp.path(), opts).unwrap()))
    });
    group.bench_function("open_and_list", |b| {
        b.iter(|| {
            let s = Overlay2Store::open(tmp.path(), opts).unwrap();
            black_box(s.list().unwrap().len())
        })
    });
    group.finish();
}

fn lowers(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default().with_durable(false);
    let store = Overlay2Store::open(tmp.path(), opts).unwrap();
    store.create("0", None).unwrap();
    for i in 1..=128 {
        store
            .create(&i.to_string(), Some(&(i - 1).to_string()))
            .unwrap();
    }
    c.bench_function("lowers_128_deep", |b| {
        b.iter(|| black_box(store.lowers("128").unwrap().len()))
    });
    c.bench_function("metadata_128_deep", |b| {
        b.iter(|| black_box(store.metadata("128").unwrap()))
    });
    // What every mount reads: the lower entries and the committed mark.
    c.bench_function("mount_facts_128_deep", |b| {
        b.iter(|| black_box(store.mount_facts("128").unwrap()))
    });
}

criterion_group!(benches, create_remove, open, lowers);
criterion_main!(benches);
