//! XFS project quota, as far as it can be seen without `quotactl(2)`.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::Outcome;
use crate::backing::{BackingFs, MAGIC_XFS};

/// An XFS filesystem mounted with project quota.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectQuota {
    /// The mount point holding the probed directory.
    pub mount_point: PathBuf,
    /// The quota option found among the mount's superblock options.
    pub option: String,
}

impl std::fmt::Display for ProjectQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {} (from mount options)",
            self.option,
            self.mount_point.display()
        )
    }
}

/// One mount of `/proc/self/mountinfo`, the fields the probes read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub(crate) mount_point: PathBuf,
    pub(crate) fstype: String,
    pub(crate) super_options: Vec<String>,
}

/// Parses `/proc/self/mountinfo`; lines it cannot read are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let mount_point = head.split(' ').nth(4)?;
            let mut tail = tail.split(' ');
            let fstype = tail.next()?;
            let _source = tail.next()?;
            let super_options = tail.next().unwrap_or("");
            Some(MountEntry {
                mount_point: unescape(mount_point),
                fstype: fstype.to_owned(),
                super_options: super_options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// The mount points of this process's mount namespace, from `/proc/self/mountinfo`,
/// in its order (octal escapes undone, bytes kept as they are).
///
/// # Errors
/// Reading `/proc/self/mountinfo` failed.
pub fn mount_points() -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> PathBuf {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mount holding `path` (absolute, canonical): the last entry whose mount
/// point is its longest prefix.
pub(crate) fn mount_of<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best
                .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best
}

const PROJECT_QUOTA_OPTIONS: &[&str] = &["prjquota", "pquota", "pqnoenforce", "prjqnoenforce"];

/// Whether `dir` is on XFS mounted with project quota.
///
/// What is checked: the backing filesystem's magic is XFS and the mount holding
/// `dir` in `/proc/self/mountinfo` carries a project quota option. Whether a limit
/// can actually be set needs `quotactl(2)`, which rustix 1.1 does not wrap, so it
/// is not tried.
pub fn xfs_project_quota(dir: &Path, backing: &BackingFs) -> Outcome<ProjectQuota> {
    if backing.magic != MAGIC_XFS {
        return Outcome::unsupported(format!("backing filesystem is {backing}, not xfs"));
    }
    let path = match dir.canonicalize() {
        Ok(p) => p,
        Err(e) => return Outcome::unsupported(format!("cannot resolve {}: {e}", dir.display())),
    };
    // A mount point that is not UTF-8 cannot match below; the others still can.
    let text = match std::fs::read("/proc/self/mountinfo") {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(e) => return Outcome::unsupported(format!("cannot read /proc/self/mountinfo: {e}")),
    };
    let mounts = parse_mountinfo(&text);
    let Some(mount) = mount_of(&mounts, &path) else {
        return Outcome::unsupported(format!("no mount holds {}", path.display()));
    };
    match mount
        .super_options
        .iter()
        .find(|o| PROJECT_QUOTA_OPTIONS.contains(&o.as_str()))
    {
        Some(option) => Outcome::supported(ProjectQuota {
            mount_point: mount.mount_point.clone(),
            option: option.clone(),
        }),
        None => Outcome::unsupported(format!(
            "{} is mounted without project quota (no prjquota/pquota option)",
            mount.mount_point.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:27 / /var/lib/my\\040store rw,relatime shared:9 - xfs /dev/vdb rw,attr2,inode64,prjquota
31 30 0:28 / /var/lib/my\\040store/sub rw - tmpfs tmpfs rw,size=100k
";

    #[test]
    fn parses_mount_points_types_and_options() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, Path::new("/var/lib/my store"));
        assert_eq!(m[1].fstype, "xfs");
        assert!(m[1].super_options.iter().any(|o| o == "prjquota"));
    }

    #[test]
    fn finds_the_innermost_mount() {
        let m = parse_mountinfo(MOUNTINFO);
        let at = |p: &str| mount_of(&m, Path::new(p)).map(|e| e.fstype.as_str());
        assert_eq!(at("/var/lib/my store/x"), Some("xfs"));
        assert_eq!(at("/var/lib/my store/sub/y"), Some("tmpfs"));
        assert_eq!(at("/var/lib/my storex"), Some("ext4"));
        assert_eq!(at("/etc"), Some("ext4"));
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), Path::new("a b\tc\\d"));
        assert_eq!(unescape("trailing\\04"), Path::new("trailing\\04"));
    }
}
