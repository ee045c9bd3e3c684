//! The static test executables the guests run.

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::*;

/// Cargo building statically linked executables into `<vm>/build`.
pub(crate) fn static_cargo(vm: &Path) -> Command {
    let mut c = cargo();
    c.env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", vm.join("build"));
    c
}

/// One of cargo's `--message-format=json` messages: a `compiler-artifact`, or
/// another, not read.
#[derive(Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
enum Message {
    CompilerArtifact(Artifact),
    #[serde(other)]
    Other,
}

/// A `compiler-artifact` message (the fields read here).
#[derive(Deserialize)]
struct Artifact {
    manifest_path: String,
    target: ArtifactTarget,
    /// `null` for a library.
    executable: Option<PathBuf>,
}

/// The `target` of a `compiler-artifact` message.
#[derive(Deserialize)]
struct ArtifactTarget {
    kind: Vec<String>,
    name: String,
}

/// A test executable cargo built.
#[derive(Debug, PartialEq)]
pub(super) struct TestExecutable {
    /// The `Cargo.toml` of its package.
    pub(super) manifest: String,
    /// The test target's name.
    pub(super) target: String,
    /// The executable.
    pub(super) path: PathBuf,
}

/// The integration test executables among cargo's JSON messages, one a line.
pub(super) fn test_executables(messages: &str) -> Result<Vec<TestExecutable>> {
    let mut out = Vec::new();
    for line in messages.lines().filter(|l| l.starts_with('{')) {
        let message: Message = serde_json::from_str(line)
            .with_context(|| format!("reading cargo's message {line}"))?;
        let Message::CompilerArtifact(artifact) = message else {
            continue;
        };
        if artifact.target.kind != ["test"] {
            continue;
        }
        let Some(path) = artifact.executable else {
            continue;
        };
        out.push(TestExecutable {
            manifest: artifact.manifest_path,
            target: artifact.target.name,
            path,
        });
    }
    Ok(out)
}

pub(super) fn build_payload(vm: &Path) -> Result<Payload> {
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
    for exe in test_executables(&messages)? {
        let target = exe.target.as_str();
        for suite in SUITES_UNDER_TEST.iter().filter(|s| {
            exe.manifest
                .ends_with(&format!("crates/{}/Cargo.toml", s.dir))
                && s.tests.contains(&target)
        }) {
            let file = format!("{}-{target}", suite.dir);
            if !dir.join(&file).exists() {
                output(
                    Command::new("strip")
                        .arg("--strip-debug")
                        .arg("-o")
                        .arg(dir.join(&file))
                        .arg(&exe.path),
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
                bail!("{} has no test target '{t}'", s.package);
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
            let e = format!("{e:#}");
            let first = e.lines().find(|l| l.starts_with("error")).unwrap_or("");
            eprintln!("vm-test: no probe report, the command line did not build: {first}");
            false
        }
    };
    Ok(Payload { dir, runs, has_cli })
}
