//! The JSON of Docker's graph-driver plugin protocol, field for field as dockerd
//! (moby's `daemon/graphdriver/proxy.go`) sends and reads it.
//!
//! Every endpoint is a `POST /GraphDriver.<Name>` with a JSON body, except
//! `ApplyDiff`, whose body is the layer tar and whose `id` and `parent` come as
//! query parameters. Failures answer HTTP 500 with `{"Err":"…"}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The media type of plugin responses.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// `/Plugin.Activate`'s answer: the plugin serves graph drivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Activation {
    /// The plugin subsystems served: `["GraphDriver"]`.
    pub implements: Vec<String>,
}

/// One range of a user-namespace id map (Docker's `idtools.IDMap`, whose JSON
/// names, unlike the rest of the protocol's, are snake case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First id inside the container.
    pub container_id: i64,
    /// First id on the host.
    pub host_id: i64,
    /// How many ids the range maps.
    pub size: i64,
}

/// `GraphDriver.Init`'s request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InitRequest {
    /// The directory dockerd gives the driver: `<data-root>/<driver name>`.
    pub home: String,
    /// Docker's `--storage-opt` strings.
    #[serde(deserialize_with = "null_as_default")]
    pub opts: Vec<String>,
    /// User-namespace uid ranges (empty without `--userns-remap`).
    #[serde(rename = "UIDMaps", deserialize_with = "null_as_default")]
    pub uid_maps: Vec<IdMap>,
    /// User-namespace gid ranges (empty without `--userns-remap`).
    #[serde(rename = "GIDMaps", deserialize_with = "null_as_default")]
    pub gid_maps: Vec<IdMap>,
}

/// The request of every other JSON endpoint (moby's `graphDriverRequest`); the
/// fields an endpoint does not use are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Request {
    /// The layer.
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The parent layer; empty for none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub parent: String,
    /// SELinux mount label.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mount_label: String,
    /// Per-layer storage options (`size`).
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub storage_opt: BTreeMap<String, String>,
}

/// One changed path (Docker's `archive.Change`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Change {
    /// The path, absolute-style: `/etc/passwd`.
    pub path: String,
    /// 0 modified, 1 added, 2 deleted.
    pub kind: u8,
}

/// What the driver can do (Docker's `graphdriver.Capabilities`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Capabilities {
    /// Whether `Diff` gives back the exact bytes `ApplyDiff` took; without it
    /// dockerd keeps tar-split data to rebuild the original tars itself.
    pub reproduces_exact_diffs: bool,
}

/// The answer of every JSON endpoint (moby's `graphDriverResponse`); only the
/// fields the endpoint answers with are present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Response {
    /// The error message; absent on success.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub err: String,
    /// `Get`: the layer's root filesystem.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// `Exists`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exists: bool,
    /// `Status`: rows as `docker info` shows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<[String; 2]>>,
    /// `Changes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<Change>>,
    /// `ApplyDiff`, `DiffSize`: bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// `GetMetadata`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// `Capabilities`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// `ApplyDiff`'s query string: `id=<layer>&parent=<layer>`, as dockerd formats
/// it (`parent` empty for none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyDiffQuery {
    /// The layer the tar is applied to.
    pub id: String,
    /// Its parent; empty for none.
    pub parent: String,
}

impl ApplyDiffQuery {
    /// Reads `id` and `parent` from a query string, percent-decoding them; a
    /// missing key is empty, other keys are ignored, bad escapes stay as written.
    pub fn parse(query: &str) -> ApplyDiffQuery {
        let mut out = ApplyDiffQuery::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key).as_str() {
                "id" => out.id = percent_decode(value),
                "parent" => out.parent = percent_decode(value),
                _ => {}
            }
        }
        out
    }
}

/// Decodes `%XX` escapes and `+`; anything else is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go encodes a nil slice or map as `null`.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_request_as_dockerd_sends_it() {
        let r: InitRequest = serde_json::from_str(
            r#"{"Home":"/var/lib/docker/plies","Opts":null,"UIDMaps":null,"GIDMaps":[{"container_id":0,"host_id":100000,"size":65536}]}"#,
        )
        .unwrap();
        assert_eq!(r.home, "/var/lib/docker/plies");
        assert!(r.opts.is_empty() && r.uid_maps.is_empty());
        assert_eq!(
            r.gid_maps,
            [IdMap {
                container_id: 0,
                host_id: 100000,
                size: 65536
            }]
        );
    }

    #[test]
    fn apply_diff_query() {
        let q = |s| ApplyDiffQuery::parse(s);
        assert_eq!(
            q("id=abc&parent="),
            ApplyDiffQuery {
                id: "abc".into(),
                parent: String::new()
            }
        );
        assert_eq!(q("parent=p%2Fq+r&x=1&id=%zz").parent, "p/q r");
        assert_eq!(q("parent=p%2Fq+r&x=1&id=%zz").id, "%zz");
        assert_eq!(q("id=%4").id, "%4");
        assert_eq!(q("id=%41%"), q("id=A%"));
        assert_eq!(q(""), ApplyDiffQuery::default());
    }

    #[test]
    fn request_and_response_field_names() {
        let r: Request = serde_json::from_str(
            r#"{"ID":"a","Parent":"b","MountLabel":"m","StorageOpt":{"size":"1G"}}"#,
        )
        .unwrap();
        assert_eq!((r.id.as_str(), r.parent.as_str()), ("a", "b"));
        assert_eq!(r.storage_opt["size"], "1G");
        let empty: Request = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, Request::default());
        let response = Response {
            changes: Some(vec![Change {
                path: "/etc".into(),
                kind: 0,
            }]),
            capabilities: Some(Capabilities::default()),
            ..Response::default()
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"Changes":[{"Path":"/etc","Kind":0}],"Capabilities":{"ReproducesExactDiffs":false}}"#
        );
        assert_eq!(serde_json::to_string(&Response::default()).unwrap(), "{}");
    }
}
