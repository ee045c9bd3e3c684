//! Arbitrary aufs stacks: every call fits in a page and the branches decode back in
//! order, or an error comes back; never a panic or an endless loop.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plies_mountopts::aufs::decode_branches;
use plies_mountopts::{AufsStack, mount_data_limit, plan_aufs};

#[derive(Arbitrary, Debug)]
struct Input {
    rw: Vec<u8>,
    ro: Vec<Vec<u8>>,
    label: Option<String>,
    dirperm1: bool,
}

fn path(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

fuzz_target!(|input: Input| {
    let stack = AufsStack {
        rw: path(input.rw),
        ro: input.ro.into_iter().map(path).collect(),
        label: input.label,
        dirperm1: input.dirperm1,
    };
    let Ok(calls) = plan_aufs(&stack) else {
        return;
    };
    for call in &calls {
        assert!(call.data().len() <= mount_data_limit());
    }
    assert_eq!(
        decode_branches(&calls),
        Some((stack.rw.clone(), stack.ro.clone()))
    );
});
