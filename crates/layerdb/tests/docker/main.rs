//! Docker's lineage read from the real Docker 20.10 data root in `fixtures/`
//! (three image layers and one container), plus an image store written here,
//! and files Docker would never write refused with the file named.

use std::path::{Path, PathBuf};
use std::process::Command;

use plies_layerdb::chain_id;
use plies_layerdb::docker::{DockerKind, DockerRoot};
use plies_layerdb::{Error, ImageStore};

const BASE: &str = "sha256:4105d678e27883a7bb1186388949143d5a0a577ce403ebd0d80c83375268110a";
const MID: &str = "sha256:0ceab6faad160e475e8ffad229c4e0b44567d4544b6a200c35d5b3375d137e8e";
const TOP: &str = "sha256:1ae6a702e2d496b9b9faad683d05230115571b246e49fdd657460a3cd66a74e1";
const TOP_CACHE: &str = "9060cfb51cbb6b38f9fe70cc4c15f137b677540aee0cf295c3742d699a5c437d";
const CONTAINER: &str = "fd85cfc5f7fa37b6a827f323092ae1cf4e813c62d1affa7d97f97a149a5de1ce";
const MOUNT: &str = "a44a1aee50359f8d10ffc3355a22ca9ed1ce1a7ad96b5584d0dc81b099558c3a";

