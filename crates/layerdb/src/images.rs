//! Images, and layer tars reproduced byte for byte from tar-split: one model
//! for plies' own store ([`LayerDb`](crate::LayerDb), which keeps what
//! `plies import` read) and Docker's ([`DockerRoot`](crate::docker::DockerRoot)).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result, io_err};

/// An image: its config's id, names and layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Image {
    /// `sha256:<hex>` of the image's config.
    pub id: String,
    /// Its names (`repo:tag`, `repo@sha256:…`).
    pub tags: Vec<String>,
    /// The diff ids of its layers, lowest first, from its config.
    pub diff_ids: Vec<String>,
    /// The chain id of its top layer (`None` for an image without layers).
    pub chain_id: Option<String>,
    /// The config's `created` time, as written.
    pub created: Option<String>,
}

/// Where images and their layers' tars come from, for `plies images` and
/// `plies save`.
pub trait ImageStore {
    /// Every image, ordered by id.
    ///
    /// # Errors
    /// The store cannot be read, or holds a config that does not parse.
    fn images(&self) -> Result<Vec<Image>>;

    /// The config of image `id` (`sha256:<hex>`), as stored: the bytes its id
    /// is the digest of.
    ///
    /// # Errors
    /// [`Error::NoSuchImage`], [`Error::Io`].
    fn config(&self, id: &str) -> Result<Vec<u8>>;

    /// The size of the tar [`ImageStore::write_layer_tar`] writes.
    ///
    /// # Errors
    /// As [`ImageStore::write_layer_tar`], for the tar-split.
    fn layer_tar_size(&self, chain_id: &str) -> Result<u64>;

    /// Writes the tar of the layer `chain_id` byte for byte as it was loaded,
    /// checked against the layer's diff id; returns the bytes written.
    ///
    /// # Errors
    /// [`Error::NoSuchLayer`], [`Error::BadDockerFile`] or [`Error::TarSplit`]
    /// when no tar-split is kept or it cannot be replayed,
    /// [`Error::LayerDigest`].
    fn write_layer_tar(&self, chain_id: &str, out: &mut dyn Write) -> Result<u64>;

    /// The image `name` names (a tag, a tag without `:latest`, an id or a
    /// unique prefix of its hex) and its config.
    ///
    /// # Errors
    /// [`Error::NoSuchImage`], [`Error::Ambiguous`], and those of the store.
    fn image(&self, name: &str) -> Result<(Image, Vec<u8>)> {
        let image = find_image(self.images()?, name)?;
        let config = self.config(&image.id)?;
        Ok((image, config))
    }
}

/// The image `name` names among `images`.
pub(crate) fn find_image(images: Vec<Image>, name: &str) -> Result<Image> {
    let latest = format!("{name}:latest");
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    let by_name: Vec<&Image> = images
        .iter()
        .filter(|i| i.tags.iter().any(|t| t == name || *t == latest))
        .collect();
    let hits = if by_name.is_empty() {
        images
            .iter()
            .filter(|i| !hex.is_empty() && i.id["sha256:".len()..].starts_with(hex))
            .collect()
    } else {
        by_name
    };
    match hits.as_slice() {
        [] => Err(Error::NoSuchImage {
            name: name.to_owned(),
        }),
        [one] => Ok((*one).clone()),
        many => Err(Error::Ambiguous {
            id: name.to_owned(),
            count: many.len(),
        }),
    }
}

/// The image of a config: its id (the config's digest) and layers.
///
/// # Errors
/// [`Error::BadDockerFile`] naming `path` for a config that does not parse or
/// names a diff id that is not a sha256 digest.
pub(crate) fn image_of_config(path: &Path, config: &[u8], tags: Vec<String>) -> Result<Image> {
    #[derive(serde::Deserialize)]
    struct Config {
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
    let bad = |reason: String| Error::BadDockerFile {
        path: path.to_owned(),
        reason,
    };
    let parsed: Config =
        serde_json::from_slice(config).map_err(|e| bad(format!("not an image config: {e}")))?;
    let diff_ids = parsed.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    for d in &diff_ids {
        if !is_digest(d) {
            return Err(bad(format!("{d:?} is not a sha256 digest")));
        }
    }
    Ok(Image {
        id: digest(config),
        chain_id: chain_id(&diff_ids),
        tags,
        diff_ids,
        created: parsed.created,
    })
}

/// `sha256:` and 64 lowercase hex digits.
pub(crate) fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_hex64)
}

/// 64 lowercase hex digits.
pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

/// The chain id of a stack of diff ids, lowest first (the OCI definition:
/// `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    chain_ids(diff_ids).pop()
}

/// The chain id of every layer of a stack of diff ids, lowest first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(below) => digest(format!("{below} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The entries of a `tar-split.json.gz`.
fn tar_split_entries(path: &Path) -> Result<plies_tarsplit::Unpacker<impl Read + use<>>> {
    let file = std::fs::File::open(path).map_err(|e| io_err("open", path, e))?;
    Ok(plies_tarsplit::Unpacker::gzip(file))
}

