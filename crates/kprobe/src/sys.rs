//! The system calls rustix 1.1 has no safe wrapper for: `mount_setattr(2)`,
//! `quotactl(2)`, the `FS_IOC_FS{GET,SET}XATTR` ioctls, and a forked child that
//! holds a new user namespace. This is the only module of the crate with `unsafe`
//! code; everything it exports is safe and returns `io::Result`.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::ioctl::{Getter, Opcode, Setter, opcode};
use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};

/// `MOUNT_ATTR_IDMAP` of `<linux/mount.h>`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of `<linux/mount.h>` (`MOUNT_ATTR_SIZE_VER0`, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH, {attr_set: MOUNT_ATTR_IDMAP, userns_fd})`:
/// makes the detached mount `tree` (from `open_tree(OPEN_TREE_CLONE)`) idmapped
/// with the id mapping of the user namespace `userns`.
pub(crate) fn mount_setattr_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: every pointer passed lives across the call: the empty path is a
    // static NUL-terminated string and `attr` a local of the kernel's
    // `struct mount_attr` layout, passed with its exact size; the kernel only reads
    // both. The fds are borrowed, so they stay open for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A child process in a user namespace of its own, made for its namespace file:
/// killed and reaped on drop, on every path.
pub(crate) struct UsernsChild {
    pid: Pid,
}

