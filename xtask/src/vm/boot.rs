//! Booting a kernel in qemu and collecting its results.

use super::*;

pub(super) fn boot_and_test(
    vm: &Path,
    kernel: &Kernel,
    payload: &Payload,
    opts: &Options,
) -> KernelResult {
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
        Err(e) => result.problem = Some(format!("{e:#}")),
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
        .arg(format!("console=ttyS0 quiet panic=-1 oops=panic {append}").trim_end())
        // The console goes to the log; qemu's own complaints to a pipe, read by
        // `qemu_stderr` when it exits.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// What an exited qemu wrote to its stderr, trimmed.
pub(crate) fn qemu_stderr(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    err.trim().to_owned()
}

/// Boots the guest until it powers off; `Some(problem)` when it did not finish.
pub(super) fn boot(
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
    let mut child = cmd.spawn().context("could not start qemu")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            if !status.success() {
                return Ok(Some(format!(
                    "qemu exited with {status}: {}",
                    qemu_stderr(&mut child)
                )));
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
