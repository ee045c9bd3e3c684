//! Docker's own lineage, read without writing: `image/<driver>/layerdb`
//! (layers by chain id, containers' mounts), `imagedb` and `repositories.json`.
//!
//! Docker keeps which layer sits on which outside the graph driver: a layer's
//! directory under `layerdb/sha256/<chain-id>/` holds its driver id
//! (`cache-id`), its `diff` id, its `parent` chain id, its `size` and the
//! `tar-split.json.gz` that rebuilds its tar byte for byte; a container's
//! directory under `layerdb/mounts/<container-id>/` holds the ids of its
//! read-write layer (`mount-id`), of the `-init` layer under it (`init-id`)
//! and the chain id of its image's top layer (`parent`). [`DockerRoot`] reads
//! all of it once, checks every id it reads, and answers in the driver's ids.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
pub use crate::images::chain_id;
use crate::images::{
    Image, ImageStore, image_of_config, is_digest, is_hex64, reproduce, tar_split_size,
};

/// The most bytes read from one of Docker's small files (ids, sizes).
const MAX_SMALL_FILE: u64 = 4096;
/// The most bytes read from an image config or `repositories.json`.
const MAX_JSON_FILE: u64 = 64 << 20;
/// The longest parent chain walked before a cycle is assumed.
const MAX_CHAIN: usize = 4096;

/// A layer of Docker's layer database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DockerLayer {
    /// `sha256:<hex>`: the layer's chain id (its directory's name).
    pub chain_id: String,
    /// `sha256:<hex>` of the layer's uncompressed tar.
    pub diff_id: String,
    /// The graph driver's id of the layer (its directory under `overlay2/`).
    pub cache_id: String,
    /// The chain id of the layer it sits on.
    pub parent: Option<String>,
    /// The size Docker recorded, in bytes.
    pub size: Option<u64>,
    /// `tar-split.json.gz`, when the layer has one.
    pub tar_split: Option<PathBuf>,
}

/// A container's layers in Docker's layer database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DockerContainer {
    /// The container's id (its directory's name under `layerdb/mounts/`).
    pub id: String,
    /// The driver's id of its read-write layer.
    pub mount_id: String,
    /// The driver's id of the `-init` layer under it, if any.
    pub init_id: Option<String>,
    /// The chain id of the image layer under them.
    pub parent: Option<String>,
    /// The container's name (without Docker's leading `/`), from
    /// `containers/<id>/config.v2.json`, when that is there.
    pub name: Option<String>,
}

/// What kind of layer a [`DockerEntry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DockerKind {
    /// An image layer (has a chain id).
    Image,
    /// A container's `-init` layer.
    Init,
    /// A container's read-write layer.
    Container,
}

/// One layer of the driver as Docker's databases place it: image layers and
/// containers' layers alike, by driver id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DockerEntry {
    /// The driver's id of the layer.
    pub id: String,
    /// The driver's id of the layer under it.
    pub parent: Option<String>,
    /// What it is.
    pub kind: DockerKind,
    /// The chain id (image layers).
    pub chain_id: Option<String>,
    /// The diff id (image layers).
    pub diff_id: Option<String>,
    /// The size Docker recorded (image layers).
    pub size: Option<u64>,
    /// The containers whose layers sit on it (image layers), or whose layer
    /// it is.
    pub containers: Vec<String>,
    /// How many layers are under it.
    pub depth: usize,
}

/// Docker's lineage under a data root, read once (see the module docs).
#[derive(Debug, Clone)]
pub struct DockerRoot {
    root: PathBuf,
    driver: String,
    layers: BTreeMap<String, DockerLayer>,
    containers: Vec<DockerContainer>,
}

impl DockerRoot {
    /// Whether `root` holds Docker's layer database for `driver`.
    pub fn detect(root: &Path, driver: &str) -> bool {
        Self::layerdb_of(root, driver).join("sha256").is_dir()
    }

    fn layerdb_of(root: &Path, driver: &str) -> PathBuf {
        root.join("image").join(driver).join("layerdb")
    }

