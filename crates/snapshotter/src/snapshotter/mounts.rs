//! The mounts containerd is given for a snapshot.

use std::path::{Path, PathBuf};

use super::{Backend, Snapshotter};
use plies_drivers::Driver;

use crate::error::{Error, Result};
use crate::meta::{Entry, Kind};
use crate::proto::Mount;

impl Snapshotter {
    /// The directory holding the layer's own files.
    pub(super) fn own_dir(&self, layer: &str) -> PathBuf {
        match &self.backend {
            Backend::Overlay2(d) => d.root().join(layer).join("diff"),
            // Docker's vfs layout: `<home>/dir/<id>`, a full copy.
            Backend::Vfs(d) => d.root().join("dir").join(layer),
        }
    }

    /// The mounts of a snapshot, as containerd's own overlayfs snapshotter
    /// gives them.
    pub(super) fn mounts_of(&self, entry: &Entry) -> Result<Vec<Mount>> {
        let rw = if entry.kind == Kind::Active {
            "rw"
        } else {
            "ro"
        };
        let bind = |dir: &Path| {
            vec![Mount {
                r#type: "bind".to_owned(),
                source: dir.display().to_string(),
                target: String::new(),
                options: vec![rw.to_owned(), "rbind".to_owned()],
            }]
        };
        let d = match &self.backend {
            Backend::Vfs(_) => return Ok(bind(&self.own_dir(&entry.layer))),
            Backend::Overlay2(d) => d,
        };
        let home = d.root();
        // `<home>/l/<linkid>` entries: the shortest absolute form, and what
        // containerd's long-lowerdir compaction shortens further.
        let lowers: Vec<String> = d
            .store()
            .lower_entries(&entry.layer)
            .map_err(|source| Error::Store {
                layer: entry.layer.clone(),
                source: Box::new(source),
            })?
            .iter()
            .map(|l| escape(&home.join(l)))
            .collect();
        let dir = home.join(&entry.layer);
        let lowers = match (entry.kind, lowers.len()) {
            // Active without parent: an overlay on an empty lower rather than
            // a bind, so that containerd's applier stores a layer's whiteouts
            // and opaque dirs as overlayfs does, which a layer applied on no
            // parent and rebased at commit (parallel unpack) needs. A layer
            // an earlier version made has no work dir: a bind, as then.
            (Kind::Active, 0) if dir.join("work").is_dir() => vec![escape(&self.empty_lower)],
            (_, 0) => return Ok(bind(&self.own_dir(&entry.layer))),
            (Kind::View | Kind::Committed, 1) => return Ok(bind(&home.join(&lowers[0]))),
            _ => lowers,
        };
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_owned());
        }
        if entry.kind == Kind::Active {
            options.push(format!("workdir={}", escape(&dir.join("work"))));
            options.push(format!("upperdir={}", escape(&dir.join("diff"))));
        }
        options.push(format!("lowerdir={}", lowers.join(":")));
        Ok(vec![Mount {
            r#type: "overlay".to_owned(),
            source: "overlay".to_owned(),
            target: String::new(),
            options,
        }])
    }
}

/// A path as overlayfs reads it in mount data: `\`, `:` and `,` escaped.
fn escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.display().to_string().chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
