//! The guest: its initramfs, init script and scratch disks.

use anyhow::bail;

use super::*;

/// Copies a file, with both paths in the error.
pub(crate) fn copy(from: &Path, to: &Path) -> Result {
    fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Builds `<work>/initramfs.gz` for `kernel`; returns the modules it loads.
pub(super) fn initramfs(
    kernel: &Kernel,
    payload: &Payload,
    opts: &Options,
    work: &Path,
) -> Result<PathBuf> {
    let tree = work.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "tests", "etc",
    ] {
        mkdir(&tree.join(d))?;
    }
    copy(&which("busybox").unwrap(), &tree.join("bin/busybox"))?;
    host_tools(&tree)?;
    // Tests run from their crate's directory and find the fixtures through testkit's.
    let repo = root();
    for dir in SUITES_UNDER_TEST.iter().map(|s| s.dir).chain(["testkit"]) {
        mkdir(
            &tree
                .join(repo.strip_prefix("/").unwrap())
                .join("crates")
                .join(dir),
        )?;
    }
    let fixtures = repo.join("fixtures");
    let guest_fixtures = tree.join(fixtures.strip_prefix("/").unwrap());
    mkdir(&guest_fixtures)?;
    let listing = || format!("reading {}", fixtures.display());
    for entry in fs::read_dir(&fixtures).with_context(listing)? {
        let p = entry.with_context(listing)?.path();
        if p.is_file() {
            copy(&p, &guest_fixtures.join(p.file_name().unwrap()))?;
        }
    }
    let listing = || format!("reading {}", payload.dir.display());
    for entry in fs::read_dir(&payload.dir).with_context(listing)? {
        let p = entry.with_context(listing)?.path();
        copy(&p, &tree.join("tests").join(p.file_name().unwrap()))?;
    }

    let order = add_modules(kernel, &tree, MODULES)?;

    write(
        &tree.join("init"),
        init_script(kernel, payload, opts, &order),
    )?;
    fs::set_permissions(
        tree.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .context("making init executable")?;

    let image = work.join("initramfs.gz");
    pack(&tree, &image)?;
    let _ = fs::remove_dir_all(&tree);
    Ok(image)
}

/// Copies `modules` (those the kernel builds as modules) with their dependencies
/// into `tree`, decompressed, and `depmod`s it; returns the module files in load
/// order, relative to `lib/modules/<release>`.
pub(crate) fn add_modules(kernel: &Kernel, tree: &Path, modules: &[&str]) -> Result<Vec<String>> {
    let release = &kernel.release;
    let moddir = format!("lib/modules/{release}");
    let mut order = Vec::<String>::new();
    let Some(kroot) = &kernel.root else {
        return Ok(order); // everything built in
    };
    for m in modules {
        let Ok(deps) = output(Command::new("modprobe").arg("-d").arg(kroot).args([
            "-S",
            release,
            "--show-depends",
            m,
        ])) else {
            continue; // not built for this kernel
        };
        for line in deps.lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue; // builtin
            };
            let path = path.split_whitespace().next().unwrap_or("");
            let Some(rel) = path.split_once(&format!("/{moddir}/")).map(|(_, r)| r) else {
                continue;
            };
            let plain = rel
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .trim_end_matches(".gz")
                .to_string();
            if order.contains(&plain) {
                continue;
            }
            let src = kroot.join(&moddir).join(rel);
            let dst = tree.join(&moddir).join(&plain);
            mkdir(dst.parent().unwrap())?;
            let decompress = match Path::new(rel).extension().and_then(|e| e.to_str()) {
                Some("xz") => Some("xz"),
                Some("zst") => Some("zstd"),
                Some("gz") => Some("gzip"),
                _ => None,
            };
            match decompress {
                Some(tool) => {
                    let out = fs::File::create(&dst)
                        .with_context(|| format!("creating {}", dst.display()))?;
                    let status = Command::new(tool)
                        .arg("-dc")
                        .arg(&src)
                        .stdout(out)
                        .status()
                        .with_context(|| format!("running {tool}"))?;
                    if !status.success() {
                        bail!("{tool} -dc {} failed", src.display());
                    }
                }
                None => copy(&src, &dst)?,
            }
            order.push(plain);
        }
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let src = kroot.join(&moddir).join(f);
        if src.exists() {
            copy(&src, &tree.join(&moddir).join(f))?;
        }
    }
    output(Command::new("depmod").arg("-b").arg(tree).arg(release))?;

    Ok(order)
}

