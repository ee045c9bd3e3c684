//! The overlayfs format on disk: whiteouts as 0/0 character devices, opaque
//! directories as an xattr, and the xattrs that make a layer overlay-only.

use std::ffi::OsStr;

use rustix::fd::AsFd;
use rustix::fs::{AtFlags, FileType, Mode, Stat, XattrFlags};
use rustix::io::Errno;

use crate::name::check_entry_name;
use crate::{Error, XattrNamespace};

/// Creates an overlay whiteout named `name` in the directory `dir`: a character
/// device with device number 0/0 and no permission bits, as overlayfs makes them.
///
/// # Errors
///
/// [`Error::InvalidName`] if `name` is not an entry name; [`Error::MknodRefused`]
/// when the kernel refuses `mknod` (EPERM or EACCES, no `CAP_MKNOD`): the caller
/// should fall back to the aufs format; [`Error::Io`] for any other failure, such
/// as an existing entry of that name (EEXIST).
pub fn create_overlay_whiteout<Fd: AsFd>(dir: Fd, name: &OsStr) -> Result<(), Error> {
    mknod_whiteout(dir.as_fd(), name, Mode::empty())
}

pub(crate) fn mknod_whiteout(
    dir: rustix::fd::BorrowedFd<'_>,
    name: &OsStr,
    mode: Mode,
) -> Result<(), Error> {
    check_entry_name(name)?;
    match rustix::fs::mknodat(
        dir,
        name,
        FileType::CharacterDevice,
        mode,
        rustix::fs::makedev(0, 0),
    ) {
        Ok(()) => Ok(()),
        Err(e @ (Errno::PERM | Errno::ACCESS)) => Err(Error::MknodRefused {
            name: name.to_owned(),
            source: e.into(),
        }),
        Err(e) => Err(Error::io("mknodat", name, e)),
    }
}

/// Whether `stat` (taken without following symlinks) is an overlay whiteout: a
/// character device with device number 0/0.
pub fn is_overlay_whiteout(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice && stat.st_rdev == 0
}

/// Whether the entry `name` of `dir` is an overlay whiteout (not following a
/// symlink). A missing entry is not one.
///
/// # Errors
///
/// [`Error::InvalidName`] if `name` is not an entry name; [`Error::Io`] if
/// `fstatat` fails for another reason than a missing entry.
pub fn is_overlay_whiteout_at<Fd: AsFd>(dir: Fd, name: &OsStr) -> Result<bool, Error> {
    check_entry_name(name)?;
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(is_overlay_whiteout(&stat)),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::io("fstatat", name, e)),
    }
}

/// Marks the open directory `dir` opaque: sets `<ns>.overlay.opaque` to `y`.
///
/// # Errors
///
/// [`Error::Io`] if `fsetxattr` fails: `trusted.` needs `CAP_SYS_ADMIN` (EPERM),
/// and some filesystems have no xattrs (EOPNOTSUPP).
pub fn set_opaque<Fd: AsFd>(dir: Fd, ns: XattrNamespace) -> Result<(), Error> {
    rustix::fs::fsetxattr(dir, ns.opaque_key(), b"y", XattrFlags::empty())
        .map_err(|e| Error::io("fsetxattr", ns.opaque_key(), e))
}

/// Removes the opaque mark of the open directory `dir`; a directory that has none
/// is left as it is.
///
/// # Errors
///
/// [`Error::Io`] if `fremovexattr` fails for another reason than a missing xattr.
pub fn clear_opaque<Fd: AsFd>(dir: Fd, ns: XattrNamespace) -> Result<(), Error> {
    match rustix::fs::fremovexattr(dir, ns.opaque_key()) {
        Ok(()) | Err(Errno::NODATA) => Ok(()),
        Err(e) => Err(Error::io("fremovexattr", ns.opaque_key(), e)),
    }
}

/// Whether the open directory `dir` is opaque: `<ns>.overlay.opaque` is `y`.
///
/// A missing xattr, a filesystem without xattrs and any other value (such as the
/// `x` newer kernels write on directories that hold xattr whiteouts) are not opaque.
///
/// # Errors
///
/// [`Error::Io`] if `fgetxattr` fails for another reason.
pub fn is_opaque<Fd: AsFd>(dir: Fd, ns: XattrNamespace) -> Result<bool, Error> {
    let mut value = [0u8; 8];
    match rustix::fs::fgetxattr(dir, ns.opaque_key(), &mut value[..]) {
        Ok(len) => Ok(&value[..len] == b"y"),
        Err(Errno::NODATA | Errno::NOTSUP | Errno::RANGE) => Ok(false),
        Err(e) => Err(Error::io("fgetxattr", ns.opaque_key(), e)),
    }
}

/// Whether the open file or directory `fd` carries `<ns>.overlay.redirect` or
/// `<ns>.overlay.metacopy`: a renamed directory or a metadata-only copy-up, which
/// a layer tar (and aufs) cannot express, so such a layer needs a naive diff.
///
/// # Errors
///
/// [`Error::Io`] if `fgetxattr` fails for another reason than a missing xattr.
pub fn has_redirect_or_metacopy<Fd: AsFd>(fd: Fd, ns: XattrNamespace) -> Result<bool, Error> {
    Ok(overlay_only_xattr(fd.as_fd(), ns)?.is_some())
}

/// The first of `redirect` and `metacopy` that `fd` carries.
pub(crate) fn overlay_only_xattr(
    fd: rustix::fd::BorrowedFd<'_>,
    ns: XattrNamespace,
) -> Result<Option<&'static str>, Error> {
    for key in [ns.redirect_key(), ns.metacopy_key()] {
        match rustix::fs::fgetxattr_query(fd, key) {
            Ok(_) => return Ok(Some(key)),
            Err(Errno::NODATA | Errno::NOTSUP) => {}
            Err(e) => return Err(Error::io("fgetxattr", key, e)),
        }
    }
    Ok(None)
}
