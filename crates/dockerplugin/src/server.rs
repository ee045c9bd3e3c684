//! The server: socket, runtime, routing, and the driver behind it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use plies_drivers::{CreateOptions, Driver, DriverChoice, IdMap, IdMaps, Options};

use crate::body;
use crate::error::{Error, Result};
use crate::protocol::{
    self, Activation, ApplyDiffQuery, Capabilities, InitRequest, Request, Response,
};

/// Where dockerd looks for the plugin by default: `--storage-driver=plies`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/plies.sock";

/// The endpoints that take a JSON request and answer one.
const JSON_ENDPOINTS: [&str; 12] = [
    "GraphDriver.Create",
    "GraphDriver.CreateReadWrite",
    "GraphDriver.Remove",
    "GraphDriver.Get",
    "GraphDriver.Put",
    "GraphDriver.Exists",
    "GraphDriver.Status",
    "GraphDriver.GetMetadata",
    "GraphDriver.Cleanup",
    "GraphDriver.Changes",
    "GraphDriver.DiffSize",
    "GraphDriver.Capabilities",
];

/// Largest JSON request body taken; layer tars go to `ApplyDiff`, unbounded.
const MAX_JSON: usize = 1 << 20;

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
struct State {
    config: Config,
    driver: RwLock<Option<Opened>>,
}

/// The driver opened at `Init`, with what it was opened for.
#[derive(Debug, Clone)]
struct Opened {
    home: PathBuf,
    opts: Vec<String>,
    maps: IdMaps,
    driver: Arc<dyn Driver>,
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
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
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

type Body = BoxBody<Bytes, io::Error>;
type HttpResponse = hyper::Response<Body>;

async fn handle(
    state: Arc<State>,
    req: hyper::Request<Incoming>,
) -> std::result::Result<HttpResponse, Infallible> {
    let endpoint = req.uri().path().trim_start_matches('/').to_owned();
    if req.method() != Method::POST {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            &error_response(&format!("{endpoint} takes POST")),
        ));
    }
    let response = match endpoint.as_str() {
        "Plugin.Activate" => json(
            StatusCode::OK,
            &Activation {
                implements: vec!["GraphDriver".to_owned()],
            },
        ),
        "GraphDriver.ApplyDiff" => apply_diff(&state, req).await,
        "GraphDriver.Diff" => match read_json::<Request>(&endpoint, req).await {
            Ok(r) => diff(&state, r).await,
            Err(e) => failure(&e),
        },
        "GraphDriver.Init" => match read_json::<InitRequest>(&endpoint, req).await {
            Ok(r) => answer(init(state, r).await.map(|()| Response::default())),
            Err(e) => failure(&e),
        },
        name if JSON_ENDPOINTS.contains(&name) => {
            match read_json::<Request>(&endpoint, req).await {
                Ok(r) => answer(call(&state, endpoint, r).await),
                Err(e) => failure(&e),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &error_response(&format!("no endpoint {endpoint}")),
        ),
    };
    Ok(response)
}

