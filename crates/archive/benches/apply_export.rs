//! Apply and export of a generated layer: ~2k files, ~40 MB, a realistic mix
//! of many small files, some medium ones and a few large ones.

use std::io::Read;
use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use plies_archive::{ApplyOptions, ExportOptions, WhiteoutFormat, apply, apply_file, export};

/// A small deterministic generator (64-bit LCG), so every run sees the same tree.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Writes `files` files under `root` in two levels of directories.
fn generate(root: &Path, files: usize) {
    let mut rng = Lcg(42);
    let mut chunk = vec![0u8; 1 << 20];
    for b in chunk.iter_mut() {
        *b = rng.next() as u8;
    }
    for i in 0..files {
        let dir = root.join(format!("d{:02}/s{:02}", i % 20, (i / 20) % 5));
        std::fs::create_dir_all(&dir).unwrap();
        let size = match i % 20 {
            0 => 150_000 + rng.next() as usize % 200_000,
            1..=5 => 8_000 + rng.next() as usize % 32_000,
            _ => rng.next() as usize % 4_000,
        };
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            let start = rng.next() as usize % (chunk.len() / 2);
            let take = (size - data.len()).min(chunk.len() - start);
            data.extend_from_slice(&chunk[start..start + take]);
        }
        std::fs::write(dir.join(format!("file{i:05}.bin")), &data).unwrap();
        if i % 50 == 0 {
            std::os::unix::fs::symlink(format!("file{i:05}.bin"), dir.join(format!("link{i:05}")))
                .unwrap();
        }
    }
}

fn layer(c: &mut Criterion) {
    let src = tempfile::tempdir().unwrap();
    generate(src.path(), 2000);
    let export_opts = ExportOptions::default().with_whiteouts(WhiteoutFormat::Merged);
    let mut tar = Vec::new();
    export(src.path(), &export_opts)
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    let apply_opts = ApplyOptions::default().with_whiteouts(WhiteoutFormat::Merged);

    let mut group = c.benchmark_group("layer_2k_files");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(tar.len() as u64));
    group.bench_function("apply", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dst| {
                apply(tar.as_slice(), dst.path(), &apply_opts).unwrap();
                dst
            },
            BatchSize::PerIteration,
        )
    });
    let tar_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tar_file.path(), &tar).unwrap();
    group.bench_function("apply_file", |b| {
        b.iter_batched(
            || {
                let file = std::fs::File::open(tar_file.path()).unwrap();
                (file, tempfile::tempdir().unwrap())
            },
            |(file, dst)| {
                apply_file(&file, dst.path(), &apply_opts).unwrap();
                dst
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("export", |b| {
        let mut buf = vec![0u8; 1 << 20];
        b.iter(|| {
            let mut reader = export(src.path(), &export_opts).unwrap();
            let mut total = 0usize;
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break total;
                }
                total += n;
            }
        })
    });
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
