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

use super::{Result, cargo, root};

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

struct Options {
    kernels: Vec<String>,
    /// `--kernel-image` files: kernels built elsewhere, booted as they are.
    images: Vec<PathBuf>,
    filter: Option<String>,
    jobs: usize,
    timeout: Duration,
    refresh: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options {
        kernels: Vec::new(),
        images: Vec::new(),
        filter: None,
        jobs: 2,
        timeout: Duration::from_secs(40 * 60),
        refresh: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--kernel" => o.kernels.push(value("--kernel")?),
            "--kernel-image" => o.images.push(PathBuf::from(value("--kernel-image")?)),
            "--filter" => o.filter = Some(value("--filter")?),
            "--jobs" => {
                let v = value("--jobs")?;
                o.jobs = v
                    .parse()
                    .ok()
                    .filter(|&n| (1..=2).contains(&n))
                    .ok_or_else(|| format!("--jobs takes 1 or 2, not '{v}'"))?;
            }
            "--timeout" => {
                let v = value("--timeout")?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout takes seconds, not '{v}'"))?;
                o.timeout = Duration::from_secs(secs);
            }
            "--refresh" => o.refresh = true,
            other => return Err(format!("vm-test: unknown argument '{other}'")),
        }
    }
    if o.kernels.is_empty() && o.images.is_empty() {
        o.kernels = DEFAULT_KERNELS.iter().map(|s| s.to_string()).collect();
    }
    Ok(o)
}

/// `cargo xtask vm-test [--kernel NAME]… [--kernel-image PATH]… [--filter TEST] [--jobs N]
/// [--timeout S] [--refresh]`.
pub fn vm_test(args: &[String]) -> Result {
    let opts = parse_args(args)?;
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "depmod",
        "modprobe",
        "cpio",
        "gzip",
    ] {
        if which(tool).is_none() {
            return Err(format!(
                "vm-test needs {tool}; install qemu-system-x86 busybox-static kmod cpio \
                 e2fsprogs xfsprogs"
            ));
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
        Err(format!("vm-test failed on {}", failed.join(", ")))
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
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))
}

