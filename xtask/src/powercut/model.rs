//! What the host expects of the store, and what it found.

use super::*;

/// What a layer may hold, and whether it must be there.
#[derive(Debug, Clone)]
struct Expect {
    /// It was complete before the cut and no removal of it started.
    must: bool,
    /// The checksums its content may have.
    allowed: Vec<String>,
    /// Where it comes from, for a report.
    since: String,
}

/// A lost or corrupt layer.
pub(super) struct Failure {
    /// The boot that found it.
    pub(super) boot: usize,
    /// `lost` or `corrupt`.
    pub(super) what: &'static str,
    /// The layer.
    pub(super) id: String,
    /// Its history and what differs.
    pub(super) detail: String,
}

/// How a cut fell.
#[derive(Clone)]
pub(super) enum Cut {
    /// During the command (its start marker was the last one).
    During(Cmd),
    /// After the command finished (or failed), by the time the host saw.
    After(Cmd, Duration),
    /// Before the workload had printed anything.
    Elsewhere,
}

/// One boot in the table.
pub(super) struct Row {
    /// Its number, from 1.
    pub(super) boot: usize,
    /// Wall time, boot to cut or power-off.
    pub(super) secs: f64,
    /// `clean`, `repaired`, `unrepairable` or `-` (no fsck ran).
    pub(super) fsck: &'static str,
    /// Layers listed and checked.
    pub(super) checked: usize,
    /// Of those, how many were as expected.
    pub(super) ok: usize,
    /// Workload commands that finished.
    pub(super) commands: usize,
    /// Workload commands that failed by themselves.
    pub(super) failed_commands: usize,
    /// Where the cut fell, if there was one.
    pub(super) cut: Option<Cut>,
    /// What went wrong with the boot itself.
    pub(super) problem: Option<String>,
}

impl Row {
    /// The progress line.
    pub(super) fn line(&self) -> String {
        format!(
            "boot {:>2}: {:>4.0}s, fsck {}, {}/{} layers as expected, {} commands; cut {}{}",
            self.boot,
            self.secs,
            self.fsck,
            self.ok,
            self.checked,
            self.commands,
            self.cut_text(),
            self.problem
                .as_deref()
                .map(|p| format!("; PROBLEM: {p}"))
                .unwrap_or_default()
        )
    }

    /// Where the cut fell, in words.
    fn cut_text(&self) -> String {
        match &self.cut {
            None => "- (last boot: checks only)".into(),
            Some(Cut::During(c)) => format!("during {}", c.show()),
            Some(Cut::After(c, d)) => format!("{} ms after {}", d.as_millis(), c.show()),
            Some(Cut::Elsewhere) => "before the workload".into(),
        }
    }
}

/// The host's picture of the store, carried from boot to boot, and the counts.
pub(super) struct Model<'a> {
    /// The references.
    inputs: &'a Inputs,
    /// Every layer that is or may be there.
    layers: BTreeMap<String, Expect>,
    /// Layers whose removal finished: what they held, and which command removed them.
    removed: BTreeMap<String, (Vec<String>, String)>,
    /// Lost and corrupt layers.
    pub(super) failures: Vec<Failure>,
    /// Removals that finished before a cut and that the next boot's `fsck` found
    /// undone: the layer's record back, as complete, without its layer.
    pub(super) undone: Vec<Failure>,
    /// Layers listed again after their removal had finished.
    pub(super) resurrected: usize,
}

