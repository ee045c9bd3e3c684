//! In-place conversion of a whole layer directory between the aufs format
//! (`.wh.` files) and the overlay format (0/0 devices and opaque xattrs).
//!
//! This is the migration of an aufs store to overlay2 without pulling its images
//! again, and back. Both directions are idempotent and restartable: each entry
//! gets its new form first and loses its old form second, so a conversion that
//! was interrupted (a crash, a full disk) is finished by running it again.
//!
//! Every access is relative to the layer's directory handle, opens directories
//! with `O_NOFOLLOW` and never follows a symlink. Before changing anything, each
//! conversion checks the whole layer, so a layer that cannot be converted is left
//! as it was.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use crate::overlay::{mknod_whiteout, overlay_only_xattr};
use crate::{
    Error, NameKind, OPAQUE_MARKER, XattrNamespace, classify, clear_opaque, is_opaque,
    is_overlay_whiteout, set_opaque, whiteout_name,
};

/// What a conversion did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertReport {
    /// Directories visited, the layer's root included.
    pub dirs: u64,
    /// Whiteouts converted (including ones an interrupted run had half done).
    pub whiteouts: u64,
    /// Opaque directories converted.
    pub opaque_dirs: u64,
    /// aufs private entries (`.wh..wh.plnk`, `.wh..wh.aufs`, `.wh..wh.orph`, …) removed.
    pub aufs_meta_removed: u64,
    /// aufs whiteouts `.wh.<name>` removed because `<name>` itself is in the same
    /// directory of the layer: the layer's own entry wins, as it does in the
    /// merged view.
    pub shadowed_whiteouts_removed: u64,
}

/// Converts the layer directory `layer` (an open directory) from the aufs format
/// to the overlay format, in place.
///
/// `.wh.<name>` becomes a 0/0 character device `<name>` with the whiteout file's
/// permissions, owner and times; `.wh..wh..opq` becomes `<ns>.overlay.opaque=y` on
/// its directory; aufs private entries (`.wh..wh.plnk`, …) are removed with their
/// contents. Each directory keeps its modification time. Entries already in the
/// overlay format are left as they are, so running it again is harmless and
/// finishes an interrupted run.
///
/// # Errors
///
/// Before any change: [`Error::InvalidEntry`] for a name the format does not allow
/// (`.wh.`, `.wh..`, …) or a whiteout that is a directory. During the change:
/// [`Error::MknodRefused`] without `CAP_MKNOD`, [`Error::Io`] for any failed call,
/// naming the entry; run it again once the cause is fixed.
pub fn aufs_to_overlay<Fd: AsFd>(layer: Fd, ns: XattrNamespace) -> Result<ConvertReport, Error> {
    let layer = layer.as_fd();
    walk(layer, &mut |_, path, entries| {
        let mut subdirs = Vec::new();
        for entry in entries {
            let reason = match classify(&entry.name) {
                Err(Error::InvalidName { reason, .. }) => reason,
                Err(e) => return Err(e),
                Ok(NameKind::Whiteout(_) | NameKind::Opaque)
                    if entry.file_type == FileType::Directory =>
                {
                    "an aufs whiteout or opaque marker must not be a directory"
                }
                Ok(NameKind::Plain) if entry.file_type == FileType::Directory => {
                    subdirs.push(entry.name.clone());
                    continue;
                }
                Ok(_) => continue,
            };
            return Err(Error::InvalidEntry {
                path: path.join(&entry.name),
                reason,
            });
        }
        Ok(subdirs)
    })?;

    let mut report = ConvertReport::default();
    walk(layer, &mut |dir, path, entries| {
        report.dirs += 1;
        let before = stat_fd(dir, path)?;
        let names: HashSet<&OsStr> = entries.iter().map(|e| e.name.as_os_str()).collect();
        let mut changed = false;
        let mut subdirs = Vec::new();
        for entry in &entries {
            let name = entry.name.as_os_str();
            match classify(name)? {
                NameKind::Plain => {
                    if entry.file_type == FileType::Directory {
                        subdirs.push(entry.name.clone());
                    }
                }
                NameKind::Opaque => {
                    set_opaque(dir, ns).map_err(|e| in_layer(e, path))?;
                    unlink(dir, path, name)?;
                    report.opaque_dirs += 1;
                    changed = true;
                }
                NameKind::AufsMeta(_) => {
                    plies_fdtree::remove_tree(dir, name).map_err(|e| Error::Io {
                        op: "remove",
                        name: path.join(name).into_os_string(),
                        source: e.into(),
                    })?;
                    report.aufs_meta_removed += 1;
                    changed = true;
                }
                NameKind::Whiteout(target) => {
                    let source = stat_at(dir, path, name)?;
                    let existing = if names.contains(target) {
                        Some(stat_at(dir, path, target)?)
                    } else {
                        None
                    };
                    match existing {
                        Some(stat) if !is_overlay_whiteout(&stat) => {
                            tracing::warn!(
                                entry = ?path.join(name),
                                "aufs whiteout beside an entry of the same name: keeping the entry"
                            );
                            report.shadowed_whiteouts_removed += 1;
                        }
                        existing => {
                            if existing.is_none() {
                                mknod_whiteout(dir, target, Mode::empty())
                                    .map_err(|e| in_layer(e, path))?;
                            }
                            copy_metadata_at(dir, path, target, &source)?;
                            report.whiteouts += 1;
                        }
                    }
                    unlink(dir, path, name)?;
                    changed = true;
                }
            }
        }
        if changed {
            restore_times(dir, path, &before)?;
        }
        Ok(subdirs)
    })?;
    Ok(report)
}

