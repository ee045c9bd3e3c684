//! A client of containerd's snapshots gRPC service, and the messages it sends.

use anyhow::{anyhow, bail};

use super::*;

/// `containerd.services.snapshots.v1.Kind.COMMITTED`.
pub(super) const KIND_COMMITTED: i32 = 3;

/// `containerd.types.Mount` (the fields read here).
#[derive(Clone, PartialEq, prost::Message)]
struct Mount {
    #[prost(string, tag = "1")]
    r#type: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PrepareSnapshotRequest {
    #[prost(string, tag = "1")]
    snapshotter: String,
    #[prost(string, tag = "2")]
    key: String,
    #[prost(string, tag = "3")]
    parent: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MountsResponse {
    #[prost(message, repeated, tag = "1")]
    mounts: Vec<Mount>,
}

/// The request of `Mounts` and of `Remove`.
#[derive(Clone, PartialEq, prost::Message)]
struct KeyRequest {
    #[prost(string, tag = "1")]
    snapshotter: String,
    #[prost(string, tag = "2")]
    key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListSnapshotsRequest {
    #[prost(string, tag = "1")]
    snapshotter: String,
}

/// `Info` (the fields read here).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Info {
    #[prost(string, tag = "1")]
    pub(super) name: String,
    #[prost(string, tag = "2")]
    pub(super) parent: String,
    #[prost(int32, tag = "3")]
    pub(super) kind: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ListSnapshotsResponse {
    #[prost(message, repeated, tag = "1")]
    info: Vec<Info>,
}

/// A client of the snapshots service on a unix socket (containerd's, or a
/// snapshotter's own), calling in the bench's namespace.
pub(super) struct Client {
    grpc: tonic::client::Grpc<Channel>,
    /// The containerd lease the calls are made in (`containerd-lease`).
    lease: Option<tonic::metadata::AsciiMetadataValue>,
}

impl Client {
    pub(super) async fn connect(socket: &Path) -> Result<Client> {
        let path = socket.to_path_buf();
        let channel = Endpoint::from_static("http://[::1]:1")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(Client {
            grpc: tonic::client::Grpc::new(channel),
            lease: None,
        })
    }

    /// Makes the calls in lease `id` (none for `None`).
    pub(super) fn set_lease(&mut self, id: Option<&str>) -> Result {
        self.lease = id
            .map(|id| {
                id.parse()
                    .with_context(|| format!("lease id '{id}' is no header value"))
            })
            .transpose()?;
        Ok(())
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        let metadata = r.metadata_mut();
        metadata.insert(
            "containerd-namespace",
            tonic::metadata::MetadataValue::from_static(NAMESPACE),
        );
        if let Some(lease) = &self.lease {
            metadata.insert("containerd-lease", lease.clone());
        }
        r
    }

    async fn unary<Q, R>(&mut self, method: &'static str, message: Q) -> Result<R>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await.context(method)?;
        self.grpc
            .unary(
                self.request(message),
                PathAndQuery::from_static(method),
                tonic::codec::ProstCodec::default(),
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow!("{method}: {}", s.message()))
    }

    /// Prepare `key` on `parent`, its Mounts, and Remove; the time of the three.
    pub(super) async fn prepare_mounts_remove(
        &mut self,
        snapshotter: &str,
        key: &str,
        parent: &str,
    ) -> Result<Duration> {
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
        };
        let by_key = KeyRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        let start = Instant::now();
        let _: MountsResponse = self
            .unary(
                "/containerd.services.snapshots.v1.Snapshots/Prepare",
                prepare,
            )
            .await?;
        let mounts: MountsResponse = self
            .unary(
                "/containerd.services.snapshots.v1.Snapshots/Mounts",
                by_key.clone(),
            )
            .await?;
        let () = self
            .unary("/containerd.services.snapshots.v1.Snapshots/Remove", by_key)
            .await?;
        let took = start.elapsed();
        if mounts.mounts.is_empty() || mounts.mounts[0].r#type.is_empty() {
            bail!("Mounts of {key} on {snapshotter}: no mounts");
        }
        Ok(took)
    }

    /// Every snapshot a `List` streams.
    pub(super) async fn list(&mut self, snapshotter: &str) -> Result<Vec<Info>> {
        const LIST: &str = "/containerd.services.snapshots.v1.Snapshots/List";
        self.grpc.ready().await.context("List")?;
        let request = self.request(ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
        });
        let codec =
            tonic::codec::ProstCodec::<ListSnapshotsRequest, ListSnapshotsResponse>::default();
        let mut stream = self
            .grpc
            .server_streaming(request, PathAndQuery::from_static(LIST), codec)
            .await
            .map_err(|s| anyhow!("List: {}", s.message()))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream
            .message()
            .await
            .map_err(|s| anyhow!("List: {}", s.message()))?
        {
            out.extend(batch.info);
        }
        Ok(out)
    }
}
