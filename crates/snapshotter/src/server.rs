//! The gRPC service on a unix socket.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result, io_err};
use crate::proto::grpc::snapshots_server::{Snapshots, SnapshotsServer};
use crate::proto::{self, Info};
use crate::snapshotter::Snapshotter;

/// How many snapshots one `List` message carries.
const LIST_BATCH: usize = 100;

/// How long calls in flight get after shutdown is asked for: containerd keeps
/// its connection open, so waiting for every connection to close never ends.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The `containerd.services.snapshots.v1.Snapshots` service on a
/// [`Snapshotter`]: each call runs on a blocking thread, and every error
/// becomes the gRPC status of [`Error::status`].
#[derive(Debug, Clone)]
pub struct Service {
    snapshotter: Arc<Snapshotter>,
}

impl Service {
    /// The service on `snapshotter`.
    pub fn new(snapshotter: Arc<Snapshotter>) -> Service {
        Service { snapshotter }
    }

    /// The service wrapped for a tonic server (`Server::builder().add_service(…)`).
    pub fn into_server(self) -> SnapshotsServer<Service> {
        SnapshotsServer::new(self)
    }

    async fn run<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Snapshotter) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let s = self.snapshotter.clone();
        // On the worker itself (its other tasks move to another worker while
        // it blocks): no hand-over to a blocking thread and back, which costs
        // two thread wake-ups a call. A runtime that cannot (current-thread)
        // hands over.
        let result = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    tokio::task::block_in_place(|| call(&s))
                }))
                .map_err(|_| "a panic".to_owned())
            }
            _ => tokio::task::spawn_blocking(move || call(&s))
                .await
                .map_err(|join| join.to_string()),
        };
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, code = ?e.status().code(), "snapshot call failed");
                Err(e.status())
            }
            Err(why) => Err(Status::internal(format!("snapshot call panicked: {why}"))),
        }
    }
}

type ListStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        r: Request<proto::PrepareSnapshotRequest>,
    ) -> Result<Response<proto::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        let mounts = self
            .run(move |s| s.prepare(&r.key, &r.parent, r.labels))
            .await?;
        Ok(Response::new(proto::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        r: Request<proto::ViewSnapshotRequest>,
    ) -> Result<Response<proto::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        let mounts = self
            .run(move |s| s.view(&r.key, &r.parent, r.labels))
            .await?;
        Ok(Response::new(proto::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        r: Request<proto::MountsRequest>,
    ) -> Result<Response<proto::MountsResponse>, Status> {
        let r = r.into_inner();
        let mounts = self.run(move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(proto::MountsResponse { mounts }))
    }

    async fn commit(
        &self,
        r: Request<proto::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        self.run(move |s| s.commit(&r.name, &r.key, r.labels, &r.parent))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        r: Request<proto::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        self.run(move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<proto::StatSnapshotRequest>,
    ) -> Result<Response<proto::StatSnapshotResponse>, Status> {
        let r = r.into_inner();
        let info = self.run(move |s| s.stat(&r.key)).await?;
        Ok(Response::new(proto::StatSnapshotResponse {
            info: Some(info),
        }))
    }

    async fn update(
        &self,
        r: Request<proto::UpdateSnapshotRequest>,
    ) -> Result<Response<proto::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let info: Info = r.info.unwrap_or_default();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self.run(move |s| s.update(&info, &paths)).await?;
        Ok(Response::new(proto::UpdateSnapshotResponse {
            info: Some(info),
        }))
    }

    type ListStream = ListStream;

    // The stream's item is tonic's `Result<_, Status>`, whatever its size.
    #[allow(clippy::result_large_err)]
    async fn list(
        &self,
        r: Request<proto::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = r.into_inner();
        let infos = self.run(move |s| s.list(&r.filters)).await?;
        let batches: Vec<Result<proto::ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(proto::ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        r: Request<proto::UsageRequest>,
    ) -> Result<Response<proto::UsageResponse>, Status> {
        let r = r.into_inner();
        let u = self.run(move |s| s.usage(&r.key)).await?;
        Ok(Response::new(proto::UsageResponse {
            size: i64::try_from(u.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
        }))
    }

    async fn cleanup(&self, _: Request<proto::CleanupRequest>) -> Result<Response<()>, Status> {
        self.run(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

/// A proxy snapshotter listening on a unix socket, with its own runtime.
#[derive(Debug)]
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: UnixListener,
    socket: PathBuf,
    service: Service,
}

impl Server {
    /// Binds `socket` (making its directory, replacing a stale socket file)
    /// for `snapshotter`.
    ///
    /// # Errors
    /// [`Error::Io`] when the runtime cannot start or the socket cannot be bound,
    /// `AddrInUse` when another server answers on it.
    pub fn bind(socket: &Path, snapshotter: Snapshotter) -> Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| io_err("start a runtime for", socket, e))?;
        if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
        }
        if std::fs::symlink_metadata(socket)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            // A socket someone answers on is another server's, not a stale one.
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(io_err(
                    "bind",
                    socket,
                    std::io::Error::from(std::io::ErrorKind::AddrInUse),
                ));
            }
            std::fs::remove_file(socket).map_err(|e| io_err("remove stale", socket, e))?;
        }
        let listener = {
            let _guard = runtime.enter();
            UnixListener::bind(socket).map_err(|e| io_err("bind", socket, e))?
        };
        Ok(Server {
            runtime,
            listener,
            socket: socket.to_path_buf(),
            service: Service::new(Arc::new(snapshotter)),
        })
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Serves on a thread of its own until the returned [`Background`] is
    /// stopped or dropped: for a synchronous program (a test, a benchmark)
    /// that talks to the server itself.
    ///
    /// # Errors
    /// [`Error::Io`] when the thread cannot be started.
    pub fn spawn(self) -> Result<Background> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let socket = self.socket.clone();
        let thread = std::thread::Builder::new()
            .name("plies-snapshotter".into())
            .spawn(move || {
                self.run_until(async {
                    let _ = stopped.await;
                })
            })
            .map_err(|e| io_err("start a thread serving", &socket, e))?;
        Ok(Background {
            socket,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Serves until `shutdown` completes, then gives the calls in flight a few
    /// seconds, closes every connection and removes the socket.
    ///
    /// # Errors
    /// [`Error::Transport`] when the server fails.
    pub fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let Server {
            runtime,
            listener,
            socket,
            service,
        } = self;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut grace = stopped.clone();
        let served = runtime.block_on(async move {
            let serve = tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    shutdown.await;
                    let _ = stop.send(true);
                });
            tokio::select! {
                served = serve => served,
                () = async move {
                    let _ = grace.wait_for(|stopped| *stopped).await;
                    tokio::time::sleep(GRACE).await;
                } => {
                    tracing::info!("connections still open after the grace period; closing them");
                    Ok(())
                }
            }
        });
        drop(stopped);
        // Dropping the runtime ends the connections' tasks.
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        let _ = std::fs::remove_file(&socket);
        served.map_err(|source| Error::Transport { socket, source })
    }

    /// Serves until SIGTERM or SIGINT.
    ///
    /// # Errors
    /// As [`Server::run_until`]; [`Error::Io`] when the signals cannot be caught.
    pub fn run_until_signal(self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = {
            let _guard = self.runtime.enter();
            let term = signal(SignalKind::terminate())
                .map_err(|e| io_err("catch SIGTERM for", &self.socket, e))?;
            let int = signal(SignalKind::interrupt())
                .map_err(|e| io_err("catch SIGINT for", &self.socket, e))?;
            (term, int)
        };
        self.run_until(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
}

/// A [`Server`] running on its own thread ([`Server::spawn`]); stopping it, or
/// dropping it, shuts the server down and waits for the thread.
#[derive(Debug)]
pub struct Background {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Background {
    /// Shuts the server down and gives back how its run ended.
    ///
    /// # Errors
    /// As [`Server::run_until`]; [`Error::Io`] when the thread panicked.
    pub fn stop(mut self) -> Result<()> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => Err(io_err(
                "serve",
                &self.socket,
                std::io::Error::other("the serving thread panicked"),
            )),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            tracing::warn!(error = %e, "the background snapshotter server failed");
        }
    }
}
