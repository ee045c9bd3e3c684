//! `cargo xtask bench`: plies side by side with GNU tar on the same input, in one run.
//!
//! Inputs, made once and cached under `target/bench/`:
//! - `gen/`: a deterministic tree with a realistic size mix (about 10k files and
//!   200 MB: many small files, fewer large ones, symlinks and hard links);
//! - `debian/`: a Debian minbase root filesystem from `debootstrap`, with the mirror
//!   and suite taken from this machine's apt sources (skipped, with a message, where
//!   debootstrap cannot run).
//!
//! Before every measured run the page cache is dropped and the input read back in,
//! so each tool starts with its input cached and everything else cold. The tools
//! take turns within each round, so load from elsewhere and the file system's own
//! state fall on both alike. Medians of `--runs N` (default 5) are reported with
//! the ratio plies / GNU tar.
//!
//! Then `docker load` of the generated tree as a one-layer image, into dockerd with
//! plies behind the graph-driver plugin and into dockerd on its own overlay2
//! (`--no-docker` skips it, `--docker-only` runs nothing else; see `bench/docker.rs`).
//!
//! Then containerd with plies as its proxy snapshotter beside containerd's own
//! overlayfs snapshotter, in one private containerd: `ctr image import` of the
//! generated image, the Debian minbase image and a 120-layer image, and
//! Prepare+Mounts+Remove through containerd's snapshots service
//! (`--no-containerd` skips it, `--containerd-only` runs nothing else; its
//! Prepare+Mounts+Remove runs `--calls-iterations` times; see `bench/containerd.rs`).
//!
//! Last, every call against the kernel's floor: the library's `get`+`put` beside a
//! raw `mount(2)`+`umount2(2)` loop of the same stacks, `plies mount`/`umount` and
//! `plies create`/`rm` as processes (`--no-calls` skips it, `--calls-only` runs
//! nothing else, `--calls-iterations N` sets its runs, default 200; see
//! `bench/calls.rs`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{Result, cargo, root, run, target_dir};

mod calls;
mod containerd;
mod docker;

/// The command line of `cargo xtask bench`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Measured runs of each tool; medians are reported.
    #[arg(long, value_name = "N", default_value_t = 5)]
    runs: usize,
    /// Skip the Debian minbase tree.
    #[arg(long)]
    no_debian: bool,
    /// Skip docker load.
    #[arg(long, conflicts_with = "docker_only")]
    no_docker: bool,
    /// Run docker load only.
    #[arg(long, conflicts_with_all = ["containerd_only", "calls_only"])]
    docker_only: bool,
    /// Skip containerd.
    #[arg(long, conflicts_with = "containerd_only")]
    no_containerd: bool,
    /// Run the containerd section only.
    #[arg(long, conflicts_with = "calls_only")]
    containerd_only: bool,
    /// Skip the calls against the kernel's floor.
    #[arg(long, conflicts_with = "calls_only")]
    no_calls: bool,
    /// Run the calls against the kernel's floor only.
    #[arg(long)]
    calls_only: bool,
    /// Runs of each call (and of containerd's Prepare+Mounts+Remove).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 200,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    calls_iterations: usize,
}

/// Which sections run, from [`Args`].
struct Options {
    runs: usize,
    debian: bool,
    /// The comparisons with GNU tar.
    tar: bool,
    docker: bool,
    /// The section of `bench/containerd.rs`.
    containerd: bool,
    /// The section of `bench/calls.rs`.
    calls: bool,
    calls_iterations: usize,
}

impl Options {
    /// An `--X-only` turns off every other section; `--no-X` turns off its own.
    fn from(a: &Args) -> Options {
        Options {
            runs: a.runs,
            debian: !(a.no_debian || a.docker_only || a.calls_only),
            tar: !(a.docker_only || a.containerd_only || a.calls_only),
            docker: !(a.no_docker || a.containerd_only || a.calls_only),
            containerd: !(a.no_containerd || a.docker_only || a.calls_only),
            calls: !(a.no_calls || a.docker_only || a.containerd_only),
            calls_iterations: a.calls_iterations,
        }
    }
}

