//! How the server listens and which driver it opens.

use std::path::PathBuf;
use std::time::Duration;

use plies_drivers::DriverChoice;

/// Where dockerd looks for the plugin by default: `--storage-driver=plies`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/plies.sock";

/// How the server listens and which driver it opens at Docker's `Init`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The unix socket to serve on; dockerd finds `NAME.sock` in
    /// `/run/docker/plugins/` as `--storage-driver=NAME`.
    pub socket: PathBuf,
    /// The driver opened under Docker's `Home` at `Init`.
    pub driver: DriverChoice,
    /// Driver options added after the ones dockerd sends (`--storage-opt`).
    pub options: Vec<String>,
    /// How long requests in flight may finish at shutdown before their
    /// connections are dropped; the layers are put in any case.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Serves on `socket` with the driver `auto` picks, no extra options, and
    /// ten seconds of grace at shutdown.
    pub fn new(socket: impl Into<PathBuf>) -> Config {
        Config {
            socket: socket.into(),
            driver: DriverChoice::Auto,
            options: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// The same configuration with the driver `driver`.
    pub fn with_driver(mut self, driver: DriverChoice) -> Config {
        self.driver = driver;
        self
    }

    /// The same configuration with driver options added (`overlay2.size=10G`).
    pub fn with_options<I, S>(mut self, options: I) -> Config
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options.extend(options.into_iter().map(Into::into));
        self
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::new(DEFAULT_SOCKET)
    }
}
