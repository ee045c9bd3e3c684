//! `plies fsck`: the layer store's checker, plus a check of plies's own records.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use plies_layerstore::{AufsStore, Outcome, Overlay2Store, StoreOptions};
use serde::Serialize;

use crate::output::Out;
use crate::store::Store;

/// One finding, as printed.
#[derive(Debug, Serialize)]
pub struct Finding {
    /// `store` (the driver's layout) or `records` (plies's layer records).
    pub area: &'static str,
    /// What was found.
    pub finding: String,
    /// `repaired`, `repairable` or `unrepairable`.
    pub outcome: &'static str,
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Repaired => "repaired",
        Outcome::Repairable => "repairable",
        _ => "unrepairable",
    }
}

/// Checks (and with `repair`, repairs) the store; returns whether damage remains.
pub fn run(store: &Store, repair: bool, out: &Out) -> Result<bool> {
    let mut findings = Vec::new();
    let driver_dir = store.root.join(store.driver.name());

    // The driver's own layout.
    let opts = StoreOptions {
        max_depth: store.options.max_depth,
        ..StoreOptions::default()
    };
    let layout = match store.driver.name() {
        "overlay2" => {
            let layout = Overlay2Store::open(&driver_dir, opts)
                .with_context(|| format!("opening {}", driver_dir.display()))?;
            let report = layout
                .fsck(repair)
                .with_context(|| format!("checking {}", driver_dir.display()))?;
            Some((report, layout.list()?))
        }
        "aufs" => {
            let layout = AufsStore::open(&driver_dir, opts)
                .with_context(|| format!("opening {}", driver_dir.display()))?;
            let report = layout
                .fsck(repair)
                .with_context(|| format!("checking {}", driver_dir.display()))?;
            Some((report, layout.list()?))
        }
        _ => None,
    };
    let on_disk: BTreeSet<String> = match layout {
        Some((report, list)) => {
            for e in report.entries {
                findings.push(Finding {
                    area: "store",
                    finding: e.finding.to_string(),
                    outcome: outcome(e.outcome),
                });
            }
            list.into_iter().collect()
        }
        None => {
            // vfs: a directory per layer under `dir/`; what an interrupted
            // operation left carries a reserved suffix and is no layer.
            let dir = driver_dir.join("dir");
            let mut ids = BTreeSet::new();
            for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if plies_layerstore::validate_id(&name).is_ok() {
                    ids.insert(name);
                }
            }
            ids
        }
    };

    // plies's records against the driver's layers.
    let records = store.records()?;
    let known: BTreeSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    for r in &records {
        if !r.complete {
            let fixed = repair && store.remove_layer(&r.id).is_ok();
            findings.push(Finding {
                area: "records",
                finding: format!(
                    "layer {} is incomplete (an import or apply was interrupted)",
                    r.id
                ),
                outcome: if fixed { "repaired" } else { "repairable" },
            });
        } else if !store.driver.exists(&r.id) {
            let fixed = repair && store.delete_record(&r.id).is_ok();
            findings.push(Finding {
                area: "records",
                finding: format!(
                    "layer {} is recorded but missing from the {} store",
                    r.id,
                    store.driver.name()
                ),
                outcome: if fixed { "repaired" } else { "repairable" },
            });
        } else if let Some(p) = &r.parent {
            if !known.contains(p.as_str()) {
                findings.push(Finding {
                    area: "records",
                    finding: format!("layer {}: its parent {p} is not recorded", r.id),
                    outcome: "unrepairable",
                });
            }
        }
    }
    {
        for id in on_disk.iter().filter(|id| !known.contains(id.as_str())) {
            findings.push(Finding {
                area: "records",
                finding: format!(
                    "layer {id} is in the {} store but has no record",
                    store.driver.name()
                ),
                outcome: "unrepairable",
            });
        }
    }

    // Mounts of recorded layers that no `plies mount` recorded: one was killed
    // between its mount and its record. Mounts of layers plies has no record of
    // (another front end's) are left alone.
    let mount_points = plies_kprobe::mount_points().context("reading the mount table")?;
    let home = store.driver.root().to_path_buf();
    for m in mount_points.iter().filter(|m| m.starts_with(&home)) {
        let Ok(rel) = m.strip_prefix(&home) else {
            continue;
        };
        let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
        let id = match (store.driver.name(), parts.next()) {
            ("aufs", Some(first)) if first == "mnt" => parts.next(),
            ("aufs", _) => None,
            (_, first) => first,
        };
        let Some(id) = id else { continue };
        let unrecorded = records
            .iter()
            .any(|r| r.id == id && r.complete && r.mounted.is_none());
        if unrecorded {
            let fixed = repair && store.driver.detach(&id).is_ok();
            findings.push(Finding {
                area: "records",
                finding: format!(
                    "layer {id} is mounted at {} but no plies mount recorded it (one was interrupted)",
                    m.display()
                ),
                outcome: if fixed { "repaired" } else { "repairable" },
            });
        }
    }

    let damaged = findings.iter().any(|f| f.outcome != "repaired");
    if out.json {
        out.json(&findings)?;
    } else {
        for f in &findings {
            out.line(format!("{}: {}: {}", f.outcome, f.area, f.finding))?;
        }
        if findings.is_empty() {
            out.note("clean")?;
        }
    }
    Ok(damaged)
}