pub(crate) fn bench(args: &Args) -> Result {
    let opts = Options::from(args);
    if !(opts.tar || opts.docker || opts.containerd) {
        return if opts.calls {
            calls::calls(opts.calls_iterations)
        } else {
            Ok(())
        };
    }
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if opts.tar {
        run(cargo().args([
            "build",
            "--release",
            "-p",
            "plies-archive",
            "--example",
            "layer",
        ]))?;
    }
    run(cargo().args(["build", "--release", "-p", "plies"]))?;
    let target = target_dir();
    let layer_bin = target.join("release/examples/layer");
    let plies_bin = target.join("release/plies");

    let mut inputs = vec![("generated", generated_tree(&dir)?)];
    if opts.debian && (opts.tar || opts.containerd) {
        match debian_tree(&dir) {
            Ok(tree) => inputs.push(("debian-minbase", tree)),
            Err(why) => eprintln!("bench: skipping the Debian minbase tree: {why:#}"),
        }
    }

    let mut rows = Vec::new();
    // `plies import` of the generated image, set beside `docker load` of it.
    let mut import_generated = None;
    for (name, tree) in inputs.iter().filter(|_| opts.tar) {
        let tar = layer_tar(&dir, name, tree)?;
        // `plies import` of the same layer as a `docker save` archive: digest check,
        // store bookkeeping and apply, against the same `tar -x`.
        let image = docker_save_archive(&dir, name, &tar)?;
        let tar_x = |out: &Path| {
            timed(
                Command::new("tar")
                    .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xf"])
                    .arg(&tar)
                    .arg("-C")
                    .arg(out),
            )
        };
        let plies_x = |out: &Path| timed(Command::new(&layer_bin).arg("apply").arg(&tar).arg(out));
        let plies_i = |out: &Path| {
            timed(
                Command::new(&plies_bin)
                    .arg("--root")
                    .arg(out)
                    .args(["--driver", "overlay2", "-q", "import"])
                    .arg(&image),
            )
        };
        let [gnu_apply, plies_apply, plies_import] = measure(
            opts.runs,
            &[&tar, &image],
            &dir.join("out"),
            [&tar_x, &plies_x, &plies_i],
        )?;
        let tar_c = |_: &Path| {
            timed(
                Command::new("tar")
                    .args([
                        "--xattrs",
                        "--xattrs-include=*",
                        "--numeric-owner",
                        "-cf",
                        "-",
                        "-C",
                    ])
                    .arg(tree)
                    .arg("."),
            )
        };
        let plies_c = |_: &Path| timed(Command::new(&layer_bin).arg("export").arg(tree));
        let [gnu_export, plies_export] =
            measure(opts.runs, &[tree], &dir.join("out"), [&tar_c, &plies_c])?;
        if *name == "generated" {
            import_generated = Some(plies_import);
        }
        rows.push((format!("{name} apply"), gnu_apply, plies_apply));
        rows.push((
            format!("{name} import (vs tar -x)"),
            gnu_apply,
            plies_import,
        ));
        rows.push((format!("{name} export"), gnu_export, plies_export));
    }

    let mut docker_row = None;
    if opts.docker {
        let tar = layer_tar(&dir, "generated", &inputs[0].1)?;
        let image = docker_save_archive(&dir, "generated", &tar)?;
        let load_before = load_average();
        match docker::load(opts.runs, &dir, &image, &plies_bin) {
            Ok(times) => docker_row = Some((times, load_before, load_average())),
            Err(why) => eprintln!("bench: skipping docker load: {why:#}"),
        }
    }

    if !rows.is_empty() {
        println!(
            "\n{:<28} {:>12} {:>12} {:>8}",
            "work (median)", "GNU tar", "plies", "ratio"
        );
    }
    for (work, gnu, plies) in rows {
        println!(
            "{work:<28} {:>10.3} s {:>10.3} s {:>7.2}x",
            gnu.as_secs_f64(),
            plies.as_secs_f64(),
            plies.as_secs_f64() / gnu.as_secs_f64()
        );
    }
    if let Some(((overlay2, plies), before, after)) = docker_row {
        println!(
            "\n{:<28} {:>12} {:>12} {:>8}",
            "docker load (median)", "overlay2", "plies", "ratio"
        );
        println!(
            "{:<28} {:>10.3} s {:>10.3} s {:>7.2}x",
            "generated image",
            overlay2.as_secs_f64(),
            plies.as_secs_f64(),
            plies.as_secs_f64() / overlay2.as_secs_f64()
        );
        if let Some(import) = import_generated {
            // The same image into a store, without a daemon: digest check,
            // bookkeeping and apply.
            println!(
                "{:<28} {:>10.3} s {:>10.3} s {:>7.2}x",
                "plies import of it",
                overlay2.as_secs_f64(),
                import.as_secs_f64(),
                import.as_secs_f64() / overlay2.as_secs_f64()
            );
        }
        println!("load average before: {before}; after: {after}");
    }
    if opts.containerd {
        // The same `docker save` archives as above: the generated image first.
        let mut images = Vec::new();
        for (name, tree) in &inputs {
            let tar = layer_tar(&dir, name, tree)?;
            images.push((name.to_string(), docker_save_archive(&dir, name, &tar)?));
        }
        let only = !(opts.tar || opts.docker || opts.calls);
        match containerd::containerd(opts.runs, opts.calls_iterations, &dir, &images, &plies_bin) {
            Ok(()) => {}
            Err(why) if only => return Err(why),
            Err(why) => eprintln!("bench: skipping containerd: {why:#}"),
        }
    }
    if opts.calls {
        calls::calls(opts.calls_iterations)?;
    }
    Ok(())
}

