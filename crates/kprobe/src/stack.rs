//! How many lower layers the kernel's overlayfs takes, found by mounting.

use std::path::Path;
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{FsOpenFlags, MountFlags};

use crate::overlay::mount_lowerdir_plus;
use crate::scratch::{Scratch, bounded, refused};
use crate::{DEFAULT_TIMEOUT, Outcome};

/// How the stack depth was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StackMethod {
    /// One `fsconfig(FSCONFIG_SET_STRING, "lowerdir+", …)` per layer (kernel 6.8 and newer).
    LowerdirPlus,
    /// A single `lowerdir=a:b:…` in `mount(2)` data, which must fit in one page.
    MountData,
}

/// The deepest overlay the kernel mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StackDepth {
    /// The most lower layers one overlay mount took.
    pub max_lowers: usize,
    /// How the layers were handed to the kernel.
    pub method: StackMethod,
    /// `true` when the probe stopped at its ceiling (or, with mount data, at the
    /// page size) without the kernel refusing: the kernel's own limit is at least
    /// `max_lowers`.
    pub capped: bool,
}

impl std::fmt::Display for StackDepth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let method = match self.method {
            StackMethod::LowerdirPlus => "lowerdir+",
            StackMethod::MountData => "mount data",
        };
        let at_least = if self.capped { "at least " } else { "" };
        write!(f, "{at_least}{} ({method})", self.max_lowers)
    }
}

/// The default ceiling of [`stack_depth`]: well above any kernel's known limit (500).
pub const DEFAULT_STACK_CEILING: usize = 1024;

/// The deepest stack of lower layers the kernel mounts, up to `ceiling` layers.
///
/// Uses `lowerdir+` where the kernel has it; otherwise `lowerdir=` mount data with
/// two-character layer names relative to the scratch directory, which bounds the
/// answer by the page size (then [`StackDepth::capped`] says so). Layers are
/// read-only lowers with no upper directory. Unsupported when not even two layers
/// mount (no overlay, no privileges).
pub fn stack_depth(dir: &Path, ceiling: usize) -> Outcome<StackDepth> {
    stack_depth_within(dir, ceiling, None, DEFAULT_TIMEOUT)
}

/// [`stack_depth`] with one given method and no fallback (to compare the two, or
/// to measure what `lowerdir=` mount data reaches on a kernel that has `lowerdir+`).
pub fn stack_depth_using(dir: &Path, ceiling: usize, method: StackMethod) -> Outcome<StackDepth> {
    stack_depth_within(dir, ceiling, Some(method), DEFAULT_TIMEOUT)
}

pub(crate) fn stack_depth_within(
    dir: &Path,
    ceiling: usize,
    method: Option<StackMethod>,
    timeout: Duration,
) -> Outcome<StackDepth> {
    let ceiling = ceiling.clamp(2, MAX_NAMES);
    bounded("stack-depth", dir, timeout, move |s| {
        let mut layers = Layers {
            names: (0..ceiling).map(layer_name).collect(),
            made: 0,
        };
        match method {
            Some(StackMethod::MountData) => return with_mount_data(s, &mut layers),
            Some(StackMethod::LowerdirPlus) => {
                return with_lowerdir_plus(s, &mut layers).unwrap_or_else(Outcome::unsupported);
            }
            None => {}
        }
        match with_lowerdir_plus(s, &mut layers) {
            Ok(depth) => depth,
            Err(reason) => {
                tracing::debug!("lowerdir+ unusable ({reason}); measuring with mount data");
                with_mount_data(s, &mut layers)
                    .map_unsupported(|r| format!("{r}; lowerdir+ also failed: {reason}"))
            }
        }
    })
}

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const MAX_NAMES: usize = 36 * 36;

/// Two-character layer directory names, `00` … `zz`.
fn layer_name(i: usize) -> String {
    let hi = ALPHABET[i / 36] as char;
    let lo = ALPHABET[i % 36] as char;
    format!("{hi}{lo}")
}

/// The layer directories, made only as the probe reaches them (removing
/// directories is slow on some disks, and the kernel's limit is usually far
/// below the ceiling).
struct Layers {
    names: Vec<String>,
    made: usize,
}

impl Layers {
    /// Makes sure the first `n` layer directories exist.
    fn ensure(&mut self, s: &Scratch, n: usize) -> Result<(), String> {
        while self.made < n {
            s.mkdirs(&[self.names[self.made].as_str()])?;
            self.made += 1;
        }
        Ok(())
    }
}

