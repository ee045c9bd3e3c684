//! `plies --root <Docker data root>`: the Docker 20.10 data root in `fixtures/`
//! (three image layers, a container) listed, named by chain, cache and
//! container ids, diffed and checked without a byte written, mounted, and
//! guarded against commands that would change Docker's layers.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Root, read_tree, tar_names};

const BASE_CHAIN: &str = "sha256:4105d678e27883a7bb1186388949143d5a0a577ce403ebd0d80c83375268110a";
const MID_CHAIN: &str = "sha256:0ceab6faad160e475e8ffad229c4e0b44567d4544b6a200c35d5b3375d137e8e";
const TOP_CHAIN: &str = "sha256:1ae6a702e2d496b9b9faad683d05230115571b246e49fdd657460a3cd66a74e1";
const TOP_CACHE: &str = "9060cfb51cbb6b38f9fe70cc4c15f137b677540aee0cf295c3742d699a5c437d";
const CONTAINER: &str = "fd85cfc5f7fa37b6a827f323092ae1cf4e813c62d1affa7d97f97a149a5de1ce";
const MOUNT: &str = "a44a1aee50359f8d10ffc3355a22ca9ed1ce1a7ad96b5584d0dc81b099558c3a";

/// Every path under `dir` with its mode, size, mtime and contents' hash.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (u32, u64, i64, String)> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        let hash = if meta.is_file() {
            super::sha256(&std::fs::read(entry.path()).unwrap())
        } else {
            String::new()
        };
        out.insert(
            entry.path().strip_prefix(dir).unwrap().to_owned(),
            (meta.mode(), meta.len(), meta.mtime(), hash),
        );
    }
    out
}

/// The fixture's data root under a fresh `Root`, or `None` where overlay2
/// cannot run here (after saying why).
fn docker_root(test: &str) -> Option<Root> {
    let root = Root::new();
    if root.driver != "overlay2" {
        assert!(
            !plies_testkit::kernel_required(),
            "{test}: needs overlay2 (root and overlayfs)"
        );
        eprintln!("skipping {test}: needs overlay2 (root and overlayfs)");
        return None;
    }
    std::fs::create_dir_all(root.path()).unwrap();
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xzf"])
        .arg(plies_testkit::fixtures_dir().join("docker-20.10-overlay2-store.tar.gz"))
        .arg("-C")
        .arg(root.path())
        .status()
        .unwrap();
    assert!(status.success());
    Some(root)
}

#[test]
fn a_docker_data_root_reads_without_a_byte_written() {
    const TEST: &str = "a_docker_data_root_reads_without_a_byte_written";
    let Some(root) = docker_root(TEST) else {
        return;
    };
    let before = fingerprint(&root.path());

    // Docker's layers and its container, in driver ids, with Docker's ids.
    let ls: serde_json::Value = serde_json::from_str(&root.ok(&["--json", "ls"])).unwrap();
    let rows = ls.as_array().unwrap();
    assert_eq!(rows.len(), 5, "{ls}");
    let top = rows.iter().find(|r| r["id"] == TOP_CACHE).unwrap();
    assert_eq!(top["chain_id"], TOP_CHAIN);
    assert_eq!(top["kind"], "image");
    assert_eq!(top["depth"], 2);
    assert_eq!(top["containers"], serde_json::json!([CONTAINER]));
    let rw = rows.iter().find(|r| r["id"] == MOUNT).unwrap();
    assert_eq!(rw["kind"], "container");
    assert_eq!(rw["parent"], format!("{MOUNT}-init"));
    let table = root.ok(&["ls"]);
    assert!(table.contains("1ae6a702e2d4"), "{table}");

    // The same changes by chain id, its prefix, and the cache id; as plies
    // finds them in the same image imported into a store of its own.
    let changes = root.ok(&["changes", TOP_CHAIN]);
    assert_eq!(root.ok(&["changes", "1ae6a7"]), changes);
    assert_eq!(root.ok(&["changes", TOP_CACHE]), changes);
    let own = Root::new();
    let image = plies_testkit::fixtures_dir().join("docker-20.10-overlay2-store.image.tar");
    own.ok(&["import", image.to_str().unwrap()]);
    assert_eq!(own.ok(&["changes", TOP_CHAIN]), changes);
    // A container names its read-write layer.
    assert_eq!(
        root.ok(&["changes", &CONTAINER[..8]]),
        root.ok(&["changes", MOUNT])
    );

    // Each image layer's diff holds the paths of the layer tar Docker saved.
    for chain in [BASE_CHAIN, MID_CHAIN, TOP_CHAIN] {
        let path = root.dir.path().join("layer.tar");
        root.ok(&["diff", chain, "-o", path.to_str().unwrap()]);
        let mut ours = tar_names(&std::fs::read(&path).unwrap());
        let out = own.dir.path().join("own.tar");
        own.ok(&["diff", chain, "-o", out.to_str().unwrap()]);
        let mut theirs = tar_names(&std::fs::read(&out).unwrap());
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
        std::fs::remove_file(path).unwrap();
    }
    assert_eq!(
        root.ok(&["size", TOP_CHAIN]).trim(),
        own.ok(&["size", TOP_CHAIN]).trim()
    );
    assert!(root.ok(&["fsck"]).contains("no problems"));
    assert_eq!(root.ok(&["images"]).lines().count(), 1, "header only");

    // Nothing of Docker's changed, and nothing of plies' was added.
    assert_eq!(fingerprint(&root.path()), before);

    // Changes are refused whole; a repair too.
    root.fails(&["rm", TOP_CHAIN], 2, "is a Docker data root");
    root.fails(&["create", "x"], 2, "is a Docker data root");
    root.fails(&["fsck", "--repair"], 2, "repairs nothing of Docker's");
    root.fails(&["changes", "ffff"], 1, "no such layer");
    assert_eq!(fingerprint(&root.path()), before);

    // With no dockerd on it, a container's layer mounts, with the image's files.
    let merged = root.ok(&["mount", CONTAINER]);
    let tree = read_tree(Path::new(merged.trim()));
    assert!(tree.contains_key("etc/passwd"), "{:?}", tree.keys());
    assert!(root.ok(&["ls"]).contains("container"));
    root.ok(&["umount", CONTAINER]);
    assert!(plies_testkit::mounts_under(&root.path()).is_empty());
}
