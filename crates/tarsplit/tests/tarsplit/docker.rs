//! Docker 20.10's own tar-split files, from the real overlay2 store in
//! `fixtures/`: assembled from the layers' diff directories they give exactly
//! the layer tars of the image Docker loaded (their digests are the diff ids),
//! and disassembling those tars gives the same entries — and the same JSON
//! bytes — as Docker wrote.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use plies_tarsplit::{Disassembler, Packer, Unpacker, assemble};
use sha2::{Digest, Sha256};

use crate::unpack;

const STORE: &str = "docker-20.10-overlay2-store.tar.gz";
const IMAGE: &str = "docker-20.10-overlay2-store.image.tar";

fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Extracts the store's layer records and diff directories (regular files and
/// directories: the whiteout devices and links are never opened by assembly).
fn extract_store(archive: &Path, into: &Path) {
    let mut store = tar::Archive::new(GzDecoder::new(File::open(archive).unwrap()));
    for member in store.entries().unwrap() {
        let mut member = member.unwrap();
        let path = member.path().unwrap().into_owned();
        let wanted =
            path.starts_with("image/") || path.components().any(|c| c.as_os_str() == "diff");
        let kind = member.header().entry_type();
        if wanted && (kind.is_file() || kind.is_dir()) {
            assert!(member.unpack_in(into).unwrap(), "{path:?} escapes");
        }
    }
}

/// The image's layer tars by digest.
fn image_layers(archive: &Path) -> HashMap<String, Vec<u8>> {
    let mut image = tar::Archive::new(File::open(archive).unwrap());
    let mut layers = HashMap::new();
    for member in image.entries().unwrap() {
        let mut member = member.unwrap();
        if member.path().unwrap().ends_with("layer.tar") {
            let mut data = Vec::new();
            member.read_to_end(&mut data).unwrap();
            layers.insert(sha256(&data), data);
        }
    }
    layers
}

struct Layer {
    diff_id: String,
    diff_dir: PathBuf,
    tar_split_gz: Vec<u8>,
}

fn layer_records(root: &Path) -> Vec<Layer> {
    let layerdb = root.join("image/overlay2/layerdb/sha256");
    let mut layers = Vec::new();
    for dir in fs::read_dir(layerdb).unwrap() {
        let dir = dir.unwrap().path();
        let cache_id = fs::read_to_string(dir.join("cache-id")).unwrap();
        layers.push(Layer {
            diff_id: fs::read_to_string(dir.join("diff")).unwrap(),
            diff_dir: root.join("overlay2").join(cache_id.trim()).join("diff"),
            tar_split_gz: fs::read(dir.join("tar-split.json.gz")).unwrap(),
        });
    }
    layers
}

#[test]
fn docker_tar_split_assembles_and_disassembles_exactly() {
    let fixtures = plies_testkit::fixtures_dir();
    let (store, image) = (fixtures.join(STORE), fixtures.join(IMAGE));
    if !plies_testkit::require(
        "docker_tar_split_assembles_and_disassembles_exactly",
        store.exists() && image.exists(),
        &format!(
            "the fixtures {STORE} and {IMAGE} are not in {}",
            fixtures.display()
        ),
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    extract_store(&store, tmp.path());
    let layers = image_layers(&image);
    let records = layer_records(tmp.path());
    assert_eq!(records.len(), 3, "the image has three layers");

    for layer in records {
        let tar = &layers[layer.diff_id.trim()];

        // Assembly: Docker's tar-split and the diff directory give the layer tar.
        let files = |name: &[u8]| File::open(layer.diff_dir.join(OsStr::from_bytes(name)));
        let mut assembled = Vec::new();
        let written = assemble(
            Unpacker::gzip(&layer.tar_split_gz[..]),
            files,
            &mut assembled,
        )
        .unwrap();
        assert_eq!(written, tar.len() as u64);
        assert_eq!(sha256(&assembled), layer.diff_id.trim());
        assert!(assembled == *tar);

        // Disassembly: the same entries Docker recorded, in the same bytes.
        let mut docker_json = Vec::new();
        GzDecoder::new(&layer.tar_split_gz[..])
            .read_to_end(&mut docker_json)
            .unwrap();
        let docker = unpack(&docker_json);
        let ours = Disassembler::new(&tar[..], Vec::new())
            .empty_final_segment(true)
            .finish()
            .unwrap();
        assert_eq!(ours, docker, "layer {}", layer.diff_id.trim());
        let json = Disassembler::new(&tar[..], Packer::new(Vec::new()))
            .empty_final_segment(true)
            .finish()
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            String::from_utf8(docker_json).unwrap()
        );

        // Without the empty final segment of that tar-split version: the same
        // entries less that one.
        let current = Disassembler::new(&tar[..], Vec::new()).finish().unwrap();
        assert_eq!(current[..], docker[..docker.len() - 1]);

        // And a gzipped tar-split of ours reads back the same.
        let gz = Disassembler::new(&tar[..], Packer::gzip(Vec::new()))
            .finish()
            .unwrap()
            .finish()
            .unwrap()
            .finish()
            .unwrap();
        let back: Vec<_> = Unpacker::gzip(&gz[..]).collect::<Result<_, _>>().unwrap();
        assert_eq!(back, current);
    }
}
