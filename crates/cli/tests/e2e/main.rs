//! End-to-end tests of the `plies` binary: images built here in both saved
//! formats, imported, mounted (overlay2 as root where the kernel has overlayfs,
//! vfs otherwise) and compared file by file; diff/apply round trips; `changes`;
//! `fsck` on damaged stores; bad inputs; `plies demo`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use plies_testkit::layer_tar::LayerTar;
use sha2::{Digest as _, Sha256};

mod containerd;
mod docker_root;

// ---------------------------------------------------------------- running plies

/// A store root for one test; unmounts whatever is left under it when dropped.
struct Root {
    dir: tempfile::TempDir,
    driver: &'static str,
}

impl Root {
    fn new() -> Root {
        Root {
            dir: tempfile::tempdir().unwrap(),
            driver: test_driver(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Runs `plies --root <root> --driver <driver> args…`.
    fn run(&self, args: &[&str]) -> Output {
        let root = self.path();
        let mut all = vec!["--root", root.to_str().unwrap(), "--driver", self.driver];
        all.extend_from_slice(args);
        plies(&all)
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "plies {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit `code` with `message` in the one-line error.
    fn fails(&self, args: &[&str], code: i32, message: &str) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "plies {args:?}: {stderr}");
        assert!(stderr.starts_with("plies: "), "{stderr}");
        assert!(
            stderr.contains(message),
            "plies {args:?}: expected {message:?} in {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
        stderr
    }

    /// Every path under the root with its type and size, to see that a failed
    /// command changed nothing.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, u64)> {
        let mut out = BTreeMap::new();
        if self.path().exists() {
            snapshot_into(&self.path(), &self.path(), &mut out);
        }
        out.retain(|p, _| !p.ends_with("lock"));
        out
    }
}

fn snapshot_into(top: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, u64)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.path().symlink_metadata().unwrap();
        let size = if meta.is_file() { meta.len() } else { 0 };
        out.insert(
            e.path().strip_prefix(top).unwrap().to_owned(),
            (meta.mode() & 0o170000, size),
        );
        if meta.is_dir() {
            snapshot_into(top, &e.path(), out);
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let mut mounts = plies_testkit::mounts_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// The `plies` executable: the one cargo built, or `PLIES_BIN` where the
/// tests run elsewhere (the kernel matrix's guests).
fn plies_bin() -> PathBuf {
    std::env::var_os("PLIES_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_plies")), PathBuf::from)
}

fn plies(args: &[&str]) -> Output {
    Command::new(plies_bin())
        .args(args)
        .output()
        .expect("running plies")
}

/// overlay2 as root on a kernel with overlayfs, vfs otherwise.
fn test_driver() -> &'static str {
    if rustix::process::geteuid().is_root() && plies_testkit::kernel_has_filesystem("overlay") {
        "overlay2"
    } else {
        "vfs"
    }
}

// ---------------------------------------------------------------- building images

/// One entry of a layer.
#[derive(Clone)]
enum E {
    Dir(&'static str),
    File(&'static str, u32, &'static str),
    Link(&'static str, &'static str),
    Hard(&'static str, &'static str),
}

fn layer_tar(entries: &[E], mtime: u64) -> Vec<u8> {
    let mut t = LayerTar::ustar();
    t.mtime(mtime);
    for e in entries {
        match *e {
            E::Dir(p) => t.dir(format!("{p}/"), 0o755),
            E::File(p, mode, data) => t.file(p, data, mode),
            E::Link(p, target) => t.symlink(p, target),
            E::Hard(p, target) => t.hardlink(p, target),
        };
    }
    t.finish()
}

/// The test image: three layers exercising additions, a replaced file, a
/// deleted file, an opaque directory, a hard link and a symlink.
fn image_layers() -> Vec<Vec<E>> {
    use E::*;
    vec![
        vec![
            Dir("etc"),
            File("etc/os-release", 0o644, "ID=plies\n"),
            File("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n"),
            Dir("usr"),
            Dir("usr/lib"),
            File("usr/lib/libone.so", 0o755, "one"),
            Hard("usr/lib/libone.so.1", "usr/lib/libone.so"),
            Dir("var"),
            Dir("var/cache"),
            File("var/cache/a", 0o600, "cached a"),
            File("var/cache/b", 0o600, "cached b"),
        ],
        vec![
            Dir("etc"),
            File(
                "etc/passwd",
                0o644,
                "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n",
            ),
            Dir("app"),
            File("app/run", 0o755, "#!/bin/sh\nexec app\n"),
            Link("app/current", "/app/run"),
        ],
        vec![
            Dir("etc"),
            File("etc/.wh.os-release", 0o644, ""),
            Dir("var"),
            Dir("var/cache"),
            File("var/cache/.wh..wh..opq", 0o644, ""),
            File("var/cache/c", 0o644, "cached c"),
            Dir("app"),
            File("app/config.toml", 0o644, "port = 8080\n"),
        ],
    ]
}

/// What a file looks like in a mounted tree: kind, mode, contents or target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(u32, String),
    Link(String),
}