/// The fixture's data root extracted into a temporary directory, or `None`
/// (after saying why) where the fixture or GNU tar is missing.
fn fixture_root(test: &str) -> Option<tempfile::TempDir> {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/docker-20.10-overlay2-store.tar.gz");
    if !archive.exists() {
        assert!(
            std::env::var_os("PLIES_REQUIRE_KERNEL").is_none(),
            "{test}: {} is missing",
            archive.display()
        );
        eprintln!("skipping {test}: {} is missing", archive.display());
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .args(["--numeric-owner", "-xzf"])
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("running tar");
    assert!(status.success());
    Some(dir)
}

fn layerdb(root: &Path) -> PathBuf {
    root.join("image/overlay2/layerdb")
}

#[test]
fn the_fixture_lineage_reads_as_docker_wrote_it() {
    let Some(dir) = fixture_root("the_fixture_lineage_reads_as_docker_wrote_it") else {
        return;
    };
    assert!(DockerRoot::detect(dir.path(), "overlay2"));
    assert!(!DockerRoot::detect(dir.path(), "aufs"));
    let db = DockerRoot::open(dir.path(), "overlay2").unwrap();
    let chains: Vec<&str> = db.layers().map(|l| l.chain_id.as_str()).collect();
    assert_eq!(chains, [MID, TOP, BASE]);
    let top = db.layer(TOP).unwrap();
    assert_eq!(top.cache_id, TOP_CACHE);
    assert_eq!(top.parent.as_deref(), Some(MID));
    assert_eq!(top.size, Some(23));
    assert!(top.tar_split.is_some());
    // The chain ids are the OCI chain of the diff ids.
    let diffs: Vec<String> = [BASE, MID, TOP]
        .iter()
        .map(|c| db.layer(c).unwrap().diff_id.clone())
        .collect();
    assert_eq!(chain_id(&diffs).as_deref(), Some(TOP));
    assert_eq!(chain_id(&diffs[..1]).as_deref(), Some(BASE));
    assert_eq!(chain_id(&[]), None);

    let [c] = db.containers() else {
        panic!("{:?}", db.containers())
    };
    assert_eq!(c.id, CONTAINER);
    assert_eq!(c.mount_id, MOUNT);
    assert_eq!(c.init_id.as_deref(), Some(&*format!("{MOUNT}-init")));
    assert_eq!(c.parent.as_deref(), Some(TOP));

    // In driver ids: the container's layer on its init layer on the image's top.
    let entries = db.entries();
    let find = |id: &str| entries.iter().find(|e| e.id == id).unwrap();
    assert_eq!(entries.len(), 5);
    let rw = find(MOUNT);
    assert_eq!(rw.kind, DockerKind::Container);
    assert_eq!(rw.parent.as_deref(), Some(&*format!("{MOUNT}-init")));
    assert_eq!(rw.depth, 4);
    let init = find(&format!("{MOUNT}-init"));
    assert_eq!(init.kind, DockerKind::Init);
    assert_eq!(init.parent.as_deref(), Some(TOP_CACHE));
    let top = find(TOP_CACHE);
    assert_eq!(top.depth, 2);
    assert_eq!(top.containers, [CONTAINER]);
    assert_eq!(top.chain_id.as_deref(), Some(TOP));

    // Every way of naming a layer.
    assert_eq!(db.resolve(TOP).unwrap(), TOP_CACHE);
    assert_eq!(db.resolve(&TOP["sha256:".len()..]).unwrap(), TOP_CACHE);
    assert_eq!(db.resolve("1ae6a7").unwrap(), TOP_CACHE);
    assert_eq!(db.resolve(TOP_CACHE).unwrap(), TOP_CACHE);
    assert_eq!(db.resolve("9060cf").unwrap(), TOP_CACHE);
    assert_eq!(db.resolve(CONTAINER).unwrap(), MOUNT);
    assert_eq!(db.resolve("fd85").unwrap(), MOUNT);
    assert_eq!(
        db.resolve(&format!("{MOUNT}-init")).unwrap(),
        format!("{MOUNT}-init")
    );
    assert!(matches!(
        db.resolve("a44a1a"),
        Err(Error::Ambiguous { count: 2, .. })
    ));
    assert!(matches!(db.resolve("ffff"), Err(Error::NoSuchLayer { .. })));
    assert!(matches!(db.resolve(""), Err(Error::NoSuchLayer { .. })));
    assert!(db.images().unwrap().is_empty());
}

#[test]
fn images_come_from_the_image_store_and_repositories_json() {
    let Some(dir) = fixture_root("images_come_from_the_image_store_and_repositories_json") else {
        return;
    };
    let db = DockerRoot::open(dir.path(), "overlay2").unwrap();
    let diffs: Vec<String> = [BASE, MID, TOP]
        .iter()
        .map(|c| db.layer(c).unwrap().diff_id.clone())
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-02T03:04:05Z",
        "rootfs": {"type": "layers", "diff_ids": diffs},
    })
    .to_string();
    let id = {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(config.as_bytes());
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let content = dir.path().join("image/overlay2/imagedb/content/sha256");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join(&id), &config).unwrap();
    std::fs::write(
        dir.path().join("image/overlay2/repositories.json"),
        format!(
            r#"{{"Repositories":{{"test/image":{{"test/image:1":"sha256:{id}","test/image@sha256:{id}":"sha256:{id}"}}}}}}"#
        ),
    )
    .unwrap();
    let images = db.images().unwrap();
    let [image] = images.as_slice() else {
        panic!("{images:?}")
    };
    assert_eq!(image.id, format!("sha256:{id}"));
    assert_eq!(
        image.tags,
        ["test/image:1".to_owned(), format!("test/image@sha256:{id}")]
    );
    assert_eq!(image.chain_id.as_deref(), Some(TOP));
    assert_eq!(image.created.as_deref(), Some("2026-01-02T03:04:05Z"));
    let (by_tag, bytes) = db.image("test/image:1").unwrap();
    assert_eq!(by_tag.id, image.id);
    assert_eq!(bytes, config.as_bytes());
    assert_eq!(db.image(&id[..8]).unwrap().0.id, image.id);
    assert!(matches!(db.image("nope"), Err(Error::NoSuchImage { .. })));
}

