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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("package") => package(),
        Some("bench") => bench::bench(&args[1..]),
        Some("vm-test") => vm::vm_test(&args[1..]),
        Some("trials") => trials::trials(&args[1..]),
        Some("powercut") => powercut::powercut(&args[1..]),
        Some("fmt") => run(cargo().args(["fmt", "--all"])),
        None | Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task '{other}'\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <task>
  ci                           fmt, clippy, tests, docs, package, fuzz build
  fuzz [TARGET] [--seconds N]  run cargo-fuzz targets (all in turn when no TARGET)
  package                      cargo package --workspace
  bench [--runs N] [--no-debian] [--no-docker | --docker-only]
        [--no-containerd | --containerd-only] [--no-calls | --calls-only]
        [--calls-iterations N]
                               plies vs GNU tar, docker load on plies vs overlay2,
                               containerd on plies vs overlayfs, and get+put, mount,
                               umount, create, rm against raw mount(2)
  vm-test [--kernel NAME]... [--filter TEST]  kernel tests under Debian kernels in qemu (xtask/VM.md)
  trials [--per-kind N] [--procs K] [--rounds M] [--seed S] [--kinds a,b,c] [--keep]
         [--verbose] [--bin PLIES]
                               kill plies at random points and check the store; K processes on one root
  powercut [--kernel NAME] [--cuts N] [--seed S] [--bin PLIES]
                               power cuts in qemu on one disk: what survives (xtask/VM.md)
  fmt                          cargo fmt --all";

type Result<T = ()> = std::result::Result<T, String>;

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
        .map_err(|e| format!("could not start {shown}: {e}"))?;
    eprintln!(
        "xtask: {shown} finished in {:.1}s ({status})",
        start.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed: {status}"))
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
        .ok_or("neither CARGO_HOME nor HOME is set")?;
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
                    .map_err(|e| format!("removing {}: {e}", package.path().display()))?;
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
        .map_err(|e| format!("reading fuzz/Cargo.toml: {e}"))?;
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

fn fuzz(args: &[String]) -> Result {
    let mut seconds: u64 = 60;
    let mut chosen = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                let value = it.next().ok_or("--seconds needs a number")?;
                seconds = value
                    .parse()
                    .map_err(|_| format!("--seconds takes a whole number, not '{value}'"))?;
            }
            name => chosen.push(name.to_string()),
        }
    }
    let all = fuzz_targets()?;
    for name in &chosen {
        if !all.contains(name) {
            return Err(format!(
                "no fuzz target '{name}'; targets: {}",
                all.join(", ")
            ));
        }
    }
    let targets = if chosen.is_empty() { all } else { chosen };
    for target in targets {
        let corpus = fuzz_dir().join("corpus").join(&target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        run(cargo_fuzz()
            .args(["fuzz", "run", "--sanitizer", "none", &target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}