/// The tree the layers stack into, applied the way the OCI spec says.
fn expected_tree(layers: &[Vec<E>]) -> BTreeMap<String, Node> {
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    for layer in layers {
        for e in layer {
            match e {
                E::Dir(p) => {
                    tree.insert(p.to_string(), Node::Dir);
                }
                E::File(p, mode, data) => {
                    let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
                    if name == ".wh..wh..opq" {
                        let prefix = format!("{dir}/");
                        tree.retain(|k, _| !k.starts_with(&prefix));
                    } else if let Some(gone) = name.strip_prefix(".wh.") {
                        let gone = format!("{dir}/{gone}");
                        let prefix = format!("{gone}/");
                        tree.retain(|k, _| *k != gone && !k.starts_with(&prefix));
                    } else {
                        tree.insert(p.to_string(), Node::File(*mode, data.to_string()));
                    }
                }
                E::Link(p, target) => {
                    tree.insert(p.to_string(), Node::Link(target.to_string()));
                }
                E::Hard(p, target) => {
                    let node = tree[*target].clone();
                    tree.insert(p.to_string(), node);
                }
            }
        }
    }
    tree
}

fn read_tree(top: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    read_tree_into(top, top, &mut out);
    out
}

fn read_tree_into(top: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let rel = path.strip_prefix(top).unwrap().to_str().unwrap().to_owned();
        let meta = path.symlink_metadata().unwrap();
        if meta.is_dir() {
            out.insert(rel, Node::Dir);
            read_tree_into(top, &path, out);
        } else if meta.file_type().is_symlink() {
            out.insert(
                rel,
                Node::Link(
                    std::fs::read_link(&path)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned(),
                ),
            );
        } else {
            let mode = meta.permissions().mode() & 0o7777;
            out.insert(
                rel,
                Node::File(mode, std::fs::read_to_string(&path).unwrap()),
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Comp {
    Plain,
    Gzip,
    Zstd,
}

fn compress(data: &[u8], comp: Comp) -> Vec<u8> {
    match comp {
        Comp::Plain => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(p) => sha256(format!("{p} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// An image ready to be written: layer tars, their blobs, and the config.
struct Built {
    tars: Vec<Vec<u8>>,
    blobs: Vec<Vec<u8>>,
    config: Vec<u8>,
}

impl Built {
    fn new(layers: &[Vec<E>], comps: &[Comp]) -> Built {
        let tars: Vec<Vec<u8>> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| layer_tar(l, 1_700_000_000 + 86_400 * i as u64))
            .collect();
        let blobs = tars
            .iter()
            .zip(comps.iter().cycle())
            .map(|(t, c)| compress(t, *c))
            .collect();
        let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
        let config = config_json("amd64", &diff_ids);
        Built {
            tars,
            blobs,
            config,
        }
    }

    /// Uncompressed layers, with busybox's `PATH` (`/bin`) in the config.
    fn with_busybox_path(tars: Vec<Vec<u8>>) -> Built {
        let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [],
        }))
        .unwrap();
        Built {
            blobs: tars.clone(),
            tars,
            config,
        }
    }

    fn diff_ids(&self) -> Vec<String> {
        self.tars.iter().map(|t| sha256(t)).collect()
    }

    fn top(&self) -> String {
        chain_ids(&self.diff_ids()).pop().unwrap()
    }
}

fn config_json(arch: &str, diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [],
    }))
    .unwrap()
}

fn tar_file(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut t = LayerTar::ustar();
    for (name, data) in members {
        t.file(name, data, 0o644);
    }
    std::fs::write(path, t.finish()).unwrap();
}

/// A `docker save` archive: layers first, config, then `manifest.json` last.
fn docker_archive(path: &Path, img: &Built) {
    let config_name = format!("{}.json", hex(&sha256(&img.config)));
    let names: Vec<String> = img
        .diff_ids()
        .iter()
        .map(|d| format!("{}/layer.tar", hex(d)))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": ["test/image:1"], "Layers": names,
    }]))
    .unwrap();
    let mut members: Vec<(String, Vec<u8>)> = names
        .iter()
        .cloned()
        .zip(img.blobs.iter().cloned())
        .collect();
    members.push((config_name, img.config.clone()));
    members.push(("manifest.json".to_owned(), manifest));
    tar_file(path, &members);
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

/// Adds an image's blobs and manifest to an OCI layout's blob list; returns the
/// manifest's bytes.
fn oci_manifest(blobs: &mut Vec<(String, Vec<u8>)>, img: &Built, comps: &[Comp]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = img
        .blobs
        .iter()
        .zip(comps.iter().cycle())
        .map(|(b, c)| {
            let mt = match c {
                Comp::Plain => "application/vnd.oci.image.layer.v1.tar",
                Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            };
            descriptor(mt, b)
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &img.config),
        "layers": layers,
    }))
    .unwrap();
    for data in img.blobs.iter().chain([&img.config, &manifest]) {
        blobs.push((format!("blobs/sha256/{}", hex(&sha256(data))), data.clone()));
    }
    manifest
}

/// An OCI layout's members: `oci-layout`, `index.json` (one manifest per image,
/// with its platform) and the blobs.
fn oci_members(images: &[(&Built, &str)], comps: &[Comp]) -> Vec<(String, Vec<u8>)> {
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    for (img, arch) in images {
        let m = oci_manifest(&mut blobs, img, comps);
        let mut d = descriptor("application/vnd.oci.image.manifest.v1+json", &m);
        d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "1"});
        manifests.push(d);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let mut members = vec![
        (
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_owned(), index),
    ];
    members.extend(blobs);
    members
}