    /// Reads Docker's layer database for `driver` under the data root `root`.
    /// Nothing is written. Docker's own temporary entries (`layerdb/tmp`,
    /// names that are not ids) are skipped.
    ///
    /// # Errors
    /// [`Error::Io`] when a directory cannot be read; [`Error::BadDockerFile`]
    /// for a file that is missing where Docker always writes it, too large, or
    /// holds no valid id.
    pub fn open(root: &Path, driver: &str) -> Result<DockerRoot> {
        let layerdb = Self::layerdb_of(root, driver);
        let mut layers = BTreeMap::new();
        for hex in list_ids(&layerdb.join("sha256"))? {
            let dir = layerdb.join("sha256").join(&hex);
            let chain_id = format!("sha256:{hex}");
            let cache_id = read_id(&dir.join("cache-id"), check_driver_id)?
                .ok_or_else(|| bad(dir.join("cache-id"), "missing: the layer has no driver id"))?;
            let diff_id = read_id(&dir.join("diff"), check_digest)?
                .ok_or_else(|| bad(dir.join("diff"), "missing: the layer has no diff id"))?;
            let parent = read_id(&dir.join("parent"), check_digest)?;
            let size = match read_small(&dir.join("size"))? {
                None => None,
                Some(text) => Some(
                    text.trim()
                        .parse::<u64>()
                        .map_err(|_| bad(dir.join("size"), "not a size in bytes"))?,
                ),
            };
            let tar_split = Some(dir.join("tar-split.json.gz")).filter(|p| p.is_file());
            layers.insert(
                chain_id.clone(),
                DockerLayer {
                    chain_id,
                    diff_id,
                    cache_id,
                    parent,
                    size,
                    tar_split,
                },
            );
        }
        let mut containers = Vec::new();
        let mounts = layerdb.join("mounts");
        if mounts.is_dir() {
            for id in list_ids(&mounts)? {
                let dir = mounts.join(&id);
                let Some(mount_id) = read_id(&dir.join("mount-id"), check_driver_id)? else {
                    // Docker writes `mount-id` first; a directory without it
                    // is a container Docker never finished making.
                    continue;
                };
                containers.push(DockerContainer {
                    name: container_name(root, &id),
                    mount_id,
                    init_id: read_id(&dir.join("init-id"), check_driver_id)?,
                    parent: read_id(&dir.join("parent"), check_digest)?,
                    id,
                });
            }
        }
        Ok(DockerRoot {
            root: root.to_owned(),
            driver: driver.to_owned(),
            layers,
            containers,
        })
    }

    /// The image layers, by chain id.
    pub fn layers(&self) -> impl Iterator<Item = &DockerLayer> {
        self.layers.values()
    }

    /// The image layer of `chain_id` (`sha256:<hex>`).
    pub fn layer(&self, chain_id: &str) -> Option<&DockerLayer> {
        self.layers.get(chain_id)
    }

    /// The containers' layers.
    pub fn containers(&self) -> &[DockerContainer] {
        &self.containers
    }