/// `Err` when `lowerdir+` itself is unavailable, so mount data should be tried.
fn with_lowerdir_plus(s: &Scratch, layers: &mut Layers) -> Result<Outcome<StackDepth>, String> {
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| refused("fsopen(\"overlay\")", e))?;
    // The kernel checks the layer count as each layer is added.
    let mut accepted = 0;
    for i in 0..layers.names.len() {
        if let Err(r) = layers.ensure(s, i + 1) {
            return Ok(Outcome::unsupported(r));
        }
        let name = &layers.names[i];
        match rustix::mount::fsconfig_set_string(&fs, "lowerdir+", name.as_str()) {
            Ok(()) => accepted += 1,
            Err(e) if accepted == 0 => return Err(refused("fsconfig lowerdir+", e)),
            Err(_) => break,
        }
    }
    drop(fs);
    if accepted < 2 {
        return Ok(Outcome::unsupported(
            "the kernel took fewer than two lowerdir+ layers",
        ));
    }
    let names = &layers.names;
    let capped = accepted == names.len();
    // Confirm by mounting; search lower if the limit bites only at creation.
    let mounts = |n: usize| mount_lowerdir_plus(&names[..n]).is_supported();
    if mounts(accepted) {
        return Ok(Outcome::supported(StackDepth {
            max_lowers: accepted,
            method: StackMethod::LowerdirPlus,
            capped,
        }));
    }
    if let Outcome::Unsupported { reason } = mount_lowerdir_plus(&names[..2]) {
        return Err(reason);
    }
    let max = highest_passing(2, accepted, mounts);
    Ok(Outcome::supported(StackDepth {
        max_lowers: max,
        method: StackMethod::LowerdirPlus,
        capped: false,
    }))
}

fn with_mount_data(s: &mut Scratch, layers: &mut Layers) -> Outcome<StackDepth> {
    if let Err(r) = s.mkdirs(&["m"]) {
        return Outcome::unsupported(r);
    }
    let names = layers.names.clone();
    let data = |n: usize| format!("lowerdir={}", names[..n].join(":"));
    // The data and its NUL must fit in one page.
    let page = rustix::param::page_size();
    let mut fit = names.len();
    while fit > 2 && data(fit).len() > page - 1 {
        fit -= 1;
    }
    let mut try_mount = |n: usize| -> Result<(), Errno> {
        if let Err(r) = layers.ensure(s, n) {
            tracing::debug!("{r}");
            return Err(Errno::IO);
        }
        s.mount("overlay", "m", "overlay", MountFlags::RDONLY, &data(n))?;
        if let Err(e) = s.unmount("m") {
            tracing::warn!("cannot unmount the stack probe's overlay: {e}");
        }
        Ok(())
    };
    if let Err(e) = try_mount(2) {
        return Outcome::unsupported(refused("overlay mount with two lowers", e));
    }
    if try_mount(fit).is_ok() {
        return Outcome::supported(StackDepth {
            max_lowers: fit,
            method: StackMethod::MountData,
            capped: true,
        });
    }
    let max = highest_passing(2, fit, |n| try_mount(n).is_ok());
    Outcome::supported(StackDepth {
        max_lowers: max,
        method: StackMethod::MountData,
        capped: false,
    })
}

/// The largest `n` in `ok..fail` for which `test(n)` holds, given `test(ok)` holds,
/// `test(fail)` does not, and `test` is monotonic.
fn highest_passing(mut ok: usize, mut fail: usize, mut test: impl FnMut(usize) -> bool) -> usize {
    while fail - ok > 1 {
        let mid = ok + (fail - ok) / 2;
        if test(mid) {
            ok = mid;
        } else {
            fail = mid;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_two_chars_and_distinct() {
        let names: Vec<String> = (0..MAX_NAMES).map(layer_name).collect();
        assert!(names.iter().all(|n| n.len() == 2));
        let set: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(set.len(), MAX_NAMES);
        assert_eq!(layer_name(0), "00");
        assert_eq!(layer_name(MAX_NAMES - 1), "zz");
    }

    #[test]
    fn binary_search_finds_the_edge() {
        for limit in 2..40 {
            assert_eq!(highest_passing(2, 40, |n| n <= limit), limit.min(39));
        }
    }

    #[test]
    fn a_page_of_mount_data_holds_over_a_thousand_names() {
        let data = format!(
            "lowerdir={}",
            (0..1024).map(layer_name).collect::<Vec<_>>().join(":")
        );
        assert!(data.len() < 4095);
    }
}