fn write_dir(dir: &Path, members: &[(String, Vec<u8>)]) {
    for (name, data) in members {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
}

// ---------------------------------------------------------------- checks

/// Imports `source`, checks the printed top id, mounts it, compares the tree.
fn import_and_compare(root: &Root, source: &Path, img: &Built, extra: &[&str]) {
    let mut args = vec!["import", source.to_str().unwrap()];
    args.extend_from_slice(extra);
    let top = root.ok(&args);
    assert_eq!(top.trim(), img.top());
    let merged = root.ok(&["mount", &img.top()]);
    let tree = read_tree(Path::new(merged.trim()));
    assert_eq!(
        tree,
        expected_tree(&image_layers()),
        "driver {}",
        root.driver
    );
    root.ok(&["umount", &img.top()]);
    assert!(plies_testkit::mounts_under(&root.path()).is_empty());
}

#[test]
fn docker_archive_with_gzip_zstd_and_plain_layers() {
    let root = Root::new();
    let img = Built::new(&image_layers(), &[Comp::Gzip, Comp::Zstd, Comp::Plain]);
    let archive = root.dir.path().join("image.tar");
    docker_archive(&archive, &img);
    import_and_compare(&root, &archive, &img, &[]);

    // Chain ids, parents and the JSON form.
    let json: serde_json::Value =
        serde_json::from_str(&root.ok(&["--json", "import", archive.to_str().unwrap()])).unwrap();
    let layers = json[0]["layers"].as_array().unwrap();
    let chain = chain_ids(&img.diff_ids());
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["id"], chain[i].as_str());
        assert_eq!(l["diff_id"], img.diff_ids()[i].as_str());
        // The second import is a no-op.
        assert_eq!(l["new"], false);
    }
    assert_eq!(json[0]["tags"][0], "test/image:1");
    let ls: serde_json::Value = serde_json::from_str(&root.ok(&["--json", "ls"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 3);
    let top = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == img.top().as_str())
        .unwrap();
    assert_eq!(top["depth"], 2);
    assert_eq!(top["parent"], chain[1].as_str());
    assert_eq!(root.ok(&["fsck"]).trim(), "clean");
}

#[test]
fn oci_layout_directory_and_tar_pick_the_platform() {
    let comps = [Comp::Zstd, Comp::Gzip, Comp::Plain];
    let amd64 = Built::new(&image_layers(), &comps);
    // An arm64 image of one layer listed first: the default platform skips it.
    let arm_layers = vec![vec![E::File("arm", 0o644, "arm64\n")]];
    let mut arm64 = Built::new(&arm_layers, &comps);
    arm64.config = config_json("arm64", &arm64.diff_ids());
    let members = oci_members(&[(&arm64, "arm64"), (&amd64, "amd64")], &comps);

    let root = Root::new();
    let dir = root.dir.path().join("layout");
    write_dir(&dir, &members);
    import_and_compare(&root, &dir, &amd64, &[]);

    let root = Root::new();
    let tar = root.dir.path().join("layout.tar");
    tar_file(&tar, &members);
    import_and_compare(&root, &tar, &amd64, &[]);
    let arm_top = root.ok(&["import", tar.to_str().unwrap(), "--platform", "linux/arm64"]);
    assert_eq!(arm_top.trim(), arm64.top());
    root.fails(
        &["import", tar.to_str().unwrap(), "--platform", "linux/s390x"],
        1,
        "no manifest for linux/s390x in index.json (it has linux/arm64, linux/amd64)",
    );
    root.fails(
        &["import", tar.to_str().unwrap(), "--platform", "linux"],
        2,
        "is not os/arch",
    );

    // index.json naming a nested index that names the manifests.
    let root = Root::new();
    let mut members = oci_members(&[(&arm64, "arm64"), (&amd64, "amd64")], &comps);
    let nested = members[1].1.clone();
    members.push((
        format!("blobs/sha256/{}", hex(&sha256(&nested))),
        nested.clone(),
    ));
    members[1].1 = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [descriptor("application/vnd.oci.image.index.v1+json", &nested)],
    }))
    .unwrap();
    let dir = root.dir.path().join("nested");
    write_dir(&dir, &members);
    import_and_compare(&root, &dir, &amd64, &[]);
}

/// The real image Docker 20.10 saved: its layers get the chain ids Docker's
/// layerdb gave them, with the same parents.
#[test]
fn docker_saved_fixture_gets_dockers_chain_ids() {
    let fixtures = plies_testkit::fixtures_dir();
    let root = Root::new();
    let out: serde_json::Value = serde_json::from_str(
        &root.ok(&[
            "--json",
            "import",
            fixtures
                .join("docker-20.10-overlay2-store.image.tar")
                .to_str()
                .unwrap(),
        ]),
    )
    .unwrap();

    // layerdb/sha256/<chainid>/{diff,parent} from the store Docker wrote.
    let mut layerdb: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    let gz = flate2::read::GzDecoder::new(
        File::open(fixtures.join("docker-20.10-overlay2-store.tar.gz")).unwrap(),
    );
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for entry in tar::Archive::new(gz).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_str().unwrap().to_owned();
        if let Some(rest) = path.strip_prefix("image/overlay2/layerdb/sha256/") {
            if rest.ends_with("/diff") || rest.ends_with("/parent") {
                let mut s = String::new();
                entry.read_to_string(&mut s).unwrap();
                files.insert(rest.to_owned(), s);
            }
        }
    }
    for (path, diff) in &files {
        if let Some(chain) = path.strip_suffix("/diff") {
            let parent = files.get(&format!("{chain}/parent")).cloned();
            layerdb.insert(format!("sha256:{chain}"), (diff.clone(), parent));
        }
    }
    let layers = out[0]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    assert_eq!(layerdb.len(), 3);
    for l in layers {
        let (diff, parent) = &layerdb[l["id"].as_str().unwrap()];
        assert_eq!(l["diff_id"].as_str().unwrap(), diff);
        assert_eq!(l["parent"].as_str(), parent.as_deref());
    }
    assert_eq!(
        out[0]["top"],
        "sha256:1ae6a702e2d496b9b9faad683d05230115571b246e49fdd657460a3cd66a74e1"
    );
}

