//! Fetching kernels: a private apt configuration under `target/vm/apt`.

use anyhow::bail;

use super::*;

/// A private apt configuration (sources, lists, cache) under one directory.
pub(crate) struct Apt {
    /// The directory holding it.
    dir: PathBuf,
}

impl Apt {
    /// Sets up the configuration under `dir` (the machine's mirror, Debian's keyring).
    pub(crate) fn new(dir: &Path) -> Result<Self> {
        let mirror = match std::env::var("PLIES_VM_MIRROR") {
            Ok(m) if !m.is_empty() => m,
            _ => machine_mirror()?,
        };
        if !Path::new(KEYRING).is_file() {
            bail!("{KEYRING} is missing (package debian-archive-keyring)");
        }
        for sub in ["state/lists/partial", "cache/archives/partial"] {
            mkdir(&dir.join(sub))?;
        }
        let mut sources = String::new();
        for suite in SUITES {
            let _ = writeln!(sources, "deb [signed-by={KEYRING}] {mirror} {suite} main");
        }
        let list = dir.join("sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
            write(&list, &sources)?;
            // New sources: the old lists no longer describe them.
            let _ = fs::remove_file(dir.join("state/updated"));
        }
        let status = dir.join("state/status");
        if !status.exists() {
            write(&status, "")?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn options(&self, cmd: &mut Command) {
        let d = self.dir.display();
        for o in [
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State={d}/state"),
            format!("Dir::State::status={d}/state/status"),
            format!("Dir::Cache={d}/cache"),
            "Acquire::Languages=none".into(),
            "APT::Sandbox::User=root".into(),
        ] {
            cmd.arg("-o").arg(o);
        }
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        self.options(&mut c);
        c
    }

    /// `apt-get update` when the lists are missing, a day old, or `force`.
    pub(crate) fn update(&self, force: bool) -> Result {
        let stamp = self.dir.join("state/updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < Duration::from_secs(24 * 3600));
        if fresh && !force {
            return Ok(());
        }
        let start = Instant::now();
        output(self.cmd("apt-get").args(["-q", "update"]))?;
        eprintln!(
            "vm-test: package lists updated ({:.1}s)",
            start.elapsed().as_secs_f64()
        );
        write(&stamp, "")
    }

    /// The newest `linux-image-<release>` (generic amd64 flavour) that `name` picks:
    /// `newest`, a series (`6.1`), or an exact release (`6.16.12+deb13-amd64`).
    pub(crate) fn resolve(&self, name: &str) -> Result<String> {
        let names = output(self.cmd("apt-cache").args(["pkgnames", "linux-image-"]))?;
        let wanted = name.strip_suffix("-amd64").unwrap_or(name);
        let release = names
            .lines()
            .filter_map(|p| p.strip_prefix("linux-image-")?.strip_suffix("-amd64"))
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            .filter(|r| !r.ends_with("-cloud") && !r.ends_with("-rt") && !r.contains("unsigned"))
            .filter(|r| {
                wanted == "newest"
                    || *r == wanted
                    || r.strip_prefix(wanted)
                        .is_some_and(|rest| rest.starts_with(['.', '-']))
            })
            .max_by_key(|r| version_key(r))
            .with_context(|| format!("no Debian kernel package matches '{name}'"))?;
        Ok(format!("{release}-amd64"))
    }
}

/// The Debian mirror the machine's apt uses (never a name of our own).
pub(super) fn machine_mirror() -> Result<String> {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    for stanza in deb822.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let security = field("Suites").is_some_and(|s| s.contains("security"));
        if let (Some(uris), false) = (field("URIs"), security) {
            if let Some(uri) = uris.split_whitespace().next() {
                return Ok(uri.trim_end_matches('/').to_string());
            }
        }
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let mut words = line
            .split_whitespace()
            .skip_while(|w| *w == "deb")
            .skip_while(|w| w.starts_with('['));
        if !line.trim_start().starts_with("deb ") {
            continue;
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            if !suite.contains("security") && !suite.contains("/updates") {
                return Ok(uri.trim_end_matches('/').to_string());
            }
        }
    }
    bail!("no Debian mirror in the machine's apt sources; set PLIES_VM_MIRROR")
}

/// A kernel unpacked in the cache.
pub(crate) struct Kernel {
    /// What the user asked for (`6.1`, `newest`).
    pub(crate) name: String,
    /// `uname -r` of the kernel.
    pub(crate) release: String,
    /// The unpacked packages, with `lib/modules/<release>` depmod'ed; `None` for
    /// a `--kernel-image`, which has what the guest needs built in.
    pub(crate) root: Option<PathBuf>,
    /// The kernel image qemu boots.
    pub(crate) vmlinuz: PathBuf,
    /// Whether the kernel has aufs: its row runs the aufs tests with
    /// `PLIES_REQUIRE_AUFS=1`, so they fail instead of skipping without it.
    pub(crate) aufs: bool,
}

impl Kernel {
    /// A kernel image built elsewhere (`--kernel-image`), named after its file.
    /// It has no modules: what the guest needs is built in. The `.config`
    /// beside it (`<name>.config`, the image's extension replaced) says whether
    /// it has aufs (`CONFIG_AUFS_FS=y`).
    pub(crate) fn image(path: &Path) -> Result<Kernel> {
        let vmlinuz = std::path::absolute(path)
            .with_context(|| format!("--kernel-image {}", path.display()))?;
        if !vmlinuz.is_file() {
            bail!("--kernel-image {}: no such file", path.display());
        }
        let name = vmlinuz
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("--kernel-image {}: no file name", path.display()))?;
        let config = fs::read_to_string(vmlinuz.with_extension("config")).unwrap_or_default();
        let aufs = config
            .lines()
            .any(|l| l.trim() == "CONFIG_AUFS_FS=y" || l.trim() == "CONFIG_AUFS_FS=m");
        Ok(Kernel {
            name: "image".into(),
            release: name,
            root: None,
            vmlinuz,
            aufs,
        })
    }
}

/// The kernel `release` (asked for as `name`) unpacked under `cache`, downloaded
/// and `depmod`ed on first use.
pub(crate) fn fetch(apt: &Apt, cache: &Path, name: &str, release: &str) -> Result<Kernel> {
    let dir = cache.join(release);
    let unpacked = dir.join("root");
    let ready = dir.join("ready");
    if !ready.exists() {
        let _ = fs::remove_dir_all(&dir);
        let debs = dir.join("debs");
        mkdir(&debs)?;
        mkdir(&unpacked)?;
        let image = format!("linux-image-{release}");
        let show = output(
            apt.cmd("apt-cache")
                .args(["show", "--no-all-versions"])
                .arg(&image),
        )?;
        // From 6.19 the image is a meta package over linux-{binary,modules,base}-<release>.
        let mut packages = vec![image];
        for line in show.lines().filter(|l| l.starts_with("Depends:")) {
            for dep in line["Depends:".len()..].split([',', '|']) {
                let dep = dep.split_whitespace().next().unwrap_or("");
                if dep.starts_with("linux-") && dep.ends_with(release) {
                    packages.push(dep.to_string());
                }
            }
        }
        eprintln!("vm-test: downloading {}", packages.join(" "));
        output(
            apt.cmd("apt-get")
                .args(["-q", "download"])
                .args(&packages)
                .current_dir(&debs),
        )?;
        let listing = || format!("reading {}", debs.display());
        for deb in fs::read_dir(&debs).with_context(listing)? {
            let deb = deb.with_context(listing)?.path();
            output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
        // Newer packages ship under usr/lib; depmod and modprobe look under lib.
        let lib_modules = unpacked.join("lib/modules");
        if !lib_modules.exists()
            && !unpacked.join("lib").exists()
            && unpacked.join("usr/lib/modules").exists()
        {
            std::os::unix::fs::symlink("usr/lib", unpacked.join("lib"))
                .with_context(|| format!("linking lib in {}", unpacked.display()))?;
        }
        output(Command::new("depmod").arg("-b").arg(&unpacked).arg(release))?;
        let _ = fs::remove_dir_all(&debs);
        write(&ready, "")?;
    }
    let vmlinuz = [
        unpacked.join(format!("boot/vmlinuz-{release}")),
        unpacked.join(format!("lib/modules/{release}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| format!("no vmlinuz in the packages of {release}"))?;
    Ok(Kernel {
        name: name.to_string(),
        release: release.to_string(),
        root: Some(unpacked),
        vmlinuz,
        aufs: false,
    })
}
