//! Arbitrary bytes as one path component: classification never panics, agrees
//! with the prefix rules, and `whiteout_name` round-trips every plain name.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use plies_whiteout::{
    META_PREFIX, NameKind, OPAQUE_MARKER, WHITEOUT_PREFIX, classify, whiteout_name,
};

fuzz_target!(|data: &[u8]| {
    let name = OsStr::from_bytes(data);
    match classify(name) {
        Ok(NameKind::Plain) => {
            assert!(!data.starts_with(WHITEOUT_PREFIX.as_bytes()));
            if data != b"." && data != b".." {
                let wh = whiteout_name(name);
                assert_eq!(classify(&wh).unwrap(), NameKind::Whiteout(name));
            }
        }
        Ok(NameKind::Whiteout(target)) => {
            assert_eq!(whiteout_name(target).as_bytes(), data);
            assert!(!target.is_empty() && target != "." && target != "..");
            assert!(!data.starts_with(META_PREFIX.as_bytes()));
        }
        Ok(NameKind::Opaque) => assert_eq!(data, OPAQUE_MARKER.as_bytes()),
        Ok(NameKind::AufsMeta(meta)) => {
            assert_eq!(&data[META_PREFIX.len()..], meta.as_bytes());
            assert!(!meta.is_empty());
        }
        Ok(_) => {}
        Err(_) => {
            let bad_component = data.is_empty() || data.contains(&b'/') || data.contains(&0);
            let bad_name = [".wh.", ".wh..", ".wh...", ".wh..wh."]
                .iter()
                .any(|b| data == b.as_bytes());
            assert!(bad_component || bad_name, "{data:?} refused");
        }
    }
});
