//! [`Overlay2Store::fsck`]: the phases of the overlay2 check and their repairs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, renameat, symlinkat, unlinkat};
use rustix::io::Errno;

use crate::disk::{file_type, list_names, remove_tree, sync, utf8_name, write_new_file};
use crate::error::{Error, Result, io_err};
use crate::id::{APPLYING_SUFFIX, CREATING_SUFFIX, REMOVING_SUFFIX};
use crate::link::LinkId;
use crate::locks::STORE_DIR;
use crate::lower::{LowerError, format_lower};
use crate::overlay2::{LINK_DIR, Overlay2Store};

use super::scratch::{PROBE_SCRATCH_PREFIX, check_probe_scratch, remove_scratch};
use super::{Finding, FsckReport, Repair};

/// What the phases of [`Overlay2Store::fsck`] learn and hand on.
#[derive(Default)]
struct Scan {
    repair: bool,
    report: FsckReport,
    /// The live layers, sorted.
    layers: Vec<String>,
    /// Each valid link and the live layer it points at.
    links: BTreeMap<LinkId, String>,
    /// The links of each layer.
    by_layer: BTreeMap<String, Vec<LinkId>>,
    /// The link each layer's `link` file names (or was repaired to).
    canonical: BTreeMap<String, LinkId>,
    /// Layers whose old link id is lost: lowers naming it are found by shape.
    linkless: BTreeSet<String>,
    /// The links some `lower` names.
    referenced: BTreeSet<LinkId>,
}

