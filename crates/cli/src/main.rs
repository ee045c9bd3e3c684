//! The `plies` command: container layer storage at the shell.
//!
//! See the crate's README for the commands and exit codes.

mod args;
// Used by `import`, which arrives with the drivers.
#[allow(dead_code)]
mod compression;
#[allow(dead_code)]
mod digest;
#[allow(dead_code)]
mod image;
#[allow(dead_code)]
mod output;
mod probe;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use output::{Failure, Out};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.global);
    let out = Out::new(&cli.global);
    match run(cli, &out) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

fn run(cli: Cli, out: &Out) -> Result<ExitCode, Failure> {
    let g = &cli.global;
    match cli.command {
        Command::Probe => probe::run(g, out)?,
        other => {
            return Err(Failure::usage(format!(
                "{} needs a layer driver, which this build does not have yet",
                command_name(&other)
            )));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Probe => "probe",
        Command::Status => "status",
        Command::Create { .. } => "create",
        Command::Rm { .. } => "rm",
        Command::Ls => "ls",
        Command::Apply { .. } => "apply",
        Command::Diff { .. } => "diff",
        Command::Changes { .. } => "changes",
        Command::Size { .. } => "size",
        Command::Mount { .. } => "mount",
        Command::Umount { .. } => "umount",
        Command::Import { .. } => "import",
        Command::Fsck { .. } => "fsck",
        Command::Demo => "demo",
    }
}

/// Library warnings go to stderr through tracing: `-q` keeps errors only, `-v`
/// adds debug, `-vv` trace.
fn init_tracing(g: &args::Global) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::DEBUG,
        (false, _) => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .init();
}
