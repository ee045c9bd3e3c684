//! The commands on a Docker data root (`plies --root /var/lib/docker …`):
//! Docker's lineage from its own databases (`plies_layerdb::docker`), layers
//! named by chain id, cache id, container id or a unique prefix of any.
//!
//! plies keeps no records there and writes nothing for the commands that read:
//! `ls` and `images` read Docker's databases alone; `changes`, `diff`, `size`
//! and `fsck` open the driver read-only (no probe, no lock file), with the
//! parent Docker's lineage gives. `mount`/`umount` are refused while a dockerd
//! serves the root (and take the layer locks under `overlay2/.plies`, which
//! Docker never reads); commands that would make or delete layers are refused
//! (Docker's databases would not know of them).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plies_drivers::{Driver, DriverChoice};
use plies_layerdb::docker::{DockerEntry, DockerKind, DockerRoot};
use serde::Serialize;

use crate::args::{Command, DriverArg, Global};
use crate::commands::{letter, short, write_diff};
use crate::output::{Failure, Out};

/// A Docker data root opened for one command.
pub struct Docker {
    root: PathBuf,
    driver: &'static str,
    db: DockerRoot,
}

/// The Docker data root `g.root` is, for the driver `--driver` names (for
/// `auto`, the first of overlay2 and aufs whose layer database is there).
pub fn detect(g: &Global) -> Option<&'static str> {
    let candidates: &[&'static str] = match g.driver {
        DriverArg::Auto => &["overlay2", "aufs"],
        DriverArg::Overlay2 => &["overlay2"],
        DriverArg::Aufs => &["aufs"],
        DriverArg::Vfs => &["vfs"],
    };
    candidates
        .iter()
        .copied()
        .find(|d| DockerRoot::detect(&g.root, d))
}

impl Docker {
    /// Reads the layer database of `driver` under `g.root`.
    pub fn open(g: &Global, driver: &'static str) -> Result<Docker> {
        let db = DockerRoot::open(&g.root, driver).with_context(|| {
            format!("reading Docker's layer database under {}", g.root.display())
        })?;
        Ok(Docker {
            root: g.root.clone(),
            driver,
            db,
        })
    }

    fn choice(&self) -> DriverChoice {
        match self.driver {
            "aufs" => DriverChoice::Aufs,
            "vfs" => DriverChoice::Vfs,
            _ => DriverChoice::Overlay2,
        }
    }

    /// The driver, opened `read_only` for the commands that only read.
    fn open_driver(&self, g: &Global, read_only: bool) -> Result<Box<dyn Driver>> {
        let options = plies_drivers::Options::parse(&g.storage_opt)
            .context("--storage-opt")?
            .with_sweep_on_open(false)
            .with_read_only(read_only);
        plies_drivers::open(&self.root, self.choice(), &options)
            .with_context(|| format!("opening {} under {}", self.driver, self.root.display()))
    }

    /// The layer `name` names and the layer under it (its parent in Docker's
    /// lineage, or `parent` when given).
    fn layer(&self, name: &str, parent: Option<&str>) -> Result<(DockerEntry, Option<String>)> {
        let id = self.db.resolve(name)?;
        let entry = self
            .db
            .entries()
            .into_iter()
            .find(|e| e.id == id)
            .with_context(|| format!("layer {name}: not in Docker's lineage"))?;
        let parent = match parent {
            Some(p) => Some(self.db.resolve(p)?),
            None => entry.parent.clone(),
        };
        Ok((entry, parent))
    }

    /// Refuses a change while a dockerd serves this root.
    fn check_no_dockerd(&self) -> Result<(), Failure> {
        match dockerd_serving(&self.root) {
            Some(pid) => Err(anyhow::anyhow!(
                "{} is the data root of a running dockerd (pid {pid}): stop it first, \
                 or use docker",
                self.root.display()
            )
            .into()),
            None => Ok(()),
        }
    }

