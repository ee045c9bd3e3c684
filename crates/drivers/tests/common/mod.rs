//! Helpers shared by the test binaries: drivers on temporary roots, layer tars
//! built from a list of entries, trees read through a driver, and tar listings.
#![allow(dead_code)]

use std::path::Path;

use plies_drivers::{CreateOptions, Driver, DriverChoice, Options};
use plies_testkit::layer_tar::LayerTar;
use plies_testkit::tree::{Record, Tree, snapshot};

/// A driver on a temporary root; cleaned up (every mount, then the root) when dropped.
pub struct Rig {
    pub driver: Box<dyn Driver>,
    pub dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.driver.cleanup();
        let left = plies_testkit::mounts_under(self.dir.path());
        for m in &left {
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
        if !std::thread::panicking() {
            assert!(left.is_empty(), "mounts left behind: {left:?}");
        }
    }
}

/// A temporary directory on the same filesystem as the repository (not a tmpfs),
/// so that overlayfs and xattrs behave as on a real store.
pub fn tempdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

pub fn rig(choice: DriverChoice, options: &[&str]) -> Rig {
    let dir = tempdir();
    let opts = Options::parse(options).unwrap();
    let driver = plies_drivers::open(dir.path(), choice, &opts).unwrap();
    Rig { driver, dir }
}

pub fn vfs() -> Option<Rig> {
    plies_testkit::require_root("vfs conformance (owners, devices)")
        .then(|| rig(DriverChoice::Vfs, &[]))
}

pub fn overlay2() -> Option<Rig> {
    plies_testkit::require_overlay("overlay2 conformance").then(|| rig(DriverChoice::Overlay2, &[]))
}

pub fn overlay2_fsconfig() -> Option<Rig> {
    (plies_testkit::require_overlay("overlay2 fsconfig conformance")
        && plies_testkit::require_kernel_feature(
            "overlay2 fsconfig conformance",
            plies_testkit::kernel_has_lowerdir_plus(),
            "overlayfs lowerdir+ (Linux 6.8)",
        ))
    .then(|| {
        rig(
            DriverChoice::Overlay2,
            &["overlay2.mount_mode=fsconfig", "overlay2.max_depth=500"],
        )
    })
}

/// The directory name of the recording aufs driver's root.
const RECORDED_ROOT: &str = "aufs-recorded";

/// aufs through the recording mounter (whether or not the kernel has aufs), and
/// the mounter.
pub fn aufs_recorded() -> Option<(Rig, std::sync::Arc<plies_drivers::RecordingMounter>)> {
    plies_testkit::require_root("aufs conformance (owners, devices)").then(|| {
        let dir = tempdir();
        let mounter = std::sync::Arc::new(plies_drivers::RecordingMounter::new());
        let driver = plies_drivers::Aufs::open_with(
            &dir.path().join(RECORDED_ROOT),
            &Options::default(),
            mounter.clone(),
        )
        .unwrap();
        (
            Rig {
                driver: Box::new(driver),
                dir,
            },
            mounter,
        )
    })
}

/// Whether `d` is the recording aufs driver of [`aufs_recorded`], whose mounts
/// are read-only snapshots: what is written through them never reaches a branch.
pub fn recorded(d: &dyn Driver) -> bool {
    d.name() == "aufs" && d.root().file_name() == Some(std::ffi::OsStr::new(RECORDED_ROOT))
}

/// aufs through the kernel, where the kernel has it: skipped without it, failed
/// under `PLIES_REQUIRE_AUFS=1` (the VM row of a kernel built with aufs).
pub fn aufs_kernel() -> Option<Rig> {
    plies_testkit::require_aufs("aufs kernel conformance").then(|| rig(DriverChoice::Aufs, &[]))
}

/// The deepest chain `d` stacks: the branch maximum aufs reports in its status,
/// 128 layers (Docker's format) for the others.
pub fn max_chain(d: &dyn Driver) -> usize {
    d.status()
        .iter()
        .find(|(k, _)| k == "Max Branches")
        .and_then(|(_, v)| v.parse().ok())
        .map_or(128, |n: usize| n.min(128))
}

