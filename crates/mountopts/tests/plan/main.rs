//! Plans for Docker-format stacks, checked byte for byte.

use std::path::{Path, PathBuf};

use plies_mountopts::aufs::decode_branches;
use plies_mountopts::{
    AufsCall, AufsStack, Error, FsParam, LayerPath, MAX_DEPTH, MountMode, OverlayOptions,
    OverlayPlan, OverlayStack, UpperDirs, mount_data_limit, plan, plan_aufs, plan_fsconfig,
    plan_legacy,
};

const HOME: &str = "/var/lib/docker/overlay2";
const ID: &str = "9060cfb51cbb6b38f9fe70cc4c15f137b677540aee0cf295c3742d699a5c437d";

fn link_id(i: usize) -> String {
    // 26 characters of the base32 alphabet, distinct per i.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..26)
        .map(|k| alphabet[(i * 7 + k * 3 + i / 32) % 32] as char)
        .collect()
}

fn docker_stack(depth: usize) -> OverlayStack {
    let home = Path::new(HOME);
    OverlayStack {
        home: home.to_path_buf(),
        lowers: (0..depth)
            .map(|i| LayerPath::in_home(home, format!("l/{}", link_id(i))))
            .collect(),
        upper: Some(UpperDirs {
            upper: LayerPath::in_home(home, format!("{ID}/diff")),
            work: LayerPath::in_home(home, format!("{ID}/work")),
        }),
    }
}

fn docker_opts(label: Option<&str>) -> OverlayOptions {
    let mut o = OverlayOptions::default();
    o.index_off = true;
    o.label = label.map(str::to_string);
    o
}

#[test]
fn three_lowers_with_label() {
    let stack = docker_stack(3);
    let label = "system_u:object_r:container_file_t:s0:c123,c456";
    let plan = plan_legacy(&stack, &docker_opts(Some(label))).unwrap();
    let expected = format!(
        "index=off,lowerdir={HOME}/l/{}:{HOME}/l/{}:{HOME}/l/{},upperdir={HOME}/{ID}/diff,\
         workdir={HOME}/{ID}/work,context=\"{label}\"",
        link_id(0),
        link_id(1),
        link_id(2)
    );
    assert_eq!(plan.data.to_str().unwrap(), expected);
    assert_eq!(plan.cwd, None);
}

#[test]
fn deep_stack_falls_back_to_relative_paths() {
    let stack = docker_stack(MAX_DEPTH);
    let plan = plan_legacy(&stack, &docker_opts(None)).unwrap();
    let lowers: Vec<String> = (0..MAX_DEPTH)
        .map(|i| format!("l/{}", link_id(i)))
        .collect();
    let expected = format!(
        "index=off,lowerdir={},upperdir={ID}/diff,workdir={ID}/work",
        lowers.join(":")
    );
    assert_eq!(plan.data.to_str().unwrap(), expected);
    assert_eq!(plan.cwd.as_deref(), Some(Path::new(HOME)));
    assert!(plan.data.len() <= mount_data_limit());
}

#[test]
fn deeper_than_docker_is_an_error_for_legacy_data() {
    let stack = docker_stack(MAX_DEPTH + 1);
    assert!(matches!(
        plan_legacy(&stack, &docker_opts(None)),
        Err(Error::TooDeep {
            depth: 129,
            max: 128
        })
    ));
    // Raising max_depth does not raise the legacy limit...
    let mut opts = docker_opts(None);
    opts.max_depth = 400;
    assert!(matches!(
        plan_legacy(&stack, &opts),
        Err(Error::TooDeep { max: 128, .. })
    ));
    // ...but it does for fsconfig, and auto switches to it.
    assert!(matches!(
        plan(&stack, &opts, MountMode::Auto),
        Ok(OverlayPlan::Fsconfig(_))
    ));
    opts.max_depth = 501;
    assert!(matches!(
        plan_fsconfig(&stack, &opts),
        Err(Error::MaxDepthAboveKernel {
            requested: 501,
            limit: 500
        })
    ));
}

#[test]
fn too_long_even_relative() {
    let home = Path::new(HOME);
    let stack = OverlayStack {
        home: home.to_path_buf(),
        lowers: (0..100)
            .map(|i| LayerPath::in_home(home, format!("{}{i}", "x".repeat(60))))
            .collect(),
        upper: None,
    };
    match plan_legacy(&stack, &OverlayOptions::default()) {
        Err(Error::TooLong { needed, limit }) => {
            assert_eq!(limit, mount_data_limit());
            assert!(needed > limit);
        }
        other => panic!("expected TooLong, got {other:?}"),
    }
}

#[test]
fn lowers_without_relative_form_cannot_fall_back() {
    let stack = OverlayStack {
        home: HOME.into(),
        lowers: (0..80)
            .map(|i| LayerPath::absolute(format!("/{}/{i}", "y".repeat(60))))
            .collect(),
        upper: None,
    };
    assert!(matches!(
        plan_legacy(&stack, &OverlayOptions::default()),
        Err(Error::TooLong { .. })
    ));
}

