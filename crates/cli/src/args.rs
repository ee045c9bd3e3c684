//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Container layer storage at the shell: probe the kernel, import saved images,
/// mount layers, show their changes and diffs, check a store.
#[derive(Debug, Parser)]
#[command(name = "plies", version, about, max_term_width = 100)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Directory the store lives in.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/var/lib/plies"
    )]
    pub root: PathBuf,
    /// Layer driver.
    #[arg(long, global = true, value_enum, default_value_t = DriverArg::Auto)]
    pub driver: DriverArg,
    /// Driver option, Docker's `--storage-opt` spelling (`overlay2.max_depth=200`);
    /// may be repeated.
    #[arg(long = "storage-opt", global = true, value_name = "KEY=VALUE")]
    pub storage_opt: Vec<String>,
    /// Print data as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only what a script needs, and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more about what happens (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The layout `plies save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaveFormat {
    /// `docker save`'s: `manifest.json`, `<id>.json`, `<diff-id>/layer.tar`.
    Docker,
    /// An OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/`
    /// (layers uncompressed).
    Oci,
}

/// The driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverArg {
    /// The driver that already has data under the root, else the best this machine allows.
    Auto,
    /// overlayfs, Docker's overlay2 layout.
    Overlay2,
    /// aufs, Docker's aufs layout.
    Aufs,
    /// Full copies without mounts: runs anywhere.
    Vfs,
}

/// The commands. Each one's arguments are built only when it is the one
/// given (`defer`): a run pays for its own command, not for all of them.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Report what the kernel and the filesystem under the root support.
    Probe,
    /// Show the driver's status rows and the store's counts.
    Status,
    /// Create an empty layer.
    Create {
        /// The new layer's id.
        id: String,
        /// The layer it sits on.
        #[arg(long, value_name = "P")]
        parent: Option<String>,
        /// Make a read-write (container) layer.
        #[arg(long)]
        rw: bool,
        /// Size limit of a read-write layer (`10G`), where the driver has quotas.
        #[arg(long, value_name = "S", requires = "rw")]
        size: Option<String>,
    },
    /// Remove layers (unmounting them first).
    Rm {
        /// The layers.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// List the layers: id, parent, depth, size, mounted (on a Docker data
    /// root: chain id, diff id, size and the containers using each).
    Ls,
    /// List the images of a Docker data root: id, layers, top chain id, names.
    Images,
    /// Apply a layer tar (plain, gzip or zstd) to a layer.
    Apply {
        /// The layer.
        id: String,
        /// The tar, or `-` (the default) for standard input.
        #[arg(default_value = "-")]
        file: String,
    },
    /// Write a layer's changes as a layer tar.
    Diff {
        /// The layer.
        id: String,
        /// The layer to diff against (default: the layer's parent).
        #[arg(long, value_name = "P")]
        parent: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write images of a Docker data root as a `docker save` archive, each
    /// layer reproduced byte for byte from its tar-split.
    Save {
        /// The images: names (`repo:tag`), ids or unique id prefixes.
        #[arg(required = true)]
        images: Vec<String>,
        /// Write to this file instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The archive's layout.
        #[arg(long, value_enum, default_value_t = SaveFormat::Docker)]
        format: SaveFormat,
    },
    /// List the paths a layer adds (A), changes (C) and deletes (D).
    Changes {
        /// The layer.
        id: String,
        /// The layer to compare with (default: the layer's parent).
        #[arg(long, value_name = "P")]
        parent: Option<String>,
    },
    /// Print the size of a layer's own files.
    Size {
        /// The layer.
        id: String,
    },
    /// Mount a layer and print the path of its root filesystem.
    Mount {
        /// The layer.
        id: String,
        /// SELinux label of the mount.
        #[arg(long, value_name = "L")]
        label: Option<String>,
    },
    /// Unmount a layer mounted with `plies mount`.
    Umount {
        /// The layer.
        id: String,
    },
    /// Import a `docker save` archive or an OCI image layout (directory or tar).
    Import {
        /// The archive or the layout directory.
        source: PathBuf,
        /// Platform to pick from an OCI index: `os/arch[/variant]`.
        #[arg(long, default_value = "linux/amd64")]
        platform: String,
    },
    /// Check the store, and repair what can be repaired safely.
    Fsck {
        /// Repair what is safe to repair.
        #[arg(long)]
        repair: bool,
    },
    /// Build a small three-layer image, import, mount and diff it in a temporary root.
    Demo,
    /// Serve the store to another program.
    Serve {
        /// What to serve.
        #[command(subcommand)]
        protocol: ServeProtocol,
    },
}

/// Protocols `plies serve` speaks.
#[derive(Debug, Subcommand)]
pub enum ServeProtocol {
    /// Docker's graph-driver plugin protocol: run dockerd with `--experimental
    /// --storage-driver=plies` and it stores its layers here. Uses `--driver` and
    /// `--storage-opt`; the store's home is the one dockerd sends at Init. Stops on
    /// SIGTERM or SIGINT, unmounting every layer it mounted.
    Docker {
        /// The unix socket to listen on; dockerd finds `<name>.sock` in /run/docker/plugins.
        #[arg(long, default_value = plies_dockerplugin::DEFAULT_SOCKET)]
        socket: std::path::PathBuf,
    },
    /// containerd's snapshots.v1 gRPC service (a proxy snapshotter): name the
    /// socket in containerd's config under `[proxy_plugins.plies]` with `type =
    /// "snapshot"`. Keeps snapshots as layers of `--root` with `--driver`
    /// (overlay2 or vfs); containerd mounts what it returns. Stops on SIGTERM or
    /// SIGINT.
    Containerd {
        /// The unix socket to listen on (containerd's `address`).
        #[arg(long, default_value = "/run/plies/containerd.sock")]
        socket: std::path::PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "plies", "ls", "--root", "/tmp/x", "--json", "--driver", "vfs",
        ])
        .unwrap();
        assert_eq!(cli.global.root, PathBuf::from("/tmp/x"));
        assert!(cli.global.json);
        assert_eq!(cli.global.driver, DriverArg::Vfs);
        assert!(matches!(cli.command, Command::Ls));
    }

    #[test]
    fn size_needs_rw() {
        assert!(Cli::try_parse_from(["plies", "create", "a", "--size", "1G"]).is_err());
        let cli = Cli::try_parse_from(["plies", "create", "a", "--rw", "--size", "1G"]).unwrap();
        assert!(matches!(cli.command, Command::Create { rw: true, .. }));
    }
}
