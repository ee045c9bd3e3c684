//! A diff applied against another layer than the direct parent: through an aufs
//! mount over a copy of the layer's branch that replaces it only once the apply
//! succeeded, as overlay2 does with its upper.

use std::io::Read;

use plies_archive::WhiteoutFormat;
use plies_mountopts::AufsStack;

use super::Aufs;
use crate::copy::{copy_tree, remove_path};
use crate::error::{Error, Result};
use crate::{naive, native};

impl Aufs {
    /// A diff against another layer than the direct parent, applied onto the
    /// mounted view of `id`. When the layer's branch holds a diff already and
    /// the layer is not mounted, the view is an aufs mount (at
    /// `mnt/<id>-applying`) over a copy of the branch (`diff/<id>-applying`)
    /// that replaces the branch only once the apply succeeded; otherwise the
    /// naive apply runs on the layer's own mount (its branch emptied again on
    /// failure when it was empty).
    pub(super) fn apply_naive(
        &self,
        id: &str,
        diff: &mut dyn Read,
    ) -> Result<plies_archive::ApplyStats> {
        let own = self.store.diff_dir(id);
        let maps = self.remap.maps();
        if self.refcount(id) > 0 || native::is_empty(&own)? {
            return naive::apply(self, id, diff, maps, Some(&own));
        }
        let guard = crate::locks::lock(self.store.locks(), &[id])?;
        if self.refcount(id) > 0 {
            drop(guard);
            return naive::apply(self, id, diff, maps, Some(&own));
        }
        let opts = maps.apply_options(WhiteoutFormat::Merged);
        let lowers = self.store.lowers(id).map_err(|e| Error::store(id, e))?;
        if lowers.is_empty() {
            // Nothing below: the view is the branch itself.
            return native::apply_into(id, &own, diff, &opts, true);
        }
        let staging = native::applying_path(&own);
        let target = native::applying_path(&self.store.mnt_dir(id));
        remove_path(&staging)?;
        let view = native::StagedView {
            id,
            own: &own,
            staging: &staging,
            target: &target,
            scratch: &[],
        };
        view.apply(
            diff,
            &opts,
            || {
                for dir in [&staging, &target] {
                    match rustix::fs::mkdir(dir, rustix::fs::Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(Error::io("mkdir", dir, e)),
                    }
                }
                copy_tree(&own, &staging)?;
                self.remap.own(&staging)?;
                let root = self.store.root();
                let calls = plies_mountopts::plan_aufs(&AufsStack {
                    rw: super::alias::mountable(root, staging.clone())?,
                    ro: lowers
                        .into_iter()
                        .map(|p| super::alias::mountable(root, p))
                        .collect::<Result<_>>()?,
                    label: None,
                    dirperm1: self.dirperm1,
                })
                .map_err(|source| Error::Mount {
                    id: id.to_owned(),
                    source,
                })?;
                let mounted = self
                    .mounter
                    .mount(&calls, &target)
                    .map_err(|source| Error::Mount {
                        id: id.to_owned(),
                        source,
                    });
                // aufs resolved the staging branch's alias when it mounted.
                super::alias::forget(root, &staging);
                mounted
            },
            || self.unmount_at(id, &target, true),
        )
    }
}
