//! Crash test: a child process creates and removes layers at random and is
//! SIGKILLed at a random moment, over and over. After each kill the store must
//! open clean, every acknowledged create must be there whole, every
//! acknowledged remove gone, and no half layer listed.
//!
//! The child is this same binary, re-run with `PLIES_LAYERSTORE_CRASH_CHILD` set.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plies_layerstore::{AufsStore, Error, Overlay2Store, StoreOptions};

const CHILD_ENV: &str = "PLIES_LAYERSTORE_CRASH_CHILD";
/// Kills per store kind.
const ITERATIONS: usize = 110;
/// Stop early (and fail) if the whole run would take longer than this.
const BUDGET: Duration = Duration::from_secs(170);

/// A small deterministic generator (the test needs no statistics, just variety).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

enum Store {
    Overlay2(Overlay2Store),
    Aufs(AufsStore),
}

impl Store {
    fn open(kind: &str, path: &Path, durable: bool) -> Result<Self, Error> {
        let opts = StoreOptions::default().with_durable(durable);
        Ok(match kind {
            "overlay2" => Store::Overlay2(Overlay2Store::open(path, opts)?),
            _ => Store::Aufs(AufsStore::open(path, opts)?),
        })
    }
    fn create(&self, id: &str, parent: Option<&str>) -> Result<(), Error> {
        match self {
            Store::Overlay2(s) => s.create(id, parent).map(drop),
            Store::Aufs(s) => s.create(id, parent).map(drop),
        }
    }
    fn remove(&self, id: &str) -> Result<(), Error> {
        match self {
            Store::Overlay2(s) => s.remove(id),
            Store::Aufs(s) => s.remove(id),
        }
    }
    fn list(&self) -> Result<Vec<String>, Error> {
        match self {
            Store::Overlay2(s) => s.list(),
            Store::Aufs(s) => s.list(),
        }
    }
    fn parent(&self, id: &str) -> Result<Option<String>, Error> {
        match self {
            Store::Overlay2(s) => s.parent(id),
            Store::Aufs(s) => s.parent(id),
        }
    }
    fn fsck(&self, repair: bool) -> Result<plies_layerstore::FsckReport, Error> {
        match self {
            Store::Overlay2(s) => s.fsck(repair),
            Store::Aufs(s) => s.fsck(repair),
        }
    }
    /// Checks one layer is whole: its files, its link, its lowers.
    fn check_intact(&self, id: &str) {
        match self {
            Store::Overlay2(s) => {
                assert!(s.diff_dir(id).is_dir(), "{id}: no diff");
                let link = s.link_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
                let target = std::fs::read_link(s.home().join("l").join(link.as_str())).unwrap();
                assert_eq!(target, Path::new("..").join(id).join("diff"));
                let lowers = s.lowers(id).unwrap_or_else(|e| panic!("{id}: {e}"));
                assert_eq!(lowers.len(), s.ancestors(id).unwrap().len());
                if !lowers.is_empty() {
                    assert!(s.layer_dir(id).join("work").is_dir(), "{id}: no work");
                }
                for l in lowers {
                    assert!(l.is_dir(), "{id}: lower {} missing", l.display());
                }
            }
            Store::Aufs(s) => {
                assert!(s.diff_dir(id).is_dir(), "{id}: no diff");
                assert!(s.mnt_dir(id).is_dir(), "{id}: no mnt");
                for l in s.lowers(id).unwrap_or_else(|e| panic!("{id}: {e}")) {
                    assert!(l.is_dir(), "{id}: lower {} missing", l.display());
                }
            }
        }
    }
}

/// The child: random creates and removes until killed, logging each intent
/// before acting and each success after.
fn child(spec: &str) {
    let mut parts = spec.split(' ');
    let (kind, store_path, log_path, seed, durable) = (
        parts.next().unwrap(),
        PathBuf::from(parts.next().unwrap()),
        PathBuf::from(parts.next().unwrap()),
        parts.next().unwrap().parse::<u64>().unwrap(),
        parts.next().unwrap() == "1",
    );
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_path)
        .unwrap();
    let mut say = |line: String| log.write_all(line.as_bytes()).unwrap();
    let store = Store::open(kind, &store_path, durable).unwrap();
    let mut rng = Rng(seed | 1);
    let mut live: Vec<String> = store.list().unwrap();
    let mut parent_of: BTreeMap<String, Option<String>> = BTreeMap::new();
    for id in &live {
        parent_of.insert(id.clone(), store.parent(id).unwrap());
    }
    for n in 0.. {
        let has_child: BTreeSet<&String> = parent_of.values().flatten().collect();
        let leaves: Vec<String> = live
            .iter()
            .filter(|l| !has_child.contains(l))
            .cloned()
            .collect();
        if live.len() < 30 || leaves.is_empty() || rng.below(3) != 0 {
            let id = format!("s{seed}-{n}");
            let parent = if live.is_empty() || rng.below(5) == 0 {
                None
            } else {
                Some(live[rng.below(live.len())].clone())
            };
            say(format!("c {id} {}\n", parent.as_deref().unwrap_or("-")));
            match store.create(&id, parent.as_deref()) {
                Ok(()) => {}
                Err(Error::TooDeep { .. }) => {
                    say(format!("x {id}\n"));
                    continue;
                }
                Err(e) => panic!("create {id}: {e}"),
            }
            say(format!("C {id}\n"));
            parent_of.insert(id.clone(), parent);
            live.push(id);
        } else {
            let id = leaves[rng.below(leaves.len())].clone();
            say(format!("r {id}\n"));
            store.remove(&id).unwrap();
            say(format!("R {id}\n"));
            live.retain(|l| *l != id);
            parent_of.remove(&id);
        }
    }
}

