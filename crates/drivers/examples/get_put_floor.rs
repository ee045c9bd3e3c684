//! overlay2 `get`+`put` beside the kernel's floor.
//!
//! For stacks of 1, 16, 128 and 400 lower layers (one file each), this example
//! times the library's `get`+`put` of a read-write layer on top of them, and a raw
//! loop of the same mount through the system calls alone: `mount(2)` then
//! `umount2(2)`, or, where plies uses the new mount API, `fsopen`, `fsconfig`,
//! `fsmount`, `move_mount` then `umount2(2)`. The raw loop mounts the very same
//! stack with the data plies mounts it with: the same lowerdir, upperdir and
//! workdir paths (absolute while they fit in a page, else relative to the home
//! from a working directory there, else one `lowerdir+` each), `index=off` where
//! the kernel has the parameter, and the same unmount flags (`MNT_DETACH |
//! UMOUNT_NOFOLLOW`). The data is built here from the layer's `lower` file and
//! checked once per stack against the plan `plies_mountopts::plan` makes for it.
//!
//! A third loop, `mp`, is the raw loop with the mount point's life added: a
//! `mkdir(2)` of it before the mount and an `rmdir(2)` after the unmount, as
//! Docker's overlay2 get and put do with `merged` (the `rmdir` is what detaches
//! copies of the mount in other mount namespaces). It is the floor of a get+put
//! that keeps Docker's behaviour; `raw` is the floor of the mount alone.
//!
//! The loops take turns, which one goes first rotating, after a warm-up, so load
//! from elsewhere falls on all alike. Root and overlayfs are needed.
//!
//! ```sh
//! cargo run --release -p plies-drivers --example get_put_floor -- \
//!     [--dir DIR] [--iterations N] [--depths 1,16,128,400] [--only lib|raw|mp]
//! ```
//!
//! It prints one line per stack, of `key=value` words: `depth`, `plan`
//! (`absolute`, `relative` or `fsconfig`), `iterations`, and for `lib`, `raw` and
//! `mp` the median and the 10th and 90th percentiles in microseconds
//! (`lib_p50_us`, `lib_p10_us`, `lib_p90_us`, …). `cargo xtask bench
//! --calls-only` runs it and sets its numbers beside the `plies` command's.
//!
//! `--only lib`, `--only raw` or `--only mp` runs one loop alone (for `strace` or `perf`):
//! each stack is built, the line `measuring depth=N` goes to standard error, and
//! only then the loop starts. The stacks are built in a fresh directory under
//! DIR (default `target/bench/calls`), and unmounted and removed at the end, after
//! a failure too.

use std::ffi::CString;
use std::hint::black_box;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plies_drivers::{CreateOptions, Driver, Options, Overlay2};
use plies_mountopts::{LayerPath, MountMode, OverlayOptions, OverlayPlan, OverlayStack, UpperDirs};
use rustix::fd::AsFd;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// What one run does.
struct Args {
    dir: PathBuf,
    iterations: usize,
    depths: Vec<usize>,
    lib: bool,
    raw: bool,
    mp: bool,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        dir: PathBuf::from("target/bench/calls"),
        iterations: 200,
        depths: vec![1, 16, 128, 400],
        lib: true,
        raw: true,
        mp: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--dir" => args.dir = PathBuf::from(value()?),
            "--iterations" => args.iterations = value()?.parse()?,
            "--depths" => {
                args.depths = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<_, _>>()?;
            }
            "--only" => {
                let only = value()?;
                if !["lib", "raw", "mp"].contains(&only.as_str()) {
                    return Err(format!("--only takes lib, raw or mp, not {only}").into());
                }
                args.lib = only == "lib";
                args.raw = only == "raw";
                args.mp = only == "mp";
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if args.iterations == 0 || args.depths.iter().any(|&d| d == 0 || d > 500) {
        return Err("--iterations must be positive and every depth in 1..=500".into());
    }
    Ok(args)
}

fn main() -> Result {
    let args = parse()?;
    if !rustix::process::geteuid().is_root()
        || !std::fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("\toverlay\n"))
    {
        return Err("needs root and overlayfs".into());
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::path::absolute(&args.dir)?.join(format!("floor-{}", std::process::id()));
    let run = || -> Result {
        for &depth in &args.depths {
            let stack = Stack::build(&dir.join(format!("d{depth}")), depth)?;
            println!("{}", stack.measure(&args)?);
        }
        Ok(())
    };
    let outcome = run();
    // Each stack removed its own directory when it was dropped.
    if let Err(e) = std::fs::remove_dir(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("get_put_floor: removing {}: {e}", dir.display());
        }
    }
    outcome
}

