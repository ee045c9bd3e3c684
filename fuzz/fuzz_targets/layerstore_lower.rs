//! Parsing overlay2 `lower` files, `link` files and `l/` link targets: never
//! panics, and whatever parses formats back to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plies_layerstore::{LinkId, format_lower, parse_link_target, parse_lower};

fuzz_target!(|data: &[u8]| {
    if let Ok(links) = parse_lower(data, plies_mountopts::KERNEL_MAX_STACK) {
        assert!(!links.is_empty() && links.len() <= plies_mountopts::KERNEL_MAX_STACK);
        assert_eq!(format_lower(&links).as_bytes(), data);
    }
    if let Ok(link) = LinkId::parse(data) {
        assert_eq!(link.as_str().as_bytes(), data);
    }
    if let Ok(id) = parse_link_target(data) {
        assert!(!id.contains('/') && id != "." && id != "..");
        assert_eq!(LinkId::target_for(&id).as_bytes(), data);
    }
});
