//! The `plies` command line.
//!
//! Its commands arrive with the drivers they sit on; until then it answers
//! `--version` and `--help` and refuses anything else with exit code 2.

use std::process::ExitCode;

const USAGE: &str = "usage: plies [--version | --help]\n\n\
plies keeps container image and container layers on disk.\n\
Commands (probe, import, mount, diff, changes, fsck, demo) come with plies-drivers.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("plies {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        None | Some("--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("plies: unknown command '{other}'\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