/// The driver options of a stack `depth` deep, as the driver benchmark and the
/// `plies` runs of `cargo xtask bench` use them: the new mount API past 128.
fn options(depth: usize) -> &'static [&'static str] {
    if depth > plies_mountopts::MAX_DEPTH {
        &["overlay2.mount_mode=fsconfig", "overlay2.max_depth=500"]
    } else {
        &[]
    }
}

/// A read-write layer `top` over `depth` layers of one file each, in its own
/// overlay2 home, and the raw mount of the same stack. Dropping it unmounts
/// whatever is left mounted and removes its directory.
struct Stack {
    dir: PathBuf,
    driver: Overlay2,
    depth: usize,
    raw: RawPlan,
    /// Where the raw loop mounts.
    target: PathBuf,
    /// Where the `mp` loop makes its mount point, mounts, and removes it.
    mount_point: PathBuf,
}

/// A mount through the system calls alone, its strings made beforehand.
enum RawPlan {
    Legacy {
        data: CString,
        cwd: Option<PathBuf>,
    },
    Fsconfig {
        params: Vec<(&'static str, CString)>,
        cwd: Option<PathBuf>,
    },
}

impl RawPlan {
    fn name(&self) -> &'static str {
        match self {
            RawPlan::Legacy { cwd: None, .. } => "absolute",
            RawPlan::Legacy { cwd: Some(_), .. } => "relative",
            RawPlan::Fsconfig { .. } => "fsconfig",
        }
    }

    fn cwd(&self) -> Option<&Path> {
        match self {
            RawPlan::Legacy { cwd, .. } | RawPlan::Fsconfig { cwd, .. } => cwd.as_deref(),
        }
    }
}

/// The layer's own single file.
fn one_file_tar(i: usize) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(1);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, format!("f{i}"), &b"x"[..])?;
    Ok(b.into_inner()?)
}