/// Writes a file, with the path in the error.
pub(crate) fn write(path: &Path, data: impl AsRef<[u8]>) -> Result {
    fs::write(path, data).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Runs `cmd` quietly, returning its stdout; stderr is shown only on failure.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
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
// Fetching kernels: a private apt configuration.

/// A private apt configuration (sources, lists, cache) under one directory.
pub(crate) struct Apt {
    /// The directory holding it.
    dir: PathBuf,
}

impl Apt {
    /// Sets up the configuration under `dir` (the machine's mirror, Debian's keyring).
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        let mirror = match std::env::var("PLIES_VM_MIRROR") {
            Ok(m) if !m.is_empty() => m,
            _ => machine_mirror()?,
        };
        if !Path::new(KEYRING).is_file() {
            return Err(format!(
                "{KEYRING} is missing (package debian-archive-keyring)"
            ));
        }
        for sub in ["state/lists/partial", "cache/archives/partial"] {
            mkdir(&dir.join(sub))?;
        }
        let mut sources = String::new();
        for suite in SUITES {
            let _ = writeln!(sources, "deb [signed-by={KEYRING}] {mirror} {suite} main");
        }
        let list = dir.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
            write(&list, &sources)?;
            // New sources: the old lists no longer describe them.
            let _ = fs::remove_file(dir.join("state/updated"));
        }
        let status = dir.join("state/status");
        if !status.exists() {
            write(&status, "")?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn options(&self, cmd: &mut Command) {
        let d = self.dir.display();
        for o in [
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State={d}/state"),
            format!("Dir::State::status={d}/state/status"),
            format!("Dir::Cache={d}/cache"),
            "Acquire::Languages=none".into(),
            "APT::Sandbox::User=root".into(),
        ] {
            cmd.arg("-o").arg(o);
        }
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        self.options(&mut c);
        c
    }

    /// `apt-get update` when the lists are missing, a day old, or `force`.
    pub(crate) fn update(&self, force: bool) -> Result {
        let stamp = self.dir.join("state/updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(24 * 3600));
        if fresh && !force {
            return Ok(());
        }
        let start = Instant::now();
        output(self.cmd("apt-get").args(["-q", "update"]))?;
        eprintln!(
            "vm-test: package lists updated ({:.1}s)",
            start.elapsed().as_secs_f64()
        );
        write(&stamp, "")
    }

    /// The newest `linux-image-<release>` (generic amd64 flavour) that `name` picks:
    /// `newest`, a series (`6.1`), or an exact release (`6.16.12+deb13-amd64`).
    pub(crate) fn resolve(&self, name: &str) -> Result<String> {
        let names = output(self.cmd("apt-cache").args(["pkgnames", "linux-image-"]))?;
        let wanted = name.strip_suffix("-amd64").unwrap_or(name);
        let release = names
            .lines()
            .filter_map(|p| p.strip_prefix("linux-image-")?.strip_suffix("-amd64"))
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            .filter(|r| !r.ends_with("-cloud") && !r.ends_with("-rt") && !r.contains("unsigned"))
            .filter(|r| {
                wanted == "newest"
                    || *r == wanted
                    || r.strip_prefix(wanted)
                        .is_some_and(|rest| rest.starts_with(['.', '-']))
            })
            .max_by_key(|r| version_key(r))
            .ok_or_else(|| format!("no Debian kernel package matches '{name}'"))?;
        Ok(format!("{release}-amd64"))
    }
}

/// The Debian mirror the machine's apt uses (never a name of our own).
fn machine_mirror() -> Result<String> {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    for stanza in deb822.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let security = field("Suites").is_some_and(|s| s.contains("security"));
        if let (Some(uris), false) = (field("URIs"), security) {
            if let Some(uri) = uris.split_whitespace().next() {
                return Ok(uri.trim_end_matches('/').to_string());
            }
        }
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let mut words = line
            .split_whitespace()
            .skip_while(|w| *w == "deb")
            .skip_while(|w| w.starts_with('['));
        if !line.trim_start().starts_with("deb ") {
            continue;
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            if !suite.contains("security") && !suite.contains("/updates") {
                return Ok(uri.trim_end_matches('/').to_string());
            }
        }
    }
    Err("no Debian mirror in the machine's apt sources; set PLIES_VM_MIRROR".into())
}

/// A kernel unpacked in the cache.
pub(crate) struct Kernel {
    /// What the user asked for (`6.1`, `newest`).
    pub(crate) name: String,
    /// `uname -r` of the kernel.
    pub(crate) release: String,
    /// The unpacked packages, with `lib/modules/<release>` depmod'ed; `None` for
    /// a `--kernel-image`, which has what the guest needs built in.
    pub(crate) root: Option<PathBuf>,
    /// The kernel image qemu boots.
    pub(crate) vmlinuz: PathBuf,
    /// Whether the kernel has aufs: its row runs the aufs tests with
    /// `PLIES_REQUIRE_AUFS=1`, so they fail instead of skipping without it.
    pub(crate) aufs: bool,
}

impl Kernel {
    /// A kernel image built elsewhere (`--kernel-image`), named after its file.
    /// It has no modules: what the guest needs is built in. The `.config`
    /// beside it (`<name>.config`, the image's extension replaced) says whether
    /// it has aufs (`CONFIG_AUFS_FS=y`).
    pub(crate) fn image(path: &Path) -> Result<Kernel> {
        let vmlinuz = std::path::absolute(path)
            .map_err(|e| format!("--kernel-image {}: {e}", path.display()))?;
        if !vmlinuz.is_file() {
            return Err(format!("--kernel-image {}: no such file", path.display()));
        }
        let name = vmlinuz
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("--kernel-image {}: no file name", path.display()))?;
        let config = fs::read_to_string(vmlinuz.with_extension("config")).unwrap_or_default();
        let aufs = config
            .lines()
            .any(|l| l.trim() == "CONFIG_AUFS_FS=y" || l.trim() == "CONFIG_AUFS_FS=m");
        Ok(Kernel {
            name: "image".into(),
            release: name,
            root: None,
            vmlinuz,
            aufs,
        })
    }
}

