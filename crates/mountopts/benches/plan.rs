//! Planning cost: 128 lowers of 64-byte paths (legacy, which falls back to relative
//! paths, and fsconfig), and aufs with 200 branches.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use plies_mountopts::{
    AufsStack, LayerPath, OverlayOptions, OverlayStack, UpperDirs, plan_aufs, plan_fsconfig,
    plan_legacy,
};

fn stack(depth: usize) -> OverlayStack {
    // 64-byte absolute paths in Docker's form: a 36-byte home, then `l/` and a
    // 26-character link id; 128 of them only fit a page as relative paths.
    let home_str = format!("/{}/", "h".repeat(34));
    let home = Path::new(&home_str);
    OverlayStack {
        home: home.to_path_buf(),
        lowers: (0..depth)
            .map(|i| LayerPath::in_home(home, format!("l/{i:026}")))
            .collect(),
        upper: Some(UpperDirs {
            upper: LayerPath::in_home(home, "top/diff"),
            work: LayerPath::in_home(home, "top/work"),
        }),
    }
}

fn bench(c: &mut Criterion) {
    let s = stack(128);
    assert_eq!(s.lowers[0].absolute.as_os_str().len(), 64);
    let opts = OverlayOptions::default();
    assert!(plan_legacy(&s, &opts).unwrap().cwd.is_some());
    c.bench_function("plan_legacy 128 lowers", |b| {
        b.iter(|| plan_legacy(black_box(&s), black_box(&opts)).unwrap())
    });
    c.bench_function("plan_fsconfig 128 lowers", |b| {
        b.iter(|| plan_fsconfig(black_box(&s), black_box(&opts)).unwrap())
    });
    let aufs = AufsStack {
        rw: "/var/lib/docker/aufs/diff/rw".into(),
        ro: (0..200)
            .map(|i| PathBuf::from(format!("/var/lib/docker/aufs/diff/{i:064}")))
            .collect(),
        label: None,
        dirperm1: true,
    };
    c.bench_function("plan_aufs 200 branches", |b| {
        b.iter(|| plan_aufs(black_box(&aufs)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
