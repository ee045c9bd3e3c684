//! Differential test: the same layer tars applied through overlay2 and through
//! vfs (the copy-based reference) give identical trees, changes and diffs.

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Read;

use common::{Rig, mounted_tree, tar_listing};
use plies_drivers::{CreateOptions, Driver};
use plies_testkit::layer_tar::{LayerTar, MTIME};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What a generated layer stack holds: path to "is a directory".
type Model = BTreeMap<String, bool>;

/// A random layer over `model` (updated to the result): new files, dirs,
/// symlinks and hard links, rewritten files, deleted files and directories.
fn random_layer(rng: &mut StdRng, model: &mut Model, layer: usize) -> Vec<u8> {
    let mut b = LayerTar::new();
    let below = model.clone();
    let mut touched: Vec<String> = Vec::new();
    let mut added_files: Vec<String> = Vec::new();
    let mut emitted_dirs: Vec<String> = Vec::new();
    let ops = rng.random_range(5..25);
    for op in 0..ops {
        let dirs: Vec<String> = std::iter::once(String::new())
            .chain(model.iter().filter(|(_, d)| **d).map(|(p, _)| p.clone()))
            .collect();
        let dir = dirs[rng.random_range(0..dirs.len())].clone();
        let join = |name: &str| {
            if dir.is_empty() {
                name.to_owned()
            } else {
                format!("{dir}/{name}")
            }
        };
        // Parent entries first, as image builders write them.
        let mut emit_parents = |b: &mut LayerTar, path: &str| {
            let mut so_far = String::new();
            for comp in path
                .split('/')
                .collect::<Vec<_>>()
                .iter()
                .rev()
                .skip(1)
                .rev()
            {
                so_far = if so_far.is_empty() {
                    comp.to_string()
                } else {
                    format!("{so_far}/{comp}")
                };
                if !emitted_dirs.contains(&so_far) {
                    b.dir(format!("{so_far}/"), 0o755);
                    emitted_dirs.push(so_far.clone());
                }
            }
        };
        let deletable: Vec<String> = below
            .keys()
            .filter(|p| {
                model.contains_key(*p)
                    && !touched.iter().any(|t| {
                        t == *p
                            || t.starts_with(&format!("{p}/"))
                            || p.starts_with(&format!("{t}/"))
                    })
            })
            .cloned()
            .collect();
        match rng.random_range(0..10) {
            0..=3 => {
                let path = join(&format!("f{layer}-{op}"));
                let data = format!(
                    "layer {layer} op {op} {}",
                    "x".repeat(rng.random_range(0..200))
                );
                emit_parents(&mut b, &path);
                b.file(&path, &data, 0o644);
                model.insert(path.clone(), false);
                touched.push(path.clone());
                added_files.push(path);
            }
            4 => {
                let path = join(&format!("d{layer}-{op}"));
                emit_parents(&mut b, &format!("{path}/x"));
                model.insert(path.clone(), true);
                touched.push(path);
            }
            5 => {
                let path = join(&format!("s{layer}-{op}"));
                emit_parents(&mut b, &path);
                b.symlink(&path, "../target");
                model.insert(path.clone(), false);
                touched.push(path);
            }
            6 if !added_files.is_empty() => {
                let target = added_files[rng.random_range(0..added_files.len())].clone();
                let path = join(&format!("h{layer}-{op}"));
                emit_parents(&mut b, &path);
                b.hardlink(&path, &target);
                model.insert(path.clone(), false);
                touched.push(path);
            }
            7 => {
                let files: Vec<String> = deletable.iter().filter(|p| !below[*p]).cloned().collect();
                if let Some(path) = files.get(rng.random_range(0..files.len().max(1))) {
                    let data = format!("rewritten in layer {layer}");
                    emit_parents(&mut b, path);
                    // A new mtime: a comparison of full trees (naive diff, as
                    // Docker's) takes equal size and mtime for no change.
                    b.mtime(MTIME + 1 + (layer * 100 + op) as u64)
                        .file(path, &data, 0o600)
                        .mtime(MTIME);
                    touched.push(path.clone());
                }
            }
            _ => {
                if let Some(path) = deletable.get(rng.random_range(0..deletable.len().max(1))) {
                    emit_parents(&mut b, path);
                    b.whiteout(path);
                    let gone: Vec<String> = model
                        .keys()
                        .filter(|p| *p == path || p.starts_with(&format!("{path}/")))
                        .cloned()
                        .collect();
                    for g in gone {
                        model.remove(&g);
                    }
                    touched.push(path.clone());
                }
            }
        }
    }
    b.finish()
}