#[test]
fn changes_read_like_docker_diff() {
    let root = Root::new();
    let img = Built::new(&image_layers(), &[Comp::Gzip]);
    let archive = root.dir.path().join("image.tar");
    docker_archive(&archive, &img);
    let top = root.ok(&["import", archive.to_str().unwrap()]);
    let changes = root.ok(&["changes", top.trim()]);
    assert_eq!(
        changes,
        "C /app\nA /app/config.toml\nC /etc\nD /etc/os-release\nC /var\nC /var/cache\nD /var/cache/a\nD /var/cache/b\nA /var/cache/c\n"
    );
    // A unique prefix names a layer, with or without `sha256:`; `ls` shows 12 digits.
    let short = &hex(top.trim())[..12];
    assert_eq!(root.ok(&["changes", short]), changes);
    assert_eq!(root.ok(&["changes", &format!("sha256:{short}")]), changes);
    assert!(
        root.ok(&["ls"])
            .lines()
            .any(|l| l.starts_with(&format!("{short}  ")))
    );
    root.fails(&["changes", "sha256:"], 1, "the prefix names 3 layers");
    let json: serde_json::Value =
        serde_json::from_str(&root.ok(&["--json", "changes", top.trim()])).unwrap();
    assert_eq!(
        json[1],
        serde_json::json!({"Path": "/app/config.toml", "Kind": 1})
    );
    assert_eq!(
        json[3],
        serde_json::json!({"Path": "/etc/os-release", "Kind": 2})
    );
}

fn tar_names(bytes: &[u8]) -> Vec<String> {
    tar::Archive::new(bytes)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn diff_then_apply_round_trips() {
    let root = Root::new();
    let img = Built::new(&image_layers(), &[Comp::Zstd]);
    let archive = root.dir.path().join("image.tar");
    docker_archive(&archive, &img);
    let top = root
        .ok(&["import", archive.to_str().unwrap()])
        .trim()
        .to_owned();
    let chain = chain_ids(&img.diff_ids());
    let diff = root.dir.path().join("top.tar");
    root.ok(&["diff", &top, "-o", diff.to_str().unwrap()]);
    // Compressed on the way back in, to go through detection.
    let gz = root.dir.path().join("top.tar.gz");
    std::fs::write(&gz, compress(&std::fs::read(&diff).unwrap(), Comp::Gzip)).unwrap();

    root.ok(&["create", "copy", "--parent", &chain[1]]);
    root.ok(&["apply", "copy", gz.to_str().unwrap()]);
    assert_eq!(root.ok(&["changes", "copy"]), root.ok(&["changes", &top]));
    let merged = root.ok(&["mount", "copy"]);
    assert_eq!(
        read_tree(Path::new(merged.trim())),
        expected_tree(&image_layers())
    );
    root.ok(&["umount", "copy"]);

    // diff to stdout carries the same entries (whiteouts a naive diff makes carry
    // the time they were made, so the bytes may differ).
    let out = root.run(&["diff", &top]);
    assert!(out.status.success());
    assert_eq!(
        tar_names(&out.stdout),
        tar_names(&std::fs::read(&diff).unwrap())
    );
    let size: u64 = root.ok(&["size", &top]).trim().parse().unwrap();
    assert!(size > 0);
    root.ok(&["rm", "copy"]);
    assert_eq!(root.ok(&["fsck"]).trim(), "clean");
}

#[test]
fn fsck_reports_and_repairs_damage() {
    let root = Root::new();
    let img = Built::new(&image_layers(), &[Comp::Plain]);
    let archive = root.dir.path().join("image.tar");
    docker_archive(&archive, &img);
    root.ok(&["import", archive.to_str().unwrap()]);
    let chain = chain_ids(&img.diff_ids());
    let records = root.path().join("plies").join(root.driver).join("layers");

    // An import killed after its record was written: the record says incomplete.
    let record = records.join(format!("{}.json", img.top()));
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(
        &record,
        text.replace("\"complete\": true", "\"complete\": false"),
    )
    .unwrap();
    let out = root.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(3));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(
            "repairable: records: layer {} is incomplete",
            img.top()
        )),
        "{report}"
    );
    root.fails(
        &["changes", &img.top()],
        1,
        "incomplete (an import or apply was interrupted)",
    );

    // The driver's side damaged too.
    match root.driver {
        "overlay2" => {
            let link =
                std::fs::read_to_string(root.path().join("overlay2").join(&chain[0]).join("link"))
                    .unwrap();
            std::fs::remove_file(root.path().join("overlay2/l").join(link.trim())).unwrap();
        }
        _ => std::fs::remove_dir_all(root.path().join("vfs/dir").join(&chain[1])).unwrap(),
    }
    let out = root.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(3));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    match root.driver {
        "overlay2" => assert!(
            report.contains(&format!("layer {}: its link l/", chain[0]))
                && report.contains("is missing"),
            "{report}"
        ),
        _ => assert!(
            report.contains(&format!("layer {} is recorded but missing", chain[1])),
            "{report}"
        ),
    }
    let out = root.run(&["fsck", "--repair"]);
    let repaired = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(repaired.contains("repaired: records"), "{repaired}");
    assert_eq!(
        root.ok(&["fsck"]).trim(),
        "clean",
        "after repair: {repaired}"
    );
    // The interrupted layer is gone; the rest is whole.
    root.fails(&["mount", &img.top()], 1, "no such layer");
}