impl Overlay2Store {
    /// Checks the whole store and, with `repair`, fixes what it safely can: see
    /// [`Finding`]. A layer's `diff` is never deleted.
    ///
    /// Other processes may work on the store meanwhile: what they hold the lock
    /// of (a create, a remove, an apply in progress) is skipped, neither reported
    /// nor repaired.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        if repair && self.opts.read_only {
            return Err(Error::ReadOnly {
                path: self.home.clone(),
            });
        }
        let mut s = Scan {
            repair,
            ..Scan::default()
        };
        self.check_leftovers(&mut s)?;
        check_probe_scratch(&self.home, &self.locks, repair, &mut s.report)?;
        s.layers = self.list()?;
        self.check_links(&mut s)?;
        self.check_layer_dirs(&mut s)?;
        self.check_lowers(&mut s)?;
        self.check_extra_links(&mut s)?;
        Ok(s.report)
    }

    /// `-creating` and `-removing` entries a dead owner left, and probe scratch
    /// in the home.
    fn check_leftovers(&self, s: &mut Scan) -> Result<()> {
        // Half-done operations.
        for (name, _) in list_names(&self.home_fd).map_err(|e| io_err("read", &self.home, e))? {
            let Some(name) = utf8_name(&name) else {
                s.report.push(
                    Finding::UnexpectedEntry {
                        path: PathBuf::from(String::from_utf8_lossy(&name).into_owned()),
                    },
                    Repair::Unrepairable,
                );
                continue;
            };
            if name == STORE_DIR {
                continue;
            }
            if name.starts_with(PROBE_SCRATCH_PREFIX) {
                // Scratch of a probe that ran in the home and was killed (older
                // versions probed there); the store's own probes run under `.plies`.
                s.report
                    .handle(Finding::Leftover { path: name.into() }, s.repair, || {
                        remove_scratch(&self.home_fd, &self.home, name)
                    })?;
                continue;
            }
            let id = name
                .strip_suffix(CREATING_SUFFIX)
                .or_else(|| name.strip_suffix(REMOVING_SUFFIX))
                .filter(|id| crate::validate_id(id).is_ok());
            if let Some(id) = id {
                // Work in progress holds its layer's lock and is no damage.
                let Some(_guard) = self.locks.try_lock(&[id])? else {
                    continue;
                };
                if file_type(&self.home_fd, name)
                    .map_err(|e| io_err("stat", self.home.join(name), e))?
                    .is_none()
                {
                    continue;
                }
                s.report
                    .handle(Finding::Leftover { path: name.into() }, s.repair, || {
                        self.drop_half_layer(name, id)
                    })?;
            }
        }

        Ok(())
    }

    /// The links: each must point at an existing layer's diff.
    fn check_links(&self, s: &mut Scan) -> Result<()> {
        let durable = self.opts.durable;
        let link_path = |l: &str| self.home.join(LINK_DIR).join(l);
        let live: BTreeSet<&str> = s.layers.iter().map(String::as_str).collect();
        // The s.links: each must point at an existing layer's diff.
        let names =
            list_names(&self.link_fd).map_err(|e| io_err("read", self.home.join(LINK_DIR), e))?;
        for (name, kind) in names {
            let link = utf8_name(&name).and_then(|n| LinkId::parse(n.as_bytes()).ok());
            let is_link = match kind {
                FileType::Symlink => true,
                FileType::Unknown => {
                    let n = String::from_utf8_lossy(&name).into_owned();
                    file_type(&self.link_fd, n.as_str())
                        .map_err(|e| io_err("stat", link_path(&n), e))?
                        == Some(FileType::Symlink)
                }
                _ => false,
            };
            let (Some(link), true) = (link, is_link) else {
                let name = String::from_utf8_lossy(&name).into_owned();
                s.report.push(
                    Finding::UnexpectedEntry {
                        path: PathBuf::from(LINK_DIR).join(name),
                    },
                    Repair::Unrepairable,
                );
                continue;
            };
            let unlink = || {
                match unlinkat(&self.link_fd, link.as_str(), AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(io_err("unlink", link_path(link.as_str()), e)),
                }
                sync(&self.link_fd, durable)
                    .map_err(|e| io_err("fsync", self.home.join(LINK_DIR), e))
            };
            match self.link_target(&link) {
                Ok(Some(layer)) if live.contains(layer.as_str()) => {
                    s.links.insert(link, layer);
                }
                Ok(Some(layer)) => {
                    // A create makes its link before the layer appears, and a
                    // remove deletes it after: both hold the layer's lock.
                    let Some(_guard) = self.locks.try_lock(&[layer.as_str()])? else {
                        continue;
                    };
                    if self.layer_exists(&layer)? {
                        continue;
                    }
                    let finding = Finding::DanglingLink {
                        link: link.as_str().to_owned(),
                        layer,
                    };
                    s.report.handle(finding, s.repair, unlink)?;
                }
                Ok(None) => {}
                Err(Error::BadLinkTarget { target, .. }) => {
                    let finding = Finding::BadLinkTarget {
                        link: link.as_str().to_owned(),
                        target,
                    };
                    s.report.handle(finding, s.repair, unlink)?;
                }
                Err(e) => return Err(e),
            }
        }
        for (link, layer) in &s.links {
            s.by_layer
                .entry(layer.clone())
                .or_default()
                .push(link.clone());
        }

        Ok(())
    }

    /// Each layer: its diff, its link file and its link; copies an interrupted
    /// apply left.
    fn check_layer_dirs(&self, s: &mut Scan) -> Result<()> {
        let durable = self.opts.durable;
        let link_path = |l: &str| self.home.join(LINK_DIR).join(l);
        // Each layer: diff, link file, link.
        // Layers whose old link id is lost: lowers naming it are found by shape.
        for layer in &s.layers {
            // A layer someone is working on is checked another time.
            let Some(_guard) = self.locks.try_lock(&[layer.as_str()])? else {
                continue;
            };
            let dir = match self.open_layer(layer) {
                Ok(d) => d,
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let has_diff = file_type(&dir, "diff")
                .map_err(|e| io_err("stat", self.diff_dir(layer), e))?
                == Some(FileType::Directory);
            // Copies an interrupted apply left (`diff-applying` and the work and
            // mount directories beside it).
            let entries = list_names(&dir).map_err(|e| io_err("read", self.layer_dir(layer), e))?;
            for (name, _) in entries {
                let Some(name) = utf8_name(&name).filter(|n| n.ends_with(APPLYING_SUFFIX)) else {
                    continue;
                };
                let path = PathBuf::from(layer).join(name);
                s.report.handle(Finding::Leftover { path }, s.repair, || {
                    remove_tree(&dir, name)
                        .map_err(|e| io_err("remove", self.layer_dir(layer).join(name), e))
                })?;
            }
            let has_link = file_type(&dir, "link")
                .map_err(|e| io_err("stat", self.layer_dir(layer).join("link"), e))?
                .is_some();
            if !has_diff && !has_link {
                // Neither a diff nor a link: no layer (`lost+found`, a stranger's
                // directory). Nothing is written into it.
                s.report.push(
                    Finding::UnexpectedEntry {
                        path: PathBuf::from(layer),
                    },
                    Repair::Unrepairable,
                );
                continue;
            }
            if !has_diff {
                s.report.push(
                    Finding::MissingDiff {
                        layer: layer.clone(),
                    },
                    Repair::Unrepairable,
                );
            }
            match self.read_link_file(layer, &dir) {
                Ok(link) => match s.links.get(&link) {
                    Some(owner) if owner == layer => {
                        s.canonical.insert(layer.clone(), link);
                    }
                    Some(owner) => s.report.push(
                        Finding::LinkConflict {
                            layer: layer.clone(),
                            link: link.as_str().to_owned(),
                            owner: owner.clone(),
                        },
                        Repair::Unrepairable,
                    ),
                    None => {
                        let finding = Finding::MissingLink {
                            layer: layer.clone(),
                            link: link.as_str().to_owned(),
                        };
                        s.report.handle(finding, s.repair, || {
                            symlinkat(
                                LinkId::target_for(layer).as_str(),
                                &self.link_fd,
                                link.as_str(),
                            )
                            .map_err(|e| io_err("symlink", link_path(link.as_str()), e))?;
                            sync(&self.link_fd, durable)
                                .map_err(|e| io_err("fsync", self.home.join(LINK_DIR), e))
                        })?;
                        if s.repair {
                            s.links.insert(link.clone(), layer.clone());
                            s.canonical.insert(layer.clone(), link);
                        }
                    }
                },
                Err(Error::BadLinkFile { .. }) | Err(Error::Io { .. }) => {
                    let existing = s.by_layer.get(layer).and_then(|l| l.first()).cloned();
                    if existing.is_none() {
                        s.linkless.insert(layer.clone());
                    }
                    if !s.repair {
                        s.report.push(
                            Finding::BadLinkFile {
                                layer: layer.clone(),
                                restored: None,
                            },
                            Repair::Repairable,
                        );
                        continue;
                    }
                    let link = match existing {
                        Some(link) => link,
                        None => self.new_link_for(layer)?,
                    };
                    let path = self.layer_dir(layer).join("link");
                    match unlinkat(&dir, "link", AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(io_err("unlink", &path, e)),
                    }
                    write_new_file(&dir, "link", link.as_str().as_bytes(), 0o644, durable)
                        .map_err(|e| io_err("write", &path, e))?;
                    sync(&dir, durable).map_err(|e| io_err("fsync", self.layer_dir(layer), e))?;
                    s.links.insert(link.clone(), layer.clone());
                    s.canonical.insert(layer.clone(), link.clone());
                    s.report.push(
                        Finding::BadLinkFile {
                            layer: layer.clone(),
                            restored: Some(link.as_str().to_owned()),
                        },
                        Repair::Repaired,
                    );
                }
                Err(e) => return Err(e),
            }
        }

        Ok(())
    }

    /// Each lower: well-formed, every entry a live layer, no loops, not too deep.
    fn check_lowers(&self, s: &mut Scan) -> Result<()> {
        // Each lower: well-formed, every entry a live layer, no loops, not too deep.
        let mut parents: BTreeMap<String, String> = BTreeMap::new();
        let linkless_lowers: Vec<(String, Vec<LinkId>)> = s
            .linkless
            .iter()
            .filter_map(|x| {
                let dir = self.open_layer(x).ok()?;
                Some((x.clone(), self.read_lower(x, &dir).ok()?))
            })
            .collect();
        for layer in &s.layers {
            let Ok(dir) = self.open_layer(layer) else {
                continue;
            };
            let lowers = match self.read_lower(layer, &dir) {
                Ok(l) => l,
                Err(Error::BadLower {
                    source: LowerError::TooMany { count, max },
                    ..
                }) => {
                    s.report.push(
                        Finding::TooDeep {
                            layer: layer.clone(),
                            depth: count,
                            max,
                        },
                        Repair::Unrepairable,
                    );
                    continue;
                }
                Err(Error::BadLower { source, .. }) => {
                    s.report.push(
                        Finding::BadLower {
                            layer: layer.clone(),
                            reason: source.to_string(),
                        },
                        Repair::Unrepairable,
                    );
                    continue;
                }
                Err(Error::Io { source, .. }) => {
                    s.report.push(
                        Finding::BadLower {
                            layer: layer.clone(),
                            reason: source.to_string(),
                        },
                        Repair::Unrepairable,
                    );
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut rewrite: BTreeMap<LinkId, LinkId> = BTreeMap::new();
            for (index, link) in lowers.iter().enumerate() {
                s.referenced.insert(link.clone());
                if !s.links.contains_key(link) {
                    // A lost link id: if exactly one layer without its old id has
                    // exactly the rest of this chain below it, the entry was its.
                    let rest = &lowers[index + 1..];
                    let mut owners = linkless_lowers
                        .iter()
                        .filter(|(x, l)| x != layer && l.as_slice() == rest);
                    if let (Some((owner, _)), None) = (owners.next(), owners.next()) {
                        let outcome = if s.repair {
                            if let Some(new) = s.canonical.get(owner) {
                                rewrite.insert(link.clone(), new.clone());
                            }
                            Repair::Repaired
                        } else {
                            Repair::Repairable
                        };
                        if index == 0 {
                            parents.insert(layer.clone(), owner.clone());
                        }
                        s.report.push(
                            Finding::StaleLowerEntry {
                                layer: layer.clone(),
                                entry: link.lower_entry(),
                                owner: owner.clone(),
                            },
                            outcome,
                        );
                        continue;
                    }
                }
                match s.links.get(link) {
                    Some(owner) if owner == layer => s.report.push(
                        Finding::Cycle {
                            layer: layer.clone(),
                        },
                        Repair::Unrepairable,
                    ),
                    Some(owner) => {
                        if index == 0 {
                            parents.insert(layer.clone(), owner.clone());
                        }
                    }
                    None if index == 0 => s.report.push(
                        Finding::ParentGone {
                            layer: layer.clone(),
                            entry: link.lower_entry(),
                        },
                        Repair::Unrepairable,
                    ),
                    None => s.report.push(
                        Finding::MissingLower {
                            layer: layer.clone(),
                            entry: link.lower_entry(),
                        },
                        Repair::Unrepairable,
                    ),
                }
            }
            if !rewrite.is_empty() {
                let new: Vec<LinkId> = lowers
                    .iter()
                    .map(|l| rewrite.get(l).unwrap_or(l).clone())
                    .collect();
                self.rewrite_lower(layer, &dir, &new)?;
            }
        }
        // Loops through parents (a layer naming itself was caught above).
        for layer in &s.layers {
            let mut seen = BTreeSet::new();
            let mut cur = layer;
            while let Some(p) = parents.get(cur) {
                if !seen.insert(p.clone()) || seen.len() > self.opts.max_depth + 1 {
                    if p == layer {
                        s.report.push(
                            Finding::Cycle {
                                layer: layer.clone(),
                            },
                            Repair::Unrepairable,
                        );
                    }
                    break;
                }
                cur = p;
            }
        }

        Ok(())
    }

    /// Second links to a layer that nothing uses.
    fn check_extra_links(&self, s: &mut Scan) -> Result<()> {
        let durable = self.opts.durable;
        let link_path = |l: &str| self.home.join(LINK_DIR).join(l);
        // Unused second s.links.
        for (layer, extra) in std::mem::take(&mut s.by_layer) {
            for link in extra {
                if s.canonical.get(&layer) == Some(&link) || s.referenced.contains(&link) {
                    continue;
                }
                let finding = Finding::ExtraLink {
                    layer: layer.clone(),
                    link: link.as_str().to_owned(),
                };
                s.report.handle(finding, s.repair, || {
                    match unlinkat(&self.link_fd, link.as_str(), AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(io_err("unlink", link_path(link.as_str()), e)),
                    }
                    sync(&self.link_fd, durable)
                        .map_err(|e| io_err("fsync", self.home.join(LINK_DIR), e))
                })?;
            }
        }
        Ok(())
    }

    /// Replaces a layer's `lower` file: written aside, then renamed over it.
    fn rewrite_lower(&self, layer: &str, dir: &OwnedFd, lowers: &[LinkId]) -> Result<()> {
        const TMP: &str = "lower.plies-new";
        let path = self.layer_dir(layer).join("lower");
        let _ = unlinkat(dir, TMP, AtFlags::empty());
        write_new_file(
            dir,
            TMP,
            format_lower(lowers).as_bytes(),
            0o644,
            self.opts.durable,
        )
        .map_err(|e| io_err("write", self.layer_dir(layer).join(TMP), e))?;
        renameat(dir, TMP, dir, "lower").map_err(|e| io_err("rename", &path, e))?;
        sync(dir, self.opts.durable).map_err(|e| io_err("fsync", self.layer_dir(layer), e))
    }

    /// Draws a fresh link id and makes `l/<link>` point at the layer.
    fn new_link_for(&self, layer: &str) -> Result<LinkId> {
        for _ in 0..32 {
            let link = LinkId::generate();
            match symlinkat(
                LinkId::target_for(layer).as_str(),
                &self.link_fd,
                link.as_str(),
            ) {
                Ok(()) => {
                    sync(&self.link_fd, self.opts.durable)
                        .map_err(|e| io_err("fsync", self.home.join(LINK_DIR), e))?;
                    return Ok(link);
                }
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    return Err(io_err(
                        "symlink",
                        self.home.join(LINK_DIR).join(link.as_str()),
                        e,
                    ));
                }
            }
        }
        Err(Error::LinkIdsExhausted {
            path: self.home.join(LINK_DIR),
            attempts: 32,
        })
    }
}