/// One kill-and-check round; updates what the store is known to hold.
fn round(
    kind: &str,
    dir: &Path,
    seed: u64,
    rng: &mut Rng,
    known: &mut BTreeSet<String>,
    parents: &mut BTreeMap<String, Option<String>>,
) -> (usize, bool) {
    let store_path = dir.join(kind);
    let log_path = dir.join(format!("{kind}-{seed}.log"));
    let durable = seed % 2 == 0;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(
            CHILD_ENV,
            format!(
                "{kind} {} {} {seed} {}",
                store_path.display(),
                log_path.display(),
                durable as u8
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(5 + rng.below(60) as u64));
    if let Ok(Some(status)) = child.try_wait() {
        panic!("{kind} child {seed} ended by itself: {status}");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let (mut created, mut maybe, mut removed) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for line in log.lines() {
        let mut f = line.split(' ');
        let (op, id) = (f.next().unwrap(), f.next().unwrap().to_owned());
        match op {
            "c" => {
                let p = f.next().unwrap();
                parents.insert(id.clone(), (p != "-").then(|| p.to_owned()));
                maybe.insert(id);
            }
            "x" => {
                maybe.remove(&id);
            }
            "C" => {
                maybe.remove(&id);
                created.insert(id);
            }
            "r" => {
                maybe.insert(id);
            }
            "R" => {
                maybe.remove(&id);
                removed.insert(id);
            }
            _ => panic!("bad log line {line:?}"),
        }
    }
    let _ = std::fs::remove_file(&log_path);

    let store = Store::open(kind, &store_path, true).unwrap();
    let report = store.fsck(false).unwrap();
    assert_eq!(
        report.unrepairable().count(),
        0,
        "{kind} seed {seed}: {report:?}"
    );
    assert!(
        report.is_clean(),
        "{kind} seed {seed}: open left {report:?}"
    );
    let listed: BTreeSet<String> = store.list().unwrap().into_iter().collect();
    let mut expected: BTreeSet<String> = known.union(&created).cloned().collect();
    for r in &removed {
        expected.remove(r);
    }
    for id in &expected {
        if !maybe.contains(id) {
            assert!(
                listed.contains(id),
                "{kind} seed {seed}: acknowledged {id} is gone"
            );
        }
    }
    for id in &listed {
        assert!(
            expected.contains(id) || maybe.contains(id),
            "{kind} seed {seed}: {id} listed but never created"
        );
        assert_eq!(
            store
                .parent(id)
                .unwrap_or_else(|e| panic!("{kind} seed {seed}: {e}")),
            parents[id],
            "{kind} seed {seed}: parent of {id}"
        );
        store.check_intact(id);
    }
    *known = listed;
    (created.len() + removed.len(), !maybe.is_empty())
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let (mut rounds, mut ops, mut mid_op) = (0, 0, 0);
    for kind in ["overlay2", "aufs"] {
        let (mut known, mut parents) = (BTreeSet::new(), BTreeMap::new());
        for i in 0..ITERATIONS {
            assert!(
                start.elapsed() < BUDGET,
                "crash test over budget after {rounds} rounds"
            );
            let seed = (rng.next() & 0xffff_ffff) * 1000 + i as u64;
            let (done, interrupted) =
                round(kind, tmp.path(), seed, &mut rng, &mut known, &mut parents);
            rounds += 1;
            ops += done;
            mid_op += usize::from(interrupted);
        }
        println!("{kind}: {} layers after {ITERATIONS} kills", known.len());
    }
    println!(
        "crash: {rounds} kills ({mid_op} in the middle of an operation, {ops} operations acknowledged) in {:.1?}, every store consistent",
        start.elapsed()
    );
    assert!(
        mid_op > rounds / 4,
        "too few kills landed inside an operation"
    );
}
