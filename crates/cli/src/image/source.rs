//! Where an image's files are read from: a directory, or a tar file read in place.
//!
//! A `docker save` archive puts every layer before `manifest.json`, so a single pass
//! cannot know what a layer is before it has gone by. A tar file on disk is
//! seekable, so the first pass reads only the headers (skipping each entry's data
//! with a seek) and records where each member's bytes start; layers are then read
//! straight from the file, one at a time, in the order the manifest gives. Nothing
//! is spooled and no layer is ever held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// The largest JSON document (manifest, index, config) read into memory.
pub const MAX_JSON: u64 = 16 << 20;

/// How many symlink hops a member name may take inside an archive.
const MAX_LINK_HOPS: usize = 16;

/// One member of a tar archive, as the header pass found it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Where its data starts in the file.
    pub offset: u64,
    /// Its data's length.
    pub size: u64,
    /// The member it links to (symlink target resolved to an archive name, or a
    /// hard link's name), if it is a link.
    pub link: Option<String>,
}

/// A directory or a tar file holding an image.
#[derive(Debug)]
pub enum Source {
    /// An unpacked directory (OCI image layout, or an extracted `docker save`).
    Dir(PathBuf),
    /// A tar file, indexed by member name.
    Tar {
        /// The file.
        path: PathBuf,
        /// Its regular files and links by normalised name.
        members: HashMap<String, Member>,
    },
}

impl Source {
    /// Opens `path`: a directory as is, a file as a tar archive (indexing its headers).
    pub fn open(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let mut file = File::open(path).with_context(|| format!("{}", path.display()))?;
        let mut head = [0u8; 6];
        let n = read_up_to(&mut file, &mut head).with_context(|| format!("{}", path.display()))?;
        if let Ok(
            kind @ (crate::compression::Compression::Gzip | crate::compression::Compression::Zstd),
        ) = crate::compression::detect(&head[..n])
        {
            bail!(
                "{}: the archive is {kind}-compressed; decompress it first (the layers inside may be compressed)",
                path.display()
            );
        }
        file.seek(SeekFrom::Start(0))?;
        let members = index_tar(file)
            .with_context(|| format!("{}: not a readable tar archive", path.display()))?;
        Ok(Source::Tar {
            path: path.to_path_buf(),
            members,
        })
    }

    /// Whether the image has a file of this name.
    pub fn exists(&self, name: &str) -> bool {
        match self {
            // Not is_file(): a blob may be a pipe being written as it is imported.
            Source::Dir(dir) => safe_name(name)
                .is_some_and(|n| std::fs::metadata(dir.join(n)).is_ok_and(|m| !m.is_dir())),
            Source::Tar { members, .. } => resolve(members, name).is_ok(),
        }
    }

    /// The size of a member without opening it (0 for a pipe).
    pub fn size(&self, name: &str) -> Result<u64> {
        match self {
            Source::Dir(dir) => {
                let rel = safe_name(name)
                    .ok_or_else(|| anyhow!("{name:?} is not a path inside the image"))?;
                Ok(std::fs::metadata(dir.join(rel))
                    .with_context(|| format!("blob {name} is missing"))?
                    .len())
            }
            Source::Tar { members, .. } => Ok(resolve(members, name)?.size),
        }
    }

    /// Reads a small file (a JSON document) whole.
    pub fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let (mut r, size) = self.open_member(name)?;
        if size > MAX_JSON {
            bail!(
                "{name}: {size} bytes is larger than the {MAX_JSON} bytes allowed for a JSON document"
            );
        }
        let mut out = Vec::with_capacity(size as usize);
        r.read_to_end(&mut out)
            .with_context(|| format!("reading {name}"))?;
        Ok(out)
    }

    /// Opens a member for streaming, with its size.
    pub fn open_member(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        match self {
            Source::Dir(dir) => {
                let rel = safe_name(name)
                    .ok_or_else(|| anyhow!("{name:?} is not a path inside the image"))?;
                let path = dir.join(rel);
                let file = File::open(&path).with_context(|| format!("blob {name} is missing"))?;
                let size = file.metadata()?.len();
                Ok((Box::new(file), size))
            }
            Source::Tar { path, members } => {
                let member = resolve(members, name)?;
                let mut file = File::open(path).with_context(|| format!("{}", path.display()))?;
                file.seek(SeekFrom::Start(member.offset))?;
                Ok((Box::new(file.take(member.size)), member.size))
            }
        }
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A member name as a relative path with no `..`, or `None`.
fn safe_name(name: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// A name normalised to `a/b/c` (no `.`, no leading `/`), resolving `..` within
/// the archive; `None` when it climbs above the top.
fn normalise(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn index_tar(file: File) -> Result<HashMap<String, Member>> {
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let Some(key) = normalise(&name) else {
            continue;
        };
        let kind = entry.header().entry_type();
        let link = if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let joined = if kind.is_symlink() && !target.starts_with('/') {
                match key.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{target}"),
                    None => target,
                }
            } else {
                target
            };
            match normalise(&joined) {
                Some(t) => Some(t),
                None => continue,
            }
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            None
        } else {
            continue;
        };
        members.insert(
            key,
            Member {
                offset: entry.raw_file_position(),
                size: entry.size(),
                link,
            },
        );
    }
    Ok(members)
}

fn resolve<'a>(members: &'a HashMap<String, Member>, name: &str) -> Result<&'a Member> {
    let mut key =
        normalise(name).ok_or_else(|| anyhow!("{name:?} is not a path inside the image"))?;
    for _ in 0..MAX_LINK_HOPS {
        let member = members
            .get(&key)
            .ok_or_else(|| anyhow!("blob {name} is missing from the archive"))?;
        match &member.link {
            None => return Ok(member),
            Some(target) => key = target.clone(),
        }
    }
    bail!("{name}: more than {MAX_LINK_HOPS} links")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside() {
        assert_eq!(normalise("./a//b/"), Some("a/b".to_owned()));
        assert_eq!(normalise("a/../b"), Some("b".to_owned()));
        assert_eq!(normalise("../b"), None);
        assert_eq!(safe_name("../x"), None);
        assert_eq!(safe_name("/etc/passwd"), None);
        assert_eq!(
            safe_name("blobs/sha256/ab"),
            Some(PathBuf::from("blobs/sha256/ab"))
        );
    }

    #[test]
    fn tar_members_and_symlinks_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "one/layer.tar", &b"hello"[..])
            .unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "two/layer.tar", "../one/layer.tar")
            .unwrap();
        b.into_inner().unwrap();

        let src = Source::open(&path).unwrap();
        for name in ["one/layer.tar", "two/layer.tar", "./two/layer.tar"] {
            let (mut r, size) = src.open_member(name).unwrap();
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            assert_eq!((s.as_str(), size), ("hello", 5));
        }
        assert!(!src.exists("three"));
        assert!(src.open_member("../one/layer.tar").is_err());
    }

    #[test]
    fn not_a_tar_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, vec![b'x'; 2048]).unwrap();
        let err = Source::open(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a readable tar archive"),
            "{err:#}"
        );
    }
}