    /// Runs `command` on this root.
    pub fn run(&self, g: &Global, command: Command, out: &Out) -> Result<(), Failure> {
        match command {
            Command::Ls => self.ls(out)?,
            Command::Images => crate::commands::images(&self.db, out)?,
            Command::Save {
                images,
                output,
                format,
            } => crate::save::save(&self.db, &images, output.as_deref(), format, out)?,
            Command::Changes { id, parent } => {
                let (entry, parent) = self.layer(&id, parent.as_deref())?;
                let changes = self
                    .open_driver(g, true)?
                    .changes(&entry.id, parent.as_deref())?;
                if out.json {
                    out.json(&changes)?;
                } else {
                    for c in changes {
                        out.line(format!("{} {}", letter(c.kind), c.path.display()))?;
                    }
                }
            }
            Command::Diff { id, parent, output } => {
                let (entry, parent) = self.layer(&id, parent.as_deref())?;
                let driver = self.open_driver(g, true)?;
                write_diff(&*driver, &entry.id, parent.as_deref(), output.as_deref())?;
            }
            Command::Size { id } => {
                let (entry, parent) = self.layer(&id, None)?;
                let size = self
                    .open_driver(g, true)?
                    .diff_size(&entry.id, parent.as_deref())?;
                if out.json {
                    #[derive(Serialize)]
                    struct Size<'a> {
                        id: &'a str,
                        size: u64,
                    }
                    out.json(&Size {
                        id: &entry.id,
                        size,
                    })?;
                } else {
                    out.line(size)?;
                }
            }
            Command::Mount { id, label } => {
                let (entry, _) = self.layer(&id, None)?;
                self.check_no_dockerd()?;
                let path = self
                    .open_driver(g, false)?
                    .get(&entry.id, label.as_deref())?;
                out.line(path.display())?;
            }
            Command::Umount { id } => {
                let (entry, _) = self.layer(&id, None)?;
                self.check_no_dockerd()?;
                if self.open_driver(g, false)?.detach(&entry.id)? {
                    out.note(format!("{}: unmounted", entry.id))?;
                } else {
                    return Err(anyhow::anyhow!("layer {}: not mounted", entry.id).into());
                }
            }
            Command::Fsck { repair } => return self.fsck(g, repair, out),
            other => {
                return Err(Failure::usage(format!(
                    "{} is a Docker data root: plies reads it, mounts its layers and takes \
                     their diffs, but `{}` would change layers Docker's databases must \
                     know of (use docker)",
                    self.root.display(),
                    command_name(&other)
                )));
            }
        }
        Ok(())
    }

    /// `plies ls` on a Docker root: image layers by chain id, containers'
    /// layers by container id.
    fn ls(&self, out: &Out) -> Result<()> {
        let entries = self.db.entries();
        if out.json {
            return out.json(&entries);
        }
        if out.quiet {
            for e in &entries {
                out.line(&e.id)?;
            }
            return Ok(());
        }
        // Twelve digits, keeping an init layer's `-init`.
        let short_id = |id: &str| match id.strip_suffix("-init") {
            Some(base) => format!("{}-init", base.get(..12).unwrap_or(base)),
            None => id.get(..12).unwrap_or(id).to_owned(),
        };
        out.line(format!(
            "{:<17}  {:<17}  {:>5}  {:<9}  {:<12}  {:<12}  {:>10}  CONTAINERS",
            "ID", "PARENT", "DEPTH", "KIND", "CHAIN ID", "DIFF ID", "SIZE"
        ))?;
        for e in &entries {
            let id = short_id(&e.id);
            out.line(format!(
                "{:<17}  {:<17}  {:>5}  {:<9}  {:<12}  {:<12}  {:>10}  {}",
                id,
                e.parent.as_deref().map_or_else(|| "-".to_owned(), short_id),
                e.depth,
                match e.kind {
                    DockerKind::Image => "image",
                    DockerKind::Init => "init",
                    DockerKind::Container => "container",
                    _ => "other",
                },
                e.chain_id.as_deref().map_or("-", short),
                e.diff_id.as_deref().map_or("-", short),
                e.size.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                if e.containers.is_empty() {
                    "-".to_owned()
                } else {
                    e.containers
                        .iter()
                        .map(|c| short_id(c))
                        .collect::<Vec<_>>()
                        .join(",")
                },
            ))?;
        }
        Ok(())
    }

    /// `plies fsck` on a Docker root: the driver's store checked, and every
    /// layer Docker's lineage names present; nothing repaired (the store and
    /// its databases are Docker's).
    fn fsck(&self, g: &Global, repair: bool, out: &Out) -> Result<(), Failure> {
        if repair {
            return Err(Failure::usage(format!(
                "{} is a Docker data root: plies reports what it finds there but repairs \
                 nothing of Docker's (run fsck without --repair)",
                self.root.display()
            )));
        }
        let driver = self.open_driver(g, true)?;
        let mut problems = Vec::new();
        let known: Vec<String> = driver.list()?;
        for e in self.db.entries() {
            if !known.contains(&e.id) {
                problems.push(format!(
                    "layer {} ({}) is in Docker's lineage but not in the {} store",
                    e.id,
                    e.chain_id
                        .clone()
                        .unwrap_or_else(|| format!("container {}", e.containers.join(","))),
                    self.driver
                ));
            }
        }
        let report = driver.fsck(false)?;
        for entry in &report.entries {
            problems.push(format!("store: {}", entry.finding));
        }
        for p in &problems {
            out.line(format!("found: {p}"))?;
        }
        if problems.is_empty() {
            out.note(format!(
                "{}: {} layers of Docker's, no problems",
                self.root.display(),
                known.len()
            ))?;
            Ok(())
        } else {
            Err(Failure::with_code(
                anyhow::anyhow!("{} problems found", problems.len()),
                crate::output::EXIT_DAMAGED,
            ))
        }
    }
}

