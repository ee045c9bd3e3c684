//! `plies demo`: the whole path on a small built-in image, in a temporary root.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use plies_drivers::{DriverChoice, Options};

use crate::commands::letter;
use crate::digest::Digest;
use crate::image::Platform;
use crate::output::Out;
use crate::store::{Access, Store};

/// An entry of a demo layer.
pub enum Entry {
    /// A directory.
    Dir(&'static str),
    /// A file with its mode and contents.
    File(&'static str, u32, &'static [u8]),
    /// A file with a `user.` extended attribute.
    FileWithXattr(&'static str, &'static [u8], &'static str, &'static [u8]),
    /// A hard link to an earlier entry.
    HardLink(&'static str, &'static str),
    /// A symlink and its target.
    Symlink(&'static str, &'static str),
}

/// The three layers of the demo image.
pub fn layers() -> [Vec<Entry>; 3] {
    use Entry::*;
    [
        vec![
            Dir("etc"),
            File("etc/hostname", 0o644, b"base\n"),
            File("etc/motd", 0o644, b"Welcome to the base layer.\n"),
            Dir("bin"),
            File("bin/hello", 0o755, b"#!/bin/sh\necho hello\n"),
            HardLink("bin/hi", "bin/hello"),
            Dir("data"),
            File("data/a.txt", 0o644, b"a\n"),
            File("data/b.txt", 0o644, b"b\n"),
            Dir("opt"),
            Dir("opt/app"),
            File("opt/app/config", 0o644, b"version=1\n"),
            File("opt/app/legacy.conf", 0o644, b"old=yes\n"),
        ],
        vec![
            Dir("etc"),
            File("etc/.wh.motd", 0o644, b""),
            Dir("usr"),
            Dir("usr/bin"),
            Symlink("usr/bin/hello", "../../bin/hello"),
            Dir("data"),
            FileWithXattr(
                "data/tagged.txt",
                b"tagged\n",
                "user.plies.demo",
                b"layer 2",
            ),
        ],
        vec![
            Dir("etc"),
            File("etc/hostname", 0o644, b"demo\n"),
            Dir("opt"),
            Dir("opt/app"),
            File("opt/app/.wh..wh..opq", 0o644, b""),
            File("opt/app/config", 0o644, b"version=2\n"),
            Dir("data"),
            File("data/.wh.b.txt", 0o644, b""),
            File("data/c.txt", 0o644, b"c\n"),
        ],
    ]
}

/// Builds a layer tar in memory, every entry with modification time `mtime`.
pub fn layer_tar(entries: &[Entry], mtime: u64) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        match e {
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{p}/"), &[][..])?;
            }
            Entry::File(p, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data)?;
            }
            Entry::FileWithXattr(p, data, key, value) => {
                let mut pax = Vec::new();
                let field = format!("SCHILY.xattr.{key}");
                let value = std::str::from_utf8(value)?;
                let len = field.len() + value.len() + 3;
                // A PAX record's length counts its own digits.
                let mut total = len + len.to_string().len();
                if total.to_string().len() != len.to_string().len() {
                    total += 1;
                }
                writeln!(pax, "{total} {field}={value}")?;
                let mut ph = tar::Header::new_ustar();
                ph.set_entry_type(tar::EntryType::XHeader);
                ph.set_size(pax.len() as u64);
                ph.set_mode(0o644);
                b.append_data(&mut ph, "PaxHeader", &pax[..])?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data)?;
            }
            Entry::HardLink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_link(&mut h, p, target)?;
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// Writes a `docker save` archive of the demo image to `path`: the first layer
/// gzip-compressed, the second zstd, the third plain.
pub fn write_image(path: &Path) -> Result<()> {
    let mut diff_ids = Vec::new();
    let mut blobs = Vec::new();
    for (i, entries) in layers().iter().enumerate() {
        // A day apart, so changes show files rewritten at the same size.
        let tar = layer_tar(entries, 1_700_000_000 + 86_400 * i as u64)?;
        diff_ids.push(Digest::of(&tar).to_string());
        blobs.push(match i {
            0 => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar)?;
                e.finish()?
            }
            1 => zstd::encode_all(&tar[..], 3)?,
            _ => tar,
        });
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    }))?;
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let layer_names: Vec<String> = diff_ids
        .iter()
        .map(|d| format!("{}/layer.tar", &d["sha256:".len()..]))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["plies/demo:latest"],
        "Layers": layer_names,
    }]))?;
    let mut b = tar::Builder::new(File::create(path)?);
    let mut add = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data)
    };
    // Layers first, manifest last, as `docker save` writes them.
    for (name, blob) in layer_names.iter().zip(&blobs) {
        add(name, blob)?;
    }
    add(&config_name, &config)?;
    add("manifest.json", &manifest)?;
    b.into_inner()?.sync_all()?;
    Ok(())
}

