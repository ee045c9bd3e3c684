#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod error;
pub mod protocol;
mod server;

pub use error::{Error, Result};
pub use plies_drivers::DriverChoice;
pub use server::{Config, DEFAULT_SOCKET, Server, serve};
