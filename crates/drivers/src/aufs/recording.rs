//! [`RecordingMounter`]: a stand-in for aufs where no kernel has it, recording
//! every call and building the union its branches describe.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use plies_mountopts::AufsCall;
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;

use super::{DEFAULT_BRANCH_MAX, Mounter};
use crate::copy::{Copier, list, open_dir, open_dir_at};

/// One call a [`RecordingMounter`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A mount at `target` made of `calls`.
    Mount {
        /// The mount point.
        target: PathBuf,
        /// The mount and append calls, in order.
        calls: Vec<AufsCall>,
    },
    /// An unmount of `target`.
    Unmount {
        /// The mount point.
        target: PathBuf,
    },
}

/// Records every call, and stands in for aufs: a "mount" fills the target with a
/// copy of the union its branches describe (aufs whiteouts and opaque markers
/// applied, private `.wh..wh.*` entries left out), which the "unmount" empties.
/// The copy is a snapshot for reading; what is written into it is not carried to
/// the writable branch. It stands in for the kernel's answers too: no `dirperm1`
/// and [`DEFAULT_BRANCH_MAX`] branches unless set otherwise, whatever the running
/// kernel has.
#[derive(Debug)]
pub struct RecordingMounter {
    calls: Mutex<Vec<Recorded>>,
    mounted: Mutex<Vec<PathBuf>>,
    fail_next: Mutex<Option<Errno>>,
    dirperm1: bool,
    branch_max: usize,
}

impl Default for RecordingMounter {
    fn default() -> Self {
        Self {
            calls: Mutex::default(),
            mounted: Mutex::default(),
            fail_next: Mutex::default(),
            dirperm1: false,
            branch_max: DEFAULT_BRANCH_MAX,
        }
    }
}

impl RecordingMounter {
    /// A mounter with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// This mounter, answering that mounts take `dirperm1` (or not).
    #[must_use]
    pub fn with_dirperm1(mut self, dirperm1: bool) -> Self {
        self.dirperm1 = dirperm1;
        self
    }

    /// This mounter, answering that a mount stacks at most `max` branches.
    #[must_use]
    pub fn with_branch_max(mut self, max: usize) -> Self {
        self.branch_max = max;
        self
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Recorded> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Targets currently "mounted".
    pub fn mounted(&self) -> Vec<PathBuf> {
        self.mounted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes the next mount fail with `errno` (recorded all the same).
    pub fn fail_next_mount(&self, errno: i32) {
        *self
            .fail_next
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Errno::from_raw_os_error(errno));
    }

    fn materialize(calls: &[AufsCall], target: &Path) -> std::io::Result<()> {
        let (rw, ro) = plies_mountopts::aufs::decode_branches(calls)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let dst = open_dir(target).map_err(std::io::Error::other)?;
        let mut copier = Copier::new(target);
        for branch in ro.iter().rev().chain(std::iter::once(&rw)) {
            let src = open_dir(branch).map_err(std::io::Error::other)?;
            merge_branch(&mut copier, src.as_fd(), dst.as_fd(), dst.as_fd(), b"")?;
        }
        Ok(())
    }
}

/// Lays the aufs branch `src` over the union built so far in `dst`.
fn merge_branch(
    copier: &mut Copier,
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    dst_root: BorrowedFd<'_>,
    rel: &[u8],
) -> std::io::Result<()> {
    let names = list(src)?;
    if names.iter().any(|n| n.as_c_str() == c".wh..wh..opq") {
        for old in list(dst)? {
            remove_at(dst, &old)?;
        }
    }
    for name in &names {
        let bytes = name.to_bytes();
        if bytes.starts_with(b".wh..wh.") {
            continue;
        }
        let mut child_rel = rel.to_vec();
        if !child_rel.is_empty() {
            child_rel.push(b'/');
        }
        child_rel.extend_from_slice(bytes);
        if let Some(target) = bytes.strip_prefix(b".wh.") {
            let target = std::ffi::CString::new(target).map_err(std::io::Error::other)?;
            remove_at(dst, &target)?;
            continue;
        }
        let st = rustix::fs::statat(src, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        let existing = rustix::fs::statat(dst, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok();
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let keep =
                existing.is_some_and(|e| FileType::from_raw_mode(e.st_mode) == FileType::Directory);
            if !keep {
                remove_at(dst, name)?;
                rustix::fs::mkdirat(dst, name.as_c_str(), Mode::from_raw_mode(0o700))?;
            }
            let s = open_dir_at(src, name)?;
            let d = open_dir_at(dst, name)?;
            merge_branch(copier, s.as_fd(), d.as_fd(), dst_root, &child_rel)?;
            copier
                .copy_metadata_of(src, name, dst, name, &child_rel)
                .map_err(std::io::Error::other)?;
        } else {
            remove_at(dst, name)?;
            copier
                .copy_entry(src, name, dst, name, dst_root, &child_rel)
                .map_err(std::io::Error::other)?;
        }
    }
    Ok(())
}

/// Removes `name` in `dir` with all it holds; nothing there is fine.
fn remove_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<()> {
    let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return Ok(());
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let d = open_dir_at(dir, name)?;
        for child in list(d.as_fd())? {
            remove_at(d.as_fd(), &child)?;
        }
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    }
    Ok(())
}

impl Mounter for RecordingMounter {
    fn mount(&self, calls: &[AufsCall], target: &Path) -> plies_mountopts::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Recorded::Mount {
                target: target.to_path_buf(),
                calls: calls.to_vec(),
            });
        let fail = |source: std::io::Error| plies_mountopts::Error::Mount {
            kind: plies_mountopts::PlanKind::Aufs,
            target: target.to_path_buf(),
            step: "mount".into(),
            kernel_log: Vec::new(),
            source,
        };
        if let Some(errno) = self
            .fail_next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(fail(errno.into()));
        }
        let mut mounted = self.mounted.lock().unwrap_or_else(PoisonError::into_inner);
        if mounted.iter().any(|m| m == target) {
            return Err(fail(Errno::BUSY.into()));
        }
        if let Err(e) = Self::materialize(calls, target) {
            let _ = empty_dir(target);
            return Err(fail(e));
        }
        mounted.push(target.to_path_buf());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Recorded::Unmount {
                target: target.to_path_buf(),
            });
        let mut mounted = self.mounted.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(at) = mounted.iter().position(|m| m == target) else {
            return Err(Errno::INVAL.into());
        };
        mounted.remove(at);
        empty_dir(target)
    }

    fn dirperm1(&self, _probe_dir: &Path) -> bool {
        self.dirperm1
    }

    fn branch_max(&self) -> usize {
        self.branch_max
    }
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    let fd = open_dir(dir).map_err(std::io::Error::other)?;
    for name in list(fd.as_fd())? {
        remove_at(fd.as_fd(), &name)?;
    }
    Ok(())
}
