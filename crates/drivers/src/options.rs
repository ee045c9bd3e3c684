//! Driver options, spelled as Docker's `--storage-opt key=value` strings.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use plies_mountopts::{KERNEL_MAX_STACK, MAX_DEPTH, MountMode};

use crate::error::{Error, Result};
use crate::idmap::IdMaps;

/// Which driver [`open`](crate::open) makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DriverChoice {
    /// The driver that already has data under the root, else the first of overlay2,
    /// aufs and vfs that the kernel and the backing filesystem support.
    #[default]
    Auto,
    /// overlayfs with Docker's `overlay2` layout.
    Overlay2,
    /// aufs with Docker's `aufs` layout.
    Aufs,
    /// Full copies, no mounts: runs anywhere.
    Vfs,
}

impl DriverChoice {
    /// The name as Docker spells it: `auto`, `overlay2`, `aufs`, `vfs`.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverChoice::Auto => "auto",
            DriverChoice::Overlay2 => "overlay2",
            DriverChoice::Aufs => "aufs",
            DriverChoice::Vfs => "vfs",
        }
    }
}

impl fmt::Display for DriverChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DriverChoice {
    type Err = Error;

    /// Parses `auto`, `overlay2`, `aufs` or `vfs`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" | "" => Ok(DriverChoice::Auto),
            "overlay2" => Ok(DriverChoice::Overlay2),
            "aufs" => Ok(DriverChoice::Aufs),
            "vfs" => Ok(DriverChoice::Vfs),
            other => Err(Error::UnknownDriver {
                name: other.to_owned(),
            }),
        }
    }
}

/// Driver-wide options.
///
/// Built with [`Options::parse`] from Docker-style `key=value` strings (keys are
/// case-insensitive, as in Docker):
///
/// | key | value | default |
/// |---|---|---|
/// | `overlay2.override_kernel_check` | bool | `false` |
/// | `overlay2.size` | size (`10G`, `512m`, bytes) | none; XFS project quota only |
/// | `overlay2.max_depth` | 1..=500 | 128 |
/// | `overlay2.mount_mode` | `auto`, `legacy`, `fsconfig` | `auto` |
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `overlay2.override_kernel_check`: accepted for compatibility; plies
    /// decides by probing the kernel's features, never by its version.
    pub override_kernel_check: bool,
    /// `overlay2.size`: default size limit of read-write layers, in bytes.
    pub overlay2_size: Option<u64>,
    /// `overlay2.max_depth`: most lower layers of a layer.
    pub max_depth: usize,
    /// `overlay2.mount_mode`: legacy `mount(2)` data, the new mount API, or
    /// legacy up to 128 layers and the new mount API beyond.
    pub mount_mode: MountMode,
    /// User-namespace id maps (Docker's `--userns-remap`); not a `key=value`
    /// option: set with [`Options::with_id_maps`]. Empty by default.
    pub id_maps: IdMaps,
    /// Sweep what killed processes left half made (`-creating`, `-removing`,
    /// `-applying` entries whose layer lock is free) when the driver opens
    /// (default `true`). The sweep lists the whole store; a caller that opens
    /// the driver once per call (the `plies` command) turns it off and leaves
    /// leftovers to the next create or remove of the same id and to `fsck`.
    /// Not a `key=value` option: set with [`Options::with_sweep_on_open`].
    pub sweep_on_open: bool,
    /// Open an existing store to read it and write nothing: no probe runs (the
    /// probe cache is used when valid, else only what needs no scratch mount
    /// is checked), no directory or lock file is made, and every call that
    /// would change a layer, mount one or diff through a scratch mount fails
    /// ([`Error::ReadOnly`](crate::Error::ReadOnly) or the store's read-only
    /// error). For data roots of another owner, such as Docker's. Not a
    /// `key=value` option: set with [`Options::with_read_only`].
    pub read_only: bool,
    /// The keys given to [`Options::parse`], in order, for drivers that take none.
    keys: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            override_kernel_check: false,
            overlay2_size: None,
            max_depth: MAX_DEPTH,
            mount_mode: MountMode::Auto,
            id_maps: IdMaps::default(),
            sweep_on_open: true,
            read_only: false,
            keys: Vec::new(),
        }
    }
}

