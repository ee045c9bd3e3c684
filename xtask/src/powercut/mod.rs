//! `cargo xtask powercut`: power cuts under a real kernel, and what survives them.
//!
//! One persistent ext4 disk image is booted again and again in qemu (TCG, one
//! CPU) with a Debian kernel the `vm-test` rig fetches. Each boot's init checks the
//! store (`plies fsck --repair`, then `plies fsck`), mounts every layer `plies ls`
//! lists as complete and prints a checksum of its merged tree, then runs a
//! workload of imports, creates, applies and removals in a loop. The host SIGKILLs
//! qemu at a seeded random point: during a command or within 1.5 s after one
//! finished. Whatever the guest had not written to its disk by then is gone, as in
//! a power cut. The next boot shows what survived.
//!
//! The host knows every layer's reference content (the inputs are generated from a
//! fixed seed; a reference is the same checksum over the tree GNU tar extracts) and,
//! from the markers the guest prints before and after each command, which layers
//! were complete before each cut. A complete layer that is missing after the next
//! boot's repair is lost; a listed layer whose content is none its history allows
//! is corrupt. See `xtask/VM.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use crate::bench::{Rng, docker_save, sha256_hex};
use crate::trials::inputs::{Layer, skeleton};
use crate::vm::{self, Apt, Kernel, TARGET, mkdir, output, which, write};
use crate::{Result, root};

mod boot;
mod guest;
mod inputs;
mod log;
mod model;
mod report;

use boot::*;
use guest::*;
use inputs::*;
use log::*;
use model::*;
use report::*;

/// The prefix of every line the guest prints for the host.
const MARK: &str = "@@powercut";

/// Modules the guest loads when the kernel builds them as modules: the disk, ext4,
/// overlay.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "crc32c_intel",
    "ext4",
    "overlay",
];

/// Images the workload imports (two layers each) and removes again in turn.
const IMAGES: usize = 4;

/// Layer tars the workload applies onto layers it creates.
const TARS: usize = 3;

/// The persistent disk: sparse, so its size costs nothing up front.
const DISK_SIZE: u64 = 2 << 30;

/// How long one boot may take before the host gives up on it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// How long after a command's completion marker an "after" cut falls, at most.
const AFTER_WINDOW_MS: u64 = 1500;

/// The guest's pause after each command, longer than [`AFTER_WINDOW_MS`]: an
/// "after" cut falls while nothing runs, before the next command's own syncs could
/// make durable what the last one left in the page cache.
const PAUSE_SECS: u64 = 2;

/// A tree's content, one line per entry (path, mode with type bits, owner, link
/// target) plus one per regular file (sha256 and path), sorted; run in the tree by
/// busybox on the host and in the guest alike, so both print the same bytes.
const LISTING: &str = "{ busybox find . -mindepth 1 -exec busybox stat -c '%n %f %u %g %N' {} + && \
     busybox find . -type f -exec busybox sha256sum {} + ; } | LC_ALL=C busybox sort";

/// The command line of `cargo xtask powercut`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// A Debian kernel: a series (6.1), `newest` or an exact release.
    #[arg(long, value_name = "NAME", default_value = "newest")]
    kernel: String,
    /// Boots that end in a cut (one more boot checks the last one).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 20,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    cuts: usize,
    /// The cut points' generator seed (default: the clock; printed).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Update the package lists now.
    #[arg(long)]
    refresh: bool,
    /// A statically linked `plies` to put in the guest instead of building one.
    #[arg(long, value_name = "PLIES")]
    bin: Option<PathBuf>,
}

/// `cargo xtask powercut [--kernel NAME] [--cuts N] [--seed S] [--refresh] [--bin PLIES]`.
pub(crate) fn powercut(opts: Options) -> Result {
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "depmod",
        "modprobe",
        "cpio",
        "gzip",
        "mkfs.ext4",
        "tar",
        "sha256sum",
        "strip",
    ] {
        if which(tool).is_none() {
            bail!(
                "powercut needs {tool}; install qemu-system-x86 busybox-static kmod cpio e2fsprogs"
            );
        }
    }
    let vm_dir = root().join("target/vm");
    let work = vm_dir.join("powercut");
    let apt = Apt::new(&vm_dir.join("apt"))?;
    apt.update(opts.refresh)?;
    let release = apt.resolve(&opts.kernel)?;
    let kernel = vm::fetch(&apt, &vm_dir.join("kernels"), &opts.kernel, &release)?;
    eprintln!("powercut: kernel {} is {release}", opts.kernel);

    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    mkdir(&work.join("logs"))?;
    let started = Instant::now();
    let plies = build_plies(&vm_dir, &work, opts.bin.as_deref())?;
    eprintln!(
        "powercut: static plies built ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    let inputs = make_inputs(&work.join("inputs"))?;
    let initrd = initramfs(&kernel, &plies, &inputs, &work)?;
    let disk = work.join("disk.img");
    if !vm::make_disk(&disk, DISK_SIZE, vm::MKFS_EXT4)? {
        bail!("could not make an ext4 filesystem on {}", disk.display());
    }

    let seed = opts.seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        t.as_secs() ^ u64::from(t.subsec_nanos()) << 20 ^ u64::from(std::process::id())
    });
    eprintln!("powercut: seed {seed} (repeat the cut points with --seed {seed})");
    let mut rng = Rng(crate::trials::splitmix(seed));
    let mut model = Model::new(&inputs);
    let mut estimates = Estimates::default();
    let mut rows = Vec::new();
    for boot in 1..=opts.cuts + 1 {
        let plan = (boot <= opts.cuts).then(|| Plan::draw(&mut rng));
        let log_path = work.join("logs").join(format!("boot-{boot:02}.log"));
        let start = Instant::now();
        let watched = run_boot(&kernel, &initrd, &disk, &log_path, boot, plan, &estimates)?;
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let log = BootLog::parse(&text);
        estimates.learn(&log, &watched.arrivals);
        let row = model.record(boot, &log, &watched, start.elapsed());
        eprintln!("powercut: {}", row.line());
        rows.push(row);
    }
    let report = render(&kernel, seed, &rows, &model, &estimates);
    print!("{report}");
    let _ = fs::write(work.join("results.txt"), &report);
    let _ = fs::remove_dir_all(work.join("inputs"));
    let _ = fs::remove_file(&initrd);
    if model.failed(&rows) {
        bail!("powercut found failures (above)")
    } else {
        Ok(())
    }
}

/// Builds the static release `plies` into `<vm>/build` (unless `bin` names one)
/// and puts a stripped copy in `work`.
fn build_plies(vm_dir: &Path, work: &Path, bin: Option<&Path>) -> Result<PathBuf> {
    let exe = match bin {
        Some(bin) => bin.to_path_buf(),
        None => {
            output(vm::static_cargo(vm_dir).args([
                "build",
                "--release",
                "-p",
                "plies",
                "--bin",
                "plies",
                "--target",
                TARGET,
            ]))?;
            vm_dir.join(format!("build/{TARGET}/release/plies"))
        }
    };
    let stripped = work.join("plies");
    output(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped)
            .arg(&exe),
    )?;
    Ok(stripped)
}
