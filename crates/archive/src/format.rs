//! How a layer directory marks deletions and opaque directories.

use plies_whiteout::XattrNamespace;

/// How whiteouts are written into the target directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// overlayfs: `.wh.<name>` becomes a 0/0 character device `<name>`, and
    /// `.wh..wh..opq` sets the opaque xattr (in the given namespace) on its directory.
    Overlay(XattrNamespace),
    /// aufs: `.wh.` entries are kept as the files the tar holds.
    Aufs,
    /// A mounted union or a full tree: `.wh.<name>` deletes `<name>`, and
    /// `.wh..wh..opq` empties its directory of everything this tar did not add.
    Merged,
}

impl Default for WhiteoutFormat {
    fn default() -> Self {
        WhiteoutFormat::Overlay(XattrNamespace::Trusted)
    }
}
