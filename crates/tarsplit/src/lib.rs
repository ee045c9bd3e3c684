#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod assemble;
mod crc64;
mod disassemble;
mod entry;
mod error;
mod json;
mod packer;
mod unpacker;

pub use assemble::{FileSource, assemble};
pub use disassemble::Disassembler;
pub use entry::{Entry, EntryKind};
pub use error::Error;
pub use packer::{EntrySink, Packer};
pub use unpacker::{DEFAULT_MAX_LINE_LEN, DEFAULT_MAX_PAYLOAD_LEN, Unpacker};
