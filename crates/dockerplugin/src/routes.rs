//! The endpoints dockerd calls, and what each one does with the driver.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode};
use plies_drivers::{CreateOptions, Driver, IdMap, IdMaps, Options};

use crate::body;
use crate::error::{Error, Result};
use crate::protocol::{
    self, Activation, ApplyDiffQuery, Capabilities, InitRequest, Request, Response,
};
use crate::reply::{HttpResponse, answer, error_response, failure, json};
use crate::server::{Opened, State, run_blocking};

/// Largest JSON request body taken; layer tars go to `ApplyDiff`, unbounded.
const MAX_JSON: usize = 1 << 20;

/// An endpoint of the plugin protocol: `POST /<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `Plugin.Activate`: which protocols the plugin serves.
    Activate,
    /// `GraphDriver.Init`: open the driver under Docker's home.
    Init,
    /// `GraphDriver.Create`: a read-only layer.
    Create,
    /// `GraphDriver.CreateReadWrite`: a container's layer.
    CreateReadWrite,
    /// `GraphDriver.Remove`.
    Remove,
    /// `GraphDriver.Get`: mount a layer.
    Get,
    /// `GraphDriver.Put`: unmount a layer.
    Put,
    /// `GraphDriver.Exists`.
    Exists,
    /// `GraphDriver.Status`.
    Status,
    /// `GraphDriver.GetMetadata`.
    GetMetadata,
    /// `GraphDriver.Cleanup`: put every layer.
    Cleanup,
    /// `GraphDriver.Diff`: a layer's tar, streamed.
    Diff,
    /// `GraphDriver.Changes`.
    Changes,
    /// `GraphDriver.ApplyDiff`: a layer tar as the request body.
    ApplyDiff,
    /// `GraphDriver.DiffSize`.
    DiffSize,
    /// `GraphDriver.Capabilities`.
    Capabilities,
}

impl Endpoint {
    /// Every endpoint, in the order of Docker's protocol.
    const ALL: [Endpoint; 16] = [
        Endpoint::Activate,
        Endpoint::Init,
        Endpoint::Create,
        Endpoint::CreateReadWrite,
        Endpoint::Remove,
        Endpoint::Get,
        Endpoint::Put,
        Endpoint::Exists,
        Endpoint::Status,
        Endpoint::GetMetadata,
        Endpoint::Cleanup,
        Endpoint::Diff,
        Endpoint::Changes,
        Endpoint::ApplyDiff,
        Endpoint::DiffSize,
        Endpoint::Capabilities,
    ];

