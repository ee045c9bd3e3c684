//! Snapshotter call costs, in-process (no gRPC): Prepare+Mounts+Remove of an
//! active snapshot on a committed parent 1 and 120 layers deep, View+Remove,
//! and Prepare+Commit+Remove of an empty layer, against a real overlay2 store
//! (root and overlayfs needed; vfs otherwise).

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use plies_snapshotter::{DriverChoice, Options, Snapshotter};

/// A chain of `depth` committed snapshots; returns the top one's name.
fn chain(s: &Snapshotter, depth: usize) -> String {
    let mut parent = String::new();
    for i in 0..depth {
        let key = format!("build-{depth}-{i}");
        let name = format!("layer-{depth}-{i}");
        s.prepare(&key, &parent, HashMap::new()).unwrap();
        s.commit(&name, &key, HashMap::new(), "").unwrap();
        parent = name;
    }
    parent
}

fn calls(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let choice = if rustix::process::geteuid().is_root() {
        DriverChoice::Auto
    } else {
        DriverChoice::Vfs
    };
    let s = Snapshotter::open(tmp.path(), choice, &Options::default()).unwrap();
    let mut group = c.benchmark_group(format!("snapshotter_{}", s.driver_name()));
    group.sample_size(50);
    let mut n = 0u64;
    for depth in [1usize, 120] {
        let parent = chain(&s, depth);
        group.bench_with_input(
            BenchmarkId::new("prepare_mounts_remove", depth),
            &parent,
            |b, parent| {
                b.iter(|| {
                    n += 1;
                    let key = format!("active-{n}");
                    black_box(s.prepare(&key, parent, HashMap::new()).unwrap());
                    black_box(s.mounts(&key).unwrap());
                    s.remove(&key).unwrap();
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("view_remove", depth),
            &parent,
            |b, parent| {
                b.iter(|| {
                    n += 1;
                    let key = format!("view-{n}");
                    black_box(s.view(&key, parent, HashMap::new()).unwrap());
                    s.remove(&key).unwrap();
                })
            },
        );
    }
    group.bench_function("prepare_commit_remove", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("extract-{n}");
            let name = format!("committed-{n}");
            s.prepare(&key, "", HashMap::new()).unwrap();
            s.commit(&name, &key, HashMap::new(), "").unwrap();
            s.remove(&name).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, calls);
criterion_main!(benches);
