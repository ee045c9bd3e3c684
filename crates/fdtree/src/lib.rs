#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod error;
mod remove;

pub use error::Error;
pub use remove::{MAX_OPEN_DEPTH, remove_tree};
