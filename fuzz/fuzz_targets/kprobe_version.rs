//! Kernel release strings: parsing never panics, and a parsed version prints as
//! a release that parses back to the same version.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plies_kprobe::KernelVersion;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = KernelVersion::parse(text) {
        let again = KernelVersion::parse(&v.to_string()).expect("printed version parses");
        assert_eq!(again.numbers(), v.numbers());
        assert_eq!(again.suffix, v.suffix);
    }
});
