//! A snapshotter served on a socket in a temporary root, a client for it, and
//! the mounts it returns mounted.

use std::path::{Path, PathBuf};

use plies_layerdb::{Access, LayerDb};
use plies_snapshotter::proto::grpc::snapshots_client::SnapshotsClient;
use plies_snapshotter::proto::{Info, ListSnapshotsRequest, Mount};
use plies_snapshotter::{Background, DriverChoice, Options, Server, Snapshotter};
use tonic::transport::Channel;

/// A served snapshotter; stops the server and removes the root when dropped.
pub struct Harness {
    pub driver: DriverChoice,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<Background>,
}

impl Harness {
    pub fn start(driver: DriverChoice) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let socket = dir.path().join("run/plies.sock");
        let snapshotter = Snapshotter::open(&root, driver, &Options::default()).unwrap();
        let server = Server::bind(&socket, snapshotter).unwrap().spawn().unwrap();
        Harness {
            driver,
            dir,
            socket,
            runtime: Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap(),
            ),
            server: Some(server),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.as_ref().unwrap().block_on(f)
    }

    pub async fn client(&self) -> SnapshotsClient<Channel> {
        plies_snapshotter::connect(&self.socket).await.unwrap()
    }

    /// Every info a `List` streams.
    pub async fn list(
        &self,
        c: &mut SnapshotsClient<Channel>,
        req: ListSnapshotsRequest,
    ) -> Result<Vec<Info>, tonic::Status> {
        let mut stream = c.list(req).await?.into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await? {
            out.extend(batch.info);
        }
        Ok(out)
    }

    /// The ids of every layer record under the root.
    pub fn layers(&self) -> Vec<String> {
        let root = self.root();
        let driver = plies_drivers::open(&root, self.driver, &Options::default()).unwrap();
        let db = LayerDb::open(&root, driver, Access::Read).unwrap();
        db.records().unwrap().into_iter().map(|r| r.id).collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The client's connections end with its runtime.
        drop(self.runtime.take());
        if let Some(server) = self.server.take() {
            let _ = server.stop();
        }
    }
}

/// A mount as containerd would make it: overlay mounted on a directory of the
/// harness (unmounted when dropped); a bind used at its source.
pub struct Mounted {
    path: PathBuf,
    mounted: bool,
}

impl Mounted {
    pub fn new(h: &Harness, m: &Mount) -> Mounted {
        if m.r#type == "bind" {
            return Mounted {
                path: PathBuf::from(&m.source),
                mounted: false,
            };
        }
        assert_eq!(m.r#type, "overlay");
        let target = h.dir.path().join(format!("mnt-{}", rand_suffix()));
        std::fs::create_dir(&target).unwrap();
        let data = m.options.join(",");
        rustix::mount::mount(
            "overlay",
            &target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            Some(std::ffi::CString::new(data.clone()).unwrap().as_c_str()),
        )
        .unwrap_or_else(|e| panic!("mount overlay {data}: {e}"));
        Mounted {
            path: target,
            mounted: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}