impl State {
    fn opened(&self) -> Option<Opened> {
        self.driver
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn driver(&self, endpoint: &str) -> Result<Arc<dyn Driver>> {
        self.opened()
            .map(|o| o.driver)
            .ok_or_else(|| Error::NotInitialized {
                endpoint: endpoint.to_owned(),
            })
    }
}

/// Opens the driver under Docker's `Home` with its id maps (`--userns-remap`);
/// a repeated `Init` for the same home, options and maps (dockerd restarted)
/// keeps the driver and its mounts.
async fn init(state: Arc<State>, r: InitRequest) -> Result<()> {
    let home = PathBuf::from(&r.home);
    let maps = IdMaps::new(
        id_map(&r.uid_maps, "UIDMaps", &home)?,
        id_map(&r.gid_maps, "GIDMaps", &home)?,
    );
    let mut opts = r.opts;
    opts.extend(state.config.options.iter().cloned());
    if let Some(o) = state.opened()
        && o.home == home
        && o.opts == opts
        && o.maps == maps
    {
        return Ok(());
    }
    let choice = state.config.driver;
    let blocking_state = state.clone();
    run_blocking(move || {
        let init_err = |source| Error::Init {
            driver: choice.as_str(),
            home: home.clone(),
            source: Box::new(source),
        };
        let options = Options::parse(&opts)
            .map_err(init_err)?
            .with_id_maps(maps.clone());
        let driver: Arc<dyn Driver> = plies_drivers::open(&home, choice, &options)
            .map_err(init_err)?
            .into();
        tracing::info!(driver = driver.name(), home = ?home, "driver opened");
        let previous = blocking_state
            .driver
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(Opened {
                home,
                opts,
                maps,
                driver,
            });
        if let Some(previous) = previous
            && let Err(e) = previous.driver.cleanup()
        {
            tracing::warn!(error = %e, "could not put the layers of the previous driver");
        }
        Ok(())
    })
    .await
}

/// Docker's id ranges as the drivers take them: each of 32-bit ids, not empty.
fn id_map(ranges: &[protocol::IdMap], field: &'static str, home: &Path) -> Result<Vec<IdMap>> {
    ranges
        .iter()
        .map(|r| {
            let bad = |reason| Error::BadIdMap {
                field,
                range: format!("{}:{}:{}", r.container_id, r.host_id, r.size),
                home: home.to_path_buf(),
                reason,
            };
            let id = |v: i64| u32::try_from(v).map_err(|_| bad("an id is not within 0..2^32"));
            let (container_id, host_id, size) = (id(r.container_id)?, id(r.host_id)?, id(r.size)?);
            if size == 0 {
                return Err(bad("the range is empty"));
            }
            let fits = |first: u32| u64::from(first) + u64::from(size) <= 1 << 32;
            if !fits(container_id) || !fits(host_id) {
                return Err(bad("the range ends beyond 2^32"));
            }
            Ok(IdMap {
                container_id,
                host_id,
                size,
            })
        })
        .collect()
}

/// Runs one JSON endpoint's driver call on a blocking thread.
async fn call(state: &State, endpoint: String, r: Request) -> Result<Response> {
    if endpoint == "GraphDriver.Capabilities" {
        // Layer tars are rebuilt from their tar-split data by dockerd, not
        // reproduced byte for byte by the driver.
        return Ok(Response {
            capabilities: Some(Capabilities {
                reproduces_exact_diffs: false,
            }),
            ..Response::default()
        });
    }
    if endpoint == "GraphDriver.Exists" {
        // dockerd reads any failure as "does not exist".
        let Ok(driver) = state.driver(&endpoint) else {
            return Ok(Response::default());
        };
        return run_blocking(move || {
            Ok(Response {
                exists: driver.exists(&r.id),
                ..Response::default()
            })
        })
        .await;
    }
    let driver = state.driver(&endpoint)?;
    run_blocking(move || {
        let id = r.id.clone();
        let parent = (!r.parent.is_empty()).then_some(r.parent.as_str());
        let label = (!r.mount_label.is_empty()).then_some(r.mount_label.as_str());
        let driver_err = |source| Error::Driver {
            endpoint: endpoint.clone(),
            id: id.clone(),
            source: Box::new(source),
        };
        let create_options = || CreateOptions {
            mount_label: label.map(str::to_owned),
            storage_opt: r.storage_opt.clone(),
            ..CreateOptions::default()
        };
        let mut response = Response::default();
        match endpoint.as_str() {
            "GraphDriver.Create" => driver
                .create(&r.id, parent, &create_options())
                .map_err(driver_err)?,
            "GraphDriver.CreateReadWrite" => driver
                .create_read_write(&r.id, parent, &create_options())
                .map_err(driver_err)?,
            "GraphDriver.Remove" => driver.remove(&r.id).map_err(driver_err)?,
            "GraphDriver.Get" => {
                let dir = driver.get(&r.id, label).map_err(driver_err)?;
                response.dir = dir.to_string_lossy().into_owned();
            }
            "GraphDriver.Put" => driver.put(&r.id).map_err(driver_err)?,
            "GraphDriver.Status" => {
                response.status = Some(driver.status().into_iter().map(|(k, v)| [k, v]).collect());
            }
            "GraphDriver.GetMetadata" => {
                let metadata: BTreeMap<String, String> =
                    driver.metadata(&r.id).map_err(driver_err)?;
                response.metadata = Some(metadata);
            }
            "GraphDriver.Cleanup" => driver.cleanup().map_err(driver_err)?,
            "GraphDriver.Changes" => {
                let changes = driver.changes(&r.id, parent).map_err(driver_err)?;
                response.changes = Some(
                    changes
                        .into_iter()
                        .map(|c| protocol::Change {
                            path: c.path.to_string_lossy().into_owned(),
                            kind: c.kind.as_docker_kind(),
                        })
                        .collect(),
                );
            }
            "GraphDriver.DiffSize" => {
                let size = driver.diff_size(&r.id, parent).map_err(driver_err)?;
                response.size = Some(i64::try_from(size).unwrap_or(i64::MAX));
            }
            _ => {
                return Err(Error::BadRequest {
                    endpoint: endpoint.clone(),
                    reason: "no such endpoint".to_owned(),
                });
            }
        }
        Ok(response)
    })
    .await
}

/// `Diff`: the layer tar, streamed as the driver produces it. An error before
/// the first byte answers `{"Err":…}`; one while streaming cuts the body short.
async fn diff(state: &State, r: Request) -> HttpResponse {
    let endpoint = "GraphDriver.Diff";
    let driver = match state.driver(endpoint) {
        Ok(d) => d,
        Err(e) => return failure(&e),
    };
    let opened = run_blocking(move || {
        let parent = (!r.parent.is_empty()).then_some(r.parent.as_str());
        driver.diff(&r.id, parent).map_err(|source| Error::Driver {
            endpoint: endpoint.to_owned(),
            id: r.id.clone(),
            source: Box::new(source),
        })
    })
    .await;
    match opened {
        Ok(reader) => {
            let mut response = hyper::Response::new(body::stream_reader(reader).boxed());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
            response
        }
        Err(e) => failure(&e),
    }
}

/// `ApplyDiff?id=…&parent=…`: the request body goes to the driver as it arrives.
async fn apply_diff(state: &State, req: hyper::Request<Incoming>) -> HttpResponse {
    let endpoint = "GraphDriver.ApplyDiff";
    let ApplyDiffQuery { id, parent } = ApplyDiffQuery::parse(req.uri().query().unwrap_or(""));
    let driver = match state.driver(endpoint) {
        Ok(d) => d,
        Err(e) => return failure(&e),
    };
    let mut reader = body::read_body(req.into_body());
    let applied = run_blocking(move || {
        let parent = (!parent.is_empty()).then_some(parent.as_str());
        let applied = driver.apply_diff(&id, parent, &mut reader);
        // The tar ends before its padding, and a refused one before its end:
        // the rest of the body is read either way, so that dockerd, still
        // uploading, gets the answer (and the reason) instead of a closed
        // pipe, and the connection can take the next request.
        if let Err(e) = io::copy(&mut reader, &mut io::sink()) {
            tracing::debug!(layer = id, error = %e, "body ended badly after the layer tar");
        }
        applied.map_err(|source| Error::Driver {
            endpoint: endpoint.to_owned(),
            id: id.clone(),
            source: Box::new(source),
        })
    })
    .await;
    answer(applied.map(|size| Response {
        size: Some(i64::try_from(size).unwrap_or(i64::MAX)),
        ..Response::default()
    }))
}

/// Runs `f` on the blocking pool; a panic in it is re-raised here.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

async fn read_json<T: serde::de::DeserializeOwned + Default>(
    endpoint: &str,
    req: hyper::Request<Incoming>,
) -> Result<T> {
    let bad = |reason: String| Error::BadRequest {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let bytes = Limited::new(req.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|e| bad(e.to_string()))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

fn answer(result: Result<Response>) -> HttpResponse {
    match result {
        Ok(r) => json(StatusCode::OK, &r),
        Err(e) => failure(&e),
    }
}

fn failure(e: &Error) -> HttpResponse {
    tracing::warn!(error = %message(e), "request failed");
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        &error_response(&message(e)),
    )
}

fn error_response(message: &str) -> Response {
    Response {
        err: message.to_owned(),
        ..Response::default()
    }
}

/// The error and its causes, as one line.
fn message(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"Err\":\"cannot encode the response: {e}\"}}").into_bytes()
    });
    let mut response = hyper::Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    response
}