impl UsernsChild {
    /// Forks a child that calls `unshare(CLONE_NEWUSER)` and then waits to be
    /// killed. Returns once the child is in its namespace (whose `uid_map` and
    /// `gid_map` are still empty), or the child's `unshare` error.
    pub(crate) fn spawn() -> io::Result<UsernsChild> {
        let (ready_read, ready_write) = pipe_with(PipeFlags::CLOEXEC)?;
        let parent = rustix::process::getpid();
        let write_fd = ready_write.as_raw_fd();
        let read_fd = ready_read.as_raw_fd();
        // SAFETY: after `fork` the child runs `userns_child`, which makes only raw,
        // async-signal-safe system calls on plain integers (no allocation, no lock,
        // no unwinding) and ends in `_exit`, so the state other threads held at the
        // fork cannot be observed. The parent gets an ordinary pid.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            userns_child(read_fd, write_fd, parent.as_raw_nonzero().get());
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(ready_write);
        let child = UsernsChild {
            pid: Pid::from_raw(pid).ok_or_else(|| io::Error::other("fork returned pid 0"))?,
        };
        // The child writes its unshare errno (0 on success) as 4 bytes.
        let mut answer = [0u8; 4];
        let mut got = 0;
        while got < answer.len() {
            match rustix::io::read(&ready_read, &mut answer[got..]) {
                Ok(0) => {
                    return Err(io::Error::other(
                        "the user namespace child exited before answering",
                    ));
                }
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match i32::from_ne_bytes(answer) {
            0 => Ok(child),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    /// The child's pid, for `/proc/<pid>/{uid_map,gid_map,ns/user}`.
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }
}

impl Drop for UsernsChild {
    fn drop(&mut self) {
        // SIGKILL needs no cooperation from the child; then reap it.
        if let Err(e) = kill_process(self.pid, Signal::KILL) {
            tracing::warn!("cannot kill user namespace child {}: {e}", self.pid);
        }
        loop {
            match waitpid(Some(self.pid), WaitOptions::empty()) {
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    tracing::warn!("cannot reap user namespace child {}: {e}", self.pid);
                    break;
                }
                Ok(_) => break,
            }
        }
    }
}

/// The forked child's whole life: raw system calls only, then `_exit`.
fn userns_child(read_fd: i32, write_fd: i32, parent: i32) -> ! {
    // SAFETY: each call is an async-signal-safe libc wrapper of one system call,
    // given integers and a pointer to a local buffer of the length passed; nothing
    // here allocates, locks or returns to the caller's frames.
    unsafe {
        libc::close(read_fd);
        // Drop every other descriptor inherited from the process (another
        // probe's files, which would keep its filesystem busy while we live).
        // Best effort: close_range(2) is Linux 5.9.
        let write_u = write_fd as libc::c_uint;
        if write_u > 3 {
            libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, write_u - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, write_u + 1, libc::c_uint::MAX, 0);
        // Die with the thread that forked us, should it go away first.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        let errno = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
            0
        } else {
            *libc::__errno_location()
        };
        let bytes = errno.to_ne_bytes();
        libc::write(write_fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(write_fd);
        loop {
            libc::pause();
        }
    }
}

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FsXattr {
    /// `FS_XFLAG_*` flags.
    pub(crate) xflags: u32,
    extsize: u32,
    nextents: u32,
    /// The project id.
    pub(crate) projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `FS_XFLAG_PROJINHERIT`: new files and directories take the directory's project id.
pub(crate) const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

const FS_IOC_FSGETXATTR: Opcode = opcode::read::<FsXattr>(b'X', 31);
const FS_IOC_FSSETXATTR: Opcode = opcode::write::<FsXattr>(b'X', 32);

/// `ioctl(fd, FS_IOC_FSGETXATTR)`.
pub(crate) fn fs_get_xattr(fd: BorrowedFd<'_>) -> io::Result<FsXattr> {
    // SAFETY: FS_IOC_FSGETXATTR is `_IOR('X', 31, struct fsxattr)` and the kernel
    // writes exactly one `struct fsxattr`, which `FsXattr` mirrors field for field.
    let getter = unsafe { Getter::<FS_IOC_FSGETXATTR, FsXattr>::new() };
    // SAFETY: the getter above was built for this opcode and type; `fd` is borrowed.
    Ok(unsafe { rustix::ioctl::ioctl(fd, getter) }?)
}

/// `ioctl(fd, FS_IOC_FSSETXATTR, attr)`.
pub(crate) fn fs_set_xattr(fd: BorrowedFd<'_>, attr: FsXattr) -> io::Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR is `_IOW('X', 32, struct fsxattr)`; the kernel
    // reads one `struct fsxattr`, which `FsXattr` mirrors field for field.
    let setter = unsafe { Setter::<FS_IOC_FSSETXATTR, FsXattr>::new(attr) };
    // SAFETY: the setter above was built for this opcode and type; `fd` is borrowed.
    Ok(unsafe { rustix::ioctl::ioctl(fd, setter) }?)
}

/// `PRJQUOTA` of `<linux/quota.h>`.
const PRJQUOTA: i32 = 2;
/// `XQM_CMD(n)` of `<linux/dqblk_xfs.h>`, combined with a quota type by `QCMD`.
const fn xqm_prj_cmd(n: i32) -> i32 {
    ((((b'X' as i32) << 8) + n) << 8) | PRJQUOTA
}
const Q_XGETQUOTA: i32 = xqm_prj_cmd(3);
const Q_XSETQLIM: i32 = xqm_prj_cmd(4);
const Q_XGETQSTAT: i32 = xqm_prj_cmd(5);

/// `FS_DQUOT_VERSION`.
const FS_DQUOT_VERSION: i8 = 1;
/// `FS_PROJ_QUOTA`, the `d_flags` of a project's quota.
const FS_PROJ_QUOTA: i8 = 2;
/// `FS_DQ_BSOFT | FS_DQ_BHARD`: the block limits are being set.
const FS_DQ_BLIMITS: u16 = (1 << 2) | (1 << 3);
/// `FS_QUOTA_PDQ_ACCT`: project quota accounting is on.
pub(crate) const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
/// `FS_QUOTA_PDQ_ENFD`: project quota limits are enforced.
pub(crate) const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;

/// `struct fs_disk_quota` of `<linux/dqblk_xfs.h>` (112 bytes). Block counts
/// are in 512-byte basic blocks.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FsDiskQuota {
    d_version: i8,
    d_flags: i8,
    d_fieldmask: u16,
    d_id: u32,
    pub(crate) d_blk_hardlimit: u64,
    pub(crate) d_blk_softlimit: u64,
    d_ino_hardlimit: u64,
    d_ino_softlimit: u64,
    pub(crate) d_bcount: u64,
    pub(crate) d_icount: u64,
    d_itimer: i32,
    d_btimer: i32,
    d_iwarns: u16,
    d_bwarns: u16,
    d_itimer_hi: i8,
    d_btimer_hi: i8,
    d_rtbtimer_hi: i8,
    d_padding2: i8,
    d_rtb_hardlimit: u64,
    d_rtb_softlimit: u64,
    d_rtbcount: u64,
    d_rtbtimer: i32,
    d_rtbwarns: u16,
    d_padding3: i16,
    d_padding4: [u8; 8],
}

/// `struct fs_qfilestat` of `<linux/dqblk_xfs.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FsQfilestat {
    qfs_ino: u64,
    qfs_nblks: u64,
    qfs_nextents: u32,
}

/// `struct fs_quota_stat` of `<linux/dqblk_xfs.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FsQuotaStat {
    qs_version: i8,
    /// `FS_QUOTA_*` flags.
    pub(crate) qs_flags: u16,
    qs_pad: i8,
    qs_uquota: FsQfilestat,
    qs_gquota: FsQfilestat,
    qs_incoredqs: u32,
    qs_btimelimit: i32,
    qs_itimelimit: i32,
    qs_rtbtimelimit: i32,
    qs_bwarnlimit: u16,
    qs_iwarnlimit: u16,
}

