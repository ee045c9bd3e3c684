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
}

/// An image of Docker's image store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DockerImage {
    /// `sha256:<hex>` of the image's config.
    pub id: String,
    /// Its names (`repo:tag`, `repo@sha256:…`) from `repositories.json`.
    pub tags: Vec<String>,
    /// The diff ids of its layers, lowest first, from its config.
    pub diff_ids: Vec<String>,
    /// The chain id of its top layer (`None` for an image without layers).
    pub chain_id: Option<String>,
    /// The config's `created` time, as written.
    pub created: Option<String>,
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
                    id,
                    mount_id,
                    init_id: read_id(&dir.join("init-id"), check_driver_id)?,
                    parent: read_id(&dir.join("parent"), check_digest)?,
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
    /// without `sha256:`), a driver (cache, mount or init) id, a container id,
    /// or a unique prefix of any of them. A container names its read-write
    /// layer.
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

    /// The images in `image/<driver>/imagedb`, with their names from
    /// `repositories.json`, ordered by id.
    ///
    /// # Errors
    /// [`Error::Io`] when a directory cannot be read, [`Error::BadDockerFile`]
    /// for a config or `repositories.json` that does not parse.
    pub fn images(&self) -> Result<Vec<DockerImage>> {
        let base = self.root.join("image").join(&self.driver);
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
            let Some(bytes) = read_bounded(&path, MAX_JSON_FILE)? else {
                continue;
            };
            let config: ImageConfig = serde_json::from_slice(&bytes)
                .map_err(|e| bad(path.clone(), &format!("not an image config: {e}")))?;
            let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
            for d in &diff_ids {
                check_digest(d).map_err(|reason| bad(path.clone(), &reason))?;
            }
            let id = format!("sha256:{hex}");
            let mut names = tags.remove(&id).unwrap_or_default();
            names.sort();
            out.push(DockerImage {
                chain_id: chain_id(&diff_ids),
                tags: names,
                diff_ids,
                created: config.created,
                id,
            });
        }
        Ok(out)
    }

    /// The raw config of image `id` (`sha256:<hex>` or a unique prefix of the
    /// hex, or one of its names), as stored: the bytes its id is the sha256 of.
    ///
    /// # Errors
    /// [`Error::NoSuchImage`], [`Error::Ambiguous`], [`Error::Io`].
    pub fn image(&self, name: &str) -> Result<(DockerImage, Vec<u8>)> {
        let images = self.images()?;
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        let by_name = images
            .iter()
            .filter(|i| {
                i.tags
                    .iter()
                    .any(|t| t == name || t == &format!("{name}:latest"))
            })
            .collect::<Vec<_>>();
        let hits = if by_name.is_empty() {
            images
                .iter()
                .filter(|i| !hex.is_empty() && i.id["sha256:".len()..].starts_with(hex))
                .collect::<Vec<_>>()
        } else {
            by_name
        };
        let image = match hits.as_slice() {
            [] => {
                return Err(Error::NoSuchImage {
                    name: name.to_owned(),
                });
            }
            [one] => (*one).clone(),
            many => {
                return Err(Error::Ambiguous {
                    id: name.to_owned(),
                    count: many.len(),
                });
            }
        };
        let path = self
            .root
            .join("image")
            .join(&self.driver)
            .join("imagedb/content/sha256")
            .join(&image.id["sha256:".len()..]);
        let bytes = read_bounded(&path, MAX_JSON_FILE)?
            .ok_or_else(|| bad(path, "the image config is gone"))?;
        Ok((image, bytes))
    }
}

