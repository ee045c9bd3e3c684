//! Running the `plies` binary against a root: to the end (with a deadline), or in
//! the background to be SIGKILLed; and the mounts under a root, seen from
//! `/proc/self/mountinfo`.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;

use crate::Result;

/// How long any one `plies` command may take before it counts as hung and is killed.
pub(crate) const DEADLINE: Duration = Duration::from_secs(120);

/// The `plies` binary, always run with `--driver overlay2`.
#[derive(Clone)]
pub(crate) struct Plies {
    /// The binary.
    pub(crate) bin: PathBuf,
}

/// How a command ended, with what it printed.
pub(crate) struct Run {
    /// The command line, for messages.
    pub(crate) shown: String,
    /// Its exit status; `None` when it passed [`DEADLINE`] and was killed.
    pub(crate) status: Option<ExitStatus>,
    /// Standard output.
    pub(crate) stdout: Vec<u8>,
    /// Standard error.
    pub(crate) stderr: String,
    /// Wall time from start to exit.
    pub(crate) elapsed: Duration,
}

impl Run {
    /// Whether it exited 0.
    pub(crate) fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Whether it ended by SIGKILL.
    pub(crate) fn killed(&self) -> bool {
        self.status.and_then(|s| s.signal()) == Some(9)
    }

    /// Standard output as text, trimmed.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }

    /// How it ended: `exit 3`, `signal 9`, `hung (killed after 120 s)`.
    pub(crate) fn end(&self) -> String {
        match self.status {
            None => format!("hung (killed after {} s)", DEADLINE.as_secs()),
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exit {code}"),
                (_, Some(sig)) => format!("signal {sig}"),
                _ => s.to_string(),
            },
        }
    }

    /// The error it reported: the first line of standard error, else how it ended.
    pub(crate) fn message(&self) -> String {
        match self.stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => line.to_string(),
            None => format!("{} ({})", self.end(), self.shown),
        }
    }

    /// The command, how it ended and everything it printed (standard output only
    /// when it is text), indented, for a failure report.
    pub(crate) fn transcript(&self) -> String {
        let mut out = format!("$ {}  -> {}\n", self.shown, self.end());
        let stdout = String::from_utf8_lossy(&self.stdout);
        let printable = !self.stdout.contains(&0);
        for line in stdout.lines().filter(|_| printable).take(40) {
            out.push_str(&format!("    {line}\n"));
        }
        for line in self.stderr.lines().take(40) {
            out.push_str(&format!("    {line}\n"));
        }
        out
    }
}

/// A command running in the background.
pub(crate) struct Running {
    shown: String,
    child: Child,
    start: Instant,
    stdout: Receiver<Vec<u8>>,
    stderr: Receiver<Vec<u8>>,
}

impl Running {
    /// Waits for the end, killing it after [`DEADLINE`].
    pub(crate) fn wait(self) -> Run {
        self.finish(DEADLINE, false)
    }

    /// Sends SIGKILL after `delay` (unless it has ended by then) and waits for it.
    pub(crate) fn kill_after(self, delay: Duration) -> Run {
        self.finish(delay, true)
    }

    /// Waits for the end until `limit` after the start, then kills it: as planned
    /// (the status tells how it ended) or as hung (no status).
    fn finish(mut self, limit: Duration, kill_is_the_plan: bool) -> Run {
        let mut status = None;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    break;
                }
                Ok(None) => {}
                Err(_) => break,
            }
            let left = limit.saturating_sub(self.start.elapsed());
            if left.is_zero() {
                let _ = self.child.kill();
                let waited = self.child.wait().ok();
                if kill_is_the_plan {
                    status = waited;
                }
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(1)));
        }
        let elapsed = self.start.elapsed();
        // A process the command started may outlive it and hold its pipes open;
        // what it printed is not worth waiting for long.
        let stdout = self.stdout.recv_timeout(PIPE_GRACE).unwrap_or_default();
        let stderr = self.stderr.recv_timeout(PIPE_GRACE).unwrap_or_default();
        Run {
            shown: self.shown,
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed,
        }
    }
}

/// How long a pipe may stay open after its command ended.
const PIPE_GRACE: Duration = Duration::from_secs(10);

/// Reads a pipe to its end on a thread of its own, which sends what it read.
fn drain(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

impl Plies {
    /// `plies --root <root> --driver overlay2 <args>`.
    pub(crate) fn command<S: AsRef<std::ffi::OsStr>>(&self, root: &Path, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(root)
            .args(["--driver", "overlay2"])
            .args(args);
        cmd
    }

    /// Starts a command in the background.
    pub(crate) fn start<S: AsRef<std::ffi::OsStr>>(
        &self,
        root: &Path,
        args: &[S],
    ) -> Result<Running> {
        let shown = format!(
            "plies {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let start = Instant::now();
        let mut child = self
            .command(root, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = drain(child.stdout.take().expect("piped"));
        let stderr = drain(child.stderr.take().expect("piped"));
        Ok(Running {
            shown,
            child,
            start,
            stdout,
            stderr,
        })
    }

    /// Runs a command to its end (or [`DEADLINE`]).
    pub(crate) fn run<S: AsRef<std::ffi::OsStr>>(&self, root: &Path, args: &[S]) -> Result<Run> {
        Ok(self.start(root, args)?.wait())
    }

    /// Runs a command that must succeed; returns its standard output.
    pub(crate) fn ok<S: AsRef<std::ffi::OsStr>>(&self, root: &Path, args: &[S]) -> Result<String> {
        let run = self.run(root, args)?;
        if run.ok() {
            Ok(run.text())
        } else {
            Err(anyhow!("{} failed: {}", run.shown, run.message()))
        }
    }

    /// The layers `plies ls --json` lists.
    pub(crate) fn ls(&self, root: &Path) -> Result<Vec<Listed>> {
        let run = self.run(root, &["--json", "ls"])?;
        if !run.ok() {
            bail!("{} failed: {}", run.shown, run.message());
        }
        parse_ls(&String::from_utf8_lossy(&run.stdout))
    }
}

/// One row of `plies ls --json` (the fields read here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Listed {
    /// The layer's full id.
    pub(crate) id: String,
    /// Its parent's id.
    pub(crate) parent: Option<String>,
    /// Where `plies mount` mounted it.
    pub(crate) mounted: Option<String>,
}

/// Parses the output of `plies ls --json`.
pub(crate) fn parse_ls(text: &str) -> Result<Vec<Listed>> {
    serde_json::from_str(text).context("reading the output of plies ls --json")
}

/// Every mount point at or below `dir` in this process's mount namespace, deepest first.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    found
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or below `dir` (`umount -l`, deepest first); returns how
/// many there were.
pub(crate) fn unmount_all(dir: &Path) -> usize {
    let mounts = mounts_under(dir);
    for m in &mounts {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(m)
            .stderr(Stdio::null())
            .status();
    }
    mounts.len()
}

/// Unmounts everything under `dir` and removes it.
pub(crate) fn remove_root(dir: &Path) -> Result {
    unmount_all(dir);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape(r"/a\0"), r"/a\0");
    }

    #[test]
    fn ls_rows() {
        let rows = parse_ls(
            r#"[{"id": "a", "parent": null, "depth": 0, "size": 3, "rw": false, "mounted": null},
               {"id": "b", "parent": "a", "mounted": "/r/overlay2/b/merged"}]"#,
        )
        .unwrap();
        assert_eq!(rows[0].parent, None);
        assert_eq!(rows[1].parent.as_deref(), Some("a"));
        assert_eq!(rows[1].mounted.as_deref(), Some("/r/overlay2/b/merged"));
    }
}
