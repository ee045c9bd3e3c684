//! dockerd itself on plies: load, run, diff, commit, save, export and rmi
//! through the plugin, compared with dockerd's own overlay2.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plies_dockerplugin::{Config, DriverChoice};
use plies_testkit::dockerd::{Dockerd, prerequisites};
use plies_testkit::layer_tar::LayerTar;
use sha2::{Digest, Sha256};

use crate::protocol::Running;
use crate::tars::{Entry, layer};

/// Where dockerd looks for plugin sockets.
const PLUGIN_DIR: &str = "/run/docker/plugins";

/// Unmounts everything under a directory on drop, innermost first.
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        let mut mounts = plies_testkit::mounts_under(&self.0);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A two-layer image in `docker save` format: busybox and files in the first
/// layer; a whiteout, an opaque directory and new files in the second.
fn image_tar(busybox: &[u8]) -> Vec<u8> {
    let l1 = layer(&[
        Entry::Dir("bin"),
        Entry::Exec("bin/busybox", busybox),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::Symlink("bin/cat", "busybox"),
        Entry::Symlink("bin/ls", "busybox"),
        Entry::Symlink("bin/rm", "busybox"),
        Entry::Symlink("bin/mkdir", "busybox"),
        Entry::Symlink("bin/echo", "busybox"),
        Entry::Dir("etc"),
        Entry::File("etc/a", b"alpha\n"),
        Entry::File("etc/b", b"beta\n"),
        Entry::Dir("opt"),
        Entry::File("opt/old1", b"1\n"),
        Entry::Dir("opt/olddir"),
        Entry::File("opt/olddir/f", b"f\n"),
        Entry::Dir("tmp"),
    ]);
    let l2 = layer(&[
        Entry::Dir("etc"),
        Entry::File("etc/.wh.b", b""),
        Entry::File("etc/c", b"gamma\n"),
        Entry::Dir("opt"),
        Entry::File("opt/.wh..wh..opq", b""),
        Entry::File("opt/new", b"new\n"),
    ]);
    let ids = [sha256_hex(&l1), sha256_hex(&l2)];
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2020-09-13T12:26:40Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", ids[0]), format!("sha256:{}", ids[1])]},
        "history": [{"created_by": "layer one"}, {"created_by": "layer two"}],
    })
    .to_string();
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["plies-e2e:1"],
        "Layers": [format!("{}/layer.tar", ids[0]), format!("{}/layer.tar", ids[1])],
    }])
    .to_string();
    LayerTar::new()
        .file(format!("{}/layer.tar", ids[0]), &l1, 0o644)
        .file(format!("{}/layer.tar", ids[1]), &l2, 0o644)
        .file(&config_name, &config, 0o644)
        .file("manifest.json", &manifest, 0o644)
        .finish()
}

/// A `docker save` archive of one layer whose first entry is `../escape`,
/// followed by 8 MiB of file data.
fn hostile_image_tar() -> Vec<u8> {
    let l1 = crate::tars::climbing_layer(8 << 20);
    let id = sha256_hex(&l1);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{id}")]},
    })
    .to_string();
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["plies-e2e:hostile"],
        "Layers": [format!("{id}/layer.tar")],
    }])
    .to_string();
    LayerTar::new()
        .file(format!("{id}/layer.tar"), &l1, 0o644)
        .file(&config_name, &config, 0o644)
        .file("manifest.json", &manifest, 0o644)
        .finish()
}

/// One exported entry, all but its times.
#[derive(Debug, PartialEq, Eq)]
struct Exported {
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    link: Option<PathBuf>,
    sha256: String,
}

fn exported(tar_bytes: &[u8]) -> BTreeMap<PathBuf, Exported> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(tar_bytes);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(
            path,
            Exported {
                kind: h.entry_type().as_byte(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                link: h.link_name().unwrap().map(|l| l.into_owned()),
                sha256: sha256_hex(&data),
            },
        );
    }
    out
}

fn sorted_lines(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort_unstable();
    v
}

