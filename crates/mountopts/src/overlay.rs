//! Overlay mount plans: from a stack of layers to data the kernel accepts.
//!
//! [`plan_legacy`] gives `mount(2)` data: absolute paths when they fit in a page,
//! else paths relative to the store's home (to be mounted from a thread whose working
//! directory is the home), else [`Error::TooLong`]. [`plan_fsconfig`] gives the new
//! mount API's parameters, one `lowerdir+` per layer, which lifts the page limit and
//! Docker's depth of 128.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::escape::{check_path, escape_into, escaped_len};
use crate::label::{check_label, format_mount_label, label_suffix_len};
use crate::limits::{FSCONFIG_VALUE_MAX, KERNEL_MAX_STACK, MAX_DEPTH, mount_data_limit};

/// One directory of the stack, by its absolute path and, where the store has one, its
/// shorter path relative to the store's home (`l/<linkid>`, `<id>/diff`, `<id>/work`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPath {
    /// The absolute path.
    pub absolute: PathBuf,
    /// The same directory relative to [`OverlayStack::home`], if it has such a name.
    pub relative: Option<PathBuf>,
}

impl LayerPath {
    /// A directory known only by its absolute path.
    pub fn absolute(path: impl Into<PathBuf>) -> Self {
        LayerPath {
            absolute: path.into(),
            relative: None,
        }
    }

    /// A directory inside the store's home: `home.join(relative)`, and `relative`.
    pub fn in_home(home: &Path, relative: impl Into<PathBuf>) -> Self {
        let relative = relative.into();
        // One allocation of the final size (`join` copies `home`, then grows).
        let mut absolute =
            PathBuf::with_capacity(home.as_os_str().len() + 1 + relative.as_os_str().len());
        absolute.push(home);
        absolute.push(&relative);
        LayerPath {
            absolute,
            relative: Some(relative),
        }
    }
}

/// The writable part of a stack: the upper dir and overlay's work dir beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpperDirs {
    /// The upper (diff) directory.
    pub upper: LayerPath,
    /// The work directory, on the same filesystem as `upper`.
    pub work: LayerPath,
}

/// A stack of layers to mount as one overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayStack {
    /// The store's home, from which relative paths resolve.
    pub home: PathBuf,
    /// Lower layers, uppermost first.
    pub lowers: Vec<LayerPath>,
    /// The writable layer; `None` mounts the lowers read-only.
    pub upper: Option<UpperDirs>,
}

/// overlayfs's `redirect_dir=` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectDir {
    /// `on`: create and follow redirects.
    On,
    /// `follow`: follow redirects, never create them.
    Follow,
    /// `nofollow`: neither follow nor create (fallback to copy-up on rename).
    NoFollow,
    /// `off`: rename of a merged directory fails with `EXDEV`.
    Off,
}

impl RedirectDir {
    /// The value as the kernel spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectDir::On => "on",
            RedirectDir::Follow => "follow",
            RedirectDir::NoFollow => "nofollow",
            RedirectDir::Off => "off",
        }
    }
}

/// Mount options beside the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OverlayOptions {
    /// Put `index=off` first, as Docker does where `/sys/module/overlay/parameters/index` exists.
    pub index_off: bool,
    /// `userxattr`: overlay metadata in `user.overlay.*` (needed in a user namespace).
    pub userxattr: bool,
    /// `metacopy=on|off`, or the kernel's default.
    pub metacopy: Option<bool>,
    /// `redirect_dir=…`, or the kernel's default.
    pub redirect_dir: Option<RedirectDir>,
    /// `volatile`: no syncs to the upper filesystem (for throw-away layers).
    pub volatile: bool,
    /// SELinux label for `context="…"`.
    pub label: Option<String>,
    /// Most lower layers allowed: [`MAX_DEPTH`] by default. Legacy data never goes
    /// past [`MAX_DEPTH`]; the fsconfig plan goes up to this, at most [`KERNEL_MAX_STACK`].
    pub max_depth: usize,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        OverlayOptions {
            index_off: false,
            userxattr: false,
            metacopy: None,
            redirect_dir: None,
            volatile: false,
            label: None,
            max_depth: MAX_DEPTH,
        }
    }
}