fn read_all(mut r: Box<dyn Read + Send>) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

fn apply_stack(d: &dyn Driver, tars: &[Vec<u8>]) {
    let mut parent: Option<String> = None;
    for (i, tar) in tars.iter().enumerate() {
        let id = format!("layer{i}");
        d.create(&id, parent.as_deref(), &CreateOptions::default())
            .unwrap();
        d.apply_diff(&id, parent.as_deref(), &mut tar.as_slice())
            .unwrap();
        parent = Some(id);
    }
}

#[test]
fn overlay2_and_vfs_agree() {
    let (Some(o), Some(v)) = (common::overlay2(), common::vfs()) else {
        return;
    };
    agree(&o, &v);
}

/// The kernel's aufs (where it has it) against vfs: the same trees, changes and diffs.
#[test]
fn aufs_kernel_and_vfs_agree() {
    let (Some(a), Some(v)) = (common::aufs_kernel(), common::vfs()) else {
        return;
    };
    agree(&a, &v);
}

/// Random stacks of layers applied to both drivers give the same trees (as the
/// tars describe them), changes, diffs and diff sizes.
fn agree(o: &Rig, v: &Rig) {
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = Model::new();
        let tars: Vec<Vec<u8>> = (0..4)
            .map(|l| random_layer(&mut rng, &mut model, l))
            .collect();
        for d in [&*o.driver, &*v.driver] {
            for i in 0..4 {
                let _ = d.remove(&format!("layer{}", 3 - i));
            }
            apply_stack(d, &tars);
        }
        let (o, v) = (&*o.driver, &*v.driver);
        for i in 0..4 {
            let id = format!("layer{i}");
            let parent = (i > 0).then(|| format!("layer{}", i - 1));
            let ctx = format!("seed {seed}, {id}");
            let tree = mounted_tree(o, &id);
            plies_testkit::tree::assert_same(&tree, &mounted_tree(v, &id), &ctx);
            let paths: Vec<String> = tree.keys().map(|k| k.display().to_string()).collect();
            let want = model_at(&tars[..=i]);
            assert_eq!(paths, want, "{ctx}: the tree is what the tars describe");
            assert_eq!(
                o.changes(&id, parent.as_deref()).unwrap(),
                v.changes(&id, parent.as_deref()).unwrap(),
                "{ctx}: changes"
            );
            let od = read_all(o.diff(&id, parent.as_deref()).unwrap());
            let vd = read_all(v.diff(&id, parent.as_deref()).unwrap());
            assert_eq!(tar_listing(&od), tar_listing(&vd), "{ctx}: diff entries");
            assert_eq!(
                o.diff_size(&id, parent.as_deref()).unwrap(),
                v.diff_size(&id, parent.as_deref()).unwrap(),
                "{ctx}: diff size"
            );
        }
    }
}

/// The paths a stack of tars leaves, replayed without any driver.
fn model_at(tars: &[Vec<u8>]) -> Vec<String> {
    let mut paths = std::collections::BTreeSet::new();
    for tar in tars {
        let mut archive = tar::Archive::new(tar.as_slice());
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let path = path.trim_end_matches('/').to_owned();
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
            if let Some(target) = name.strip_prefix(".wh.") {
                let gone = if parent.is_empty() {
                    target.to_owned()
                } else {
                    format!("{parent}/{target}")
                };
                paths.retain(|p: &String| p != &gone && !p.starts_with(&format!("{gone}/")));
            } else {
                paths.insert(path);
            }
        }
    }
    paths.into_iter().collect()
}
