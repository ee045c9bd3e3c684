#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod error;
mod filter;
mod meta;
pub mod proto;
mod server;
mod shared;
mod snapshotter;

pub use client::connect;
pub use error::{Error, Result};
pub use plies_drivers::{DriverChoice, Options};
pub use server::{Background, Server, Service};
pub use snapshotter::{Snapshotter, Usage};
