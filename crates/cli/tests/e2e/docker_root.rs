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

/// A data root dockerd 20.10 wrote (an image loaded, a container that wrote and
/// deleted files), read by plies once dockerd stopped: the same layers, the
/// container's tree as `docker export` gave it, its changes as `docker diff`
/// gave them, and Docker's files as they were.
#[test]
fn a_root_dockerd_wrote_reads_as_docker_showed_it() {
    const TEST: &str = "a_root_dockerd_wrote_reads_as_docker_showed_it";
    if !plies_testkit::require_overlay(TEST) {
        return;
    }
    let Some((dockerd, busybox)) = plies_testkit::dockerd::prerequisites(TEST) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let _unmount = Unmount(tmp.path().to_owned());
    let mut tars = vec![super::containerd::busybox_layer(&busybox)];
    tars.extend(super::Built::new(&super::image_layers(), &[super::Comp::Plain]).tars);
    let image = super::Built::with_busybox_path(tars);
    let archive = tmp.path().join("image.tar");
    super::docker_archive(&archive, &image);

    let mut d =
        plies_testkit::dockerd::Dockerd::start(&dockerd, &tmp.path().join("d"), "overlay2", &[])
            .unwrap_or_else(|e| panic!("{e}"));
    d.docker(&["load", "-i", archive.to_str().unwrap()]);
    d.docker(&[
        "run",
        "--name",
        "c1",
        "test/image:1",
        "/bin/sh",
        "-c",
        "echo written > /app/new && rm /etc/passwd && mkdir -p /var/made",
    ]);
    let container = d
        .docker(&["inspect", "-f", "{{.Id}}", "c1"])
        .trim()
        .to_owned();
    let image_id = d
        .docker(&["inspect", "-f", "{{.Id}}", "test/image:1"])
        .trim()
        .to_owned();
    let mut docker_diff: Vec<String> = d
        .docker(&["diff", "c1"])
        .lines()
        .map(str::to_owned)
        .collect();
    docker_diff.sort();
    let exported = d
        .command(&["export", "c1"])
        .output()
        .expect("docker export")
        .stdout;
    let data = tmp.path().join("d/data");
    let plies_root = |args: &[&str]| {
        let mut all = vec!["--root", data.to_str().unwrap()];
        all.extend_from_slice(args);
        super::plies(&all)
    };
    // While dockerd runs, plies reads but does not mount.
    let refused = plies_root(&["mount", &container]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("running dockerd"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    d.stop();

    let before = fingerprint(&data);
    let ok = |args: &[&str]| {
        let out = plies_root(args);
        assert!(
            out.status.success(),
            "plies {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let images = ok(&["images"]);
    assert!(images.contains("test/image:1"), "{images}");
    assert!(images.contains(&image_id[7..19]), "{images}");
    let ls: serde_json::Value = serde_json::from_str(&ok(&["--json", "ls"])).unwrap();
    let chains = super::chain_ids(&image.diff_ids());
    for chain in &chains {
        assert!(
            ls.as_array()
                .unwrap()
                .iter()
                .any(|r| r["chain_id"] == *chain),
            "{chain} not listed: {ls}"
        );
    }
    let top = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["chain_id"] == *chains.last().unwrap())
        .unwrap();
    assert_eq!(top["containers"], serde_json::json!([container]));
    let mut changes: Vec<String> = ok(&["changes", &container[..12]])
        .lines()
        .map(str::to_owned)
        .collect();
    changes.sort();
    assert_eq!(changes, docker_diff);
    // Its name names it too.
    let by_name = ok(&["changes", "c1"]);
    assert_eq!(by_name, ok(&["changes", &container]));
    assert!(ok(&["fsck"]).contains("no problems"));
    // Saved with no dockerd running, the image loads elsewhere as the same image.
    let saved = tmp.path().join("saved.tar");
    ok(&["save", "test/image:1", "-o", saved.to_str().unwrap()]);
    assert_eq!(
        fingerprint(&data),
        before,
        "reading wrote into Docker's root"
    );
    let mut fresh =
        plies_testkit::dockerd::Dockerd::start(&dockerd, &tmp.path().join("e"), "overlay2", &[])
            .unwrap_or_else(|e| panic!("{e}"));
    fresh.docker(&["load", "-i", saved.to_str().unwrap()]);
    assert_eq!(
        fresh
            .docker(&["inspect", "-f", "{{.Id}}", "test/image:1"])
            .trim(),
        image_id
    );
    fresh.stop();

    // Mounted, the container's tree is what `docker export` gave.
    let merged = PathBuf::from(ok(&["mount", &container]).trim());
    let mut exported_names: Vec<String> = tar_names(&exported)
        .into_iter()
        .map(|n| n.trim_end_matches('/').to_owned())
        .filter(|n| !n.is_empty() && n != ".")
        .filter(|n| !runtime_path(n))
        .collect();
    exported_names.sort();
    let mut mounted: Vec<String> = walkdir::WalkDir::new(&merged)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            e.path()
                .strip_prefix(&merged)
                .unwrap()
                .display()
                .to_string()
        })
        .filter(|n| !runtime_path(n))
        .collect();
    mounted.sort();
    assert_eq!(mounted, exported_names);
    assert_eq!(
        std::fs::read_to_string(merged.join("app/new")).unwrap(),
        "written\n"
    );
    ok(&["umount", &container]);
}

/// A path the container runtime makes or mounts over in a container (so
/// `docker export` shows what no layer holds).
fn runtime_path(name: &str) -> bool {
    name.starts_with(".dockerenv")
        || [
            "dev",
            "proc",
            "sys",
            "etc/hostname",
            "etc/hosts",
            "etc/resolv.conf",
            "etc/mtab",
        ]
        .iter()
        .any(|skip| name == *skip || name.starts_with(&format!("{skip}/")))
}

/// Unmounts what a test left under a directory, innermost first.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let mut mounts = plies_testkit::mounts_under(&self.0);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// A Docker data root in Docker's aufs layout, made from the fixture's
/// overlay2 one: the same layerdb under `image/aufs/`, each layer's files in
/// `aufs/diff/<cache-id>` with its overlay whiteouts turned into aufs `.wh.`
/// files, `aufs/layers/<cache-id>` naming its ancestors, and the image's
/// config in the image store. Docker 24 and later no longer open such a root;
/// plies lists it and saves its image byte for byte with no aufs in the
/// kernel (no mount is needed for either).
#[test]
fn an_aufs_docker_root_is_rescued_without_aufs() {
    const TEST: &str = "an_aufs_docker_root_is_rescued_without_aufs";
    let Some(src) = docker_root(TEST) else {
        return;
    };
    let mut root = Root::new();
    // Found by its layer database, as `--driver auto` finds it.
    root.driver = "auto";
    let r = root.path();
    let from = src.path();
    let cp = |a: &Path, b: &Path| {
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        let ok = Command::new("cp")
            .args(["-a", "--preserve=all"])
            .arg(a)
            .arg(b)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cp {} {}", a.display(), b.display());
    };
    let layerdb = from.join("image/overlay2/layerdb/sha256");
    let mut cache_of = BTreeMap::new();
    for chain in [BASE_CHAIN, MID_CHAIN, TOP_CHAIN] {
        let hex = &chain["sha256:".len()..];
        let dir = layerdb.join(hex);
        cp(&dir, &r.join("image/aufs/layerdb/sha256").join(hex));
        let cache = std::fs::read_to_string(dir.join("cache-id")).unwrap();
        let diff = r.join("aufs/diff").join(&cache);
        cp(&from.join("overlay2").join(&cache).join("diff"), &diff);
        let fd = std::fs::File::open(&diff).unwrap();
        plies_whiteout::convert::overlay_to_aufs(&fd, plies_whiteout::XattrNamespace::Trusted)
            .unwrap();
        cache_of.insert(chain, cache);
    }
    let layers = r.join("aufs/layers");
    std::fs::create_dir_all(&layers).unwrap();
    let [base, mid, top] = [BASE_CHAIN, MID_CHAIN, TOP_CHAIN].map(|c| cache_of[c].clone());
    std::fs::write(layers.join(&base), "").unwrap();
    std::fs::write(layers.join(&mid), format!("{base}\n")).unwrap();
    std::fs::write(layers.join(&top), format!("{mid}\n{base}\n")).unwrap();
    let image = plies_testkit::fixtures_dir().join("docker-20.10-overlay2-store.image.tar");
    let (config, saved_layers) = super::saved_image(&std::fs::read(&image).unwrap());
    let id = super::sha256(&config);
    let content = r.join("image/aufs/imagedb/content/sha256");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join(super::hex(&id)), &config).unwrap();
    std::fs::write(
        r.join("image/aufs/repositories.json"),
        format!(r#"{{"Repositories":{{"hidden/test":{{"hidden/test:1":"{id}"}}}}}}"#),
    )
    .unwrap();

    let before = fingerprint(&r);
    let ls: serde_json::Value = serde_json::from_str(&root.ok(&["--json", "ls"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 3, "{ls}");
    let top_row = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == *top)
        .unwrap();
    assert_eq!(top_row["chain_id"], TOP_CHAIN);
    assert_eq!(top_row["parent"], *mid);
    assert!(root.ok(&["images"]).contains("hidden/test:1"));
    let out = root.dir.path().join("rescued.tar");
    root.ok(&["save", "hidden/test:1", "-o", out.to_str().unwrap()]);
    let (saved_config, layers) = super::saved_image(&std::fs::read(&out).unwrap());
    assert_eq!(saved_config, config);
    assert!(
        layers == saved_layers,
        "the rescued layers differ from Docker's"
    );
    assert_eq!(fingerprint(&r), before, "rescuing wrote into the root");
}
