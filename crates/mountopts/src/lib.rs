#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod aufs;
pub mod error;
pub mod escape;
pub mod label;
pub mod limits;
#[cfg(feature = "mount")]
#[cfg_attr(docsrs, doc(cfg(feature = "mount")))]
pub mod mount;
pub mod overlay;

pub use aufs::{AufsCall, AufsStack, plan_aufs};
pub use error::{Error, PlanKind, Result};
pub use label::format_mount_label;
pub use limits::{
    FSCONFIG_VALUE_MAX, KERNEL_MAX_STACK, LINK_ID_LEN, MAX_DEPTH, mount_data_limit, page_size,
};
pub use overlay::{
    FsParam, FsconfigPlan, LayerPath, LegacyPlan, MountMode, OverlayOptions, OverlayPlan,
    OverlayStack, RedirectDir, UpperDirs, plan, plan_fsconfig, plan_legacy,
};
