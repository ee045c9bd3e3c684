//! Project quota: size limits on directory trees, as Docker's overlay2 sets them
//! on read-write layers over XFS mounted with `prjquota`.
//!
//! A [`Control`] is opened for a home directory. It makes a block device node
//! `backingFsBlockDev` in the home for the filesystem's device (what `quotactl(2)`
//! names), checks that project quota is accounted and enforced there, and finds
//! the project ids already given out below the home. [`Control::set_quota`] then
//! gives a directory tree a fresh project id (inherited by everything created in
//! it) and a limit in bytes; [`Control::usage`] reads limit and usage back.
//!
//! The same calls work on any filesystem that has project quota through the
//! generic quota interface (ext4 mounted with `prjquota` on a filesystem with the
//! `project` feature, too); [`xfs_project_quota`] and the drivers ask for XFS, as
//! Docker does.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rustix::fs::{CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::backing::{BackingFs, MAGIC_XFS};
use crate::scratch::bounded;
use crate::sys::{self, FS_QUOTA_PDQ_ACCT, FS_QUOTA_PDQ_ENFD, FS_XFLAG_PROJINHERIT};
use crate::{DEFAULT_TIMEOUT, Error, Outcome};

/// The name of the block device node a [`Control`] makes in its home, as Docker
/// names it.
pub const BACKING_DEVICE_NAME: &str = "backingFsBlockDev";

/// `quotactl(2)` counts blocks of 512 bytes.
const BLOCK: u64 = 512;

/// Project quota on the filesystem holding a home directory.
///
/// Project ids are unique per filesystem within the process: two controls on
/// the same filesystem never hand out the same id.
#[derive(Debug)]
pub struct Control {
    home: PathBuf,
    device: PathBuf,
    device_c: CString,
    fs_dev: u64,
    base_id: u32,
    /// The project ids this control knows, by directory.
    projects: Mutex<HashMap<PathBuf, u32>>,
}

/// A project's limits and usage, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// The project id.
    pub project_id: u32,
    /// The hard limit: writes beyond it fail with `EDQUOT`. 0 means none.
    pub hard_limit: u64,
    /// The soft limit. 0 means none.
    pub soft_limit: u64,
    /// Bytes of disk the project's files take.
    pub used: u64,
    /// Inodes the project's files take.
    pub inodes: u64,
}

