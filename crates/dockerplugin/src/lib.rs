#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod config;
mod error;
pub mod protocol;
mod reply;
mod routes;
mod server;

pub use config::{Config, DEFAULT_SOCKET};
pub use error::{Error, Result};
pub use plies_drivers::DriverChoice;
pub use server::{Server, serve};