impl Stack {
    fn build(dir: &Path, depth: usize) -> Result<Stack> {
        std::fs::create_dir_all(dir)?;
        let opened = Options::parse(options(depth))
            .map_err(Into::into)
            .and_then(|o| Overlay2::open(&dir.join("overlay2"), &o).map_err(Into::into));
        let driver = match opened {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir);
                return Err(e);
            }
        };
        let target = dir.join("raw");
        let mount_point = dir.join("raw-mp");
        let mut stack = Stack {
            dir: dir.to_path_buf(),
            driver,
            depth,
            raw: RawPlan::Legacy {
                data: CString::default(),
                cwd: None,
            },
            target,
            mount_point,
        };
        let d = &stack.driver;
        let mut parent: Option<String> = None;
        for i in 0..depth {
            let id = format!("l{i}");
            d.create(&id, parent.as_deref(), &CreateOptions::default())?;
            d.apply_diff(&id, parent.as_deref(), &mut one_file_tar(i)?.as_slice())?;
            parent = Some(id);
        }
        d.create_read_write("top", parent.as_deref(), &CreateOptions::default())?;
        std::fs::create_dir(&stack.target)?;
        stack.raw = stack.raw_plan()?;
        Ok(stack)
    }

    /// The raw mount of `top`, from the store's files, and the same as plies' plan.
    fn raw_plan(&self) -> Result<RawPlan> {
        let home = self.driver.root().to_path_buf();
        let lower = std::fs::read_to_string(home.join("top/lower"))?;
        let lowers: Vec<&str> = lower.trim().split(':').collect();
        assert_eq!(lowers.len(), self.depth, "the lower file of top");
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        let abs = |rel: &str| home.join(rel);
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes());
        let raw = if self.depth > plies_mountopts::MAX_DEPTH {
            let mut params = Vec::new();
            if index_off {
                params.push(("index", CString::new("off")?));
            }
            for l in &lowers {
                params.push(("lowerdir+", c(&abs(l))?));
            }
            params.push(("upperdir", c(&abs("top/diff"))?));
            params.push(("workdir", c(&abs("top/work"))?));
            if params
                .iter()
                .any(|(_, v)| v.as_bytes().len() > plies_mountopts::FSCONFIG_VALUE_MAX)
            {
                return Err("a layer path longer than fsconfig takes: use a shorter --dir".into());
            }
            RawPlan::Fsconfig { params, cwd: None }
        } else {
            let data = |form: &dyn Fn(&str) -> PathBuf| {
                let mut d = Vec::new();
                if index_off {
                    d.extend_from_slice(b"index=off,");
                }
                d.extend_from_slice(b"lowerdir=");
                for (i, l) in lowers.iter().enumerate() {
                    if i > 0 {
                        d.push(b':');
                    }
                    d.extend_from_slice(form(l).as_os_str().as_bytes());
                }
                d.extend_from_slice(b",upperdir=");
                d.extend_from_slice(form("top/diff").as_os_str().as_bytes());
                d.extend_from_slice(b",workdir=");
                d.extend_from_slice(form("top/work").as_os_str().as_bytes());
                d
            };
            let limit = plies_mountopts::mount_data_limit();
            let absolute = data(&abs);
            if absolute.len() <= limit {
                RawPlan::Legacy {
                    data: CString::new(absolute)?,
                    cwd: None,
                }
            } else {
                let relative = data(&|l| PathBuf::from(l));
                if relative.len() > limit {
                    return Err("mount data longer than a page: use a shorter --dir".into());
                }
                RawPlan::Legacy {
                    data: CString::new(relative)?,
                    cwd: Some(home.clone()),
                }
            }
        };
        // The same data as the plan plies mounts with (`Overlay2::mount_at`).
        let stack = OverlayStack {
            home: home.clone(),
            lowers: lowers
                .iter()
                .map(|l| LayerPath::in_home(&home, *l))
                .collect(),
            upper: Some(UpperDirs {
                upper: LayerPath::in_home(&home, "top/diff"),
                work: LayerPath::in_home(&home, "top/work"),
            }),
        };
        let mut opts = OverlayOptions::default();
        opts.index_off = index_off;
        let mode = if self.depth > plies_mountopts::MAX_DEPTH {
            opts.max_depth = plies_mountopts::KERNEL_MAX_STACK;
            MountMode::Fsconfig
        } else {
            MountMode::Auto
        };
        let same = match (plies_mountopts::plan(&stack, &opts, mode)?, &raw) {
            (OverlayPlan::Legacy(p), RawPlan::Legacy { data, cwd }) => {
                p.data.as_bytes() == data.as_bytes() && p.cwd.as_deref() == cwd.as_deref()
            }
            (OverlayPlan::Fsconfig(p), RawPlan::Fsconfig { params, cwd }) => {
                p.cwd.as_deref() == cwd.as_deref()
                    && p.params.len() == params.len()
                    && p.params.iter().zip(params).all(|(a, (k, v))| {
                        matches!(a, plies_mountopts::FsParam::String(ak, av)
                            if ak == k && av.as_bytes() == v.as_bytes())
                    })
            }
            _ => false,
        };
        if !same {
            return Err(format!(
                "the raw mount of depth {} differs from plies' plan",
                self.depth
            )
            .into());
        }
        Ok(raw)
    }

    /// One `get`+`put` of `top`.
    fn lib_once(&self) -> Result<Duration> {
        let start = Instant::now();
        let merged = self.driver.get("top", None)?;
        black_box(&merged);
        self.driver.put("top")?;
        Ok(start.elapsed())
    }

    /// One raw mount and unmount of the same stack; with `mount_point`, the
    /// mount point made before and removed after, as a get and put do.
    fn raw_once(&self, mount_point: bool) -> Result<Duration> {
        let target = if mount_point {
            &self.mount_point
        } else {
            &self.target
        };
        let start = Instant::now();
        if mount_point {
            rustix::fs::mkdir(target, rustix::fs::Mode::from_raw_mode(0o700))?;
        }
        match &self.raw {
            RawPlan::Legacy { data, .. } => rustix::mount::mount(
                c"overlay",
                target,
                c"overlay",
                MountFlags::empty(),
                data.as_c_str(),
            )?,
            RawPlan::Fsconfig { params, .. } => {
                let fs = rustix::mount::fsopen(c"overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
                for (key, value) in params {
                    rustix::mount::fsconfig_set_string(&fs, *key, value.as_c_str())?;
                }
                rustix::mount::fsconfig_create(&fs)?;
                let mnt = rustix::mount::fsmount(
                    &fs,
                    FsMountFlags::FSMOUNT_CLOEXEC,
                    MountAttrFlags::empty(),
                )?;
                rustix::mount::move_mount(
                    mnt.as_fd(),
                    c"",
                    rustix::fs::CWD,
                    target,
                    MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
                )?;
            }
        }
        rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)?;
        if mount_point {
            rustix::fs::rmdir(target)?;
        }
        Ok(start.elapsed())
    }

    /// Warms the loops up, then runs them in turns; the summary line.
    fn measure(&self, args: &Args) -> Result<String> {
        // A relative plan is carried out from the home; the process's working
        // directory is put back afterwards, also on failure.
        let _cwd = match self.raw.cwd().filter(|_| args.raw || args.mp) {
            Some(home) => Some(Cwd::enter(home)?),
            None => None,
        };
        let loops = [
            ("lib", args.lib, Loop::Lib),
            ("raw", args.raw, Loop::Raw),
            ("mp", args.mp, Loop::MountPoint),
        ];
        let once = |which: Loop| match which {
            Loop::Lib => self.lib_once(),
            Loop::Raw => self.raw_once(false),
            Loop::MountPoint => self.raw_once(true),
        };
        for _ in 0..args.iterations.div_ceil(20) {
            for (_, on, which) in loops {
                if on {
                    once(which)?;
                }
            }
        }
        eprintln!("measuring depth={}", self.depth);
        let mut times: [Vec<Duration>; 3] = Default::default();
        for i in 0..args.iterations {
            for k in 0..loops.len() {
                let slot = (i + k) % loops.len();
                let (_, on, which) = loops[slot];
                if on {
                    times[slot].push(once(which)?);
                }
            }
        }
        let mut line = format!(
            "depth={} plan={} iterations={}",
            self.depth,
            self.raw.name(),
            args.iterations
        );
        for ((name, _, _), times) in loops.iter().zip(&mut times) {
            if times.is_empty() {
                continue;
            }
            times.sort();
            let at = |q: usize| times[(times.len() - 1) * q / 100].as_secs_f64() * 1e6;
            line.push_str(&format!(
                " {name}_p50_us={:.1} {name}_p10_us={:.1} {name}_p90_us={:.1}",
                at(50),
                at(10),
                at(90)
            ));
        }
        Ok(line)
    }
}

/// The three loops.
#[derive(Clone, Copy)]
enum Loop {
    Lib,
    Raw,
    MountPoint,
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Nothing is removed under a live mount.
        for target in [&self.target, &self.mount_point] {
            let _ = rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
        }
        if let Err(e) = self.driver.cleanup() {
            eprintln!("get_put_floor: cleanup of {}: {e}", self.dir.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("get_put_floor: removing {}: {e}", self.dir.display());
        }
    }
}

/// The process's working directory set to a directory until dropped.
struct Cwd(PathBuf);

impl Cwd {
    fn enter(dir: &Path) -> Result<Cwd> {
        let before = std::env::current_dir()?;
        std::env::set_current_dir(dir)?;
        Ok(Cwd(before))
    }
}

impl Drop for Cwd {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.0);
    }
}