/// The size of the tar the tar-split at `path` describes.
pub(crate) fn tar_split_size(path: &Path, chain_id: &str) -> Result<u64> {
    let mut size = 0u64;
    for entry in tar_split_entries(path)? {
        let entry = entry.map_err(|source| Error::TarSplit {
            chain_id: chain_id.to_owned(),
            source,
        })?;
        size += match entry.kind {
            plies_tarsplit::EntryKind::Segment(bytes) => bytes.len() as u64,
            plies_tarsplit::EntryKind::File { size, .. } => size,
        };
    }
    Ok(size)
}

/// Writes the tar the tar-split at `tar_split` describes, its files' contents
/// from under `files` (names resolved beneath it, never outside), checked
/// against `diff_id`; returns the bytes written.
pub(crate) fn reproduce(
    tar_split: &Path,
    files: &Path,
    chain_id: &str,
    diff_id: &str,
    out: &mut dyn Write,
) -> Result<u64> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use sha2::Digest as _;
    let dir = rustix::fs::open(
        files,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err("open", files, e))?;
    let open = |name: &[u8]| -> std::io::Result<std::fs::File> {
        use std::os::unix::ffi::OsStrExt as _;
        let mut name = name;
        while let Some(rest) = name.strip_prefix(b"/") {
            name = rest;
        }
        let fd = rustix::fs::openat2(
            &dir,
            std::ffi::OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )?;
        Ok(std::fs::File::from(fd))
    };
    let mut hashing = HashingWriter {
        inner: out,
        hash: sha2::Sha256::new(),
    };
    let written = plies_tarsplit::assemble(tar_split_entries(tar_split)?, open, &mut hashing)
        .map_err(|source| Error::TarSplit {
            chain_id: chain_id.to_owned(),
            source,
        })?;
    let found = format!("sha256:{}", hex(&hashing.hash.finalize()));
    if found != diff_id {
        return Err(Error::LayerDigest {
            chain_id: chain_id.to_owned(),
            expected: diff_id.to_owned(),
            found,
        });
    }
    Ok(written)
}

/// A writer that hashes what goes through it.
struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hash: sha2::Sha256,
}

impl Write for HashingWriter<'_> {
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

/// plies' own image store under a layer database's directory:
/// `images/content/<hex>` holds each imported config as read, and
/// `images/repositories.json` maps each name to an image id.
#[derive(Debug, Clone)]
pub(crate) struct OwnImages {
    dir: PathBuf,
}

impl OwnImages {
    pub(crate) fn new(db_dir: &Path) -> OwnImages {
        OwnImages {
            dir: db_dir.join("images"),
        }
    }

    fn content(&self) -> PathBuf {
        self.dir.join("content")
    }

    fn repositories(&self) -> PathBuf {
        self.dir.join("repositories.json")
    }

    fn names(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let path = self.repositories();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::BadDockerFile {
                path,
                reason: format!("does not parse: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(io_err("read", path, e)),
        }
    }

    /// Keeps `config` (durably) and points `tags` at it, taking them from any
    /// image that had them; returns the image's id.
    pub(crate) fn add(&self, config: &[u8], tags: &[String]) -> Result<String> {
        let id = digest(config);
        let content = self.content();
        std::fs::create_dir_all(&content).map_err(|e| io_err("mkdir", &content, e))?;
        write_atomic(&content.join(&id["sha256:".len()..]), config)?;
        if !tags.is_empty() {
            let mut names = self.names()?;
            for tag in tags {
                names.insert(tag.clone(), id.clone());
            }
            let bytes = serde_json::to_vec_pretty(&names).map_err(|e| Error::BadDockerFile {
                path: self.repositories(),
                reason: e.to_string(),
            })?;
            write_atomic(&self.repositories(), &bytes)?;
        }
        Ok(id)
    }

    pub(crate) fn list(&self) -> Result<Vec<Image>> {
        let content = self.content();
        let entries = match std::fs::read_dir(&content) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", content, e)),
        };
        let names = self.names()?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("read", &content, e))?;
            let Some(hex) = entry
                .file_name()
                .to_str()
                .filter(|n| is_hex64(n))
                .map(str::to_owned)
            else {
                continue;
            };
            let path = content.join(&hex);
            let config = std::fs::read(&path).map_err(|e| io_err("read", &path, e))?;
            let id = format!("sha256:{hex}");
            let tags = names
                .iter()
                .filter(|(_, to)| **to == id)
                .map(|(tag, _)| tag.clone())
                .collect();
            out.push(image_of_config(&path, &config, tags)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub(crate) fn config(&self, id: &str) -> Result<Vec<u8>> {
        let hex = id.strip_prefix("sha256:").filter(|h| is_hex64(h));
        let Some(hex) = hex else {
            return Err(Error::NoSuchImage {
                name: id.to_owned(),
            });
        };
        let path = self.content().join(hex);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NoSuchImage {
                name: id.to_owned(),
            }),
            Err(e) => Err(io_err("read", path, e)),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file, synced, then renamed;
/// the directory is synced after.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("write", path, e));
    }
    Ok(())
}
