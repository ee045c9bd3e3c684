//! Layer locks shared by every process that opens a store.
//!
//! A lock is an exclusive `flock` on `<store>/.plies/locks/<id>`, held for the
//! whole of an operation on that layer (create, apply, mount, remove). The kernel
//! drops the locks of a process that dies, so a sweeper that can take a layer's
//! lock knows that whoever left work in progress on it is gone; work whose lock is
//! held is never swept nor reported as damage.
//!
//! Within a process the same locks also order threads: a thread that holds a layer
//! may lock it again (the lock counts), other threads wait. Several layers are
//! always taken in sorted order, so two callers locking overlapping sets never
//! deadlock.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, flock, fstat, openat, statat, unlinkat};
use rustix::io::Errno;

use crate::disk::open_store_root;
use crate::error::{Error, Result, io_err};

/// The directory each store keeps for itself inside its root: `locks/`, probe
/// scratch, caches. Layer ids never start with `.`, so it is never a layer.
pub const STORE_DIR: &str = ".plies";

/// Where probes make their scratch directories, under [`STORE_DIR`]: one place
/// that `fsck` knows, never the store's own layout.
pub const PROBE_DIR: &str = "probe";

/// The lock a prober holds while it works in [`PROBE_DIR`]; no layer id starts
/// with `.`, so it never names a layer.
pub const PROBE_LOCK: &str = ".probe";

/// Where the lock files live, under [`STORE_DIR`].
const LOCK_DIR: &str = "locks";

/// How long [`LayerLocks::lock`] waits for a layer another process holds before
/// it gives up with [`Error::Busy`].
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(120);

/// How long [`LayerLocks::try_lock`] waits for a lock held elsewhere.
pub const TRY_WAIT: Duration = Duration::from_millis(50);

/// The lock files of one store, and the locks this process holds.
#[derive(Debug)]
pub struct LayerLocks {
    dir: PathBuf,
    /// `None` when opened read-only: every lock is refused.
    dir_fd: Option<OwnedFd>,
    wait: Option<Duration>,
    held: Mutex<HashMap<String, Held>>,
    released: Condvar,
    /// Threads of this process waiting on `released`: a release wakes them
    /// only when there are any (a wake is a system call).
    waiters: AtomicUsize,
}

#[derive(Debug)]
struct Held {
    owner: ThreadId,
    depth: usize,
    /// `None` while the owner is taking the `flock`.
    file: Option<OwnedFd>,
    /// Delete the lock file when the last hold goes (the layer was removed).
    forget: bool,
}

/// Holds layer locks until dropped.
#[derive(Debug)]
#[must_use = "the locks are released when the guard is dropped"]
pub struct LayerGuard<'a> {
    locks: &'a LayerLocks,
    ids: Vec<String>,
}

impl LayerLocks {
    /// Opens (making it if needed) the lock directory of the store whose root is
    /// `store_root`: `<store_root>/.plies/locks`. A waiting `lock` gives up after
    /// [`DEFAULT_LOCK_WAIT`].
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be made or opened.
    pub fn open(store_root: &Path) -> Result<LayerLocks> {
        let dir = store_root.join(STORE_DIR).join(LOCK_DIR);
        let (dir, dir_fd) = open_store_root(&dir, 0o700)?;
        Ok(LayerLocks {
            dir,
            dir_fd: Some(dir_fd),
            wait: Some(DEFAULT_LOCK_WAIT),
            held: Mutex::new(HashMap::new()),
            released: Condvar::new(),
            waiters: AtomicUsize::new(0),
        })
    }

    /// The locks of a store opened read-only: nothing is made on disk, every
    /// [`LayerLocks::lock`] fails with [`Error::ReadOnly`], and
    /// [`LayerLocks::try_lock`] gives a guard that holds nothing (a reader
    /// inspects as if nobody worked; it never writes under such a guard:
    /// sweeps and repairs are refused on a read-only store).
    pub fn read_only(store_root: &Path) -> LayerLocks {
        LayerLocks {
            dir: store_root.join(STORE_DIR).join(LOCK_DIR),
            dir_fd: None,
            wait: Some(DEFAULT_LOCK_WAIT),
            held: Mutex::new(HashMap::new()),
            released: Condvar::new(),
            waiters: AtomicUsize::new(0),
        }
    }

    /// The lock directory's handle, or [`Error::ReadOnly`].
    fn dir_fd(&self) -> Result<&OwnedFd> {
        self.dir_fd.as_ref().ok_or_else(|| Error::ReadOnly {
            path: self.dir.clone(),
        })
    }

