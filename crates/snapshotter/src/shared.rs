//! One driver, opened once, under every per-request [`LayerDb`](plies_layerdb::LayerDb).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plies_drivers::{CreateOptions, Driver, Result};

/// A driver shared by reference: [`LayerDb::open`](plies_layerdb::LayerDb::open)
/// takes a boxed driver for each request, while the driver's probes and
/// in-process counts stay with the one opened at start.
#[derive(Debug, Clone)]
pub(crate) struct Shared(pub Arc<dyn Driver>);

impl Driver for Shared {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn root(&self) -> &Path {
        self.0.root()
    }
    fn create(&self, id: &str, parent: Option<&str>, opts: &CreateOptions) -> Result<()> {
        self.0.create(id, parent, opts)
    }
    fn create_read_write(
        &self,
        id: &str,
        parent: Option<&str>,
        opts: &CreateOptions,
    ) -> Result<()> {
        self.0.create_read_write(id, parent, opts)
    }
    fn remove(&self, id: &str) -> Result<()> {
        self.0.remove(id)
    }
    fn get(&self, id: &str, mount_label: Option<&str>) -> Result<PathBuf> {
        self.0.get(id, mount_label)
    }
    fn parent(&self, id: &str) -> Result<Option<String>> {
        self.0.parent(id)
    }
    fn layer_files(&self, id: &str) -> Result<PathBuf> {
        self.0.layer_files(id)
    }
    fn mount_path(&self, id: &str) -> Result<PathBuf> {
        self.0.mount_path(id)
    }
    fn put(&self, id: &str) -> Result<()> {
        self.0.put(id)
    }
    fn detach(&self, id: &str) -> Result<bool> {
        self.0.detach(id)
    }
    fn list(&self) -> Result<Vec<String>> {
        self.0.list()
    }
    fn fsck(&self, repair: bool) -> Result<plies_layerstore::FsckReport> {
        self.0.fsck(repair)
    }
    fn exists(&self, id: &str) -> bool {
        self.0.exists(id)
    }
    fn status(&self) -> Vec<(String, String)> {
        self.0.status()
    }
    fn metadata(&self, id: &str) -> Result<BTreeMap<String, String>> {
        self.0.metadata(id)
    }
    fn cleanup(&self) -> Result<()> {
        self.0.cleanup()
    }
    fn diff(&self, id: &str, parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
        self.0.diff(id, parent)
    }
    fn diff_size(&self, id: &str, parent: Option<&str>) -> Result<u64> {
        self.0.diff_size(id, parent)
    }
    fn apply_diff(&self, id: &str, parent: Option<&str>, diff: &mut dyn Read) -> Result<u64> {
        self.0.apply_diff(id, parent, diff)
    }
    fn changes(
        &self,
        id: &str,
        parent: Option<&str>,
    ) -> Result<Vec<plies_archive::changes::Change>> {
        self.0.changes(id, parent)
    }
}