/// Converts the layer directory `layer` (an open directory) from the overlay
/// format to the aufs format, in place.
///
/// A 0/0 character device `<name>` becomes an empty file `.wh.<name>` with the
/// device's permissions, owner and times; a directory with `<ns>.overlay.opaque=y`
/// gets a `.wh..wh..opq` file with the directory's permissions and owner, and
/// loses the xattr. Each directory keeps its modification time. Other overlay
/// xattrs (`origin`, `impure`, …) are left: aufs ignores them. Entries already in
/// the aufs format are left as they are, so running it again is harmless and
/// finishes an interrupted run.
///
/// # Errors
///
/// Before any change: [`Error::Inexpressible`] for a directory or file with a
/// `redirect` or `metacopy` xattr (aufs cannot express a renamed directory or a
/// metadata-only copy); [`Error::InvalidEntry`] for an entry aufs would read as a
/// whiteout (a directory, symlink or device named `.wh.*`) or a whiteout of a
/// `.wh.` name. During the change: [`Error::Io`] naming the entry; run it again
/// once the cause is fixed.
pub fn overlay_to_aufs<Fd: AsFd>(layer: Fd, ns: XattrNamespace) -> Result<ConvertReport, Error> {
    let layer = layer.as_fd();
    walk(layer, &mut |dir, path, entries| {
        if let Some(key) = overlay_only_xattr(dir, ns).map_err(|e| in_layer(e, path))? {
            return Err(Error::Inexpressible {
                path: path.to_owned(),
                key,
            });
        }
        let mut subdirs = Vec::new();
        for entry in entries {
            let name = entry.name.as_os_str();
            let plain = matches!(classify(name), Ok(NameKind::Plain));
            let reason = match entry.file_type {
                FileType::Directory if plain => {
                    subdirs.push(entry.name.clone());
                    continue;
                }
                FileType::RegularFile if classify(name).is_ok() => {
                    check_file_xattrs(dir, path, name, ns)?;
                    continue;
                }
                FileType::CharacterDevice
                    if !plain && is_overlay_whiteout(&stat_at(dir, path, name)?) =>
                {
                    "a whiteout of a name that the aufs format cannot spell"
                }
                _ if plain => continue,
                _ => "a name the aufs format reads as a whiteout",
            };
            return Err(Error::InvalidEntry {
                path: path.join(name),
                reason,
            });
        }
        Ok(subdirs)
    })?;

    let mut report = ConvertReport::default();
    walk(layer, &mut |dir, path, entries| {
        report.dirs += 1;
        let before = stat_fd(dir, path)?;
        let mut changed = false;
        let mut subdirs = Vec::new();
        for entry in entries {
            let name = entry.name.as_os_str();
            match entry.file_type {
                FileType::Directory => subdirs.push(entry.name.clone()),
                FileType::CharacterDevice => {
                    let stat = stat_at(dir, path, name)?;
                    if is_overlay_whiteout(&stat) {
                        write_marker(dir, path, &whiteout_name(name), &stat, true)?;
                        unlink(dir, path, name)?;
                        report.whiteouts += 1;
                        changed = true;
                    }
                }
                _ => {}
            }
        }
        if is_opaque(dir, ns).map_err(|e| in_layer(e, path))? {
            write_marker(dir, path, OsStr::new(OPAQUE_MARKER), &before, false)?;
            clear_opaque(dir, ns).map_err(|e| in_layer(e, path))?;
            report.opaque_dirs += 1;
            changed = true;
        }
        if changed {
            restore_times(dir, path, &before)?;
        }
        Ok(subdirs)
    })?;
    Ok(report)
}

