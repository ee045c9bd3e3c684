#![doc = include_str!("../README.md")]

mod apply;
pub mod changes;
mod dir;
mod error;
mod export;
mod format;
mod idmap;
pub mod pax;
mod resolve;
pub mod size;
mod stream;
mod xattrs;

pub use apply::{ApplyOptions, ApplyStats, apply, apply_at, apply_file};
pub use error::{EntryError, Error};
pub use export::{Export, ExportOptions, export, export_at};
pub use format::WhiteoutFormat;
pub use idmap::IdMap;
pub use plies_whiteout::XattrNamespace;
