//! Driver options and names from untrusted strings: parsing never panics, and a
//! parsed option list parses the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let options: Vec<&str> = text.split('\n').collect();
    if let Ok(parsed) = plies_drivers::Options::parse(&options) {
        assert_eq!(plies_drivers::Options::parse(&options).ok(), Some(parsed));
    }
    for name in &options {
        if let Ok(choice) = name.parse::<plies_drivers::DriverChoice>() {
            assert_eq!(choice.as_str().parse::<plies_drivers::DriverChoice>().ok(), Some(choice));
        }
    }
});