/// The whole Docker workflow on `driver` behind the plugin.
fn docker_workflow(test: &str, driver: DriverChoice) {
    let Some((dockerd, busybox)) = prerequisites(test) else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let _unmount = UnmountOnDrop(tmp.path().to_path_buf());
    let name = format!("pliese2e{}{}", std::process::id(), driver.as_str());
    let socket = Path::new(PLUGIN_DIR).join(format!("{name}.sock"));
    let server = Running::start(Config::new(&socket).with_driver(driver));

    let mut a = match Dockerd::start(&dockerd, &tmp.path().join("a"), &name, &[]) {
        Ok(d) => d,
        Err(reason) => {
            plies_testkit::require(test, false, &reason);
            return;
        }
    };
    let info = a.docker(&["info", "--format", "{{.Driver}}|{{json .DriverStatus}}"]);
    assert!(info.starts_with(&format!("{name}|")), "{info}");
    let home = tmp.path().join("a/data").join(&name);
    assert!(
        home.join(driver.as_str()).is_dir(),
        "the driver lives in dockerd's Home"
    );

    // Load an image whose second layer deletes a file and an opaque directory.
    let image = tmp.path().join("image.tar");
    std::fs::write(&image, image_tar(&busybox)).unwrap();
    let out = a.docker(&["load", "-i", image.to_str().unwrap()]);
    assert!(out.contains("Loaded image: plies-e2e:1"), "{out}");

    // A layer plies refuses (its first entry climbs out of the layer), 8 MiB
    // long: docker load fails at once with plies' reason, not a closed pipe.
    let hostile = tmp.path().join("hostile.tar");
    std::fs::write(&hostile, hostile_image_tar()).unwrap();
    let refused_at = Instant::now();
    let refused = a
        .try_docker(&["load", "-i", hostile.to_str().unwrap()])
        .expect_err("a layer climbing out of its root was loaded");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("climbs above the layer root"), "{stderr}");
    assert!(
        refused_at.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}: {stderr}",
        refused_at.elapsed()
    );

    // Containers read the merged tree.
    let run = ["run", "--rm", "--network", "none"];
    let out = a.docker(
        &[
            &run[..],
            &["plies-e2e:1", "cat", "/etc/a", "/etc/c", "/opt/new"],
        ]
        .concat(),
    );
    assert_eq!(out, "alpha\ngamma\nnew\n");
    let out = a.docker(&[&run[..], &["plies-e2e:1", "ls", "-a", "/etc", "/opt"]].concat());
    assert_eq!(
        out,
        "/etc:\n.\n..\na\nc\nhostname\nhosts\nmtab\nresolv.conf\n\n/opt:\n.\n..\nnew\n"
    );

    // A container changes files: docker diff sees exactly those; a commit keeps them.
    a.docker(&[
        "run",
        "--name",
        "changer",
        "--network",
        "none",
        "plies-e2e:1",
        "sh",
        "-c",
        "rm /etc/a && echo delta > /etc/d && mkdir /srv && echo s > /srv/f && rm -r /opt/new",
    ]);
    let diff = a.docker(&["diff", "changer"]);
    assert_eq!(
        sorted_lines(&diff),
        [
            "A /etc/d",
            "A /srv",
            "A /srv/f",
            "C /etc",
            "C /opt",
            "D /etc/a",
            "D /opt/new"
        ],
        "{diff}"
    );
    a.docker(&["commit", "changer", "plies-e2e:2"]);
    a.docker(&["rm", "changer"]);
    let out = a.docker(
        &[
            &run[..],
            &[
                "plies-e2e:2",
                "sh",
                "-c",
                "cat /etc/c /etc/d /srv/f; ls -a /etc /opt",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        out,
        "gamma\ndelta\ns\n/etc:\n.\n..\nc\nd\nhostname\nhosts\nmtab\nresolv.conf\n\n/opt:\n.\n..\n"
    );

    // docker save of the commit loads into dockerd's own overlay2: the same tree.
    let saved = tmp.path().join("saved.tar");
    a.docker(&["save", "-o", saved.to_str().unwrap(), "plies-e2e:2"]);
    let mut b = Dockerd::start(&dockerd, &tmp.path().join("b"), "overlay2", &[])
        .expect("a second dockerd on overlay2");
    let out = b.docker(&["load", "-i", saved.to_str().unwrap()]);
    assert!(out.contains("Loaded image: plies-e2e:2"), "{out}");
    let mut trees = Vec::new();
    for d in [&a, &b] {
        d.docker(&["create", "--name", "exported", "plies-e2e:2"]);
        let out = d.command(&["export", "exported"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.docker(&["rm", "exported"]);
        trees.push(exported(&out.stdout));
    }
    assert_eq!(trees[0], trees[1], "the same tree on plies and on overlay2");
    assert!(trees[0].contains_key(Path::new("srv/f")));
    assert!(!trees[0].contains_key(Path::new("etc/a")));
    assert_eq!(
        trees[0][Path::new("bin/busybox")].sha256,
        sha256_hex(&busybox)
    );
    b.stop();

    // rmi removes every layer: the store holds none afterwards.
    a.docker(&["rmi", "plies-e2e:2", "plies-e2e:1"]);
    assert_eq!(a.docker(&["images", "-q"]), "");
    let layers = stored(driver, &home.join(driver.as_str()));
    assert_eq!(
        layers,
        Vec::<String>::new(),
        "no layer left in the plies store"
    );

    a.stop();
    server.stop().unwrap();
    assert!(!socket.exists());
    if driver == DriverChoice::Overlay2 {
        let store = plies_layerstore::Overlay2Store::open(
            home.join("overlay2"),
            plies_layerstore::StoreOptions::default(),
        )
        .unwrap();
        assert_eq!(store.list().unwrap(), Vec::<String>::new());
        let report = store.fsck(false).unwrap();
        assert!(report.is_clean(), "{report:?}");
    }
    assert_eq!(
        plies_testkit::mounts_under(tmp.path()),
        Vec::<PathBuf>::new()
    );
    eprintln!("{test}: {:.1?}", started.elapsed());
}

/// What the driver's store under `root` holds: layers and their links (vfs
/// keeps layers in `dir/` and scratch in `tmp/`; overlay2 layers beside `l/`).
fn stored(driver: DriverChoice, root: &Path) -> Vec<String> {
    let list = |dir: &Path| -> Vec<String> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap().path().display().to_string())
                .collect(),
            // vfs makes `tmp/` for its first naive diff only.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.ends_with("tmp") => {
                Vec::new()
            }
            Err(e) => panic!("{dir:?}: {e}"),
        }
    };
    match driver {
        DriverChoice::Vfs => [list(&root.join("dir")), list(&root.join("tmp"))].concat(),
        // The store's own directory holds locks and probe answers; a lock of a
        // layer is gone with the layer.
        _ => list(root)
            .into_iter()
            .filter(|p| !p.ends_with("/l") && !p.ends_with("/.plies"))
            .chain(list(&root.join("l")))
            .chain(
                list(&root.join(".plies/locks"))
                    .into_iter()
                    .filter(|p| !p.rsplit('/').next().is_some_and(|n| n.starts_with('.'))),
            )
            .collect(),
    }
}

