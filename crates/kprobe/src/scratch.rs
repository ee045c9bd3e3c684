//! Scratch directories for probes: made with `mkdtemp` semantics under the probed
//! directory, entered by a worker thread with its own cwd, and unmounted and
//! removed on every exit path (the guard's `Drop` runs on return, error and panic).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use crate::Outcome;

/// A probe's private directory, and the mounts it made there.
pub(crate) struct Scratch {
    path: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Scratch {
    /// Makes a fresh directory `<parent>/kprobe-<name>-XXXXXX`.
    fn create(parent: &Path, name: &str) -> Result<Scratch, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!(".kprobe-{name}-"))
            .tempdir_in(parent)
            .map_err(|e| {
                format!(
                    "cannot make a scratch directory in {}: {e}",
                    parent.display()
                )
            })?;
        Ok(Scratch {
            path: dir.keep(),
            mounts: Vec::new(),
        })
    }

    /// The scratch directory's absolute path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates directories (and their parents) relative to the scratch directory.
    pub(crate) fn mkdirs(&self, names: &[&str]) -> Result<(), String> {
        for name in names {
            std::fs::create_dir_all(self.path.join(name))
                .map_err(|e| format!("cannot create {name} in the scratch directory: {e}"))?;
        }
        Ok(())
    }

    /// `mount(2)` onto `target` (relative to the scratch directory), remembered for cleanup.
    pub(crate) fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> Result<(), Errno> {
        let data = std::ffi::CString::new(data).map_err(|_| Errno::INVAL)?;
        rustix::mount::mount(source, target, fstype, flags, data.as_c_str())?;
        self.mounts.push(self.path.join(target));
        Ok(())
    }

    /// An overlay mount onto `target` with `data` (paths relative to the scratch directory).
    pub(crate) fn mount_overlay(&mut self, target: &str, data: &str) -> Result<(), Errno> {
        self.mount("overlay", target, "overlay", MountFlags::empty(), data)
    }

    /// Unmounts the latest mount at `target`, reporting the kernel's answer.
    pub(crate) fn unmount(&mut self, target: &str) -> Result<(), Errno> {
        let abs = self.path.join(target);
        rustix::mount::unmount(&abs, UnmountFlags::empty())?;
        if let Some(i) = self.mounts.iter().rposition(|m| *m == abs) {
            self.mounts.remove(i);
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mut clean = true;
        while let Some(m) = self.mounts.pop() {
            // Detach: a busy or stuck mount must not keep the directory alive.
            match rustix::mount::unmount(&m, UnmountFlags::DETACH) {
                Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
                Err(e) => {
                    tracing::warn!("cannot unmount probe mount {}: {e}", m.display());
                    clean = false;
                }
            }
        }
        if !clean {
            // Removing through a live mount would delete what it shows.
            tracing::warn!(
                "leaving {} in place: a mount is left on it",
                self.path.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!("cannot remove probe directory {}: {e}", self.path.display());
        }
    }
}

/// Runs `probe` on a new thread in a fresh scratch directory under `dir`, whose
/// cwd is that directory (relative paths in mount data stay short and need no
/// escaping), and waits at most `timeout` for its answer.
///
/// On timeout the answer is unsupported; the thread keeps its scratch guard and
/// cleans up when the blocked system call returns. A panicking probe is unsupported.
pub(crate) fn bounded<T: Send + 'static>(
    name: &'static str,
    dir: &Path,
    timeout: Duration,
    probe: impl FnOnce(&mut Scratch) -> Outcome<T> + Send + 'static,
) -> Outcome<T> {
    let dir = dir.to_path_buf();
    deadline(name, timeout, move || run_in_scratch(name, &dir, probe))
}

/// Runs `call` on a new thread and waits at most `timeout` for its answer (a
/// `statfs` or path lookup on a stuck network filesystem blocks indefinitely).
pub(crate) fn deadline<T: Send + 'static>(
    name: &'static str,
    timeout: Duration,
    call: impl FnOnce() -> Outcome<T> + Send + 'static,
) -> Outcome<T> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("kprobe-{name}"))
        .spawn(move || {
            // The receiver is gone after a timeout; nothing to tell then.
            let _ = tx.send(call());
        });
    if let Err(e) = spawned {
        return Outcome::unsupported(format!("cannot start the probe thread: {e}"));
    }
    // A zero timeout gives up at once, even on a probe quick enough to have
    // answered already: what a caller asks for when probing must never wait.
    let answer = if timeout.is_zero() {
        Err(mpsc::RecvTimeoutError::Timeout)
    } else {
        rx.recv_timeout(timeout)
    };
    match answer {
        Ok(answer) => answer,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            tracing::warn!("probe {name} timed out after {timeout:?}");
            Outcome::unsupported(format!("timed out after {timeout:?}"))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Outcome::unsupported("the probe panicked"),
    }
}

