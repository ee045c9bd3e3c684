//! Arbitrary bytes applied as a layer tar: never a panic, never a change
//! outside the root.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use plies_archive::{ApplyOptions, WhiteoutFormat, XattrNamespace, apply};

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), m.len())
        })
        .collect();
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, tar)) = data.split_first() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let canary = tmp.path().join("canary");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("secret"), b"canary").unwrap();
    let whiteouts = match selector % 3 {
        0 => WhiteoutFormat::Overlay(XattrNamespace::Trusted),
        1 => WhiteoutFormat::Aufs,
        _ => WhiteoutFormat::Merged,
    };
    let opts = ApplyOptions { whiteouts, privileged: selector & 4 == 0, ..ApplyOptions::default() };
    let before = (listing(tmp.path()), listing(&canary));
    let _ = apply(tar, &root, &opts);
    assert_eq!((listing(tmp.path()), listing(&canary)), before, "something outside the root changed");
    assert_eq!(std::fs::read(canary.join("secret")).unwrap(), b"canary");
});
