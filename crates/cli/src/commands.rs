//! The commands that work on layers of a store.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use plies_archive::changes::{Change, ChangeKind};
use plies_drivers::CreateOptions;
use serde::Serialize;

use crate::output::{Failure, Out};
use plies_layerdb::LayerDb;

use crate::store::{Record, Store};

/// `plies status`.
pub fn status(store: &Store, out: &Out) -> Result<()> {
    let records = store.records()?;
    let layers = records.iter().filter(|r| r.complete).count();
    let incomplete = records.len() - layers;
    let mounted = records.iter().filter(|r| r.mounted.is_some()).count();
    let mut rows = vec![
        (
            "Storage Driver".to_owned(),
            store.driver().name().to_owned(),
        ),
        ("Root".to_owned(), store.root().display().to_string()),
    ];
    rows.extend(store.driver().status());
    rows.push(("Layers".to_owned(), layers.to_string()));
    rows.push(("Mounted Layers".to_owned(), mounted.to_string()));
    if incomplete > 0 {
        rows.push(("Incomplete Layers".to_owned(), incomplete.to_string()));
    }
    if out.json {
        let map: BTreeMap<_, _> = rows.into_iter().collect();
        return out.json(&map);
    }
    out.table(&rows)
}

/// `plies create`.
pub fn create(
    store: &Store,
    id: &str,
    parent: Option<&str>,
    rw: bool,
    size: Option<&str>,
    out: &Out,
) -> Result<()> {
    let mut opts = CreateOptions::default();
    if let Some(size) = size {
        opts.storage_opt.insert("size".to_owned(), size.to_owned());
    }
    store.create(id, parent, rw, &opts)?;
    out.line(id)
}

/// `plies rm`: every id is checked before any is removed.
pub fn rm(store: &Store, ids: &[String], out: &Out) -> Result<()> {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    for id in store.remove(&ids)? {
        out.line(id)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct LsRow<'a> {
    id: &'a str,
    parent: Option<&'a str>,
    depth: usize,
    size: u64,
    rw: bool,
    mounted: Option<&'a Path>,
}

/// A digest id as `docker` shows it: 12 hex digits without `sha256:` (any
/// unique prefix names the layer on the command line). Other ids as they are.
pub fn short(id: &str) -> &str {
    match id.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 => &hex[..12],
        _ => id,
    }
}

/// `plies ls` (`-q` and `--json` give full ids).
pub fn ls(store: &Store, out: &Out) -> Result<()> {
    let records: BTreeMap<String, Record> = store
        .lineage()?
        .into_iter()
        .filter(|r| r.complete)
        .map(|r| (r.id.clone(), r))
        .collect();
    let rows: Vec<LsRow<'_>> = records
        .values()
        .map(|r| LsRow {
            id: &r.id,
            parent: r.parent.as_deref(),
            depth: LayerDb::depth(&records, &r.id),
            size: r.size,
            rw: r.rw,
            mounted: r.mounted.as_deref(),
        })
        .collect();
    if out.json {
        return out.json(&rows);
    }
    if out.quiet {
        for r in &rows {
            out.line(r.id)?;
        }
        return Ok(());
    }
    let width = rows
        .iter()
        .map(|r| short(r.id).len())
        .max()
        .unwrap_or(2)
        .max(2);
    let pwidth = rows
        .iter()
        .map(|r| r.parent.map_or(1, |p| short(p).len()))
        .max()
        .unwrap_or(6)
        .max(6);
    out.line(format!(
        "{:<width$}  {:<pwidth$}  {:>5}  {:>10}  MOUNTED",
        "ID", "PARENT", "DEPTH", "SIZE"
    ))?;
    for r in rows {
        out.line(format!(
            "{:<width$}  {:<pwidth$}  {:>5}  {:>10}  {}",
            short(r.id),
            r.parent.map_or("-", short),
            r.depth,
            r.size,
            r.mounted
                .map_or_else(|| "-".to_owned(), |p| p.display().to_string())
        ))?;
    }
    Ok(())
}

/// `plies apply`: a failed or killed apply leaves the layer as it was (the
/// driver applies to a copy that replaces the layer only on success).
pub fn apply(store: &Store, id: &str, file: &str, out: &Out) -> Result<()> {
    let id = store.layer(id)?.id;
    let input: Box<dyn Read + Send> = if file == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(file).with_context(|| file.to_owned())?)
    };
    let (_, mut tar) =
        crate::compression::decompress(input).with_context(|| format!("layer {id}: {file}"))?;
    let n = store
        .apply(&id, &mut tar)
        .with_context(|| format!("applying {file} (the layer is as it was)"))?;
    out.note(format!("{id}: applied {n} bytes"))
}

