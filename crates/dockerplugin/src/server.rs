//! The server's lifecycle: the socket, the runtime, the connections, and the
//! driver `Init` opened, put at shutdown.

use std::future::Future;
use std::io;
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use plies_drivers::{Driver, IdMaps};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::routes::{self, Endpoint};

/// A plugin server bound to its socket, not yet answering.
///
/// [`Server::bind`] takes the socket, so that a caller learns of a bad path or a
/// socket in use before it reports being ready; [`Server::run`] answers dockerd
/// until shutdown.
#[derive(Debug)]
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: StdListener,
    state: Arc<State>,
}

/// What the handlers share: the configuration and the driver `Init` opened.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) driver: RwLock<Option<Opened>>,
}

/// The driver opened at `Init`, with what it was opened for.
#[derive(Debug, Clone)]
pub(crate) struct Opened {
    pub(crate) home: PathBuf,
    pub(crate) opts: Vec<String>,
    pub(crate) maps: IdMaps,
    pub(crate) driver: Arc<dyn Driver>,
}

impl Server {
    /// Takes the socket of `config`: makes its directory, replaces a stale socket
    /// file nobody answers on, and listens.
    ///
    /// # Errors
    /// [`Error::SocketInUse`] when a server answers on the socket already,
    /// [`Error::Socket`] or [`Error::Bind`] with the system's error,
    /// [`Error::Runtime`] when the async runtime cannot start.
    pub fn bind(config: Config) -> Result<Server> {
        let path = config.socket.clone();
        let socket_err = |source| Error::Socket {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(socket_err)?;
        }
        if std::fs::symlink_metadata(&path).is_ok() {
            if StdStream::connect(&path).is_ok() {
                return Err(Error::SocketInUse { path });
            }
            std::fs::remove_file(&path).map_err(socket_err)?;
        }
        let bind_err = |source| Error::Bind {
            path: path.clone(),
            source,
        };
        let listener = StdListener::bind(&path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("plies-dockerplugin")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| Error::Runtime { source })?;
        Ok(Server {
            runtime,
            listener,
            state: Arc::new(State {
                config,
                driver: RwLock::new(None),
            }),
        })
    }

    /// The socket the server listens on.
    pub fn socket(&self) -> &Path {
        &self.state.config.socket
    }

    /// Answers dockerd until `shutdown` completes; then lets requests in flight
    /// finish (up to [`Config::shutdown_grace`]), puts every mounted layer, and
    /// removes the socket.
    ///
    /// # Errors
    /// [`Error::Bind`] when the socket cannot be polled, [`Error::Cleanup`]
    /// when a layer stays mounted.
    pub fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let Server {
            runtime,
            listener,
            state,
        } = self;
        let result = runtime.block_on(accept_until(listener, state.clone(), shutdown));
        let cleaned = runtime.block_on(put_all(state.clone()));
        if let Err(e) = std::fs::remove_file(&state.config.socket) {
            tracing::warn!(socket = ?state.config.socket, error = %e, "could not remove the socket");
        }
        runtime.shutdown_timeout(state.config.shutdown_grace);
        result.and(cleaned)
    }

    /// [`Server::run`] until the process gets SIGTERM or SIGINT.
    ///
    /// # Errors
    /// As [`Server::run`]; [`Error::Runtime`] when the signals cannot be watched.
    pub fn run_until_signal(self) -> Result<()> {
        let signals = self.runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            Ok::<_, io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        });
        let (mut term, mut int) = signals.map_err(|source| Error::Runtime { source })?;
        self.run(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        })
    }
}

/// Binds `config.socket` and serves until `shutdown` completes: [`Server::bind`]
/// then [`Server::run`].
///
/// # Errors
/// As [`Server::bind`] and [`Server::run`].
pub fn serve(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    Server::bind(config)?.run(shutdown)
}

async fn accept_until(
    listener: StdListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let path = state.config.socket.clone();
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|source| Error::Bind {
        path: path.clone(),
        source,
    })?;
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(socket = ?path, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| routes::handle(state.clone(), req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running at shutdown are dropped");
    }
    Ok(())
}

/// Puts every layer the driver mounted.
async fn put_all(state: Arc<State>) -> Result<()> {
    let Some(opened) = state.opened() else {
        return Ok(());
    };
    let driver = opened.driver;
    tokio::task::spawn_blocking(move || {
        driver.cleanup().map_err(|source| Error::Cleanup {
            driver: driver.name(),
            source: Box::new(source),
        })
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl State {
    /// The driver `Init` opened, if any.
    pub(crate) fn opened(&self) -> Option<Opened> {
        self.driver
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The driver for a call to `endpoint`, which needs one opened.
    pub(crate) fn driver(&self, endpoint: Endpoint) -> Result<Arc<dyn Driver>> {
        self.opened()
            .map(|o| o.driver)
            .ok_or_else(|| Error::NotInitialized {
                endpoint: endpoint.as_str().to_owned(),
            })
    }
}

/// Runs `f` on the blocking pool; a panic in it is re-raised here.
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
