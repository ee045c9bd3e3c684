//! Parsers on fixture contents: kernel releases, `/proc/filesystems`, id maps.

use plies_kprobe::{
    BackingFs, Filesystems, IdMapping, KernelVersion, Outcome, is_initial_id_map, parse_id_map,
};
use proptest::prelude::*;

#[test]
fn kernel_releases() {
    let cases = [
        ("6.18.44-fc-v657", (6, 18, 44), "-fc-v657"),
        ("6.1.0-28-amd64", (6, 1, 0), "-28-amd64"),
        ("4.19.0+", (4, 19, 0), "+"),
        ("6.8.0-rc3", (6, 8, 0), "-rc3"),
        ("5.10", (5, 10, 0), ""),
        ("5.15.0-1051-azure", (5, 15, 0), "-1051-azure"),
        ("3.10.0-1160.el7.x86_64", (3, 10, 0), "-1160.el7.x86_64"),
        ("6.9-rc1", (6, 9, 0), "-rc1"),
        ("5.4.0.", (5, 4, 0), "."),
    ];
    for (release, numbers, suffix) in cases {
        let v = KernelVersion::parse(release).expect(release);
        assert_eq!(v.numbers(), numbers, "{release}");
        assert_eq!(v.suffix, suffix, "{release}");
    }
}

#[test]
fn bad_kernel_releases() {
    for release in ["", "6", "6.", ".1", "v6.1", "6.x", "99999999999.1", "linux"] {
        assert!(
            matches!(
                KernelVersion::parse(release),
                Err(plies_kprobe::Error::KernelRelease { .. })
            ),
            "{release}"
        );
    }
}

#[test]
fn kernel_versions_compare_by_numbers() {
    let v = |s: &str| KernelVersion::parse(s).expect(s);
    assert!(v("6.18.44-fc-v657") > v("6.8.0"));
    assert!(v("6.8.0-rc3") == v("6.8.0"));
    assert!(v("4.19.0+") < v("4.20"));
    assert!(v("5.10.200") < v("5.11"));
    assert!(v("4.7.0") > v("4.6.99"));
    assert!(v("5.11.0").at_least(5, 11, 0));
    assert!(!v("5.10.250").at_least(5, 11, 0));
}

const PROC_FILESYSTEMS: &str = "nodev\tsysfs\nnodev\ttmpfs\nnodev\tproc\n\text3\n\text2\n\text4\nnodev\toverlay\n\txfs\nnodev\tfuse\n";

#[test]
fn proc_filesystems() {
    let fs = Filesystems::parse(PROC_FILESYSTEMS).expect("parse");
    assert_eq!(fs.entries.len(), 9);
    assert!(fs.has("overlay") && fs.has("ext4") && fs.has("xfs"));
    assert!(!fs.has("aufs") && !fs.has("nodev"));
    let overlay = fs
        .entries
        .iter()
        .find(|e| e.name == "overlay")
        .expect("overlay");
    assert!(overlay.nodev);
    let ext4 = fs.entries.iter().find(|e| e.name == "ext4").expect("ext4");
    assert!(!ext4.nodev);
    assert!(Filesystems::parse("").expect("empty").entries.is_empty());
}

#[test]
fn bad_proc_filesystems() {
    for text in ["overlay\n", "bogus\toverlay\n", "nodev\t\n", "nodev\ta b\n"] {
        assert!(
            matches!(
                Filesystems::parse(text),
                Err(plies_kprobe::Error::FilesystemsLine { line: 1, .. })
            ),
            "{text:?}"
        );
    }
}

#[test]
fn uid_maps() {
    let initial = parse_id_map("         0          0 4294967295\n").expect("initial");
    assert!(is_initial_id_map(&initial));

    let rootless = parse_id_map("0 1000 1\n1 100000 65536\n").expect("rootless");
    assert_eq!(
        rootless,
        [
            IdMapping {
                inside: 0,
                outside: 1000,
                count: 1
            },
            IdMapping {
                inside: 1,
                outside: 100000,
                count: 65536
            }
        ]
    );
    assert!(!is_initial_id_map(&rootless));

    let remapped = parse_id_map("0 100000 65536").expect("remapped");
    assert!(!is_initial_id_map(&remapped));
    // Full range but shifted: still a nested namespace.
    assert!(!is_initial_id_map(
        &parse_id_map("0 1 4294967295").expect("shifted")
    ));
    // An empty map (namespace made, map not written yet) is not the initial one.
    assert!(!is_initial_id_map(&parse_id_map("").expect("empty")));
}