/// The kernel `release` (asked for as `name`) unpacked under `cache`, downloaded
/// and `depmod`ed on first use.
pub(crate) fn fetch(apt: &Apt, cache: &Path, name: &str, release: &str) -> Result<Kernel> {
    let dir = cache.join(release);
    let unpacked = dir.join("root");
    let ready = dir.join("ready");
    if !ready.exists() {
        let _ = fs::remove_dir_all(&dir);
        let debs = dir.join("debs");
        mkdir(&debs)?;
        mkdir(&unpacked)?;
        let image = format!("linux-image-{release}");
        let show = output(
            apt.cmd("apt-cache")
                .args(["show", "--no-all-versions"])
                .arg(&image),
        )?;
        // From 6.19 the image is a meta package over linux-{binary,modules,base}-<release>.
        let mut packages = vec![image];
        for line in show.lines().filter(|l| l.starts_with("Depends:")) {
            for dep in line["Depends:".len()..].split([',', '|']) {
                let dep = dep.split_whitespace().next().unwrap_or("");
                if dep.starts_with("linux-") && dep.ends_with(release) {
                    packages.push(dep.to_string());
                }
            }
        }
        eprintln!("vm-test: downloading {}", packages.join(" "));
        output(
            apt.cmd("apt-get")
                .args(["-q", "download"])
                .args(&packages)
                .current_dir(&debs),
        )?;
        for deb in fs::read_dir(&debs).map_err(|e| format!("{}: {e}", debs.display()))? {
            let deb = deb.map_err(|e| e.to_string())?.path();
            output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
        // Newer packages ship under usr/lib; depmod and modprobe look under lib.
        let lib_modules = unpacked.join("lib/modules");
        if !lib_modules.exists()
            && !unpacked.join("lib").exists()
            && unpacked.join("usr/lib/modules").exists()
        {
            std::os::unix::fs::symlink("usr/lib", unpacked.join("lib"))
                .map_err(|e| format!("linking lib in {}: {e}", unpacked.display()))?;
        }
        output(Command::new("depmod").arg("-b").arg(&unpacked).arg(release))?;
        let _ = fs::remove_dir_all(&debs);
        write(&ready, "")?;
    }
    let vmlinuz = [
        unpacked.join(format!("boot/vmlinuz-{release}")),
        unpacked.join(format!("lib/modules/{release}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| format!("no vmlinuz in the packages of {release}"))?;
    Ok(Kernel {
        name: name.to_string(),
        release: release.to_string(),
        root: Some(unpacked),
        vmlinuz,
        aufs: false,
    })
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

/// Cargo building statically linked executables into `<vm>/build`.
pub(crate) fn static_cargo(vm: &Path) -> Command {
    let mut c = cargo();
    c.env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", vm.join("build"));
    c
}

/// A string field of one line of cargo's JSON messages (no escapes in our paths).
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn build_payload(vm: &Path) -> Result<Payload> {
    let mut cmd = static_cargo(vm);
    cmd.args([
        "test",
        "--no-run",
        "--tests",
        "--message-format=json",
        "--target",
        TARGET,
    ]);
    let mut packages = BTreeSet::new();
    for s in SUITES_UNDER_TEST {
        if packages.insert(s.package) {
            cmd.args(["-p", s.package]);
        }
        for f in s.features {
            cmd.args(["--features", &format!("{}/{f}", s.package)]);
        }
    }
    let messages = output(&mut cmd)?;
    let dir = vm.join("payload");
    let _ = fs::remove_dir_all(&dir);
    mkdir(&dir)?;
    let mut runs = Vec::new();
    for line in messages.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"")
            || !line.contains("\"target\":{\"kind\":[\"test\"]")
        {
            continue;
        }
        let (Some(exe), Some(manifest)) = (
            json_field(line, "executable"),
            json_field(line, "manifest_path"),
        ) else {
            continue;
        };
        let target = line
            .find("\"target\":{")
            .and_then(|i| json_field(&line[i..], "name"))
            .unwrap_or("");
        for suite in SUITES_UNDER_TEST.iter().filter(|s| {
            manifest.ends_with(&format!("crates/{}/Cargo.toml", s.dir)) && s.tests.contains(&target)
        }) {
            let file = format!("{}-{target}", suite.dir);
            if !dir.join(&file).exists() {
                output(
                    Command::new("strip")
                        .arg("--strip-debug")
                        .arg("-o")
                        .arg(dir.join(&file))
                        .arg(exe),
                )?;
            }
            for scratch in suite.scratch {
                runs.push(PlannedRun {
                    id: format!("{}/{target}@{scratch}", suite.dir),
                    file: file.clone(),
                    scratch,
                    crate_dir: suite.dir,
                    only: suite.only,
                });
            }
        }
    }
    for s in SUITES_UNDER_TEST {
        for t in s.tests {
            if !runs.iter().any(|r| r.file == format!("{}-{t}", s.dir)) {
                return Err(format!("{} has no test target '{t}'", s.package));
            }
        }
    }
    // The command line prints kprobe's report in the guest, when it builds.
    let mut cli = static_cargo(vm);
    cli.args(["build", "-p", "plies", "--bin", "plies", "--target", TARGET]);
    let has_cli = match output(&mut cli) {
        Ok(_) => {
            let exe = vm.join(format!("build/{TARGET}/debug/plies"));
            output(
                Command::new("strip")
                    .arg("--strip-debug")
                    .arg("-o")
                    .arg(dir.join("plies"))
                    .arg(exe),
            )?;
            true
        }
        Err(e) => {
            let first = e.lines().find(|l| l.starts_with("error")).unwrap_or("");
            eprintln!("vm-test: no probe report, the command line did not build: {first}");
            false
        }
    };
    Ok(Payload { dir, runs, has_cli })
}

// ---------------------------------------------------------------------------------
// The guest.

/// Copies a file, with both paths in the error.
pub(crate) fn copy(from: &Path, to: &Path) -> Result {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

/// Builds `<work>/initramfs.gz` for `kernel`; returns the modules it loads.
fn initramfs(kernel: &Kernel, payload: &Payload, opts: &Options, work: &Path) -> Result<PathBuf> {
    let tree = work.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "tests", "etc",
    ] {
        mkdir(&tree.join(d))?;
    }
    copy(&which("busybox").unwrap(), &tree.join("bin/busybox"))?;
    host_tools(&tree)?;
    // Tests run from their crate's directory and find the fixtures through testkit's.
    let repo = root();
    for dir in SUITES_UNDER_TEST.iter().map(|s| s.dir).chain(["testkit"]) {
        mkdir(
            &tree
                .join(repo.strip_prefix("/").unwrap())
                .join("crates")
                .join(dir),
        )?;
    }
    let fixtures = repo.join("fixtures");
    let guest_fixtures = tree.join(fixtures.strip_prefix("/").unwrap());
    mkdir(&guest_fixtures)?;
    for entry in fs::read_dir(&fixtures).map_err(|e| format!("{}: {e}", fixtures.display()))? {
        let p = entry.map_err(|e| e.to_string())?.path();
        if p.is_file() {
            copy(&p, &guest_fixtures.join(p.file_name().unwrap()))?;
        }
    }
    for entry in fs::read_dir(&payload.dir).map_err(|e| e.to_string())? {
        let p = entry.map_err(|e| e.to_string())?.path();
        copy(&p, &tree.join("tests").join(p.file_name().unwrap()))?;
    }

    let order = add_modules(kernel, &tree, MODULES)?;

    write(
        &tree.join("init"),
        init_script(kernel, payload, opts, &order),
    )?;
    fs::set_permissions(
        tree.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| e.to_string())?;

    let image = work.join("initramfs.gz");
    pack(&tree, &image)?;
    let _ = fs::remove_dir_all(&tree);
    Ok(image)
}

/// Copies `modules` (those the kernel builds as modules) with their dependencies
/// into `tree`, decompressed, and `depmod`s it; returns the module files in load
/// order, relative to `lib/modules/<release>`.
pub(crate) fn add_modules(kernel: &Kernel, tree: &Path, modules: &[&str]) -> Result<Vec<String>> {
    let release = &kernel.release;
    let moddir = format!("lib/modules/{release}");
    let mut order = Vec::<String>::new();
    let Some(kroot) = &kernel.root else {
        return Ok(order); // everything built in
    };
    for m in modules {
        let Ok(deps) = output(Command::new("modprobe").arg("-d").arg(kroot).args([
            "-S",
            release,
            "--show-depends",
            m,
        ])) else {
            continue; // not built for this kernel
        };
        for line in deps.lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue; // builtin
            };
            let path = path.split_whitespace().next().unwrap_or("");
            let Some(rel) = path.split_once(&format!("/{moddir}/")).map(|(_, r)| r) else {
                continue;
            };
            let plain = rel
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .trim_end_matches(".gz")
                .to_string();
            if order.contains(&plain) {
                continue;
            }
            let src = kroot.join(&moddir).join(rel);
            let dst = tree.join(&moddir).join(&plain);
            mkdir(dst.parent().unwrap())?;
            let decompress = match Path::new(rel).extension().and_then(|e| e.to_str()) {
                Some("xz") => Some("xz"),
                Some("zst") => Some("zstd"),
                Some("gz") => Some("gzip"),
                _ => None,
            };
            match decompress {
                Some(tool) => {
                    let out = fs::File::create(&dst)
                        .map_err(|e| format!("creating {}: {e}", dst.display()))?;
                    let status = Command::new(tool)
                        .arg("-dc")
                        .arg(&src)
                        .stdout(out)
                        .status()
                        .map_err(|e| format!("running {tool}: {e}"))?;
                    if !status.success() {
                        return Err(format!("{tool} -dc {} failed", src.display()));
                    }
                }
                None => copy(&src, &dst)?,
            }
            order.push(plain);
        }
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let src = kroot.join(&moddir).join(f);
        if src.exists() {
            copy(&src, &tree.join(&moddir).join(f))?;
        }
    }
    output(Command::new("depmod").arg("-b").arg(tree).arg(release))?;

    Ok(order)
}

/// Packs `tree` as a gzip'd newc initramfs at `image`.
pub(crate) fn pack(tree: &Path, image: &Path) -> Result {
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1 > \"$1\"")
        .arg("sh")
        .arg(image)
        .current_dir(tree)
        .status()
        .map_err(|e| format!("running cpio: {e}"))?;
    if !status.success() {
        return Err(format!("packing {} failed", tree.display()));
    }
    Ok(())
}

