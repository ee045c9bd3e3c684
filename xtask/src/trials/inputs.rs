//! The layer tars and images the trials feed `plies`, generated from a fixed seed
//! (the same on every run): trees of small files, symlinks and hard links over one
//! directory skeleton, so that later layers can overwrite, white out and make
//! opaque what earlier ones hold. GNU tar packs each tree with fixed owners and
//! mtimes, so the tars are the same everywhere too.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::Result;
use crate::bench::{Rng, docker_save};

/// Everything the trials apply or import.
pub(crate) struct Inputs {
    /// A `docker save` archive of three layers (about 2000, 800 and 400 files;
    /// the upper two overwrite, white out and make opaque what is below).
    pub(crate) image: PathBuf,
    /// A `docker save` archive of one small layer: the base of the concurrency run.
    pub(crate) base_image: PathBuf,
    /// A layer tar of about 2500 files, applied to an empty layer.
    pub(crate) fresh: PathBuf,
    /// A layer tar of 300 files, a layer's content before the apply under test.
    pub(crate) first: PathBuf,
    /// A layer tar applied over [`Inputs::first`]: 1200 new files, and overwrites
    /// and whiteouts of 50 of its files each.
    pub(crate) second: PathBuf,
    /// A layer tar of 100 files: base layers' and child layers' content.
    pub(crate) small: PathBuf,
}

/// The mtime of every tar entry.
const MTIME: &str = "@1700000000";

/// Makes every input under `dir` (removed and made afresh).
pub(crate) fn make(dir: &Path) -> Result<Inputs> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let skeleton = skeleton(&mut rng, 60);

    let a = Layer::new(dir, "a", &skeleton)?.files(&mut rng, 2000)?;
    let mut b = Layer::new(dir, "b", &skeleton)?.files(&mut rng, 800)?;
    let (overwritten, whited) = pick_two(&mut rng, &a.files, 100);
    b.overwrite(&mut rng, &overwritten)?;
    b.white_out(&whited)?;
    b.opaque(&skeleton[skeleton.len() / 2])?;
    let mut c = Layer::new(dir, "c", &skeleton)?.files(&mut rng, 400)?;
    let (_, whited) = pick_two(&mut rng, &b.files, 40);
    c.white_out(&whited)?;
    let image = dir.join("image.tar");
    let (ta, tb, tc) = (a.tar()?, b.tar()?, c.tar()?);
    docker_save(&image, &[&ta, &tb, &tc], "trials:latest")?;

    let z = Layer::new(dir, "z", &skeleton)?.files(&mut rng, 200)?;
    let base_image = dir.join("base-image.tar");
    docker_save(&base_image, &[&z.tar()?], "trials-base:latest")?;

    let fresh = Layer::new(dir, "n", &skeleton)?
        .files(&mut rng, 2500)?
        .tar()?;
    let p = Layer::new(dir, "p", &skeleton)?.files(&mut rng, 300)?;
    let mut q = Layer::new(dir, "q", &skeleton)?.files(&mut rng, 1200)?;
    let (overwritten, whited) = pick_two(&mut rng, &p.files, 50);
    q.overwrite(&mut rng, &overwritten)?;
    q.white_out(&whited)?;
    let small = Layer::new(dir, "s", &skeleton)?
        .files(&mut rng, 100)?
        .tar()?;
    Ok(Inputs {
        image,
        base_image,
        fresh,
        first: p.tar()?,
        second: q.tar()?,
        small,
    })
}

/// `n` nested directory paths (`d03/d17`, …), parents before children.
pub(crate) fn skeleton(rng: &mut Rng, n: usize) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    for i in 0..n {
        let name = format!("d{i:02}");
        // About a third at the top, the rest under an earlier directory.
        if dirs.is_empty() || rng.below(3) == 0 {
            dirs.push(name);
        } else {
            let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
            dirs.push(format!("{parent}/{name}"));
        }
    }
    dirs
}

/// Two disjoint random picks of `n` paths each from `from`.
fn pick_two(rng: &mut Rng, from: &[String], n: usize) -> (Vec<String>, Vec<String>) {
    let mut pool = from.to_vec();
    let mut picked = Vec::new();
    for _ in 0..(2 * n).min(pool.len()) {
        picked.push(pool.swap_remove(rng.below(pool.len() as u64) as usize));
    }
    let second = picked.split_off(picked.len() / 2);
    (picked, second)
}

