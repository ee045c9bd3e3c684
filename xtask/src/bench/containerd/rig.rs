//! The private containerd and the plies server behind it.

use anyhow::bail;

use super::*;

/// The private containerd and the plies server behind it, under
/// `target/bench/containerd-<pid>/`: stopped by pid, unmounted and removed on drop.
pub(super) struct Rig {
    dir: PathBuf,
    plies: Option<Child>,
    containerd: Option<Child>,
}

impl Rig {
    pub(super) fn start(bench: &Path, plies_bin: &Path) -> Result<Rig> {
        let mut rig = Rig {
            dir: bench.join(format!("containerd-{}", std::process::id())),
            plies: None,
            containerd: None,
        };
        let dir = rig.dir.clone();
        let io = || format!("setting up containerd in {}", dir.display());
        std::fs::create_dir_all(&dir).with_context(io)?;

        let log = std::fs::File::create(rig.path("plies.log")).with_context(io)?;
        rig.plies = Some(
            Command::new(plies_bin)
                .arg("--root")
                .arg(rig.path("plies"))
                .args(["--driver", "overlay2", "serve", "containerd", "--socket"])
                .arg(rig.path("plies.sock"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().with_context(io)?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", plies_bin.display()))?,
        );
        rig.wait_for("plies.sock", "plies.log")?;

        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[proxy_plugins]
  [proxy_plugins.plies]
    type = "snapshot"
    address = "{d}/plies.sock"
"#
        );
        std::fs::write(rig.path("config.toml"), config).with_context(io)?;
        let log = std::fs::File::create(rig.path("containerd.log")).with_context(io)?;
        rig.containerd = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(rig.path("config.toml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().with_context(io)?)
                .stderr(log)
                .spawn()
                .context("starting containerd")?,
        );
        rig.wait_for("containerd.sock", "containerd.log")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while rig.ctr_ok(&["version"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "containerd does not answer: {}",
                    rig.log_tail("containerd.log")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(rig)
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn wait_for(&mut self, socket: &str, log: &str) -> Result {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.path(socket).exists() {
            let exited = [&mut self.plies, &mut self.containerd]
                .into_iter()
                .flatten()
                .any(|c| !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() > deadline {
                bail!(
                    "{} never appeared: {}",
                    self.path(socket).display(),
                    self.log_tail(log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The last lines of a log, joined.
    fn log_tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.path(log)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// `ctr` talking to this containerd, in the bench's namespace.
    pub(super) fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.path("containerd.sock"))
            .args(["--namespace", NAMESPACE])
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr` and returns its stdout; its stderr and containerd's last log
    /// lines in the error.
    pub(super) fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr().args(args).output().context("starting ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {}: {}; containerd: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_tail("containerd.log")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A synchronous GC: a lease made and removed with `--sync`.
    pub(super) fn gc(&self) -> Result {
        let id = self.ctr_ok(&["leases", "create"])?;
        let id = id.split_whitespace().next().unwrap_or_default().to_string();
        self.ctr_ok(&["leases", "rm", "--sync", &id]).map(drop)
    }

    /// The snapshot directories of containerd's overlayfs snapshotter.
    pub(super) fn overlayfs_snapshots(&self) -> Result<usize> {
        let dir = self.path("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
        match std::fs::read_dir(&dir) {
            Ok(entries) => Ok(entries.count()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
        if let Some(mut p) = self.plies.take() {
            terminate(&mut p, Duration::from_secs(30));
        }
        if let Err(e) = remove_mounted_tree(&self.dir) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// Removes what runs killed before their end left: the processes whose command
/// line names their directory (SIGKILL, by pid), mounts under it, the directory.
pub(super) fn sweep_dead_runs(bench: &Path) {
    let Ok(entries) = std::fs::read_dir(bench) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("containerd-") else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = e.path();
        eprintln!("bench: removing {} (left by a killed run)", dir.display());
        for pid in processes_naming(&dir) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Err(e) = remove_mounted_tree(&dir) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// The pids whose command line names a path under `dir`.
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = format!("{}/", dir.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            out.push(pid);
        }
    }
    out
}
