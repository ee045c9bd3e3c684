//! overlayfs probes: each mounts a small overlay in its own scratch directory.

use std::path::Path;
use std::time::Duration;

use rustix::fs::{Mode, XattrFlags};
use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

use crate::scratch::{bounded, refused};
use crate::{DEFAULT_TIMEOUT, KernelVersion, Outcome, in_user_namespace};

/// Whether overlayfs takes more than one lower directory (`lowerdir=l2:l1` with
/// an upper and work directory).
pub fn multiple_lowers(dir: &Path) -> Outcome<()> {
    multiple_lowers_within(dir, DEFAULT_TIMEOUT)
}

pub(crate) fn multiple_lowers_within(dir: &Path, timeout: Duration) -> Outcome<()> {
    bounded("multiple-lowers", dir, timeout, |s| {
        if let Err(r) = s.mkdirs(&["l1", "l2", "upper", "work", "merged"]) {
            return Outcome::unsupported(r);
        }
        match s.mount_overlay("merged", "lowerdir=l2:l1,upperdir=upper,workdir=work") {
            Ok(()) => Outcome::supported(()),
            Err(e) => Outcome::unsupported(refused("overlay mount with two lowers", e)),
        }
    })
}

/// Whether a diff can be read straight from an overlay upper directory (Docker's
/// "Native Overlay Diff").
///
/// Unsupported when the kernel copies the opaque flag up with a directory (kernels
/// before 4.8), when it records directory renames as `redirect_dir` xattrs (which a
/// layer tar cannot express), or in a user namespace. An `EXDEV` on the
/// directory rename means `redirect_dir` is off: native diff works.
pub fn native_diff(dir: &Path) -> Outcome<()> {
    native_diff_within(dir, DEFAULT_TIMEOUT)
}

pub(crate) fn native_diff_within(dir: &Path, timeout: Duration) -> Outcome<()> {
    if in_user_namespace() {
        return Outcome::unsupported("running in a user namespace");
    }
    bounded("native-diff", dir, timeout, |s| {
        if let Err(r) = s.mkdirs(&["l1/d", "l1/d1", "l2/d", "l3", "work", "merged"]) {
            return Outcome::unsupported(r);
        }
        let opaque = s.path().join("l2/d");
        if let Err(e) =
            rustix::fs::lsetxattr(&opaque, "trusted.overlay.opaque", b"y", XattrFlags::empty())
        {
            return Outcome::unsupported(refused("cannot mark a lower directory opaque", e));
        }
        if let Err(e) = s.mount_overlay("merged", "lowerdir=l2:l1,upperdir=l3,workdir=work") {
            return Outcome::unsupported(refused("overlay mount", e));
        }
        // Creating a file in d copies the opaque d up into l3.
        if let Err(e) = std::fs::write(s.path().join("merged/d/f"), b"") {
            return Outcome::unsupported(format!("cannot write into the overlay: {e}"));
        }
        match xattr_present(&s.path().join("l3/d"), "trusted.overlay.opaque") {
            Ok(Some(v)) if v == b"y" => {
                return Outcome::unsupported(
                    "the kernel copies the opaque flag up with a directory (fixed in 4.8)",
                );
            }
            Ok(_) => {}
            Err(e) => {
                return Outcome::unsupported(format!(
                    "cannot read the upper directory's xattrs: {e}"
                ));
            }
        }
        match std::fs::rename(s.path().join("merged/d1"), s.path().join("merged/d2")) {
            Err(e) if e.raw_os_error() == Some(Errno::XDEV.raw_os_error()) => {
                return Outcome::supported(());
            }
            Err(e) => {
                return Outcome::unsupported(format!(
                    "cannot rename a directory in the overlay: {e}"
                ));
            }
            Ok(()) => {}
        }
        match xattr_present(&s.path().join("l3/d2"), "trusted.overlay.redirect") {
            Ok(Some(_)) => Outcome::unsupported(
                "the kernel has redirect_dir enabled: renamed directories carry trusted.overlay.redirect",
            ),
            Ok(None) => Outcome::supported(()),
            Err(e) => {
                Outcome::unsupported(format!("cannot read the upper directory's xattrs: {e}"))
            }
        }
    })
}