/// Copies [`HOST_TOOLS`] to `/usr/local/sbin` with the libraries `ldd` names.
fn host_tools(tree: &Path) -> Result {
    let bin = tree.join("usr/local/sbin");
    mkdir(&bin)?;
    for tool in HOST_TOOLS {
        let Some(path) = which(tool) else {
            eprintln!("vm-test: {tool} is not installed; the tests needing it will fail");
            continue;
        };
        copy(&path, &bin.join(tool))?;
        let libs = output(Command::new("ldd").arg(&path)).unwrap_or_default();
        for lib in libs.lines().filter_map(|l| {
            let l = l.split(" (0x").next()?.trim();
            let path = l.rsplit("=> ").next()?.trim();
            path.starts_with('/').then_some(path)
        }) {
            let dst = tree.join(lib.trim_start_matches('/'));
            if !dst.exists() {
                mkdir(dst.parent().unwrap())?;
                copy(Path::new(lib), &dst)?;
            }
        }
    }
    if Path::new("/etc/mke2fs.conf").is_file() {
        copy(Path::new("/etc/mke2fs.conf"), &tree.join("etc/mke2fs.conf"))?;
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn init_script(kernel: &Kernel, payload: &Payload, opts: &Options, modules: &[String]) -> String {
    let release = &kernel.release;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/local/sbin:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /root /scratch/tmpfs /scratch/ext4 /scratch/xfs
mount -t tmpfs -o mode=1777 shm /dev/shm
ln -sf /proc/self/mounts /etc/mtab
echo "{MARK} kernel $(uname -r)"
{insmod}mount -t tmpfs -o size=256m tmpfs /scratch/tmpfs
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vdb ] && break; sleep 0.2; done
mount -t ext4 /dev/vda /scratch/ext4 || echo "{MARK} scratch-failed ext4"
mount -t xfs -o prjquota /dev/vdb /scratch/xfs || echo "{MARK} scratch-failed xfs"
run() {{
  id=$1; fs=$2; bin=$3; dir=$4; shift 4
  echo "{MARK} begin $id"
  if grep -q " /scratch/$fs " /proc/mounts; then
    mkdir -p /scratch/$fs/tmp /scratch/$fs/target-tmp {target_tmp}
    mount --bind /scratch/$fs/target-tmp {target_tmp}
    (cd {repo}/crates/$dir && TMPDIR=/scratch/$fs/tmp PLIES_REQUIRE_KERNEL=1 {require_aufs}RUST_BACKTRACE=1 PLIES_BIN=/tests/plies \
      /tests/$bin --test-threads=1 --nocapture "$@")
    rc=$?
    umount {target_tmp}
    rm -rf /scratch/$fs/tmp /scratch/$fs/target-tmp
  else
    echo "scratch filesystem $fs is not mounted"
    rc=125
  fi
  echo "{MARK} end $id $rc"
}}
"#,
        // A kernel with everything built in has no modules to load.
        insmod = if modules.is_empty() {
            String::new()
        } else {
            format!(
                "for m in {}; do\n  insmod /lib/modules/{release}/$m || echo \"{MARK} insmod-failed $m\"\ndone\n",
                modules.join(" ")
            )
        },
        // In the row of a kernel with aufs, the aufs tests fail instead of skipping.
        require_aufs = if kernel.aufs {
            "PLIES_REQUIRE_AUFS=1 "
        } else {
            ""
        },
        // Tests keep scratch files in cargo's CARGO_TARGET_TMPDIR, a path compiled in.
        repo = root().display(),
        target_tmp = root()
            .join("target/vm/build")
            .join(TARGET)
            .join("tmp")
            .display(),
    );
    let filter = opts.filter.as_deref().map(shell_quote).unwrap_or_default();
    for r in &payload.runs {
        // A suite's own filter, narrowed by --filter: a --filter it does not
        // hold runs none of its tests.
        let filter = match (r.only, opts.filter.as_deref()) {
            (None, _) => filter.clone(),
            (Some(only), None) => shell_quote(only),
            (Some(only), Some(f)) if only.contains(f) => shell_quote(only),
            (Some(_), Some(f)) => format!("--exact {}", shell_quote(&format!("{f}@none"))),
        };
        let _ = writeln!(
            s,
            "run {} {} {} {} {filter}",
            r.id, r.scratch, r.file, r.crate_dir
        );
    }
    if payload.has_cli {
        // kprobe's report, and the mount mode the automatic driver choice lands on.
        for fs in SCRATCH {
            let _ = writeln!(
                s,
                "echo \"{MARK} probe {fs}\"; grep -q \" /scratch/{fs} \" /proc/mounts && \
                 /tests/plies --root /scratch/{fs}/plies probe && \
                 /tests/plies --root /scratch/{fs}/plies status; echo \"{MARK} probe-end\""
            );
        }
    }
    let _ = writeln!(s, "sync\necho \"{MARK} done\"\npoweroff -f\nreboot -f");
    s
}

