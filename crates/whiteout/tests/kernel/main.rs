//! Overlay whiteouts and opaque directories on a real filesystem and a real
//! overlayfs mount.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use plies_testkit::dir_names;
use plies_whiteout::{
    Error, XattrNamespace, clear_opaque, create_overlay_whiteout, has_redirect_or_metacopy,
    is_opaque, is_overlay_whiteout, is_overlay_whiteout_at, set_opaque,
};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode, OFlags, XattrFlags};

fn open_dir(path: &Path) -> OwnedFd {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

#[test]
fn whiteout_is_a_0_0_char_device() {
    if !plies_testkit::require_root("whiteout_is_a_0_0_char_device") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = open_dir(tmp.path());
    create_overlay_whiteout(&dir, OsStr::new("gone")).unwrap();

    let meta = fs::symlink_metadata(tmp.path().join("gone")).unwrap();
    assert_eq!(meta.mode(), libc_s_ifchr());
    assert_eq!(meta.rdev(), 0);
    assert!(is_overlay_whiteout_at(&dir, OsStr::new("gone")).unwrap());
    let stat = rustix::fs::statat(&dir, "gone", AtFlags::SYMLINK_NOFOLLOW).unwrap();
    assert!(is_overlay_whiteout(&stat));

    // A second one of the same name is EEXIST, reported with the name.
    match create_overlay_whiteout(&dir, OsStr::new("gone")) {
        Err(Error::Io { op, name, source }) => {
            assert_eq!(op, "mknodat");
            assert_eq!(name, "gone");
            assert_eq!(source.raw_os_error(), Some(17));
        }
        other => panic!("expected EEXIST, got {other:?}"),
    }
}

// S_IFCHR with no permission bits.
fn libc_s_ifchr() -> u32 {
    0o020000
}

#[test]
fn other_entries_are_not_whiteouts() {
    if !plies_testkit::require_root("other_entries_are_not_whiteouts") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = open_dir(tmp.path());
    fs::write(tmp.path().join("file"), b"").unwrap();
    fs::create_dir(tmp.path().join("dir")).unwrap();
    create_overlay_whiteout(&dir, OsStr::new("wh")).unwrap();
    symlink("wh", tmp.path().join("link-to-whiteout")).unwrap();
    // /dev/null's twin: a char device that is not 0/0.
    rustix::fs::mknodat(
        &dir,
        "null",
        rustix::fs::FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    for name in ["file", "dir", "link-to-whiteout", "null", "missing"] {
        assert!(
            !is_overlay_whiteout_at(&dir, OsStr::new(name)).unwrap(),
            "{name}"
        );
    }
    assert!(matches!(
        is_overlay_whiteout_at(&dir, OsStr::new("a/b")),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        create_overlay_whiteout(&dir, OsStr::new("..")),
        Err(Error::InvalidName { .. })
    ));
}

#[test]
fn opaque_in_both_namespaces() {
    if !plies_testkit::require_root("opaque_in_both_namespaces") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for ns in [XattrNamespace::Trusted, XattrNamespace::User] {
        let path = tmp.path().join(format!("{ns:?}"));
        fs::create_dir(&path).unwrap();
        let dir = open_dir(&path);
        assert!(!is_opaque(&dir, ns).unwrap());
        set_opaque(&dir, ns).unwrap();
        assert!(is_opaque(&dir, ns).unwrap());
        assert_eq!(
            xattr_value(&dir, ns.opaque_key()).as_deref(),
            Some(&b"y"[..])
        );
        let other = match ns {
            XattrNamespace::Trusted => XattrNamespace::User,
            XattrNamespace::User => XattrNamespace::Trusted,
        };
        assert!(!is_opaque(&dir, other).unwrap());
        clear_opaque(&dir, ns).unwrap();
        assert!(!is_opaque(&dir, ns).unwrap());
        clear_opaque(&dir, ns).unwrap();

        // "x" (a dir holding xattr whiteouts on newer kernels) is not opaque.
        rustix::fs::fsetxattr(&dir, ns.opaque_key(), b"x", XattrFlags::empty()).unwrap();
        assert!(!is_opaque(&dir, ns).unwrap());
    }
}

fn xattr_value(fd: &OwnedFd, key: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    rustix::fs::fgetxattr(fd, key, &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

#[test]
fn redirect_and_metacopy_are_detected() {
    if !plies_testkit::require_root("redirect_and_metacopy_are_detected") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for ns in [XattrNamespace::Trusted, XattrNamespace::User] {
        for (key, value) in [
            (ns.redirect_key(), &b"/old"[..]),
            (ns.metacopy_key(), &b""[..]),
        ] {
            let path = tmp.path().join(key);
            fs::create_dir(&path).unwrap();
            let dir = open_dir(&path);
            assert!(!has_redirect_or_metacopy(&dir, ns).unwrap());
            rustix::fs::fsetxattr(&dir, key, value, XattrFlags::empty()).unwrap();
            assert!(has_redirect_or_metacopy(&dir, ns).unwrap(), "{key}");
            // Only the namespace asked about counts.
            let other = match ns {
                XattrNamespace::Trusted => XattrNamespace::User,
                XattrNamespace::User => XattrNamespace::Trusted,
            };
            assert!(!has_redirect_or_metacopy(&dir, other).unwrap());
        }
    }
}

/// An unprivileged process (no capabilities at all) creates whiteouts where the
/// kernel allows it (Linux 5.8 and later) and gets `MknodRefused`, naming the
/// aufs fallback, where it may not. Runs itself again under `setpriv`.
#[test]
fn unprivileged_mknod() {
    const CHILD: &str = "PLIES_WHITEOUT_UNPRIVILEGED_DIR";
    if let Ok(dir) = std::env::var(CHILD) {
        let dir = Path::new(&dir);
        let writable = open_dir(&dir.join("writable"));
        let result = create_overlay_whiteout(&writable, OsStr::new("gone"));
        if kernel_at_least(5, 8) {
            result.unwrap();
        } else {
            assert!(
                matches!(result, Err(Error::MknodRefused { .. })),
                "{result:?}"
            );
        }
        let read_only = open_dir(&dir.join("read-only"));
        let err = create_overlay_whiteout(&read_only, OsStr::new("gone")).unwrap_err();
        match &err {
            Error::MknodRefused { name, source } => {
                assert_eq!(name, "gone");
                assert_eq!(source.raw_os_error(), Some(13));
            }
            other => panic!("expected MknodRefused, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("aufs format"), "{msg}");
        return;
    }
    if !plies_testkit::require_root("unprivileged_mknod") {
        return;
    }
    let setpriv = Path::new("/usr/bin/setpriv");
    if !plies_testkit::require(
        "unprivileged_mknod",
        setpriv.exists(),
        "setpriv(1) is missing",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for (name, mode) in [("writable", 0o777), ("read-only", 0o555)] {
        let dir = tmp.path().join(name);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    }
    let status = std::process::Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "unprivileged_mknod", "--nocapture"])
        .env(CHILD, tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!tmp.path().join("read-only/gone").exists());
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

/// What the kernel writes through an overlay mount is what this crate detects,
/// and what this crate writes is what the kernel honours.
#[test]
fn agrees_with_a_real_overlay_mount() {
    if !plies_testkit::require_overlay("agrees_with_a_real_overlay_mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let p = tmp.path().join(d);
        fs::create_dir(&p).unwrap();
        p
    });
    fs::write(lower.join("hidden-by-us"), b"x").unwrap();
    fs::write(lower.join("removed-through-mount"), b"x").unwrap();
    fs::create_dir_all(lower.join("opaque-by-us")).unwrap();
    fs::write(lower.join("opaque-by-us/old"), b"x").unwrap();
    fs::create_dir_all(lower.join("recreated")).unwrap();
    fs::write(lower.join("recreated/old"), b"x").unwrap();

    // Written by us before mounting.
    create_overlay_whiteout(open_dir(&upper), OsStr::new("hidden-by-us")).unwrap();
    fs::create_dir(upper.join("opaque-by-us")).unwrap();
    fs::write(upper.join("opaque-by-us/new"), b"y").unwrap();
    set_opaque(
        open_dir(&upper.join("opaque-by-us")),
        XattrNamespace::Trusted,
    )
    .unwrap();

    let data = CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    ))
    .unwrap();
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .unwrap();
    let guard = Mount(merged.clone());

    assert!(!merged.join("hidden-by-us").exists());
    assert_eq!(dir_names(&merged.join("opaque-by-us")), ["new"]);

    // Written by the kernel through the mount.
    fs::remove_file(merged.join("removed-through-mount")).unwrap();
    fs::remove_dir_all(merged.join("recreated")).unwrap();
    fs::create_dir(merged.join("recreated")).unwrap();
    drop(guard);

    let upper_fd = open_dir(&upper);
    assert!(is_overlay_whiteout_at(&upper_fd, OsStr::new("removed-through-mount")).unwrap());
    assert!(is_opaque(open_dir(&upper.join("recreated")), XattrNamespace::Trusted).unwrap());
    assert!(!is_opaque(open_dir(&upper), XattrNamespace::Trusted).unwrap());
    assert!(plies_testkit::mounts_under(tmp.path()).is_empty());
}
