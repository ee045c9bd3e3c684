//! Saved images: `docker save` archives and OCI image layouts, read into a list of
//! layers with their diff ids.
//!
//! OCI indexes and manifests are read with `oci-spec`. Image configs are read
//! through a small struct of the fields plies needs (`os`, `architecture`,
//! `variant`, `rootfs`): `docker save` writes configs with Docker's own fields,
//! and an import should not fail on a field it never uses.

pub mod source;

use anyhow::{Context, Result, anyhow, bail};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use crate::digest::{Digest, chain_ids};
pub use source::Source;

/// How deep OCI indexes may nest before plies gives up.
const MAX_INDEX_NESTING: usize = 4;

/// One image read from a saved archive or layout.
#[derive(Debug, Clone)]
pub struct Image {
    /// `docker-archive` or `oci-layout`.
    pub format: &'static str,
    /// The config's digest (its file name, for a docker archive).
    pub config: Digest,
    /// The config as read: the bytes its digest is of.
    pub config_bytes: Vec<u8>,
    /// Tags the archive names (`RepoTags`, or the OCI `ref.name` annotation).
    pub tags: Vec<String>,
    /// The layers, bottom first.
    pub layers: Vec<LayerRef>,
}

/// One layer of an [`Image`].
#[derive(Debug, Clone)]
pub struct LayerRef {
    /// The uncompressed tar's sha256, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// The layer's chain id: the id it is stored under.
    pub chain_id: Digest,
    /// The member holding the (possibly compressed) layer tar.
    pub blob: String,
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The fields of an image config that an import reads.
#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// A platform as `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub arch: String,
    /// `v8`, when given.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                arch: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: (*os).to_owned(),
                    arch: (*arch).to_owned(),
                    variant: Some((*variant).to_owned()),
                })
            }
            _ => bail!("platform {s:?} is not os/arch[/variant]"),
        }
    }

    fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.arch == arch
            && (self.variant.is_none() || self.variant.as_deref() == variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Reads the images a source holds: every image of a `docker save` archive's
/// `manifest.json`, or the image of an OCI layout's `index.json` for `platform`.
pub fn read_images(source: &Source, platform: &Platform) -> Result<Vec<Image>> {
    if source.exists("manifest.json") {
        read_docker(source)
    } else if source.exists("index.json") {
        read_oci(source, platform).map(|i| vec![i])
    } else {
        bail!(
            "neither manifest.json (docker save) nor index.json (OCI image layout) is in the image"
        )
    }
}

fn read_docker(source: &Source) -> Result<Vec<Image>> {
    let bytes = source.read_small("manifest.json")?;
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&bytes).context("manifest.json is not a docker save manifest")?;
    if entries.is_empty() {
        bail!("manifest.json lists no image");
    }
    entries
        .into_iter()
        .map(|entry| {
            let config_bytes = source
                .read_small(&entry.config)
                .with_context(|| format!("config {}", entry.config))?;
            let digest = Digest::of(&config_bytes);
            // Docker names the config after its digest; a different name means a damaged archive.
            let stem = entry.config.rsplit('/').next().unwrap_or_default();
            let stem = stem.strip_suffix(".json").unwrap_or(stem);
            if stem.len() == 64 && stem != digest.hex() {
                bail!("config {}: its sha256 is {digest}", entry.config);
            }
            let config = parse_config(&config_bytes, &entry.config)?;
            let diff_ids = diff_ids(&config, &entry.config)?;
            if diff_ids.len() != entry.layers.len() {
                bail!(
                    "manifest.json lists {} layers but config {} has {} diff_ids",
                    entry.layers.len(),
                    entry.config,
                    diff_ids.len()
                );
            }
            Ok(Image {
                format: "docker-archive",
                config: digest,
                config_bytes,
                tags: entry.repo_tags.unwrap_or_default(),
                layers: layer_refs(diff_ids, entry.layers),
            })
        })
        .collect()
}

fn read_oci(source: &Source, platform: &Platform) -> Result<Image> {
    let layout = source.read_small("oci-layout").context("oci-layout")?;
    let layout: serde_json::Value =
        serde_json::from_slice(&layout).context("oci-layout is not JSON")?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        bail!("oci-layout has no imageLayoutVersion");
    }
    let index =
        ImageIndex::from_reader(&source.read_small("index.json")?[..]).context("index.json")?;
    let (manifest_desc, tags) = pick_manifest(source, &index, platform, 0)?;
    let manifest_bytes = read_blob(source, &manifest_desc).context("manifest")?;
    let manifest = ImageManifest::from_reader(&manifest_bytes[..])
        .with_context(|| format!("manifest {}", manifest_desc.digest()))?;
    let config_bytes = read_blob(source, manifest.config()).context("config")?;
    let config_name = manifest.config().digest().to_string();
    let config = parse_config(&config_bytes, &config_name)?;
    let diff_ids = diff_ids(&config, &config_name)?;
    if diff_ids.len() != manifest.layers().len() {
        bail!(
            "manifest {} lists {} layers but config {config_name} has {} diff_ids",
            manifest_desc.digest(),
            manifest.layers().len(),
            diff_ids.len()
        );
    }
    let blobs = manifest
        .layers()
        .iter()
        .map(blob_name)
        .collect::<Result<Vec<_>>>()?;
    Ok(Image {
        format: "oci-layout",
        config: Digest::parse(&config_name).map_err(|e| anyhow!(e))?,
        config_bytes,
        tags,
        layers: layer_refs(diff_ids, blobs),
    })
}

