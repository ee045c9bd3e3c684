//! User-namespace remapping (Docker's `--userns-remap`): the id maps a driver
//! is opened with, and the owner of the directories it makes for layers.

use std::path::Path;

use plies_archive::{ApplyOptions, ExportOptions, IdMap, WhiteoutFormat};

use crate::error::{Error, Result};

/// The uid and gid maps of a user namespace the layers are used in: container
/// ids to host ids, as Docker's `UIDMaps`/`GIDMaps`.
///
/// Empty maps (the default) keep every id as it is. With maps, a driver
/// stores files under their host ids: layer tars applied to it have their
/// owners mapped container to host, diffs map them back, and the directories
/// a container sees (layer roots, mount points) belong to the host ids of the
/// container's root, so that root in the namespace owns its root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMaps {
    /// Container-to-host uid ranges.
    pub uid: Vec<IdMap>,
    /// Container-to-host gid ranges.
    pub gid: Vec<IdMap>,
}

impl IdMaps {
    /// Maps of `uid` and `gid` ranges.
    pub fn new(uid: Vec<IdMap>, gid: Vec<IdMap>) -> IdMaps {
        IdMaps { uid, gid }
    }

    /// Whether both maps are empty: no remapping.
    pub fn is_empty(&self) -> bool {
        self.uid.is_empty() && self.gid.is_empty()
    }

    /// The host uid and gid of the container's root (`0:0`); `(0, 0)` for
    /// empty maps.
    ///
    /// # Errors
    /// [`Error::UnmappedRoot`] when a non-empty map has no range holding 0.
    pub fn root(&self) -> Result<(u32, u32)> {
        Ok((root_of(&self.uid, "uid")?, root_of(&self.gid, "gid")?))
    }
}

fn root_of(map: &[IdMap], kind: &'static str) -> Result<u32> {
    if map.is_empty() {
        return Ok(0);
    }
    map.iter()
        .find(|m| m.container_id == 0 && m.size > 0)
        .map(|m| m.host_id)
        .ok_or(Error::UnmappedRoot { kind })
}

/// What a driver keeps of its id maps: the maps and, when there are any, the
/// owner of the directories it makes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Remap {
    maps: IdMaps,
    owner: Option<(u32, u32)>,
}

impl Remap {
    /// Checks `maps` (container root must map) and keeps them.
    pub(crate) fn new(maps: &IdMaps) -> Result<Remap> {
        let owner = if maps.is_empty() {
            None
        } else {
            Some(maps.root()?)
        };
        Ok(Remap {
            maps: maps.clone(),
            owner,
        })
    }

    /// The maps the driver was opened with.
    pub(crate) fn maps(&self) -> &IdMaps {
        &self.maps
    }

    /// Gives `path` (a directory the driver made) to the container's root;
    /// nothing without maps. Symlinks are not followed.
    pub(crate) fn own(&self, path: &Path) -> Result<()> {
        let Some((uid, gid)) = self.owner else {
            return Ok(());
        };
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io("chown", path, e))
    }
}

impl IdMaps {
    /// Apply options writing `whiteouts`, owners mapped container to host.
    pub(crate) fn apply_options(&self, whiteouts: WhiteoutFormat) -> ApplyOptions {
        ApplyOptions::default()
            .with_whiteouts(whiteouts)
            .with_uid_map(self.uid.clone())
            .with_gid_map(self.gid.clone())
    }

    /// Export options reading `whiteouts`, owners mapped host to container.
    pub(crate) fn export_options(&self, whiteouts: WhiteoutFormat) -> ExportOptions {
        ExportOptions::default()
            .with_whiteouts(whiteouts)
            .with_uid_map(self.uid.clone())
            .with_gid_map(self.gid.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(container_id: u32, host_id: u32, size: u32) -> IdMap {
        IdMap {
            container_id,
            host_id,
            size,
        }
    }

    #[test]
    fn root_ids() {
        assert_eq!(IdMaps::default().root().unwrap(), (0, 0));
        let maps = IdMaps::new(
            vec![range(1, 200_001, 10), range(0, 100_000, 1)],
            vec![range(0, 300_000, 65536)],
        );
        assert_eq!(maps.root().unwrap(), (100_000, 300_000));
        let no_root = IdMaps::new(vec![range(1, 100_001, 10)], vec![range(0, 5, 1)]);
        assert!(matches!(
            no_root.root(),
            Err(Error::UnmappedRoot { kind: "uid" })
        ));
        let empty_range = IdMaps::new(vec![range(0, 5, 1)], vec![range(0, 5, 0)]);
        assert!(matches!(
            empty_range.root(),
            Err(Error::UnmappedRoot { kind: "gid" })
        ));
        assert!(Remap::new(&no_root).is_err());
        assert!(Remap::new(&IdMaps::default()).unwrap().owner.is_none());
    }
}