    /// The endpoint's name, its path without the leading `/`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Endpoint::Activate => "Plugin.Activate",
            Endpoint::Init => "GraphDriver.Init",
            Endpoint::Create => "GraphDriver.Create",
            Endpoint::CreateReadWrite => "GraphDriver.CreateReadWrite",
            Endpoint::Remove => "GraphDriver.Remove",
            Endpoint::Get => "GraphDriver.Get",
            Endpoint::Put => "GraphDriver.Put",
            Endpoint::Exists => "GraphDriver.Exists",
            Endpoint::Status => "GraphDriver.Status",
            Endpoint::GetMetadata => "GraphDriver.GetMetadata",
            Endpoint::Cleanup => "GraphDriver.Cleanup",
            Endpoint::Diff => "GraphDriver.Diff",
            Endpoint::Changes => "GraphDriver.Changes",
            Endpoint::ApplyDiff => "GraphDriver.ApplyDiff",
            Endpoint::DiffSize => "GraphDriver.DiffSize",
            Endpoint::Capabilities => "GraphDriver.Capabilities",
        }
    }

    /// The endpoint a request path names (`/GraphDriver.Get`), if any.
    pub(crate) fn from_path(path: &str) -> Option<Endpoint> {
        let name = path.trim_start_matches('/');
        Endpoint::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Answers one request: the endpoint its path names, called with its body.
pub(crate) async fn handle(
    state: Arc<State>,
    req: hyper::Request<Incoming>,
) -> std::result::Result<HttpResponse, Infallible> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    if req.method() != Method::POST {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            &error_response(&format!("{path} takes POST")),
        ));
    }
    let Some(endpoint) = Endpoint::from_path(&path) else {
        return Ok(json(
            StatusCode::NOT_FOUND,
            &error_response(&format!("no endpoint {path}")),
        ));
    };
    let response = match endpoint {
        Endpoint::Activate => json(
            StatusCode::OK,
            &Activation {
                implements: vec!["GraphDriver".to_owned()],
            },
        ),
        Endpoint::ApplyDiff => apply_diff(&state, req).await,
        Endpoint::Diff => match read_json::<Request>(endpoint, req).await {
            Ok(r) => diff(&state, r).await,
            Err(e) => failure(&e),
        },
        Endpoint::Init => match read_json::<InitRequest>(endpoint, req).await {
            Ok(r) => answer(init(state, r).await.map(|()| Response::default())),
            Err(e) => failure(&e),
        },
        Endpoint::Create
        | Endpoint::CreateReadWrite
        | Endpoint::Remove
        | Endpoint::Get
        | Endpoint::Put
        | Endpoint::Exists
        | Endpoint::Status
        | Endpoint::GetMetadata
        | Endpoint::Cleanup
        | Endpoint::Changes
        | Endpoint::DiffSize
        | Endpoint::Capabilities => match read_json::<Request>(endpoint, req).await {
            Ok(r) => answer(call(&state, endpoint, r).await),
            Err(e) => failure(&e),
        },
    };
    Ok(response)
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
async fn call(state: &State, endpoint: Endpoint, r: Request) -> Result<Response> {
    if endpoint == Endpoint::Capabilities {
        // Layer tars are rebuilt from their tar-split data by dockerd, not
        // reproduced byte for byte by the driver.
        return Ok(Response {
            capabilities: Some(Capabilities {
                reproduces_exact_diffs: false,
            }),
            ..Response::default()
        });
    }
    if endpoint == Endpoint::Exists {
        // dockerd reads any failure as "does not exist".
        let Ok(driver) = state.driver(endpoint) else {
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
    let driver = state.driver(endpoint)?;
    run_blocking(move || {
        // Cleanup is the one call here not on a layer.
        let id = (endpoint != Endpoint::Cleanup).then(|| r.id.clone());
        let parent = (!r.parent.is_empty()).then_some(r.parent.as_str());
        let label = (!r.mount_label.is_empty()).then_some(r.mount_label.as_str());
        let driver_err = |source| Error::Driver {
            endpoint: endpoint.as_str().to_owned(),
            id: id.clone(),
            source: Box::new(source),
        };
        let create_options = || {
            CreateOptions::default()
                .with_mount_label(label.map(str::to_owned))
                .with_storage_opt(r.storage_opt.clone())
        };
        let mut response = Response::default();
        match endpoint {
            Endpoint::Create => driver
                .create(&r.id, parent, &create_options())
                .map_err(driver_err)?,
            Endpoint::CreateReadWrite => driver
                .create_read_write(&r.id, parent, &create_options())
                .map_err(driver_err)?,
            Endpoint::Remove => driver.remove(&r.id).map_err(driver_err)?,
            Endpoint::Get => {
                let dir = driver.get(&r.id, label).map_err(driver_err)?;
                response.dir = dir.to_string_lossy().into_owned();
            }
            Endpoint::Put => driver.put(&r.id).map_err(driver_err)?,
            Endpoint::Status => {
                response.status = Some(driver.status().into_iter().map(|(k, v)| [k, v]).collect());
            }
            Endpoint::GetMetadata => {
                let metadata: BTreeMap<String, String> =
                    driver.metadata(&r.id).map_err(driver_err)?;
                response.metadata = Some(metadata);
            }
            Endpoint::Cleanup => driver.cleanup().map_err(driver_err)?,
            Endpoint::Changes => {
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
            Endpoint::DiffSize => {
                let size = driver.diff_size(&r.id, parent).map_err(driver_err)?;
                response.size = Some(i64::try_from(size).unwrap_or(i64::MAX));
            }
            Endpoint::Activate
            | Endpoint::Init
            | Endpoint::Exists
            | Endpoint::Diff
            | Endpoint::ApplyDiff
            | Endpoint::Capabilities => {
                return Err(Error::BadRequest {
                    endpoint: endpoint.as_str().to_owned(),
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
    let endpoint = Endpoint::Diff;
    let driver = match state.driver(endpoint) {
        Ok(d) => d,
        Err(e) => return failure(&e),
    };
    let opened = run_blocking(move || {
        let parent = (!r.parent.is_empty()).then_some(r.parent.as_str());
        driver.diff(&r.id, parent).map_err(|source| Error::Driver {
            endpoint: endpoint.as_str().to_owned(),
            id: Some(r.id.clone()),
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
    let endpoint = Endpoint::ApplyDiff;
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
            endpoint: endpoint.as_str().to_owned(),
            id: Some(id.clone()),
            source: Box::new(source),
        })
    })
    .await;
    answer(applied.map(|size| Response {
        size: Some(i64::try_from(size).unwrap_or(i64::MAX)),
        ..Response::default()
    }))
}

/// The request body as `T`; an empty body is `T::default()`.
async fn read_json<T: serde::de::DeserializeOwned + Default>(
    endpoint: Endpoint,
    req: hyper::Request<Incoming>,
) -> Result<T> {
    let bad = |reason: String| Error::BadRequest {
        endpoint: endpoint.as_str().to_owned(),
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