    /// Sets how long [`LayerLocks::lock`] waits for a busy layer (`None`: as long
    /// as it takes).
    pub fn set_wait(&mut self, wait: Option<Duration>) {
        self.wait = wait;
    }

    /// The directory holding the lock files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the locks of `ids` (in sorted order), waiting for layers that other
    /// threads or processes hold.
    ///
    /// # Errors
    /// [`Error::Busy`] naming the layer and its holder when the wait runs out;
    /// [`Error::Io`] when a lock file cannot be opened.
    pub fn lock(&self, ids: &[&str]) -> Result<LayerGuard<'_>> {
        self.lock_within(ids, self.wait)
    }

    /// Takes the locks of `ids` only if none is held elsewhere; `Ok(None)` when
    /// one is (nothing is held then). It waits [`TRY_WAIT`] at most: a child
    /// another thread forks holds copies of the lock files it opened until it
    /// execs, and with them their locks, for an instant.
    ///
    /// # Errors
    /// [`Error::Io`] when a lock file cannot be opened.
    pub fn try_lock(&self, ids: &[&str]) -> Result<Option<LayerGuard<'_>>> {
        if self.dir_fd.is_none() {
            return Ok(Some(LayerGuard {
                locks: self,
                ids: Vec::new(),
            }));
        }
        match self.lock_within(ids, Some(TRY_WAIT)) {
            Ok(g) => Ok(Some(g)),
            Err(Error::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether another thread or process holds the lock of `id` right now.
    ///
    /// # Errors
    /// As [`LayerLocks::try_lock`].
    pub fn is_busy(&self, id: &str) -> Result<bool> {
        Ok(self.try_lock(&[id])?.is_none())
    }

    /// [`LayerLocks::lock`] with an explicit wait (`Some(ZERO)`: do not wait).
    ///
    /// # Errors
    /// As [`LayerLocks::lock`].
    pub fn lock_within(&self, ids: &[&str], wait: Option<Duration>) -> Result<LayerGuard<'_>> {
        self.dir_fd()?;
        let mut sorted: Vec<&str> = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let deadline = wait.map(|w| Instant::now() + w);
        let mut guard = LayerGuard {
            locks: self,
            ids: Vec::with_capacity(sorted.len()),
        };
        for id in sorted {
            // A bad id is refused as the store would refuse it, not as a file name.
            if id != PROBE_LOCK {
                crate::id::check_id(id)?;
            }
            self.take(id, deadline)?;
            guard.ids.push(id.to_owned());
        }
        Ok(guard)
    }

    /// Takes one hold on `id` for this thread.
    fn take(&self, id: &str, deadline: Option<Instant>) -> Result<()> {
        let me = std::thread::current().id();
        let mut state = self.state();
        loop {
            match state.get_mut(id) {
                Some(h) if h.owner == me => {
                    h.depth += 1;
                    return Ok(());
                }
                Some(_) => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(self.busy(id, deadline));
                    }
                    // Counted under the map's mutex, which the wait releases:
                    // a releaser that takes the mutex after sees the count.
                    self.waiters.fetch_add(1, Ordering::SeqCst);
                    state = match left {
                        None => self
                            .released
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner),
                        Some(left) => {
                            self.released
                                .wait_timeout(state, left)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0
                        }
                    };
                    self.waiters.fetch_sub(1, Ordering::SeqCst);
                }
                None => break,
            }
        }
        state.insert(
            id.to_owned(),
            Held {
                owner: me,
                depth: 1,
                file: None,
                forget: false,
            },
        );
        drop(state);
        // The flock is taken without the map's mutex: other threads wait on the
        // entry, not on the kernel.
        match self.flock_file(id, deadline) {
            Ok(file) => {
                if let Some(h) = self.state().get_mut(id) {
                    h.file = Some(file);
                }
                Ok(())
            }
            Err(e) => {
                self.state().remove(id);
                self.wake();
                Err(e)
            }
        }
    }

    /// Opens and flocks `<dir>/<id>`, making sure the locked file is still the
    /// one under that name (a remover may have deleted it meanwhile).
    fn flock_file(&self, id: &str, deadline: Option<Instant>) -> Result<OwnedFd> {
        let mut pause = Duration::from_micros(500);
        loop {
            let fd = openat(
                self.dir_fd()?,
                id,
                OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| io_err("open", self.dir.join(id), e))?;
            let locked = match deadline {
                None => flock(&fd, FlockOperation::LockExclusive),
                Some(_) => flock(&fd, FlockOperation::NonBlockingLockExclusive),
            };
            match locked {
                Ok(()) => {}
                Err(Errno::WOULDBLOCK) => {
                    let now = Instant::now();
                    match deadline {
                        Some(d) if now < d => {
                            std::thread::sleep(pause.min(d - now));
                            pause = (pause * 2).min(Duration::from_millis(20));
                            continue;
                        }
                        _ => return Err(self.busy(id, deadline)),
                    }
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io_err("flock", self.dir.join(id), e)),
            }
            let ours = fstat(&fd).map_err(|e| io_err("stat", self.dir.join(id), e))?;
            match statat(self.dir_fd()?, id, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_ino == ours.st_ino && st.st_dev == ours.st_dev => {}
                Ok(_) | Err(Errno::NOENT) => continue,
                Err(e) => return Err(io_err("stat", self.dir.join(id), e)),
            }
            return Ok(fd);
        }
    }

    fn busy(&self, id: &str, deadline: Option<Instant>) -> Error {
        let holder = self
            .dir_fd
            .as_ref()
            .and_then(|dir| rustix::fs::statat(dir, id, AtFlags::SYMLINK_NOFOLLOW).ok())
            .and_then(|st| flock_holder(st.st_dev, st.st_ino));
        let holder = match holder {
            Some(pid) if pid == std::process::id() => None,
            other => other,
        };
        Error::Busy {
            id: id.to_owned(),
            holder,
            waited: deadline.map_or(Duration::ZERO, |_| self.wait.unwrap_or_default()),
        }
    }

    fn release(&self, id: &str) {
        let mut state = self.state();
        let Some(h) = state.get_mut(id) else {
            return;
        };
        h.depth -= 1;
        if h.depth > 0 {
            return;
        }
        if let Some(h) = state.remove(id) {
            if h.forget {
                // Unlinked while still locked: a waiter that then gets the old
                // file sees it is gone and opens the new one.
                let unlinked = match &self.dir_fd {
                    Some(dir) => unlinkat(dir, id, AtFlags::empty()),
                    None => Ok(()),
                };
                match unlinked {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => tracing::debug!(layer = id, error = %e, "lock file left"),
                }
            }
            drop(h.file);
        }
        drop(state);
        self.wake();
    }

    /// Wakes the threads waiting for a release, if there are any.
    fn wake(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.released.notify_all();
        }
    }
}