impl OverlayOptions {
    fn label(&self) -> Option<&str> {
        self.label.as_deref().filter(|l| !l.is_empty())
    }

    /// Options after the layers in legacy data, each with its leading comma.
    fn trailing(&self) -> String {
        let mut out = String::new();
        if self.userxattr {
            out.push_str(",userxattr");
        }
        if let Some(on) = self.metacopy {
            out.push_str(if on { ",metacopy=on" } else { ",metacopy=off" });
        }
        if let Some(r) = self.redirect_dir {
            out.push_str(",redirect_dir=");
            out.push_str(r.as_str());
        }
        if self.volatile {
            out.push_str(",volatile");
        }
        out
    }
}

/// Legacy `mount(2)` data for an overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyPlan {
    /// The mount data, at most `page_size() - 1` bytes.
    pub data: OsString,
    /// Where the mount must be made from: `Some(home)` when the data holds relative
    /// paths. Carry it out from a thread that unshared `CLONE_FS` (never by changing
    /// the process's working directory).
    pub cwd: Option<PathBuf>,
}

/// One `fsconfig` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsParam {
    /// `FSCONFIG_SET_FLAG` of a key.
    Flag(&'static str),
    /// `FSCONFIG_SET_STRING` of a key to a value.
    String(&'static str, OsString),
}

/// New mount API parameters for an overlay: `fsopen("overlay")`, these `fsconfig`
/// calls in order, then `FSCONFIG_CMD_CREATE`, `fsmount` and `move_mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsconfigPlan {
    /// The `fsconfig` calls, in order; lowers as `lowerdir+`, uppermost first.
    pub params: Vec<FsParam>,
    /// `Some(home)` when the values are relative to the home (some absolute path was
    /// longer than [`FSCONFIG_VALUE_MAX`]); carry it out from a `CLONE_FS`-private thread.
    pub cwd: Option<PathBuf>,
}

/// Either kind of overlay plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayPlan {
    /// `mount(2)` with one string of data.
    Legacy(LegacyPlan),
    /// The new mount API.
    Fsconfig(FsconfigPlan),
}

impl OverlayPlan {
    /// The error kind this plan reports under.
    pub fn kind(&self) -> crate::PlanKind {
        match self {
            OverlayPlan::Legacy(LegacyPlan { cwd: None, .. }) => crate::PlanKind::Absolute,
            OverlayPlan::Legacy(_) => crate::PlanKind::Relative,
            OverlayPlan::Fsconfig(_) => crate::PlanKind::Fsconfig,
        }
    }
}

/// How paths are written: absolute, or relative to the home.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Absolute,
    Relative,
}

fn pick(layer: &LayerPath, form: Form) -> Option<&Path> {
    match form {
        Form::Absolute => Some(&layer.absolute),
        Form::Relative => layer.relative.as_deref(),
    }
}

fn check_layer(role: &'static str, layer: &LayerPath, legacy: bool) -> Result<()> {
    check_path(role, layer.absolute.as_os_str(), legacy)?;
    if !layer.absolute.is_absolute() {
        return Err(Error::InvalidPath {
            role,
            path: layer.absolute.clone(),
            reason: "it is not absolute",
        });
    }
    if let Some(rel) = &layer.relative {
        check_path(role, rel.as_os_str(), legacy)?;
        if rel.is_absolute() {
            return Err(Error::InvalidPath {
                role,
                path: rel.clone(),
                reason: "its relative form is absolute",
            });
        }
    }
    Ok(())
}

fn check_stack(
    stack: &OverlayStack,
    opts: &OverlayOptions,
    max: usize,
    legacy: bool,
) -> Result<()> {
    if opts.max_depth > KERNEL_MAX_STACK {
        return Err(Error::MaxDepthAboveKernel {
            requested: opts.max_depth,
            limit: KERNEL_MAX_STACK,
        });
    }
    if stack.lowers.is_empty() {
        return Err(Error::NoLowers);
    }
    if stack.upper.is_none() && stack.lowers.len() < 2 {
        return Err(Error::ReadOnlyNeedsTwoLowers(stack.lowers.len()));
    }
    if stack.lowers.len() > max {
        return Err(Error::TooDeep {
            depth: stack.lowers.len(),
            max,
        });
    }
    check_path("home", stack.home.as_os_str(), legacy)?;
    for lower in &stack.lowers {
        check_layer("lowerdir", lower, legacy)?;
    }
    if let Some(up) = &stack.upper {
        check_layer("upperdir", &up.upper, legacy)?;
        check_layer("workdir", &up.work, legacy)?;
    }
    if let Some(label) = opts.label() {
        check_label(label)?;
    }
    Ok(())
}

