//! The wire contract: containerd's `containerd.services.snapshots.v1` messages and
//! `containerd.types.Mount`, written out as `prost` structs whose field numbers
//! are those of containerd's `snapshots.proto` and `mount.proto`
//! (`google.protobuf.Empty` is `()`).
//!
//! [`Commit`](CommitSnapshotRequest) carries `parent` (field 5), which containerd
//! 2.x sends to a snapshotter that declares the `rebase` capability.

use std::collections::HashMap;

/// `google.protobuf.Empty`: what `Commit`, `Remove` and `Cleanup` return.
pub type Empty = ();

/// A mount containerd performs itself (`containerd.types.Mount`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Mount {
    /// Filesystem type: `overlay` or `bind`.
    #[prost(string, tag = "1")]
    pub r#type: String,
    /// Source: `overlay`, or the directory bound.
    #[prost(string, tag = "2")]
    pub source: String,
    /// Target below the root (containerd 1.7+; plies leaves it empty).
    #[prost(string, tag = "3")]
    pub target: String,
    /// Mount options as `mount(8)` spells them.
    #[prost(string, repeated, tag = "4")]
    pub options: Vec<String>,
}

/// What a snapshot is (`containerd.services.snapshots.v1.Kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    /// Not set.
    Unknown = 0,
    /// A read-only view of a committed snapshot.
    View = 1,
    /// A read-write snapshot that can be committed.
    Active = 2,
    /// A committed, immutable snapshot that others can sit on.
    Committed = 3,
}

/// `Prepare`: a new active snapshot `key` on the committed `parent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PrepareSnapshotRequest {
    /// The snapshotter's name (ignored: the socket names it).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    /// The new snapshot's key.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The committed snapshot it sits on; empty for none.
    #[prost(string, tag = "3")]
    pub parent: String,
    /// Labels of the new snapshot.
    #[prost(map = "string, string", tag = "4")]
    pub labels: HashMap<String, String>,
}

/// The mounts of a prepared snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PrepareSnapshotResponse {
    /// The mounts, in order.
    #[prost(message, repeated, tag = "1")]
    pub mounts: Vec<Mount>,
}

/// `View`: a new read-only snapshot `key` of the committed `parent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ViewSnapshotRequest {
    /// The snapshotter's name (ignored).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    /// The new view's key.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The committed snapshot it shows; empty for an empty view.
    #[prost(string, tag = "3")]
    pub parent: String,
    /// Labels of the new view.
    #[prost(map = "string, string", tag = "4")]
    pub labels: HashMap<String, String>,
}

/// The mounts of a view.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ViewSnapshotResponse {
    /// The mounts, in order.
    #[prost(message, repeated, tag = "1")]
    pub mounts: Vec<Mount>,
}

/// `Mounts`: the mounts of an active snapshot or a view.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountsRequest {
    /// The snapshotter's name (ignored).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    /// The snapshot's key.
    #[prost(string, tag = "2")]
    pub key: String,
}

/// The mounts of a snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountsResponse {
    /// The mounts, in order.
    #[prost(message, repeated, tag = "1")]
    pub mounts: Vec<Mount>,
}

/// `Remove`: a snapshot no other sits on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveSnapshotRequest {
    /// The snapshotter's name (ignored).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    /// The snapshot's key.
    #[prost(string, tag = "2")]
    pub key: String,
}

/// `Commit`: the active snapshot `key` becomes the committed snapshot `name`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommitSnapshotRequest {
    /// The snapshotter's name (ignored).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    /// The committed snapshot's name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The active snapshot's key.
    #[prost(string, tag = "3")]
    pub key: String,
    /// Labels of the committed snapshot.
    #[prost(map = "string, string", tag = "4")]
    pub labels: HashMap<String, String>,
    /// With the `rebase` capability (containerd 2.x): the parent the committed
    /// snapshot must have; empty keeps the active snapshot's own.
    #[prost(string, tag = "5")]
    pub parent: String,
}

/// `Stat`: a snapshot's info.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatSnapshotRequest {
    /// The snapshotter's name (ignored).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    /// The snapshot's key or name.
    #[prost(string, tag = "2")]
    pub key: String,
}

/// What containerd knows of a snapshot (`Info`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Info {
    /// Its key (active, view) or name (committed).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its parent's name; empty for none.
    #[prost(string, tag = "2")]
    pub parent: String,
    /// Its kind.
    #[prost(enumeration = "Kind", tag = "3")]
    pub kind: i32,
    /// When it was made.
    #[prost(message, optional, tag = "4")]
    pub created_at: Option<prost_types::Timestamp>,
    /// When it last changed.
    #[prost(message, optional, tag = "5")]
    pub updated_at: Option<prost_types::Timestamp>,
    /// Its labels.
    #[prost(map = "string, string", tag = "6")]
    pub labels: HashMap<String, String>,
}

/// A snapshot's info.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatSnapshotResponse {
    /// The info.
    #[prost(message, optional, tag = "1")]
    pub info: Option<Info>,
}

/// `Update`: labels of a snapshot, as far as `update_mask` says.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateSnapshotRequest {
    /// The snapshotter's name (ignored).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    /// The snapshot (by `name`) and its new labels.
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    /// `labels` or `labels.<key>` paths; empty replaces every label.
    #[prost(message, optional, tag = "3")]
    pub update_mask: Option<prost_types::FieldMask>,
}

/// The updated info.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateSnapshotResponse {
    /// The info after the update.
    #[prost(message, optional, tag = "1")]
    pub info: Option<Info>,
}

/// `List`: the snapshots matching any of the filters.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListSnapshotsRequest {
    /// The snapshotter's name (ignored).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    /// containerd filters; a snapshot matching any one is listed; none lists all.
    #[prost(string, repeated, tag = "2")]
    pub filters: Vec<String>,
}

/// One batch of a listing.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListSnapshotsResponse {
    /// The snapshots of this batch.
    #[prost(message, repeated, tag = "1")]
    pub info: Vec<Info>,
}

/// `Usage`: the disk a snapshot's own layer uses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UsageRequest {
    /// The snapshotter's name (ignored).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
    /// The snapshot's key or name.
    #[prost(string, tag = "2")]
    pub key: String,
}

/// Disk usage of a snapshot's own layer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UsageResponse {
    /// Bytes of allocated blocks.
    #[prost(int64, tag = "1")]
    pub size: i64,
    /// Distinct inodes.
    #[prost(int64, tag = "2")]
    pub inodes: i64,
}

/// `Cleanup`: remove what no snapshot refers to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CleanupRequest {
    /// The snapshotter's name (ignored).
    #[prost(string, tag = "1")]
    pub snapshotter: String,
}

/// The tonic client (`snapshots_client::SnapshotsClient`) and server
/// (`snapshots_server::{Snapshots, SnapshotsServer}`) of the `Snapshots`
/// service, generated at build time from a description in Rust.
#[allow(missing_docs, clippy::all, rustdoc::all)]
pub mod grpc {
    include!(concat!(
        env!("OUT_DIR"),
        "/containerd.services.snapshots.v1.Snapshots.rs"
    ));
}
