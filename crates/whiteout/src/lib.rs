#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod convert;
mod error;
mod name;
mod namespace;
mod overlay;

pub use error::Error;
pub use name::{META_PREFIX, NameKind, OPAQUE_MARKER, WHITEOUT_PREFIX, classify, whiteout_name};
pub use namespace::XattrNamespace;
pub use overlay::{
    clear_opaque, create_overlay_whiteout, has_redirect_or_metacopy, is_opaque,
    is_overlay_whiteout, is_overlay_whiteout_at, set_opaque,
};