#[test]
fn docker_on_plies_overlay2() {
    if !plies_testkit::require_overlay("docker_on_plies_overlay2") {
        return;
    }
    docker_workflow("docker_on_plies_overlay2", DriverChoice::Overlay2);
}

#[test]
fn docker_on_plies_vfs() {
    docker_workflow("docker_on_plies_vfs", DriverChoice::Vfs);
}

/// The subordinate id files and the `dockremap` user as they were before a
/// test let dockerd's `--userns-remap=default` use them; put back on drop.
struct SubIds {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    user_existed: bool,
}

/// The user `--userns-remap=default` maps containers to.
const REMAP_USER: &str = "dockremap";

impl SubIds {
    /// Gives `dockremap` 65536 subordinate uids and gids (from 100000, or past
    /// the ranges the files hold) when the files have none for it.
    fn ensure() -> SubIds {
        let user_existed = Command::new("getent")
            .args(["passwd", REMAP_USER])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let mut files = Vec::new();
        for path in ["/etc/subuid", "/etc/subgid"] {
            let path = PathBuf::from(path);
            let before = std::fs::read(&path).ok();
            files.push((path.clone(), before.clone()));
            let text = String::from_utf8_lossy(before.as_deref().unwrap_or_default()).into_owned();
            if text
                .lines()
                .any(|l| l.starts_with(&format!("{REMAP_USER}:")))
            {
                continue;
            }
            let start = text
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(':').skip(1).map(|v| v.trim().parse::<u64>());
                    match (f.next(), f.next()) {
                        (Some(Ok(s)), Some(Ok(n))) => Some(s + n),
                        _ => None,
                    }
                })
                .fold(100_000, u64::max);
            let mut new = text;
            if !new.is_empty() && !new.ends_with('\n') {
                new.push('\n');
            }
            new.push_str(&format!("{REMAP_USER}:{start}:65536\n"));
            std::fs::write(&path, new).unwrap();
        }
        SubIds {
            files,
            user_existed,
        }
    }

    /// The first host id of `dockremap`'s range in `file`.
    fn start(file: &str) -> u32 {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{REMAP_USER}:")))
            .and_then(|rest| rest.split(':').next()?.trim().parse().ok())
            .expect("a range for dockremap")
    }
}

