//! Time of a full, uncached `probe_all` on a directory of this machine's disk.

use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    // Under the target directory so the probes test the same disk as the store would.
    let parent = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(parent).expect("temp dir");
    let mut group = c.benchmark_group("kprobe");
    group.sample_size(10);
    group.bench_function("probe_all", |b| {
        b.iter(|| plies_kprobe::probe_all(dir.path()).expect("probe_all"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
