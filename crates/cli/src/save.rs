//! `plies save`: images of a Docker data root, or those `plies import` kept,
//! as a `docker save` archive or an OCI image layout.
//!
//! Every layer is reproduced from its tar-split and files, so that its digest
//! is the diff id the config names, and every config is written as stored, so
//! that its digest is the image id: `docker load` (or any OCI reader)
//! elsewhere gives the same image ids. A layer two images share is written
//! once.
//! - docker: per image its config (`<id>.json`) and each layer as
//!   `<diff-id>/layer.tar`; `manifest.json` lists them with the image's tags.
//! - oci: `oci-layout`, and under `blobs/sha256/` the configs, the layers
//!   (uncompressed, so their digests are their diff ids) and one manifest per
//!   image; `index.json` lists the manifests, each with its tag as
//!   `org.opencontainers.image.ref.name`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};
use plies_layerdb::{ImageStore, chain_id};
use serde::Serialize;

use crate::args::SaveFormat;
use crate::output::{Failure, Out};

/// One image of `manifest.json`.
#[derive(Serialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Writes `names` to `output` (a file, fsynced, removed again on failure) or
/// standard output (never a terminal).
pub fn save(
    db: &dyn ImageStore,
    names: &[String],
    output: Option<&Path>,
    format: SaveFormat,
    out: &Out,
) -> Result<(), Failure> {
    if output.is_none() && io::stdout().is_terminal() {
        return Err(Failure::usage(
            "refusing to write an image archive to a terminal: redirect it or use -o FILE",
        ));
    }
    match output {
        None => {
            let mut stdout = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
            write_archive(db, names, format, &mut stdout)?;
            stdout.flush()?;
        }
        Some(path) => {
            let written = (|| -> Result<()> {
                let file = File::create(path).with_context(|| format!("{}", path.display()))?;
                let mut w = io::BufWriter::with_capacity(1 << 20, file);
                write_archive(db, names, format, &mut w)?;
                let file = w.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                Ok(())
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(path);
            }
            written?;
            out.note(format!("saved {} to {}", names.join(", "), path.display()))?;
        }
    }
    Ok(())
}

fn write_archive(
    db: &dyn ImageStore,
    names: &[String],
    format: SaveFormat,
    w: &mut dyn Write,
) -> Result<()> {
    match format {
        SaveFormat::Docker => write_docker(db, names, w),
        SaveFormat::Oci => write_oci(db, names, w),
    }
}

fn write_docker(db: &dyn ImageStore, names: &[String], w: &mut dyn Write) -> Result<()> {
    let mut manifest = Vec::new();
    let mut written = BTreeSet::new();
    for name in names {
        let (image, config) = db.image(name)?;
        let config_name = format!("{}.json", &image.id["sha256:".len()..]);
        if written.insert(config_name.clone()) {
            member_bytes(w, &config_name, &config[..])?;
        }
        let mut layers = Vec::new();
        for (i, diff_id) in image.diff_ids.iter().enumerate() {
            let chain = chain_id(&image.diff_ids[..=i]).context("an image without layers")?;
            let member_name = format!("{}/layer.tar", &diff_id["sha256:".len()..]);
            if written.insert(member_name.clone()) {
                let size = db.layer_tar_size(&chain)?;
                member_layer(w, &member_name, db, &chain, size)?;
            }
            layers.push(member_name);
        }
        let tags = tags_to_write(&image.tags, names);
        manifest.push(ManifestEntry {
            config: config_name,
            repo_tags: (!tags.is_empty()).then_some(tags),
            layers,
        });
    }
    let manifest = serde_json::to_vec(&manifest)?;
    member_bytes(w, "manifest.json", &manifest[..])?;
    // The end of the archive: two zero blocks.
    w.write_all(&[0; 1024])?;
    Ok(())
}

/// The tags of an image to name in the archive: those asked for, else all
/// (`repo@digest` names are not tags).
fn tags_to_write(tags: &[String], names: &[String]) -> Vec<String> {
    tags.iter()
        .filter(|t| !t.contains('@'))
        .filter(|t| names.contains(t) || !names.iter().any(|n| tags.contains(n)))
        .cloned()
        .collect()
}

/// A descriptor of an OCI blob.
fn descriptor(media_type: &str, digest: &str, size: u64) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
}

fn write_oci(db: &dyn ImageStore, names: &[String], w: &mut dyn Write) -> Result<()> {
    let blob = |digest: &str| format!("blobs/sha256/{}", &digest["sha256:".len()..]);
    let mut written = BTreeSet::new();
    let mut manifests = Vec::new();
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    member_bytes(w, "oci-layout", &layout[..])?;
    for name in names {
        let (image, config) = db.image(name)?;
        if written.insert(image.id.clone()) {
            member_bytes(w, &blob(&image.id), &config[..])?;
        }
        let mut layers = Vec::new();
        for (i, diff_id) in image.diff_ids.iter().enumerate() {
            let chain = chain_id(&image.diff_ids[..=i]).context("an image without layers")?;
            let size = db.layer_tar_size(&chain)?;
            if written.insert(diff_id.clone()) {
                member_layer(w, &blob(diff_id), db, &chain, size)?;
            }
            layers.push(descriptor(
                "application/vnd.oci.image.layer.v1.tar",
                diff_id,
                size,
            ));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &image.id, config.len() as u64),
            "layers": layers,
        }))?;
        let digest = {
            use sha2::Digest as _;
            let hash = sha2::Sha256::digest(&manifest);
            format!(
                "sha256:{}",
                hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };
        if written.insert(digest.clone()) {
            member_bytes(w, &blob(&digest), &manifest[..])?;
        }
        let tags = tags_to_write(&image.tags, names);
        if tags.is_empty() {
            manifests.push(descriptor(
                "application/vnd.oci.image.manifest.v1+json",
                &digest,
                manifest.len() as u64,
            ));
        }
        for tag in tags {
            let mut d = descriptor(
                "application/vnd.oci.image.manifest.v1+json",
                &digest,
                manifest.len() as u64,
            );
            d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
            manifests.push(d);
        }
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))?;
    member_bytes(w, "index.json", &index[..])?;
    w.write_all(&[0; 1024])?;
    Ok(())
}

/// A member holding `bytes`.
fn member_bytes(w: &mut dyn Write, name: &str, bytes: &[u8]) -> Result<()> {
    member(w, name, bytes.len() as u64, &mut |w| {
        w.write_all(bytes).map_err(anyhow::Error::from)
    })
}

/// A member holding the layer tar of `chain`, `size` bytes as its tar-split
/// says.
fn member_layer(
    w: &mut dyn Write,
    name: &str,
    db: &dyn ImageStore,
    chain: &str,
    size: u64,
) -> Result<()> {
    member(w, name, size, &mut |w| {
        let n = db.write_layer_tar(chain, w)?;
        anyhow::ensure!(
            n == size,
            "layer {chain}: {n} bytes, not the {size} of its tar-split"
        );
        Ok(())
    })
}

/// One regular member of `size` bytes that `body` writes, padded to a block.
fn member(
    w: &mut dyn Write,
    name: &str,
    size: u64,
    body: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    w.write_all(header.as_bytes())?;
    body(w)?;
    let pad = (512 - size % 512) % 512;
    w.write_all(&vec![0; pad as usize])?;
    Ok(())
}
