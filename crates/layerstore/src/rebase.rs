//! Rebasing a base layer onto a parent: what containerd's parallel unpack asks
//! of a snapshotter when it commits a layer it applied on no parent.

use rustix::fs::{AtFlags, renameat, unlinkat};
use rustix::io::Errno;

use crate::disk::{make_dir, sync, write_new_file};
use crate::error::{Error, Result, io_err};
use crate::id::check_id;
use crate::lower::format_lower;
use crate::overlay2::{META_FILE_MODE, Overlay2Store, PRIVATE_DIR_MODE};

impl Overlay2Store {
    /// Puts the base layer `id` on `parent`: writes its `lower` file (the
    /// parent's link, then the parent's lowers) and makes its `work` dir, as
    /// [`Overlay2Store::create`] would have on that parent. An overlay2 layer's
    /// `diff` holds its own changes only (whiteouts included), so nothing
    /// else changes. Done again on the same parent it does nothing, so a call
    /// a crash cut short can be repeated.
    ///
    /// The caller must not have the layer mounted (its mount would still show
    /// the old stack).
    ///
    /// # Errors
    /// [`Error::NotFound`] for `id`, [`Error::ParentNotFound`],
    /// [`Error::TooDeep`]; [`Error::Rebased`] when `id` already sits on
    /// another parent; I/O errors.
    pub fn rebase(&self, id: &str, parent: &str) -> Result<()> {
        check_id(id)?;
        check_id(parent)?;
        let _guard = self.locks.lock(&[id, parent])?;
        let dir = self.open_layer(id)?;
        let pdir = match self.open_layer(parent) {
            Ok(fd) => fd,
            Err(Error::NotFound { .. }) => {
                return Err(Error::ParentNotFound {
                    id: id.to_owned(),
                    parent: parent.to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        let mut lowers = vec![self.read_link_file(parent, &pdir)?];
        lowers.extend(self.read_lower(parent, &pdir)?);
        if lowers.len() > self.opts.max_depth {
            return Err(Error::TooDeep {
                id: id.to_owned(),
                depth: lowers.len(),
                max: self.opts.max_depth,
            });
        }
        let current = self.read_lower(id, &dir)?;
        if current == lowers {
            return Ok(());
        }
        if !current.is_empty() {
            return Err(Error::Rebased {
                id: id.to_owned(),
                parent: parent.to_owned(),
            });
        }
        let path = self.layer_dir(id);
        match make_dir(&dir, "work", PRIVATE_DIR_MODE) {
            Ok(_) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_err("create", path.join("work"), e)),
        }
        // Written aside and renamed: a `lower` file is there whole or not at all.
        let tmp = "lower.rebasing";
        match unlinkat(&dir, tmp, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err("unlink", path.join(tmp), e)),
        }
        write_new_file(
            &dir,
            tmp,
            format_lower(&lowers).as_bytes(),
            META_FILE_MODE,
            self.opts.durable,
        )
        .map_err(|e| io_err("write", path.join(tmp), e))?;
        renameat(&dir, tmp, &dir, "lower").map_err(|e| io_err("rename", path.join(tmp), e))?;
        sync(&dir, self.opts.durable).map_err(|e| io_err("fsync", &path, e))?;
        // A parent is only read from now on (as on create).
        self.mark_committed(parent)
    }
}