/// The layer tar of `tree`, made with GNU tar once and cached as `dir/<name>.tar`.
fn layer_tar(dir: &Path, name: &str, tree: &Path) -> Result<PathBuf> {
    let tar = dir.join(format!("{name}.tar"));
    if !tar.exists() {
        run(Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(tree)
            .arg("."))?;
    }
    Ok(tar)
}

/// The 1, 5 and 15 minute load averages, as `uptime` shows them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Wraps one uncompressed layer tar as a `docker save` archive (manifest, config
/// with the layer's diff_id, the layer), cached as `dir/<name>-image.tar`.
fn docker_save_archive(dir: &Path, name: &str, layer: &Path) -> Result<PathBuf> {
    let archive = dir.join(format!("{name}-image.tar"));
    if !archive.exists() {
        docker_save(&archive, &[layer], "bench:latest")?;
    }
    Ok(archive)
}

/// Writes `archive` as `docker save` does: `manifest.json`, `config.json` with each
/// layer's diff_id, and the uncompressed layer tars (bottom first) as
/// `<n>/layer.tar`, tagged `tag`. The layers are hard-linked into a staging
/// directory beside the archive, removed afterwards.
pub(crate) fn docker_save(archive: &Path, layers: &[&Path], tag: &str) -> Result {
    let mut staging = archive.as_os_str().to_owned();
    staging.push(".staging");
    let staging = PathBuf::from(staging);
    let at = || format!("staging {}", staging.display());
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(at)?;
    }
    let mut members = vec!["manifest.json".to_string(), "config.json".to_string()];
    let mut diff_ids = Vec::new();
    for (n, layer) in layers.iter().enumerate() {
        std::fs::create_dir_all(staging.join(n.to_string())).with_context(at)?;
        let member = format!("{n}/layer.tar");
        std::fs::hard_link(layer, staging.join(&member))
            .with_context(|| format!("linking {} into {}", layer.display(), staging.display()))?;
        diff_ids.push(format!("\"sha256:{}\"", sha256_hex(layer)?));
        members.push(member);
    }
    std::fs::write(
        staging.join("config.json"),
        format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            diff_ids.join(",")
        ),
    )
    .with_context(at)?;
    let layer_names: Vec<String> = members[2..].iter().map(|m| format!("\"{m}\"")).collect();
    std::fs::write(
        staging.join("manifest.json"),
        format!(
            r#"[{{"Config":"config.json","RepoTags":["{tag}"],"Layers":[{}]}}]"#,
            layer_names.join(",")
        ),
    )
    .with_context(at)?;
    let out = Command::new("tar")
        .arg("-cf")
        .arg(archive)
        .arg("-C")
        .arg(&staging)
        .args(&members)
        .output()
        .context("starting tar")?;
    if !out.status.success() {
        bail!(
            "tar -cf {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::remove_dir_all(&staging).with_context(at)?;
    Ok(())
}

/// The sha256 of a file, in hex, from `sha256sum`.
pub(crate) fn sha256_hex(file: &Path) -> Result<String> {
    let sum = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("starting sha256sum")?;
    let hex = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if hex.len() != 64 {
        bail!("sha256sum of {} gave no digest", file.display());
    }
    Ok(hex)
}

/// One measured command: given a fresh, empty output directory, returns its wall time.
type Tool<'a> = &'a dyn Fn(&Path) -> Result<Duration>;

/// Runs every tool `runs` times, in rounds that rotate which tool goes first, and
/// returns each tool's median time. Before each run the page cache is dropped and
/// the inputs are read back in. Each run writes into a fresh directory under `out`,
/// all removed only at the end: ext4 skips inodes freed in the last half minute
/// when it allocates, so deleting between runs would slow down whichever tool
/// comes after the most deletions.
fn measure<const N: usize>(
    runs: usize,
    inputs: &[&Path],
    out: &Path,
    tools: [Tool<'_>; N],
) -> Result<[Duration; N]> {
    let remove = |dir: &Path| {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))
        } else {
            Ok(())
        }
    };
    remove(out)?;
    let mut times = vec![Vec::with_capacity(runs); N];
    for round in 0..runs.max(1) {
        for k in 0..N {
            let tool = (round + k) % N;
            let dir = out.join(format!("{round}-{tool}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            sync_and_drop_caches();
            for input in inputs {
                read_input(input)?;
            }
            times[tool].push(tools[tool](&dir)?);
        }
    }
    remove(out)?;
    Ok(std::array::from_fn(|tool| {
        let t = &mut times[tool];
        t.sort();
        t[t.len() / 2]
    }))
}

fn sync_and_drop_caches() {
    let _ = Command::new("sync").status();
    if std::fs::write("/proc/sys/vm/drop_caches", "1").is_err() {
        eprintln!("bench: cannot drop caches (not root?): timings include a warm cache");
    }
}

/// Reads a file, or every file of a tree (through GNU tar into a pipe), so the input
/// starts in the page cache.
fn read_input(input: &Path) -> Result {
    if input.is_dir() {
        timed(
            Command::new("tar")
                .args(["-cf", "-", "-C"])
                .arg(input)
                .arg("."),
        )
        .map(|_| ())
    } else {
        let read = || format!("reading {}", input.display());
        let mut f = std::fs::File::open(input).with_context(read)?;
        std::io::copy(&mut f, &mut std::io::sink()).with_context(read)?;
        Ok(())
    }
}

/// Runs a command, draining its stdout, and returns the wall time.
fn timed(cmd: &mut Command) -> Result<Duration> {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(e).with_context(|| format!("reading {shown}")),
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {shown}"))?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(elapsed)
}

/// A tiny deterministic generator (xorshift64*), so the tree is the same everywhere.
/// The state must not be zero.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The generated tree: 10,000 regular files (about 200 MB), 600 directories, 200
/// symlinks and 100 hard links, with a size mix like a distribution image's.
fn generated_tree(dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("gen");
    let done = dir.join("gen.done");
    if done.exists() {
        return Ok(tree);
    }
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    eprintln!("bench: generating {}", tree.display());
    let io = || format!("generating {}", tree.display());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut dirs = vec![tree.clone()];
    std::fs::create_dir_all(&tree).with_context(io)?;
    for i in 0..600 {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let d = parent.join(format!("d{i:03}"));
        std::fs::create_dir(&d).with_context(io)?;
        dirs.push(d);
    }
    let mut files = Vec::new();
    let mut chunk = vec![0u8; 2 << 20];
    for i in 0..10_000 {
        let size = match rng.below(1000) {
            0..=699 => rng.below(4096),
            700..=949 => 4096 + rng.below(24 << 10),
            950..=994 => (64 << 10) + rng.below(272 << 10),
            _ => (512 << 10) + rng.below(1536 << 10),
        } as usize;
        for b in chunk[..size].chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            b.copy_from_slice(&v[..b.len()]);
        }
        let path = dirs[rng.below(dirs.len() as u64) as usize].join(format!("f{i:05}"));
        std::fs::write(&path, &chunk[..size]).with_context(io)?;
        files.push(path);
    }
    for i in 0..200 {
        let target = &files[rng.below(files.len() as u64) as usize];
        let rel = target.strip_prefix(&tree).expect("inside the tree");
        let link = dirs[rng.below(dirs.len() as u64) as usize].join(format!("s{i:03}"));
        std::os::unix::fs::symlink(Path::new("/").join(rel), link).with_context(io)?;
    }
    for i in 0..100 {
        let target = &files[rng.below(files.len() as u64) as usize];
        let link = dirs[rng.below(dirs.len() as u64) as usize].join(format!("h{i:03}"));
        std::fs::hard_link(target, link).with_context(io)?;
    }
    std::fs::write(&done, "").with_context(io)?;
    Ok(tree)
}