/// The command's name as typed.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Create { .. } => "create",
        Command::Rm { .. } => "rm",
        Command::Apply { .. } => "apply",
        Command::Import { .. } => "import",
        Command::Status => "status",
        Command::Demo => "demo",
        Command::Serve { .. } => "serve",
        _ => "this command",
    }
}

/// The pid of a running dockerd whose data root is `root`, from `/proc`: its
/// `--data-root` (or the older `--graph`/`-g`), else the `data-root` of the
/// daemon.json it reads, else `/var/lib/docker`.
pub fn dockerd_serving(root: &Path) -> Option<u32> {
    let want = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_dockerd = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .is_some_and(|n| n == "dockerd");
        if !is_dockerd {
            continue;
        }
        let data_root = dockerd_data_root(&args);
        let data_root = std::fs::canonicalize(&data_root).unwrap_or(data_root);
        if data_root == want {
            return Some(pid);
        }
    }
    None
}

fn dockerd_data_root(args: &[String]) -> PathBuf {
    let flag = |names: &[&str]| -> Option<String> {
        let mut it = args.iter();
        while let Some(a) = it.next() {
            for n in names {
                if a == n {
                    return it.next().cloned();
                }
                if let Some(v) = a.strip_prefix(&format!("{n}=")) {
                    return Some(v.to_owned());
                }
            }
        }
        None
    };
    if let Some(root) = flag(&["--data-root", "--graph", "-g"]) {
        return PathBuf::from(root);
    }
    let config = flag(&["--config-file"]).unwrap_or_else(|| "/etc/docker/daemon.json".to_owned());
    std::fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("data-root")
                .and_then(|r| r.as_str())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/docker"))
}

#[cfg(test)]
mod tests {
    use super::dockerd_data_root;
    use std::path::PathBuf;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn data_roots_of_dockerd_command_lines() {
        assert_eq!(
            dockerd_data_root(&args(&["dockerd", "--data-root", "/srv/d"])),
            PathBuf::from("/srv/d")
        );
        assert_eq!(
            dockerd_data_root(&args(&[
                "/usr/sbin/dockerd",
                "--data-root=/srv/e",
                "-H",
                "x"
            ])),
            PathBuf::from("/srv/e")
        );
        assert_eq!(
            dockerd_data_root(&args(&["dockerd", "-g", "/old"])),
            PathBuf::from("/old")
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("daemon.json");
        std::fs::write(&config, r#"{"data-root": "/from/config"}"#).unwrap();
        assert_eq!(
            dockerd_data_root(&args(&[
                "dockerd",
                "--config-file",
                config.to_str().unwrap()
            ])),
            PathBuf::from("/from/config")
        );
    }
}