/// mkfs command lines for an ext4 disk, tried in turn: the first keeps the
/// filesystem mountable by 5.10 (no `orphan_file`), for a mkfs that knows the option.
pub(crate) const MKFS_EXT4: &[&[&str]] = &[
    &["mkfs.ext4", "-q", "-F", "-O", "^orphan_file"],
    &["mkfs.ext4", "-q", "-F"],
];

/// mkfs command lines for an xfs disk, tried in turn (the first for 5.10).
const MKFS_XFS: &[&[&str]] = &[
    &["mkfs.xfs", "-q", "-f", "-i", "nrext64=0"],
    &["mkfs.xfs", "-q", "-f"],
];

/// Makes `img` a sparse file of `size` bytes (replacing any) and a filesystem on
/// it with the first of `attempts` that succeeds; false when none does.
pub(crate) fn make_disk(img: &Path, size: u64, attempts: &[&[&str]]) -> Result<bool> {
    let _ = fs::remove_file(img);
    fs::File::create(img)
        .and_then(|f| f.set_len(size))
        .map_err(|e| format!("creating {}: {e}", img.display()))?;
    Ok(attempts.iter().any(|argv| {
        Command::new(argv[0])
            .args(&argv[1..])
            .arg(img)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }))
}

/// Sparse disk images for the guest's ext4 and xfs scratch filesystems.
fn disks(work: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (fs_name, attempts) in [("ext4", MKFS_EXT4), ("xfs", MKFS_XFS)] {
        let img = work.join(format!("{fs_name}.img"));
        if !make_disk(&img, 1 << 30, attempts)? {
            eprintln!(
                "vm-test: could not make the {fs_name} scratch disk (is {} installed?)",
                attempts[0][0]
            );
        }
        out.push(img);
    }
    Ok(out)
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

fn boot_and_test(vm: &Path, kernel: &Kernel, payload: &Payload, opts: &Options) -> KernelResult {
    let start = Instant::now();
    let work = vm.join("run").join(&kernel.release);
    let log = vm.join("logs").join(format!("{}.log", kernel.release));
    let mut result = KernelResult {
        name: kernel.name.clone(),
        release: kernel.release.clone(),
        seconds: 0.0,
        problem: None,
        runs: Vec::new(),
        skips: BTreeSet::new(),
        probes: Vec::new(),
        log: log.clone(),
    };
    match boot(kernel, payload, opts, &work, &log) {
        Ok(problem) => result.problem = problem,
        Err(e) => result.problem = Some(e),
    }
    let _ = fs::remove_dir_all(&work);
    parse_log(
        &fs::read_to_string(&log).unwrap_or_default(),
        payload,
        &mut result,
    );
    result.seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "vm-test: {} {} in {:.0}s (log {})",
        kernel.release,
        if result.passed() { "passed" } else { "FAILED" },
        result.seconds,
        log.display()
    );
    result
}

