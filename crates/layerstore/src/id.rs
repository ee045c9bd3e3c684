//! Layer id rules.

/// The longest layer id, in bytes: a file name (255 bytes) less the 9 bytes of the
/// `-removing` / `-creating` / `-applying` suffixes of work in progress.
pub const MAX_ID_LEN: usize = 255 - REMOVING_SUFFIX.len();

/// Suffix of a layer (or aufs entry) being removed; swept at open.
pub const REMOVING_SUFFIX: &str = "-removing";

/// Suffix of a layer being built; it becomes visible by a rename to its id.
pub const CREATING_SUFFIX: &str = "-creating";

/// Suffix of the copy of a layer directory that a diff is applied to before it
/// replaces the directory (used by `plies-drivers`); reserved so that no layer's
/// directory can be taken for one.
pub const APPLYING_SUFFIX: &str = "-applying";

/// Why an id is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id is empty.
    #[error("empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// The id contains `/`.
    #[error("contains '/'")]
    Slash,
    /// The id contains a NUL byte.
    #[error("contains NUL")]
    Nul,
    /// The id contains a newline (it would break aufs `layers/` files).
    #[error("contains a newline")]
    Newline,
    /// The id is `.` or `..`.
    #[error("is '.' or '..'")]
    Dot,
    /// The id starts with `.`: such names belong to the store itself
    /// ([`STORE_DIR`](crate::STORE_DIR), probe scratch).
    #[error("starts with '.', which names the store keeps for itself")]
    Hidden,
    /// The id is `l`, the overlay2 link directory.
    #[error("is 'l', the link directory")]
    LinkDir,
    /// The id ends in `-removing`, `-creating` or `-applying`, names kept for
    /// half-done work.
    #[error("ends in a suffix reserved for work in progress")]
    ReservedSuffix,
}

/// Checks a layer id against the rules every store applies before any write.
///
/// ```
/// use plies_layerstore::{validate_id, IdError};
/// assert!(validate_id("3832b587-init").is_ok());
/// assert_eq!(validate_id("a/b"), Err(IdError::Slash));
/// ```
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if id.contains('/') {
        return Err(IdError::Slash);
    }
    if id.contains('\0') {
        return Err(IdError::Nul);
    }
    if id.contains('\n') {
        return Err(IdError::Newline);
    }
    if id == "." || id == ".." {
        return Err(IdError::Dot);
    }
    if id.starts_with('.') {
        return Err(IdError::Hidden);
    }
    if id == "l" {
        return Err(IdError::LinkDir);
    }
    if [REMOVING_SUFFIX, CREATING_SUFFIX, APPLYING_SUFFIX]
        .iter()
        .any(|suffix| id.ends_with(suffix))
    {
        return Err(IdError::ReservedSuffix);
    }
    Ok(())
}

pub(crate) fn check_id(id: &str) -> crate::Result<()> {
    validate_id(id).map_err(|reason| crate::Error::InvalidId {
        id: id.to_owned(),
        reason,
    })
}