#[test]
fn bad_inputs_fail_cleanly_and_leave_the_store_alone() {
    let root = Root::new();
    let good = Built::new(&image_layers(), &[Comp::Gzip]);
    let archive = root.dir.path().join("good.tar");
    docker_archive(&archive, &good);
    let top = root
        .ok(&["import", archive.to_str().unwrap()])
        .trim()
        .to_owned();
    let d = root.dir.path();
    let junk = d.join("junk.tar");
    std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();

    // A bad tar given to apply leaves the layer it was applied to as it was.
    root.ok(&["create", "scratch", "--parent", &top]);
    let changes = root.ok(&["changes", "scratch"]);
    root.fails(
        &["apply", "scratch", junk.to_str().unwrap()],
        1,
        "layer scratch",
    );
    assert_eq!(root.ok(&["changes", "scratch"]), changes);
    assert_eq!(root.ok(&["fsck"]).trim(), "clean");
    root.ok(&["rm", "scratch"]);

    let before = root.snapshot();
    // Not a tar.
    root.fails(
        &["import", junk.to_str().unwrap()],
        1,
        "not a readable tar archive",
    );

    // A layer whose bytes do not match its diff_id: a new first layer goes in,
    // the second fails, and the first is rolled back.
    let mut layers = image_layers();
    layers[0].push(E::File("new", 0o644, "new"));
    let mut bad = Built::new(&layers, &[Comp::Gzip]);
    bad.blobs[1] = compress(&layer_tar(&[E::File("evil", 0o644, "x")], 1), Comp::Gzip);
    let mismatch = d.join("mismatch.tar");
    docker_archive(&mismatch, &bad);
    let chain = chain_ids(&bad.diff_ids());
    let err = root.fails(
        &["import", mismatch.to_str().unwrap()],
        1,
        "digest mismatch",
    );
    assert!(err.contains(&format!("layer {}", chain[1])), "{err}");

    // A blob the manifest names but the archive lacks.
    let img = Built::new(&layers, &[Comp::Plain]);
    let config_name = format!("{}.json", hex(&sha256(&img.config)));
    let names: Vec<String> = img
        .diff_ids()
        .iter()
        .map(|x| format!("{}/layer.tar", hex(x)))
        .collect();
    let manifest =
        serde_json::to_vec(&serde_json::json!([{"Config": config_name, "Layers": names}])).unwrap();
    let missing = d.join("missing.tar");
    tar_file(
        &missing,
        &[
            (names[0].clone(), img.blobs[0].clone()),
            (names[2].clone(), img.blobs[2].clone()),
            (config_name, img.config.clone()),
            ("manifest.json".to_owned(), manifest),
        ],
    );
    root.fails(
        &["import", missing.to_str().unwrap()],
        1,
        &format!("blob {} is missing", names[1]),
    );

    // An OCI layout without a blob.
    let members: Vec<_> = oci_members(&[(&img, "amd64")], &[Comp::Plain])
        .into_iter()
        .filter(|(n, _)| *n != format!("blobs/sha256/{}", hex(&sha256(&img.blobs[1]))))
        .collect();
    let oci = d.join("oci");
    write_dir(&oci, &members);
    root.fails(&["import", oci.to_str().unwrap()], 1, "is missing");

    // Deeper than the 128 lower layers Docker's format allows.
    let deep_layers: Vec<Vec<E>> = (0..130).map(|_| vec![E::Dir("d")]).collect();
    let mut deep = Built::new(&deep_layers, &[Comp::Plain]);
    // Distinct layers: each a different mtime is enough.
    deep.tars = deep_layers
        .iter()
        .enumerate()
        .map(|(i, l)| layer_tar(l, i as u64))
        .collect();
    deep.blobs = deep.tars.clone();
    deep.config = config_json("amd64", &deep.diff_ids());
    let deep_tar = d.join("deep.tar");
    docker_archive(&deep_tar, &deep);
    root.fails(
        &["import", deep_tar.to_str().unwrap()],
        1,
        "130 layers is deeper than the store allows",
    );

    // Unknown layers and parents.
    root.fails(&["mount", "nope"], 1, "layer nope: no such layer");
    root.fails(&["changes", "nope"], 1, "layer nope: no such layer");
    root.fails(
        &["create", "child", "--parent", "nope"],
        1,
        "layer nope: no such layer",
    );
    root.fails(
        &["rm", &chain_ids(&good.diff_ids())[0]],
        1,
        "it is the parent of",
    );

    // Usage errors exit 2.
    root.fails(&["import"], 2, "");
    root.fails(&["create", "a", "--size", "1G"], 2, "");

    assert_eq!(
        root.snapshot(),
        before,
        "a failed command changed the store"
    );
    assert_eq!(root.ok(&["fsck"]).trim(), "clean");
}

