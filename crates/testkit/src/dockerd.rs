//! A private dockerd for tests: its own data root, exec root, pidfile and
//! socket under a directory, no iptables and no bridge; stopped by pid (with
//! the containerd it started) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A private dockerd (with the containerd it manages), stopped by pid on drop.
#[derive(Debug)]
pub struct Dockerd {
    child: Option<Child>,
    dir: PathBuf,
    host: String,
}

/// The `docker` client to run.
pub fn docker_cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// What every dockerd test needs: root, dockerd and a static busybox (the
/// only program of the tests' images): their paths and busybox's bytes, or
/// `None`, with the skip reason said, when one is missing (a failure when
/// `PLIES_REQUIRE_KERNEL=1`).
pub fn prerequisites(test: &str) -> Option<(PathBuf, Vec<u8>)> {
    if !crate::require_root(test) {
        return None;
    }
    let Some(dockerd) = dockerd_bin() else {
        crate::require(test, false, "dockerd is not installed (Debian: docker.io)");
        return None;
    };
    let Ok(busybox) = std::fs::read("/bin/busybox") else {
        crate::require(
            test,
            false,
            "no static /bin/busybox (Debian: busybox-static)",
        );
        return None;
    };
    Some((dockerd, busybox))
}

/// Where dockerd is installed, if it is.
pub fn dockerd_bin() -> Option<PathBuf> {
    [
        "/usr/sbin/dockerd",
        "/usr/bin/dockerd",
        "/usr/local/bin/dockerd",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Dockerd {
    /// Starts dockerd under `dir` on `storage_driver` with `extra` arguments;
    /// `Err` with its log when it does not answer within a minute.
    pub fn start(
        bin: &Path,
        dir: &Path,
        storage_driver: &str,
        extra: &[&str],
    ) -> Result<Dockerd, String> {
        let setup = |e: std::io::Error| format!("setting up dockerd in {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(setup)?;
        std::fs::write(dir.join("daemon.json"), b"{}").map_err(setup)?;
        let log = std::fs::File::create(dir.join("dockerd.log")).map_err(setup)?;
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let child = Command::new(bin)
            .arg("--experimental")
            .arg(format!("--storage-driver={storage_driver}"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .args(["-H", &host])
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(setup)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {bin:?}: {e}"))?;
        let mut d = Dockerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            host,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.try_docker(&["version"]).is_ok() {
                return Ok(d);
            }
            let exited = match d.child.as_mut().map(Child::try_wait) {
                Some(Ok(status)) => status,
                _ => None,
            };
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                return Err(format!(
                    "dockerd ({exited:?}) did not start: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker -H <this dockerd> args…`, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(docker_cli());
        c.env("DOCKER_CONFIG", &self.dir)
            .args(["-H", &self.host])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `docker args…`: its output, `Err` when it failed.
    pub fn try_docker(&self, args: &[&str]) -> Result<Output, Output> {
        let out = self.command(args).output().expect("run docker");
        if out.status.success() {
            Ok(out)
        } else {
            Err(out)
        }
    }

    /// Runs `docker args…`, panicking with its stderr and dockerd's log on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        match self.try_docker(args) {
            Ok(out) => String::from_utf8(out.stdout).unwrap(),
            Err(out) => {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "docker {args:?} failed: {}\n--- dockerd log, last lines first ---\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail.join("\n")
                )
            }
        }
    }

    /// Stops dockerd with SIGTERM (SIGKILL after 30 s), then the containerd it
    /// managed if it outlived it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let pidfile = self.dir.join("exec/containerd/containerd.pid");
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}
