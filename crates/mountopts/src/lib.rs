#![doc = include_str!("../README.md")]

pub mod limits;

pub use limits::{
    FSCONFIG_VALUE_MAX, KERNEL_MAX_STACK, LINK_ID_LEN, MAX_DEPTH, mount_data_limit, page_size,
};