/// `plies diff`.
pub fn diff(
    store: &Store,
    id: &str,
    parent: Option<&str>,
    output: Option<&Path>,
) -> Result<(), Failure> {
    let record = store.layer(id)?;
    let parent = match parent {
        Some(p) => Some(store.layer(p)?.id),
        None => record.parent,
    };
    write_diff(store.driver(), &record.id, parent.as_deref(), output)
}

/// Writes the diff of layer `id` against `parent` to `output` (a file, fsynced
/// and removed again on failure) or standard output (never a terminal).
pub fn write_diff(
    driver: &dyn plies_drivers::Driver,
    id: &str,
    parent: Option<&str>,
    output: Option<&Path>,
) -> Result<(), Failure> {
    if output.is_none() && io::stdout().is_terminal() {
        return Err(Failure::usage(
            "refusing to write a layer tar to a terminal: redirect it or use -o FILE",
        ));
    }
    let mut tar = driver.diff(id, parent)?;
    match output {
        None => {
            // Stdout is line-buffered; a tar has no lines worth flushing at.
            let mut stdout = io::BufWriter::with_capacity(1 << 20, io::stdout().lock());
            io::copy(&mut tar, &mut stdout)
                .with_context(|| format!("layer {id}: writing the diff"))?;
            stdout.flush()?;
        }
        Some(path) => {
            let written = (|| -> Result<()> {
                let mut f = File::create(path).with_context(|| format!("{}", path.display()))?;
                io::copy(&mut tar, &mut f)
                    .with_context(|| format!("layer {id}: writing {}", path.display()))?;
                f.sync_all()?;
                Ok(())
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(path);
            }
            written?;
        }
    }
    Ok(())
}

/// The letter `docker diff` shows for a change.
pub fn letter(kind: ChangeKind) -> char {
    match kind {
        ChangeKind::Added => 'A',
        ChangeKind::Modified => 'C',
        ChangeKind::Deleted => 'D',
    }
}

/// The changes of a layer against `parent` (default: its own parent).
pub fn layer_changes(store: &Store, id: &str, parent: Option<&str>) -> Result<Vec<Change>> {
    let record = store.layer(id)?;
    let id = &record.id.clone();
    let parent = match parent {
        Some(p) => Some(store.layer(p)?.id),
        None => record.parent,
    };
    Ok(store.driver().changes(id, parent.as_deref())?)
}

/// `plies changes`.
pub fn changes(store: &Store, id: &str, parent: Option<&str>, out: &Out) -> Result<()> {
    let changes = layer_changes(store, id, parent)?;
    if out.json {
        return out.json(&changes);
    }
    for c in changes {
        out.line(format!("{} {}", letter(c.kind), c.path.display()))?;
    }
    Ok(())
}

/// `plies size`.
pub fn size(store: &Store, id: &str, out: &Out) -> Result<()> {
    let record = store.layer(id)?;
    let id = &record.id.clone();
    let size = store.driver().diff_size(id, record.parent.as_deref())?;
    if out.json {
        #[derive(Serialize)]
        struct Size<'a> {
            id: &'a str,
            size: u64,
        }
        return out.json(&Size { id, size });
    }
    out.line(size)
}

/// `plies mount`: mounts once; a second `mount` prints the same path.
pub fn mount(store: &Store, id: &str, label: Option<&str>, out: &Out) -> Result<()> {
    let (_, path) = store.mount(id, label)?;
    out.line(path.display())
}

/// `plies umount`.
///
/// The mount outlives the `plies mount` process, and with it the driver's
/// in-memory reference count, so the mount `plies mount` recorded is undone here
/// by the driver's `detach`, under the layer's lock.
pub fn umount(store: &Store, id: &str, out: &Out) -> Result<()> {
    let (id, path) = store.unmount(id)?;
    out.note(format!("{id}: unmounted {}", path.display()))
}

/// `plies images`: the images of a Docker data root, or those `plies import`
/// kept; their names and top layers.
pub fn images(store: &dyn plies_layerdb::ImageStore, out: &Out) -> Result<()> {
    let images = store.images()?;
    if out.json {
        return out.json(&images);
    }
    if out.quiet {
        for i in &images {
            out.line(&i.id)?;
        }
        return Ok(());
    }
    out.line(format!(
        "{:<12}  {:>6}  {:<12}  {:<20}  NAMES",
        "IMAGE ID", "LAYERS", "TOP CHAIN", "CREATED"
    ))?;
    for i in &images {
        out.line(format!(
            "{:<12}  {:>6}  {:<12}  {:<20}  {}",
            short(&i.id),
            i.diff_ids.len(),
            i.chain_id.as_deref().map_or("-", short),
            i.created
                .as_deref()
                .map_or("-", |c| c.get(..19).unwrap_or(c)),
            if i.tags.is_empty() {
                "<none>".to_owned()
            } else {
                i.tags.join(", ")
            },
        ))?;
    }
    Ok(())
}
