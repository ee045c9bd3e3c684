//! Plans mounted for real on this machine's overlayfs: absolute, relative (from a
//! `CLONE_FS`-private thread), fsconfig with 300 lowers, and paths with `:` and `,`.

use std::fs;
use std::path::{Path, PathBuf};

use plies_mountopts::mount::mount_overlay;
use plies_mountopts::{
    LayerPath, MountMode, OverlayOptions, OverlayPlan, OverlayStack, UpperDirs, plan,
    plan_fsconfig, plan_legacy,
};
use rustix::mount::{UnmountFlags, unmount};

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount(&self.0, UnmountFlags::DETACH);
    }
}

/// A store-like home: `l/<name>` symlinks to `<layer>/diff`, each diff holding a file
/// named after its layer, plus an upper and work dir.
struct Home {
    dir: tempfile::TempDir,
    home: PathBuf,
    layers: Vec<String>,
}

impl Home {
    fn new(prefix_len: usize, count: usize, name_extra: &str) -> Home {
        // A long home path pushes the absolute form over the page.
        let base = tempfile::Builder::new()
            .prefix("plies-mountopts-")
            .tempdir()
            .unwrap();
        let mut deep = base.path().to_path_buf();
        if prefix_len > 0 {
            deep.push("p".repeat(prefix_len));
            fs::create_dir(&deep).unwrap();
        }
        fs::create_dir(deep.join("l")).unwrap();
        let mut layers = Vec::new();
        for i in 0..count {
            let layer = format!("layer{i:03}{name_extra}");
            let diff = deep.join(&layer).join("diff");
            fs::create_dir_all(&diff).unwrap();
            fs::write(diff.join(format!("from-{i}")), format!("{i}")).unwrap();
            fs::write(diff.join("shared"), format!("{i}")).unwrap();
            std::os::unix::fs::symlink(
                format!("../{layer}/diff"),
                deep.join("l").join(format!("L{i:025}")),
            )
            .unwrap();
            layers.push(layer);
        }
        for d in ["top/diff", "top/work", "merged"] {
            fs::create_dir_all(deep.join(d)).unwrap();
        }
        Home {
            dir: base,
            home: deep,
            layers,
        }
    }

    fn home(&self) -> PathBuf {
        self.home.clone()
    }

    fn stack(&self, through_links: bool) -> OverlayStack {
        let home = self.home();
        let lowers = (0..self.layers.len())
            .rev() // the last layer is the uppermost
            .map(|i| {
                if through_links {
                    LayerPath::in_home(&home, format!("l/L{i:025}"))
                } else {
                    LayerPath::absolute(home.join(&self.layers[i]).join("diff"))
                }
            })
            .collect();
        OverlayStack {
            lowers,
            upper: Some(UpperDirs {
                upper: LayerPath::in_home(&home, "top/diff"),
                work: LayerPath::in_home(&home, "top/work"),
            }),
            home,
        }
    }

    fn target(&self) -> PathBuf {
        self.home().join("merged")
    }
}

fn check_merged(home: &Home, mounted: &Mounted) {
    let n = home.layers.len();
    for i in 0..n {
        assert_eq!(
            fs::read_to_string(mounted.0.join(format!("from-{i}"))).unwrap(),
            i.to_string()
        );
    }
    // The uppermost layer wins.
    assert_eq!(
        fs::read_to_string(mounted.0.join("shared")).unwrap(),
        (n - 1).to_string()
    );
    // Writes go to the upper dir.
    fs::write(mounted.0.join("written"), "w").unwrap();
    assert_eq!(
        fs::read_to_string(home.home().join("top/diff/written")).unwrap(),
        "w"
    );
}

fn mount_and_check(home: &Home, p: &OverlayPlan) {
    let cwd_before = std::env::current_dir().unwrap();
    let target = home.target();
    mount_overlay(p, &target).unwrap_or_else(|e| panic!("{e}"));
    let mounted = Mounted(target.clone());
    assert_eq!(
        std::env::current_dir().unwrap(),
        cwd_before,
        "the process cwd must not change"
    );
    check_merged(home, &mounted);
    drop(mounted);
    assert!(plies_testkit::mounts_under(home.dir.path()).is_empty());
}

#[test]
fn absolute_plan_mounts() {
    if !plies_testkit::require_overlay("absolute_plan_mounts") {
        return;
    }
    let home = Home::new(0, 3, "");
    let mut opts = OverlayOptions::default();
    opts.index_off = std::path::Path::new("/sys/module/overlay/parameters/index").exists();
    let p = plan_legacy(&home.stack(false), &opts).unwrap();
    assert!(p.cwd.is_none());
    mount_and_check(&home, &OverlayPlan::Legacy(p));
}

