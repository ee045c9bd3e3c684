//! `cargo xtask powercut`: power cuts under a real kernel, and what survives them.
//!
//! One persistent ext4 disk image is booted again and again in qemu (TCG, one
//! CPU) with a Debian kernel the `vm-test` rig fetches. Each boot's init checks the
//! store (`plies fsck --repair`, then `plies fsck`), mounts every layer `plies ls`
//! lists as complete and prints a checksum of its merged tree, then runs a
//! workload of imports, creates, applies and removals in a loop. The host SIGKILLs
//! qemu at a seeded random point: during a command or within 1.5 s after one
//! finished. Whatever the guest had not written to its disk by then is gone, as in
//! a power cut. The next boot shows what survived.
//!
//! The host knows every layer's reference content (the inputs are generated from a
//! fixed seed; a reference is the same checksum over the tree GNU tar extracts) and,
//! from the markers the guest prints before and after each command, which layers
//! were complete before each cut. A complete layer that is missing after the next
//! boot's repair is lost; a listed layer whose content is none its history allows
//! is corrupt. See `xtask/VM.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bench::{Rng, docker_save, sha256_hex};
use crate::trials::inputs::{Layer, skeleton};
use crate::vm::{self, Apt, Kernel, TARGET, mkdir, output, which, write};
use crate::{Result, root};

/// The prefix of every line the guest prints for the host.
const MARK: &str = "@@powercut";

/// Modules the guest loads when the kernel builds them as modules: the disk, ext4,
/// overlay.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "crc32c_intel",
    "ext4",
    "overlay",
];

/// Images the workload imports (two layers each) and removes again in turn.
const IMAGES: usize = 4;

/// Layer tars the workload applies onto layers it creates.
const TARS: usize = 3;

/// The persistent disk: sparse, so its size costs nothing up front.
const DISK_SIZE: u64 = 2 << 30;

/// How long one boot may take before the host gives up on it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// How long after a command's completion marker an "after" cut falls, at most.
const AFTER_WINDOW_MS: u64 = 1500;

/// The guest's pause after each command, longer than [`AFTER_WINDOW_MS`]: an
/// "after" cut falls while nothing runs, before the next command's own syncs could
/// make durable what the last one left in the page cache.
const PAUSE_SECS: u64 = 2;

/// A tree's content, one line per entry (path, mode with type bits, owner, link
/// target) plus one per regular file (sha256 and path), sorted; run in the tree by
/// busybox on the host and in the guest alike, so both print the same bytes.
const LISTING: &str = "{ busybox find . -mindepth 1 -exec busybox stat -c '%n %f %u %g %N' {} + && \
     busybox find . -type f -exec busybox sha256sum {} + ; } | LC_ALL=C busybox sort";

/// The command line of `cargo xtask powercut`.
struct Options {
    /// `--kernel`: a series, `newest` or an exact release.
    kernel: String,
    /// `--cuts`: boots that end in a cut (one more boot checks the last one).
    cuts: usize,
    /// `--seed`: the cut points' generator seed.
    seed: Option<u64>,
    /// `--refresh`: update the package lists now.
    refresh: bool,
    /// `--bin`: a statically linked `plies` to put in the guest instead of building one.
    bin: Option<PathBuf>,
}

/// Parses the options after `powercut`.
fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        kernel: "newest".into(),
        cuts: 20,
        seed: None,
        refresh: false,
        bin: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--kernel" => o.kernel = value("--kernel")?,
            "--cuts" => {
                let v = value("--cuts")?;
                o.cuts = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("--cuts takes a positive number, not '{v}'"))?;
            }
            "--seed" => {
                let v = value("--seed")?;
                o.seed = Some(
                    v.parse()
                        .map_err(|_| format!("--seed takes a whole number, not '{v}'"))?,
                );
            }
            "--refresh" => o.refresh = true,
            "--bin" => o.bin = Some(PathBuf::from(value("--bin")?)),
            other => return Err(format!("powercut: unknown argument '{other}'")),
        }
    }
    Ok(o)
}

/// `cargo xtask powercut [--kernel NAME] [--cuts N] [--seed S] [--refresh] [--bin PLIES]`.
pub(crate) fn powercut(args: &[String]) -> Result {
    let opts = parse(args)?;
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "depmod",
        "modprobe",
        "cpio",
        "gzip",
        "mkfs.ext4",
        "tar",
        "sha256sum",
        "strip",
    ] {
        if which(tool).is_none() {
            return Err(format!(
                "powercut needs {tool}; install qemu-system-x86 busybox-static kmod cpio e2fsprogs"
            ));
        }
    }
    let vm_dir = root().join("target/vm");
    let work = vm_dir.join("powercut");
    let apt = Apt::new(&vm_dir.join("apt"))?;
    apt.update(opts.refresh)?;
    let release = apt.resolve(&opts.kernel)?;
    let kernel = vm::fetch(&apt, &vm_dir.join("kernels"), &opts.kernel, &release)?;
    eprintln!("powercut: kernel {} is {release}", opts.kernel);

    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| format!("removing {}: {e}", work.display()))?;
    }
    mkdir(&work.join("logs"))?;
    let started = Instant::now();
    let plies = build_plies(&vm_dir, &work, opts.bin.as_deref())?;
    eprintln!(
        "powercut: static plies built ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    let inputs = make_inputs(&work.join("inputs"))?;
    let initrd = initramfs(&kernel, &plies, &inputs, &work)?;
    let disk = work.join("disk.img");
    if !vm::make_disk(&disk, DISK_SIZE, vm::MKFS_EXT4)? {
        return Err(format!(
            "could not make an ext4 filesystem on {}",
            disk.display()
        ));
    }

    let seed = opts.seed.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        t.as_secs() ^ u64::from(t.subsec_nanos()) << 20 ^ u64::from(std::process::id())
    });
    eprintln!("powercut: seed {seed} (repeat the cut points with --seed {seed})");
    let mut rng = Rng(crate::trials::splitmix(seed));
    let mut model = Model::new(&inputs);
    let mut estimates = Estimates::default();
    let mut rows = Vec::new();
    for boot in 1..=opts.cuts + 1 {
        let plan = (boot <= opts.cuts).then(|| Plan::draw(&mut rng));
        let log_path = work.join("logs").join(format!("boot-{boot:02}.log"));
        let start = Instant::now();
        let watched = run_boot(&kernel, &initrd, &disk, &log_path, boot, plan, &estimates)?;
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let log = BootLog::parse(&text);
        estimates.learn(&log, &watched.arrivals);
        let row = model.record(boot, &log, &watched, start.elapsed());
        eprintln!("powercut: {}", row.line());
        rows.push(row);
    }
    let report = render(&kernel, seed, &rows, &model, &estimates);
    print!("{report}");
    let _ = fs::write(work.join("results.txt"), &report);
    let _ = fs::remove_dir_all(work.join("inputs"));
    let _ = fs::remove_file(&initrd);
    if model.failed(&rows) {
        Err("powercut found failures (above)".into())
    } else {
        Ok(())
    }
}

