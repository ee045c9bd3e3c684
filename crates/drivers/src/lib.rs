#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod aufs;
mod copy;
mod driver;
mod error;
mod idmap;
mod locks;
mod mounts;
pub mod naive;
mod native;
mod options;
mod overlay2;
mod quota;
mod refs;
mod vfs;

use std::path::Path;

pub use aufs::{
    Aufs, DEFAULT_BRANCH_MAX as AUFS_DEFAULT_BRANCH_MAX, KernelMounter, Mounter, Recorded,
    RecordingMounter,
};
pub use driver::Driver;
pub use error::{Error, Result};
pub use idmap::IdMaps;
pub use options::{CreateOptions, DriverChoice, Options};
pub use overlay2::{Overlay2, forget_probes};
pub use plies_archive::IdMap;
pub use vfs::Vfs;

/// Drivers `auto` tries, in order.
const PRIORITY: [DriverChoice; 3] = [
    DriverChoice::Overlay2,
    DriverChoice::Aufs,
    DriverChoice::Vfs,
];

/// Opens the driver `choice` under the graph root `root` (Docker's
/// `/var/lib/docker`): the driver keeps its layers in `root/<name>`
/// (`root/overlay2`, `root/aufs`, `root/vfs`).
///
/// [`DriverChoice::Auto`] opens the driver whose directory already holds data,
/// as Docker does, else the first of overlay2, aufs and vfs that this kernel and
/// the backing filesystem support.
///
/// # Errors
/// [`Error::NotSupported`], [`Error::IncompatibleFs`] or
/// [`Error::PrerequisitesMissing`] with the probe's reason for an explicit choice
/// the system cannot run; [`Error::MultiplePriorDrivers`] when `auto` finds data
/// of several drivers; the chosen driver's own errors (bad options, an unreadable store).
pub fn open(root: &Path, choice: DriverChoice, options: &Options) -> Result<Box<dyn Driver>> {
    if !options.read_only {
        std::fs::create_dir_all(root).map_err(|e| Error::io("mkdir", root, e))?;
    }
    match choice {
        DriverChoice::Overlay2 => Ok(Box::new(Overlay2::open(&root.join("overlay2"), options)?)),
        DriverChoice::Aufs => Ok(Box::new(Aufs::open(&root.join("aufs"), options)?)),
        DriverChoice::Vfs => Ok(Box::new(Vfs::open(&root.join("vfs"), options)?)),
        DriverChoice::Auto => {
            let prior: Vec<DriverChoice> = PRIORITY
                .into_iter()
                .filter(|c| has_data(&root.join(c.as_str())))
                .collect();
            match prior.as_slice() {
                [one] => return open(root, *one, options),
                [] => {}
                many => {
                    return Err(Error::MultiplePriorDrivers {
                        root: root.to_path_buf(),
                        drivers: many.iter().map(|c| c.as_str()).collect(),
                    });
                }
            }
            let mut last = None;
            for candidate in PRIORITY {
                match open(root, candidate, options) {
                    Ok(d) => return Ok(d),
                    Err(
                        e @ (Error::NotSupported { .. }
                        | Error::IncompatibleFs { .. }
                        | Error::PrerequisitesMissing { .. }),
                    ) => {
                        tracing::info!(driver = candidate.as_str(), error = %e, "driver skipped");
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or(Error::NotSupported {
                driver: "auto",
                reason: "no driver can run here".to_owned(),
            }))
        }
    }
}

/// Whether `dir` is a directory with anything in it besides the store's own
/// directory (probe answers, locks).
fn has_data(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name() != plies_layerstore::STORE_DIR)
    })
}

/// `path` if it exists, else its nearest existing ancestor: where to probe the
/// filesystem a driver home will live on before making it (as Docker does).
fn existing_ancestor(path: &Path) -> std::path::PathBuf {
    path.ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}
