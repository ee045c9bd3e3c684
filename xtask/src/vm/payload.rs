//! The static test executables the guests run.

use anyhow::bail;

use super::*;

/// Cargo building statically linked executables into `<vm>/build`.
pub(crate) fn static_cargo(vm: &Path) -> Command {
    let mut c = cargo();
    c.env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", vm.join("build"));
    c
}

/// A string field of one line of cargo's JSON messages (no escapes in our paths).
pub(super) fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
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