/// The length of legacy data in `form`, or `None` if some path has no such form.
fn legacy_len(stack: &OverlayStack, opts: &OverlayOptions, form: Form) -> Option<usize> {
    let mut len = 0;
    if opts.index_off {
        len += "index=off,".len();
    }
    len += "lowerdir=".len();
    for (i, lower) in stack.lowers.iter().enumerate() {
        len += usize::from(i > 0) + escaped_len(pick(lower, form)?.as_os_str());
    }
    if let Some(up) = &stack.upper {
        len += ",upperdir=".len() + escaped_len(pick(&up.upper, form)?.as_os_str());
        len += ",workdir=".len() + escaped_len(pick(&up.work, form)?.as_os_str());
    }
    len += opts.trailing().len();
    len += label_suffix_len(opts.label());
    Some(len)
}

fn legacy_data(stack: &OverlayStack, opts: &OverlayOptions, form: Form, len: usize) -> OsString {
    let mut data = Vec::with_capacity(len);
    if opts.index_off {
        data.extend_from_slice(b"index=off,");
    }
    data.extend_from_slice(b"lowerdir=");
    for (i, lower) in stack.lowers.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        escape_into(
            &mut data,
            pick(lower, form).unwrap_or(&lower.absolute).as_os_str(),
        );
    }
    if let Some(up) = &stack.upper {
        data.extend_from_slice(b",upperdir=");
        escape_into(
            &mut data,
            pick(&up.upper, form)
                .unwrap_or(&up.upper.absolute)
                .as_os_str(),
        );
        data.extend_from_slice(b",workdir=");
        escape_into(
            &mut data,
            pick(&up.work, form)
                .unwrap_or(&up.work.absolute)
                .as_os_str(),
        );
    }
    data.extend_from_slice(opts.trailing().as_bytes());
    if let Some(label) = opts.label() {
        // The options so far are non-empty, so this appends `,context="…"`.
        data.extend_from_slice(&format_mount_label("-", label).as_bytes()[1..]);
    }
    OsString::from_vec(data)
}

/// Plans legacy `mount(2)` data for `stack`.
///
/// Absolute paths when the data fits in `page_size() - 1` bytes; otherwise the
/// relative forms (every layer must then have one); otherwise [`Error::TooLong`]
/// with the shorter length. Errors before any length check: no lowers, a read-only
/// stack of fewer than two lowers, more lowers than `min(opts.max_depth, MAX_DEPTH)`
/// ([`Error::TooDeep`]), a path that is empty, not absolute, or holds NUL, newline or
/// `"`, or a label with a quote, backslash or control character.
pub fn plan_legacy(stack: &OverlayStack, opts: &OverlayOptions) -> Result<LegacyPlan> {
    check_stack(stack, opts, opts.max_depth.min(MAX_DEPTH), true)?;
    let limit = mount_data_limit();
    let absolute = legacy_len(stack, opts, Form::Absolute).expect("absolute form always exists");
    if absolute <= limit {
        return Ok(LegacyPlan {
            data: legacy_data(stack, opts, Form::Absolute, absolute),
            cwd: None,
        });
    }
    match legacy_len(stack, opts, Form::Relative) {
        Some(relative) if relative <= limit => Ok(LegacyPlan {
            data: legacy_data(stack, opts, Form::Relative, relative),
            cwd: Some(stack.home.clone()),
        }),
        Some(relative) => Err(Error::TooLong {
            needed: relative,
            limit,
        }),
        None => Err(Error::TooLong {
            needed: absolute,
            limit,
        }),
    }
}

