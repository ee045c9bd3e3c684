//! [`Report`]: every probe for one directory, cached per directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::*;

/// What [`probe_all_with`] does besides probing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeOptions {
    /// Run `modprobe overlay` (and `modprobe aufs`) before reading
    /// `/proc/filesystems`. Off by default: a library should not load modules
    /// unless asked.
    pub load_modules: bool,
    /// How long one probe may take before it is reported as timed out; zero gives
    /// up on every probe at once (each still cleans up after itself in the background).
    pub timeout: Duration,
    /// The most lower layers the stack probe tries.
    pub stack_ceiling: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            load_modules: false,
            timeout: DEFAULT_TIMEOUT,
            stack_ceiling: DEFAULT_STACK_CEILING,
        }
    }
}

/// The answers of every probe for one directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The probed directory, as given.
    pub dir: PathBuf,
    /// The running kernel's version.
    pub kernel: Outcome<KernelVersion>,
    /// `/proc/filesystems`.
    pub filesystems: Outcome<Filesystems>,
    /// Whether the kernel lists `overlay`.
    pub overlay_present: Outcome<()>,
    /// Whether the kernel lists `aufs`.
    pub aufs_present: Outcome<()>,
    /// The filesystem under the directory.
    pub backing_fs: Outcome<BackingFs>,
    /// Whether overlay2 may store layers on it.
    pub overlay2_backing: Outcome<()>,
    /// Whether aufs may store layers on it.
    pub aufs_backing: Outcome<()>,
    /// Whether directory entries carry their type.
    pub d_type: Outcome<()>,
    /// Whether the process runs in a non-initial user namespace.
    pub user_namespace: bool,
    /// Whether overlay mounts need `userxattr`.
    pub userxattr_needed: Outcome<bool>,
    /// Whether overlay takes several lower directories.
    pub multiple_lowers: Outcome<()>,
    /// Whether diffs can be read from upper directories.
    pub native_diff: Outcome<()>,
    /// Whether metacopy is in use.
    pub metacopy: Outcome<bool>,
    /// The overlay `index` parameter's setting, where it exists.
    pub index_parameter: Outcome<bool>,
    /// Whether overlay takes `volatile`.
    pub volatile: Outcome<()>,
    /// Whether `fsopen("overlay")` works.
    pub new_mount_api: Outcome<()>,
    /// Whether overlay takes `lowerdir+` layers.
    pub lowerdir_plus: Outcome<()>,
    /// The deepest stack mounted.
    pub stack_depth: Outcome<StackDepth>,
    /// Whether idmapped mounts can be made.
    pub idmapped_mounts: Outcome<()>,
    /// Whether aufs takes `dirperm1`.
    pub dirperm1: Outcome<()>,
    /// Whether XFS project quota limits can be set.
    pub xfs_project_quota: Outcome<ProjectQuota>,
}

fn flag<T>(o: &Outcome<T>) -> String {
    match o {
        Outcome::Supported { .. } => "true".to_owned(),
        Outcome::Unsupported { reason } => format!("false ({reason})"),
    }
}

fn index_row(o: &Outcome<bool>) -> String {
    match o {
        Outcome::Supported { value: true } => "true (index on by default)".to_owned(),
        Outcome::Supported { value: false } => "true (index off by default)".to_owned(),
        Outcome::Unsupported { reason } => format!("false ({reason})"),
    }
}

