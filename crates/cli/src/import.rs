//! `plies import`: a saved image's layers into the store, under their chain ids.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plies_drivers::CreateOptions;
use serde::Serialize;

use plies_tarsplit::{Disassembler, EntryKind, EntrySink, Packer};

use crate::digest::HashedStream;
use crate::image::{self, Image, LayerRef, Platform, Source};
use crate::store::{Record, Store};

/// One imported image, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Imported {
    /// `docker-archive` or `oci-layout`.
    pub format: &'static str,
    /// The image config's digest.
    pub config: String,
    /// The tags the archive names.
    pub tags: Vec<String>,
    /// The top layer's id.
    pub top: String,
    /// Every layer, bottom first.
    pub layers: Vec<ImportedLayer>,
}

/// One layer of an [`Imported`] image.
#[derive(Debug, Serialize)]
pub struct ImportedLayer {
    /// The layer id: its chain id.
    pub id: String,
    /// The sha256 of the uncompressed layer tar.
    pub diff_id: String,
    /// The layer below.
    pub parent: Option<String>,
    /// False when the store had it already.
    pub new: bool,
    /// Bytes applied (0 for a layer the store had).
    pub size: u64,
}

/// Set by SIGINT/SIGTERM; the layer being read then fails and is rolled back.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&flag)) {
            tracing::warn!(error = %e, "cannot catch signal {sig}; an interrupted import is cleaned up by the next command");
        }
    }
    flag
}

/// A reader that fails once `flag` is set.
pub struct Interruptible<R> {
    inner: R,
    flag: Arc<AtomicBool>,
}

impl<R> Interruptible<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, flag: Arc<AtomicBool>) -> Self {
        Interruptible { inner, flag }
    }
}

impl<R: Read> Read for Interruptible<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.flag.load(Ordering::Relaxed) {
            // Not ErrorKind::Interrupted: read loops retry that.
            return Err(io::Error::other("interrupted by a signal"));
        }
        self.inner.read(buf)
    }
}

/// A progress bar on stderr when it is a terminal (and not `-q`), else nothing.
pub fn progress_bar(show: bool, total: u64) -> ProgressBar {
    use std::io::IsTerminal;
    if !show || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// Imports every image `path` holds (one for an OCI layout: the one for `platform`).
pub fn import(
    store: &Store,
    path: &Path,
    platform: &Platform,
    show_progress: bool,
    interrupted: &Arc<AtomicBool>,
) -> Result<Vec<Imported>> {
    let source = Source::open(path)?;
    let images =
        image::read_images(&source, platform).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for image in &images {
        preflight(store, &source, image)?;
    }
    for image in images {
        out.push(import_image(
            store,
            &source,
            image,
            show_progress,
            interrupted,
        )?);
    }
    Ok(out)
}

/// Refuses an image before anything is written: too deep, blobs missing, or a
/// layer id the store holds but did not import.
fn preflight(store: &Store, source: &Source, image: &Image) -> Result<()> {
    if image.layers.is_empty() {
        bail!("image {}: no layers", image.config);
    }
    let depth = image.layers.len() - 1;
    if depth > store.options.max_depth {
        bail!(
            "image {}: {} layers is deeper than the store allows ({} lower layers; --storage-opt overlay2.max_depth)",
            image.config,
            image.layers.len(),
            store.options.max_depth
        );
    }
    for layer in &image.layers {
        if !source.exists(&layer.blob) {
            bail!(
                "layer {}: blob {} is missing from the image",
                layer.chain_id,
                layer.blob
            );
        }
        if store.driver().exists(layer.chain_id.as_str()) {
            match store.record(layer.chain_id.as_str())? {
                Some(r) if r.complete && r.diff_id.as_deref() == Some(layer.diff_id.as_str()) => {}
                _ => bail!(
                    "layer {}: a layer of this id exists and was not imported from this diff",
                    layer.chain_id
                ),
            }
        }
    }
    Ok(())
}

fn import_image(
    store: &Store,
    source: &Source,
    image: Image,
    show_progress: bool,
    interrupted: &Arc<AtomicBool>,
) -> Result<Imported> {
    let total: u64 = image
        .layers
        .iter()
        .filter(|l| !store.driver().exists(l.chain_id.as_str()))
        .map(|l| source.size(&l.blob).unwrap_or(0))
        .sum();
    let bar = progress_bar(show_progress, total);
    // All or nothing: a failure drops the batch, which removes the layers this
    // import made; their data is synced once, when the batch commits.
    let mut batch = store.batch();
    let mut layers = Vec::new();
    let mut parent: Option<String> = None;
    let count = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        let id = layer.chain_id.to_string();
        let new = !store.driver().exists(&id);
        let mut size = 0;
        if new {
            bar.set_message(format!("layer {}/{count}", i + 1));
            let made = import_layer(
                &mut batch,
                source,
                layer,
                parent.as_deref(),
                &bar,
                interrupted,
            );
            match made {
                Ok(n) => size = n,
                Err(e) => {
                    bar.finish_and_clear();
                    return Err(e);
                }
            }
        }
        layers.push(ImportedLayer {
            id: id.clone(),
            diff_id: layer.diff_id.to_string(),
            parent: parent.clone(),
            new,
            size,
        });
        parent = Some(id);
    }
    batch.commit()?;
    // The config, kept for `plies images` and `plies save`, once its layers are.
    store.add_image(&image.config_bytes, &image.tags)?;
    bar.finish_and_clear();
    Ok(Imported {
        format: image.format,
        config: image.config.to_string(),
        tags: image.tags,
        top: parent.unwrap_or_default(),
        layers,
    })
}

