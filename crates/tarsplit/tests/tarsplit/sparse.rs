//! Sparse files as GNU tar writes them (old GNU `S` headers with extension
//! blocks, and the PAX formats 0.0, 0.1 and 1.0): their stored data is recorded
//! in segments, so the tar assembles again without the expanded file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use plies_tarsplit::EntryKind;

use crate::{assemble_from, disassemble, files, pack, unpack};

/// A file of 4 MiB with twelve small islands of data in holes: more fragments
/// than an old GNU header holds, so it needs an extension block.
fn sparse_file(path: &Path) {
    let mut file = File::create(path).unwrap();
    for i in 0..12u64 {
        file.seek(SeekFrom::Start(i * 300_000 + 70_000)).unwrap();
        file.write_all(format!("island {i}").as_bytes()).unwrap();
    }
    file.set_len(4 << 20).unwrap();
}

fn gnu_tar_available() -> bool {
    Command::new("tar")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("GNU tar"))
}

#[test]
fn gnu_tar_sparse_files_are_recorded_as_segments() {
    if !plies_testkit::require(
        "gnu_tar_sparse_files_are_recorded_as_segments",
        gnu_tar_available(),
        "GNU tar is not installed",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    sparse_file(&dir.join("sparse"));
    std::fs::write(dir.join("plain"), b"plain contents\n").unwrap();
    let plain: HashMap<Vec<u8>, Vec<u8>> =
        HashMap::from([(b"plain".to_vec(), b"plain contents\n".to_vec())]);

    for format in [
        &["--format=gnu"][..],
        &["--format=posix", "--sparse-version=0.0"],
        &["--format=posix", "--sparse-version=0.1"],
        &["--format=posix", "--sparse-version=1.0"],
    ] {
        let out = tmp.path().join("out.tar");
        let status = Command::new("tar")
            .args(format)
            .args(["--sparse", "--numeric-owner", "-C"])
            .arg(&dir)
            .arg("-cf")
            .arg(&out)
            .args(["sparse", "plain"])
            .status()
            .unwrap();
        assert!(status.success(), "{format:?}");
        let tar = std::fs::read(&out).unwrap();
        assert!(
            tar.len() < 1 << 20,
            "{format:?}: the file was not stored sparse"
        );

        let entries = disassemble(&tar, vec![333]);
        let names: Vec<_> = files(&entries);
        assert_eq!(names.len(), 2, "{format:?}: {names:?}");
        match &names[0] {
            EntryKind::File {
                name,
                size: 0,
                crc64: None,
            } => {
                assert!(
                    name.ends_with(b"sparse"),
                    "{format:?}: {}",
                    name.escape_ascii()
                );
            }
            other => panic!("{format:?}: {other:?}"),
        }
        assert_eq!(names[1], EntryKind::file("plain", b"plain contents\n"));
        assert_eq!(unpack(&pack(&entries)), entries);
        assert!(assemble_from(&entries, &plain) == tar, "{format:?}");
    }
}