#[test]
fn demo_runs_and_shows_the_whole_path() {
    let out = plies(&["demo"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "755  /bin/hello  (21 bytes, 2 links)",
        "644  /data/tagged.txt  (7 bytes, user.plies.demo=layer 2)",
        "777  /usr/bin/hello -> ../../bin/hello",
        "D /data/b.txt",
        "A /data/c.txt",
        "C /etc/hostname",
        "data/.wh.b.txt   <- whiteout",
    ] {
        assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
    }
    assert!(!stdout.contains("/etc/motd"), "{stdout}");
    assert!(!stdout.contains("legacy.conf  ("), "{stdout}");
    let removed = stdout
        .lines()
        .last()
        .unwrap()
        .strip_prefix("removed ")
        .unwrap();
    assert!(!Path::new(removed).exists());
}

/// Ctrl-C while a layer streams in: the import stops with 130, removes what it
/// had imported, and the store is as it was and checks clean. The second layer
/// is a pipe the test feeds by hand, so the signal lands mid-layer every time.
#[test]
fn an_interrupted_import_leaves_the_store_as_it_was() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::{Duration, Instant};

    let root = Root::new();
    root.ok(&[
        "import",
        plies_testkit::fixtures_dir()
            .join("docker-20.10-overlay2-store.image.tar")
            .to_str()
            .unwrap(),
    ]);
    let before = root.snapshot();

    let big = "x".repeat(200_000);
    let big: &'static str = Box::leak(big.into_boxed_str());
    let layers = vec![
        vec![E::File("first", 0o644, "first layer\n")],
        vec![E::File("big", 0o644, big)],
    ];
    let img = Built::new(&layers, &[Comp::Plain]);
    let members = oci_members(&[(&img, "amd64")], &[Comp::Plain]);
    let dir = root.dir.path().join("layout");
    write_dir(&dir, &members);
    let pipe = dir.join("blobs/sha256").join(hex(&sha256(&img.blobs[1])));
    std::fs::remove_file(&pipe).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &pipe,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();

    let mut child = Command::new(plies_bin())
        .args([
            "--root",
            root.path().to_str().unwrap(),
            "--driver",
            root.driver,
            "import",
        ])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Open the pipe once plies reads it (ENXIO until then), without ever blocking.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&pipe)
        {
            Ok(w) => break w,
            Err(_) if Instant::now() < deadline && child.try_wait().unwrap().is_none() => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("plies never read the second layer: {e}");
            }
        }
    };
    writer.write_all(&img.blobs[1][..10_240]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(writer);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.starts_with("plies: "), "{stderr}");
    assert_eq!(
        root.snapshot(),
        before,
        "the interrupted import left something"
    );
    assert_eq!(root.ok(&["fsck"]).trim(), "clean");
}

// ---------------------------------------------------------------- never lose a layer

/// The layer's files as a tree, read through a mount.
fn layer_tree(root: &Root, id: &str) -> BTreeMap<String, Node> {
    let merged = root.ok(&["mount", id]);
    let tree = read_tree(Path::new(merged.trim()));
    root.ok(&["umount", id]);
    tree
}

#[test]
fn a_failed_apply_leaves_a_layer_with_content_and_its_child() {
    let root = Root::new();
    let dir = root.dir.path();
    let good = dir.join("top.tar");
    std::fs::write(
        &good,
        layer_tar(
            &[E::Dir("a"), E::File("a/f", 0o644, "content\n")],
            1_700_000_000,
        ),
    )
    .unwrap();
    root.ok(&["create", "A"]);
    root.ok(&["apply", "A", good.to_str().unwrap()]);
    root.ok(&["create", "X1", "--parent", "A"]);
    let before = layer_tree(&root, "X1");
    let changes = root.ok(&["changes", "A"]);

    // Garbage, and a tar that breaks halfway through a good entry.
    let garbage = dir.join("garbage.tar");
    let mut bytes = vec![0u8; 3000];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(&garbage, &bytes).unwrap();
    let mut cut = LayerTar::ustar()
        .mtime(1_700_000_000)
        .file("b", "y".repeat(5000), 0o644)
        .finish();
    cut.truncate(2048);
    let cut_path = dir.join("cut.tar");
    std::fs::write(&cut_path, &cut).unwrap();
    for bad in [&garbage, &cut_path] {
        let err = root.fails(&["apply", "A", bad.to_str().unwrap()], 1, "layer A");
        assert!(err.contains("the layer is as it was"), "{err}");
        assert!(!err.contains("removed"), "{err}");
        assert!(
            !err.bytes().any(|b| b < 0x20 && b != b'\n'),
            "control bytes reach the terminal: {err:?}"
        );
        assert_eq!(root.ok(&["changes", "A"]), changes);
        assert_eq!(layer_tree(&root, "X1"), before);
        assert_eq!(root.ok(&["fsck"]).trim(), "clean");
    }
    root.ok(&["rm", "X1", "A"]);
}