/// One entry of a directory being walked.
struct Entry {
    name: OsString,
    file_type: FileType,
}

/// Visits every directory of the tree under `root` (the root first), depth first,
/// descending into the subdirectories each visit returns. At most one handle per
/// level of the current path is open, whatever the width of the tree.
fn walk<F>(root: BorrowedFd<'_>, visit: &mut F) -> Result<(), Error>
where
    F: FnMut(BorrowedFd<'_>, &Path, Vec<Entry>) -> Result<Vec<OsString>, Error>,
{
    let root = open_dir(root, Path::new(""), OsStr::new("."))?;
    let mut current = Some((Rc::new(root), PathBuf::new()));
    let mut todo: Vec<(Rc<OwnedFd>, PathBuf, OsString)> = Vec::new();
    loop {
        if let Some((dir, path)) = current.take() {
            let entries = read_entries(dir.as_fd(), &path)?;
            let subdirs = visit(dir.as_fd(), &path, entries)?;
            for name in subdirs.into_iter().rev() {
                todo.push((Rc::clone(&dir), path.clone(), name));
            }
        }
        let Some((parent, parent_path, name)) = todo.pop() else {
            return Ok(());
        };
        let dir = open_dir(parent.as_fd(), &parent_path, &name)?;
        current = Some((Rc::new(dir), parent_path.join(&name)));
    }
}

fn open_dir(parent: BorrowedFd<'_>, path: &Path, name: &OsStr) -> Result<OwnedFd, Error> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("openat", path.join(name), e))
}

fn read_entries(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<Entry>, Error> {
    let reader = rustix::fs::Dir::read_from(dir).map_err(|e| Error::io("opendir", path, e))?;
    let mut entries = Vec::new();
    for entry in reader {
        let entry = entry.map_err(|e| Error::io("getdents", path, e))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let file_type = match entry.file_type() {
            FileType::Unknown => FileType::from_raw_mode(stat_at(dir, path, name)?.st_mode),
            known => known,
        };
        entries.push(Entry {
            name: name.to_owned(),
            file_type,
        });
    }
    // A stable order makes conversions and their errors reproducible.
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn stat_at(dir: BorrowedFd<'_>, path: &Path, name: &OsStr) -> Result<Stat, Error> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io("fstatat", path.join(name), e))
}

fn stat_fd(dir: BorrowedFd<'_>, path: &Path) -> Result<Stat, Error> {
    rustix::fs::fstat(dir).map_err(|e| Error::io("fstat", path, e))
}

fn unlink(dir: BorrowedFd<'_>, path: &Path, name: &OsStr) -> Result<(), Error> {
    rustix::fs::unlinkat(dir, name, AtFlags::empty())
        .map_err(|e| Error::io("unlinkat", path.join(name), e))
}

/// Names an error of a single-name call by its path in the layer.
fn in_layer(err: Error, path: &Path) -> Error {
    match err {
        Error::Io { op, name, source } => Error::Io {
            op,
            name: path.join(name).into_os_string(),
            source,
        },
        Error::MknodRefused { name, source } => Error::MknodRefused {
            name: path.join(name).into_os_string(),
            source,
        },
        other => other,
    }
}

#[allow(clippy::unnecessary_cast)] // the field types differ between architectures
fn times(stat: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: stat.st_atime as _,
            tv_nsec: stat.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: stat.st_mtime as _,
            tv_nsec: stat.st_mtime_nsec as _,
        },
    }
}

fn permissions(stat: &Stat) -> Mode {
    Mode::from_raw_mode(stat.st_mode & 0o7777)
}

fn restore_times(dir: BorrowedFd<'_>, path: &Path, stat: &Stat) -> Result<(), Error> {
    rustix::fs::futimens(dir, &times(stat)).map_err(|e| Error::io("futimens", path, e))
}

/// Gives the entry `name` (a whiteout device) the permissions, owner and times of `from`.
fn copy_metadata_at(
    dir: BorrowedFd<'_>,
    path: &Path,
    name: &OsStr,
    from: &Stat,
) -> Result<(), Error> {
    let io = |op| move |e| Error::io(op, path.join(name), e);
    rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(from.st_uid)),
        Some(rustix::fs::Gid::from_raw(from.st_gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io("fchownat"))?;
    // The entry is a device node, never a symlink, so following is harmless;
    // fchmodat has no working no-follow flag.
    rustix::fs::chmodat(dir, name, permissions(from), AtFlags::empty()).map_err(io("fchmodat"))?;
    rustix::fs::utimensat(dir, name, &times(from), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io("utimensat"))
}

/// Creates (or reuses) the empty aufs marker file `name` with the permissions and
/// owner of `from`, and its times too when `with_times`.
fn write_marker(
    dir: BorrowedFd<'_>,
    path: &Path,
    name: &OsStr,
    from: &Stat,
    with_times: bool,
) -> Result<(), Error> {
    let io = |op| move |e| Error::io(op, path.join(name), e);
    let file = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("openat"))?;
    let stat = rustix::fs::fstat(&file).map_err(io("fstat"))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(Error::InvalidEntry {
            path: path.join(name),
            reason: "an aufs marker must be a regular file",
        });
    }
    rustix::fs::fchown(
        &file,
        Some(rustix::fs::Uid::from_raw(from.st_uid)),
        Some(rustix::fs::Gid::from_raw(from.st_gid)),
    )
    .map_err(io("fchown"))?;
    rustix::fs::fchmod(&file, permissions(from)).map_err(io("fchmod"))?;
    if with_times {
        rustix::fs::futimens(&file, &times(from)).map_err(io("futimens"))?;
    }
    Ok(())
}

