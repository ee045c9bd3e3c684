//! aufs mount calls: a first `mount(2)` with as many branches as fit in a page, then
//! `MS_REMOUNT` calls that append the rest.
//!
//! Data of the first call: `br:<rw>=rw:<ro1>=ro+wh:…,dio,xino=/dev/shm/aufs.xino`
//! (`,dirperm1` where aufs takes it), then `,context="<label>"`. Each later call:
//! `append:<ro>=ro+wh,append:…` then the label. Every call's data fits in
//! `page_size() - 1` bytes, budgeted from the real option and label lengths. aufs has
//! no escapes, so a branch holding `:`, `=` or `,` is refused.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::escape::check_path;
use crate::label::{check_label, format_mount_label, label_suffix_len};
use crate::limits::mount_data_limit;

/// The options after the branches of the first aufs mount.
pub const AUFS_OPTIONS: &str = "dio,xino=/dev/shm/aufs.xino";

/// One system call of an aufs mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AufsCall {
    /// `mount("none", target, "aufs", 0, data)`.
    Mount(OsString),
    /// `mount("none", target, "aufs", MS_REMOUNT, data)` appending branches.
    Append(OsString),
}

impl AufsCall {
    /// The call's mount data.
    pub fn data(&self) -> &OsStr {
        match self {
            AufsCall::Mount(d) | AufsCall::Append(d) => d,
        }
    }
}

/// What an aufs mount stacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AufsStack {
    /// The writable branch (the layer's diff dir).
    pub rw: PathBuf,
    /// Read-only branches, uppermost first.
    pub ro: Vec<PathBuf>,
    /// SELinux label, if any.
    pub label: Option<String>,
    /// Add `dirperm1` (where the aufs module accepts it).
    pub dirperm1: bool,
}

fn check_branch(path: &Path) -> Result<()> {
    check_path("aufs branch", path.as_os_str(), true)?;
    let bytes = path.as_os_str().as_bytes();
    if bytes.iter().any(|b| matches!(b, b':' | b'=' | b',')) {
        return Err(Error::InvalidPath {
            role: "aufs branch",
            path: path.to_path_buf(),
            reason: "aufs cannot escape ':', '=' or ','",
        });
    }
    if !path.is_absolute() {
        return Err(Error::InvalidPath {
            role: "aufs branch",
            path: path.to_path_buf(),
            reason: "it is not absolute",
        });
    }
    Ok(())
}

/// Plans the calls that mount `stack`, every call's data within `page_size() - 1` bytes.
///
/// Errors: a branch that is empty, relative, or holds NUL, newline, `"`, `:`, `=` or
/// `,`; an unusable label; [`Error::BranchTooLong`] when the writable branch does not
/// fit in the first call or a read-only branch does not fit in an append call alone.
pub fn plan_aufs(stack: &AufsStack) -> Result<Vec<AufsCall>> {
    plan_aufs_within(stack, mount_data_limit())
}

fn plan_aufs_within(stack: &AufsStack, limit: usize) -> Result<Vec<AufsCall>> {
    check_branch(&stack.rw)?;
    for ro in &stack.ro {
        check_branch(ro)?;
    }
    let label = stack.label.as_deref().filter(|l| !l.is_empty());
    if let Some(l) = label {
        check_label(l)?;
    }
    let label_len = label_suffix_len(label);
    let options = if stack.dirperm1 {
        format!("{AUFS_OPTIONS},dirperm1")
    } else {
        AUFS_OPTIONS.to_string()
    };

    // First call: br:<rw>=rw[:<ro>=ro+wh]*,<options>[,context="…"]
    let mut first = Vec::with_capacity(limit);
    first.extend_from_slice(b"br:");
    first.extend_from_slice(stack.rw.as_os_str().as_bytes());
    first.extend_from_slice(b"=rw");
    let fixed = 1 + options.len() + label_len;
    if first.len() + fixed > limit {
        return Err(Error::BranchTooLong {
            branch: stack.rw.clone(),
            needed: first.len() + fixed,
            limit,
        });
    }
    let mut next = 0;
    while let Some(ro) = stack.ro.get(next) {
        let add = 1 + ro.as_os_str().len() + "=ro+wh".len();
        if first.len() + add + fixed > limit {
            break;
        }
        first.push(b':');
        first.extend_from_slice(ro.as_os_str().as_bytes());
        first.extend_from_slice(b"=ro+wh");
        next += 1;
    }
    first.push(b',');
    first.extend_from_slice(options.as_bytes());
    let mut calls = vec![AufsCall::Mount(with_label(first, label))];

    // Appends: append:<ro>=ro+wh[,append:<ro>=ro+wh]*[,context="…"]
    while next < stack.ro.len() {
        let mut data: Vec<u8> = Vec::with_capacity(limit);
        while let Some(ro) = stack.ro.get(next) {
            let add = usize::from(!data.is_empty())
                + "append:".len()
                + ro.as_os_str().len()
                + "=ro+wh".len();
            if data.len() + add + label_len > limit {
                if data.is_empty() {
                    return Err(Error::BranchTooLong {
                        branch: ro.clone(),
                        needed: add + label_len,
                        limit,
                    });
                }
                break;
            }
            if !data.is_empty() {
                data.push(b',');
            }
            data.extend_from_slice(b"append:");
            data.extend_from_slice(ro.as_os_str().as_bytes());
            data.extend_from_slice(b"=ro+wh");
            next += 1;
        }
        calls.push(AufsCall::Append(with_label(data, label)));
    }
    Ok(calls)
}

