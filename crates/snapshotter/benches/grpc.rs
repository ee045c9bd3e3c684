//! The cost of the gRPC hop: `Stat` and Prepare+Mounts+Remove called in
//! process and through `Server` on a unix socket (a tonic client on the same
//! machine, as containerd is).

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use plies_snapshotter::proto::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use plies_snapshotter::{DriverChoice, Options, Server, Snapshotter};

fn grpc(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let socket = tmp.path().join("plies.sock");
    let choice = if rustix::process::geteuid().is_root() {
        DriverChoice::Auto
    } else {
        DriverChoice::Vfs
    };
    let local = Snapshotter::open(&root.join("local"), choice, &Options::default()).unwrap();
    local.prepare("base-key", "", HashMap::new()).unwrap();
    local
        .commit("base", "base-key", HashMap::new(), "")
        .unwrap();
    let served = Snapshotter::open(&root.join("served"), choice, &Options::default()).unwrap();
    served.prepare("base-key", "", HashMap::new()).unwrap();
    served
        .commit("base", "base-key", HashMap::new(), "")
        .unwrap();
    let server = Server::bind(&socket, served).unwrap().spawn().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = rt.block_on(plies_snapshotter::connect(&socket)).unwrap();

    let mut group = c.benchmark_group("hop");
    group.sample_size(50);
    group.bench_function("stat_in_process", |b| {
        b.iter(|| black_box(local.stat("base").unwrap()))
    });
    group.bench_function("stat_over_grpc", |b| {
        b.iter(|| {
            let req = StatSnapshotRequest {
                key: "base".to_owned(),
                ..Default::default()
            };
            black_box(rt.block_on(client.stat(req)).unwrap())
        })
    });
    let mut n = 0u64;
    group.bench_function("prepare_mounts_remove_in_process", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("a-{n}");
            black_box(local.prepare(&key, "base", HashMap::new()).unwrap());
            black_box(local.mounts(&key).unwrap());
            local.remove(&key).unwrap();
        })
    });
    group.bench_function("prepare_mounts_remove_over_grpc", |b| {
        b.iter(|| {
            n += 1;
            let key = format!("a-{n}");
            rt.block_on(async {
                let prepare = PrepareSnapshotRequest {
                    key: key.clone(),
                    parent: "base".to_owned(),
                    ..Default::default()
                };
                black_box(client.prepare(prepare).await.unwrap());
                let mounts = MountsRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                black_box(client.mounts(mounts).await.unwrap());
                let remove = RemoveSnapshotRequest {
                    key,
                    ..Default::default()
                };
                client.remove(remove).await.unwrap();
            })
        })
    });
    group.finish();
    drop(client);
    server.stop().unwrap();
}

criterion_group!(benches, grpc);
criterion_main!(benches);