/// One layer's tree, being written under `<dir>/<tag>/`.
pub(crate) struct Layer {
    tag: String,
    tree: PathBuf,
    dirs: Vec<String>,
    /// The regular files it adds, relative.
    files: Vec<String>,
}

impl Layer {
    /// A tree holding every directory of the skeleton.
    pub(crate) fn new(dir: &Path, tag: &str, skeleton: &[String]) -> Result<Layer> {
        let tree = dir.join(tag);
        for d in skeleton {
            let path = tree.join(d);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        Ok(Layer {
            tag: tag.to_string(),
            tree,
            dirs: skeleton.to_vec(),
            files: Vec::new(),
        })
    }

    /// Adds `n` files (most under 1 KiB, a few up to 32 KiB), `n / 100` symlinks
    /// and as many hard links.
    pub(crate) fn files(mut self, rng: &mut Rng, n: usize) -> Result<Layer> {
        for i in 0..n {
            let dir = &self.dirs[rng.below(self.dirs.len() as u64) as usize];
            let rel = format!("{dir}/{}{i:05}", self.tag);
            write_random(rng, &self.tree.join(&rel))?;
            self.files.push(rel);
        }
        for i in 0..n / 100 {
            let target = &self.files[rng.below(self.files.len() as u64) as usize];
            let dir = &self.dirs[rng.below(self.dirs.len() as u64) as usize];
            let link = self.tree.join(format!("{dir}/{}s{i:03}", self.tag));
            std::os::unix::fs::symlink(format!("/{target}"), &link)
                .with_context(|| format!("making {}", link.display()))?;
            let target = &self.files[rng.below(self.files.len() as u64) as usize];
            let hard = self.tree.join(format!("{dir}/{}h{i:03}", self.tag));
            std::fs::hard_link(self.tree.join(target), &hard)
                .with_context(|| format!("making {}", hard.display()))?;
        }
        Ok(self)
    }

    /// New content for files a lower layer holds.
    fn overwrite(&mut self, rng: &mut Rng, paths: &[String]) -> Result {
        for rel in paths {
            write_random(rng, &self.tree.join(rel))?;
        }
        Ok(())
    }

    /// Whiteouts (`.wh.<name>`) of files a lower layer holds.
    fn white_out(&mut self, paths: &[String]) -> Result {
        for rel in paths {
            let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            let path = self.tree.join(dir).join(format!(".wh.{name}"));
            std::fs::write(&path, "").with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Makes a directory opaque: what lower layers hold in it is hidden.
    fn opaque(&mut self, dir: &str) -> Result {
        let path = self.tree.join(dir).join(".wh..wh..opq");
        std::fs::write(&path, "").with_context(|| format!("writing {}", path.display()))
    }

    /// Packs the tree as `<dir>/<tag>.tar` and removes the tree.
    pub(crate) fn tar(&self) -> Result<PathBuf> {
        let tar = self.tree.with_extension("tar");
        let out = Command::new("tar")
            .args([
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--sort=name",
                &format!("--mtime={MTIME}"),
                "-cf",
            ])
            .arg(&tar)
            .arg("-C")
            .arg(&self.tree)
            .arg(".")
            .output()
            .context("starting tar")?;
        if !out.status.success() {
            bail!(
                "tar -cf {}: {}",
                tar.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        std::fs::remove_dir_all(&self.tree)
            .with_context(|| format!("removing {}", self.tree.display()))?;
        Ok(tar)
    }
}

/// Writes a file of random bytes: 75% under 1 KiB, 22% up to 4 KiB, 3% up to 32 KiB.
fn write_random(rng: &mut Rng, path: &Path) -> Result {
    let size = match rng.below(100) {
        0..=74 => rng.below(1024),
        75..=96 => 1024 + rng.below(3072),
        _ => 4096 + rng.below(28 << 10),
    } as usize;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        data.extend_from_slice(&rng.next().to_le_bytes());
    }
    data.truncate(size);
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}