#[test]
fn probe_scratch_left_in_the_home_is_repaired() {
    let root = Root::new();
    root.ok(&["create", "base"]);
    let home = root.path().join(root.driver);
    // What a probe killed inside the home left (older versions probed there).
    std::fs::create_dir_all(home.join(".kprobe-multiple-lowers-AbCdEf/lower1")).unwrap();
    let out = root.run(&["fsck"]);
    if root.driver == "overlay2" {
        assert_eq!(out.status.code(), Some(3), "{out:?}");
    }
    root.ok(&["fsck", "--repair"]);
    assert_eq!(root.ok(&["fsck"]).trim(), "clean");
    if root.driver == "overlay2" {
        assert!(!home.join(".kprobe-multiple-lowers-AbCdEf").exists());
    }
}

#[test]
fn concurrent_creates_and_removes_share_one_root() {
    let root = std::sync::Arc::new(Root::new());
    root.ok(&["create", "base"]);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..15 {
                    let id = format!("w{w}-{i}");
                    for args in [
                        vec!["create", id.as_str(), "--parent", "base"],
                        vec!["rm", id.as_str()],
                    ] {
                        let out = root.run(&args);
                        if !out.status.success() {
                            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                        }
                    }
                }
                failures
            })
        })
        .collect();
    // Readers beside the writers never fail and never see damage.
    let mut reader_failures = Vec::new();
    while workers.iter().any(|w| !w.is_finished()) {
        for args in [&["ls"][..], &["fsck"][..]] {
            let out = root.run(args);
            if !out.status.success() {
                reader_failures.push(format!("{args:?}: {out:?}"));
            }
        }
    }
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(reader_failures.is_empty(), "{reader_failures:#?}");
    assert_eq!(root.ok(&["ls", "-q"]).trim(), "base");
    assert_eq!(root.ok(&["fsck"]).trim(), "clean");
    if root.driver == "overlay2" {
        let home = root.path().join("overlay2");
        assert_eq!(std::fs::read_dir(home.join("l")).unwrap().count(), 1);
        let mut names: Vec<String> = std::fs::read_dir(&home)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".plies", "base", "l"]);
    }
}

#[test]
fn commands_after_the_first_use_the_cached_probes() {
    let root = Root::new();
    if root.driver != "overlay2" {
        eprintln!(
            "skipped: the probe cache is overlay2's (driver here: {})",
            root.driver
        );
        return;
    }
    root.ok(&["create", "base"]);
    let store = root.path().join("overlay2/.plies");
    let cache = store.join("overlay2-features.json");
    let probe_dir = store.join("probe");
    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let (cache_before, probe_before) = (stamp(&cache), stamp(&probe_dir));
    // A probe writes scratch into its directory and the cache anew: neither moves.
    root.ok(&["create", "child", "--parent", "base"]);
    root.ok(&["mount", "child"]);
    root.ok(&["umount", "child"]);
    root.ok(&["ls"]);
    assert_eq!(stamp(&cache), cache_before);
    assert_eq!(stamp(&probe_dir), probe_before);

    // Another kernel: probed again, and the cache holds this kernel's key again.
    let text = std::fs::read_to_string(&cache).unwrap();
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let needle = format!("\"kernel_release\": \"{release}\"");
    assert!(text.contains(&needle), "{text}");
    std::fs::write(
        &cache,
        text.replace(&needle, "\"kernel_release\": \"0.0.0-other\""),
    )
    .unwrap();
    root.ok(&["ls"]);
    assert_ne!(
        stamp(&probe_dir),
        probe_before,
        "a changed kernel key must re-probe"
    );
    assert!(std::fs::read_to_string(&cache).unwrap().contains(&needle));

    // A corrupt cache is replaced, never trusted.
    std::fs::write(&cache, b"{\"key\": {\"version\": 7}, \"value\": ").unwrap();
    root.ok(&["ls"]);
    assert!(std::fs::read_to_string(&cache).unwrap().contains(&needle));
    root.ok(&["rm", "child", "base"]);

    // `plies probe` forgets the cache: the next command probes afresh.
    root.ok(&["probe"]);
    assert!(!cache.exists());
    root.ok(&["ls"]);
    assert!(cache.exists());
}

/// The members of a tar, by name.
fn tar_members(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in tar::Archive::new(bytes).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

/// The layer tars of a `docker save` archive, bottom first, and its config.
fn saved_image(bytes: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let members = tar_members(bytes);
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    let config = members[manifest[0]["Config"].as_str().unwrap()].clone();
    let layers = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| members[l.as_str().unwrap()].clone())
        .collect();
    (config, layers)
}