fn with_label(mut data: Vec<u8>, label: Option<&str>) -> OsString {
    if let Some(l) = label {
        // `data` is never empty here, so this is `,context="…"`.
        data.extend_from_slice(&format_mount_label("-", l).as_bytes()[1..]);
    }
    OsString::from_vec(data)
}

/// Reads the branches back out of a call list: the writable branch and the read-only
/// ones in order. The inverse of [`plan_aufs`], for checking plans; `None` when the
/// calls are not of the form it produces.
pub fn decode_branches(calls: &[AufsCall]) -> Option<(PathBuf, Vec<PathBuf>)> {
    let (first, rest) = calls.split_first()?;
    let AufsCall::Mount(data) = first else {
        return None;
    };
    let data = strip_label(data.as_bytes());
    let br = data.strip_prefix(b"br:")?;
    let branches = br.split(|&b| b == b',').next()?;
    let mut parts = branches.split(|&b| b == b':');
    let rw = parts.next()?.strip_suffix(b"=rw")?;
    let mut ro = Vec::new();
    for part in parts {
        ro.push(path_of(part.strip_suffix(b"=ro+wh")?));
    }
    for call in rest {
        let AufsCall::Append(data) = call else {
            return None;
        };
        for chunk in strip_label(data.as_bytes()).split(|&b| b == b',') {
            ro.push(path_of(
                chunk.strip_prefix(b"append:")?.strip_suffix(b"=ro+wh")?,
            ));
        }
    }
    Some((path_of(rw), ro))
}

fn strip_label(data: &[u8]) -> &[u8] {
    match data
        .windows(b",context=".len())
        .position(|w| w == b",context=")
    {
        Some(at) => &data[..at],
        None => data,
    }
}

fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(n: usize, label: Option<&str>) -> AufsStack {
        AufsStack {
            rw: "/var/lib/docker/aufs/diff/rw".into(),
            ro: (0..n)
                .map(|i| PathBuf::from(format!("/var/lib/docker/aufs/diff/{i:064}")))
                .collect(),
            label: label.map(str::to_string),
            dirperm1: true,
        }
    }

    #[test]
    fn small_stack_is_one_call() {
        let mut s = stack(0, None);
        s.ro = vec!["/a".into(), "/b".into()];
        let calls = plan_aufs_within(&s, 4095).unwrap();
        assert_eq!(
            calls,
            vec![AufsCall::Mount(
                "br:/var/lib/docker/aufs/diff/rw=rw:/a=ro+wh:/b=ro+wh,dio,xino=/dev/shm/aufs.xino,dirperm1"
                    .into()
            )]
        );
    }

    #[test]
    fn branch_that_cannot_fit_is_an_error_not_a_loop() {
        let mut s = stack(0, None);
        s.ro = vec![PathBuf::from(format!("/{}", "x".repeat(5000)))];
        assert!(matches!(
            plan_aufs_within(&s, 4095),
            Err(Error::BranchTooLong { .. })
        ));
        s.ro.clear();
        s.rw = PathBuf::from(format!("/{}", "x".repeat(5000)));
        assert!(matches!(
            plan_aufs_within(&s, 4095),
            Err(Error::BranchTooLong { .. })
        ));
    }

    #[test]
    fn refuses_unescapable_branches() {
        for bad in ["/a:b", "/a=b", "/a,b", "rel", ""] {
            let mut s = stack(0, None);
            s.ro = vec![bad.into()];
            assert!(matches!(
                plan_aufs_within(&s, 4095),
                Err(Error::InvalidPath { .. })
            ));
        }
    }

    #[test]
    fn decode_inverts_plan() {
        let s = stack(200, Some("system_u:object_r:container_file_t:s0:c1,c2"));
        let calls = plan_aufs_within(&s, 4095).unwrap();
        assert!(calls.len() > 1);
        assert_eq!(decode_branches(&calls), Some((s.rw.clone(), s.ro.clone())));
    }
}