#[test]
fn files_docker_never_writes_are_refused_by_name() {
    let Some(dir) = fixture_root("files_docker_never_writes_are_refused_by_name") else {
        return;
    };
    let top = layerdb(dir.path())
        .join("sha256")
        .join(&TOP["sha256:".len()..]);
    let cases: [(&str, &[u8]); 4] = [
        ("cache-id", b"../../etc"),
        ("parent", b"sha256:xyz"),
        ("size", b"lots"),
        ("diff", &[b'x'; 5000]),
    ];
    for (file, bytes) in cases {
        let path = top.join(file);
        let kept = std::fs::read(&path).unwrap();
        std::fs::write(&path, bytes).unwrap();
        match DockerRoot::open(dir.path(), "overlay2") {
            Err(Error::BadDockerFile { path: named, .. }) => assert_eq!(named, path),
            other => panic!("{file}: {other:?}"),
        }
        std::fs::write(&path, kept).unwrap();
    }
    // A symlink is never followed out of the root.
    let path = top.join("cache-id");
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
    assert!(DockerRoot::open(dir.path(), "overlay2").is_err());
    // A directory Docker is still making (no `mount-id` yet) is not a container.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, TOP_CACHE).unwrap();
    let half = layerdb(dir.path()).join("mounts").join("ab".repeat(32));
    std::fs::create_dir_all(&half).unwrap();
    assert_eq!(
        DockerRoot::open(dir.path(), "overlay2")
            .unwrap()
            .containers()
            .len(),
        1
    );
}

/// The layer tars in the fixture's `docker save` archive, by diff id.
fn saved_layers() -> std::collections::BTreeMap<String, Vec<u8>> {
    use sha2::Digest as _;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/docker-20.10-overlay2-store.image.tar");
    let bytes = std::fs::read(path).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(&bytes[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("layer.tar") {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            let digest = sha2::Sha256::digest(&data);
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            out.insert(format!("sha256:{hex}"), data);
        }
    }
    out
}

#[test]
fn layer_tars_come_back_byte_for_byte_from_tar_split() {
    const TEST: &str = "layer_tars_come_back_byte_for_byte_from_tar_split";
    let Some(dir) = fixture_root(TEST) else {
        return;
    };
    let db = DockerRoot::open(dir.path(), "overlay2").unwrap();
    let saved = saved_layers();
    assert_eq!(saved.len(), 3);
    for layer in db.layers() {
        let mut tar = Vec::new();
        let n = db.write_layer_tar(&layer.chain_id, &mut tar).unwrap();
        assert_eq!(n, tar.len() as u64);
        assert_eq!(db.layer_tar_size(&layer.chain_id).unwrap(), n);
        assert!(
            saved[&layer.diff_id] == tar,
            "layer {} differs from the tar Docker saved",
            layer.chain_id
        );
    }
    // A file changed in the layer is caught, by name.
    let top = db.layer(TOP).unwrap();
    let file = first_file(&db.layer_files(&top.cache_id)).expect("a file in the top layer");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    match db.write_layer_tar(TOP, &mut Vec::new()) {
        Err(Error::TarSplit { chain_id, .. }) => assert_eq!(chain_id, TOP),
        other => panic!("{other:?}"),
    }
    // A tar-split naming a file outside the layer opens nothing there.
    let base = db.layer(BASE).unwrap();
    let hostile = {
        let mut packer = plies_tarsplit::Packer::gzip(Vec::new());
        packer
            .add(&plies_tarsplit::EntryKind::file(
                "../../../../etc/hostname",
                b"x",
            ))
            .unwrap();
        packer.finish().unwrap().finish().unwrap()
    };
    std::fs::write(base.tar_split.as_ref().unwrap(), hostile).unwrap();
    match db.write_layer_tar(BASE, &mut Vec::new()) {
        Err(Error::TarSplit { chain_id, .. }) => assert_eq!(chain_id, BASE),
        other => panic!("{other:?}"),
    }
}

/// A regular file with contents under `dir`.
fn first_file(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        let meta = path.symlink_metadata().ok()?;
        if meta.is_file() && meta.len() > 0 {
            return Some(path);
        }
        if meta.is_dir() {
            if let Some(found) = first_file(&path) {
                return Some(found);
            }
        }
    }
    None
}
