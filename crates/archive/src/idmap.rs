//! User and group id maps (Docker's `IDMap` semantics).

use crate::error::Error;

/// One range of an id map: `size` ids from `container_id` in the container
/// correspond to `size` ids from `host_id` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First id of the range inside the container.
    pub container_id: u32,
    /// First id of the range on the host.
    pub host_id: u32,
    /// Number of ids in the range.
    pub size: u32,
}

/// Maps a container id to a host id; an empty map is the identity.
pub(crate) fn to_host(map: &[IdMap], id: u64, kind: &'static str) -> Result<u64, Error> {
    translate(map, id, kind, |m| (m.container_id, m.host_id))
}

/// Maps a host id to a container id; an empty map is the identity.
pub(crate) fn to_container(map: &[IdMap], id: u64, kind: &'static str) -> Result<u64, Error> {
    translate(map, id, kind, |m| (m.host_id, m.container_id))
}

fn translate(
    map: &[IdMap],
    id: u64,
    kind: &'static str,
    sides: impl Fn(&IdMap) -> (u32, u32),
) -> Result<u64, Error> {
    if map.is_empty() {
        return Ok(id);
    }
    for m in map {
        let (from, to) = sides(m);
        let from = u64::from(from);
        if id >= from && id - from < u64::from(m.size) {
            return Ok(u64::from(to) + (id - from));
        }
    }
    Err(Error::Unmapped { kind, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: [IdMap; 2] = [
        IdMap {
            container_id: 0,
            host_id: 100_000,
            size: 1000,
        },
        IdMap {
            container_id: 1000,
            host_id: 5000,
            size: 1,
        },
    ];

    #[test]
    fn maps_both_ways() {
        assert_eq!(to_host(&MAP, 0, "uid").unwrap(), 100_000);
        assert_eq!(to_host(&MAP, 999, "uid").unwrap(), 100_999);
        assert_eq!(to_host(&MAP, 1000, "uid").unwrap(), 5000);
        assert_eq!(to_container(&MAP, 100_999, "uid").unwrap(), 999);
        assert_eq!(to_container(&MAP, 5000, "gid").unwrap(), 1000);
        assert!(matches!(
            to_host(&MAP, 1001, "uid"),
            Err(Error::Unmapped { id: 1001, .. })
        ));
        assert!(matches!(
            to_container(&MAP, 0, "gid"),
            Err(Error::Unmapped { kind: "gid", .. })
        ));
        assert_eq!(to_host(&[], 42, "uid").unwrap(), 42);
    }
}
