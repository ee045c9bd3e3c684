//! `docker load` of the generated layer image: dockerd with plies behind the
//! graph-driver plugin against dockerd's own overlay2, on this machine, in one run.
//!
//! Every load goes to a private dockerd started for it on a fresh data root
//! (with its own exec root, pidfile and socket, no iptables, no bridge): on
//! `plies serve docker --driver overlay2` or on `overlay2`. Each round loads the
//! image once on each, in turns that alternate which goes first; before every
//! load the page cache is dropped and the image tar read back in. Nothing is
//! deleted until the end (ext4 avoids inodes freed in the last half minute, so
//! deleting between loads would slow down the next one). Daemons, containerd and
//! the plugin server are stopped by pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{read_input, sync_and_drop_caches, timed};
use crate::Result;

/// Where dockerd looks for plugin sockets.
const PLUGIN_DIR: &str = "/run/docker/plugins";

/// Median `docker load` times of `image`: (dockerd's overlay2, plies behind the plugin).
pub(super) fn load(
    runs: usize,
    dir: &Path,
    image: &Path,
    plies_bin: &Path,
) -> Result<(Duration, Duration)> {
    let dockerd = [
        "/usr/sbin/dockerd",
        "/usr/bin/dockerd",
        "/usr/local/bin/dockerd",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .context("dockerd is not installed (Debian: docker.io)")?;
    // Per process: another bench's daemons may be running beside these.
    let work = dir.join(format!("docker-{}", std::process::id()));
    remove(&work)?;
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let name = format!("pliesbench{}", std::process::id());
    let socket = Path::new(PLUGIN_DIR).join(format!("{name}.sock"));
    let server = Server::start(plies_bin, &socket, &work.join("plies-serve.log"))?;
    let drivers = ["overlay2", name.as_str()];

    let mut times = [Vec::new(), Vec::new()];
    for round in 0..runs.max(1) {
        for k in 0..2 {
            let which = (round + k) % 2;
            let driver = drivers[which];
            let d = Dockerd::start(&dockerd, &work.join(format!("{round}-{which}")), driver)?;
            sync_and_drop_caches();
            read_input(image)?;
            let took = timed(d.docker().args(["load", "-q", "-i"]).arg(image))?;
            eprintln!(
                "bench: docker load on {driver}: {:.3} s",
                took.as_secs_f64()
            );
            times[which].push(took);
        }
    }
    drop(server);
    remove(&work)?;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let [o, p] = times;
    Ok((median(o), median(p)))
}

fn remove(dir: &Path) -> Result {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// Sends SIGTERM to `pid` and waits up to `grace` for `child` to exit, then kills it.
pub(super) fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `plies serve docker` on a socket of its own, stopped by pid on drop.
struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    fn start(plies_bin: &Path, socket: &Path, log: &Path) -> Result<Server> {
        let log =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(plies_bin)
            .args(["--driver", "overlay2", "serve", "docker", "--socket"])
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", plies_bin.display()))?;
        let mut server = Server {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline || !matches!(server.child.try_wait(), Ok(None)) {
                terminate(&mut server.child, Duration::from_secs(5));
                bail!("plies serve docker did not bind {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(30));
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A private dockerd under `dir`, stopped by pid (with the containerd it
/// started) on drop. Not `plies_testkit::dockerd`: `cargo package --workspace`
/// packages xtask too, and a packaged crate cannot depend on the unpublished
/// testkit.
struct Dockerd {
    child: Child,
    dir: PathBuf,
    host: String,
}

impl Dockerd {
    fn start(bin: &Path, dir: &Path, driver: &str) -> Result<Dockerd> {
        let io = || format!("setting up dockerd in {}", dir.display());
        std::fs::create_dir_all(dir).with_context(io)?;
        std::fs::write(dir.join("daemon.json"), "{}").with_context(io)?;
        let log = std::fs::File::create(dir.join("dockerd.log")).with_context(io)?;
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let child = Command::new(bin)
            .arg("--experimental")
            .arg(format!("--storage-driver={driver}"))
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
            .stdin(Stdio::null())
            .stdout(log.try_clone().with_context(io)?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut d = Dockerd {
            child,
            dir: dir.to_path_buf(),
            host,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answered = d
                .docker()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if answered {
                return Ok(d);
            }
            if Instant::now() > deadline || !matches!(d.child.try_wait(), Ok(None)) {
                let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!("dockerd on {driver} did not start: {}", tail.join(" | "));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The docker command line talking to this daemon only.
    fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", &self.dir)
            .args(["-H", &self.host])
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(30));
        let containerd = self.dir.join("exec/containerd/containerd.pid");
        if let Some(pid) = std::fs::read_to_string(containerd)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}