impl Report {
    /// The report as the `(name, value)` rows a driver's status shows, Docker's
    /// names first (`Backing Filesystem`, `Supports d_type`, `Native Overlay Diff`,
    /// `userxattr`).
    pub fn rows(&self) -> Vec<(String, String)> {
        let backing = match &self.backing_fs {
            Outcome::Supported { value } => value.to_string(),
            Outcome::Unsupported { .. } => "<unknown>".to_owned(),
        };
        let rows: Vec<(&str, String)> = vec![
            ("Backing Filesystem", backing),
            ("Supports d_type", flag(&self.d_type)),
            ("Native Overlay Diff", flag(&self.native_diff)),
            ("userxattr", self.userxattr_needed.to_string()),
            ("Kernel Version", self.kernel.to_string()),
            ("Overlay Present", flag(&self.overlay_present)),
            ("Overlay2 Backing Filesystem", flag(&self.overlay2_backing)),
            ("Multiple Lower Dirs", flag(&self.multiple_lowers)),
            ("Metacopy", self.metacopy.to_string()),
            ("Index Parameter", index_row(&self.index_parameter)),
            ("Volatile", flag(&self.volatile)),
            ("New Mount API", flag(&self.new_mount_api)),
            ("lowerdir+", flag(&self.lowerdir_plus)),
            ("Max Stack Depth", self.stack_depth.to_string()),
            ("Idmapped Mounts", flag(&self.idmapped_mounts)),
            ("User Namespace", self.user_namespace.to_string()),
            ("aufs Present", flag(&self.aufs_present)),
            ("aufs Backing Filesystem", flag(&self.aufs_backing)),
            ("Dirperm1 Supported", flag(&self.dirperm1)),
            ("XFS Project Quota", self.xfs_project_quota.to_string()),
        ];
        rows.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// Runs every probe on `dir` with [`ProbeOptions::default`] (no module loading).
///
/// Fails only when `dir` is not an existing directory; every probe that cannot run
/// (no privileges, missing feature, timeout) is an [`Outcome::Unsupported`] in the
/// report. Mount probes need root in the initial user namespace.
pub fn probe_all(dir: &Path) -> Result<Report, Error> {
    probe_all_with(dir, &ProbeOptions::default())
}

/// [`probe_all`] with options.
pub fn probe_all_with(dir: &Path, options: &ProbeOptions) -> Result<Report, Error> {
    let meta = std::fs::metadata(dir).map_err(|source| Error::ProbeDir {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let t = options.timeout;
    if options.load_modules {
        for module in ["overlay", "aufs"] {
            if let Outcome::Unsupported { reason } = load_module(module) {
                tracing::debug!("{reason}");
            }
        }
    }
    let kernel = kernel_version();
    let filesystems = filesystems();
    let listed = |name: &str| match &filesystems {
        Outcome::Supported { value } if value.has(name) => Outcome::supported(()),
        Outcome::Supported { .. } => {
            Outcome::unsupported(format!("{name} is not in /proc/filesystems"))
        }
        Outcome::Unsupported { reason } => Outcome::unsupported(reason.clone()),
    };
    let overlay_present = listed("overlay");
    let aufs_present = listed("aufs");
    let backing_fs = crate::backing::backing_fs_within(dir, t);
    let overlay2_backing = match (&backing_fs, &kernel) {
        (Outcome::Supported { value: fs }, Outcome::Supported { value: k }) => {
            overlay2_backing_ok(fs, k)
        }
        (Outcome::Unsupported { reason }, _) | (_, Outcome::Unsupported { reason }) => {
            Outcome::unsupported(reason.clone())
        }
    };
    let aufs_backing = backing_fs.clone().and_then(|fs| aufs_backing_ok(&fs));
    let known_kernel = kernel.value();
    let overlay = &overlay_present;
    // The probes are independent and mostly wait on the disk: run them side by side.
    let probes = std::thread::scope(|sc| {
        let d_type = sc.spawn(|| crate::dtype::d_type_within(dir, t));
        let userxattr_needed = sc.spawn(|| {
            gate(overlay, || {
                crate::overlay::userxattr_needed_within(dir, known_kernel, t)
            })
        });
        let multiple_lowers =
            sc.spawn(|| gate(overlay, || crate::overlay::multiple_lowers_within(dir, t)));
        let native_diff = sc.spawn(|| gate(overlay, || crate::overlay::native_diff_within(dir, t)));
        let metacopy = sc.spawn(|| {
            gate(overlay, || {
                crate::overlay::metacopy_within(dir, known_kernel, t)
            })
        });
        let volatile = sc.spawn(|| gate(overlay, || crate::overlay::volatile_within(dir, t)));
        let lowerdir_plus =
            sc.spawn(|| gate(overlay, || crate::overlay::lowerdir_plus_within(dir, t)));
        let stack_depth = sc.spawn(|| {
            gate(overlay, || {
                crate::stack::stack_depth_within(dir, options.stack_ceiling, None, t)
            })
        });
        let idmapped_mounts = sc.spawn(|| crate::idmap::idmapped_mounts_within(dir, t));
        let dirperm1 = sc.spawn(|| gate(&aufs_present, || crate::aufs::dirperm1_within(dir, t)));
        Probes {
            d_type: joined(d_type),
            userxattr_needed: joined(userxattr_needed),
            multiple_lowers: joined(multiple_lowers),
            native_diff: joined(native_diff),
            metacopy: joined(metacopy),
            volatile: joined(volatile),
            lowerdir_plus: joined(lowerdir_plus),
            stack_depth: joined(stack_depth),
            idmapped_mounts: joined(idmapped_mounts),
            dirperm1: joined(dirperm1),
        }
    });
    let xfs_project_quota = backing_fs
        .clone()
        .and_then(|fs| crate::quota::xfs_project_quota_within(dir, &fs, t));
    Ok(Report {
        dir: dir.to_path_buf(),
        d_type: probes.d_type,
        user_namespace: in_user_namespace(),
        userxattr_needed: probes.userxattr_needed,
        multiple_lowers: probes.multiple_lowers,
        native_diff: probes.native_diff,
        metacopy: probes.metacopy,
        index_parameter: index_parameter(),
        volatile: probes.volatile,
        new_mount_api: gate(&overlay_present, new_mount_api),
        lowerdir_plus: probes.lowerdir_plus,
        stack_depth: probes.stack_depth,
        idmapped_mounts: probes.idmapped_mounts,
        dirperm1: probes.dirperm1,
        xfs_project_quota,
        kernel,
        filesystems,
        overlay_present,
        aufs_present,
        backing_fs,
        overlay2_backing,
        aufs_backing,
    })
}

/// The answers of the probes [`probe_all_with`] runs side by side.
struct Probes {
    d_type: Outcome<()>,
    userxattr_needed: Outcome<bool>,
    multiple_lowers: Outcome<()>,
    native_diff: Outcome<()>,
    metacopy: Outcome<bool>,
    volatile: Outcome<()>,
    lowerdir_plus: Outcome<()>,
    stack_depth: Outcome<StackDepth>,
    idmapped_mounts: Outcome<()>,
    dirperm1: Outcome<()>,
}

/// Runs `probe` only when the filesystem it needs is present.
fn gate<T>(present: &Outcome<()>, probe: impl FnOnce() -> Outcome<T>) -> Outcome<T> {
    match present {
        Outcome::Supported { .. } => probe(),
        Outcome::Unsupported { reason } => Outcome::unsupported(reason.clone()),
    }
}

fn joined<T>(h: std::thread::ScopedJoinHandle<'_, Outcome<T>>) -> Outcome<T> {
    h.join()
        .unwrap_or_else(|_| Outcome::unsupported("the probe panicked"))
}

fn cache() -> &'static Mutex<HashMap<PathBuf, Report>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Report>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// [`probe_all`], run once per directory per process: later calls for the same
/// directory (compared after resolving symlinks) return the first report.
///
/// Concurrent first calls for one directory may both probe; one report wins.
pub fn probe_all_cached(dir: &Path) -> Result<Report, Error> {
    let key = dir.canonicalize().map_err(|source| Error::ProbeDir {
        path: dir.to_path_buf(),
        source,
    })?;
    if let Some(r) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(r.clone());
    }
    let report = probe_all(dir)?;
    let mut map = cache().lock().unwrap_or_else(|p| p.into_inner());
    Ok(map.entry(key).or_insert(report).clone())
}
