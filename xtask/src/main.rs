//! `cargo xtask`: the project's chores in one place, so a person runs exactly what CI runs.
//!
//! - `cargo xtask ci` — every gate, in order: fmt, clippy, tests (kernel required),
//!   docs, packaging, fuzz build.
//! - `cargo xtask fuzz [TARGET] [--seconds N]` — run one fuzz target, or each in turn.
//! - `cargo xtask package` — `cargo package --workspace` against a local registry.
//! - `cargo xtask bench` — plies side by side with GNU tar on the same input,
//!   docker load and containerd's import and snapshot calls on plies against their
//!   own overlay snapshotters (`--containerd-only`), and every mount call against
//!   the kernel's floor (`--calls-only`).
//! - `cargo xtask trials` — `plies` commands SIGKILLed at random points, the store
//!   checked after each; then many processes on one root at once.
//! - `cargo xtask powercut` — qemu killed at random points of a workload on one
//!   persistent disk, every complete layer checked at the next boot.
//!
//! cargo-fuzz runs on the stable toolchain with `--sanitizer none` (the sanitizers
//! need `-Z` flags, which only nightly takes); coverage-guided fuzzing still works.

mod bench;
mod powercut;
mod trials;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{CommandFactory, Parser, Subcommand};

/// The project's chores in one place, so a person runs exactly what CI runs.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Subcommand)]
enum Task {
    /// Every gate, in order: fmt, clippy, tests (kernel required), docs, package, fuzz build.
    Ci,
    /// Run cargo-fuzz targets (each in turn when none is named).
    Fuzz(FuzzArgs),
    /// `cargo package --workspace` against a local registry.
    Package,
    /// plies vs GNU tar, docker load on plies vs overlay2, containerd on plies vs
    /// overlayfs, and get+put, mount, umount, create, rm against raw mount(2).
    Bench(bench::Args),
    /// The kernel-dependent tests under Debian kernels in qemu (xtask/VM.md).
    VmTest(vm::Options),
    /// Kill plies at random points and check the store; then K processes on one root.
    Trials(trials::Options),
    /// Power cuts in qemu on one disk: what survives (xtask/VM.md).
    Powercut(powercut::Options),
    /// `cargo fmt --all`.
    Fmt,
}

/// `cargo xtask fuzz`.
#[derive(clap::Args)]
struct FuzzArgs {
    /// Fuzz targets, as `fuzz/Cargo.toml` names them (all when none is given).
    #[arg(value_name = "TARGET")]
    targets: Vec<String>,
    /// Seconds each target runs.
    #[arg(long, value_name = "N", default_value_t = 60)]
    seconds: u64,
}

