//! `cargo xtask vm-test`: the kernel-dependent tests under real Debian kernels in qemu.
//!
//! For each kernel of the matrix: fetch the kernel packages with a private apt
//! configuration under `target/vm/apt` (the machine's apt sources stay untouched), cache
//! them under `target/vm/kernels`, build a busybox initramfs holding the modules the
//! tests need and statically linked test executables, boot it in qemu (TCG, one CPU),
//! run each test executable with `PLIES_REQUIRE_KERNEL=1` on the guest's own scratch
//! filesystems (tmpfs, an ext4 disk, an xfs disk with project quota) and read the exit
//! statuses back from the serial console. See `xtask/VM.md`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};

use super::{Result, cargo, root};

mod apt;
mod boot;
mod initramfs;
mod payload;
mod report;

pub(crate) use apt::{Apt, Kernel, fetch};
use boot::*;
pub(crate) use boot::{qemu, qemu_stderr};
use initramfs::*;
pub(crate) use initramfs::{MKFS_EXT4, add_modules, copy, make_disk, pack};
pub(crate) use payload::static_cargo;
use payload::*;
use report::*;

/// The matrix when no `--kernel` is given: Debian oldstable's, stable's and trixie's
/// kernels and the newest the archive has (backports).
const DEFAULT_KERNELS: &[&str] = &["5.10", "6.1", "6.12", "newest"];

/// Suites searched for kernels (bullseye 5.10, bookworm 6.1, trixie 6.12, backports).
const SUITES: &[&str] = &["bullseye", "bookworm", "trixie", "trixie-backports"];

/// The keyring the private sources are signed with.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Modules the guest loads when the kernel builds them as modules (with their
/// dependencies): the disks, the scratch filesystems, overlay, loop devices.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "crc32c_intel",
    "ext4",
    "xfs",
    "overlay",
    "loop",
];

/// Host programs the tests call, copied into the guest with their shared libraries
/// (busybox has no mkfs.ext4 or mkfs.xfs, and its tar is not GNU tar).
const HOST_TOOLS: &[&str] = &["mkfs.ext4", "mkfs.xfs", "losetup", "tar"];

/// Scratch filesystems in the guest; the ext4 and xfs ones are qemu disks built on the host.
const SCRATCH: &[&str] = &["tmpfs", "ext4", "xfs"];

/// One crate's kernel-dependent test executables and where they run.
struct Suite {
    /// The crate's directory under `crates/`.
    dir: &'static str,
    /// Its package name.
    package: &'static str,
    /// Cargo features the tests need.
    features: &'static [&'static str],
    /// Integration test targets to run.
    tests: &'static [&'static str],
    /// The scratch filesystems `TMPDIR` points at, one run each.
    scratch: &'static [&'static str],
    /// Only the tests whose names hold this (libtest's filter), if set.
    only: Option<&'static str>,
}