/// A Debian minbase root filesystem made with debootstrap from this machine's apt
/// sources, cached under `target/bench/debian`.
fn debian_tree(dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("debian");
    let done = dir.join("debian.done");
    if done.exists() {
        return Ok(tree);
    }
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("debootstrap is not installed (apt-get install debootstrap)");
    }
    let (mirror, suite) = apt_source()?;
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &suite])
        .arg(&tree)
        .arg(&mirror))?;
    std::fs::write(&done, "").with_context(|| format!("writing {}", done.display()))?;
    Ok(tree)
}

/// The first Debian mirror and suite in this machine's apt sources (one-line or deb822).
fn apt_source() -> Result<(String, String)> {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                texts.push(t);
            }
        }
    }
    for text in &texts {
        for line in text.lines().map(str::trim) {
            let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
            if words.next() == Some("deb") {
                if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                    if uri.contains("debian") && !suite.contains('-') {
                        return Ok((uri.to_string(), suite.to_string()));
                    }
                }
            }
        }
        let field = |name: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            })
        };
        if let (Some(uri), Some(suite)) = (field("URIs:"), field("Suites:")) {
            if uri.contains("debian") && !suite.contains('-') {
                return Ok((uri, suite));
            }
        }
    }
    bail!("no Debian mirror found in the apt sources")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Options {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let args = std::iter::once("bench").chain(args.iter().copied());
        Options::from(&<Cli as clap::Parser>::parse_from(args).args)
    }

    /// (tar, debian, docker, containerd, calls).
    fn sections(o: &Options) -> (bool, bool, bool, bool, bool) {
        (o.tar, o.debian, o.docker, o.containerd, o.calls)
    }

    #[test]
    fn only_and_no_pick_the_sections() {
        let all = options(&[]);
        assert_eq!(sections(&all), (true, true, true, true, true));
        assert_eq!((all.runs, all.calls_iterations), (5, 200));
        let o = options(&["--docker-only"]);
        assert_eq!(sections(&o), (false, false, true, false, false));
        let o = options(&["--containerd-only"]);
        assert_eq!(sections(&o), (false, true, false, true, false));
        let o = options(&["--calls-only", "--calls-iterations", "7"]);
        assert_eq!(sections(&o), (false, false, false, false, true));
        assert_eq!(o.calls_iterations, 7);
        let o = options(&[
            "--no-debian",
            "--no-docker",
            "--no-containerd",
            "--no-calls",
        ]);
        assert_eq!(sections(&o), (true, false, false, false, false));
    }
}
