//! Checking the records against the driver's store, and both against the
//! mount table.

use std::collections::BTreeSet;
use std::path::Path;

use plies_layerstore::Repair;

use crate::error::{Result, io_err, store_err};
use crate::{LayerDb, Record};

/// Which part of a root a [`Finding`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Area {
    /// The driver's own layout.
    Store,
    /// The layer records.
    Records,
}

impl Area {
    /// `store` or `records`.
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Store => "store",
            Area::Records => "records",
        }
    }
}

/// One thing [`LayerDb::fsck`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// Where.
    pub area: Area,
    /// What, in words.
    pub text: String,
    /// What was done about it.
    pub outcome: Repair,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match self.outcome {
            Repair::Repaired => "repaired",
            Repair::Repairable => "repairable",
            _ => "unrepairable",
        };
        write!(f, "{outcome}: {}: {}", self.area.as_str(), self.text)
    }
}

impl LayerDb {
    /// Checks the driver's layout ([`Driver::fsck`](plies_drivers::Driver::fsck)),
    /// the records against the layers, and the mounts of recorded layers; with
    /// `repair`, fixes what is safe: removes layers left incomplete, drops
    /// records of layers that are gone, detaches mounts a killed
    /// [`LayerDb::mount`] left unrecorded. Open with [`Access::Inspect`] to
    /// check, [`Access::Check`] to repair, so that no writer is in the middle of
    /// its work meanwhile.
    ///
    /// [`Access::Inspect`]: crate::Access::Inspect
    /// [`Access::Check`]: crate::Access::Check
    ///
    /// # Errors
    /// What stopped the check itself (an unreadable directory, a failed repair
    /// of the store).
    pub fn fsck(&self, repair: bool) -> Result<Vec<Finding>> {
        let mut findings = Vec::new();
        if repair {
            // Temporary record files of writes a killed process left: nobody
            // reads them (their names start with `.`), so only a repair goes there.
            self.records.sweep_temporaries();
        }
        let report = self
            .driver
            .fsck(repair)
            .map_err(store_err(self.driver.name()))?;
        for e in report.entries {
            findings.push(Finding {
                area: Area::Store,
                text: e.finding.to_string(),
                outcome: e.outcome,
            });
        }
        let on_disk: BTreeSet<String> = self
            .driver
            .list()
            .map_err(store_err(self.driver.name()))?
            .into_iter()
            .collect();
        let records = self.records()?;
        self.check_records(&records, &on_disk, repair, &mut findings);
        self.check_mounts(&records, repair, &mut findings)?;
        Ok(findings)
    }

    fn check_records(
        &self,
        records: &[Record],
        on_disk: &BTreeSet<String>,
        repair: bool,
        findings: &mut Vec<Finding>,
    ) {
        let outcome = |fixed: bool| {
            if fixed {
                Repair::Repaired
            } else {
                Repair::Repairable
            }
        };
        let known: BTreeSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        for r in records {
            if !r.complete {
                let fixed = repair && self.remove_layer(&r.id).is_ok();
                findings.push(Finding {
                    area: Area::Records,
                    text: format!(
                        "layer {} is incomplete (an import or apply was interrupted)",
                        r.id
                    ),
                    outcome: outcome(fixed),
                });
            } else if !self.driver.exists(&r.id) {
                let fixed = repair && self.delete_record(&r.id).is_ok();
                findings.push(Finding {
                    area: Area::Records,
                    text: format!(
                        "layer {} is recorded but missing from the {} store",
                        r.id,
                        self.driver.name()
                    ),
                    outcome: outcome(fixed),
                });
            } else if let Some(p) = &r.parent {
                if !known.contains(p.as_str()) {
                    findings.push(Finding {
                        area: Area::Records,
                        text: format!("layer {}: its parent {p} is not recorded", r.id),
                        outcome: Repair::Unrepairable,
                    });
                }
            }
        }
        // A root plies holds no record on is another front end's (dockerd's
        // through `plies serve docker`): its layers' lineage is the store's.
        let unrecorded = records.is_empty();
        for id in on_disk
            .iter()
            .filter(|id| !unrecorded && !known.contains(id.as_str()))
        {
            findings.push(Finding {
                area: Area::Records,
                text: format!(
                    "layer {id} is in the {} store but has no record",
                    self.driver.name()
                ),
                outcome: Repair::Unrepairable,
            });
        }
    }

    /// Mounts of recorded layers that no [`LayerDb::mount`] recorded: one was
    /// killed between its mount and its record. Mounts of layers without a
    /// record (another front end's) are left alone.
    fn check_mounts(
        &self,
        records: &[Record],
        repair: bool,
        findings: &mut Vec<Finding>,
    ) -> Result<()> {
        let home = self.driver.root();
        let mounts =
            plies_kprobe::mount_points().map_err(|e| io_err("read", "/proc/self/mountinfo", e))?;
        for m in mounts.iter().filter(|m| m.starts_with(home)) {
            let Some(id) = layer_of_mount(self.driver.name(), home, m) else {
                continue;
            };
            let unrecorded = records
                .iter()
                .any(|r| r.id == id && r.complete && r.mounted.is_none());
            if unrecorded {
                let fixed = repair && self.driver.detach(&id).is_ok();
                findings.push(Finding {
                    area: Area::Records,
                    text: format!(
                        "layer {id} is mounted at {} but no plies mount recorded it (one was interrupted)",
                        m.display()
                    ),
                    outcome: if fixed {
                        Repair::Repaired
                    } else {
                        Repair::Repairable
                    },
                });
            }
        }
        Ok(())
    }
}

/// The layer a mount point under a driver's home belongs to: `<home>/<id>/…`
/// for overlay2, `<home>/mnt/<id>` for aufs.
fn layer_of_mount(driver: &str, home: &Path, mount: &Path) -> Option<String> {
    let rel = mount.strip_prefix(home).ok()?;
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    let id = match (driver, parts.next()) {
        ("aufs", Some(first)) if first == "mnt" => parts.next(),
        ("aufs", _) => None,
        (_, first) => first,
    };
    id.map(|s| s.into_owned())
}