/// Packs `tree` as a gzip'd newc initramfs at `image`.
pub(crate) fn pack(tree: &Path, image: &Path) -> Result {
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1 > \"$1\"")
        .arg("sh")
        .arg(image)
        .current_dir(tree)
        .status()
        .context("running cpio")?;
    if !status.success() {
        bail!("packing {} failed", tree.display());
    }
    Ok(())
}

/// Copies [`HOST_TOOLS`] to `/usr/local/sbin` with the libraries `ldd` names.
pub(super) fn host_tools(tree: &Path) -> Result {
    let bin = tree.join("usr/local/sbin");
    mkdir(&bin)?;
    for tool in HOST_TOOLS {
        let Some(path) = which(tool) else {
            eprintln!("vm-test: {tool} is not installed; the tests needing it will fail");
            continue;
        };
        copy(&path, &bin.join(tool))?;
        let libs = output(Command::new("ldd").arg(&path)).unwrap_or_default();
        for lib in libs.lines().filter_map(|l| {
            let l = l.split(" (0x").next()?.trim();
            let path = l.rsplit("=> ").next()?.trim();
            path.starts_with('/').then_some(path)
        }) {
            let dst = tree.join(lib.trim_start_matches('/'));
            if !dst.exists() {
                mkdir(dst.parent().unwrap())?;
                copy(Path::new(lib), &dst)?;
            }
        }
    }
    if Path::new("/etc/mke2fs.conf").is_file() {
        copy(Path::new("/etc/mke2fs.conf"), &tree.join("etc/mke2fs.conf"))?;
    }
    Ok(())
}

pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(super) fn init_script(
    kernel: &Kernel,
    payload: &Payload,
    opts: &Options,
    modules: &[String],
) -> String {
    let release = &kernel.release;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/usr/local/sbin:/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /root /scratch/tmpfs /scratch/ext4 /scratch/xfs
mount -t tmpfs -o mode=1777 shm /dev/shm
ln -sf /proc/self/mounts /etc/mtab
echo "{MARK} kernel $(uname -r)"
{insmod}mount -t tmpfs -o size=256m tmpfs /scratch/tmpfs
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vdb ] && break; sleep 0.2; done
mount -t ext4 /dev/vda /scratch/ext4 || echo "{MARK} scratch-failed ext4"
mount -t xfs -o prjquota /dev/vdb /scratch/xfs || echo "{MARK} scratch-failed xfs"
run() {{
  id=$1; fs=$2; bin=$3; dir=$4; shift 4
  echo "{MARK} begin $id"
  if grep -q " /scratch/$fs " /proc/mounts; then
    mkdir -p /scratch/$fs/tmp /scratch/$fs/target-tmp {target_tmp}
    mount --bind /scratch/$fs/target-tmp {target_tmp}
    (cd {repo}/crates/$dir && TMPDIR=/scratch/$fs/tmp PLIES_REQUIRE_KERNEL=1 {require_aufs}RUST_BACKTRACE=1 PLIES_BIN=/tests/plies \
      /tests/$bin --test-threads=1 --nocapture "$@")
    rc=$?
    umount {target_tmp}
    rm -rf /scratch/$fs/tmp /scratch/$fs/target-tmp
  else
    echo "scratch filesystem $fs is not mounted"
    rc=125
  fi
  echo "{MARK} end $id $rc"
}}
"#,
        // A kernel with everything built in has no modules to load.
        insmod = if modules.is_empty() {
            String::new()
        } else {
            format!(
                "for m in {}; do\n  insmod /lib/modules/{release}/$m || echo \"{MARK} insmod-failed $m\"\ndone\n",
                modules.join(" ")
            )
        },
        // In the row of a kernel with aufs, the aufs tests fail instead of skipping.
        require_aufs = if kernel.aufs {
            "PLIES_REQUIRE_AUFS=1 "
        } else {
            ""
        },
        // Tests keep scratch files in cargo's CARGO_TARGET_TMPDIR, a path compiled in.
        repo = root().display(),
        target_tmp = root()
            .join("target/vm/build")
            .join(TARGET)
            .join("tmp")
            .display(),
    );
    let filter = opts.filter.as_deref().map(shell_quote).unwrap_or_default();
    for r in &payload.runs {
        // A suite's own filter, narrowed by --filter: a --filter it does not
        // hold runs none of its tests.
        let filter = match (r.only, opts.filter.as_deref()) {
            (None, _) => filter.clone(),
            (Some(only), None) => shell_quote(only),
            (Some(only), Some(f)) if only.contains(f) => shell_quote(only),
            (Some(_), Some(f)) => format!("--exact {}", shell_quote(&format!("{f}@none"))),
        };
        let _ = writeln!(
            s,
            "run {} {} {} {} {filter}",
            r.id, r.scratch, r.file, r.crate_dir
        );
    }
    if payload.has_cli {
        // kprobe's report, and the mount mode the automatic driver choice lands on.
        for fs in SCRATCH {
            let _ = writeln!(
                s,
                "echo \"{MARK} probe {fs}\"; grep -q \" /scratch/{fs} \" /proc/mounts && \
                 /tests/plies --root /scratch/{fs}/plies probe && \
                 /tests/plies --root /scratch/{fs}/plies status; echo \"{MARK} probe-end\""
            );
        }
    }
    let _ = writeln!(s, "sync\necho \"{MARK} done\"\npoweroff -f\nreboot -f");
    s
}

/// mkfs command lines for an ext4 disk, tried in turn: the first keeps the
/// filesystem mountable by 5.10 (no `orphan_file`), for a mkfs that knows the option.
pub(crate) const MKFS_EXT4: &[&[&str]] = &[
    &["mkfs.ext4", "-q", "-F", "-O", "^orphan_file"],
    &["mkfs.ext4", "-q", "-F"],
];

/// mkfs command lines for an xfs disk, tried in turn (the first for 5.10).
pub(super) const MKFS_XFS: &[&[&str]] = &[
    &["mkfs.xfs", "-q", "-f", "-i", "nrext64=0"],
    &["mkfs.xfs", "-q", "-f"],
];

/// Makes `img` a sparse file of `size` bytes (replacing any) and a filesystem on
/// it with the first of `attempts` that succeeds; false when none does.
pub(crate) fn make_disk(img: &Path, size: u64, attempts: &[&[&str]]) -> Result<bool> {
    let _ = fs::remove_file(img);
    fs::File::create(img)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("creating {}", img.display()))?;
    Ok(attempts.iter().any(|argv| {
        Command::new(argv[0])
            .args(&argv[1..])
            .arg(img)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }))
}

/// Sparse disk images for the guest's ext4 and xfs scratch filesystems.
pub(super) fn disks(work: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (fs_name, attempts) in [("ext4", MKFS_EXT4), ("xfs", MKFS_XFS)] {
        let img = work.join(format!("{fs_name}.img"));
        if !make_disk(&img, 1 << 30, attempts)? {
            eprintln!(
                "vm-test: could not make the {fs_name} scratch disk (is {} installed?)",
                attempts[0][0]
            );
        }
        out.push(img);
    }
    Ok(out)
}