/// `plies import` keeps each layer's tar-split and the image's config, so
/// `plies save` gives back the very layer tars and config it read: the real
/// image Docker saved, and one of gzip-compressed layers (saved uncompressed,
/// as their diff ids name them).
#[test]
fn import_then_save_gives_the_same_layer_tars_back() {
    let root = Root::new();
    let fixture = plies_testkit::fixtures_dir().join("docker-20.10-overlay2-store.image.tar");
    root.ok(&["import", fixture.to_str().unwrap()]);
    let img = Built::new(&image_layers(), &[Comp::Gzip]);
    let archive = root.dir.path().join("image.tar");
    docker_archive(&archive, &img);
    root.ok(&["import", archive.to_str().unwrap()]);

    let images: serde_json::Value = serde_json::from_str(&root.ok(&["--json", "images"])).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 2, "{images}");
    assert!(root.ok(&["images"]).contains("test/image:1"));

    let (want_config, want_layers) = saved_image(&std::fs::read(&fixture).unwrap());
    let out = root.dir.path().join("saved.tar");
    let id = sha256(&want_config);
    root.ok(&["save", &hex(&id)[..12], "-o", out.to_str().unwrap()]);
    let (config, layers) = saved_image(&std::fs::read(&out).unwrap());
    assert_eq!(config, want_config);
    assert_eq!(layers.len(), want_layers.len());
    for (i, (got, want)) in layers.iter().zip(&want_layers).enumerate() {
        assert!(got == want, "layer {i} differs from the one imported");
    }

    root.ok(&["save", "test/image:1", "-o", out.to_str().unwrap()]);
    let (config, layers) = saved_image(&std::fs::read(&out).unwrap());
    assert_eq!(config, img.config);
    assert_eq!(layers, img.tars);
    let members = tar_members(&std::fs::read(&out).unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["test/image:1"]));

    // As an OCI layout, which another store imports as the same image.
    let oci = root.dir.path().join("saved-oci.tar");
    root.ok(&[
        "save",
        "--format",
        "oci",
        "test/image:1",
        "-o",
        oci.to_str().unwrap(),
    ]);
    let other = Root::new();
    let top = other.ok(&["import", oci.to_str().unwrap()]);
    assert_eq!(top.trim(), img.top());
    let theirs: serde_json::Value = serde_json::from_str(&other.ok(&["--json", "images"])).unwrap();
    assert_eq!(theirs[0]["id"], sha256(&img.config));
    assert_eq!(theirs[0]["tags"], serde_json::json!(["test/image:1"]));

    // A removed layer makes the save fail, by name, and no file is left.
    let top = img.top();
    let removed = root.ok(&["rm", &top]);
    assert!(removed.contains(hex(&top)), "{removed}");
    std::fs::remove_file(&out).unwrap();
    root.fails(
        &["save", "test/image:1", "-o", out.to_str().unwrap()],
        1,
        "no such layer",
    );
    assert!(!out.exists());
}

/// A store plies holds no record for (as `plies serve docker` leaves one for
/// dockerd) lists with the store's own lineage and checks clean.
#[test]
fn a_store_without_records_lists_its_own_lineage() {
    let root = Root::new();
    if root.driver != "overlay2" {
        eprintln!("skipping a_store_without_records_lists_its_own_lineage: vfs keeps no lineage");
        assert!(!plies_testkit::kernel_required());
        return;
    }
    let fixture = plies_testkit::fixtures_dir().join("docker-20.10-overlay2-store.image.tar");
    let top = root
        .ok(&["import", fixture.to_str().unwrap()])
        .trim()
        .to_owned();
    root.ok(&["create", "--rw", "--parent", &top, "ctr"]);
    std::fs::remove_dir_all(root.path().join("plies")).unwrap();
    let ls: serde_json::Value = serde_json::from_str(&root.ok(&["--json", "ls"])).unwrap();
    let rows = ls.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{ls}");
    let ctr = rows.iter().find(|r| r["id"] == "ctr").unwrap();
    assert_eq!(ctr["parent"], top.as_str());
    assert_eq!(ctr["depth"], 3);
    assert!(root.ok(&["fsck"]).contains("clean"));
    root.ok(&["mount", "ctr"]);
    root.ok(&["umount", "ctr"]);
    root.fails(&["rm", &top], 1, "it is the parent of ctr");
}

/// The command line on the kernel's aufs gives what it gives on overlay2: the
/// same image imported into a store of each, its top layer mounted, the same
/// merged tree, the same changes and the same diff entries; then unmounted.
#[test]
fn cli_on_kernel_aufs_matches_overlay2() {
    const TEST: &str = "cli_on_kernel_aufs_matches_overlay2";
    if !plies_testkit::require_aufs(TEST) || !plies_testkit::require_overlay(TEST) {
        return;
    }
    let img = Built::new(&image_layers(), &[Comp::Gzip, Comp::Plain]);
    let mut seen = Vec::new();
    for driver in ["aufs", "overlay2"] {
        let mut root = Root::new();
        root.driver = driver;
        let archive = root.dir.path().join("image.tar");
        docker_archive(&archive, &img);
        let top = root
            .ok(&["import", archive.to_str().unwrap()])
            .trim()
            .to_owned();
        assert_eq!(top, img.top());
        let merged = PathBuf::from(root.ok(&["mount", &top]).trim());
        let tree = read_tree(&merged);
        let changes = root.ok(&["changes", &top]);
        let out = root.dir.path().join("diff.tar");
        root.ok(&["diff", &top, "-o", out.to_str().unwrap()]);
        let mut diff = tar_names(&std::fs::read(&out).unwrap());
        diff.sort();
        root.ok(&["umount", &top]);
        assert!(
            plies_testkit::mounts_under(root.dir.path()).is_empty(),
            "{driver}: a mount is left"
        );
        seen.push((driver, tree, changes, diff));
    }
    let (aufs, overlay2) = (&seen[0], &seen[1]);
    assert_eq!(aufs.1, overlay2.1, "merged trees differ");
    assert_eq!(aufs.1, expected_tree(&image_layers()));
    assert_eq!(aufs.2, overlay2.2, "changes differ");
    assert_eq!(aufs.3, overlay2.3, "diff entries differ");
}
