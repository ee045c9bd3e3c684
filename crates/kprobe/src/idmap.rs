//! Idmapped mounts.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::OpenTreeFlags;

use crate::scratch::{Scratch, bounded, refused};
use crate::sys::{UsernsChild, mount_setattr_idmap};
use crate::{DEFAULT_TIMEOUT, Outcome};

/// The id the probe's user namespace maps 0 to: a file owned by 0 on disk shows
/// up owned by this id through the idmapped mount.
const MAPPED_BASE: u32 = 100_000;
/// How many ids the probe's user namespace maps.
const MAPPED_COUNT: u32 = 65_536;
/// The file the probe looks at through the idmapped mount.
const PROBE_FILE: &str = "owned-by-root";

/// Whether an idmapped mount of `dir`'s filesystem can be made and shows files
/// with mapped owners.
///
/// In a scratch directory under `dir`, the probe makes a file owned by 0:0,
/// detaches a copy of the mount holding the scratch directory
/// (`open_tree(OPEN_TREE_CLONE)`), makes a user namespace mapping 0 to 100000
/// (a forked child holds it while its maps are written; it is killed and reaped
/// on every path), applies it to the copy (`mount_setattr(2)` with
/// `MOUNT_ATTR_IDMAP`) and checks that the file shows up owned by 100000:100000
/// through the copy. The copy is never attached anywhere and goes away with its
/// file descriptor.
///
/// Unsupported, with the kernel's error, when it refuses: `ENOSYS` before
/// Linux 5.12, `EINVAL` on a filesystem without idmapped mounts (tmpfs before
/// 6.3, for example), `EPERM` without privileges.
pub fn idmapped_mounts(dir: &Path) -> Outcome<()> {
    idmapped_mounts_within(dir, DEFAULT_TIMEOUT)
}

pub(crate) fn idmapped_mounts_within(dir: &Path, timeout: Duration) -> Outcome<()> {
    bounded("idmap", dir, timeout, probe)
}

fn probe(s: &mut Scratch) -> Outcome<()> {
    let file = s.path().join(PROBE_FILE);
    let made = rustix::fs::open(
        &file,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .and_then(|fd| {
        let root_uid = rustix::fs::Uid::from_raw(0);
        let root_gid = rustix::fs::Gid::from_raw(0);
        rustix::fs::fchown(&fd, Some(root_uid), Some(root_gid))
    });
    if let Err(e) = made {
        return Outcome::unsupported(refused("cannot make a file owned by 0:0", e));
    }
    let tree = match rustix::mount::open_tree(
        rustix::fs::CWD,
        s.path(),
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    ) {
        Ok(t) => t,
        Err(Errno::NOSYS) => {
            return Outcome::unsupported(
                "the kernel has no open_tree (Linux 5.2): ENOSYS".to_owned(),
            );
        }
        Err(e) => return Outcome::unsupported(refused("open_tree(OPEN_TREE_CLONE)", e)),
    };
    let userns = match mapped_user_namespace() {
        Ok(fd) => fd,
        Err(reason) => return Outcome::unsupported(reason),
    };
    if let Err(e) = mount_setattr_idmap(tree.as_fd(), userns.as_fd()) {
        let e = Errno::from_io_error(&e).unwrap_or(Errno::IO);
        return Outcome::unsupported(match e {
            Errno::NOSYS => "the kernel has no mount_setattr (Linux 5.12): ENOSYS".to_owned(),
            Errno::INVAL => format!(
                "mount_setattr(MOUNT_ATTR_IDMAP) refused: the filesystem does not take \
                 idmapped mounts on this kernel ({e})"
            ),
            _ => refused("mount_setattr(MOUNT_ATTR_IDMAP)", e),
        });
    }
    let st = match rustix::fs::statat(&tree, PROBE_FILE, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => {
            return Outcome::unsupported(format!(
                "cannot stat {PROBE_FILE} through the idmapped mount: {e}"
            ));
        }
    };
    if (st.st_uid, st.st_gid) != (MAPPED_BASE, MAPPED_BASE) {
        return Outcome::unsupported(format!(
            "the idmapped mount shows a file owned by 0:0 as {}:{}, not {MAPPED_BASE}:{MAPPED_BASE}",
            st.st_uid, st.st_gid
        ));
    }
    Outcome::supported(())
}

/// A user namespace mapping ids 0.. to [`MAPPED_BASE`].., as a file descriptor
/// (`/proc/<pid>/ns/user` of a child that made it; the namespace lives on with
/// the descriptor after the child is gone).
fn mapped_user_namespace() -> Result<OwnedFd, String> {
    let child = UsernsChild::spawn().map_err(|e| format!("cannot make a user namespace: {e}"))?;
    let proc = format!("/proc/{}", child.pid().as_raw_nonzero());
    let map = format!("0 {MAPPED_BASE} {MAPPED_COUNT}\n");
    for file in ["uid_map", "gid_map"] {
        // One write(2): the kernel takes a map only whole.
        std::fs::write(format!("{proc}/{file}"), &map)
            .map_err(|e| format!("cannot write {file} of the probe's user namespace: {e}"))?;
    }
    let ns = rustix::fs::open(
        format!("{proc}/ns/user"),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the probe's user namespace: {e}"))?;
    drop(child);
    Ok(ns)
}