/// Builds the static release `plies` into `<vm>/build` (unless `bin` names one)
/// and puts a stripped copy in `work`.
fn build_plies(vm_dir: &Path, work: &Path, bin: Option<&Path>) -> Result<PathBuf> {
    let exe = match bin {
        Some(bin) => bin.to_path_buf(),
        None => {
            output(vm::static_cargo(vm_dir).args([
                "build",
                "--release",
                "-p",
                "plies",
                "--bin",
                "plies",
                "--target",
                TARGET,
            ]))?;
            vm_dir.join(format!("build/{TARGET}/release/plies"))
        }
    };
    let stripped = work.join("plies");
    output(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped)
            .arg(&exe),
    )?;
    Ok(stripped)
}

// ---------------------------------------------------------------------------------
// Inputs and their references.

/// A `docker save` archive the workload imports.
struct Image {
    /// The archive.
    archive: PathBuf,
    /// Its layers' chain ids, bottom first.
    layers: [String; 2],
}

/// What the guest gets, and the content each layer may have.
struct Inputs {
    /// `img<j>.tar`.
    images: Vec<Image>,
    /// `t<k>.tar`: layer tars applied onto created layers.
    tars: Vec<PathBuf>,
    /// An imported layer's reference checksum, by chain id.
    image_refs: BTreeMap<String, String>,
    /// The reference checksum of `t<k>.tar` applied to an empty layer.
    tar_refs: Vec<String>,
    /// The checksum of an empty tree: a created layer before its apply.
    empty: String,
    /// Every reference's listing, by checksum, to say how a layer differs.
    listings: BTreeMap<String, Vec<String>>,
}

/// Makes the images and tars under `dir` (from a fixed seed) and their references.
fn make_inputs(dir: &Path) -> Result<Inputs> {
    mkdir(dir)?;
    let mut rng = Rng(0x9e6c_63d0_676a_9a99);
    let skel = skeleton(&mut rng, 30);
    let mut inputs = Inputs {
        images: Vec::new(),
        tars: Vec::new(),
        image_refs: BTreeMap::new(),
        tar_refs: Vec::new(),
        empty: String::new(),
        listings: BTreeMap::new(),
    };
    let tree = dir.join("ref");
    mkdir(&tree)?;
    inputs.empty = reference(&tree, &mut inputs.listings)?;
    for j in 0..IMAGES {
        let base = Layer::new(dir, &format!("i{j}b"), &skel)?
            .files(&mut rng, 300)?
            .tar()?;
        let top = Layer::new(dir, &format!("i{j}t"), &skel)?
            .files(&mut rng, 150)?
            .tar()?;
        let archive = dir.join(format!("img{j}.tar"));
        docker_save(&archive, &[&base, &top], &format!("powercut{j}:latest"))?;
        let bottom = format!("sha256:{}", sha256_hex(&base)?);
        let upper = format!(
            "sha256:{}",
            sha256_of(format!("{bottom} sha256:{}", sha256_hex(&top)?).as_bytes())?
        );
        extract(&base, &tree)?;
        let sum = reference(&tree, &mut inputs.listings)?;
        inputs.image_refs.insert(bottom.clone(), sum);
        extract(&top, &tree)?;
        let sum = reference(&tree, &mut inputs.listings)?;
        inputs.image_refs.insert(upper.clone(), sum);
        clear(&tree)?;
        for t in [base, top] {
            fs::remove_file(&t).map_err(|e| format!("removing {}: {e}", t.display()))?;
        }
        inputs.images.push(Image {
            archive,
            layers: [bottom, upper],
        });
    }
    for k in 0..TARS {
        let tar = Layer::new(dir, &format!("t{k}"), &skel)?
            .files(&mut rng, 300)?
            .tar()?;
        extract(&tar, &tree)?;
        inputs
            .tar_refs
            .push(reference(&tree, &mut inputs.listings)?);
        clear(&tree)?;
        inputs.tars.push(tar);
    }
    fs::remove_dir_all(&tree).map_err(|e| format!("removing {}: {e}", tree.display()))?;
    Ok(inputs)
}

