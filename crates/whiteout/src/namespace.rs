//! The xattr namespace overlayfs keeps its metadata in.

/// Where overlayfs reads its xattrs: `trusted.overlay.*` (the default, needs
/// `CAP_SYS_ADMIN`) or `user.overlay.*` (mounts with the `userxattr` option, as in
/// a user namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrNamespace {
    /// `trusted.overlay.*`.
    #[default]
    Trusted,
    /// `user.overlay.*` (overlay mounted with `userxattr`).
    User,
}

impl XattrNamespace {
    /// The prefix of every overlay xattr: `trusted.overlay.` or `user.overlay.`.
    pub fn overlay_prefix(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => "trusted.overlay.",
            XattrNamespace::User => "user.overlay.",
        }
    }

    /// The opaque directory xattr: `trusted.overlay.opaque` or `user.overlay.opaque`.
    pub fn opaque_key(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => "trusted.overlay.opaque",
            XattrNamespace::User => "user.overlay.opaque",
        }
    }

    /// The renamed-directory (and metacopy data path) xattr:
    /// `trusted.overlay.redirect` or `user.overlay.redirect`.
    pub fn redirect_key(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => "trusted.overlay.redirect",
            XattrNamespace::User => "user.overlay.redirect",
        }
    }

    /// The metadata-only copy-up xattr: `trusted.overlay.metacopy` or `user.overlay.metacopy`.
    pub fn metacopy_key(self) -> &'static str {
        match self {
            XattrNamespace::Trusted => "trusted.overlay.metacopy",
            XattrNamespace::User => "user.overlay.metacopy",
        }
    }

    /// Whether the xattr `name` belongs to overlayfs in this namespace.
    pub fn is_overlay_xattr(self, name: &[u8]) -> bool {
        name.starts_with(self.overlay_prefix().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let t = XattrNamespace::default();
        assert_eq!(t, XattrNamespace::Trusted);
        assert_eq!(t.overlay_prefix(), "trusted.overlay.");
        assert_eq!(t.opaque_key(), "trusted.overlay.opaque");
        assert_eq!(t.redirect_key(), "trusted.overlay.redirect");
        assert_eq!(t.metacopy_key(), "trusted.overlay.metacopy");
        let u = XattrNamespace::User;
        assert_eq!(u.overlay_prefix(), "user.overlay.");
        assert_eq!(u.opaque_key(), "user.overlay.opaque");
        assert_eq!(u.redirect_key(), "user.overlay.redirect");
        assert_eq!(u.metacopy_key(), "user.overlay.metacopy");
        assert!(u.is_overlay_xattr(b"user.overlay.origin"));
        assert!(!u.is_overlay_xattr(b"trusted.overlay.origin"));
        assert!(!t.is_overlay_xattr(b"user.overlay.origin"));
    }
}
