//! Carrying plans out: the only place in plies that turns mount data into mounts.
//!
//! Relative plans run on one worker thread, kept for the life of the process, that
//! unshared `CLONE_FS` and changes its own working directory to the store's home
//! for each mount, so the process's working directory never changes and other
//! threads are unaffected (and no thread is started per mount).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};

use rustix::fd::AsFd;
use rustix::fs::CWD;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::aufs::AufsCall;
use crate::error::{Error, PlanKind, Result};
use crate::overlay::{FsParam, FsconfigPlan, LegacyPlan, OverlayPlan};

/// Mounts an overlay plan at `target` (an existing directory).
///
/// A failed mount leaves nothing mounted. Errors carry the plan kind, the failing
/// step, the errno and, with the new mount API, the kernel's own messages.
pub fn mount_overlay(plan: &OverlayPlan, target: &Path) -> Result<()> {
    match plan {
        OverlayPlan::Legacy(p) => mount_legacy(p, target),
        OverlayPlan::Fsconfig(p) => mount_fsconfig(p, target),
    }
}

fn mount_legacy(plan: &LegacyPlan, target: &Path) -> Result<()> {
    let kind = if plan.cwd.is_some() {
        PlanKind::Relative
    } else {
        PlanKind::Absolute
    };
    let fail = |source: io::Error| Error::Mount {
        kind,
        target: target.to_path_buf(),
        step: "mount".into(),
        kernel_log: Vec::new(),
        source,
    };
    let data = c_data(&plan.data).map_err(fail)?;
    let owned_target = target.to_path_buf();
    let call = move || {
        rustix::mount::mount(
            "overlay",
            &owned_target,
            "overlay",
            MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(io::Error::from)
    };
    match &plan.cwd {
        None => call(),
        Some(home) => from_dir(home, call).and_then(|r| r),
    }
    .map_err(fail)
}

fn mount_fsconfig(plan: &FsconfigPlan, target: &Path) -> Result<()> {
    let (owned_plan, owned_target) = (plan.clone(), target.to_path_buf());
    let carry_out = move || fsconfig_steps(&owned_plan, &owned_target);
    let outcome = match &plan.cwd {
        None => carry_out(),
        Some(home) => from_dir(home, carry_out)
            .map_err(|e| FsconfigFailure {
                step: "enter home".into(),
                log: Vec::new(),
                source: e,
            })
            .and_then(|r| r),
    };
    outcome.map_err(|f| Error::Mount {
        kind: PlanKind::Fsconfig,
        target: target.to_path_buf(),
        step: f.step,
        kernel_log: f.log,
        source: f.source,
    })
}

struct FsconfigFailure {
    step: String,
    log: Vec<String>,
    source: io::Error,
}

// Returns io::Result so that `from_dir` can carry it; the inner Result is the outcome.
fn fsconfig_steps(plan: &FsconfigPlan, target: &Path) -> std::result::Result<(), FsconfigFailure> {
    let plain = |step: &str, e: rustix::io::Errno| FsconfigFailure {
        step: step.into(),
        log: Vec::new(),
        source: e.into(),
    };
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| plain("fsopen overlay", e))?;
    let with_log = |step: String, e: rustix::io::Errno| FsconfigFailure {
        step,
        log: kernel_messages(&fs),
        source: e.into(),
    };
    for param in &plan.params {
        match param {
            FsParam::Flag(key) => rustix::mount::fsconfig_set_flag(&fs, *key)
                .map_err(|e| with_log(format!("fsconfig {key}"), e))?,
            FsParam::String(key, value) => {
                rustix::mount::fsconfig_set_string(&fs, *key, value.as_os_str()).map_err(|e| {
                    with_log(format!("fsconfig {key}={}", value.to_string_lossy()), e)
                })?
            }
        }
    }
    rustix::mount::fsconfig_create(&fs).map_err(|e| with_log("fsconfig create".into(), e))?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| with_log("fsmount".into(), e))?;
    rustix::mount::move_mount(
        mnt.as_fd(),
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| plain("move_mount", e))
}

/// Reads the messages the kernel queued on a filesystem context (`e …`, `w …`).
fn kernel_messages<Fd: AsFd>(fs: Fd) -> Vec<String> {
    let mut messages = Vec::new();
    let mut buf = [0u8; 1024];
    // The queue holds at most 8 messages; stop at its end (ENODATA) or any error.
    for _ in 0..8 {
        match rustix::io::read(fs.as_fd(), &mut buf) {
            Ok(n) if n > 0 => messages.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            _ => break,
        }
    }
    messages
}