/// The sha256 of `data`, in hex.
fn sha256_of(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sha256sum: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(data)
        .map_err(|e| format!("sha256sum: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Extracts a layer tar into `tree` as root (owners and modes kept).
fn extract(tar: &Path, tree: &Path) -> Result {
    output(
        Command::new("tar")
            .args(["--numeric-owner", "-xf"])
            .arg(tar)
            .arg("-C")
            .arg(tree),
    )
    .map(|_| ())
}

/// Empties `tree`.
fn clear(tree: &Path) -> Result {
    fs::remove_dir_all(tree).map_err(|e| format!("removing {}: {e}", tree.display()))?;
    mkdir(tree)
}

/// The checksum of [`LISTING`] over `tree`; its lines go into `listings`.
fn reference(tree: &Path, listings: &mut BTreeMap<String, Vec<String>>) -> Result<String> {
    let listing = output(
        Command::new("busybox")
            .args(["sh", "-c", LISTING])
            .current_dir(tree),
    )?;
    let sum = sha256_of(listing.as_bytes())?;
    listings.insert(sum.clone(), listing.lines().map(str::to_string).collect());
    Ok(sum)
}

// ---------------------------------------------------------------------------------
// The guest.

/// Builds `<work>/initramfs.gz`: busybox, plies, the inputs, the modules, the init.
fn initramfs(kernel: &Kernel, plies: &Path, inputs: &Inputs, work: &Path) -> Result<PathBuf> {
    let tree = work.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "inputs",
    ] {
        mkdir(&tree.join(d))?;
    }
    vm::copy(
        &which("busybox").expect("checked"),
        &tree.join("bin/busybox"),
    )?;
    vm::copy(plies, &tree.join("bin/plies"))?;
    let mut list = String::new();
    for (j, image) in inputs.images.iter().enumerate() {
        vm::copy(&image.archive, &tree.join(format!("inputs/img{j}.tar")))?;
        let [base, top] = &image.layers;
        let _ = writeln!(list, "img{j} {top} {base}");
    }
    write(&tree.join("inputs/images"), list)?;
    for (k, tar) in inputs.tars.iter().enumerate() {
        vm::copy(tar, &tree.join(format!("inputs/t{k}.tar")))?;
    }
    let mut refs: Vec<&String> = inputs.listings.keys().collect();
    refs.sort();
    let refs: String = refs.iter().map(|r| format!("{r}\n")).collect();
    write(&tree.join("refs"), refs)?;
    let order = vm::add_modules(kernel, &tree, MODULES)?;
    let init = tree.join("init");
    write(&init, init_script(&kernel.release, &order))?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", init.display()))?;
    let image = work.join("initramfs.gz");
    vm::pack(&tree, &image)?;
    fs::remove_dir_all(&tree).map_err(|e| format!("removing {}: {e}", tree.display()))?;
    Ok(image)
}

/// The guest's init: check and list the store, then the workload until the cut.
/// Marker lines: `kernel`, `fsck-begin`, `fsck-repair RC`, `fsck-check RC`,
/// `listed N`, `layer ID SUM|mount-failed`, `list ID LINE` (a layer's listing when
/// its checksum is no reference), `verified`, `workload`, `begin CMD`, `done CMD`,
/// `fail RC CMD`, `done` (before a power-off).
fn init_script(release: &str, modules: &[String]) -> String {
    const SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /root /mnt /tmp
mount -t tmpfs tmp /tmp
mount -t tmpfs home /root
M=@MARK@
echo "$M kernel $(uname -r)"
for m in @MODULES@; do
  insmod /lib/modules/@RELEASE@/$m || echo "$M insmod-failed $m"
done
boot=$(sed -n 's/.*powercut\.boot=\([0-9]*\).*/\1/p' /proc/cmdline)
final=$(sed -n 's/.*powercut\.final=\([01]\).*/\1/p' /proc/cmdline)
off() { echo "$M done"; poweroff -f; sleep 10; reboot -f; }
for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 /dev/vda /mnt || { echo "$M disk-failed"; off; }
R=/mnt/R
mkdir -p $R
p() { /bin/plies --root $R --driver overlay2 "$@" </dev/null; }

echo "$M fsck-begin"
p fsck --repair 2>&1
echo "$M fsck-repair $?"
p fsck 2>&1
echo "$M fsck-check $?"
p -q ls >/tmp/ls 2>/tmp/err || { echo "$M ls-failed"; cat /tmp/err; }
echo "$M listed $(wc -l </tmp/ls)"
while read -r id; do
  if ! m=$(p -q mount "$id" 2>/tmp/err); then
    echo "$M layer $id mount-failed"; cat /tmp/err; continue
  fi
  (cd "$m" && @LISTING@) >/tmp/list 2>/tmp/err || { echo "$M listing-failed $id"; cat /tmp/err; }
  sum=$(sha256sum </tmp/list | cut -d' ' -f1)
  p -q umount "$id" 2>&1 || echo "$M umount-failed $id"
  echo "$M layer $id $sum"
  grep -qx "$sum" /refs || sed "s|^|$M list $id |" /tmp/list
done </tmp/ls
echo "$M verified"
if [ "$final" = 1 ]; then umount /mnt; off; fi

echo "$M workload"
run() {
  what=$1; shift
  echo "$M begin $what"
  "$@" >/tmp/out 2>&1
  rc=$?
  if [ $rc = 0 ]; then echo "$M done $what"; else echo "$M fail $rc $what"; cat /tmp/out; fi
  sleep @PAUSE@
}
i=0
while :; do
  i=$((i + 1))
  p -q ls >/tmp/ls 2>/dev/null
  todo=
  while read -r name top base; do
    grep -qx "$top" /tmp/ls || { todo=$name; break; }
  done </inputs/images
  if [ -n "$todo" ]; then
    run "import $todo" p import /inputs/$todo.tar
  else
    set -- $(sed -n "$(( (boot + i) % @IMAGES@ + 1 ))p" /inputs/images)
    run "rm $2 $3" p rm "$2" "$3"
  fi
  k=$(( (boot + i) % @TARS@ ))
  id=$(printf 'c%03d-%03d' $boot $i)
  run "create $id" p create "$id"
  run "apply $id t$k" p apply "$id" /inputs/t$k.tar
  old=$(p -q ls 2>/dev/null | grep '^c[0-9]' | sort -r | tail -n +3)
  [ -n "$old" ] && run "rm $(echo $old)" p rm $old
done
"#;
    SCRIPT
        .replace("@MARK@", MARK)
        .replace("@MODULES@", &modules.join(" "))
        .replace("@RELEASE@", release)
        .replace("@LISTING@", LISTING)
        .replace("@IMAGES@", &IMAGES.to_string())
        .replace("@TARS@", &TARS.to_string())
        .replace("@PAUSE@", &PAUSE_SECS.to_string())
}

// ---------------------------------------------------------------------------------
// One boot, and its cut.

/// Where a boot's cut falls.
#[derive(Clone, Copy)]
enum Plan {
    /// During the workload's `nth` command (from 1): after its start marker, a
    /// `fraction` of the time that kind of command took last.
    During { nth: usize, fraction: f64 },
    /// `delay` after the workload's `nth` completion marker.
    After { nth: usize, delay: Duration },
}

impl Plan {
    /// A random plan: either kind, one of the first six commands.
    fn draw(rng: &mut Rng) -> Plan {
        let nth = 1 + rng.below(6) as usize;
        if rng.below(2) == 0 {
            Plan::During {
                nth,
                fraction: rng.below(1000) as f64 / 1000.0,
            }
        } else {
            Plan::After {
                nth,
                delay: Duration::from_millis(rng.below(AFTER_WINDOW_MS)),
            }
        }
    }
}

/// How long each kind of command took last (start marker to completion marker, as
/// the host saw them): the window a "during" cut falls in. The defaults, for the
/// first boot, are about what they take under TCG on a 2-core host.
struct Estimates(BTreeMap<&'static str, Duration>);

impl Default for Estimates {
    fn default() -> Estimates {
        Estimates(BTreeMap::from([
            ("import", Duration::from_millis(800)),
            ("create", Duration::from_millis(300)),
            ("apply", Duration::from_millis(600)),
            ("rm", Duration::from_millis(500)),
        ]))
    }
}

impl Estimates {
    /// The window for `kind`.
    fn of(&self, kind: &str) -> Duration {
        self.0.get(kind).copied().unwrap_or(Duration::from_secs(1))
    }

    /// Takes each command that finished in `log` as its kind's new estimate.
    fn learn(&mut self, log: &BootLog, arrivals: &[Instant]) {
        let mut started: Option<(&'static str, Instant)> = None;
        for e in &log.events {
            let Some(&at) = arrivals.get(e.mark) else {
                break;
            };
            match e.step {
                Step::Begin => started = Some((e.cmd.kind(), at)),
                Step::Done => {
                    if let Some((kind, t0)) = started.take() {
                        self.0.insert(kind, at.saturating_duration_since(t0));
                    }
                }
                Step::Fail(_) => started = None,
            }
        }
    }
}

/// What the host saw of a boot while it ran.
struct Watched {
    /// When each marker line arrived, by its index among the marker lines.
    arrivals: Vec<Instant>,
    /// When qemu was killed; `None` when the guest powered off by itself.
    killed: Option<Instant>,
    /// Why the boot went wrong, when it did.
    problem: Option<String>,
}

/// Boots once with `disk`; with a `plan`, kills qemu where it says.
fn run_boot(
    kernel: &Kernel,
    initrd: &Path,
    disk: &Path,
    log: &Path,
    boot: usize,
    plan: Option<Plan>,
    estimates: &Estimates,
) -> Result<Watched> {
    let append = format!(
        "powercut.boot={boot} powercut.final={}",
        u8::from(plan.is_none())
    );
    let mut cmd = vm::qemu(kernel, initrd, log, &append);
    // cache=none: the guest sees a disk with a write cache and sends its flushes;
    // qemu writes with O_DIRECT, so the image holds what the guest wrote out and
    // nothing of it waits in qemu's memory or the host's page cache.
    cmd.arg("-drive").arg(format!(
        "file={},format=raw,if=virtio,cache=none",
        disk.display()
    ));
    let _ = fs::remove_file(log);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start qemu: {e}"))?;
    let start = Instant::now();
    let mut watched = Watched {
        arrivals: Vec::new(),
        killed: None,
        problem: None,
    };
    let mut tail = Tail::default();
    let mut in_workload = false;
    let (mut begins, mut dones) = (0, 0);
    let mut deadline: Option<Instant> = None;
    loop {
        for line in tail.read(log) {
            let Some(rest) = marker(&line) else { continue };
            let now = Instant::now();
            watched.arrivals.push(now);
            let mut words = rest.split_whitespace();
            match (words.next(), plan) {
                (Some("workload"), _) => in_workload = true,
                (Some("begin"), Some(Plan::During { nth, fraction })) if in_workload => {
                    begins += 1;
                    if begins == nth && deadline.is_none() {
                        let kind = words.next().unwrap_or("");
                        deadline = Some(now + estimates.of(kind).mul_f64(fraction));
                    }
                }
                (Some("done" | "fail"), Some(Plan::After { nth, delay }))
                    if in_workload && words.next().is_some() =>
                {
                    dones += 1;
                    if dones == nth && deadline.is_none() {
                        deadline = Some(now + delay);
                    }
                }
                _ => {}
            }
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            if plan.is_some() || !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                watched.problem = Some(format!(
                    "qemu exited before the cut ({status}) {}",
                    err.trim()
                ));
            }
            break;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            // SIGKILL: qemu dies with whatever the guest had not written out.
            let _ = child.kill();
            watched.killed = Some(Instant::now());
            let _ = child.wait();
            break;
        }
        if now.duration_since(start) > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            watched.problem = Some(format!("timed out after {}s", BOOT_TIMEOUT.as_secs()));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Lines that came in after the last read arrived by the end.
    let end = Instant::now();
    for line in tail.read(log) {
        if marker(&line).is_some() {
            watched.arrivals.push(end);
        }
    }
    Ok(watched)
}

/// Reads a growing file line by line.
#[derive(Default)]
struct Tail {
    /// Bytes consumed so far.
    offset: u64,
    /// A line not finished yet.
    partial: Vec<u8>,
}

impl Tail {
    /// The complete lines added since the last call.
    fn read(&mut self, path: &Path) -> Vec<String> {
        let Ok(mut f) = fs::File::open(path) else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut lines = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        lines
    }
}

/// What follows [`MARK`] on a line (the firmware's escapes may precede it).
fn marker(line: &str) -> Option<&str> {
    line.find(MARK).map(|i| line[i + MARK.len()..].trim())
}

// ---------------------------------------------------------------------------------
// Reading a boot's log.

/// A workload command, as its markers name it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cmd {
    /// `plies import` of `img<j>.tar`.
    Import(usize),
    /// `plies create ID`.
    Create(String),
    /// `plies apply ID t<k>.tar`.
    Apply(String, usize),
    /// `plies rm ID…`.
    Rm(Vec<String>),
}

impl Cmd {
    /// Parses `import img2`, `create ID`, `apply ID t1`, `rm ID…`.
    fn parse(text: &str) -> Option<Cmd> {
        let mut w = text.split_whitespace();
        match w.next()? {
            "import" => Some(Cmd::Import(w.next()?.strip_prefix("img")?.parse().ok()?)),
            "create" => Some(Cmd::Create(w.next()?.to_string())),
            "apply" => {
                let id = w.next()?.to_string();
                Some(Cmd::Apply(id, w.next()?.strip_prefix('t')?.parse().ok()?))
            }
            "rm" => Some(Cmd::Rm(w.map(str::to_string).collect())),
            _ => None,
        }
    }

    /// `import`, `create`, `apply` or `rm`.
    fn kind(&self) -> &'static str {
        match self {
            Cmd::Import(_) => "import",
            Cmd::Create(_) => "create",
            Cmd::Apply(..) => "apply",
            Cmd::Rm(_) => "rm",
        }
    }

    /// The command, short: layer ids cut to 12 digits.
    fn show(&self) -> String {
        match self {
            Cmd::Import(j) => format!("import img{j}"),
            Cmd::Create(id) => format!("create {id}"),
            Cmd::Apply(id, k) => format!("apply {id} t{k}.tar"),
            Cmd::Rm(ids) => {
                let ids: Vec<&str> = ids.iter().map(|i| short(i)).collect();
                format!("rm {}", ids.join(" "))
            }
        }
    }
}

/// A digest id cut to 12 hex digits, as `plies ls` shows it; other ids as they are.
fn short(id: &str) -> &str {
    match id.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 => &hex[..12],
        _ => id,
    }
}

/// A command's start, success or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `begin`.
    Begin,
    /// `done`: the command exited 0.
    Done,
    /// `fail RC`.
    Fail(i32),
}