#[test]
fn relative_plan_mounts_128_layers_with_long_paths() {
    if !plies_testkit::require_overlay("relative_plan_mounts_128_layers_with_long_paths") {
        return;
    }
    let home = Home::new(200, 128, "");
    let p = plan_legacy(&home.stack(true), &OverlayOptions::default()).unwrap();
    assert!(
        p.cwd.is_some(),
        "128 long absolute paths must not fit a page"
    );
    mount_and_check(&home, &OverlayPlan::Legacy(p));
}

#[test]
fn fsconfig_plan_mounts_300_lowers() {
    if !plies_testkit::require_overlay("fsconfig_plan_mounts_300_lowers")
        || !lowerdir_plus("fsconfig_plan_mounts_300_lowers")
    {
        return;
    }
    let home = Home::new(0, 300, "");
    let mut opts = OverlayOptions::default();
    opts.max_depth = 300;
    let p = plan(&home.stack(true), &opts, MountMode::Auto).unwrap();
    assert!(matches!(p, OverlayPlan::Fsconfig(_)));
    mount_and_check(&home, &p);
}

#[test]
fn fsconfig_plan_with_relative_values() {
    if !plies_testkit::require_overlay("fsconfig_plan_with_relative_values")
        || !lowerdir_plus("fsconfig_plan_with_relative_values")
    {
        return;
    }
    let home = Home::new(240, 4, "");
    let p = plan_fsconfig(&home.stack(true), &OverlayOptions::default()).unwrap();
    assert!(p.cwd.is_some(), "values over 255 bytes must go relative");
    mount_and_check(&home, &OverlayPlan::Fsconfig(p));
}

#[test]
fn paths_with_colon_and_comma_mount() {
    if !plies_testkit::require_overlay("paths_with_colon_and_comma_mount") {
        return;
    }
    let home = Home::new(0, 3, ":a,b\\c");
    for mode in modes("paths_with_colon_and_comma_mount") {
        let p = plan(&home.stack(false), &OverlayOptions::default(), mode).unwrap();
        mount_and_check(&home, &p);
        fs::remove_file(home.home().join("top/diff/written")).unwrap();
    }
}

#[test]
fn failed_mount_reports_plan_and_step_and_leaves_nothing() {
    if !plies_testkit::require_overlay("failed_mount_reports_plan_and_step_and_leaves_nothing") {
        return;
    }
    let home = Home::new(0, 2, "");
    let mut stack = home.stack(false);
    stack
        .lowers
        .push(LayerPath::absolute(home.home().join("does-not-exist")));
    // Overlayfs's own parameter parser (6.5) reports a missing layer as ENOENT;
    // older kernels answer EINVAL.
    let expected = if plies_testkit::kernel_has_lowerdir_plus() {
        vec![libc_enoent()]
    } else {
        vec![libc_enoent(), rustix::io::Errno::INVAL.raw_os_error()]
    };
    for mode in modes("failed_mount_reports_plan_and_step_and_leaves_nothing") {
        let p = plan(&stack, &OverlayOptions::default(), mode).unwrap();
        let err = mount_overlay(&p, &home.target()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("overlay"), "{msg}");
        match err {
            plies_mountopts::Error::Mount { kind, source, .. } => {
                assert_eq!(kind, p.kind());
                let errno = source.raw_os_error().unwrap_or_default();
                assert!(
                    expected.contains(&errno),
                    "errno {errno}, expected {expected:?}"
                );
            }
            other => panic!("expected a mount error, got {other:?}"),
        }
        assert!(plies_testkit::mounts_under(home.dir.path()).is_empty());
    }
    assert!(Path::new(&home.target()).is_dir());
}

/// Whether this kernel has `lowerdir+`; prints why a test skips when not.
fn lowerdir_plus(test: &str) -> bool {
    plies_testkit::require_kernel_feature(
        test,
        plies_testkit::kernel_has_lowerdir_plus(),
        "overlayfs lowerdir+ (Linux 6.8)",
    )
}

/// Legacy mounts everywhere, fsconfig plans where the kernel takes them.
fn modes(test: &str) -> Vec<MountMode> {
    let mut modes = vec![MountMode::Legacy];
    if lowerdir_plus(test) {
        modes.push(MountMode::Fsconfig);
    }
    modes
}

fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}