impl Options {
    /// Parses `key=value` strings.
    ///
    /// # Errors
    /// [`Error::UnknownOption`] for a key not in the table above (or a string
    /// without `=`), [`Error::InvalidOption`] for a value out of range.
    pub fn parse<I, S>(options: I) -> Result<Options>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Options::default();
        for option in options {
            let option = option.as_ref();
            let Some((key, value)) = option.split_once('=') else {
                return Err(Error::UnknownOption {
                    key: option.to_owned(),
                });
            };
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            let bad = |reason: &str| Error::InvalidOption {
                key: key.clone(),
                value: value.to_owned(),
                reason: reason.to_owned(),
            };
            match key.as_str() {
                "overlay2.override_kernel_check" => {
                    out.override_kernel_check =
                        parse_bool(value).ok_or_else(|| bad("not a boolean"))?;
                }
                "overlay2.size" => {
                    out.overlay2_size = Some(parse_size(value).ok_or_else(|| bad("not a size"))?);
                }
                "overlay2.max_depth" => {
                    let depth: usize = value.parse().map_err(|_| bad("not a number"))?;
                    if depth == 0 || depth > KERNEL_MAX_STACK {
                        return Err(bad(&format!("not within 1..={KERNEL_MAX_STACK}")));
                    }
                    out.max_depth = depth;
                }
                "overlay2.mount_mode" => {
                    out.mount_mode = match value {
                        "auto" => MountMode::Auto,
                        "legacy" => MountMode::Legacy,
                        "fsconfig" => MountMode::Fsconfig,
                        _ => return Err(bad("expected auto, legacy or fsconfig")),
                    };
                }
                _ => return Err(Error::UnknownOption { key }),
            }
            out.keys.push(key);
        }
        if out.max_depth > MAX_DEPTH && out.mount_mode == MountMode::Legacy {
            return Err(Error::InvalidOption {
                key: "overlay2.max_depth".to_owned(),
                value: out.max_depth.to_string(),
                reason: format!("legacy mount data holds at most {MAX_DEPTH} layers"),
            });
        }
        Ok(out)
    }

    /// These options with [`Options::read_only`] set.
    #[must_use]
    pub fn with_read_only(mut self, read_only: bool) -> Options {
        self.read_only = read_only;
        self
    }

    /// These options with [`Options::sweep_on_open`] set.
    #[must_use]
    pub fn with_sweep_on_open(mut self, sweep: bool) -> Options {
        self.sweep_on_open = sweep;
        self
    }

    /// These options with [`Options::id_maps`] set.
    #[must_use]
    pub fn with_id_maps(mut self, id_maps: IdMaps) -> Options {
        self.id_maps = id_maps;
        self
    }

    /// The first option given that only overlay2 takes, for drivers that take none.
    pub(crate) fn first_overlay2_key(&self) -> Option<&str> {
        self.keys
            .iter()
            .map(String::as_str)
            .find(|k| k.starts_with("overlay2."))
    }
}

/// Options of one new layer, Docker's `CreateOpts`: [`CreateOptions::default`]
/// and the `with_*` setters.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// SELinux label for the layer's files and mount.
    pub mount_label: Option<String>,
    /// Per-layer storage options (`size` on read-write layers).
    pub storage_opt: BTreeMap<String, String>,
    /// The caller makes the new layer durable itself: it syncs the filesystem
    /// before it relies on the layer and can tell a half-made one after a crash
    /// (as `plies-layerdb` does with its pending records), so the driver skips
    /// the fsyncs of its own creation steps. Off by default: the driver syncs.
    pub deferred_sync: bool,
}

impl CreateOptions {
    /// The same options with the SELinux label `mount_label` (`None` for none).
    pub fn with_mount_label(mut self, mount_label: Option<String>) -> CreateOptions {
        self.mount_label = mount_label;
        self
    }

    /// The same options with the per-layer storage options `storage_opt`.
    pub fn with_storage_opt(mut self, storage_opt: BTreeMap<String, String>) -> CreateOptions {
        self.storage_opt = storage_opt;
        self
    }

    /// The same options with the layer's durability left to the caller or not.
    pub fn with_deferred_sync(mut self, deferred_sync: bool) -> CreateOptions {
        self.deferred_sync = deferred_sync;
        self
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Some(true),
        "0" | "f" | "false" => Some(false),
        _ => None,
    }
}

/// Parses a size as Docker does (`RAMInBytes`): a number with an optional binary
/// suffix `b`, `k`, `m`, `g`, `t`, `p` (optionally followed by `b` or `ib`).
pub(crate) fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(&unit);
    let shift = match unit {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return None,
    };
    let bytes = number * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("10k"), Some(10 << 10));
        assert_eq!(parse_size("10KB"), Some(10 << 10));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("2x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn options() {
        let o = Options::parse(["overlay2.max_depth=400", "Overlay2.Mount_Mode=fsconfig"]).unwrap();
        assert_eq!((o.max_depth, o.mount_mode), (400, MountMode::Fsconfig));
        assert!(matches!(
            Options::parse(["overlay2.nope=1"]),
            Err(Error::UnknownOption { key }) if key == "overlay2.nope"
        ));
        assert!(matches!(
            Options::parse(["overlay2.max_depth=501"]),
            Err(Error::InvalidOption { .. })
        ));
        assert!(matches!(
            Options::parse(["overlay2.max_depth=200", "overlay2.mount_mode=legacy"]),
            Err(Error::InvalidOption { .. })
        ));
        assert!(matches!(
            Options::parse(["novalue"]),
            Err(Error::UnknownOption { .. })
        ));
    }
}