/// Creates and fills one layer of `batch` (the database's crash-safe step): on
/// any error the layer and its record are gone, and a kill leaves an incomplete
/// record the next writer removes.
fn import_layer(
    batch: &mut plies_layerdb::Batch<'_>,
    source: &Source,
    layer: &LayerRef,
    parent: Option<&str>,
    bar: &ProgressBar,
    interrupted: &Arc<AtomicBool>,
) -> Result<u64> {
    let id = layer.chain_id.as_str();
    let record = Record::new(id, parent, false).with_diff_id(layer.diff_id.to_string());
    let tar_split = batch.tar_split_path(id);
    let made = batch.make(record, &CreateOptions::default(), |driver| -> Result<u64> {
        let (raw, _) = source.open_member(&layer.blob)?;
        let raw = Interruptible::new(bar.wrap_read(raw), Arc::clone(interrupted));
        let (_, tar) = crate::compression::decompress(raw)
            .with_context(|| format!("layer {id}: blob {}", layer.blob))?;
        // The tar's headers and padding go to its tar-split as it is applied,
        // so that `plies save` gives it back byte for byte.
        let dir = tar_split.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        let partial = tar_split.with_extension("gz.partial");
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("{}", partial.display()))?;
        // Decompression and the digest run on a second thread beside the apply.
        let applied = std::thread::scope(|s| -> Result<_> {
            let mut hashed = HashedStream::spawn(s, tar);
            let sink = KeepIfWritable::new(Packer::gzip(file));
            let mut split = Disassembler::new(&mut hashed, sink);
            let size = driver.apply_diff(id, parent, &mut split)?;
            let kept = split
                .finish()
                .with_context(|| format!("layer {id}: recording its tar-split"))?
                .into_inner()
                .and_then(|packer| {
                    let gz = packer.finish()?;
                    gz.finish().map_err(|source| plies_tarsplit::Error::Write {
                        position: 0,
                        source,
                    })
                });
            let (digest, _) = hashed
                .finish()
                .with_context(|| format!("layer {id}: reading blob {}", layer.blob))?;
            Ok((size, digest, kept.map(drop)))
        });
        let (size, digest, kept) = match applied {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        if digest != layer.diff_id {
            let _ = std::fs::remove_file(&partial);
            bail!(
                "layer {id}: digest mismatch: the uncompressed blob {} is {digest}, the config says {}",
                layer.blob,
                layer.diff_id
            );
        }
        match kept {
            // Made durable with the layer, by the batch's one sync.
            Ok(()) => std::fs::rename(&partial, &tar_split)
                .with_context(|| format!("layer {id}: {}", tar_split.display()))?,
            // A tar tar-split cannot describe (a path twice, as Docker's
            // packer refuses too): the layer is kept, `plies save` of it fails.
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                tracing::warn!(layer = id, error = %e, "no tar-split kept: the layer cannot be saved byte for byte");
            }
        }
        Ok(size)
    })?;
    Ok(made.size)
}

/// A tar-split sink that stops recording at its first failure instead of
/// failing the read of the tar it records: the layer is applied all the same.
struct KeepIfWritable<S>(Result<S, plies_tarsplit::Error>);

impl<S: EntrySink> KeepIfWritable<S> {
    fn new(inner: S) -> Self {
        KeepIfWritable(Ok(inner))
    }

    /// The sink, or the failure that stopped it.
    fn into_inner(self) -> Result<S, plies_tarsplit::Error> {
        self.0
    }
}

impl<S: EntrySink> EntrySink for KeepIfWritable<S> {
    fn push(&mut self, entry: EntryKind) -> Result<(), plies_tarsplit::Error> {
        if let Ok(inner) = &mut self.0 {
            if let Err(e) = inner.push(entry) {
                self.0 = Err(e);
            }
        }
        Ok(())
    }
}