const SUITES_UNDER_TEST: &[Suite] = &[
    Suite {
        dir: "kprobe",
        package: "plies-kprobe",
        features: &[],
        tests: &["kernel"],
        scratch: &["ext4", "xfs", "tmpfs"],
        only: None,
    },
    Suite {
        dir: "mountopts",
        package: "plies-mountopts",
        features: &["mount"],
        tests: &["kernel"],
        scratch: &["ext4"],
        only: None,
    },
    Suite {
        dir: "archive",
        package: "plies-archive",
        features: &[],
        tests: &["overlay", "apply"],
        scratch: &["ext4"],
        only: None,
    },
    // The driver suites on ext4; stress (8 threads on one emulated CPU) stays out.
    Suite {
        dir: "drivers",
        package: "plies-drivers",
        features: &[],
        tests: &[
            "conformance",
            "overlay2",
            "aufs",
            "aufs_kernel",
            "fixture",
            "differential",
        ],
        scratch: &["ext4"],
        only: None,
    },
    // The stress on the kernel's aufs only (a skip without it); overlay2's,
    // 8 threads on one emulated CPU, stays on the host.
    Suite {
        dir: "drivers",
        package: "plies-drivers",
        features: &[],
        tests: &["stress"],
        scratch: &["ext4"],
        only: Some("aufs_kernel"),
    },
    // The command line on the kernel's aufs beside overlay2 (a skip without aufs).
    Suite {
        dir: "cli",
        package: "plies",
        features: &[],
        tests: &["e2e"],
        scratch: &["ext4"],
        only: Some("cli_on_kernel_aufs"),
    },
    // Trees removed with mount points below them, on each kernel.
    Suite {
        dir: "fdtree",
        package: "plies-fdtree",
        features: &[],
        tests: &["mount"],
        scratch: &["ext4"],
        only: None,
    },
    // The snapshotter's methods and the mounts it returns, mounted (an overlay
    // on an empty lower, rebased stacks) on each kernel.
    Suite {
        dir: "snapshotter",
        package: "plies-snapshotter",
        features: &[],
        tests: &["service"],
        scratch: &["ext4"],
        only: None,
    },
    // overlay2's own behaviour (project quota, d_type, status rows) on xfs too.
    Suite {
        dir: "drivers",
        package: "plies-drivers",
        features: &[],
        tests: &["overlay2"],
        scratch: &["xfs"],
        only: None,
    },
];

/// The host target the static executables are built for.
pub(crate) const TARGET: &str = "x86_64-unknown-linux-gnu";
const MARK: &str = "@@plies-vm";

/// The command line of `cargo xtask vm-test`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// A Debian kernel: a series (5.10, 6.12), `newest`, or an exact release;
    /// repeatable (default: 5.10 6.1 6.12 newest, unless --kernel-image is given).
    #[arg(long = "kernel", value_name = "NAME")]
    kernels: Vec<String>,
    /// A kernel image built elsewhere (a bzImage), booted as it is; repeatable.
    #[arg(long = "kernel-image", value_name = "PATH")]
    images: Vec<PathBuf>,
    /// Only the tests whose names hold TEST (libtest's filter).
    #[arg(long, value_name = "TEST")]
    filter: Option<String>,
    /// VMs at once: 1 or 2.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=2)
    )]
    jobs: usize,
    /// Seconds each VM may run.
    #[arg(long, value_name = "SECONDS", default_value = "2400", value_parser = seconds)]
    timeout: Duration,
    /// Update the package lists now (otherwise once a day).
    #[arg(long)]
    refresh: bool,
}

/// A number of seconds.
fn seconds(text: &str) -> std::result::Result<Duration, String> {
    text.parse()
        .map(Duration::from_secs)
        .map_err(|_| format!("takes seconds, not '{text}'"))
}