// The kernel's sizes of these structures, checked at build time.
const _: () = assert!(size_of::<FsDiskQuota>() == 112);
const _: () = assert!(size_of::<FsQuotaStat>() == 80);
const _: () = assert!(size_of::<FsXattr>() == 28);
const _: () = assert!(size_of::<MountAttr>() == 32);

/// `quotactl(cmd, device, id, data)` with `data` pointing at a `T`.
///
/// # Safety
/// `cmd` must be a command that reads or writes at most one `T` at `data`.
unsafe fn quotactl<T>(cmd: i32, device: &CStr, id: u32, data: &mut T) -> io::Result<()> {
    // SAFETY: `device` is NUL-terminated and outlives the call; `data` is a live,
    // exclusive `T`, which the caller promises is what `cmd` reads or writes.
    // The id is passed as the kernel's `qid_t` bit pattern.
    let ret = unsafe {
        libc::quotactl(
            cmd,
            device.as_ptr(),
            id as i32,
            (data as *mut T).cast::<libc::c_char>(),
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `quotactl(Q_XGETQSTAT, PRJQUOTA)`: the quota state of the filesystem on `device`.
pub(crate) fn quota_stat(device: &CStr) -> io::Result<FsQuotaStat> {
    let mut stat = FsQuotaStat::default();
    // SAFETY: Q_XGETQSTAT writes one `struct fs_quota_stat`.
    unsafe { quotactl(Q_XGETQSTAT, device, 0, &mut stat) }?;
    Ok(stat)
}

/// `quotactl(Q_XGETQUOTA, PRJQUOTA, id)`: limits and usage of project `id`.
pub(crate) fn project_quota(device: &CStr, id: u32) -> io::Result<FsDiskQuota> {
    let mut quota = FsDiskQuota::default();
    // SAFETY: Q_XGETQUOTA writes one `struct fs_disk_quota`.
    unsafe { quotactl(Q_XGETQUOTA, device, id, &mut quota) }?;
    Ok(quota)
}

/// `quotactl(Q_XSETQLIM, PRJQUOTA, id)`: sets project `id`'s soft and hard block
/// limits to `blocks` 512-byte blocks (0: no limit).
pub(crate) fn set_project_block_limit(device: &CStr, id: u32, blocks: u64) -> io::Result<()> {
    let mut quota = FsDiskQuota {
        d_version: FS_DQUOT_VERSION,
        d_flags: FS_PROJ_QUOTA,
        d_fieldmask: FS_DQ_BLIMITS,
        d_id: id,
        d_blk_hardlimit: blocks,
        d_blk_softlimit: blocks,
        ..FsDiskQuota::default()
    };
    // SAFETY: Q_XSETQLIM reads one `struct fs_disk_quota`.
    unsafe { quotactl(Q_XSETQLIM, device, id, &mut quota) }
}