impl Drop for SubIds {
    fn drop(&mut self) {
        if !self.user_existed {
            let _ = Command::new("userdel")
                .arg(REMAP_USER)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for (path, before) in &self.files {
            match before {
                Some(bytes) => {
                    let _ = std::fs::write(path, bytes);
                }
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// Userns tests change the subordinate id files: one at a time.
static SUBIDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// dockerd with `--userns-remap=default` on a plies driver: layers are stored
/// under the remapped ids and containers run as the remapped root.
fn userns_remap(test: &str, driver: DriverChoice) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some((dockerd, busybox)) = prerequisites(test) else {
        return;
    };
    let started = Instant::now();
    let _one_at_a_time = SUBIDS.lock().unwrap_or_else(|e| e.into_inner());
    let subids = SubIds::ensure();
    let (uid, gid) = (SubIds::start("/etc/subuid"), SubIds::start("/etc/subgid"));
    let tmp = tempfile::tempdir().unwrap();
    // The remapped root walks through the data root's parents to its layers.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let _unmount = UnmountOnDrop(tmp.path().to_path_buf());
    let name = format!("pliese2e{}userns{}", std::process::id(), driver.as_str());
    let socket = Path::new(PLUGIN_DIR).join(format!("{name}.sock"));
    let server = Running::start(Config::new(&socket).with_driver(driver));
    let mut d = match Dockerd::start(
        &dockerd,
        &tmp.path().join("a"),
        &name,
        &["--userns-remap=default"],
    ) {
        Ok(d) => d,
        Err(reason) => {
            plies_testkit::require(test, false, &reason);
            return;
        }
    };
    let info = d.docker(&["info", "--format", "{{.Driver}}|{{json .SecurityOptions}}"]);
    assert!(
        info.starts_with(&format!("{name}|")) && info.contains("userns"),
        "{info}"
    );
    // dockerd gives the driver a Home under the remapped root's own data root.
    let home = tmp
        .path()
        .join("a/data")
        .join(format!("{uid}.{gid}"))
        .join(&name)
        .join(driver.as_str());

    let image = tmp.path().join("image.tar");
    std::fs::write(&image, image_tar(&busybox)).unwrap();
    let out = d.docker(&["load", "-i", image.to_str().unwrap()]);
    assert!(out.contains("Loaded image: plies-e2e:1"), "{out}");
    let run = ["run", "--rm", "--network", "none", "plies-e2e:1"];
    let out = d.docker(&[&run[..], &["cat", "/etc/a", "/etc/c", "/opt/new"]].concat());
    assert_eq!(out, "alpha\ngamma\nnew\n");
    // The container's root owns its files: it writes and deletes as root.
    let out = d.docker(
        &[
            &run[..],
            &[
                "sh",
                "-c",
                "echo w > /etc/w && rm /etc/a && cat /etc/w && ls /etc",
            ],
        ]
        .concat(),
    );
    assert_eq!(out, "w\nc\nhostname\nhosts\nmtab\nresolv.conf\nw\n");

    // On disk, the layers' roots and the image's files belong to the remapped
    // root (overlay2 keeps each layer's own files in `<id>/diff`; vfs a full
    // copy in `dir/<id>`).
    let layers: Vec<PathBuf> = match driver {
        DriverChoice::Vfs => std::fs::read_dir(home.join("dir"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect(),
        _ => std::fs::read_dir(&home)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with("l") && !p.ends_with(".plies"))
            .map(|p| p.join("diff"))
            .collect(),
    };
    assert_eq!(layers.len(), 2, "{layers:?}");
    let mut files = 0;
    for root in &layers {
        for dir in [root, root.parent().unwrap()] {
            let m = std::fs::metadata(dir).unwrap();
            assert_eq!((m.uid(), m.gid()), (uid, gid), "{dir:?}");
        }
        for file in ["etc/a", "etc/c", "bin/busybox"] {
            if let Ok(m) = std::fs::symlink_metadata(root.join(file)) {
                assert_eq!((m.uid(), m.gid()), (uid, gid), "{root:?}/{file}");
                files += 1;
            }
        }
    }
    let expected = if driver == DriverChoice::Vfs { 5 } else { 3 };
    assert_eq!(files, expected, "the image's files are in the store");

    d.docker(&["rmi", "plies-e2e:1"]);
    assert_eq!(d.docker(&["images", "-q"]), "");
    assert_eq!(
        stored(driver, &home),
        Vec::<String>::new(),
        "no layer left in the plies store"
    );
    d.stop();
    server.stop().unwrap();
    assert_eq!(
        plies_testkit::mounts_under(tmp.path()),
        Vec::<PathBuf>::new()
    );
    drop(subids);
    eprintln!("{test}: {:.1?}", started.elapsed());
}

#[test]
fn docker_on_plies_userns_remap() {
    if !plies_testkit::require_overlay("docker_on_plies_userns_remap") {
        return;
    }
    userns_remap("docker_on_plies_userns_remap", DriverChoice::Overlay2);
}

#[test]
fn docker_on_plies_vfs_userns_remap() {
    userns_remap("docker_on_plies_vfs_userns_remap", DriverChoice::Vfs);
}
