//! A client of a snapshots service on a unix socket: plies' own server, or
//! containerd's (whose snapshots service speaks the same protocol).

use std::path::Path;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::grpc::snapshots_client::SnapshotsClient;

/// Connects to the snapshots service listening on the unix socket `socket`.
///
/// # Errors
/// tonic's transport error when the socket cannot be connected to.
pub async fn connect(socket: &Path) -> Result<SnapshotsClient<Channel>, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is never dialed: the connector opens the socket.
    let channel = Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(SnapshotsClient::new(channel))
}