/// Refuses a regular file that only overlayfs can read (metacopy, redirect).
///
/// Lists the file's xattrs by path through `/proc/self/fd/<dir>/<name>` (one
/// call, no open, the name itself not followed); without `/proc`, opens it.
fn check_file_xattrs(
    dir: BorrowedFd<'_>,
    path: &Path,
    name: &OsStr,
    ns: XattrNamespace,
) -> Result<(), Error> {
    let mut by_proc = OsString::from(format!("/proc/self/fd/{}/", dir.as_raw_fd()));
    by_proc.push(name);
    let found = match list_overlay_only_xattr(&by_proc, ns) {
        Ok(found) => found,
        Err(Errno::NOENT | Errno::NOTDIR) if !Path::new("/proc/self/fd").exists() => {
            let file = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io("openat", path.join(name), e))?;
            overlay_only_xattr(file.as_fd(), ns).map_err(|e| in_layer(e, path))?
        }
        Err(e) => return Err(Error::io("llistxattr", path.join(name), e)),
    };
    match found {
        Some(key) => Err(Error::Inexpressible {
            path: path.join(name),
            key,
        }),
        None => Ok(()),
    }
}

/// The first of `redirect` and `metacopy` in the xattr list of `path` (not
/// following a symlink at its end).
fn list_overlay_only_xattr(
    path: &OsStr,
    ns: XattrNamespace,
) -> Result<Option<&'static str>, Errno> {
    loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(0) | Err(Errno::NOTSUP) => return Ok(None),
            Ok(size) => size,
            Err(e) => return Err(e),
        };
        let mut list = vec![0u8; size];
        let len = match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(len) => len,
            // The list grew since it was measured.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        };
        let keys = [ns.redirect_key(), ns.metacopy_key()];
        return Ok(list[..len]
            .split(|b| *b == 0)
            .find_map(|key| keys.into_iter().find(|k| k.as_bytes() == key)));
    }
}