/// One workload marker.
#[derive(Debug)]
struct Event {
    /// Its index among the marker lines (for its arrival time).
    mark: usize,
    /// What happened.
    step: Step,
    /// To which command.
    cmd: Cmd,
}

/// Everything a boot's serial log says.
#[derive(Debug, Default)]
struct BootLog {
    /// The init ran.
    booted: bool,
    /// `fsck --repair`'s exit status.
    repair_rc: Option<i32>,
    /// The plain `fsck`'s exit status after it.
    check_rc: Option<i32>,
    /// `fsck --repair`'s findings.
    findings: Vec<String>,
    /// What the plain `fsck` still found.
    remaining: Vec<String>,
    /// Listed layers and their checksums (`mount-failed` when it would not mount).
    layers: Vec<(String, String)>,
    /// The listing of each layer whose checksum is no reference.
    listings: BTreeMap<String, Vec<String>>,
    /// Every layer was checked.
    verified: bool,
    /// The workload's markers.
    events: Vec<Event>,
    /// Lines that tell of trouble in the guest (`insmod-failed`, `disk-failed`, …).
    trouble: Vec<String>,
    /// The guest reached its power-off.
    done: bool,
}

impl BootLog {
    /// Reads a serial log.
    fn parse(text: &str) -> BootLog {
        let mut log = BootLog::default();
        let mut marks = 0usize;
        // 0: before fsck, 1: in --repair, 2: in the check, 3: after.
        let mut fsck = 0;
        for line in text.lines() {
            let Some(rest) = marker(line) else {
                let line = line.trim();
                let finding = ["repaired:", "repairable:", "unrepairable:"]
                    .iter()
                    .any(|p| line.starts_with(p));
                match fsck {
                    1 if finding => log.findings.push(line.to_string()),
                    2 if finding => log.remaining.push(line.to_string()),
                    _ => {}
                }
                continue;
            };
            let mark = marks;
            marks += 1;
            let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
            match word {
                "kernel" => log.booted = true,
                "fsck-begin" => fsck = 1,
                "fsck-repair" => {
                    log.repair_rc = args.trim().parse().ok();
                    fsck = 2;
                }
                "fsck-check" => {
                    log.check_rc = args.trim().parse().ok();
                    fsck = 3;
                }
                "layer" => {
                    if let Some((id, sum)) = args.split_once(' ') {
                        log.layers.push((id.to_string(), sum.trim().to_string()));
                    }
                }
                "list" => {
                    if let Some((id, entry)) = args.split_once(' ') {
                        log.listings
                            .entry(id.to_string())
                            .or_default()
                            .push(entry.to_string());
                    }
                }
                "verified" => log.verified = true,
                "begin" | "done" if !args.is_empty() => {
                    let step = if word == "begin" {
                        Step::Begin
                    } else {
                        Step::Done
                    };
                    if let Some(cmd) = Cmd::parse(args) {
                        log.events.push(Event { mark, step, cmd });
                    }
                }
                "fail" => {
                    let (rc, what) = args.split_once(' ').unwrap_or((args, ""));
                    if let Some(cmd) = Cmd::parse(what) {
                        let step = Step::Fail(rc.parse().unwrap_or(-1));
                        log.events.push(Event { mark, step, cmd });
                    }
                }
                "done" => log.done = true,
                "insmod-failed" | "disk-failed" | "ls-failed" | "listing-failed"
                | "umount-failed" => log.trouble.push(rest.to_string()),
                _ => {}
            }
        }
        log
    }
}

