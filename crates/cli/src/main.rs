#![doc = include_str!("../README.md")]

mod args;
mod commands;
mod compression;
mod demo;
mod digest;
mod docker;
mod fsck;
mod image;
mod import;
mod log;
mod output;
mod probe;
mod save;
mod store;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use args::{Cli, Command, ServeProtocol};
use output::{Failure, Out};
use store::{Access, Store};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing(&cli.global);
    let out = Out::new(&cli.global);
    match run(cli, &out) {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

fn run(cli: Cli, out: &Out) -> Result<ExitCode, Failure> {
    let g = &cli.global;
    let open = |access| Store::open(g, access);
    if !matches!(cli.command, Command::Probe) {
        if let Some(driver) = docker::detect(g) {
            docker::Docker::open(g, driver)?.run(g, cli.command, out)?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    match cli.command {
        Command::Images => commands::images(&*open(Access::Read)?, out)?,
        Command::Save {
            images,
            output,
            format,
        } => save::save(
            &*open(Access::Read)?,
            &images,
            output.as_deref(),
            format,
            out,
        )?,
        Command::Probe => probe::run(g, out)?,
        Command::Status => commands::status(&open(Access::Read)?, out)?,
        Command::Create {
            id,
            parent,
            rw,
            size,
        } => commands::create(
            &open(Access::Write)?,
            &id,
            parent.as_deref(),
            rw,
            size.as_deref(),
            out,
        )?,
        Command::Rm { ids } => commands::rm(&open(Access::Write)?, &ids, out)?,
        Command::Ls => commands::ls(&open(Access::Read)?, out)?,
        Command::Apply { id, file } => commands::apply(&open(Access::Write)?, &id, &file, out)?,
        Command::Diff { id, parent, output } => commands::diff(
            &open(Access::Read)?,
            &id,
            parent.as_deref(),
            output.as_deref(),
        )?,
        Command::Changes { id, parent } => {
            commands::changes(&open(Access::Read)?, &id, parent.as_deref(), out)?
        }
        Command::Size { id } => commands::size(&open(Access::Read)?, &id, out)?,
        Command::Mount { id, label } => {
            commands::mount(&open(Access::Write)?, &id, label.as_deref(), out)?
        }
        Command::Umount { id } => commands::umount(&open(Access::Write)?, &id, out)?,
        Command::Import { source, platform } => {
            let platform = image::Platform::parse(&platform).map_err(Failure::usage)?;
            let interrupted = import::interrupt_flag();
            let store = open(Access::Write)?;
            let result = import::import(&store, &source, &platform, !out.quiet, &interrupted);
            if interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = result {
                    return Err(Failure::with_code(e, output::EXIT_INTERRUPTED));
                }
            }
            let images = result?;
            if out.json {
                out.json(&images)?;
            } else {
                for image in &images {
                    out.line(&image.top)?;
                }
            }
        }
        Command::Fsck { repair } => {
            let access = if repair {
                Access::Check
            } else {
                Access::Inspect
            };
            if fsck::run(&open(access)?, repair, out)? {
                return Ok(ExitCode::from(output::EXIT_DAMAGED));
            }
        }
        Command::Demo => demo::run(out, &import::interrupt_flag())?,
        Command::Serve {
            protocol: ServeProtocol::Docker { socket },
        } => {
            let config = plies_dockerplugin::Config::new(socket)
                .with_driver(store::choice(g.driver))
                .with_options(g.storage_opt.iter().cloned());
            plies_dockerplugin::Server::bind(config)
                .and_then(plies_dockerplugin::Server::run_until_signal)
                .map_err(anyhow::Error::from)?;
        }
        Command::Serve {
            protocol: ServeProtocol::Containerd { socket },
        } => {
            let options = plies_drivers::Options::parse(&g.storage_opt).context("--storage-opt")?;
            let snapshotter =
                plies_snapshotter::Snapshotter::open(&g.root, store::choice(g.driver), &options)
                    .with_context(|| format!("opening the store under {}", g.root.display()))?;
            tracing::info!(
                socket = %socket.display(),
                driver = snapshotter.driver_name(),
                "serving containerd snapshots"
            );
            plies_snapshotter::Server::bind(&socket, snapshotter)
                .and_then(plies_snapshotter::Server::run_until_signal)
                .map_err(anyhow::Error::from)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--help` and `--version` print as clap renders them; a usage error is one
/// line, `plies: <what is wrong> (see plies --help)`, exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(output::EXIT_USAGE);
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("plies: {first} (see plies --help)");
    ExitCode::from(output::EXIT_USAGE)
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
    log::Stderr::install(level, std::io::IsTerminal::is_terminal(&std::io::stderr()));
}