fn main() -> ExitCode {
    let Some(task) = Cli::parse().task else {
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    let result = match task {
        Task::Ci => ci(),
        Task::Fuzz(args) => fuzz(&args),
        Task::Package => package(),
        Task::Bench(args) => bench::bench(&args),
        Task::VmTest(opts) => vm::vm_test(opts),
        Task::Trials(opts) => trials::trials(opts),
        Task::Powercut(opts) => powercut::powercut(opts),
        Task::Fmt => run(cargo().args(["fmt", "--all"])),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = anyhow::Result<T>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` when set (relative to the
/// workspace root), else the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root().join(d))
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: running {shown}");
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    eprintln!(
        "xtask: {shown} finished in {:.1}s ({status})",
        start.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        bail!("{shown} failed: {status}")
    }
}

fn ci() -> Result {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["test", "--workspace"])
        .env("PLIES_REQUIRE_KERNEL", "1"))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    package()?;
    fuzz_build()?;
    eprintln!("xtask: ci passed");
    Ok(())
}

fn package() -> Result {
    forget_packaged_siblings()?;
    let mut cmd = cargo();
    cmd.args(["package", "--workspace"]);
    if std::env::var_os("CI").is_none() {
        // A developer's tree is usually dirty; CI works on a clean clone.
        cmd.arg("--allow-dirty");
    }
    run(&mut cmd)
}

/// `cargo package --workspace` verifies each crate against a temporary local
/// registry, and cargo extracts such registry packages once under
/// `$CARGO_HOME/registry/src/-<hash>/<name>-<version>` and never again: a later run
/// would verify against the siblings' sources of an earlier one. Remove those
/// extractions of our own crates first.
fn forget_packaged_siblings() -> Result {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let Ok(registries) = std::fs::read_dir(home.join("registry/src")) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        // Local registries are named `-<hash>`; the public registry's cache is left alone.
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        let Ok(packages) = std::fs::read_dir(registry.path()) else {
            continue;
        };
        for package in packages.flatten() {
            let name = package.file_name().to_string_lossy().into_owned();
            if name.starts_with("plies") {
                std::fs::remove_dir_all(package.path())
                    .with_context(|| format!("removing {}", package.path().display()))?;
            }
        }
    }
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

fn fuzz_targets() -> Result<Vec<String>> {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml"))
        .context("reading fuzz/Cargo.toml")?;
    // Every `[[bin]]` table names one target; its `name` is the first key in it.
    let mut targets = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(value) = line.strip_prefix("name") {
                let name = value.trim_start().trim_start_matches('=').trim();
                targets.push(name.trim_matches('"').to_string());
                in_bin = false;
            }
        }
    }
    Ok(targets)
}

fn cargo_fuzz() -> Command {
    let mut c = cargo();
    c.current_dir(fuzz_dir());
    c
}

fn fuzz_build() -> Result {
    run(cargo_fuzz().args(["fuzz", "build", "--sanitizer", "none"]))
}

fn fuzz(args: &FuzzArgs) -> Result {
    let seconds = args.seconds;
    let chosen = args.targets.clone();
    let all = fuzz_targets()?;
    for name in &chosen {
        if !all.contains(name) {
            bail!("no fuzz target '{name}'; targets: {}", all.join(", "));
        }
    }
    let targets = if chosen.is_empty() { all } else { chosen };
    for target in targets {
        let corpus = fuzz_dir().join("corpus").join(&target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        run(cargo_fuzz()
            .args(["fuzz", "run", "--sanitizer", "none", &target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The invocations `.ci/run`, `README.md`, `fuzz/README.md` and `xtask/VM.md` show.
    #[test]
    fn documented_invocations_parse() {
        for line in [
            "ci",
            "fuzz",
            "fuzz mountopts_overlay --seconds 60",
            "package",
            "fmt",
            "bench",
            "bench --runs 3",
            "bench --calls-only",
            "bench --containerd-only --calls-iterations 50",
            "bench --no-debian --no-docker --no-containerd --no-calls",
            "trials --per-kind 5 --procs 4 --rounds 20",
            "trials --kinds rm,apply-child --keep --verbose --seed 7 --bin /bin/true",
            "vm-test",
            "vm-test --kernel 6.1",
            "vm-test --kernel 6.1 --filter volatile",
            "vm-test --kernel 5.10 --kernel newest",
            "vm-test --kernel 5.10 --kernel newest --kernel-image /k/linux.bzImage",
            "vm-test --kernel-image ../shared/kernels/linux-6.1.192-aufs.bzImage",
            "vm-test --jobs 1 --timeout 600 --refresh",
            "powercut",
            "powercut --cuts 20 --seed 4242",
            "powercut --kernel 6.1 --cuts 50 --seed 7",
            "powercut --refresh --bin target/plies",
        ] {
            let args = std::iter::once("cargo xtask").chain(line.split_whitespace());
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("cargo xtask {line}: {e}");
            }
        }
    }

    #[test]
    fn wrong_invocations_fail() {
        for line in [
            "nope",
            "bench --docker-only --calls-only",
            "bench --no-calls --calls-only",
            "bench --calls-iterations 0",
            "vm-test --jobs 3",
            "vm-test --timeout soon",
            "powercut --cuts 0",
            "trials --kinds nope",
        ] {
            let args = std::iter::once("cargo xtask").chain(line.split_whitespace());
            assert!(Cli::try_parse_from(args).is_err(), "cargo xtask {line}");
        }
    }
}