// ---------------------------------------------------------------------------------
// What the host expects of the store, and what it found.

/// What a layer may hold, and whether it must be there.
#[derive(Debug, Clone)]
struct Expect {
    /// It was complete before the cut and no removal of it started.
    must: bool,
    /// The checksums its content may have.
    allowed: Vec<String>,
    /// Where it comes from, for a report.
    since: String,
}

/// A lost or corrupt layer.
struct Failure {
    /// The boot that found it.
    boot: usize,
    /// `lost` or `corrupt`.
    what: &'static str,
    /// The layer.
    id: String,
    /// Its history and what differs.
    detail: String,
}

/// How a cut fell.
#[derive(Clone)]
enum Cut {
    /// During the command (its start marker was the last one).
    During(Cmd),
    /// After the command finished (or failed), by the time the host saw.
    After(Cmd, Duration),
    /// Before the workload had printed anything.
    Elsewhere,
}

/// One boot in the table.
struct Row {
    /// Its number, from 1.
    boot: usize,
    /// Wall time, boot to cut or power-off.
    secs: f64,
    /// `clean`, `repaired`, `unrepairable` or `-` (no fsck ran).
    fsck: &'static str,
    /// Layers listed and checked.
    checked: usize,
    /// Of those, how many were as expected.
    ok: usize,
    /// Workload commands that finished.
    commands: usize,
    /// Workload commands that failed by themselves.
    failed_commands: usize,
    /// Where the cut fell, if there was one.
    cut: Option<Cut>,
    /// What went wrong with the boot itself.
    problem: Option<String>,
}

impl Row {
    /// The progress line.
    fn line(&self) -> String {
        format!(
            "boot {:>2}: {:>4.0}s, fsck {}, {}/{} layers as expected, {} commands; cut {}{}",
            self.boot,
            self.secs,
            self.fsck,
            self.ok,
            self.checked,
            self.commands,
            self.cut_text(),
            self.problem
                .as_deref()
                .map(|p| format!("; PROBLEM: {p}"))
                .unwrap_or_default()
        )
    }

    /// Where the cut fell, in words.
    fn cut_text(&self) -> String {
        match &self.cut {
            None => "- (last boot: checks only)".into(),
            Some(Cut::During(c)) => format!("during {}", c.show()),
            Some(Cut::After(c, d)) => format!("{} ms after {}", d.as_millis(), c.show()),
            Some(Cut::Elsewhere) => "before the workload".into(),
        }
    }
}

