//! A diff applied against another layer than the direct parent: through a
//! mounted view, over a copy of the layer's upper that replaces it only once the
//! apply succeeded.

use std::io::Read;

use plies_archive::WhiteoutFormat;

use super::Overlay2;
use crate::error::{Error, Result};
use crate::{mounts, naive, native};

impl Overlay2 {
    /// A diff against another layer than the direct parent, applied onto the
    /// mounted view of `id`. When the layer's upper holds a diff already and the
    /// layer is not in use, the view is mounted over a copy of the upper that
    /// replaces it only once the apply succeeded; otherwise the naive apply runs
    /// on the layer's own mount (its upper emptied again on failure when it was
    /// empty).
    pub(super) fn apply_naive(
        &self,
        id: &str,
        diff: &mut dyn Read,
    ) -> Result<plies_archive::ApplyStats> {
        let own = self.store.diff_dir(id);
        let maps = self.remap.maps();
        let committed = self
            .store
            .is_committed(id)
            .map_err(|e| Error::store(id, e))?;
        if committed || self.refcount(id) > 0 || native::is_empty(&own)? {
            return naive::apply(self, id, diff, maps, Some(&own));
        }
        let guard = crate::locks::lock(self.store.locks(), &[id])?;
        if self.refcount(id) > 0 {
            drop(guard);
            return naive::apply(self, id, diff, maps, Some(&own));
        }
        let opts = maps.apply_options(WhiteoutFormat::Merged);
        let lowers = self
            .store
            .lower_entries(id)
            .map_err(|e| Error::store(id, e))?;
        if lowers.is_empty() {
            // Nothing below: the view is the upper itself.
            return native::apply_into(id, &own, diff, &opts, true);
        }
        let dir = self.home.join(id);
        let staging = native::applying_path(&own);
        let work_name = format!("work{}", native::APPLYING);
        let target_name = format!("merged{}", native::APPLYING);
        let (work, target) = (dir.join(&work_name), dir.join(&target_name));
        for d in [&staging, &work, &target] {
            crate::copy::remove_path(d)?;
        }
        let staged_name = format!("diff{}", native::APPLYING);
        let view = native::StagedView {
            id,
            own: &own,
            staging: &staging,
            target: &target,
            scratch: &[&work],
        };
        view.apply(
            diff,
            &opts,
            || {
                rustix::fs::mkdir(&staging, rustix::fs::Mode::from_raw_mode(0o700))
                    .map_err(|e| Error::io("mkdir", &staging, e))?;
                crate::copy::copy_tree(&own, &staging)?;
                rustix::fs::mkdir(&work, rustix::fs::Mode::from_raw_mode(0o700))
                    .map_err(|e| Error::io("mkdir", &work, e))?;
                self.remap.own(&work)?;
                self.mount_at(
                    id,
                    None,
                    None,
                    lowers,
                    Some((&staged_name, &work_name)),
                    &target,
                )
                .map(drop)
            },
            || mounts::detach(id, &target).map(drop),
        )
    }
}
