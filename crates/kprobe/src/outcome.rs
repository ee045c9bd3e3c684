//! [`Outcome`], the answer of every probe.

use std::fmt;

/// The answer of a probe.
///
/// `Supported(value)` means the probe ran and the feature works (or, for a question
/// of fact such as "is metacopy in use", that the probe could tell: `value` is the
/// answer). `Unsupported { reason }` means the feature is missing, the kernel refused
/// it, or the probe could not find out (no privileges, timed out, an interface the
/// crate cannot reach); `reason` says which, in words meant for a status line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome<T> {
    /// The probe ran and found the feature; the value carries what it found.
    Supported {
        /// What the probe found.
        value: T,
    },
    /// The feature is missing or could not be checked.
    Unsupported {
        /// Why, for a person reading a status line.
        reason: String,
    },
}

impl<T> Outcome<T> {
    /// A supported outcome carrying `value`.
    pub fn supported(value: T) -> Self {
        Outcome::Supported { value }
    }

    /// An unsupported outcome with `reason`.
    pub fn unsupported(reason: impl Into<String>) -> Self {
        Outcome::Unsupported {
            reason: reason.into(),
        }
    }

    /// Whether the probe found the feature.
    pub fn is_supported(&self) -> bool {
        matches!(self, Outcome::Supported { .. })
    }

    /// The value found, if supported.
    pub fn value(&self) -> Option<&T> {
        match self {
            Outcome::Supported { value } => Some(value),
            Outcome::Unsupported { .. } => None,
        }
    }

    /// The reason, if unsupported.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Supported { .. } => None,
            Outcome::Unsupported { reason } => Some(reason),
        }
    }

    /// Maps the supported value, keeping the reason.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Supported { value } => Outcome::Supported { value: f(value) },
            Outcome::Unsupported { reason } => Outcome::Unsupported { reason },
        }
    }

    /// Chains a probe that needs this one's value.
    pub fn and_then<U>(self, f: impl FnOnce(T) -> Outcome<U>) -> Outcome<U> {
        match self {
            Outcome::Supported { value } => f(value),
            Outcome::Unsupported { reason } => Outcome::Unsupported { reason },
        }
    }
}

impl Outcome<bool> {
    /// `true` only when the probe ran and answered yes.
    pub fn is_true(&self) -> bool {
        matches!(self, Outcome::Supported { value: true })
    }
}

impl<T: fmt::Display> fmt::Display for Outcome<T> {
    /// The value, or `false (<reason>)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Supported { value } => value.fmt(f),
            Outcome::Unsupported { reason } => write!(f, "false ({reason})"),
        }
    }
}

impl<T> Outcome<T> {
    /// Rewrites the reason of an unsupported outcome.
    pub fn map_unsupported(self, f: impl FnOnce(String) -> String) -> Outcome<T> {
        match self {
            Outcome::Unsupported { reason } => Outcome::Unsupported { reason: f(reason) },
            supported => supported,
        }
    }
}
