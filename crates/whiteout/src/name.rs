//! Whiteout names as layer tars and aufs branches spell them.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::Error;

/// Prefix of a whiteout name: `.wh.<name>` deletes `<name>` of the lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Prefix of aufs private metadata and of the opaque marker.
pub const META_PREFIX: &str = ".wh..wh.";
/// The opaque marker: `<dir>/.wh..wh..opq` hides everything the lower layers have in `<dir>`.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What one path component means in the OCI/aufs whiteout format.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh.<name>`: a whiteout deleting `<name>` (the value).
    Whiteout(&'a OsStr),
    /// `.wh..wh..opq`: its directory is opaque.
    Opaque,
    /// `.wh..wh.<meta>`: aufs private metadata such as `plnk`, `aufs` or `orph` (the value).
    AufsMeta(&'a OsStr),
}

/// Checks that `name` is one path component: not empty, no `/`, no NUL.
pub(crate) fn check_component(name: &OsStr) -> Result<(), Error> {
    let bytes = name.as_bytes();
    let reason = if bytes.is_empty() {
        "empty name"
    } else if bytes.contains(&b'/') {
        "contains '/'"
    } else if bytes.contains(&0) {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Checks that `name` names an entry inside a directory (a component other than `.` and `..`).
pub(crate) fn check_entry_name(name: &OsStr) -> Result<(), Error> {
    check_component(name)?;
    if name == "." || name == ".." {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "'.' and '..' name no entry",
        });
    }
    Ok(())
}

/// Classifies one path component.
///
/// `.wh..wh..opq` is [`NameKind::Opaque`], any other `.wh..wh.<meta>` is
/// [`NameKind::AufsMeta`], `.wh.<name>` is [`NameKind::Whiteout`] of `<name>`, and
/// everything else (`.` and `..` included) is [`NameKind::Plain`].
///
/// # Errors
///
/// [`Error::InvalidName`] for an empty name, a name containing `/` or NUL, a
/// whiteout of nothing (`.wh.`), of `.` or `..` (`.wh..`, `.wh...`), and empty
/// aufs metadata (`.wh..wh.`).
pub fn classify(name: &OsStr) -> Result<NameKind<'_>, Error> {
    check_component(name)?;
    let bytes = name.as_bytes();
    let invalid = |reason| Error::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if bytes == OPAQUE_MARKER.as_bytes() {
        return Ok(NameKind::Opaque);
    }
    if let Some(meta) = bytes.strip_prefix(META_PREFIX.as_bytes()) {
        if meta.is_empty() {
            return Err(invalid("aufs metadata name is empty"));
        }
        return Ok(NameKind::AufsMeta(OsStr::from_bytes(meta)));
    }
    if let Some(target) = bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        return match target {
            b"" => Err(invalid("whiteout of an empty name")),
            b"." | b".." => Err(invalid("whiteout of '.' or '..'")),
            _ => Ok(NameKind::Whiteout(OsStr::from_bytes(target))),
        };
    }
    Ok(NameKind::Plain)
}

/// The whiteout name deleting `target`: `.wh.` followed by `target`.
///
/// `target` should be a [`NameKind::Plain`] name other than `.` and `..`; for those,
/// [`classify`] of the result gives back [`NameKind::Whiteout`] of `target`.
pub fn whiteout_name(target: &OsStr) -> OsString {
    let mut name = OsString::with_capacity(WHITEOUT_PREFIX.len() + target.len());
    name.push(WHITEOUT_PREFIX);
    name.push(target);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> Result<NameKind<'_>, &'static str> {
        classify(OsStr::new(name)).map_err(|e| match e {
            Error::InvalidName { reason, .. } => reason,
            other => panic!("unexpected {other}"),
        })
    }

    #[test]
    fn plain_names() {
        for name in ["etc", ".", "..", ".wh", "wh.x", "a.wh.b", ".whx", "..wh.x"] {
            assert_eq!(kind(name), Ok(NameKind::Plain), "{name}");
        }
    }

    #[test]
    fn whiteouts() {
        assert_eq!(kind(".wh.etc"), Ok(NameKind::Whiteout(OsStr::new("etc"))));
        assert_eq!(kind(".wh....."), Ok(NameKind::Whiteout(OsStr::new("...."))));
        assert_eq!(kind(".wh..wh"), Ok(NameKind::Whiteout(OsStr::new(".wh"))));
        assert_eq!(
            kind(".wh..hidden"),
            Ok(NameKind::Whiteout(OsStr::new(".hidden")))
        );
    }

    #[test]
    fn opaque_and_meta() {
        assert_eq!(kind(".wh..wh..opq"), Ok(NameKind::Opaque));
        assert_eq!(
            kind(".wh..wh.plnk"),
            Ok(NameKind::AufsMeta(OsStr::new("plnk")))
        );
        assert_eq!(
            kind(".wh..wh.aufs"),
            Ok(NameKind::AufsMeta(OsStr::new("aufs")))
        );
        assert_eq!(
            kind(".wh..wh.orph"),
            Ok(NameKind::AufsMeta(OsStr::new("orph")))
        );
        assert_eq!(
            kind(".wh..wh..opqx"),
            Ok(NameKind::AufsMeta(OsStr::new(".opqx")))
        );
    }

    #[test]
    fn invalid_names() {
        assert_eq!(kind(""), Err("empty name"));
        assert_eq!(kind(".wh."), Err("whiteout of an empty name"));
        assert_eq!(kind(".wh.."), Err("whiteout of '.' or '..'"));
        assert_eq!(kind(".wh..."), Err("whiteout of '.' or '..'"));
        assert_eq!(kind(".wh..wh."), Err("aufs metadata name is empty"));
        assert_eq!(kind(".wh.a/b"), Err("contains '/'"));
        assert_eq!(kind("a/b"), Err("contains '/'"));
        assert_eq!(kind(".wh.a\0"), Err("contains NUL"));
    }

    #[test]
    fn non_utf8_names() {
        let name = OsStr::from_bytes(b".wh.\xff\xfe");
        assert_eq!(
            classify(name).unwrap(),
            NameKind::Whiteout(OsStr::from_bytes(b"\xff\xfe"))
        );
    }

    proptest::proptest! {
        #[test]
        fn whiteout_name_round_trips(target in proptest::collection::vec(1u8..=255, 1..40)) {
            let target = OsStr::from_bytes(&target);
            if classify(target).ok() == Some(NameKind::Plain) && target != "." && target != ".." {
                let name = whiteout_name(target);
                proptest::prop_assert_eq!(classify(&name).unwrap(), NameKind::Whiteout(target));
            }
        }

        #[test]
        fn classify_never_panics(name in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = classify(OsStr::from_bytes(&name));
        }
    }
}