/// The manifest of an index for `platform`, following nested indexes.
fn pick_manifest(
    source: &Source,
    index: &ImageIndex,
    platform: &Platform,
    depth: usize,
) -> Result<(Descriptor, Vec<String>)> {
    if depth > MAX_INDEX_NESTING {
        bail!("indexes nest more than {MAX_INDEX_NESTING} deep");
    }
    let tags_of = |d: &Descriptor| -> Vec<String> {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
            .into_iter()
            .collect()
    };
    let mut seen = Vec::new();
    for desc in index.manifests() {
        match desc.media_type() {
            MediaType::ImageIndex => {
                let nested = ImageIndex::from_reader(&read_blob(source, desc)?[..])
                    .with_context(|| format!("index {}", desc.digest()))?;
                if let Ok(found) = pick_manifest(source, &nested, platform, depth + 1) {
                    return Ok(found);
                }
            }
            MediaType::ImageManifest | MediaType::Other(_) => {
                let matched = match desc.platform() {
                    Some(p) => {
                        seen.push(format!("{}/{}", p.os(), p.architecture()));
                        platform.matches(
                            &p.os().to_string(),
                            &p.architecture().to_string(),
                            p.variant().as_deref(),
                        )
                    }
                    // No platform on the descriptor: the config says.
                    None => {
                        let manifest = ImageManifest::from_reader(&read_blob(source, desc)?[..])
                            .with_context(|| format!("manifest {}", desc.digest()))?;
                        let name = manifest.config().digest().to_string();
                        let config = parse_config(&read_blob(source, manifest.config())?, &name)?;
                        seen.push(format!("{}/{}", config.os, config.architecture));
                        platform.matches(
                            &config.os,
                            &config.architecture,
                            config.variant.as_deref(),
                        )
                    }
                };
                if matched {
                    return Ok((desc.clone(), tags_of(desc)));
                }
            }
            _ => {}
        }
    }
    if seen.is_empty() {
        bail!("index.json lists no image manifest");
    }
    bail!(
        "no manifest for {platform} in index.json (it has {})",
        seen.join(", ")
    )
}

/// The member name of a blob: `blobs/<alg>/<hex>`.
fn blob_name(desc: &Descriptor) -> Result<String> {
    let digest = desc.digest();
    let alg = digest.algorithm().to_string();
    let hex = digest.digest();
    if alg.contains('/') || hex.contains('/') || hex.is_empty() {
        bail!("descriptor digest {digest} cannot name a blob");
    }
    Ok(format!("blobs/{alg}/{hex}"))
}

/// Reads a small blob and checks it against its descriptor's digest and size.
fn read_blob(source: &Source, desc: &Descriptor) -> Result<Vec<u8>> {
    let name = blob_name(desc)?;
    let bytes = source.read_small(&name)?;
    if bytes.len() as u64 != desc.size() {
        bail!(
            "blob {name}: {} bytes, its descriptor says {}",
            bytes.len(),
            desc.size()
        );
    }
    let expected = desc.digest().to_string();
    if expected.starts_with("sha256:") && Digest::of(&bytes).as_str() != expected {
        bail!(
            "blob {name}: sha256 is {}, its descriptor says {expected}",
            Digest::of(&bytes)
        );
    }
    Ok(bytes)
}

fn parse_config(bytes: &[u8], name: &str) -> Result<Config> {
    let config: Config = serde_json::from_slice(bytes)
        .with_context(|| format!("config {name} is not an image config"))?;
    if config.rootfs.kind != "layers" {
        bail!(
            "config {name}: rootfs type {:?} is not \"layers\"",
            config.rootfs.kind
        );
    }
    Ok(config)
}

fn diff_ids(config: &Config, name: &str) -> Result<Vec<Digest>> {
    config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| Digest::parse(d).map_err(|e| anyhow!("config {name}: {e}")))
        .collect()
}

fn layer_refs(diff_ids: Vec<Digest>, blobs: Vec<String>) -> Vec<LayerRef> {
    let chains = chain_ids(&diff_ids);
    diff_ids
        .into_iter()
        .zip(chains)
        .zip(blobs)
        .map(|((diff_id, chain_id), blob)| LayerRef {
            diff_id,
            chain_id,
            blob,
        })
        .collect()
}
