//! One boot, and its cut.

use super::*;

/// Where a boot's cut falls.
#[derive(Clone, Copy)]
pub(super) enum Plan {
    /// During the workload's `nth` command (from 1): after its start marker, a
    /// `fraction` of the time that kind of command took last.
    During { nth: usize, fraction: f64 },
    /// `delay` after the workload's `nth` completion marker.
    After { nth: usize, delay: Duration },
}

impl Plan {
    /// A random plan: either kind, one of the first six commands.
    pub(super) fn draw(rng: &mut Rng) -> Plan {
        let nth = 1 + rng.below(6) as usize;
        if rng.below(2) == 0 {
            Plan::During {
                nth,
                fraction: rng.below(1000) as f64 / 1000.0,
            }
        } else {
            Plan::After {
                nth,
                delay: Duration::from_millis(rng.below(AFTER_WINDOW_MS)),
            }
        }
    }
}

/// How long each kind of command took last (start marker to completion marker, as
/// the host saw them): the window a "during" cut falls in. The defaults, for the
/// first boot, are about what they take under TCG on a 2-core host.
pub(super) struct Estimates(pub(super) BTreeMap<&'static str, Duration>);

impl Default for Estimates {
    fn default() -> Estimates {
        Estimates(BTreeMap::from([
            ("import", Duration::from_millis(800)),
            ("create", Duration::from_millis(300)),
            ("apply", Duration::from_millis(600)),
            ("rm", Duration::from_millis(500)),
        ]))
    }
}

impl Estimates {
    /// The window for `kind`.
    fn of(&self, kind: &str) -> Duration {
        self.0.get(kind).copied().unwrap_or(Duration::from_secs(1))
    }

    /// Takes each command that finished in `log` as its kind's new estimate.
    pub(super) fn learn(&mut self, log: &BootLog, arrivals: &[Instant]) {
        let mut started: Option<(&'static str, Instant)> = None;
        for e in &log.events {
            let Some(&at) = arrivals.get(e.mark) else {
                break;
            };
            match e.step {
                Step::Begin => started = Some((e.cmd.kind(), at)),
                Step::Done => {
                    if let Some((kind, t0)) = started.take() {
                        self.0.insert(kind, at.saturating_duration_since(t0));
                    }
                }
                Step::Fail(_) => started = None,
            }
        }
    }
}

/// What the host saw of a boot while it ran.
pub(super) struct Watched {
    /// When each marker line arrived, by its index among the marker lines.
    pub(super) arrivals: Vec<Instant>,
    /// When qemu was killed; `None` when the guest powered off by itself.
    pub(super) killed: Option<Instant>,
    /// Why the boot went wrong, when it did.
    pub(super) problem: Option<String>,
}

/// Boots once with `disk`; with a `plan`, kills qemu where it says.
pub(super) fn run_boot(
    kernel: &Kernel,
    initrd: &Path,
    disk: &Path,
    log: &Path,
    boot: usize,
    plan: Option<Plan>,
    estimates: &Estimates,
) -> Result<Watched> {
    let append = format!(
        "powercut.boot={boot} powercut.final={}",
        u8::from(plan.is_none())
    );
    let mut cmd = vm::qemu(kernel, initrd, log, &append);
    // cache=none: the guest sees a disk with a write cache and sends its flushes;
    // qemu writes with O_DIRECT, so the image holds what the guest wrote out and
    // nothing of it waits in qemu's memory or the host's page cache.
    cmd.arg("-drive").arg(format!(
        "file={},format=raw,if=virtio,cache=none",
        disk.display()
    ));
    let _ = fs::remove_file(log);
    let mut child = cmd.spawn().context("could not start qemu")?;
    let start = Instant::now();
    let mut watched = Watched {
        arrivals: Vec::new(),
        killed: None,
        problem: None,
    };
    let mut tail = Tail::default();
    let mut in_workload = false;
    let (mut begins, mut dones) = (0, 0);
    let mut deadline: Option<Instant> = None;
    loop {
        for line in tail.read(log) {
            let Some(rest) = marker(&line) else { continue };
            let now = Instant::now();
            watched.arrivals.push(now);
            let mut words = rest.split_whitespace();
            match (words.next(), plan) {
                (Some("workload"), _) => in_workload = true,
                (Some("begin"), Some(Plan::During { nth, fraction })) if in_workload => {
                    begins += 1;
                    if begins == nth && deadline.is_none() {
                        let kind = words.next().unwrap_or("");
                        deadline = Some(now + estimates.of(kind).mul_f64(fraction));
                    }
                }
                (Some("done" | "fail"), Some(Plan::After { nth, delay }))
                    if in_workload && words.next().is_some() =>
                {
                    dones += 1;
                    if dones == nth && deadline.is_none() {
                        deadline = Some(now + delay);
                    }
                }
                _ => {}
            }
        }
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            if plan.is_some() || !status.success() {
                watched.problem = Some(format!(
                    "qemu exited before the cut ({status}) {}",
                    vm::qemu_stderr(&mut child)
                ));
            }
            break;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            // SIGKILL: qemu dies with whatever the guest had not written out.
            let _ = child.kill();
            watched.killed = Some(Instant::now());
            let _ = child.wait();
            break;
        }
        if now.duration_since(start) > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            watched.problem = Some(format!("timed out after {}s", BOOT_TIMEOUT.as_secs()));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Lines that came in after the last read arrived by the end.
    let end = Instant::now();
    for line in tail.read(log) {
        if marker(&line).is_some() {
            watched.arrivals.push(end);
        }
    }
    Ok(watched)
}

/// Reads a growing file line by line.
#[derive(Default)]
struct Tail {
    /// Bytes consumed so far.
    offset: u64,
    /// A line not finished yet.
    partial: Vec<u8>,
}

impl Tail {
    /// The complete lines added since the last call.
    fn read(&mut self, path: &Path) -> Vec<String> {
        let Ok(mut f) = fs::File::open(path) else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        lines
    }
}

/// What follows [`MARK`] on a line (the firmware's escapes may precede it).
pub(super) fn marker(line: &str) -> Option<&str> {
    line.find(MARK).map(|i| line[i + MARK.len()..].trim())
}
