//! The limits a layer stack and its mount data live within.

/// The deepest stack of lower layers in Docker's overlay2 format: a `lower` file
/// names at most this many parents, and legacy mount data is planned for at most this many.
pub const MAX_DEPTH: usize = 128;

/// The most lower layers the kernel stacks in one overlay mount (`OVL_MAX_STACK`);
/// the 501st `lowerdir+` is refused with `EINVAL`. Only the fsconfig plan may go past
/// [`MAX_DEPTH`], up to this.
pub const KERNEL_MAX_STACK: usize = 500;

/// Length of an overlay2 link id: 26 characters of the base32 alphabet (`A-Z`, `2-7`).
pub const LINK_ID_LEN: usize = 26;

/// The longest value one `fsconfig(FSCONFIG_SET_STRING)` call takes for an overlay
/// layer path (`lowerdir+`, `upperdir`, `workdir`); longer is `EINVAL`.
pub const FSCONFIG_VALUE_MAX: usize = 255;

/// The size of a memory page, which bounds legacy `mount(2)` data.
///
/// The kernel copies mount data into one page and forces its last byte to NUL, so
/// data may be at most `page_size() - 1` bytes long ([`mount_data_limit`]).
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// The longest mount data `mount(2)` takes whole: one page less its terminating NUL.
pub fn mount_data_limit() -> usize {
    page_size() - 1
}