/// The value of xattr `name` on `path` (not following a symlink), `None` if absent.
fn xattr_present(path: &Path, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(Errno::NODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether overlayfs's metacopy is in use: a `chmod` through the overlay copies up
/// only metadata, marking the upper file with the `metacopy` xattr.
///
/// `Supported(true)` when it is in use, `Supported(false)` when the whole file was
/// copied up.
pub fn metacopy(dir: &Path) -> Outcome<bool> {
    metacopy_within(dir, None, DEFAULT_TIMEOUT)
}

pub(crate) fn metacopy_within(
    dir: &Path,
    kernel: Option<&KernelVersion>,
    timeout: Duration,
) -> Outcome<bool> {
    let userxattr = match userxattr_needed_within(dir, kernel, timeout) {
        Outcome::Supported { value } => value,
        Outcome::Unsupported { reason } => {
            return Outcome::unsupported(format!(
                "cannot tell whether userxattr is needed: {reason}"
            ));
        }
    };
    bounded("metacopy", dir, timeout, move |s| {
        if let Err(r) = s.mkdirs(&["l1", "l2", "work", "merged"]) {
            return Outcome::unsupported(r);
        }
        let lower = s.path().join("l1/f");
        if let Err(e) = std::fs::write(&lower, b"") {
            return Outcome::unsupported(format!("cannot create a lower file: {e}"));
        }
        if let Err(e) = rustix::fs::chmod(&lower, Mode::from_raw_mode(0o700)) {
            return Outcome::unsupported(format!("cannot chmod a lower file: {e}"));
        }
        let mut data = String::from("lowerdir=l1,upperdir=l2,workdir=work");
        if userxattr {
            data.push_str(",userxattr");
        }
        if let Err(e) = s.mount_overlay("merged", &data) {
            return Outcome::unsupported(refused("overlay mount", e));
        }
        if let Err(e) = rustix::fs::chmod(s.path().join("merged/f"), Mode::from_raw_mode(0o600)) {
            return Outcome::unsupported(format!("cannot chmod through the overlay: {e}"));
        }
        let name = if userxattr {
            "user.overlay.metacopy"
        } else {
            "trusted.overlay.metacopy"
        };
        match xattr_present(&s.path().join("l2/f"), name) {
            Ok(found) => Outcome::supported(found.is_some()),
            Err(e) => Outcome::unsupported(format!("cannot read the copied-up file's xattrs: {e}")),
        }
    })
}

/// Whether overlay mounts need the `userxattr` option (Docker's `NeedsUserXAttr`).
///
/// `false` in the initial user namespace; `true` in another one on kernel 5.11 or
/// newer; otherwise whatever a test mount with `userxattr` shows (older kernels
/// with vendor patches may lack the option).
pub fn userxattr_needed(dir: &Path) -> Outcome<bool> {
    userxattr_needed_within(dir, None, DEFAULT_TIMEOUT)
}

pub(crate) fn userxattr_needed_within(
    dir: &Path,
    kernel: Option<&KernelVersion>,
    timeout: Duration,
) -> Outcome<bool> {
    if !in_user_namespace() {
        return Outcome::supported(false);
    }
    let kernel = match kernel {
        Some(k) => k.clone(),
        None => match crate::kernel_version() {
            Outcome::Supported { value } => value,
            Outcome::Unsupported { reason } => return Outcome::unsupported(reason),
        },
    };
    if kernel.at_least(5, 11, 0) {
        return Outcome::supported(true);
    }
    bounded("userxattr", dir, timeout, |s| {
        if let Err(r) = s.mkdirs(&["lower1", "lower2", "upper", "work", "merged"]) {
            return Outcome::unsupported(r);
        }
        let data = "lowerdir=lower2:lower1,upperdir=upper,workdir=work,userxattr";
        match s.mount_overlay("merged", data) {
            Ok(()) => Outcome::supported(true),
            Err(e) => {
                tracing::debug!("overlay mount with userxattr refused: {e}");
                Outcome::supported(false)
            }
        }
    })
}

/// Whether the overlay module has the `index` parameter
/// (`/sys/module/overlay/parameters/index`); the value is the parameter's current
/// setting (the default for `index=`). Mount data should then start with `index=off,`.
pub fn index_parameter() -> Outcome<bool> {
    let path = "/sys/module/overlay/parameters/index";
    match crate::kfile::read_attribute(path) {
        Ok(v) => Outcome::supported(matches!(v.trim(), "Y" | "y" | "1")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::unsupported(format!(
            "{path} does not exist (overlay not loaded, or older than 4.13)"
        )),
        Err(e) => Outcome::unsupported(format!("cannot read {path}: {e}")),
    }
}

/// Whether overlayfs accepts the `volatile` option (a test mount with it).
pub fn volatile(dir: &Path) -> Outcome<()> {
    volatile_within(dir, DEFAULT_TIMEOUT)
}

pub(crate) fn volatile_within(dir: &Path, timeout: Duration) -> Outcome<()> {
    bounded("volatile", dir, timeout, |s| {
        if let Err(r) = s.mkdirs(&["lower", "upper", "work", "merged"]) {
            return Outcome::unsupported(r);
        }
        match s.mount_overlay(
            "merged",
            "lowerdir=lower,upperdir=upper,workdir=work,volatile",
        ) {
            Ok(()) => Outcome::supported(()),
            Err(e) => Outcome::unsupported(refused("overlay mount with volatile", e)),
        }
    })
}

/// Whether the new mount API can make an overlay: `fsopen("overlay")` succeeds.
pub fn new_mount_api() -> Outcome<()> {
    match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(_fd) => Outcome::supported(()),
        Err(Errno::NOSYS) => Outcome::unsupported("the kernel has no fsopen(2)"),
        Err(e) => Outcome::unsupported(refused("fsopen(\"overlay\")", e)),
    }
}

/// Whether overlayfs takes layers one by one as `fsconfig(FSCONFIG_SET_STRING,
/// "lowerdir+", path)`: two layers given so, then the superblock created and
/// mounted (detached; nothing appears in the mount table).
pub fn lowerdir_plus(dir: &Path) -> Outcome<()> {
    lowerdir_plus_within(dir, DEFAULT_TIMEOUT)
}

pub(crate) fn lowerdir_plus_within(dir: &Path, timeout: Duration) -> Outcome<()> {
    bounded("lowerdir-plus", dir, timeout, |s| {
        if let Err(r) = s.mkdirs(&["l1", "l2"]) {
            return Outcome::unsupported(r);
        }
        mount_lowerdir_plus(&["l1", "l2"])
    })
}

/// Builds an overlay from `lowers` through `lowerdir+` and mounts it detached.
pub(crate) fn mount_lowerdir_plus<S: AsRef<str>>(lowers: &[S]) -> Outcome<()> {
    let fs = match rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fd) => fd,
        Err(Errno::NOSYS) => return Outcome::unsupported("the kernel has no fsopen(2)"),
        Err(e) => return Outcome::unsupported(refused("fsopen(\"overlay\")", e)),
    };
    for lower in lowers {
        if let Err(e) = rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower.as_ref()) {
            return Outcome::unsupported(refused("fsconfig lowerdir+", e));
        }
    }
    if let Err(e) = rustix::mount::fsconfig_create(&fs) {
        // Before overlay had its own mount context (6.5), fsconfig took any key
        // and the unknown lowerdir+ fails only here.
        return Outcome::unsupported(refused("creating an overlay from lowerdir+ layers", e));
    }
    match rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty()) {
        // Dropping the detached mount's fd unmounts it.
        Ok(_mnt) => Outcome::supported(()),
        Err(e) => Outcome::unsupported(refused("fsmount", e)),
    }
}
