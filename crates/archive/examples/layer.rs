//! Apply a layer tar to a directory, or export a directory as a layer tar.
//!
//! ```sh
//! cargo run --release -p plies-archive --example layer -- apply LAYER.tar DIR
//! cargo run --release -p plies-archive --example layer -- export DIR > LAYER.tar
//! ```
//!
//! Plain trees (no whiteouts) are treated as merged trees; `cargo xtask bench` times
//! this against GNU tar on the same input.

use std::path::Path;

use plies_archive::{ApplyOptions, ExportOptions, WhiteoutFormat, apply_file, export};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["apply", tar, dir] => {
            let file = std::fs::File::open(tar)?;
            let opts = ApplyOptions::default().with_whiteouts(WhiteoutFormat::Merged);
            let stats = apply_file(&file, Path::new(dir), &opts)?;
            eprintln!("{} entries, {} bytes of content", stats.entries, stats.size);
        }
        ["export", dir] => {
            let opts = ExportOptions::default().with_whiteouts(WhiteoutFormat::Merged);
            export(Path::new(dir), &opts)?.write_to(std::io::stdout().lock())?;
        }
        _ => {
            eprintln!("usage: layer apply LAYER.tar DIR | layer export DIR > LAYER.tar");
            std::process::exit(2);
        }
    }
    Ok(())
}