/// Mounts aufs at `target` by carrying out `calls` in order; if an append fails, the
/// first mount is undone so nothing stays mounted.
///
/// The calls of one mount run while no other `mount_aufs` of this process runs:
/// aufs makes its xino files by creating the named file (`/dev/shm/aufs.xino`)
/// and unlinking it, so two mounts sharing that name at once fail, one of them
/// with `EINVAL` ("aufs.xino create err -17" in the kernel log).
pub fn mount_aufs(calls: &[AufsCall], target: &Path) -> Result<()> {
    static XINO: Mutex<()> = Mutex::new(());
    let _one_at_a_time = XINO.lock().unwrap_or_else(PoisonError::into_inner);
    let fail = |step: &str, source: io::Error| Error::Mount {
        kind: PlanKind::Aufs,
        target: target.to_path_buf(),
        step: step.into(),
        kernel_log: Vec::new(),
        source,
    };
    let mut mounted = false;
    for call in calls {
        let data = c_data(call.data()).map_err(|e| fail("mount data", e))?;
        let outcome = match call {
            AufsCall::Mount(_) => {
                rustix::mount::mount("none", target, "aufs", MountFlags::empty(), data.as_c_str())
                    .map(|()| mounted = true)
                    .map_err(|e| fail("mount", e.into()))
            }
            AufsCall::Append(_) => {
                rustix::mount::mount_remount(target, MountFlags::empty(), data.as_c_str())
                    .map_err(|e| fail("remount append", e.into()))
            }
        };
        if let Err(e) = outcome {
            if mounted {
                // Best effort: the append error is the one worth reporting.
                if let Err(undo) = rustix::mount::unmount(target, UnmountFlags::DETACH) {
                    tracing::warn!(target = %target.display(), error = %undo, "could not undo a partial aufs mount");
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

fn c_data(data: &OsStr) -> io::Result<CString> {
    CString::new(data.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A job for the worker: runs there, and sends its result back itself.
type Job = Box<dyn FnOnce() + Send>;

/// The worker thread with its own working directory; `None` when it could not
/// be started (or could not unshare its working directory).
fn worker() -> Option<&'static Mutex<mpsc::Sender<Job>>> {
    static WORKER: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let (jobs, queue) = mpsc::channel::<Job>();
            let (ready, started) = mpsc::sync_channel(1);
            std::thread::Builder::new()
                .name("plies-mount-cwd".into())
                .spawn(move || {
                    // Never serve a job whose chdir would move the whole process.
                    let unshared = unshare_fs().is_ok();
                    let _ = ready.send(unshared);
                    if unshared {
                        for job in queue {
                            job();
                        }
                    }
                })
                .ok()?;
            started
                .recv()
                .ok()
                .filter(|unshared| *unshared)
                .map(|_| Mutex::new(jobs))
        })
        .as_ref()
}

/// Runs `f` with `dir` as its working directory, leaving every other thread's,
/// and the process's, untouched: on the worker thread, or on a thread of its own
/// when the worker is not there.
fn from_dir<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let Some(worker) = worker() else {
        return std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    unshare_fs()?;
                    rustix::process::chdir(dir)?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
    };
    let (reply, answer) = mpsc::sync_channel(1);
    let dir = dir.to_path_buf();
    let job: Job = Box::new(move || {
        let result = rustix::process::chdir(&dir)
            .map_err(io::Error::from)
            .map(|()| f());
        // A working directory pins its filesystem: leave none behind.
        let _ = rustix::process::chdir("/");
        let _ = reply.send(result);
    });
    worker
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(job)
        .map_err(|_| io::Error::other("the mount worker thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the mount worker thread is gone"))?
}

// The one `unsafe` in plies: rustix marks unshare(2) unsafe because CLONE_FILES would
// split the file descriptor table under other code's feet. CLONE_FS only gives this
// thread its own working directory, root and umask, so no descriptor is affected.
#[allow(unsafe_code)]
fn unshare_fs() -> io::Result<()> {
    // SAFETY: only CLONE_FS is passed; see above.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .map_err(io::Error::from)
}
