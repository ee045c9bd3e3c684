//! Whether the backing filesystem fills in `d_type` in directory entries.

use std::path::Path;
use std::time::Duration;

use rustix::fs::{FileType, Mode, OFlags};

use crate::scratch::bounded;
use crate::{DEFAULT_TIMEOUT, Outcome};

/// Whether the filesystem under `dir` reports entry types from `getdents64`:
/// a file, a directory and a symlink are made in a scratch directory and read
/// back; any `DT_UNKNOWN` means no (overlayfs needs `d_type` to find whiteouts).
pub fn d_type(dir: &Path) -> Outcome<()> {
    d_type_within(dir, DEFAULT_TIMEOUT)
}

pub(crate) fn d_type_within(dir: &Path, timeout: Duration) -> Outcome<()> {
    bounded("d-type", dir, timeout, |s| {
        let made = std::fs::write(s.path().join("file"), b"")
            .and_then(|()| std::fs::create_dir(s.path().join("dir")))
            .and_then(|()| std::os::unix::fs::symlink("file", s.path().join("link")));
        if let Err(e) = made {
            return Outcome::unsupported(format!("cannot create test entries: {e}"));
        }
        let fd = match rustix::fs::open(
            s.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                return Outcome::unsupported(format!("cannot open the scratch directory: {e}"));
            }
        };
        let dir = match rustix::fs::Dir::read_from(&fd) {
            Ok(d) => d,
            Err(e) => {
                return Outcome::unsupported(format!("cannot read the scratch directory: {e}"));
            }
        };
        let mut seen = 0;
        for entry in dir {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => return Outcome::unsupported(format!("getdents failed: {e}")),
            };
            let name = entry.file_name().to_string_lossy();
            if name == "." || name == ".." {
                continue;
            }
            seen += 1;
            if entry.file_type() == FileType::Unknown {
                return Outcome::unsupported(format!(
                    "the filesystem returns DT_UNKNOWN for entry {name:?}"
                ));
            }
        }
        if seen != 3 {
            return Outcome::unsupported(format!("read back {seen} of 3 test entries"));
        }
        Outcome::supported(())
    })
}