/// The pid holding a `flock` on the file `dev`/`ino`, from `/proc/locks`:
/// asked only when a caller gives up waiting, so taking a lock writes nothing.
pub fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    text.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF`
        let fields: Vec<&str> = line.split_whitespace().collect();
        let kind = fields.iter().position(|f| *f == "FLOCK")?;
        let pid = fields.get(kind + 3)?;
        let file = fields.get(kind + 4)?;
        (*file == want).then(|| pid.parse().ok()).flatten()
    })
}

impl LayerGuard<'_> {
    /// Deletes the lock file of `id` when its last hold is released: the layer is
    /// gone. Does nothing for an id this guard does not hold.
    pub fn forget(&self, id: &str) {
        if self.ids.iter().any(|i| i == id) {
            if let Some(h) = self.locks.state().get_mut(id) {
                h.forget = true;
            }
        }
    }
}

impl Drop for LayerGuard<'_> {
    fn drop(&mut self) {
        for id in self.ids.iter().rev() {
            self.locks.release(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_holder_per_layer_and_reentrant_per_thread() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Arc::new(LayerLocks::open(dir.path()).unwrap());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (locks, inside) = (locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _g = locks.lock(&["a"]).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        let _again = locks.lock(&["a", "b"]).unwrap();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_second_open_of_the_same_store_sees_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let a = LayerLocks::open(dir.path()).unwrap();
        let b = LayerLocks::open(dir.path()).unwrap();
        let held = a.lock(&["x"]).unwrap();
        assert!(b.is_busy("x").unwrap());
        match b.lock_within(&["x"], Some(Duration::from_millis(30))) {
            Err(Error::Busy { id, .. }) => assert_eq!(id, "x"),
            other => panic!("expected Busy, got {other:?}"),
        }
        held.forget("x");
        drop(held);
        assert!(!dir.path().join(".plies/locks/x").exists());
        assert!(!b.is_busy("x").unwrap());
    }
}