/// Runs the demo.
pub fn run(out: &Out, interrupted: &Arc<AtomicBool>) -> Result<()> {
    let scratch = tempfile::Builder::new().prefix("plies-demo-").tempdir()?;
    let image = scratch.path().join("demo-image.tar");
    let root = scratch.path().join("root");
    write_image(&image)?;
    let store = Store::open_with(&root, DriverChoice::Auto, Options::default(), Access::Write)?;
    out.line(format!(
        "$ plies --root {} import demo-image.tar",
        root.display()
    ))?;
    out.line(format!(
        "driver: {} (the best this machine allows here)",
        store.driver().name()
    ))?;
    let imported = crate::import::import(
        &store,
        &image,
        &Platform::parse("linux/amd64")?,
        false,
        interrupted,
    )?;
    let image = &imported[0];
    for (i, l) in image.layers.iter().enumerate() {
        out.line(format!("layer {}: {}", i + 1, l.id))?;
    }
    let top = image.top.clone();

    let shown = (|| -> Result<()> {
        let merged = store.driver().get(&top, None)?;
        out.line(format!("\n$ plies mount {top}\n{}", merged.display()))?;
        out.line("\nmerged tree of the top layer:")?;
        print_tree(out, &merged, &merged)?;
        out.line(format!("\n$ plies changes {top}"))?;
        for c in store.driver().changes(&top, Some(&image.layers[1].id))? {
            out.line(format!("{} {}", letter(c.kind), c.path.display()))?;
        }
        out.line(format!("\n$ plies diff {top} | tar -tv"))?;
        let mut diff = store.driver().diff(&top, Some(&image.layers[1].id))?;
        let mut bytes = Vec::new();
        diff.read_to_end(&mut bytes)?;
        let mut archive = tar::Archive::new(&bytes[..]);
        for entry in archive.entries()? {
            let entry = entry?;
            let path = entry.path()?.display().to_string();
            let mark = if path
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(".wh."))
            {
                "   <- whiteout"
            } else {
                ""
            };
            out.line(format!(
                "{:>10}  {path}{mark}",
                entry.header().entry_size()?
            ))?;
        }
        out.line(format!("\n$ plies umount {top}"))?;
        Ok(())
    })();
    let put = store.driver().put(&top);
    shown?;
    put?;
    for l in image.layers.iter().rev() {
        store.remove_layer(&l.id)?;
    }
    store.driver().cleanup()?;
    drop(store);
    let path = scratch.path().display().to_string();
    scratch
        .close()
        .with_context(|| format!("removing {path}"))?;
    out.line(format!("removed {path}"))
}

fn print_tree(out: &Out, top: &Path, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path
            .strip_prefix(top)
            .unwrap_or(&path)
            .display()
            .to_string();
        let mut line = format!("{:o}  /{rel}", meta.mode() & 0o7777);
        if meta.is_dir() {
            line.push('/');
        } else if meta.file_type().is_symlink() {
            line.push_str(&format!(" -> {}", std::fs::read_link(&path)?.display()));
        } else {
            line.push_str(&format!("  ({} bytes", meta.len()));
            if meta.nlink() > 1 {
                line.push_str(&format!(", {} links", meta.nlink()));
            }
            if let Ok(Some(v)) = xattr::get(&path, "user.plies.demo") {
                line.push_str(&format!(
                    ", user.plies.demo={}",
                    String::from_utf8_lossy(&v)
                ));
            }
            line.push(')');
        }
        out.line(line)?;
        if meta.is_dir() {
            print_tree(out, top, &path)?;
        }
    }
    Ok(())
}
