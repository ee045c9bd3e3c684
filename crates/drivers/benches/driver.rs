//! Driver benchmarks on the real kernel (root and overlayfs needed; skipped
//! otherwise): `get`+`put` of a read-write layer over 1, 16, 128 and (new mount
//! API) 400 lower layers; `changes` of a 10 000-file image with 10 changed files,
//! native (upper walk) against naive (both trees), through overlay2 and through
//! aufs (recorded mounts: its branch walk against the comparison of the two
//! unions); `apply_diff` and `diff` of a generated tree through overlay2.

use std::hint::black_box;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use plies_drivers::{CreateOptions, Driver, Options, Overlay2};

fn can_run() -> bool {
    rustix::process::geteuid().is_root()
        && std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\toverlay\n"))
}

fn tar_of(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, data) in files {
        if let Some((dir, _)) = path.rsplit_once('/') {
            if dirs.insert(dir.to_owned()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(1_600_000_000);
                b.append_data(&mut h, format!("{dir}/"), &b""[..]).unwrap();
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, &path, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn open(dir: &Path, options: &[&str]) -> Overlay2 {
    let opts = Options::parse(options).unwrap();
    Overlay2::open(&dir.join("overlay2"), &opts).unwrap()
}

/// A read-write layer `top` over `depth` layers of one file each.
fn chain(d: &Overlay2, depth: usize) {
    let mut parent: Option<String> = None;
    for i in 0..depth {
        let id = format!("l{i}");
        d.create(&id, parent.as_deref(), &CreateOptions::default())
            .unwrap();
        let tar = tar_of([(format!("f{i}"), b"x".to_vec())]);
        d.apply_diff(&id, parent.as_deref(), &mut tar.as_slice())
            .unwrap();
        parent = Some(id);
    }
    d.create_read_write("top", parent.as_deref(), &CreateOptions::default())
        .unwrap();
}

fn get_put(c: &mut Criterion) {
    if !can_run() {
        eprintln!("skipping get_put: needs root and overlayfs");
        return;
    }
    let mut group = c.benchmark_group("get_put");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    for (depth, options) in [
        (1, &[][..]),
        (16, &[][..]),
        (128, &[][..]),
        (
            400,
            &["overlay2.mount_mode=fsconfig", "overlay2.max_depth=500"][..],
        ),
    ] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let d = open(dir.path(), options);
        chain(&d, depth);
        group.bench_with_input(BenchmarkId::from_parameter(depth), &depth, |b, _| {
            b.iter(|| {
                let root = d.get("top", None).unwrap();
                black_box(&root);
                d.put("top").unwrap();
            });
        });
        d.cleanup().unwrap();
    }
    group.finish();
}

/// `base`, an image of 10 000 files in 100 directories, and `top` on it,
/// changing 10 of them.
fn image_and_change(d: &dyn Driver) {
    let image = tar_of((0..10_000).map(|i| (format!("d{}/f{i}", i / 100), vec![b'x'; 64])));
    d.create("base", None, &CreateOptions::default()).unwrap();
    d.apply_diff("base", None, &mut image.as_slice()).unwrap();
    let change = tar_of((0..10).map(|i| (format!("d{}/f{}", i * 7, i * 700 + 3), vec![b'y'; 80])));
    d.create("top", Some("base"), &CreateOptions::default())
        .unwrap();
    d.apply_diff("top", Some("base"), &mut change.as_slice())
        .unwrap();
}

fn changes(c: &mut Criterion) {
    if !can_run() {
        eprintln!("skipping changes: needs root and overlayfs");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = open(dir.path(), &[]);
    image_and_change(&d);
    let scratch = dir.path().join("tmp");
    let native = d.changes("top", Some("base")).unwrap();
    assert_eq!(
        native,
        plies_drivers::naive::changes(&d, "top", Some("base"), &scratch).unwrap()
    );
    assert_eq!(native.len(), 20);

    let mut group = c.benchmark_group("changes_10k_files_10_changed");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("native", |b| {
        b.iter(|| black_box(d.changes("top", Some("base")).unwrap()))
    });
    group.bench_function("naive", |b| {
        b.iter(|| {
            black_box(plies_drivers::naive::changes(&d, "top", Some("base"), &scratch).unwrap())
        })
    });
    group.finish();
    d.cleanup().unwrap();
}

fn aufs_changes(c: &mut Criterion) {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping aufs_changes: needs root");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = plies_drivers::Aufs::open_with(
        &dir.path().join("aufs"),
        &Options::default(),
        std::sync::Arc::new(plies_drivers::RecordingMounter::new()),
    )
    .unwrap();
    image_and_change(&d);
    // The two unions, held for the whole run: what a naive diff compares once
    // it has mounted them.
    let old = d.get("base", None).unwrap();
    let new = d.get("top", None).unwrap();
    let native = d.changes("top", Some("base")).unwrap();
    assert_eq!(native, plies_archive::changes::between(&old, &new).unwrap());
    assert_eq!(native.len(), 20);

    let mut group = c.benchmark_group("aufs_changes_10k_files_10_changed");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("native", |b| {
        b.iter(|| black_box(d.changes("top", Some("base")).unwrap()))
    });
    group.bench_function("union_comparison", |b| {
        b.iter(|| black_box(plies_archive::changes::between(&old, &new).unwrap()))
    });
    group.finish();
    d.put("top").unwrap();
    d.put("base").unwrap();
}

fn apply_and_diff(c: &mut Criterion) {
    if !can_run() {
        eprintln!("skipping apply_and_diff: needs root and overlayfs");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = open(dir.path(), &[]);
    // 2 000 files in 40 directories, 1 to 16 KiB: 16 MiB or so.
    let tree = tar_of((0..2_000).map(|i| {
        (
            format!("usr/lib/d{}/f{i}", i / 50),
            vec![b'z'; 1024 * (1 + i % 16)],
        )
    }));
    let mut group = c.benchmark_group("overlay2_generated_tree");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(criterion::Throughput::Bytes(tree.len() as u64));
    let mut n = 0;
    group.bench_function("apply_diff", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let id = format!("apply{n}");
                d.create(&id, None, &CreateOptions::default()).unwrap();
                let start = Instant::now();
                d.apply_diff(&id, None, &mut tree.as_slice()).unwrap();
                total += start.elapsed();
                d.remove(&id).unwrap();
            }
            total
        })
    });
    d.create("tree", None, &CreateOptions::default()).unwrap();
    d.apply_diff("tree", None, &mut tree.as_slice()).unwrap();
    group.bench_function("diff", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(tree.len());
            d.diff("tree", None).unwrap().read_to_end(&mut out).unwrap();
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, get_put, changes, aufs_changes, apply_and_diff);
criterion_main!(benches);