fn run_in_scratch<T>(
    name: &str,
    dir: &Path,
    probe: impl FnOnce(&mut Scratch) -> Outcome<T>,
) -> Outcome<T> {
    // A private fs context first, so the chdir below stays on this thread.
    // CLONE_FS shares nothing the rest of the process relies on.
    #[allow(deprecated)]
    if let Err(e) = rustix::thread::unshare(rustix::thread::UnshareFlags::FS) {
        return Outcome::unsupported(format!("cannot give the probe thread its own cwd: {e}"));
    }
    let mut scratch = match Scratch::create(dir, name) {
        Ok(s) => s,
        Err(reason) => return Outcome::unsupported(reason),
    };
    if let Err(e) = rustix::process::chdir(scratch.path()) {
        return Outcome::unsupported(format!("cannot enter the scratch directory: {e}"));
    }
    // Dropped before the scratch guard, on return and on panic.
    let _leave = LeaveCwd;
    probe(&mut scratch)
}

/// Moves the thread's cwd off the probed filesystem: a cwd there would keep it
/// busy (`EBUSY` on its unmount) until the thread's exit is complete, which is
/// after the caller has its answer.
struct LeaveCwd;

impl Drop for LeaveCwd {
    fn drop(&mut self) {
        if let Err(e) = rustix::process::chdir("/") {
            tracing::warn!("probe thread cannot leave its scratch directory: {e}");
        }
    }
}

/// A reason for a refused mount, saying when it is a matter of privileges.
pub(crate) fn refused(what: &str, e: Errno) -> String {
    match e {
        Errno::PERM | Errno::ACCESS => format!("{what}: not permitted ({e})"),
        Errno::NODEV => format!("{what}: the kernel has no such filesystem ({e})"),
        _ => format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).expect("read_dir").count()
    }

    #[test]
    fn a_panicking_probe_is_unsupported_and_cleaned_up() {
        let parent = tempfile::tempdir().expect("temp dir");
        let root = rustix::process::geteuid().is_root();
        let answer: Outcome<()> = bounded("panic", parent.path(), DEFAULT, move |s| {
            s.mkdirs(&["a/b", "m"]).expect("mkdirs");
            if root {
                s.mount("tmpfs", "m", "tmpfs", MountFlags::empty(), "size=64k")
                    .expect("tmpfs mount");
                std::fs::write(s.path().join("m/f"), b"x").expect("write");
            }
            panic!("probe failure on purpose");
        });
        assert_eq!(answer, Outcome::unsupported("the probe panicked"));
        assert_eq!(entries(parent.path()), 0);
        let mounts = crate::mount_points().expect("mountinfo");
        assert!(
            !mounts.iter().any(|m| m.starts_with(parent.path())),
            "{mounts:?}"
        );
    }

    #[test]
    fn a_slow_probe_times_out_and_cleans_up_later() {
        let parent = tempfile::tempdir().expect("temp dir");
        let answer: Outcome<()> = bounded("slow", parent.path(), Duration::from_millis(50), |s| {
            s.mkdirs(&["x"]).expect("mkdirs");
            std::thread::sleep(Duration::from_millis(300));
            Outcome::supported(())
        });
        assert_eq!(answer.reason(), Some("timed out after 50ms"));
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while entries(parent.path()) != 0 && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(entries(parent.path()), 0);
    }

    #[test]
    fn the_probe_thread_cwd_is_its_own() {
        let parent = tempfile::tempdir().expect("temp dir");
        let before = std::env::current_dir().expect("cwd");
        let answer = bounded("cwd", parent.path(), DEFAULT, |s| {
            let cwd = std::env::current_dir().expect("cwd");
            Outcome::supported(cwd == s.path())
        });
        assert_eq!(answer, Outcome::supported(true));
        assert_eq!(std::env::current_dir().expect("cwd"), before);
    }

    const DEFAULT: Duration = Duration::from_secs(30);
}