fn fsconfig_params(
    stack: &OverlayStack,
    opts: &OverlayOptions,
    form: Form,
) -> Result<Vec<FsParam>> {
    let mut params = Vec::with_capacity(stack.lowers.len() + 8);
    let value = |key: &'static str, layer: &LayerPath, escape: bool| -> Result<FsParam> {
        let path = pick(layer, form).unwrap_or(&layer.absolute);
        // upperdir/workdir values are unescaped by the kernel; `lowerdir+` is taken as is.
        let bytes = if escape {
            escape_backslashes(path.as_os_str())
        } else {
            path.as_os_str().as_bytes().to_vec()
        };
        if bytes.len() > FSCONFIG_VALUE_MAX {
            return Err(Error::ValueTooLong {
                key,
                value: path.to_path_buf(),
                len: bytes.len(),
                limit: FSCONFIG_VALUE_MAX,
            });
        }
        Ok(FsParam::String(key, OsString::from_vec(bytes)))
    };
    if opts.index_off {
        params.push(FsParam::String("index", "off".into()));
    }
    for lower in &stack.lowers {
        params.push(value("lowerdir+", lower, false)?);
    }
    if let Some(up) = &stack.upper {
        params.push(value("upperdir", &up.upper, true)?);
        params.push(value("workdir", &up.work, true)?);
    }
    if opts.userxattr {
        params.push(FsParam::Flag("userxattr"));
    }
    if let Some(on) = opts.metacopy {
        params.push(FsParam::String(
            "metacopy",
            if on { "on" } else { "off" }.into(),
        ));
    }
    if let Some(r) = opts.redirect_dir {
        params.push(FsParam::String("redirect_dir", r.as_str().into()));
    }
    if opts.volatile {
        params.push(FsParam::Flag("volatile"));
    }
    if let Some(label) = opts.label() {
        params.push(FsParam::String("context", label.into()));
    }
    Ok(params)
}

fn escape_backslashes(path: &OsStr) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// Plans new-mount-API parameters for `stack`: one `lowerdir+` per lower layer,
/// uppermost first, up to `opts.max_depth` (at most [`KERNEL_MAX_STACK`]).
///
/// Values are absolute paths when each fits in [`FSCONFIG_VALUE_MAX`] bytes, else the
/// relative forms ([`FsconfigPlan::cwd`] is then the home); a value too long in both
/// forms is [`Error::ValueTooLong`]. `"` is allowed here: nothing splits the values.
pub fn plan_fsconfig(stack: &OverlayStack, opts: &OverlayOptions) -> Result<FsconfigPlan> {
    check_stack(stack, opts, opts.max_depth, false)?;
    match fsconfig_params(stack, opts, Form::Absolute) {
        Ok(params) => Ok(FsconfigPlan { params, cwd: None }),
        Err(absolute_err) => {
            let all_relative = stack.lowers.iter().all(|l| l.relative.is_some())
                && stack
                    .upper
                    .as_ref()
                    .is_none_or(|u| u.upper.relative.is_some() && u.work.relative.is_some());
            if !all_relative {
                return Err(absolute_err);
            }
            Ok(FsconfigPlan {
                params: fsconfig_params(stack, opts, Form::Relative)?,
                cwd: Some(stack.home.clone()),
            })
        }
    }
}

/// Which plan [`plan`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MountMode {
    /// Legacy data up to [`MAX_DEPTH`]; the fsconfig plan only for deeper stacks.
    #[default]
    Auto,
    /// Always legacy `mount(2)` data.
    Legacy,
    /// Always the new mount API.
    Fsconfig,
}

/// Plans `stack` in `mode`: [`MountMode::Auto`] takes legacy data while the stack is
/// at most [`MAX_DEPTH`] deep and the data fits, and the fsconfig plan otherwise.
pub fn plan(stack: &OverlayStack, opts: &OverlayOptions, mode: MountMode) -> Result<OverlayPlan> {
    match mode {
        MountMode::Legacy => plan_legacy(stack, opts).map(OverlayPlan::Legacy),
        MountMode::Fsconfig => plan_fsconfig(stack, opts).map(OverlayPlan::Fsconfig),
        MountMode::Auto => match plan_legacy(stack, opts) {
            Ok(p) => Ok(OverlayPlan::Legacy(p)),
            Err(Error::TooDeep { .. } | Error::TooLong { .. } | Error::InvalidPath { .. }) => {
                plan_fsconfig(stack, opts).map(OverlayPlan::Fsconfig)
            }
            Err(e) => Err(e),
        },
    }
}