/// `cargo xtask vm-test [--kernel NAME]… [--kernel-image PATH]… [--filter TEST] [--jobs N]
/// [--timeout S] [--refresh]`.
pub(crate) fn vm_test(mut opts: Options) -> Result {
    if opts.kernels.is_empty() && opts.images.is_empty() {
        opts.kernels = DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect();
    }
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "depmod",
        "modprobe",
        "cpio",
        "gzip",
    ] {
        if which(tool).is_none() {
            bail!(
                "vm-test needs {tool}; install qemu-system-x86 busybox-static kmod cpio \
                 e2fsprogs xfsprogs"
            );
        }
    }
    let vm = root().join("target/vm");
    let mut kernels = Vec::new();
    for path in &opts.images {
        kernels.push(Kernel::image(path)?);
    }
    let apt = if opts.kernels.is_empty() {
        None
    } else {
        let apt = Apt::new(&vm.join("apt"))?;
        apt.update(opts.refresh)?;
        Some(apt)
    };
    for name in &opts.kernels {
        let apt = apt
            .as_ref()
            .expect("the apt configuration is set up for --kernel");
        let release = apt.resolve(name)?;
        if kernels.iter().any(|k: &Kernel| k.release == release) {
            continue;
        }
        let start = Instant::now();
        let kernel = fetch(apt, &vm.join("kernels"), name, &release)?;
        eprintln!(
            "vm-test: kernel {name} is {release} ({:.1}s)",
            start.elapsed().as_secs_f64()
        );
        kernels.push(kernel);
    }

    let start = Instant::now();
    let payload = build_payload(&vm)?;
    eprintln!(
        "vm-test: test executables built for {} runs ({:.1}s)",
        payload.runs.len(),
        start.elapsed().as_secs_f64()
    );

    let queue = Mutex::new(kernels.iter().collect::<Vec<_>>());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.min(kernels.len()) {
            s.spawn(|| {
                loop {
                    let Some(kernel) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let result = boot_and_test(&vm, kernel, &payload, &opts);
                    results.lock().unwrap().push(result);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| version_key(&r.release));
    let report = render(&results, &payload);
    print!("{report}");
    let _ = fs::write(vm.join("results.txt"), &report);
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.release.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("vm-test failed on {}", failed.join(", "))
    }
}

/// Where `tool` is on `PATH` (or in `/usr/sbin`, `/sbin`).
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// `mkdir -p`, with the path in the error.
pub(crate) fn mkdir(dir: &Path) -> Result {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Writes a file, with the path in the error.
pub(crate) fn write(path: &Path, data: impl AsRef<[u8]>) -> Result {
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// Runs `cmd` quietly, returning its stdout; stderr is shown only on failure.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The numbers in a kernel release, for ordering: `6.12.107+deb13-amd64` → [6, 12, 107, 13].
fn version_key(release: &str) -> Vec<u64> {
    release
        .trim_end_matches("-amd64")
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------
// The static test executables.

/// One run of a test executable in the guest.
struct PlannedRun {
    /// `kprobe/kernel@ext4`.
    id: String,
    /// File name under `/tests` in the guest.
    file: String,
    scratch: &'static str,
    /// The crate's directory under `crates/`: cargo runs tests from there.
    crate_dir: &'static str,
    /// The suite's own name filter, if any.
    only: Option<&'static str>,
}

struct Payload {
    /// Host directory copied to the guest's `/tests`.
    dir: PathBuf,
    runs: Vec<PlannedRun>,
    /// Whether `/tests/plies` (the command line, for the probe report) is there.
    has_cli: bool,
}

/// One test executable's run in the guest.
struct RunResult {
    id: String,
    /// `None`: it never finished (timeout, crash).
    status: Option<i32>,
    /// `test result:` summary of libtest.
    summary: String,
    /// The failing tests, by name.
    failures: Vec<String>,
}

struct KernelResult {
    name: String,
    release: String,
    seconds: f64,
    /// Why the VM as a whole failed, when it did.
    problem: Option<String>,
    runs: Vec<RunResult>,
    /// `skipping <test>: <reason>` lines.
    skips: BTreeSet<String>,
    /// Per scratch filesystem, kprobe's report rows.
    probes: Vec<(String, Vec<String>)>,
    log: PathBuf,
}

impl KernelResult {
    fn passed(&self) -> bool {
        self.problem.is_none() && self.runs.iter().all(|r| r.status == Some(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_order_by_their_numbers() {
        assert_eq!(version_key("6.12.107+deb13-amd64"), [6, 12, 107, 13]);
        assert_eq!(version_key("5.10.0-32-amd64"), [5, 10, 0, 32]);
        assert!(version_key("6.19.14+deb13-amd64") > version_key("6.19.8+deb13-amd64"));
        assert!(version_key("7.0.4+deb13-amd64") > version_key("6.19.14+deb13-amd64"));
    }

    #[test]
    fn test_executables_are_read_from_cargo_messages() {
        // Keys in any order, escapes, other messages and artifacts that are no tests.
        let messages = r#"{"reason":"compiler-artifact","manifest_path":"/r/crates/kprobe/Cargo.toml","target":{"kind":["test"],"name":"kernel"},"executable":"/t/kernel-1"}
{"executable":"/t/a\"b-2","target":{"name":"apply","src_path":"/r/x.rs","kind":["test"]},"fresh":true,"manifest_path":"/r/crates/archive/Cargo.toml","reason":"compiler-artifact"}
{"reason":"compiler-artifact","manifest_path":"/r/crates/kprobe/Cargo.toml","target":{"kind":["lib"],"name":"plies_kprobe"},"executable":null}
{"reason":"compiler-artifact","manifest_path":"/r/crates/kprobe/Cargo.toml","target":{"kind":["bin"],"name":"x"},"executable":"/t/x"}
{"reason":"build-script-executed","package_id":"p","linked_libs":[],"linked_paths":[],"cfgs":[],"env":[],"out_dir":"/o"}
{"reason":"build-finished","success":true}
"#;
        let found = test_executables(messages).unwrap();
        assert_eq!(
            found,
            [
                TestExecutable {
                    manifest: "/r/crates/kprobe/Cargo.toml".into(),
                    target: "kernel".into(),
                    path: "/t/kernel-1".into(),
                },
                TestExecutable {
                    manifest: "/r/crates/archive/Cargo.toml".into(),
                    target: "apply".into(),
                    path: "/t/a\"b-2".into(),
                },
            ]
        );
        assert!(test_executables("{\"reason\":").is_err());
    }

    fn payload(ids: &[&str]) -> Payload {
        Payload {
            dir: PathBuf::new(),
            runs: ids
                .iter()
                .map(|id| PlannedRun {
                    id: id.to_string(),
                    file: String::new(),
                    scratch: "ext4",
                    crate_dir: "kprobe",
                    only: None,
                })
                .collect(),
            has_cli: false,
        }
    }

    fn parsed(log: &str, ids: &[&str]) -> KernelResult {
        let mut r = KernelResult {
            name: "6.1".into(),
            release: "6.1.0-50-amd64".into(),
            seconds: 0.0,
            problem: None,
            runs: Vec::new(),
            skips: BTreeSet::new(),
            probes: Vec::new(),
            log: PathBuf::new(),
        };
        parse_log(log, &payload(ids), &mut r);
        r
    }

    #[test]
    fn a_clean_log_passes() {
        let log = "\x1b[2J@@plies-vm kernel 6.1.0-50-amd64\n\
                   @@plies-vm begin a@ext4\ntest x ... ok\n\
                   test result: ok. 1 passed; 0 failed\n@@plies-vm end a@ext4 0\n\
                   @@plies-vm done\n";
        let r = parsed(log, &["a@ext4"]);
        assert!(r.passed(), "{:?}", r.problem);
        assert_eq!(r.runs[0].summary, "ok. 1 passed; 0 failed");
    }

    #[test]
    fn failures_are_named_and_fail_the_kernel() {
        let log = "@@plies-vm kernel k\n@@plies-vm begin a@ext4\n\
                   test one ... \nthread 'one' panicked\nFAILED\ntest two ... FAILED\n\
                   test three ... ok\nskipping three: no aufs\n\
                   @@plies-vm end a@ext4 101\n@@plies-vm done\n";
        let r = parsed(log, &["a@ext4"]);
        assert!(!r.passed());
        assert_eq!(r.runs[0].status, Some(101));
        assert_eq!(r.runs[0].failures, ["one", "two"]);
        assert!(r.skips.contains("skipping three: no aufs"));
    }

    #[test]
    fn a_guest_that_dies_fails_every_unfinished_run() {
        let log = "@@plies-vm kernel k\n@@plies-vm begin a@ext4\nKernel panic\n";
        let r = parsed(log, &["a@ext4", "b@xfs"]);
        assert!(!r.passed());
        assert!(r.problem.is_some());
        assert!(r.runs.iter().all(|x| x.status.is_none()));
        assert_eq!(r.runs.len(), 2);
        assert!(!parsed("", &["a@ext4"]).passed());
    }
}
