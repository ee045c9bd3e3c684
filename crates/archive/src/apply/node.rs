//! Making the node an entry names: directories, files, links, devices and
//! fifos, each replacing what was there, with owner, mode, xattrs and times.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{
    Applier, DirMeta, Meta, PARENT_CACHE, Parent, drain, header_err, io_err, io_err2, plnk,
};
use crate::dir::remove_any;
use crate::error::EntryError;
use crate::format::WhiteoutFormat;
use crate::pax;
use crate::resolve;
use crate::stream::{Entry, Input, Stream};

/// Where an entry is made.
pub(super) struct Place<'a> {
    /// The open parent directory.
    pub(super) parent: BorrowedFd<'a>,
    /// The entry's path components, `name` last.
    pub(super) comps: &'a [&'a OsStr],
    /// The entry's own name in `parent`.
    pub(super) name: &'a OsStr,
    /// The owner a node made there gets: this process's user, and the group
    /// the parent gives.
    pub(super) new_owner: (u32, u32),
}

impl<'a> Place<'a> {
    /// The components of the parent directory.
    fn dir_comps(&self) -> &'a [&'a OsStr] {
        &self.comps[..self.comps.len() - 1]
    }
}

impl Applier<'_> {
    /// Makes what the entry names, of its type, in place of what was there;
    /// `comps` empty names the root.
    pub(super) fn node<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        meta: &Meta,
        comps: &[&OsStr],
    ) -> Result<(), EntryError> {
        let Some((name, dir_comps)) = comps.split_last() else {
            return self.root_entry(stream, entry, meta);
        };
        let parent = self.parent(dir_comps)?;
        let at = Place {
            parent: parent.fd.as_fd(),
            comps,
            name,
            new_owner: (self.my_ids.0, parent.new_gid),
        };
        // aufs: a name this layer makes again is no longer whited out in it (aufs
        // would hide it behind its own `.wh.` file); a directory made again
        // hides what the lower layers had there, as aufs's own rmdir + mkdir does.
        let was_whited_out =
            self.opts.whiteouts == WhiteoutFormat::Aufs && drop_aufs_whiteout(at.parent, name)?;
        match entry.header.entry_type() {
            t if t.is_dir() => {
                self.make_directory(meta, &at)?;
                if was_whited_out {
                    mark_aufs_opaque(at.parent, name)?;
                }
            }
            t if t.is_file() || t.is_contiguous() || t.is_gnu_sparse() => {
                // The file's data is the entry's: nothing left to drain.
                return self.make_file(stream, entry, meta, &at);
            }
            t if t.is_symlink() => self.make_symlink(entry, meta, &at)?,
            t if t.is_hard_link() => self.make_hard_link(entry, &at)?,
            t if t.is_character_special() || t.is_block_special() || t.is_fifo() => {
                self.make_device(entry, meta, &at)?;
            }
            other => return Err(EntryError::UnsupportedType(other.as_byte() as char)),
        }
        drain(stream, entry)
    }

    /// An entry naming the root itself: only a directory may, and it gives
    /// the root its owner, xattrs, mode and times.
    fn root_entry<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        meta: &Meta,
    ) -> Result<(), EntryError> {
        if !entry.header.entry_type().is_dir() {
            return Err(EntryError::ReplacesRoot);
        }
        let fd = rustix::fs::openat(
            self.root.fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open root"))?;
        self.owner_and_xattrs_fd(&fd, meta, None)?;
        self.dirs.insert(
            Vec::new(),
            DirMeta {
                mode: meta.mode,
                times: meta.times.clone(),
            },
        );
        drain(stream, entry)
    }

    /// A directory: merged with one already there; its mode and times are set
    /// once its entries are in.
    fn make_directory(&mut self, meta: &Meta, at: &Place<'_>) -> Result<(), EntryError> {
        let (fd, made) = self.make_dir(at.parent, at.name)?;
        self.owner_and_xattrs_fd(&fd, meta, made.then_some(at.new_owner))?;
        let key = resolve::join(at.comps);
        self.dirs.insert(
            key.clone(),
            DirMeta {
                mode: meta.mode,
                times: meta.times.clone(),
            },
        );
        // Entries of this directory usually follow: keep it open for them.
        self.remember_parent(key, fd)?;
        Ok(())
    }

    fn make_file<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        meta: &Meta,
        at: &Place<'_>,
    ) -> Result<(), EntryError> {
        let fd = self.create_with(at.parent, at.name, |p, n| {
            rustix::fs::openat(
                p,
                n,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        })?;
        self.fill_file(stream, entry, meta, &fd, at.new_owner)
    }

    fn make_symlink(
        &mut self,
        entry: &Entry,
        meta: &Meta,
        at: &Place<'_>,
    ) -> Result<(), EntryError> {
        let target = entry.link.as_deref().ok_or(EntryError::MissingLinkTarget)?;
        if target.contains(&0) {
            return Err(EntryError::InvalidName("NUL byte in symlink target"));
        }
        if target.is_empty() {
            return Err(EntryError::MissingLinkTarget);
        }
        self.create_with(at.parent, at.name, |p, n| {
            rustix::fs::symlinkat(target, p, n)
        })?;
        self.node_meta(at.parent, at.name, meta, false, at.new_owner)
    }

    /// A hard link to an entry made before it (or to a file kept aside from
    /// `.wh..wh.plnk`); a link to itself is left as it is.
    fn make_hard_link(&mut self, entry: &Entry, at: &Place<'_>) -> Result<(), EntryError> {
        let target = entry.link.as_deref().ok_or(EntryError::MissingLinkTarget)?;
        let tcomps =
            resolve::components(target).map_err(|e| EntryError::LinkTarget(Box::new(e)))?;
        let Some((tname, tdir)) = tcomps.split_last() else {
            return Err(EntryError::LinkTarget(Box::new(EntryError::ReplacesRoot)));
        };
        if let [meta_dir, base] = tcomps.as_slice()
            && meta_dir.as_bytes() == plnk::AUFS_LINK_DIR
        {
            return self.link_stashed(at, base, target);
        }
        let tparent = self
            .root
            .open_dir(tdir, false, None)
            .map_err(io_err2("open hard link target directory"))?;
        if tdir == at.dir_comps() && *tname == at.name {
            return Ok(());
        }
        self.create_with(at.parent, at.name, |p, n| {
            rustix::fs::linkat(&tparent, *tname, p, n, AtFlags::empty())
        })
    }

    /// A device node or fifo; device nodes are skipped (and counted) when the
    /// apply is unprivileged.
    fn make_device(
        &mut self,
        entry: &Entry,
        meta: &Meta,
        at: &Place<'_>,
    ) -> Result<(), EntryError> {
        let t = entry.header.entry_type();
        let (file_type, dev) = if t.is_fifo() {
            (FileType::Fifo, 0)
        } else {
            if !self.opts.privileged {
                self.stats.skipped_devices += 1;
                tracing::warn!(entry = %Path::new(OsStr::from_bytes(meta.name(entry))).display(), "skipping device node in an unprivileged apply");
                return Ok(());
            }
            let major = entry
                .header
                .device_major()
                .map_err(header_err("devmajor"))?
                .unwrap_or(0);
            let minor = entry
                .header
                .device_minor()
                .map_err(header_err("devminor"))?
                .unwrap_or(0);
            let ft = if t.is_character_special() {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            (ft, rustix::fs::makedev(major, minor))
        };
        self.create_with(at.parent, at.name, |p, n| {
            rustix::fs::mknodat(p, n, file_type, Mode::from_raw_mode(0o600), dev)
        })?;
        self.node_meta(at.parent, at.name, meta, true, at.new_owner)
    }

    /// Writes a regular file's data into `fd`, then its owner, xattrs, mode and times.
    pub(super) fn fill_file<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        meta: &Meta,
        fd: &OwnedFd,
        new_owner: (u32, u32),
    ) -> Result<(), EntryError> {
        if let Some(pax::Sparse {
            map: Some(chunks),
            realsize,
            ..
        }) = &meta.sparse
        {
            self.write_gnu_sparse(stream, entry, fd, chunks, *realsize)?;
        } else if let Some(sp) = &meta.sparse {
            self.write_pax_sparse(stream, entry, fd, sp.realsize)?;
        } else if let Some(map) = &entry.sparse {
            self.write_gnu_sparse(stream, entry, fd, &map.chunks, map.real_size)?;
        } else {
            self.write_data(stream, entry, fd)?;
        }
        self.owner_and_xattrs_fd(fd, meta, Some(new_owner))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(io_err("fchmod"))?;
        rustix::fs::futimens(fd, &meta.times).map_err(io_err("futimens"))?;
        Ok(())
    }

    /// The directory `comps` names, made if missing; kept open for the entries that follow.
    pub(super) fn parent(&mut self, comps: &[&OsStr]) -> Result<Rc<Parent>, EntryError> {
        let key = resolve::join(comps);
        if let Some(i) = self.parents.iter().rposition(|(k, _)| *k == key) {
            let hit = self.parents.remove(i);
            let parent = Rc::clone(&hit.1);
            self.parents.push(hit);
            return Ok(parent);
        }
        let fd = self
            .root
            .open_dir(comps, true, self.implicit_owner)
            .map_err(io_err2("open parent directory"))?;
        self.remember_parent(key, fd)
    }

    fn remember_parent(&mut self, key: Vec<u8>, fd: OwnedFd) -> Result<Rc<Parent>, EntryError> {
        let st = rustix::fs::fstat(&fd).map_err(io_err("stat parent directory"))?;
        let new_gid = if st.st_mode & 0o2000 != 0 {
            st.st_gid
        } else {
            self.my_ids.1
        };
        let parent = Rc::new(Parent { fd, new_gid });
        self.parents.retain(|(k, _)| *k != key);
        if self.parents.len() == PARENT_CACHE {
            self.parents.remove(0);
        }
        self.parents.push((key, Rc::clone(&parent)));
        Ok(parent)
    }

    /// Runs `create`; if the name exists, removes it (a later entry replaces
    /// an earlier one) and runs it again.
    pub(super) fn create_with<T>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        create: impl Fn(BorrowedFd<'_>, &OsStr) -> rustix::io::Result<T>,
    ) -> Result<T, EntryError> {
        match create(parent, name) {
            Err(Errno::EXIST) => {
                self.remove(parent, name)?;
                create(parent, name).map_err(io_err("create"))
            }
            other => other.map_err(io_err("create")),
        }
    }

    pub(super) fn remove(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), EntryError> {
        self.parents.clear();
        remove_any(parent, name).map_err(io_err2("remove existing entry"))
    }

    /// Makes (or keeps) the directory `name` and opens it; whether it was made.
    fn make_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(OwnedFd, bool), EntryError> {
        let made = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err("stat"))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    false
                } else {
                    self.remove(parent, name)?;
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .map_err(io_err("mkdir"))?;
                    true
                }
            }
            Err(e) => return Err(io_err("mkdir")(e)),
        };
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open directory"))?;
        Ok((fd, made))
    }

    /// Owner and xattrs of an open node; the owner is left alone when it is
    /// already `current` (what the node got when it was made).
    fn owner_and_xattrs_fd(
        &mut self,
        fd: &OwnedFd,
        meta: &Meta,
        current: Option<(u32, u32)>,
    ) -> Result<(), EntryError> {
        if meta.uid != u32::MAX && current != Some((meta.uid, meta.gid)) {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
            )
            .map_err(io_err("fchown"))?;
        }
        for (name, value) in &meta.xattrs {
            let r =
                rustix::fs::fsetxattr(fd, name.as_os_str(), value, rustix::fs::XattrFlags::empty());
            self.xattr_result(name, r)?;
        }
        Ok(())
    }

    fn xattr_result(&mut self, name: &OsStr, r: rustix::io::Result<()>) -> Result<(), EntryError> {
        match r {
            Ok(()) => Ok(()),
            Err(e @ (Errno::NOTSUP | Errno::PERM | Errno::ACCESS)) => {
                self.stats.skipped_xattrs += 1;
                tracing::warn!(xattr = %Path::new(name).display(), error = %e, "xattr not applied");
                Ok(())
            }
            Err(e) => Err(io_err("setxattr")(e)),
        }
    }

    /// Owner, mode, xattrs and times of a node just made that is not opened
    /// (symlink, device, fifo); it was made owned by `current`.
    fn node_meta(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
        current: (u32, u32),
    ) -> Result<(), EntryError> {
        if meta.uid != u32::MAX && (meta.uid, meta.gid) != current {
            rustix::fs::chownat(
                parent,
                name,
                Some(rustix::fs::Uid::from_raw(meta.uid)),
                Some(rustix::fs::Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("chown"))?;
        }
        if chmod {
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(io_err("chmod"))?;
        }
        if !meta.xattrs.is_empty() {
            let path = crate::xattrs::proc_path(parent, name);
            for (xname, value) in &meta.xattrs {
                let r = rustix::fs::lsetxattr(
                    path.as_os_str(),
                    xname.as_os_str(),
                    value,
                    rustix::fs::XattrFlags::empty(),
                );
                self.xattr_result(xname, r)?;
            }
        }
        rustix::fs::utimensat(parent, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("utimensat"))?;
        Ok(())
    }

    fn write_data<I: Input>(
        &mut self,
        stream: &mut Stream<I>,
        entry: &Entry,
        fd: &OwnedFd,
    ) -> Result<(), EntryError> {
        let got = stream.copy_data(entry.size, fd.as_fd())?;
        self.stats.size += got;
        if got < entry.size {
            return Err(EntryError::Truncated {
                expected: entry.size,
                got,
            });
        }
        Ok(())
    }
}

/// Removes the aufs whiteout of `name` in `parent`, if there is one; whether there was.
fn drop_aufs_whiteout(parent: BorrowedFd<'_>, name: &OsStr) -> Result<bool, EntryError> {
    let whiteout = plies_whiteout::whiteout_name(name);
    match rustix::fs::unlinkat(parent, whiteout.as_os_str(), AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT | Errno::NAMETOOLONG) => Ok(false),
        Err(e) => Err(io_err("remove the whiteout of a name made again")(e)),
    }
}

/// Makes the directory `name` in `parent` opaque in aufs's format: an empty
/// `.wh..wh..opq` file in it.
fn mark_aufs_opaque(parent: BorrowedFd<'_>, name: &OsStr) -> Result<(), EntryError> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err("open directory"))?;
    rustix::fs::openat(
        &dir,
        plies_whiteout::OPAQUE_MARKER,
        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o444),
    )
    .map(drop)
    .map_err(io_err("make the opaque marker"))
}
