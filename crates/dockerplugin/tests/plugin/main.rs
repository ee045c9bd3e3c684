//! The plugin protocol against a plies driver, by hand over HTTP and through a
//! real dockerd.

mod client;
mod docker;
mod protocol;
mod tars;