/// qemu booting `kernel` with `initrd` (TCG, one CPU, 1 GiB), its serial console
/// written to `log`, `append` added to the kernel command line; the caller adds disks.
pub(crate) fn qemu(kernel: &Kernel, initrd: &Path, log: &Path, append: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nodefaults"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 quiet panic=-1 oops=panic {append}").trim_end());
    cmd
}

/// Boots the guest until it powers off; `Some(problem)` when it did not finish.
fn boot(
    kernel: &Kernel,
    payload: &Payload,
    opts: &Options,
    work: &Path,
    log: &Path,
) -> Result<Option<String>> {
    let _ = fs::remove_dir_all(work);
    mkdir(work)?;
    mkdir(log.parent().unwrap())?;
    let initrd = initramfs(kernel, payload, opts, work)?;
    let disks = disks(work)?;
    let mut cmd = qemu(kernel, &initrd, log, "");
    for d in &disks {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", d.display()));
    }
    eprintln!("vm-test: booting {}", kernel.release);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start qemu: {e}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Ok(Some(format!("qemu exited with {status}: {}", err.trim())));
            }
            return Ok(None);
        }
        if start.elapsed() > opts.timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Some(format!("timed out after {}s", opts.timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn parse_log(log: &str, payload: &Payload, result: &mut KernelResult) {
    let mut current: Option<RunResult> = None;
    let mut probe: Option<(String, Vec<String>)> = None;
    let mut done = false;
    let mut booted = false;
    let mut testing: Option<String> = None;
    for raw in log.lines() {
        let line = raw.trim_end_matches('\r');
        // The firmware's escape sequences may precede the first mark on its line.
        if let Some(rest) = line.find(MARK).map(|i| line[i + MARK.len()..].trim()) {
            let mut words = rest.split_whitespace();
            match words.next() {
                Some("kernel") => booted = true,
                Some("begin") => {
                    current = Some(RunResult {
                        id: words.next().unwrap_or("").to_string(),
                        status: None,
                        summary: String::new(),
                        failures: Vec::new(),
                    })
                }
                Some("end") => {
                    if let Some(mut r) = current.take() {
                        r.status = words.nth(1).and_then(|s| s.parse().ok());
                        result.runs.push(r);
                    }
                }
                Some("probe") => probe = Some((words.next().unwrap_or("").to_string(), Vec::new())),
                Some("probe-end") => result.probes.extend(probe.take()),
                Some("done") => done = true,
                Some("insmod-failed" | "scratch-failed") => {
                    let note = format!("guest: {rest}");
                    result.skips.insert(note);
                }
                _ => {}
            }
            continue;
        }
        let kernel_message = line.starts_with('[') && line.contains("] ");
        if let Some((_, rows)) = probe.as_mut() {
            if !line.trim().is_empty() && !kernel_message {
                rows.push(line.to_string());
            }
        }
        if let Some(r) = current.as_mut() {
            // With --nocapture a test's output sits between `test NAME ... ` and its verdict.
            if let Some(summary) = line.strip_prefix("test result:") {
                r.summary = summary.trim().to_string();
            } else if let Some((name, verdict)) = line
                .strip_prefix("test ")
                .and_then(|l| l.split_once(" ... "))
            {
                testing = Some(name.to_string());
                if verdict.trim() == "FAILED" {
                    r.failures.extend(testing.take());
                }
            } else if line.trim() == "FAILED" {
                r.failures.extend(testing.take());
            }
        }
        if let Some(skip) = line.find("skipping ").map(|i| &line[i..]) {
            result.skips.insert(skip.to_string());
        }
    }
    // A run that began and never ended: the guest died or hung in it.
    result.runs.extend(current);
    for planned in &payload.runs {
        if !result.runs.iter().any(|r| r.id == planned.id) {
            result.runs.push(RunResult {
                id: planned.id.clone(),
                status: None,
                summary: "never started".into(),
                failures: Vec::new(),
            });
        }
    }
    if result.problem.is_none() {
        if !booted {
            result.problem = Some("the guest never reached its init".into());
        } else if !done {
            result.problem = Some("the guest stopped before the end".into());
        }
    }
}

fn render(results: &[KernelResult], payload: &Payload) -> String {
    let mut s = String::from("\nvm-test results\n\n");
    let ids: Vec<&str> = payload.runs.iter().map(|r| r.id.as_str()).collect();
    let _ = writeln!(
        s,
        "{:<26} {:<8} {:<7} {:>6}  failed",
        "kernel", "asked", "result", "secs"
    );
    for r in results {
        let failed: Vec<String> = r
            .runs
            .iter()
            .filter(|x| x.status != Some(0))
            .map(|x| match x.status {
                Some(code) => format!("{} (exit {code})", x.id),
                None => format!("{} (unfinished)", x.id),
            })
            .chain(r.problem.clone())
            .collect();
        let _ = writeln!(
            s,
            "{:<26} {:<8} {:<7} {:>6.0}  {}",
            r.release,
            r.name,
            if r.passed() { "pass" } else { "FAIL" },
            r.seconds,
            if failed.is_empty() {
                "-".to_string()
            } else {
                failed.join(", ")
            }
        );
    }
    for r in results {
        let _ = writeln!(s, "\n== {} (log {})", r.release, r.log.display());
        for id in &ids {
            if let Some(x) = r.runs.iter().find(|x| x.id == *id) {
                let state = match x.status {
                    Some(0) => "ok".to_string(),
                    Some(c) => format!("exit {c}"),
                    None => "unfinished".to_string(),
                };
                let _ = writeln!(s, "  {:<28} {:<11} {}", x.id, state, x.summary);
                for f in &x.failures {
                    let _ = writeln!(s, "      failed: {f}");
                }
            }
        }
        for skip in &r.skips {
            let _ = writeln!(s, "  {skip}");
        }
        for (fs_name, rows) in &r.probes {
            let _ = writeln!(s, "  kprobe report and driver status on {fs_name}:");
            for row in rows {
                let _ = writeln!(s, "    {row}");
            }
        }
    }
    s
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
    fn json_fields_are_read_from_cargo_messages() {
        let line = r#"{"reason":"compiler-artifact","manifest_path":"/r/crates/kprobe/Cargo.toml","target":{"kind":["test"],"name":"kernel"},"executable":"/t/kernel-1"}"#;
        assert_eq!(json_field(line, "executable"), Some("/t/kernel-1"));
        assert_eq!(json_field(line, "name"), Some("kernel"));
        assert_eq!(json_field(line, "missing"), None);
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
