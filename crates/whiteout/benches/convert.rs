//! In-place conversion of a generated layer of 10,000 files in 100 directories,
//! with 1,000 whiteouts and 50 opaque directories: aufs -> overlay -> aufs per
//! iteration (the round trip leaves the layer as it was, so iterations repeat).

use std::fs;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use plies_whiteout::XattrNamespace;
use plies_whiteout::convert::{aufs_to_overlay, overlay_to_aufs};

fn layer(root: &Path) {
    for d in 0..100 {
        let dir = root.join(format!("dir{d:03}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("file{f:03}")), b"content").unwrap();
        }
        for w in 0..10 {
            fs::write(dir.join(format!(".wh.gone{w:02}")), b"").unwrap();
        }
        if d % 2 == 0 {
            fs::write(dir.join(".wh..wh..opq"), b"").unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    // trusted.* needs CAP_SYS_ADMIN; user.* works for the owner of the files.
    let ns = if rustix::process::geteuid().is_root() {
        XattrNamespace::Trusted
    } else {
        XattrNamespace::User
    };
    let tmp = tempfile::tempdir().unwrap();
    layer(tmp.path());
    let dir = fs::File::open(tmp.path()).unwrap();
    c.bench_function("round trip, 10k files, 1k whiteouts", |b| {
        b.iter(|| {
            let there = aufs_to_overlay(&dir, ns).unwrap();
            let back = overlay_to_aufs(&dir, ns).unwrap();
            assert_eq!((there.whiteouts, back.whiteouts), (1000, 1000));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