#[test]
fn bad_uid_maps() {
    for text in ["0 0", "0 0 4294967296", "a b c", "0 0 1 2", "0 0 -1"] {
        assert!(
            matches!(
                parse_id_map(text),
                Err(plies_kprobe::Error::IdMapLine { line: 1, .. })
            ),
            "{text:?}"
        );
    }
}

#[test]
fn magic_table() {
    assert!(plies_kprobe::FS_MAGIC_NAMES.len() >= 20);
    let mut magics: Vec<u64> = plies_kprobe::FS_MAGIC_NAMES
        .iter()
        .map(|(m, _)| *m)
        .collect();
    magics.sort();
    magics.dedup();
    assert_eq!(
        magics.len(),
        plies_kprobe::FS_MAGIC_NAMES.len(),
        "duplicate magic"
    );
    assert_eq!(BackingFs::from_magic(0xEF53).to_string(), "extfs");
    assert_eq!(BackingFs::from_magic(0x5846_5342).to_string(), "xfs");
    assert_eq!(BackingFs::from_magic(0x1234).to_string(), "<unknown>");
}

#[test]
fn backing_rules() {
    let k = |s: &str| KernelVersion::parse(s).expect(s);
    let fs = BackingFs::from_magic;
    for bad in [
        plies_kprobe::MAGIC_AUFS,
        plies_kprobe::MAGIC_ECRYPTFS,
        plies_kprobe::MAGIC_NFS,
        plies_kprobe::MAGIC_OVERLAY,
        plies_kprobe::MAGIC_ZFS,
    ] {
        let o = plies_kprobe::overlay2_backing_ok(&fs(bad), &k("6.1"));
        assert!(
            o.reason()
                .expect("refused")
                .contains(fs(bad).name.expect("named"))
        );
    }
    let btrfs = fs(plies_kprobe::MAGIC_BTRFS);
    assert!(!plies_kprobe::overlay2_backing_ok(&btrfs, &k("4.6.7")).is_supported());
    assert_eq!(
        plies_kprobe::overlay2_backing_ok(&btrfs, &k("4.7.0")),
        Outcome::supported(())
    );
    assert_eq!(
        plies_kprobe::overlay2_backing_ok(&fs(0xEF53), &k("3.18")),
        Outcome::supported(())
    );

    for bad in [
        plies_kprobe::MAGIC_AUFS,
        plies_kprobe::MAGIC_BTRFS,
        plies_kprobe::MAGIC_ECRYPTFS,
    ] {
        assert!(!plies_kprobe::aufs_backing_ok(&fs(bad)).is_supported());
    }
    for ok in [
        0xEF53,
        plies_kprobe::MAGIC_XFS,
        plies_kprobe::MAGIC_ZFS,
        plies_kprobe::MAGIC_NFS,
    ] {
        assert!(plies_kprobe::aufs_backing_ok(&fs(ok)).is_supported());
    }
}

proptest! {
    #[test]
    fn version_display_round_trips(
        major in 0u32..100_000,
        minor in 0u32..100_000,
        patch in 0u32..100_000,
        suffix in "([-+_~][-+_.~a-z0-9]{0,12})?",
    ) {
        let release = format!("{major}.{minor}.{patch}{suffix}");
        let v = KernelVersion::parse(&release).expect("parses");
        prop_assert_eq!(v.numbers(), (major, minor, patch));
        prop_assert_eq!(v.to_string(), release);
    }

    #[test]
    fn parsers_never_panic(s in "\\PC{0,64}") {
        let _ = KernelVersion::parse(&s);
        let _ = Filesystems::parse(&s);
        let _ = parse_id_map(&s);
    }

    #[test]
    fn comparisons_follow_the_numbers(a in (0u32..20, 0u32..20, 0u32..20), b in (0u32..20, 0u32..20, 0u32..20)) {
        let va = KernelVersion::new(a.0, a.1, a.2);
        let vb = KernelVersion::new(b.0, b.1, b.2);
        prop_assert_eq!(va.cmp(&vb), a.cmp(&b));
        prop_assert_eq!(va.at_least(b.0, b.1, b.2), a >= b);
    }
}
