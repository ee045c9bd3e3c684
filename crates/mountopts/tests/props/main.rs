//! Properties of every plan: within the page, decodable back to the input, no panics.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use plies_mountopts::aufs::decode_branches;
use plies_mountopts::escape::{split_lowerdir, split_options};
use plies_mountopts::{
    AufsStack, FSCONFIG_VALUE_MAX, FsParam, LayerPath, MountMode, OverlayOptions, OverlayPlan,
    OverlayStack, UpperDirs, mount_data_limit, plan, plan_aufs,
};
use proptest::prelude::*;

/// Path components from a mix of plain bytes and the characters overlay escapes.
fn component() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(b"abcXYZ019_-.".to_vec()),
            1 => prop::sample::select(b":,\\=\" ".to_vec()),
            1 => 1u8..=255,
        ],
        1..24,
    )
    .prop_filter("not . or ..", |c| c != b"." && c != b"..")
}

fn abs_path() -> impl Strategy<Value = PathBuf> {
    prop::collection::vec(component(), 1..4).prop_map(|parts| {
        let mut bytes = Vec::new();
        for p in parts {
            bytes.push(b'/');
            bytes.extend(p.into_iter().filter(|&b| b != b'/'));
        }
        PathBuf::from(OsString::from_vec(bytes))
    })
}

fn layer(home: PathBuf) -> impl Strategy<Value = LayerPath> {
    (abs_path(), any::<bool>()).prop_map(move |(p, in_home)| {
        if in_home {
            let rel = p.strip_prefix("/").unwrap().to_path_buf();
            LayerPath::in_home(&home, rel)
        } else {
            LayerPath::absolute(p)
        }
    })
}

fn stack() -> impl Strategy<Value = OverlayStack> {
    abs_path().prop_flat_map(|home| {
        (
            prop::collection::vec(layer(home.clone()), 0..160),
            prop::option::of((layer(home.clone()), layer(home.clone()))),
            Just(home),
        )
            .prop_map(|(lowers, upper, home)| OverlayStack {
                home,
                lowers,
                upper: upper.map(|(upper, work)| UpperDirs { upper, work }),
            })
    })
}

fn options() -> impl Strategy<Value = OverlayOptions> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::option::of("[a-z_:0-9,]{1,60}"),
        prop_oneof![Just(128usize), Just(500), 0usize..600],
    )
        .prop_map(|(index_off, userxattr, label, max_depth)| {
            let mut o = OverlayOptions::default();
            o.index_off = index_off;
            o.userxattr = userxattr;
            o.label = label;
            o.max_depth = max_depth;
            o
        })
}

fn chosen(layer: &LayerPath, relative: bool) -> &Path {
    if relative {
        layer.relative.as_deref().unwrap()
    } else {
        &layer.absolute
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn overlay_plans_fit_and_decode_back(stack in stack(), opts in options(), mode in prop::sample::select(vec![MountMode::Auto, MountMode::Legacy, MountMode::Fsconfig])) {
        let Ok(p) = plan(&stack, &opts, mode) else { return Ok(()); };
        match p {
            OverlayPlan::Legacy(p) => {
                prop_assert!(p.data.len() <= mount_data_limit());
                let relative = p.cwd.is_some();
                let options = split_options(&p.data);
                let lowerdir = options
                    .iter()
                    .find_map(|o| o.as_encoded_bytes().strip_prefix(b"lowerdir=").map(|v| v.to_vec()))
                    .expect("lowerdir option");
                let lowers = split_lowerdir(&OsString::from_vec(lowerdir));
                let expected: Vec<PathBuf> = stack.lowers.iter().map(|l| chosen(l, relative).to_path_buf()).collect();
                prop_assert_eq!(lowers, expected);
                if let Some(label) = opts.label.as_deref().filter(|l| !l.is_empty()) {
                    let last = options.last().unwrap().to_str().unwrap().to_string();
                    prop_assert_eq!(last, format!("context=\"{label}\""));
                }
            }
            OverlayPlan::Fsconfig(p) => {
                let relative = p.cwd.is_some();
                let lowers: Vec<PathBuf> = p.params.iter().filter_map(|param| match param {
                    FsParam::String("lowerdir+", v) => Some(PathBuf::from(v)),
                    _ => None,
                }).collect();
                let expected: Vec<PathBuf> = stack.lowers.iter().map(|l| chosen(l, relative).to_path_buf()).collect();
                prop_assert_eq!(lowers, expected);
                for param in &p.params {
                    if let FsParam::String(_, v) = param {
                        prop_assert!(v.len() <= FSCONFIG_VALUE_MAX);
                    }
                }
                prop_assert!(stack.lowers.len() <= opts.max_depth.min(500));
            }
        }
    }

    #[test]
    fn aufs_calls_fit_and_decode_back(
        rw in abs_path(),
        ro in prop::collection::vec(abs_path(), 0..300),
        label in prop::option::of("[a-z_:0-9,]{1,60}"),
        dirperm1 in any::<bool>(),
    ) {
        let stack = AufsStack { rw, ro, label, dirperm1 };
        let Ok(calls) = plan_aufs(&stack) else { return Ok(()); };
        for call in &calls {
            prop_assert!(call.data().len() <= mount_data_limit());
        }
        prop_assert_eq!(decode_branches(&calls), Some((stack.rw.clone(), stack.ro.clone())));
    }

    #[test]
    fn long_aufs_branches_never_loop(len in 3000usize..9000, n in 1usize..4) {
        let ro = (0..n).map(|i| PathBuf::from(format!("/{}{i}", "b".repeat(len)))).collect();
        let stack = AufsStack { rw: "/rw".into(), ro, label: None, dirperm1: false };
        let _ = plan_aufs(&stack);
    }
}