/// The host's picture of the store, carried from boot to boot, and the counts.
struct Model<'a> {
    /// The references.
    inputs: &'a Inputs,
    /// Every layer that is or may be there.
    layers: BTreeMap<String, Expect>,
    /// Layers whose removal finished: what they held, and which command removed them.
    removed: BTreeMap<String, (Vec<String>, String)>,
    /// Lost and corrupt layers.
    failures: Vec<Failure>,
    /// Removals that finished before a cut and that the next boot's `fsck` found
    /// undone: the layer's record back, as complete, without its layer.
    undone: Vec<Failure>,
    /// Layers listed again after their removal had finished.
    resurrected: usize,
}

impl<'a> Model<'a> {
    /// An empty store.
    fn new(inputs: &'a Inputs) -> Model<'a> {
        Model {
            inputs,
            layers: BTreeMap::new(),
            removed: BTreeMap::new(),
            failures: Vec::new(),
            undone: Vec::new(),
            resurrected: 0,
        }
    }

    /// Checks what `boot` found against the picture, then follows its workload.
    fn record(&mut self, boot: usize, log: &BootLog, watched: &Watched, took: Duration) -> Row {
        let mut row = Row {
            boot,
            secs: took.as_secs_f64(),
            fsck: "-",
            checked: 0,
            ok: 0,
            commands: 0,
            failed_commands: 0,
            cut: None,
            problem: watched.problem.clone(),
        };
        if log.check_rc.is_some() {
            row.fsck = if log.check_rc != Some(0) || !log.remaining.is_empty() {
                "unrepairable"
            } else if log.findings.is_empty() && log.repair_rc == Some(0) {
                "clean"
            } else {
                "repaired"
            };
        }
        let problem = if !log.booted {
            Some("the guest never reached its init".to_string())
        } else if !log.verified {
            Some("the guest stopped before it had checked every layer".to_string())
        } else if !log.trouble.is_empty() {
            Some(format!("guest: {}", log.trouble.join("; ")))
        } else if watched.killed.is_none() && !log.done {
            Some("the guest stopped before the end".to_string())
        } else {
            None
        };
        if row.problem.is_none() {
            row.problem = problem;
        }
        self.find_undone(boot, log);
        if log.verified {
            self.check(boot, log, &mut row);
        }
        self.follow(boot, log, &mut row);
        if let Some(killed) = watched.killed {
            row.cut = Some(match log.events.last() {
                Some(Event {
                    step: Step::Begin,
                    cmd,
                    ..
                }) => Cut::During(cmd.clone()),
                Some(e) => {
                    let at = watched.arrivals.get(e.mark).copied().unwrap_or(killed);
                    Cut::After(e.cmd.clone(), killed.saturating_duration_since(at))
                }
                None => Cut::Elsewhere,
            });
        }
        row
    }

    /// Notes the records of finished removals that `fsck --repair` found back.
    fn find_undone(&mut self, boot: usize, log: &BootLog) {
        for finding in &log.findings {
            let Some(id) = finding
                .split_once("layer ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
            else {
                continue;
            };
            if !finding.contains("recorded but missing") || self.layers.contains_key(id) {
                continue;
            }
            if let Some((_, rm)) = self.removed.remove(id) {
                self.undone.push(Failure {
                    boot,
                    what: "rm undone",
                    id: id.to_string(),
                    detail: format!(
                        "{rm} had finished before the cut; its record was back, complete, \
                         without its layer; fsck --repair: {finding}"
                    ),
                });
            }
        }
    }

    /// Compares the layers `log` lists with the picture, and takes them as the new one.
    fn check(&mut self, boot: usize, log: &BootLog, row: &mut Row) {
        let listed: BTreeMap<&str, &str> = log
            .layers
            .iter()
            .map(|(id, sum)| (id.as_str(), sum.as_str()))
            .collect();
        for (id, e) in &self.layers {
            if e.must && !listed.contains_key(id.as_str()) {
                self.failures.push(Failure {
                    boot,
                    what: "lost",
                    id: id.clone(),
                    detail: format!(
                        "complete since {}; not listed after fsck --repair{}",
                        e.since,
                        if log.findings.is_empty() {
                            String::new()
                        } else {
                            format!(" (which found: {})", log.findings.join("; "))
                        }
                    ),
                });
            }
        }
        let mut now = BTreeMap::new();
        for (&id, &sum) in &listed {
            row.checked += 1;
            let (allowed, since) = match self.layers.get(id) {
                Some(e) => (e.allowed.clone(), e.since.clone()),
                None => match self.removed.get(id) {
                    Some((a, rm)) => {
                        self.resurrected += 1;
                        (a.clone(), format!("{rm} had removed it before a cut"))
                    }
                    None => (Vec::new(), "nowhere: no command made it".to_string()),
                },
            };
            if allowed.iter().any(|a| a == sum) {
                row.ok += 1;
            } else {
                self.failures.push(Failure {
                    boot,
                    what: "corrupt",
                    id: id.to_string(),
                    detail: format!(
                        "{since}; {}",
                        self.how_it_differs(sum, &allowed, log.listings.get(id))
                    ),
                });
            }
            now.insert(
                id.to_string(),
                Expect {
                    must: true,
                    allowed: vec![sum.to_string()],
                    since: since.clone(),
                },
            );
        }
        self.layers = now;
    }

    /// Says how a layer's listing differs from the nearest reference it may have.
    fn how_it_differs(&self, sum: &str, allowed: &[String], got: Option<&Vec<String>>) -> String {
        if sum == "mount-failed" {
            return "plies mount failed".into();
        }
        let Some(got) = got else {
            return format!(
                "its checksum {} is another reference's",
                &sum[..12.min(sum.len())]
            );
        };
        let got = by_path(got);
        allowed
            .iter()
            .filter_map(|a| self.inputs.listings.get(a))
            .map(|want| compare(&by_path(want), &got))
            .min_by_key(|(differences, _)| *differences)
            .map(|(_, text)| text)
            .unwrap_or_else(|| format!("{} entries, and no reference it may have", got.len()))
    }

    /// Follows the workload's markers: what each command may leave, and must.
    fn follow(&mut self, boot: usize, log: &BootLog, row: &mut Row) {
        for e in &log.events {
            match e.step {
                Step::Done => row.commands += 1,
                Step::Fail(_) => row.failed_commands += 1,
                Step::Begin => {}
            }
            let since = format!("boot {boot}'s {}", e.cmd.show());
            match (&e.cmd, e.step) {
                (Cmd::Import(j), step) => {
                    let Some(image) = self.inputs.images.get(*j) else {
                        continue;
                    };
                    for id in &image.layers {
                        self.removed.remove(id);
                        let sum = self.inputs.image_refs[id].clone();
                        let entry = self.layers.entry(id.clone()).or_insert_with(|| Expect {
                            must: false,
                            allowed: vec![sum.clone()],
                            since: since.clone(),
                        });
                        if step == Step::Done && !entry.must {
                            entry.must = true;
                            entry.allowed = vec![sum];
                            entry.since = since.clone();
                        }
                    }
                }
                (Cmd::Create(id), step) => {
                    self.removed.remove(id);
                    let empty = self.inputs.empty.clone();
                    let entry = self.layers.entry(id.clone()).or_insert_with(|| Expect {
                        must: false,
                        allowed: vec![empty],
                        since: since.clone(),
                    });
                    if step == Step::Done {
                        entry.must = true;
                        entry.since = since;
                    }
                }
                (Cmd::Apply(id, k), step) => {
                    let Some(sum) = self.inputs.tar_refs.get(*k).cloned() else {
                        continue;
                    };
                    if let Some(entry) = self.layers.get_mut(id) {
                        match step {
                            Step::Begin => entry.allowed.push(sum),
                            Step::Done => {
                                entry.allowed = vec![sum];
                                entry.since = since;
                            }
                            Step::Fail(_) => {}
                        }
                    }
                }
                (Cmd::Rm(ids), step) => {
                    for id in ids {
                        match step {
                            Step::Begin => {
                                if let Some(entry) = self.layers.get_mut(id) {
                                    entry.must = false;
                                }
                            }
                            Step::Done => {
                                if let Some(entry) = self.layers.remove(id) {
                                    self.removed
                                        .insert(id.clone(), (entry.allowed, since.clone()));
                                }
                            }
                            Step::Fail(_) => {}
                        }
                    }
                }
            }
        }
    }

    /// Whether the run found a failure.
    fn failed(&self, rows: &[Row]) -> bool {
        !self.failures.is_empty()
            || rows
                .iter()
                .any(|r| r.fsck == "unrepairable" || r.problem.is_some() || r.failed_commands > 0)
    }
}

/// A [`LISTING`]'s lines by the path they are about: its `stat` line, and for a
/// regular file its checksum line.
fn by_path(lines: &[String]) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in lines {
        // `sha256sum` prints `SUM  PATH`; `stat` prints `PATH MODE UID GID NAME`.
        let path = match line.split_once("  ") {
            Some((sum, path)) if sum.len() == 64 => path,
            _ => line.split(' ').next().unwrap_or(""),
        };
        out.entry(path).or_default().push(line);
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// The checksum of an empty file.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How `got` differs from `want`: the number of paths that differ, and in words
/// the counts with a few paths of each sort.
fn compare(want: &BTreeMap<&str, Vec<&str>>, got: &BTreeMap<&str, Vec<&str>>) -> (usize, String) {
    let missing: Vec<&str> = want
        .keys()
        .filter(|p| !got.contains_key(*p))
        .copied()
        .collect();
    let extra: Vec<&str> = got
        .keys()
        .filter(|p| !want.contains_key(*p))
        .copied()
        .collect();
    let changed: Vec<&str> = want
        .iter()
        .filter(|(p, lines)| got.get(*p).is_some_and(|g| g != *lines))
        .map(|(p, _)| *p)
        .collect();
    let emptied = changed
        .iter()
        .filter(|p| got[*p].iter().any(|l| l.starts_with(EMPTY_SHA256)))
        .count();
    let some = |v: &[&str]| {
        let mut s = v.iter().take(3).copied().collect::<Vec<_>>().join(", ");
        if v.len() > 3 {
            s.push_str(", ...");
        }
        s
    };
    let text = format!(
        "of the {} entries of its reference, {} differ ({} of them now empty files: {}), \
         {} are missing ({}); {} unexpected ({})",
        want.len(),
        changed.len(),
        emptied,
        some(&changed),
        missing.len(),
        some(&missing),
        extra.len(),
        some(&extra)
    );
    (changed.len() + missing.len() + extra.len(), text)
}

/// The table, each boot's line, and every failure in full.
fn render(
    kernel: &Kernel,
    seed: u64,
    rows: &[Row],
    model: &Model,
    estimates: &Estimates,
) -> String {
    let mut s = String::new();
    let cuts: Vec<&Cut> = rows.iter().filter_map(|r| r.cut.as_ref()).collect();
    let during: Vec<&Cmd> = cuts
        .iter()
        .filter_map(|c| match c {
            Cut::During(cmd) => Some(cmd),
            _ => None,
        })
        .collect();
    let after = cuts.iter().filter(|c| matches!(c, Cut::After(..))).count();
    let by_kind = |cmds: &[&Cmd]| {
        let mut n: BTreeMap<&str, usize> = BTreeMap::new();
        for c in cmds {
            *n.entry(c.kind()).or_default() += 1;
        }
        n.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let after_cmds: Vec<&Cmd> = cuts
        .iter()
        .filter_map(|c| match c {
            Cut::After(cmd, _) => Some(cmd),
            _ => None,
        })
        .collect();
    let fsck = |what: &str| rows.iter().filter(|r| r.fsck == what).count();
    let count = |what: &str| model.failures.iter().filter(|f| f.what == what).count();
    let _ = writeln!(s, "\npowercut results ({}, seed {seed})\n", kernel.release);
    let mut table = vec![
        ("boots", rows.len().to_string()),
        ("cuts", cuts.len().to_string()),
        (
            "  during a command",
            format!("{} ({})", during.len(), by_kind(&during)),
        ),
        (
            "  right after one",
            format!("{after} ({})", by_kind(&after_cmds)),
        ),
        (
            "commands completed",
            rows.iter().map(|r| r.commands).sum::<usize>().to_string(),
        ),
        (
            "command times (last seen)",
            estimates
                .0
                .iter()
                .map(|(k, d)| format!("{k} {:.1}s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "layers checked",
            rows.iter().map(|r| r.checked).sum::<usize>().to_string(),
        ),
        ("layers lost", count("lost").to_string()),
        ("layers corrupt", count("corrupt").to_string()),
        ("removed layers listed again", model.resurrected.to_string()),
        (
            "removals undone (record back, repaired)",
            model.undone.len().to_string(),
        ),
        (
            "fsck clean / repaired / unrepairable",
            format!(
                "{} / {} / {}",
                fsck("clean"),
                fsck("repaired"),
                fsck("unrepairable")
            ),
        ),
        (
            "commands failed uncut",
            rows.iter()
                .map(|r| r.failed_commands)
                .sum::<usize>()
                .to_string(),
        ),
        (
            "boots with a problem",
            rows.iter()
                .filter(|r| r.problem.is_some())
                .count()
                .to_string(),
        ),
    ];
    let width = table.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in table.drain(..) {
        let _ = writeln!(s, "{k:<width$}  {v}");
    }
    let _ = writeln!(s);
    for r in rows {
        let _ = writeln!(s, "{}", r.line());
    }
    for f in model.failures.iter().chain(&model.undone) {
        let _ = writeln!(
            s,
            "\nboot {}: {} layer {}: {}",
            f.boot, f.what, f.id, f.detail
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_from_their_markers() {
        assert_eq!(Cmd::parse("import img2"), Some(Cmd::Import(2)));
        assert_eq!(
            Cmd::parse("apply c003-002 t1"),
            Some(Cmd::Apply("c003-002".into(), 1))
        );
        assert_eq!(
            Cmd::parse("rm a b"),
            Some(Cmd::Rm(vec!["a".into(), "b".into()]))
        );
        assert_eq!(Cmd::parse("mount x"), None);
    }

    #[test]
    fn a_log_gives_fsck_layers_and_events() {
        let log = "\x1b[0m@@powercut kernel 7.0\n@@powercut fsck-begin\n\
                   repaired: records: layer x is incomplete\n@@powercut fsck-repair 0\n\
                   @@powercut fsck-check 0\n@@powercut listed 1\n\
                   @@powercut layer a 0123\n@@powercut list a ./x 81a4 0 0 ./x\n\
                   @@powercut verified\n@@powercut workload\n\
                   @@powercut begin create c001-001\n@@powercut done create c001-001\n\
                   @@powercut begin apply c001-001 t0\n";
        let l = BootLog::parse(log);
        assert!(l.booted && l.verified && !l.done);
        assert_eq!(l.findings.len(), 1);
        assert_eq!(l.layers, [("a".to_string(), "0123".to_string())]);
        assert_eq!(l.listings["a"], ["./x 81a4 0 0 ./x"]);
        assert_eq!(l.events.len(), 3);
        assert_eq!(l.events[2].step, Step::Begin);
        assert_eq!(l.events[2].mark, 11);
    }

    fn inputs() -> Inputs {
        let img = "sha256:".to_string() + &"b".repeat(64);
        let top = "sha256:".to_string() + &"c".repeat(64);
        Inputs {
            images: vec![Image {
                archive: PathBuf::new(),
                layers: [img.clone(), top.clone()],
            }],
            tars: vec![PathBuf::new()],
            image_refs: BTreeMap::from([(img, "B".into()), (top, "C".into())]),
            tar_refs: vec!["T".into()],
            empty: "E".into(),
            listings: BTreeMap::new(),
        }
    }

    fn watched() -> Watched {
        Watched {
            arrivals: Vec::new(),
            killed: Some(Instant::now()),
            problem: None,
        }
    }

    #[test]
    fn a_complete_layer_that_is_gone_is_lost_and_an_unfinished_one_is_not() {
        let inputs = inputs();
        let mut m = Model::new(&inputs);
        let first = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                     @@powercut verified\n@@powercut workload\n\
                     @@powercut begin create c001-001\n@@powercut done create c001-001\n\
                     @@powercut begin apply c001-001 t0\n\
                     @@powercut begin import img0\n";
        let row = m.record(1, &BootLog::parse(first), &watched(), Duration::ZERO);
        assert!(matches!(row.cut, Some(Cut::During(Cmd::Import(0)))));
        // The apply's layer may hold the tar; the import's layers may be missing.
        let second = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                      @@powercut layer c001-001 T\n@@powercut verified\n";
        m.record(2, &BootLog::parse(second), &watched(), Duration::ZERO);
        assert!(m.failures.is_empty());
        // Gone without a removal: lost.
        let third = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                     @@powercut verified\n";
        m.record(3, &BootLog::parse(third), &watched(), Duration::ZERO);
        assert_eq!(m.failures.len(), 1);
        assert_eq!(m.failures[0].what, "lost");
    }

    #[test]
    fn content_no_history_allows_is_corrupt() {
        let inputs = inputs();
        let mut m = Model::new(&inputs);
        let first = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                     @@powercut verified\n@@powercut workload\n\
                     @@powercut begin create c001-001\n@@powercut done create c001-001\n";
        m.record(1, &BootLog::parse(first), &watched(), Duration::ZERO);
        let second = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                      @@powercut layer c001-001 T\n@@powercut verified\n";
        m.record(2, &BootLog::parse(second), &watched(), Duration::ZERO);
        assert_eq!(m.failures.len(), 1);
        assert_eq!(m.failures[0].what, "corrupt");
    }

    #[test]
    fn a_difference_names_emptied_files() {
        let want: Vec<String> = vec![
            "./a 81a4 0 0 ./a".into(),
            format!("{}  ./a", "1".repeat(64)),
            "./b 41ed 0 0 ./b".into(),
        ];
        let got: Vec<String> = vec!["./a 81a4 0 0 ./a".into(), format!("{EMPTY_SHA256}  ./a")];
        let (n, text) = compare(&by_path(&want), &by_path(&got));
        assert_eq!(n, 2);
        assert!(
            text.contains("1 differ (1 of them now empty files: ./a), 1 are missing (./b)"),
            "{text}"
        );
    }

    #[test]
    fn a_finished_removal_whose_record_comes_back_is_undone() {
        let inputs = inputs();
        let mut m = Model::new(&inputs);
        let first = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                     @@powercut verified\n@@powercut workload\n\
                     @@powercut begin create c001-001\n@@powercut done create c001-001\n\
                     @@powercut begin rm c001-001\n@@powercut done rm c001-001\n";
        m.record(1, &BootLog::parse(first), &watched(), Duration::ZERO);
        let second = "@@powercut kernel k\n@@powercut fsck-begin\n\
                      repaired: records: layer c001-001 is recorded but missing from the overlay2 store\n\
                      @@powercut fsck-repair 0\n@@powercut fsck-check 0\n@@powercut verified\n";
        let row = m.record(2, &BootLog::parse(second), &watched(), Duration::ZERO);
        assert_eq!(row.fsck, "repaired");
        assert!(m.failures.is_empty());
        assert_eq!(m.undone.len(), 1);
        assert_eq!(m.undone[0].id, "c001-001");
    }
}
