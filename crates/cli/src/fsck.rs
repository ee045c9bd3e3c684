//! `plies fsck`: the layer database's check of the driver's layout, the records
//! and the mounts.

use anyhow::Result;
use plies_layerstore::Repair;
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

fn outcome(o: Repair) -> &'static str {
    match o {
        Repair::Repaired => "repaired",
        Repair::Repairable => "repairable",
        _ => "unrepairable",
    }
}

/// Checks (and with `repair`, repairs) the store; returns whether damage remains.
pub fn run(store: &Store, repair: bool, out: &Out) -> Result<bool> {
    let findings: Vec<Finding> = store
        .fsck(repair)?
        .into_iter()
        .map(|f| Finding {
            area: f.area.as_str(),
            finding: f.text,
            outcome: outcome(f.outcome),
        })
        .collect();
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