/// The next free project id per filesystem (device number), shared by every
/// control in the process.
fn next_ids() -> &'static Mutex<HashMap<u64, u32>> {
    static NEXT: OnceLock<Mutex<HashMap<u64, u32>>> = OnceLock::new();
    NEXT.get_or_init(Default::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn call_err(call: impl Into<String>, path: &Path, source: impl Into<io::Error>) -> Error {
    Error::QuotaCall {
        call: call.into(),
        path: path.to_path_buf(),
        source: source.into(),
    }
}

impl Control {
    /// Opens project quota for `home`, an existing directory.
    ///
    /// Makes (or remakes) the block device node [`BACKING_DEVICE_NAME`] in `home`
    /// for the device of `home`'s filesystem, asks the kernel whether project
    /// quota is accounted and enforced there (`quotactl(Q_XGETQSTAT)`), reads the
    /// project id of `home` itself (new projects get larger ids, so ids an
    /// administrator gave the home and below stay theirs), and scans the
    /// directories of `home` and, for those without a project of their own, their
    /// subdirectories for ids already given out.
    ///
    /// Unlike Docker, opening sets no limit: a test limit on the first free id
    /// could clear the limit of a layer that already has that id.
    ///
    /// # Errors
    /// [`Error::QuotaUnsupported`] when the kernel or filesystem refuses (no
    /// permission to make the device node, quota off or not enforced, no project
    /// ids on this filesystem); the device node is removed again then.
    /// [`Error::QuotaCall`] when `home` cannot be read.
    pub fn open(home: &Path) -> Result<Control, Error> {
        let st = rustix::fs::stat(home).map_err(|e| call_err("stat", home, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(call_err("stat", home, Errno::NOTDIR));
        }
        let fs_dev = st.st_dev;
        let device = home.join(BACKING_DEVICE_NAME);
        let unsupported = |reason: String| Error::QuotaUnsupported {
            path: home.to_path_buf(),
            reason,
        };
        // Made anew each time: the home may have moved to another filesystem.
        match rustix::fs::unlink(&device) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(call_err("unlink", &device, e)),
        }
        match rustix::fs::mknodat(
            CWD,
            &device,
            FileType::BlockDevice,
            Mode::from_raw_mode(0o600),
            fs_dev,
        ) {
            Ok(()) => {}
            Err(e @ (Errno::PERM | Errno::ACCESS | Errno::NOSYS | Errno::ROFS)) => {
                return Err(unsupported(format!(
                    "cannot make the block device node {}: {e}",
                    device.display()
                )));
            }
            Err(e) => return Err(call_err("mknod", &device, e)),
        }
        let device_c = CString::new(device.as_os_str().as_bytes())
            .map_err(|_| call_err("mknod", &device, Errno::INVAL))?;
        let opened = Self::check(home, &device, &device_c, fs_dev);
        if opened.is_err() {
            let _ = rustix::fs::unlink(&device);
        }
        let (base_id, projects) = opened?;
        Ok(Control {
            home: home.to_path_buf(),
            device,
            device_c,
            fs_dev,
            base_id,
            projects: Mutex::new(projects),
        })
    }

    /// The checks of [`Control::open`] once the device node exists: the home's
    /// project id and the projects found below it.
    fn check(
        home: &Path,
        device: &Path,
        device_c: &CString,
        fs_dev: u64,
    ) -> Result<(u32, HashMap<PathBuf, u32>), Error> {
        let unsupported = |reason: String| Error::QuotaUnsupported {
            path: home.to_path_buf(),
            reason,
        };
        let stat = sys::quota_stat(device_c).map_err(|e| {
            // XFS answers ENOSYS on a mount without quota options, as a kernel
            // without quota support for the filesystem does.
            let why = match e.raw_os_error().map(Errno::from_raw_os_error) {
                Some(Errno::NOSYS) => {
                    " (quota is off for this filesystem: mount it with prjquota, on a \
                     kernel with quota support for it)"
                }
                _ => "",
            };
            unsupported(format!(
                "quotactl(Q_XGETQSTAT) on {} refused: {e}{why}",
                device.display()
            ))
        })?;
        let on = |flag: u16| {
            if stat.qs_flags & flag != 0 {
                "on"
            } else {
                "off"
            }
        };
        if stat.qs_flags & FS_QUOTA_PDQ_ACCT == 0 || stat.qs_flags & FS_QUOTA_PDQ_ENFD == 0 {
            return Err(unsupported(format!(
                "project quota is not enforced on its filesystem (accounting {}, \
                 enforcement {}; mount it with prjquota)",
                on(FS_QUOTA_PDQ_ACCT),
                on(FS_QUOTA_PDQ_ENFD)
            )));
        }
        let base_id = match project_id(home) {
            Ok(id) => id,
            Err(Error::QuotaCall { source, .. })
                if matches!(
                    source.raw_os_error().map(Errno::from_raw_os_error),
                    Some(Errno::NOTTY | Errno::OPNOTSUPP | Errno::INVAL)
                ) =>
            {
                return Err(unsupported(format!(
                    "the filesystem has no project ids (FS_IOC_FSGETXATTR: {source})"
                )));
            }
            Err(e) => return Err(e),
        };
        let projects = scan_projects(home, base_id, fs_dev)?;
        let highest = projects.values().copied().max().unwrap_or(0);
        let mut next = lock(next_ids());
        let entry = next.entry(fs_dev).or_insert(1);
        *entry = (*entry)
            .max(base_id.saturating_add(1))
            .max(highest.saturating_add(1));
        Ok((base_id, projects))
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The block device node in the home that `quotactl(2)` is given.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The project id of the home directory itself (0 unless an administrator
    /// set one); every id this control gives out is larger.
    pub fn base_project_id(&self) -> u32 {
        self.base_id
    }

    /// The project id [`Control::set_quota`] gives the next new directory.
    pub fn next_project_id(&self) -> u32 {
        lock(next_ids()).get(&self.fs_dev).copied().unwrap_or(1)
    }

    /// The project id this control gave `dir`, from its own records or, for a
    /// directory below the home that has a project of its own, from the
    /// directory; `None` when `dir` has none (it shares the home's).
    ///
    /// # Errors
    /// [`Error::QuotaCall`] when `dir` cannot be opened or asked.
    pub fn project_of(&self, dir: &Path) -> Result<Option<u32>, Error> {
        if let Some(id) = lock(&self.projects).get(dir) {
            return Ok(Some(*id));
        }
        let id = project_id(dir)?;
        Ok((id != 0 && id != self.base_id).then_some(id))
    }

    /// Limits the tree at `dir` to `bytes` bytes (rounded up to 512-byte blocks,
    /// and by the filesystem to its own block size; 0 removes the limit) and
    /// returns its project id.
    ///
    /// A directory without a project of its own gets the next free id first: on
    /// `dir`, every directory and regular file below it (not following symlinks,
    /// not crossing into other filesystems), with directories marked so that what
    /// is created in them inherits the id. Call it on a new, nearly empty tree —
    /// for a layer, before its `diff` and `work` fill up.
    ///
    /// # Errors
    /// [`Error::QuotaCall`] for a failed `FS_IOC_FSSETXATTR` or `quotactl`,
    /// [`Error::ProjectIdsExhausted`] when no id is left.
    pub fn set_quota(&self, dir: &Path, bytes: u64) -> Result<u32, Error> {
        let id = match self.project_of(dir)? {
            Some(id) => id,
            None => self.assign(dir)?,
        };
        let blocks = bytes.div_ceil(BLOCK);
        sys::set_project_block_limit(&self.device_c, id, blocks).map_err(|e| {
            call_err(
                format!("quotactl(Q_XSETQLIM) for project {id}"),
                &self.device,
                e,
            )
        })?;
        Ok(id)
    }

    /// Gives `dir`'s tree the next free project id.
    fn assign(&self, dir: &Path) -> Result<u32, Error> {
        let mut next = lock(next_ids());
        let slot = next.entry(self.fs_dev).or_insert(1);
        let id = (*slot).max(self.base_id.saturating_add(1));
        if id == u32::MAX {
            return Err(Error::ProjectIdsExhausted {
                path: self.home.clone(),
            });
        }
        set_tree_project_id(dir, id, self.fs_dev)?;
        *slot = id + 1;
        drop(next);
        lock(&self.projects).insert(dir.to_path_buf(), id);
        Ok(id)
    }

    /// The limits and usage of `dir`'s project.
    ///
    /// # Errors
    /// [`Error::QuotaCall`] when `dir` cannot be asked for its project id or
    /// `quotactl(Q_XGETQUOTA)` fails.
    pub fn usage(&self, dir: &Path) -> Result<Usage, Error> {
        let id = project_id(dir)?;
        self.project_usage(id)
    }

    /// The limits and usage of project `id` (all zero for a project the
    /// filesystem has no record of).
    ///
    /// # Errors
    /// [`Error::QuotaCall`] when `quotactl(Q_XGETQUOTA)` fails.
    pub fn project_usage(&self, id: u32) -> Result<Usage, Error> {
        let q = match sys::project_quota(&self.device_c, id) {
            Ok(q) => q,
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                return Ok(Usage {
                    project_id: id,
                    hard_limit: 0,
                    soft_limit: 0,
                    used: 0,
                    inodes: 0,
                });
            }
            Err(e) => {
                return Err(call_err(
                    format!("quotactl(Q_XGETQUOTA) for project {id}"),
                    &self.device,
                    e,
                ));
            }
        };
        Ok(Usage {
            project_id: id,
            hard_limit: q.d_blk_hardlimit.saturating_mul(BLOCK),
            soft_limit: q.d_blk_softlimit.saturating_mul(BLOCK),
            used: q.d_bcount.saturating_mul(BLOCK),
            inodes: q.d_icount,
        })
    }

    /// Removes project `id`'s limits and forgets the directories this control
    /// recorded for it: for a layer being removed, with the id
    /// [`Control::project_of`] gave before.
    ///
    /// # Errors
    /// [`Error::QuotaCall`] when `quotactl(Q_XSETQLIM)` fails.
    pub fn release_project(&self, id: u32) -> Result<(), Error> {
        lock(&self.projects).retain(|_, v| *v != id);
        sys::set_project_block_limit(&self.device_c, id, 0).map_err(|e| {
            call_err(
                format!("quotactl(Q_XSETQLIM) for project {id}"),
                &self.device,
                e,
            )
        })
    }
}

/// Opens `path` for the fsxattr ioctls without following a symlink.
fn open_nofollow(path: &Path, dir: bool) -> Result<OwnedFd, Error> {
    let mut flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    rustix::fs::open(path, flags, Mode::empty()).map_err(|e| call_err("open", path, e))
}

/// The project id of the file or directory at `path` (`FS_IOC_FSGETXATTR`).
///
/// # Errors
/// [`Error::QuotaCall`] when `path` cannot be opened or the filesystem has no
/// project ids (`ENOTTY`).
pub fn project_id(path: &Path) -> Result<u32, Error> {
    let fd = open_nofollow(path, false)?;
    sys::fs_get_xattr(fd.as_fd())
        .map(|x| x.projid)
        .map_err(|e| call_err("FS_IOC_FSGETXATTR", path, e))
}

/// Sets the project id of the file or directory at `path`; a directory is also
/// marked so that what is created in it inherits the id (`FS_XFLAG_PROJINHERIT`).
///
/// # Errors
/// [`Error::QuotaCall`] when `path` cannot be opened or the filesystem refuses.
pub fn set_project_id(path: &Path, id: u32) -> Result<(), Error> {
    let fd = open_nofollow(path, false)?;
    let st = rustix::fs::fstat(&fd).map_err(|e| call_err("fstat", path, e))?;
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    set_fd_project_id(&fd, path, id, is_dir)
}

fn set_fd_project_id(fd: &OwnedFd, path: &Path, id: u32, is_dir: bool) -> Result<(), Error> {
    let mut attr =
        sys::fs_get_xattr(fd.as_fd()).map_err(|e| call_err("FS_IOC_FSGETXATTR", path, e))?;
    attr.projid = id;
    if is_dir {
        attr.xflags |= FS_XFLAG_PROJINHERIT;
    }
    sys::fs_set_xattr(fd.as_fd(), attr).map_err(|e| call_err("FS_IOC_FSSETXATTR", path, e))
}

/// Sets project `id` on `root` and on every directory and regular file below it
/// on the filesystem `fs_dev`, without recursion (a deep tree cannot exhaust
/// the stack).
fn set_tree_project_id(root: &Path, id: u32, fs_dev: u64) -> Result<(), Error> {
    let mut pending = vec![(root.to_path_buf(), true)];
    while let Some((path, is_dir)) = pending.pop() {
        let fd = match open_nofollow(&path, is_dir) {
            Ok(fd) => fd,
            // Gone since listed: nothing to charge.
            Err(Error::QuotaCall { ref source, .. })
                if path != root && source.raw_os_error() == Some(Errno::NOENT.raw_os_error()) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| call_err("fstat", &path, e))?;
        if st.st_dev != fs_dev {
            continue;
        }
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::Directory && kind != FileType::RegularFile {
            continue;
        }
        set_fd_project_id(&fd, &path, id, kind == FileType::Directory)?;
        if kind == FileType::Directory {
            let entries = std::fs::read_dir(&path).map_err(|e| call_err("read_dir", &path, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| call_err("read_dir", &path, e))?;
                let Ok(t) = entry.file_type() else { continue };
                if t.is_dir() || t.is_file() {
                    pending.push((entry.path(), t.is_dir()));
                }
            }
        }
    }
    Ok(())
}

/// The project ids given out below `home`: each directory of `home` and, for a
/// directory without a project of its own (id 0 or the home's), its
/// subdirectories. Directories on other filesystems (mounts) are skipped.
fn scan_projects(home: &Path, base_id: u32, fs_dev: u64) -> Result<HashMap<PathBuf, u32>, Error> {
    let mut found = HashMap::new();
    let mut check = |path: PathBuf| -> Result<Option<u32>, Error> {
        let fd = match open_nofollow(&path, true) {
            Ok(fd) => fd,
            Err(Error::QuotaCall { ref source, .. })
                if matches!(
                    source.raw_os_error().map(Errno::from_raw_os_error),
                    Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| call_err("fstat", &path, e))?;
        if st.st_dev != fs_dev {
            return Ok(None);
        }
        let id = sys::fs_get_xattr(fd.as_fd())
            .map_err(|e| call_err("FS_IOC_FSGETXATTR", &path, e))?
            .projid;
        if id != 0 && id != base_id {
            found.insert(path, id);
        }
        Ok(Some(id))
    };
    for dir in subdirectories(home)? {
        match check(dir.clone())? {
            Some(id) if id == 0 || id == base_id => {
                for sub in subdirectories(&dir)? {
                    check(sub)?;
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The directories directly in `dir` (symlinks not followed); a `dir` gone
/// meanwhile has none.
fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(call_err("read_dir", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| call_err("read_dir", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Project quota found usable on a filesystem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectQuota {
    /// The filesystem's device, `major:minor`.
    pub device: String,
    /// The project id of the probed directory; new projects get larger ids.
    pub base_project_id: u32,
}

impl std::fmt::Display for ProjectQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "enforced on device {}", self.device)
    }
}

/// Whether project quota can limit directories under `dir`, an XFS directory.
///
/// Tried for real, in a scratch directory under `dir`: a [`Control`] is opened
/// there (block device node, `quotactl(Q_XGETQSTAT)` reporting project quota
/// accounted and enforced, project ids readable) and a subdirectory is given
/// its own project id back with inheritance set (`FS_IOC_FSSETXATTR` allowed).
/// No limit is set: every limit belongs to some project id that may be in use.
/// Unsupported on any other backing filesystem, as in Docker.
pub fn xfs_project_quota(dir: &Path, backing: &BackingFs) -> Outcome<ProjectQuota> {
    xfs_project_quota_within(dir, backing, DEFAULT_TIMEOUT)
}

pub(crate) fn xfs_project_quota_within(
    dir: &Path,
    backing: &BackingFs,
    timeout: Duration,
) -> Outcome<ProjectQuota> {
    if backing.magic != MAGIC_XFS {
        return Outcome::unsupported(format!("backing filesystem is {backing}, not xfs"));
    }
    bounded("quota", dir, timeout, |s| {
        let control = match Control::open(s.path()) {
            Ok(c) => c,
            Err(e) => return Outcome::unsupported(e.to_string()),
        };
        if let Err(reason) = s.mkdirs(&["project"]) {
            return Outcome::unsupported(reason);
        }
        let sub = s.path().join("project");
        let same_id = project_id(&sub).and_then(|id| set_project_id(&sub, id));
        if let Err(e) = same_id {
            return Outcome::unsupported(e.to_string());
        }
        let dev = control.fs_dev;
        Outcome::supported(ProjectQuota {
            device: format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev)),
            base_project_id: control.base_project_id(),
        })
    })
}
