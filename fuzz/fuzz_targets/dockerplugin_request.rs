//! Plugin requests from untrusted bytes: decoding never panics, a decoded
//! request encodes and decodes to itself, and ApplyDiff queries parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plies_dockerplugin::protocol::{ApplyDiffQuery, InitRequest, Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Request>(data) {
        let again: Request = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
    if let Ok(r) = serde_json::from_slice::<InitRequest>(data) {
        let again: InitRequest = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
    let _ = serde_json::from_slice::<Response>(data);
    let text = String::from_utf8_lossy(data);
    let q = ApplyDiffQuery::parse(&text);
    assert!(q.id.len() <= text.len() && q.parent.len() <= text.len());
});
