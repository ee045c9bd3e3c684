//! Stress: 8 threads × 1000 random get/put/create/apply/remove on shared chains
//! of one driver: overlay2, and aufs where the kernel has it. Afterwards no mount
//! is left and every refcount is zero.

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{E, layer};
use plies_drivers::{Aufs, CreateOptions, Driver, Options, Overlay2};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const THREADS: usize = 8;
const OPS: usize = 1000;
const CHAIN: [&str; 4] = ["c0", "c1", "c2", "c3"];

/// A layer tar that adds one file, then breaks at the next header.
fn broken_tar() -> Vec<u8> {
    let mut tar =
        common::layer_tar(&[E::File("partial", "p", 0o644), E::File("never", "n", 0o644)]);
    // The second header's checksum field.
    tar[1024 + 148..1024 + 156].copy_from_slice(b"0000000\0");
    tar
}

/// What the stress needs of a driver beyond [`Driver`].
trait Stressed: Driver + Send + Sync + 'static {
    fn held(&self, id: &str) -> usize;
    fn parent_of(&self, id: &str) -> Option<String>;
    fn layers(&self) -> Vec<String>;
    fn clean(&self) -> bool;
    /// Whether `id` kept anything of a mount (overlay2's `merged`, aufs's
    /// `mnt/<id>` holding files).
    fn view_left(&self, id: &str) -> bool;
}

impl Stressed for Overlay2 {
    fn held(&self, id: &str) -> usize {
        self.refcount(id)
    }
    fn parent_of(&self, id: &str) -> Option<String> {
        self.store().parent(id).unwrap()
    }
    fn layers(&self) -> Vec<String> {
        self.store().list().unwrap()
    }
    fn clean(&self) -> bool {
        self.store().fsck(false).unwrap().is_clean()
    }
    fn view_left(&self, id: &str) -> bool {
        self.store().layer_dir(id).join("merged").exists()
    }
}

impl Stressed for Aufs {
    fn held(&self, id: &str) -> usize {
        self.refcount(id)
    }
    fn parent_of(&self, id: &str) -> Option<String> {
        self.store().parent(id).unwrap()
    }
    fn layers(&self) -> Vec<String> {
        self.store().list().unwrap()
    }
    fn clean(&self) -> bool {
        self.store().fsck(false).unwrap().is_clean()
    }
    fn view_left(&self, id: &str) -> bool {
        std::fs::read_dir(self.store().mnt_dir(id)).is_ok_and(|mut d| d.next().is_some())
    }
}

#[test]
fn random_get_put_create_remove() {
    if !plies_testkit::require_overlay("random_get_put_create_remove") {
        return;
    }
    let dir = common::tempdir();
    let d = Arc::new(Overlay2::open(&dir.path().join("overlay2"), &Options::default()).unwrap());
    stress(&dir, d);
}

/// The same on the kernel's aufs, where the kernel has it.
#[test]
fn aufs_kernel_random_get_put_create_remove() {
    if !plies_testkit::require_aufs("aufs_kernel_random_get_put_create_remove") {
        return;
    }
    let dir = common::tempdir();
    let d = Arc::new(Aufs::open(&dir.path().join("aufs"), &Options::default()).unwrap());
    stress(&dir, d);
}

fn stress<D: Stressed>(dir: &tempfile::TempDir, d: Arc<D>) {
    let mut parent: Option<&str> = None;
    for (i, id) in CHAIN.iter().enumerate() {
        let file: &'static str = Box::leak(format!("f{i}").into_boxed_str());
        layer(&*d, id, parent, &[E::File(file, "x", 0o644)]);
        parent = Some(id);
    }
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(t as u64);
                let mut held: Vec<String> = Vec::new();
                let mut own: Vec<String> = Vec::new();
                let mut made = 0;
                for _ in 0..OPS {
                    match rng.random_range(0..21) {
                        0..=7 => {
                            let candidates: Vec<String> = CHAIN
                                .iter()
                                .map(|s| s.to_string())
                                .chain(own.iter().cloned())
                                .collect();
                            let id = &candidates[rng.random_range(0..candidates.len())];
                            let root = d.get(id, None).unwrap();
                            // The view is the chain below the layer.
                            assert!(root.join("f0").exists(), "{id} mounted at {root:?}");
                            held.push(id.clone());
                        }
                        8..=14 if !held.is_empty() => {
                            let id = held.swap_remove(rng.random_range(0..held.len()));
                            d.put(&id).unwrap();
                        }
                        15..=17 => {
                            let id = format!("t{t}-{made}");
                            made += 1;
                            let parent = CHAIN[rng.random_range(0..CHAIN.len())];
                            d.create_read_write(&id, Some(parent), &CreateOptions::default())
                                .unwrap();
                            own.push(id);
                        }
                        18 => {
                            // A diff into one of this thread's layers that is not
                            // mounted; half of them break halfway and change nothing.
                            let free: Vec<&String> =
                                own.iter().filter(|id| !held.contains(id)).collect();
                            if free.is_empty() {
                                continue;
                            }
                            let id = free[rng.random_range(0..free.len())].clone();
                            let parent = d.parent_of(&id);
                            let before = d.changes(&id, parent.as_deref()).unwrap();
                            if rng.random_bool(0.5) {
                                let tar = common::layer_tar(&[E::File("applied", "a", 0o644)]);
                                d.apply_diff(&id, parent.as_deref(), &mut tar.as_slice())
                                    .unwrap();
                            } else {
                                let tar = broken_tar();
                                assert!(
                                    d.apply_diff(&id, parent.as_deref(), &mut tar.as_slice())
                                        .is_err()
                                );
                                assert_eq!(d.changes(&id, parent.as_deref()).unwrap(), before);
                            }
                        }
                        _ if !own.is_empty() => {
                            let id = own.swap_remove(rng.random_range(0..own.len()));
                            // Removal unmounts a held layer; its holds are gone with it.
                            d.remove(&id).unwrap();
                            held.retain(|h| *h != id);
                        }
                        _ => {}
                    }
                }
                for id in held {
                    d.put(&id).unwrap();
                }
                for id in own {
                    d.remove(&id).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("{} operations in {:?}", THREADS * OPS, start.elapsed());
    assert!(
        plies_testkit::mounts_under(dir.path()).is_empty(),
        "no mount is left"
    );
    assert_eq!(d.layers(), CHAIN, "only the chain is left");
    for id in CHAIN {
        assert_eq!(d.held(id), 0, "{id}");
        assert!(!d.view_left(id), "{id} kept nothing of a mount");
    }
    assert!(d.clean());
}
