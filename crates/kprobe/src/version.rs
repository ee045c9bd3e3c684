//! The running kernel's version, parsed from `uname -r`.

use std::cmp::Ordering;
use std::fmt;

use crate::{Error, Outcome};

/// A kernel version such as `6.18.44-fc-v657`: three numbers and the rest.
///
/// Comparisons look at `major.minor.patch` only, as the kernel's own version
/// macros do: `6.8.0-rc3` compares equal to `6.8.0`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelVersion {
    /// The first number (`6` in `6.18.44`).
    pub major: u32,
    /// The second number (`18` in `6.18.44`).
    pub minor: u32,
    /// The third number, `0` when the release has only two.
    pub patch: u32,
    /// Everything after the numbers (`-fc-v657`, `+`, `-rc3`), possibly empty.
    pub suffix: String,
}

impl KernelVersion {
    /// A version with no suffix.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        KernelVersion {
            major,
            minor,
            patch,
            suffix: String::new(),
        }
    }

    /// Parses a release string as `uname -r` prints it.
    ///
    /// Accepts `major.minor`, `major.minor.patch` and any suffix after them
    /// (`6.1.0-28-amd64`, `4.19.0+`, `6.8.0-rc3`, `5.10`). Fails with
    /// [`Error::KernelRelease`] when there is no `major.minor` prefix or a number
    /// does not fit in a `u32`.
    pub fn parse(release: &str) -> Result<Self, Error> {
        let err = || Error::KernelRelease {
            release: release.to_owned(),
        };
        let (major, rest) = leading_number(release).ok_or_else(err)?;
        let rest = rest.strip_prefix('.').ok_or_else(err)?;
        let (minor, rest) = leading_number(rest).ok_or_else(err)?;
        let (patch, rest) = match rest.strip_prefix('.').and_then(leading_number) {
            Some((patch, rest)) => (patch, rest),
            None => (0, rest),
        };
        Ok(KernelVersion {
            major,
            minor,
            patch,
            suffix: rest.to_owned(),
        })
    }

    /// `(major, minor, patch)`.
    pub fn numbers(&self) -> (u32, u32, u32) {
        (self.major, self.minor, self.patch)
    }

    /// Whether this version is `major.minor.patch` or newer.
    pub fn at_least(&self, major: u32, minor: u32, patch: u32) -> bool {
        self.numbers() >= (major, minor, patch)
    }
}

/// Splits the decimal number at the start of `s` from the rest.
fn leading_number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let n = s[..end].parse().ok()?;
    Some((n, &s[end..]))
}

impl PartialEq for KernelVersion {
    fn eq(&self, other: &Self) -> bool {
        self.numbers() == other.numbers()
    }
}

impl Eq for KernelVersion {}

impl PartialOrd for KernelVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KernelVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.numbers().cmp(&other.numbers())
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}{}",
            self.major, self.minor, self.patch, self.suffix
        )
    }
}

impl std::str::FromStr for KernelVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        KernelVersion::parse(s)
    }
}

/// The running kernel's version, from `uname(2)`.
///
/// Unsupported only when the release string cannot be parsed (the reason quotes it).
pub fn kernel_version() -> Outcome<KernelVersion> {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    match KernelVersion::parse(&release) {
        Ok(v) => Outcome::supported(v),
        Err(e) => Outcome::unsupported(e.to_string()),
    }
}