impl<'a> Model<'a> {
    /// An empty store.
    pub(super) fn new(inputs: &'a Inputs) -> Model<'a> {
        Model {
            inputs,
            layers: BTreeMap::new(),
            removed: BTreeMap::new(),
            failures: Vec::new(),
            undone: Vec::new(),
            resurrected: 0,
        }
    }

    /// Checks what `boot` found against the picture, then follows its workload.
    pub(super) fn record(
        &mut self,
        boot: usize,
        log: &BootLog,
        watched: &Watched,
        took: Duration,
    ) -> Row {
        let mut row = Row {
            boot,
            secs: took.as_secs_f64(),
            fsck: "-",
            checked: 0,
            ok: 0,
            commands: 0,
            failed_commands: 0,
            cut: None,
            problem: watched.problem.clone(),
        };
        if log.check_rc.is_some() {
            row.fsck = if log.check_rc != Some(0) || !log.remaining.is_empty() {
                "unrepairable"
            } else if log.findings.is_empty() && log.repair_rc == Some(0) {
                "clean"
            } else {
                "repaired"
            };
        }
        let problem = if !log.booted {
            Some("the guest never reached its init".to_string())
        } else if !log.verified {
            Some("the guest stopped before it had checked every layer".to_string())
        } else if !log.trouble.is_empty() {
            Some(format!("guest: {}", log.trouble.join("; ")))
        } else if watched.killed.is_none() && !log.done {
            Some("the guest stopped before the end".to_string())
        } else {
            None
        };
        if row.problem.is_none() {
            row.problem = problem;
        }
        self.find_undone(boot, log);
        if log.verified {
            self.check(boot, log, &mut row);
        }
        self.follow(boot, log, &mut row);
        if let Some(killed) = watched.killed {
            row.cut = Some(match log.events.last() {
                Some(Event {
                    step: Step::Begin,
                    cmd,
                    ..
                }) => Cut::During(cmd.clone()),
                Some(e) => {
                    let at = watched.arrivals.get(e.mark).copied().unwrap_or(killed);
                    Cut::After(e.cmd.clone(), killed.saturating_duration_since(at))
                }
                None => Cut::Elsewhere,
            });
        }
        row
    }

    /// Notes the records of finished removals that `fsck --repair` found back.
    fn find_undone(&mut self, boot: usize, log: &BootLog) {
        for finding in &log.findings {
            let Some(id) = finding
                .split_once("layer ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
            else {
                continue;
            };
            if !finding.contains("recorded but missing") || self.layers.contains_key(id) {
                continue;
            }
            if let Some((_, rm)) = self.removed.remove(id) {
                self.undone.push(Failure {
                    boot,
                    what: "rm undone",
                    id: id.to_string(),
                    detail: format!(
                        "{rm} had finished before the cut; its record was back, complete, \
                         without its layer; fsck --repair: {finding}"
                    ),
                });
            }
        }
    }

    /// Compares the layers `log` lists with the picture, and takes them as the new one.
    fn check(&mut self, boot: usize, log: &BootLog, row: &mut Row) {
        let listed: BTreeMap<&str, &str> = log
            .layers
            .iter()
            .map(|(id, sum)| (id.as_str(), sum.as_str()))
            .collect();
        for (id, e) in &self.layers {
            if e.must && !listed.contains_key(id.as_str()) {
                self.failures.push(Failure {
                    boot,
                    what: "lost",
                    id: id.clone(),
                    detail: format!(
                        "complete since {}; not listed after fsck --repair{}",
                        e.since,
                        if log.findings.is_empty() {
                            String::new()
                        } else {
                            format!(" (which found: {})", log.findings.join("; "))
                        }
                    ),
                });
            }
        }
        let mut now = BTreeMap::new();
        for (&id, &sum) in &listed {
            row.checked += 1;
            let (allowed, since) = match self.layers.get(id) {
                Some(e) => (e.allowed.clone(), e.since.clone()),
                None => match self.removed.get(id) {
                    Some((a, rm)) => {
                        self.resurrected += 1;
                        (a.clone(), format!("{rm} had removed it before a cut"))
                    }
                    None => (Vec::new(), "nowhere: no command made it".to_string()),
                },
            };
            if allowed.iter().any(|a| a == sum) {
                row.ok += 1;
            } else {
                self.failures.push(Failure {
                    boot,
                    what: "corrupt",
                    id: id.to_string(),
                    detail: format!(
                        "{since}; {}",
                        self.how_it_differs(sum, &allowed, log.listings.get(id))
                    ),
                });
            }
            now.insert(
                id.to_string(),
                Expect {
                    must: true,
                    allowed: vec![sum.to_string()],
                    since: since.clone(),
                },
            );
        }
        self.layers = now;
    }

    /// Says how a layer's listing differs from the nearest reference it may have.
    fn how_it_differs(&self, sum: &str, allowed: &[String], got: Option<&Vec<String>>) -> String {
        if sum == "mount-failed" {
            return "plies mount failed".into();
        }
        let Some(got) = got else {
            return format!(
                "its checksum {} is another reference's",
                &sum[..12.min(sum.len())]
            );
        };
        let got = by_path(got);
        allowed
            .iter()
            .filter_map(|a| self.inputs.listings.get(a))
            .map(|want| compare(&by_path(want), &got))
            .min_by_key(|(differences, _)| *differences)
            .map(|(_, text)| text)
            .unwrap_or_else(|| format!("{} entries, and no reference it may have", got.len()))
    }

    /// Follows the workload's markers: what each command may leave, and must.
    fn follow(&mut self, boot: usize, log: &BootLog, row: &mut Row) {
        for e in &log.events {
            match e.step {
                Step::Done => row.commands += 1,
                Step::Fail(_) => row.failed_commands += 1,
                Step::Begin => {}
            }
            let since = format!("boot {boot}'s {}", e.cmd.show());
            match (&e.cmd, e.step) {
                (Cmd::Import(j), step) => {
                    let Some(image) = self.inputs.images.get(*j) else {
                        continue;
                    };
                    for id in &image.layers {
                        self.removed.remove(id);
                        let sum = self.inputs.image_refs[id].clone();
                        let entry = self.layers.entry(id.clone()).or_insert_with(|| Expect {
                            must: false,
                            allowed: vec![sum.clone()],
                            since: since.clone(),
                        });
                        if step == Step::Done && !entry.must {
                            entry.must = true;
                            entry.allowed = vec![sum];
                            entry.since = since.clone();
                        }
                    }
                }
                (Cmd::Create(id), step) => {
                    self.removed.remove(id);
                    let empty = self.inputs.empty.clone();
                    let entry = self.layers.entry(id.clone()).or_insert_with(|| Expect {
                        must: false,
                        allowed: vec![empty],
                        since: since.clone(),
                    });
                    if step == Step::Done {
                        entry.must = true;
                        entry.since = since;
                    }
                }
                (Cmd::Apply(id, k), step) => {
                    let Some(sum) = self.inputs.tar_refs.get(*k).cloned() else {
                        continue;
                    };
                    if let Some(entry) = self.layers.get_mut(id) {
                        match step {
                            Step::Begin => entry.allowed.push(sum),
                            Step::Done => {
                                entry.allowed = vec![sum];
                                entry.since = since;
                            }
                            Step::Fail(_) => {}
                        }
                    }
                }
                (Cmd::Rm(ids), step) => {
                    for id in ids {
                        match step {
                            Step::Begin => {
                                if let Some(entry) = self.layers.get_mut(id) {
                                    entry.must = false;
                                }
                            }
                            Step::Done => {
                                if let Some(entry) = self.layers.remove(id) {
                                    self.removed
                                        .insert(id.clone(), (entry.allowed, since.clone()));
                                }
                            }
                            Step::Fail(_) => {}
                        }
                    }
                }
            }
        }
    }

    /// Whether the run found a failure.
    pub(super) fn failed(&self, rows: &[Row]) -> bool {
        !self.failures.is_empty()
            || rows
                .iter()
                .any(|r| r.fsck == "unrepairable" || r.problem.is_some() || r.failed_commands > 0)
    }
}

/// A [`LISTING`]'s lines by the path they are about: its `stat` line, and for a
/// regular file its checksum line.
fn by_path(lines: &[String]) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in lines {
        // `sha256sum` prints `SUM  PATH`; `stat` prints `PATH MODE UID GID NAME`.
        let path = match line.split_once("  ") {
            Some((sum, path)) if sum.len() == 64 => path,
            _ => line.split(' ').next().unwrap_or(""),
        };
        out.entry(path).or_default().push(line);
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// The checksum of an empty file.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How `got` differs from `want`: the number of paths that differ, and in words
/// the counts with a few paths of each sort.
fn compare(want: &BTreeMap<&str, Vec<&str>>, got: &BTreeMap<&str, Vec<&str>>) -> (usize, String) {
    let missing: Vec<&str> = want
        .keys()
        .filter(|p| !got.contains_key(*p))
        .copied()
        .collect();
    let extra: Vec<&str> = got
        .keys()
        .filter(|p| !want.contains_key(*p))
        .copied()
        .collect();
    let changed: Vec<&str> = want
        .iter()
        .filter(|(p, lines)| got.get(*p).is_some_and(|g| g != *lines))
        .map(|(p, _)| *p)
        .collect();
    let emptied = changed
        .iter()
        .filter(|p| got[*p].iter().any(|l| l.starts_with(EMPTY_SHA256)))
        .count();
    let some = |v: &[&str]| {
        let mut s = v.iter().take(3).copied().collect::<Vec<_>>().join(", ");
        if v.len() > 3 {
            s.push_str(", ...");
        }
        s
    };
    let text = format!(
        "of the {} entries of its reference, {} differ ({} of them now empty files: {}), \
         {} are missing ({}); {} unexpected ({})",
        want.len(),
        changed.len(),
        emptied,
        some(&changed),
        missing.len(),
        some(&missing),
        extra.len(),
        some(&extra)
    );
    (changed.len() + missing.len() + extra.len(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        let img = "sha256:".to_string() + &"b".repeat(64);
        let top = "sha256:".to_string() + &"c".repeat(64);
        Inputs {
            images: vec![Image {
                archive: PathBuf::new(),
                layers: [img.clone(), top.clone()],
            }],
            tars: vec![PathBuf::new()],
            image_refs: BTreeMap::from([(img, "B".into()), (top, "C".into())]),
            tar_refs: vec!["T".into()],
            empty: "E".into(),
            listings: BTreeMap::new(),
        }
    }

    fn watched() -> Watched {
        Watched {
            arrivals: Vec::new(),
            killed: Some(Instant::now()),
            problem: None,
        }
    }

    #[test]
    fn a_complete_layer_that_is_gone_is_lost_and_an_unfinished_one_is_not() {
        let inputs = inputs();
        let mut m = Model::new(&inputs);
        let first = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                     @@powercut verified\n@@powercut workload\n\
                     @@powercut begin create c001-001\n@@powercut done create c001-001\n\
                     @@powercut begin apply c001-001 t0\n\
                     @@powercut begin import img0\n";
        let row = m.record(1, &BootLog::parse(first), &watched(), Duration::ZERO);
        assert!(matches!(row.cut, Some(Cut::During(Cmd::Import(0)))));
        // The apply's layer may hold the tar; the import's layers may be missing.
        let second = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                      @@powercut layer c001-001 T\n@@powercut verified\n";
        m.record(2, &BootLog::parse(second), &watched(), Duration::ZERO);
        assert!(m.failures.is_empty());
        // Gone without a removal: lost.
        let third = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                     @@powercut verified\n";
        m.record(3, &BootLog::parse(third), &watched(), Duration::ZERO);
        assert_eq!(m.failures.len(), 1);
        assert_eq!(m.failures[0].what, "lost");
    }

    #[test]
    fn content_no_history_allows_is_corrupt() {
        let inputs = inputs();
        let mut m = Model::new(&inputs);
        let first = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                     @@powercut verified\n@@powercut workload\n\
                     @@powercut begin create c001-001\n@@powercut done create c001-001\n";
        m.record(1, &BootLog::parse(first), &watched(), Duration::ZERO);
        let second = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                      @@powercut layer c001-001 T\n@@powercut verified\n";
        m.record(2, &BootLog::parse(second), &watched(), Duration::ZERO);
        assert_eq!(m.failures.len(), 1);
        assert_eq!(m.failures[0].what, "corrupt");
    }

    #[test]
    fn a_difference_names_emptied_files() {
        let want: Vec<String> = vec![
            "./a 81a4 0 0 ./a".into(),
            format!("{}  ./a", "1".repeat(64)),
            "./b 41ed 0 0 ./b".into(),
        ];
        let got: Vec<String> = vec!["./a 81a4 0 0 ./a".into(), format!("{EMPTY_SHA256}  ./a")];
        let (n, text) = compare(&by_path(&want), &by_path(&got));
        assert_eq!(n, 2);
        assert!(
            text.contains("1 differ (1 of them now empty files: ./a), 1 are missing (./b)"),
            "{text}"
        );
    }

    #[test]
    fn a_finished_removal_whose_record_comes_back_is_undone() {
        let inputs = inputs();
        let mut m = Model::new(&inputs);
        let first = "@@powercut kernel k\n@@powercut fsck-repair 0\n@@powercut fsck-check 0\n\
                     @@powercut verified\n@@powercut workload\n\
                     @@powercut begin create c001-001\n@@powercut done create c001-001\n\
                     @@powercut begin rm c001-001\n@@powercut done rm c001-001\n";
        m.record(1, &BootLog::parse(first), &watched(), Duration::ZERO);
        let second = "@@powercut kernel k\n@@powercut fsck-begin\n\
                      repaired: records: layer c001-001 is recorded but missing from the overlay2 store\n\
                      @@powercut fsck-repair 0\n@@powercut fsck-check 0\n@@powercut verified\n";
        let row = m.record(2, &BootLog::parse(second), &watched(), Duration::ZERO);
        assert_eq!(row.fsck, "repaired");
        assert!(m.failures.is_empty());
        assert_eq!(m.undone.len(), 1);
        assert_eq!(m.undone[0].id, "c001-001");
    }
}
