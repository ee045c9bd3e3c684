//! Generates the tonic service and client of `containerd.services.snapshots.v1.Snapshots`
//! from a description in Rust (no `.proto` file, no protoc): the messages are
//! hand-written `prost` structs in `src/proto.rs`.

fn main() {
    let method = |name: &str, route: &str, input: &str, output: &str, server_streaming: bool| {
        let builder = tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::proto::{input}"))
            .output_type(output)
            .codec_path("tonic::codec::ProstCodec");
        if server_streaming {
            builder.server_streaming().build()
        } else {
            builder.build()
        }
    };
    let empty = "crate::proto::Empty";
    let service = tonic_build::manual::Service::builder()
        .name("Snapshots")
        .package("containerd.services.snapshots.v1")
        .method(method(
            "prepare",
            "Prepare",
            "PrepareSnapshotRequest",
            "crate::proto::PrepareSnapshotResponse",
            false,
        ))
        .method(method(
            "view",
            "View",
            "ViewSnapshotRequest",
            "crate::proto::ViewSnapshotResponse",
            false,
        ))
        .method(method(
            "mounts",
            "Mounts",
            "MountsRequest",
            "crate::proto::MountsResponse",
            false,
        ))
        .method(method(
            "commit",
            "Commit",
            "CommitSnapshotRequest",
            empty,
            false,
        ))
        .method(method(
            "remove",
            "Remove",
            "RemoveSnapshotRequest",
            empty,
            false,
        ))
        .method(method(
            "stat",
            "Stat",
            "StatSnapshotRequest",
            "crate::proto::StatSnapshotResponse",
            false,
        ))
        .method(method(
            "update",
            "Update",
            "UpdateSnapshotRequest",
            "crate::proto::UpdateSnapshotResponse",
            false,
        ))
        .method(method(
            "list",
            "List",
            "ListSnapshotsRequest",
            "crate::proto::ListSnapshotsResponse",
            true,
        ))
        .method(method(
            "usage",
            "Usage",
            "UsageRequest",
            "crate::proto::UsageResponse",
            false,
        ))
        .method(method("cleanup", "Cleanup", "CleanupRequest", empty, false))
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
}
