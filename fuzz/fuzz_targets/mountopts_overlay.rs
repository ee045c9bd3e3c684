//! Arbitrary overlay stacks and options: a plan is within its limits and decodes back
//! to the input, or an error comes back; never a panic.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plies_mountopts::escape::{split_lowerdir, split_options};
use plies_mountopts::{
    FSCONFIG_VALUE_MAX, FsParam, LayerPath, MountMode, OverlayOptions, OverlayPlan, OverlayStack,
    UpperDirs, mount_data_limit, plan,
};

#[derive(Arbitrary, Debug)]
struct Layer {
    absolute: Vec<u8>,
    relative: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    home: Vec<u8>,
    lowers: Vec<Layer>,
    upper: Option<(Layer, Layer)>,
    index_off: bool,
    userxattr: bool,
    volatile: bool,
    label: Option<String>,
    max_depth: u16,
    mode: u8,
}

fn path(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

fn layer(l: Layer) -> LayerPath {
    LayerPath {
        absolute: path(l.absolute),
        relative: l.relative.map(path),
    }
}

fuzz_target!(|input: Input| {
    let stack = OverlayStack {
        home: path(input.home),
        lowers: input.lowers.into_iter().map(layer).collect(),
        upper: input.upper.map(|(u, w)| UpperDirs {
            upper: layer(u),
            work: layer(w),
        }),
    };
    let mut opts = OverlayOptions::default();
    opts.index_off = input.index_off;
    opts.userxattr = input.userxattr;
    opts.volatile = input.volatile;
    opts.label = input.label;
    opts.max_depth = usize::from(input.max_depth);
    let mode = match input.mode % 3 {
        0 => MountMode::Auto,
        1 => MountMode::Legacy,
        _ => MountMode::Fsconfig,
    };
    let Ok(p) = plan(&stack, &opts, mode) else {
        return;
    };
    match p {
        OverlayPlan::Legacy(p) => {
            assert!(p.data.len() <= mount_data_limit());
            assert!(stack.lowers.len() <= 128);
            let relative = p.cwd.is_some();
            let options = split_options(&p.data);
            let value = options
                .iter()
                .find_map(|o| o.as_encoded_bytes().strip_prefix(b"lowerdir=").map(<[u8]>::to_vec))
                .expect("a lowerdir option");
            let back = split_lowerdir(&OsString::from_vec(value));
            let want: Vec<PathBuf> = stack
                .lowers
                .iter()
                .map(|l| if relative { l.relative.clone().unwrap() } else { l.absolute.clone() })
                .collect();
            assert_eq!(back, want);
        }
        OverlayPlan::Fsconfig(p) => {
            assert!(stack.lowers.len() <= 500);
            for param in &p.params {
                if let FsParam::String(_, v) = param {
                    assert!(v.len() <= FSCONFIG_VALUE_MAX);
                }
            }
        }
    }
});