    /// Every layer of the driver that Docker's databases know, image layers
    /// and containers' layers, in driver ids, ordered by id.
    pub fn entries(&self) -> Vec<DockerEntry> {
        let mut out = Vec::new();
        for layer in self.layers.values() {
            out.push(DockerEntry {
                id: layer.cache_id.clone(),
                parent: layer
                    .parent
                    .as_ref()
                    .and_then(|p| self.layers.get(p))
                    .map(|p| p.cache_id.clone()),
                kind: DockerKind::Image,
                chain_id: Some(layer.chain_id.clone()),
                diff_id: Some(layer.diff_id.clone()),
                size: layer.size,
                containers: self
                    .containers
                    .iter()
                    .filter(|c| c.parent.as_deref() == Some(layer.chain_id.as_str()))
                    .map(|c| c.id.clone())
                    .collect(),
                depth: self.chain_depth(&layer.chain_id),
            });
        }
        for c in &self.containers {
            let image = c.parent.as_ref().and_then(|p| self.layers.get(p));
            let image_depth = image.map_or(0, |l| self.chain_depth(&l.chain_id) + 1);
            let mut under = image.map(|l| l.cache_id.clone());
            if let Some(init) = &c.init_id {
                out.push(DockerEntry {
                    id: init.clone(),
                    parent: under.clone(),
                    kind: DockerKind::Init,
                    chain_id: None,
                    diff_id: None,
                    size: None,
                    containers: vec![c.id.clone()],
                    depth: image_depth,
                });
                under = Some(init.clone());
            }
            out.push(DockerEntry {
                id: c.mount_id.clone(),
                parent: under,
                kind: DockerKind::Container,
                chain_id: None,
                diff_id: None,
                size: None,
                containers: vec![c.id.clone()],
                depth: image_depth + usize::from(c.init_id.is_some()),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// How many layers are under the image layer `chain_id`.
    fn chain_depth(&self, chain_id: &str) -> usize {
        let mut depth = 0;
        let mut at = self.layers.get(chain_id).and_then(|l| l.parent.as_deref());
        while let Some(parent) = at {
            depth += 1;
            if depth > MAX_CHAIN {
                break;
            }
            at = self.layers.get(parent).and_then(|l| l.parent.as_deref());
        }
        depth
    }

    /// The driver's id of the layer `name` names: a chain id (with or
    /// without `sha256:`), a driver (cache, mount or init) id, a container id
    /// or name, or a unique prefix of any id. A container names its
    /// read-write layer.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`], or [`Error::Ambiguous`] for a prefix of several.
    pub fn resolve(&self, name: &str) -> Result<String> {
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let mut named: Vec<(String, String)> = Vec::new();
        for e in self.entries() {
            named.push((e.id.clone(), e.id.clone()));
            if let Some(chain) = &e.chain_id {
                named.push((chain.trim_start_matches("sha256:").to_owned(), e.id.clone()));
            }
        }
        for c in &self.containers {
            named.push((c.id.clone(), c.mount_id.clone()));
        }
        // A container's name names it whole, never as a prefix.
        let bare = name.strip_prefix('/').unwrap_or(name);
        if let Some(c) = self
            .containers
            .iter()
            .find(|c| c.name.as_deref() == Some(bare))
        {
            return Ok(c.mount_id.clone());
        }
        if let Some((_, id)) = named.iter().find(|(n, _)| n == hex || n == name) {
            return Ok(id.clone());
        }
        let mut hits: Vec<&String> = named
            .iter()
            .filter(|(n, _)| !hex.is_empty() && n.starts_with(hex))
            .map(|(_, id)| id)
            .collect();
        hits.sort();
        hits.dedup();
        match hits.as_slice() {
            [] => Err(Error::NoSuchLayer {
                id: name.to_owned(),
            }),
            [one] => Ok((*one).clone()),
            many => Err(Error::Ambiguous {
                id: name.to_owned(),
                count: many.len(),
            }),
        }
    }

    fn image_dir(&self) -> PathBuf {
        self.root.join("image").join(&self.driver)
    }
}

impl ImageStore for DockerRoot {
    /// The images in `image/<driver>/imagedb`, with their names from
    /// `repositories.json`, ordered by id.
    fn images(&self) -> Result<Vec<Image>> {
        let base = self.image_dir();
        let content = base.join("imagedb").join("content").join("sha256");
        let mut tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let repos = base.join("repositories.json");
        if let Some(bytes) = read_bounded(&repos, MAX_JSON_FILE)? {
            let parsed: Repositories = serde_json::from_slice(&bytes)
                .map_err(|e| bad(repos.clone(), &format!("does not parse: {e}")))?;
            for names in parsed.repositories.into_values() {
                for (name, id) in names {
                    tags.entry(id).or_default().push(name);
                }
            }
        }
        let mut out = Vec::new();
        if !content.is_dir() {
            return Ok(out);
        }
        for hex in list_ids(&content)? {
            let path = content.join(&hex);
            let Some(config) = read_bounded(&path, MAX_JSON_FILE)? else {
                continue;
            };
            let mut names = tags.remove(&format!("sha256:{hex}")).unwrap_or_default();
            names.sort();
            out.push(image_of_config(&path, &config, names)?);
        }
        Ok(out)
    }

    fn config(&self, id: &str) -> Result<Vec<u8>> {
        let hex = id
            .strip_prefix("sha256:")
            .filter(|h| is_hex64(h))
            .ok_or_else(|| Error::NoSuchImage {
                name: id.to_owned(),
            })?;
        let path = self.image_dir().join("imagedb/content/sha256").join(hex);
        read_bounded(&path, MAX_JSON_FILE)?.ok_or_else(|| Error::NoSuchImage {
            name: id.to_owned(),
        })
    }

    fn layer_tar_size(&self, chain_id: &str) -> Result<u64> {
        let (layer, path) = self.tar_split_of(chain_id)?;
        tar_split_size(&path, &layer.chain_id)
    }

    /// Docker's layer tar: the headers and padding from the layer's
    /// `tar-split.json.gz`, the contents from its files (each checked against
    /// the size and CRC-64 recorded, names resolved beneath the layer's
    /// directory), the whole checked against the diff id.
    fn write_layer_tar(&self, chain_id: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        let (layer, path) = self.tar_split_of(chain_id)?;
        reproduce(
            &path,
            &self.layer_files(&layer.cache_id),
            &layer.chain_id,
            &layer.diff_id,
            out,
        )
    }
}

#[derive(serde::Deserialize)]
struct Repositories {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

/// The name in `containers/<id>/config.v2.json`, if it reads (a best effort:
/// names are a convenience, the ids are what count).
fn container_name(root: &Path, id: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(rename = "Name")]
        name: String,
    }
    let path = root.join("containers").join(id).join("config.v2.json");
    let bytes = read_bounded(&path, MAX_JSON_FILE).ok()??;
    let config: Config = serde_json::from_slice(&bytes).ok()?;
    let name = config.name.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_owned())
}

fn bad(path: PathBuf, reason: &str) -> Error {
    Error::BadDockerFile {
        path,
        reason: reason.to_owned(),
    }
}

/// The names in `dir` that are 64 lowercase hex digits, sorted; other names
/// (Docker's `tmp`, editors' leftovers) are skipped.
fn list_ids(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| crate::error::io_err("read", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| crate::error::io_err("read", dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            if is_hex64(name) {
                out.push(name.to_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `sha256:` and 64 lowercase hex digits.
fn check_digest(s: &str) -> std::result::Result<(), String> {
    if is_digest(s) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a sha256 digest"))
    }
}

/// A graph driver's layer id as Docker makes them: hex, with `-init` for a
/// container's init layer.
fn check_driver_id(s: &str) -> std::result::Result<(), String> {
    plies_layerstore::validate_id(s).map_err(|e| format!("{s:?} is not a layer id: {e}"))
}

/// A small file's text, `None` when it does not exist.
fn read_small(path: &Path) -> Result<Option<String>> {
    match read_bounded(path, MAX_SMALL_FILE)? {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| bad(path.to_owned(), "not UTF-8 text")),
    }
}

/// A small file holding one id, checked; `None` when it does not exist.
fn read_id(
    path: &Path,
    check: fn(&str) -> std::result::Result<(), String>,
) -> Result<Option<String>> {
    let Some(text) = read_small(path)? else {
        return Ok(None);
    };
    let id = text.trim();
    check(id).map_err(|reason| bad(path.to_owned(), &reason))?;
    Ok(Some(id.to_owned()))
}

/// At most `limit` bytes of a regular file (never following a symlink at the
/// last component); `None` when it does not exist.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::error::io_err("open", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| crate::error::io_err("stat", path, e))?;
    if !meta.is_file() {
        return Err(bad(path.to_owned(), "not a regular file"));
    }
    if meta.len() > limit {
        return Err(bad(
            path.to_owned(),
            &format!("{} bytes, more than the {limit} expected", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| crate::error::io_err("read", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(bad(path.to_owned(), "grew past its expected size"));
    }
    Ok(Some(bytes))
}

impl DockerRoot {
    /// The directory holding the files of the driver's layer `cache_id`:
    /// `<root>/overlay2/<id>/diff` or `<root>/aufs/diff/<id>`.
    pub fn layer_files(&self, cache_id: &str) -> PathBuf {
        match self.driver.as_str() {
            "aufs" => self.root.join("aufs").join("diff").join(cache_id),
            "vfs" => self.root.join("vfs").join("dir").join(cache_id),
            driver => self.root.join(driver).join(cache_id).join("diff"),
        }
    }

    fn tar_split_of(&self, chain_id: &str) -> Result<(&DockerLayer, PathBuf)> {
        let layer = self
            .layers
            .get(chain_id)
            .ok_or_else(|| Error::NoSuchLayer {
                id: chain_id.to_owned(),
            })?;
        let path = layer.tar_split.clone().ok_or_else(|| {
            bad(
                Self::layerdb_of(&self.root, &self.driver)
                    .join("sha256")
                    .join(chain_id.trim_start_matches("sha256:"))
                    .join("tar-split.json.gz"),
                "missing: the layer's tar cannot be reproduced",
            )
        })?;
        Ok((layer, path))
    }
}
