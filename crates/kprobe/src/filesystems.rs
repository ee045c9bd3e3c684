//! The filesystems the kernel has, from `/proc/filesystems`.

use crate::{Error, Outcome};

/// One line of `/proc/filesystems`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FilesystemEntry {
    /// The filesystem type name, as `mount -t` takes it.
    pub name: String,
    /// Whether the kernel marks it `nodev` (needs no block device).
    pub nodev: bool,
}

/// The kernel's filesystem types.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Filesystems {
    /// The entries in the kernel's order.
    pub entries: Vec<FilesystemEntry>,
}

impl Filesystems {
    /// Parses the contents of `/proc/filesystems`: lines of `nodev\t<name>` or
    /// `\t<name>`; blank lines are ignored.
    ///
    /// Fails with [`Error::FilesystemsLine`] on a line with another first field or
    /// no name.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || Error::FilesystemsLine {
                line: i + 1,
                text: line.to_owned(),
            };
            let (flag, name) = line.split_once('\t').ok_or_else(bad)?;
            let nodev = match flag.trim() {
                "" => false,
                "nodev" => true,
                _ => return Err(bad()),
            };
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(bad());
            }
            entries.push(FilesystemEntry {
                name: name.to_owned(),
                nodev,
            });
        }
        Ok(Filesystems { entries })
    }

    /// Whether the kernel lists filesystem type `name`.
    pub fn has(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name == name)
    }
}

/// The kernel's filesystem types, read from `/proc/filesystems`.
///
/// Loads no module; see [`load_module`]. Unsupported when the file cannot be
/// read or parsed (no `/proc`).
pub fn filesystems() -> Outcome<Filesystems> {
    match std::fs::read_to_string("/proc/filesystems") {
        Ok(text) => match Filesystems::parse(&text) {
            Ok(fs) => Outcome::supported(fs),
            Err(e) => Outcome::unsupported(e.to_string()),
        },
        Err(e) => Outcome::unsupported(format!("cannot read /proc/filesystems: {e}")),
    }
}

/// Asks `modprobe` to load kernel module `name` (e.g. `overlay`, `aufs`).
///
/// Runs the `modprobe` program found on `PATH`; only call it when the caller
/// wants modules loaded. Unsupported with modprobe's own message when it fails or
/// cannot be started.
pub fn load_module(name: &str) -> Outcome<()> {
    match std::process::Command::new("modprobe")
        .arg("--")
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Outcome::supported(()),
        Ok(out) => Outcome::unsupported(format!(
            "modprobe {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Outcome::unsupported(format!("cannot run modprobe: {e}")),
    }
}
