//! Names from a tar resolved inside the layer root, never outside it.
//!
//! Parent directories are opened with `openat2(RESOLVE_IN_ROOT)`, so a symlink
//! met on the way is followed as if the root were `/`; where the kernel lacks
//! `openat2`, a component walk with `O_NOFOLLOW` refuses symlinks instead.

use std::cell::Cell;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::EntryError;

/// Splits a tar name into its components, cleaned as Docker cleans names
/// before it joins them to the layer root: a leading `/` names the root, empty
/// and `.` components go, and `..` takes back the component before it. A `..`
/// that would climb above the root, and a NUL byte, are refused. An empty
/// result names the root.
pub(crate) fn components(name: &[u8]) -> Result<Vec<&OsStr>, EntryError> {
    if name.contains(&0) {
        return Err(EntryError::InvalidName("NUL byte in name"));
    }
    let mut out = Vec::new();
    for comp in name.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(EntryError::DotDot);
                }
            }
            _ => out.push(OsStr::from_bytes(comp)),
        }
    }
    Ok(out)
}

/// Joins components with `/`.
pub(crate) fn join(comps: &[&OsStr]) -> Vec<u8> {
    let mut path = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(c.as_bytes());
    }
    path
}

/// The layer root, opened once; every entry is created relative to it.
pub(crate) struct Root {
    fd: OwnedFd,
    use_openat2: Cell<bool>,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC
}

impl Root {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Root {
            fd,
            use_openat2: Cell::new(true),
        }
    }

    /// Resolves with the component walk only, as on kernels without `openat2`.
    #[cfg(test)]
    pub(crate) fn without_openat2(fd: OwnedFd) -> Self {
        Root {
            fd,
            use_openat2: Cell::new(false),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory `comps` names inside the root. With `create`,
    /// missing directories are made (mode 0755, owned by `owner` if given).
    pub(crate) fn open_dir(
        &self,
        comps: &[&OsStr],
        create: bool,
        owner: Option<(u32, u32)>,
    ) -> io::Result<OwnedFd> {
        if comps.is_empty() {
            return Ok(rustix::fs::openat(
                &self.fd,
                ".",
                dir_flags(),
                Mode::empty(),
            )?);
        }
        match self.open_existing(comps) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        // Some directory on the way is missing: make each one in turn, always
        // inside the directory the previous prefix resolved to.
        let mut parent = rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty())?;
        for i in 0..comps.len() {
            match self.open_existing(&comps[..=i]) {
                Ok(fd) => parent = fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&parent, comps[i], Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    let fd = rustix::fs::openat(
                        &parent,
                        comps[i],
                        dir_flags() | OFlags::NOFOLLOW,
                        Mode::empty(),
                    )?;
                    if let Some((uid, gid)) = owner {
                        rustix::fs::fchown(
                            &fd,
                            Some(rustix::fs::Uid::from_raw(uid)),
                            Some(rustix::fs::Gid::from_raw(gid)),
                        )?;
                    }
                    parent = fd;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(parent)
    }

    /// Opens the existing directory `comps` names; a symlink as its last
    /// component is an error, not followed.
    pub(crate) fn open_dir_nofollow(&self, comps: &[&OsStr]) -> io::Result<OwnedFd> {
        self.open_with(comps, dir_flags() | OFlags::NOFOLLOW)
    }

    fn open_existing(&self, comps: &[&OsStr]) -> io::Result<OwnedFd> {
        self.open_with(comps, dir_flags())
    }

    fn open_with(&self, comps: &[&OsStr], flags: OFlags) -> io::Result<OwnedFd> {
        if self.use_openat2.get() {
            let path = join(comps);
            match rustix::fs::openat2(
                &self.fd,
                path.as_slice(),
                flags,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(rustix::io::Errno::NOSYS) => self.use_openat2.set(false),
                Err(rustix::io::Errno::AGAIN) => {
                    // The kernel saw a rename race; resolve again.
                    return self.open_with(comps, flags);
                }
                other => return Ok(other?),
            }
        }
        let mut cur = rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty())?;
        for comp in comps {
            cur = rustix::fs::openat(&cur, *comp, dir_flags() | OFlags::NOFOLLOW, Mode::empty())?;
        }
        Ok(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_checked() {
        fn c(s: &str) -> Result<Vec<&OsStr>, EntryError> {
            components(s.as_bytes())
        }
        assert_eq!(c("./a//b/./c/").unwrap(), ["a", "b", "c"]);
        assert!(c("./").unwrap().is_empty());
        assert_eq!(c("/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(c("//etc/./x/../y").unwrap(), ["etc", "y"]);
        assert!(c("/").unwrap().is_empty());
        assert!(matches!(c("a/../../b"), Err(EntryError::DotDot)));
        assert!(matches!(c("/.."), Err(EntryError::DotDot)));
        assert!(matches!(c(".."), Err(EntryError::DotDot)));
        assert!(matches!(
            components(b"a\0b"),
            Err(EntryError::InvalidName(_))
        ));
    }

    fn open(path: &std::path::Path) -> OwnedFd {
        rustix::fs::open(path, dir_flags(), Mode::empty()).unwrap()
    }

    #[test]
    fn both_resolvers_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::os::unix::fs::symlink("/", root.join("up")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("d/back")).unwrap();
        let in_root = Root::new(open(&root));
        let walk = Root::without_openat2(open(&root));
        // openat2 follows the symlinks, clamped at the root.
        let fd = in_root
            .open_dir(&[OsStr::new("up"), OsStr::new("d")], false, None)
            .unwrap();
        let st = rustix::fs::fstat(&fd).unwrap();
        let expect = std::fs::metadata(root.join("d")).unwrap();
        assert_eq!(st.st_ino, std::os::unix::fs::MetadataExt::ino(&expect));
        let fd = in_root
            .open_dir(&[OsStr::new("d"), OsStr::new("back")], false, None)
            .unwrap();
        let st = rustix::fs::fstat(&fd).unwrap();
        let expect = std::fs::metadata(&root).unwrap();
        assert_eq!(st.st_ino, std::os::unix::fs::MetadataExt::ino(&expect));
        // The walk refuses them.
        assert!(walk.open_dir(&[OsStr::new("up")], false, None).is_err());
        assert!(
            walk.open_dir(&[OsStr::new("d"), OsStr::new("back")], true, None)
                .is_err()
        );
        // Both create missing directories inside.
        walk.open_dir(&[OsStr::new("x"), OsStr::new("y")], true, None)
            .unwrap();
        in_root
            .open_dir(&[OsStr::new("up"), OsStr::new("z")], true, None)
            .unwrap();
        assert!(root.join("x/y").is_dir());
        assert!(root.join("z").is_dir());
        assert!(!std::path::Path::new("/z").exists());
    }

    #[test]
    fn nofollow_refuses_a_symlink_as_last_component() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::os::unix::fs::symlink("d", root.join("l")).unwrap();
        for r in [Root::new(open(&root)), Root::without_openat2(open(&root))] {
            assert!(r.open_dir_nofollow(&[OsStr::new("l")]).is_err());
            r.open_dir_nofollow(&[OsStr::new("d"), OsStr::new("e")])
                .unwrap();
        }
        // Inside the path, openat2 follows symlinks within the root.
        Root::new(open(&root))
            .open_dir_nofollow(&[OsStr::new("l"), OsStr::new("e")])
            .unwrap();
    }
}