#[test]
fn fsconfig_plan_lists_each_layer() {
    let stack = docker_stack(3);
    let mut opts = docker_opts(Some("l"));
    opts.userxattr = true;
    opts.volatile = true;
    let p = plan_fsconfig(&stack, &opts).unwrap();
    let s = |k: &'static str, v: String| FsParam::String(k, v.into());
    assert_eq!(
        p.params,
        vec![
            s("index", "off".into()),
            s("lowerdir+", format!("{HOME}/l/{}", link_id(0))),
            s("lowerdir+", format!("{HOME}/l/{}", link_id(1))),
            s("lowerdir+", format!("{HOME}/l/{}", link_id(2))),
            s("upperdir", format!("{HOME}/{ID}/diff")),
            s("workdir", format!("{HOME}/{ID}/work")),
            FsParam::Flag("userxattr"),
            FsParam::Flag("volatile"),
            s("context", "l".into()),
        ]
    );
    assert_eq!(p.cwd, None);
}

#[test]
fn fsconfig_values_over_255_bytes_go_relative() {
    let home = PathBuf::from(format!("/{}", "h".repeat(250)));
    let mut stack = docker_stack(2);
    stack.home = home.clone();
    stack.lowers = (0..2)
        .map(|i| LayerPath::in_home(&home, format!("l/{}", link_id(i))))
        .collect();
    stack.upper = Some(UpperDirs {
        upper: LayerPath::in_home(&home, format!("{ID}/diff")),
        work: LayerPath::in_home(&home, format!("{ID}/work")),
    });
    let p = plan_fsconfig(&stack, &OverlayOptions::default()).unwrap();
    assert_eq!(p.cwd.as_deref(), Some(home.as_path()));
    assert_eq!(
        p.params[0],
        FsParam::String("lowerdir+", format!("l/{}", link_id(0)).into())
    );
    stack
        .lowers
        .push(LayerPath::absolute(format!("/{}", "z".repeat(300))));
    assert!(matches!(
        plan_fsconfig(&stack, &OverlayOptions::default()),
        Err(Error::ValueTooLong {
            key: "lowerdir+",
            limit: 255,
            ..
        })
    ));
}

#[test]
fn separators_in_paths_are_escaped() {
    let stack = OverlayStack {
        home: "/h".into(),
        lowers: vec![LayerPath::absolute("/a:b"), LayerPath::absolute("/c,d\\e")],
        upper: None,
    };
    let p = plan_legacy(&stack, &OverlayOptions::default()).unwrap();
    assert_eq!(p.data.to_str().unwrap(), "lowerdir=/a\\:b:/c\\,d\\\\e");
}

#[test]
fn bad_stacks_are_refused_before_planning() {
    let mut stack = docker_stack(1);
    stack.lowers.clear();
    assert!(matches!(
        plan_legacy(&stack, &docker_opts(None)),
        Err(Error::NoLowers)
    ));
    let mut ro = docker_stack(1);
    ro.upper = None;
    assert!(matches!(
        plan_legacy(&ro, &docker_opts(None)),
        Err(Error::ReadOnlyNeedsTwoLowers(1))
    ));
    let mut rel = docker_stack(1);
    rel.lowers[0] = LayerPath::absolute("relative/path");
    assert!(matches!(
        plan_legacy(&rel, &docker_opts(None)),
        Err(Error::InvalidPath {
            role: "lowerdir",
            ..
        })
    ));
    assert!(matches!(
        plan_legacy(&docker_stack(1), &docker_opts(Some("bad\"label"))),
        Err(Error::InvalidLabel { .. })
    ));
}

#[test]
fn aufs_200_branches_append_in_page_sized_chunks() {
    let root = "/var/lib/docker/aufs/diff";
    let ro: Vec<PathBuf> = (0..200)
        .map(|i| PathBuf::from(format!("{root}/{i:064x}")))
        .collect();
    let stack = AufsStack {
        rw: format!("{root}/{ID}").into(),
        ro: ro.clone(),
        label: Some("system_u:object_r:container_file_t:s0:c1,c2".into()),
        dirperm1: true,
    };
    let calls = plan_aufs(&stack).unwrap();
    let label = ",context=\"system_u:object_r:container_file_t:s0:c1,c2\"";
    // Each ro branch takes 1 + 90 + 6 = 97 bytes in the first call, whose fixed part
    // is br:<rw>=rw (3 + 90 + 3) plus options and label: 40 branches fit in 4095.
    let first_ro: Vec<String> = ro[..40]
        .iter()
        .map(|p| format!(":{}=ro+wh", p.display()))
        .collect();
    let expected_first = format!(
        "br:{root}/{ID}=rw{},dio,xino=/dev/shm/aufs.xino,dirperm1{label}",
        first_ro.concat()
    );
    assert_eq!(calls[0], AufsCall::Mount(expected_first.into()));
    // Appends: each branch "append:<90>=ro+wh" is 103 bytes plus a comma: 38 a call.
    let append = |r: &[PathBuf]| {
        let chunks: Vec<String> = r
            .iter()
            .map(|p| format!("append:{}=ro+wh", p.display()))
            .collect();
        AufsCall::Append(format!("{}{label}", chunks.join(",")).into())
    };
    assert_eq!(calls[1], append(&ro[40..78]));
    assert_eq!(calls[2], append(&ro[78..116]));
    assert_eq!(calls.len(), 6);
    for call in &calls {
        assert!(
            call.data().len() <= mount_data_limit(),
            "{} bytes",
            call.data().len()
        );
    }
    assert_eq!(decode_branches(&calls), Some((stack.rw.clone(), ro)));
}