/// One entry of a layer tar.
#[derive(Clone, Debug)]
pub enum E {
    Dir(&'static str, u32),
    File(&'static str, &'static str, u32),
    Link(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    Whiteout(&'static str),
    Opaque(&'static str),
    XattrFile(&'static str, &'static str, &'static str, &'static str),
}

/// A layer tar holding `entries` in order, every entry owned by 0:0 with mtime
/// 1_600_000_000.
pub fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut t = LayerTar::new();
    for e in entries {
        match *e {
            E::Dir(p, mode) => t.dir(p, mode),
            E::File(p, data, mode) => t.file(p, data, mode),
            E::XattrFile(p, data, key, value) => {
                t.xattr(key, value.as_bytes()).file(p, data, 0o644)
            }
            E::Link(p, target) => t.hardlink(p, target),
            E::Symlink(p, target) => t.symlink(p, target),
            E::Whiteout(p) => t.whiteout(p),
            E::Opaque(dir) => t.opaque(dir),
        };
    }
    t.finish()
}

/// Creates `id` on `parent` and applies `entries` to it.
pub fn layer(d: &dyn Driver, id: &str, parent: Option<&str>, entries: &[E]) {
    d.create(id, parent, &CreateOptions::default()).unwrap();
    let tar = layer_tar(entries);
    d.apply_diff(id, parent, &mut tar.as_slice()).unwrap();
}

/// The tree of layer `id` read through `get` (and put back).
pub fn mounted_tree(d: &dyn Driver, id: &str) -> Tree {
    let path = d.get(id, None).unwrap();
    let t = snapshot(&path, &Record::MOUNTED);
    d.put(id).unwrap();
    t
}

/// `changes` as `docker diff` prints them.
pub fn changes(d: &dyn Driver, id: &str, parent: Option<&str>) -> Vec<String> {
    d.changes(id, parent)
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect()
}

/// A layer tar as one line per entry: path, type, mode, owner, size, link name,
/// xattrs, a digest of the contents, and the mtime of files (not of directories
/// and whiteouts, which carry the time they were written).
pub fn tar_listing(bytes: &[u8]) -> Vec<String> {
    use std::hash::{Hash, Hasher};
    use std::io::Read;
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let h = entry.header().clone();
        let path = entry.path().unwrap().display().to_string();
        let link = entry.link_name().unwrap().map(|l| l.display().to_string());
        let mut xattrs = Vec::new();
        if let Some(ext) = entry.pax_extensions().unwrap() {
            for e in ext {
                let e = e.unwrap();
                if e.key().unwrap().starts_with("SCHILY.xattr.") {
                    xattrs.push(format!("{}={:?}", e.key().unwrap(), e.value_bytes()));
                }
            }
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut hasher);
        // Whiteouts and opaque markers carry the time they were made, and the
        // mode of what made them (overlay writes a whiteout 0600 and a marker
        // with its directory's mode, aufs's are files of their own: the tar's,
        // or 0444 where aufs made them).
        let name = path.rsplit('/').next().unwrap_or_default();
        let whiteout = name.starts_with(".wh.");
        let mtime = if h.entry_type().is_dir() || whiteout {
            None
        } else {
            Some(h.mtime().unwrap())
        };
        let mode = if whiteout { 0 } else { h.mode().unwrap() };
        out.push(format!(
            "{path} {:?} {mode:o} {}:{} {} {link:?} {xattrs:?} {:x} {mtime:?}",
            h.entry_type(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            data.len(),
            hasher.finish()
        ));
    }
    out
}

/// Whether overlay2 can limit layer sizes under `dir`: XFS with project quota.
pub fn project_quota_at(dir: &Path) -> bool {
    plies_kprobe::backing_fs(dir)
        .value()
        .is_some_and(|fs| plies_kprobe::xfs_project_quota(dir, fs).is_supported())
}