/// The chain id of a stack of diff ids, lowest first (the OCI definition:
/// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    use sha2::Digest as _;
    let mut chain: Option<String> = None;
    for diff in diff_ids {
        chain = Some(match chain {
            None => diff.clone(),
            Some(below) => {
                let hash = sha2::Sha256::digest(format!("{below} {diff}").as_bytes());
                format!("sha256:{}", hex(&hash))
            }
        });
    }
    chain
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[derive(serde::Deserialize)]
struct Repositories {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
struct ImageConfig {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(serde::Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
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

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:` and 64 lowercase hex digits.
fn check_digest(s: &str) -> std::result::Result<(), String> {
    match s.strip_prefix("sha256:") {
        Some(hex) if is_hex64(hex) => Ok(()),
        _ => Err(format!("{s:?} is not a sha256 digest")),
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

    /// The size of the tar [`DockerRoot::write_layer_tar`] writes for
    /// `chain_id`, from its tar-split alone.
    ///
    /// # Errors
    /// As [`DockerRoot::write_layer_tar`], for the tar-split.
    pub fn layer_tar_size(&self, chain_id: &str) -> Result<u64> {
        let (layer, path) = self.tar_split_of(chain_id)?;
        let mut size = 0u64;
        for entry in tar_split_entries(&path)? {
            let entry = entry.map_err(|source| Error::TarSplit {
                chain_id: layer.chain_id.clone(),
                source,
            })?;
            size += match entry.kind {
                plies_tarsplit::EntryKind::Segment(bytes) => bytes.len() as u64,
                plies_tarsplit::EntryKind::File { size, .. } => size,
            };
        }
        Ok(size)
    }

    /// Writes the tar of the image layer `chain_id` to `out` byte for byte as
    /// Docker loaded it: the headers and padding from its `tar-split.json.gz`,
    /// the contents from the layer's files (each checked against the size and
    /// CRC-64 recorded, names resolved beneath the layer's directory), and the
    /// whole checked against the layer's diff id. Returns the bytes written.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`]; [`Error::BadDockerFile`] for a layer without
    /// tar-split; [`Error::TarSplit`] when the tar-split is bad or a file is
    /// missing, escapes the layer, or differs from what was recorded;
    /// [`Error::LayerDigest`] when the tar's digest is not the diff id. On
    /// error `out` holds part of the tar.
    pub fn write_layer_tar(&self, chain_id: &str, out: &mut dyn std::io::Write) -> Result<u64> {
        use sha2::Digest as _;
        let (layer, path) = self.tar_split_of(chain_id)?;
        let dir = self.layer_files(&layer.cache_id);
        let dir_fd = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| crate::error::io_err("open", &dir, e))?;
        let files = |name: &[u8]| -> std::io::Result<std::fs::File> {
            use std::os::unix::ffi::OsStrExt as _;
            let mut name = name;
            while let Some(rest) = name.strip_prefix(b"/") {
                name = rest;
            }
            let fd = rustix::fs::openat2(
                &dir_fd,
                std::ffi::OsStr::from_bytes(name),
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::CLOEXEC
                    | rustix::fs::OFlags::NOFOLLOW,
                rustix::fs::Mode::empty(),
                rustix::fs::ResolveFlags::BENEATH | rustix::fs::ResolveFlags::NO_MAGICLINKS,
            )?;
            Ok(std::fs::File::from(fd))
        };
        let mut hashing = HashingWriter {
            inner: out,
            hash: sha2::Sha256::new(),
        };
        let written = plies_tarsplit::assemble(tar_split_entries(&path)?, files, &mut hashing)
            .map_err(|source| Error::TarSplit {
                chain_id: layer.chain_id.clone(),
                source,
            })?;
        let found = format!("sha256:{}", hex(&hashing.hash.finalize()));
        if found != layer.diff_id {
            return Err(Error::LayerDigest {
                chain_id: layer.chain_id.clone(),
                expected: layer.diff_id.clone(),
                found,
            });
        }
        Ok(written)
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

/// The entries of a `tar-split.json.gz`.
fn tar_split_entries(path: &Path) -> Result<plies_tarsplit::Unpacker<impl std::io::Read + use<>>> {
    let file = std::fs::File::open(path).map_err(|e| crate::error::io_err("open", path, e))?;
    Ok(plies_tarsplit::Unpacker::gzip(file))
}

/// A writer that hashes what goes through it.
struct HashingWriter<'a> {
    inner: &'a mut dyn std::io::Write,
    hash: sha2::Sha256,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
