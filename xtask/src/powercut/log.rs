//! Reading a boot's log.

use super::*;

/// A workload command, as its markers name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cmd {
    /// `plies import` of `img<j>.tar`.
    Import(usize),
    /// `plies create ID`.
    Create(String),
    /// `plies apply ID t<k>.tar`.
    Apply(String, usize),
    /// `plies rm ID…`.
    Rm(Vec<String>),
}

impl Cmd {
    /// Parses `import img2`, `create ID`, `apply ID t1`, `rm ID…`.
    fn parse(text: &str) -> Option<Cmd> {
        let mut w = text.split_whitespace();
        match w.next()? {
            "import" => Some(Cmd::Import(w.next()?.strip_prefix("img")?.parse().ok()?)),
            "create" => Some(Cmd::Create(w.next()?.to_string())),
            "apply" => {
                let id = w.next()?.to_string();
                Some(Cmd::Apply(id, w.next()?.strip_prefix('t')?.parse().ok()?))
            }
            "rm" => Some(Cmd::Rm(w.map(str::to_string).collect())),
            _ => None,
        }
    }

    /// `import`, `create`, `apply` or `rm`.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Cmd::Import(_) => "import",
            Cmd::Create(_) => "create",
            Cmd::Apply(..) => "apply",
            Cmd::Rm(_) => "rm",
        }
    }

    /// The command, short: layer ids cut to 12 digits.
    pub(super) fn show(&self) -> String {
        match self {
            Cmd::Import(j) => format!("import img{j}"),
            Cmd::Create(id) => format!("create {id}"),
            Cmd::Apply(id, k) => format!("apply {id} t{k}.tar"),
            Cmd::Rm(ids) => {
                let ids: Vec<&str> = ids.iter().map(|i| short(i)).collect();
                format!("rm {}", ids.join(" "))
            }
        }
    }
}

/// A digest id cut to 12 hex digits, as `plies ls` shows it; other ids as they are.
fn short(id: &str) -> &str {
    match id.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 => &hex[..12],
        _ => id,
    }
}

/// A command's start, success or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// `begin`.
    Begin,
    /// `done`: the command exited 0.
    Done,
    /// `fail RC`.
    Fail(i32),
}

/// One workload marker.
#[derive(Debug)]
pub(super) struct Event {
    /// Its index among the marker lines (for its arrival time).
    pub(super) mark: usize,
    /// What happened.
    pub(super) step: Step,
    /// To which command.
    pub(super) cmd: Cmd,
}

/// Everything a boot's serial log says.
#[derive(Debug, Default)]
pub(super) struct BootLog {
    /// The init ran.
    pub(super) booted: bool,
    /// `fsck --repair`'s exit status.
    pub(super) repair_rc: Option<i32>,
    /// The plain `fsck`'s exit status after it.
    pub(super) check_rc: Option<i32>,
    /// `fsck --repair`'s findings.
    pub(super) findings: Vec<String>,
    /// What the plain `fsck` still found.
    pub(super) remaining: Vec<String>,
    /// Listed layers and their checksums (`mount-failed` when it would not mount).
    pub(super) layers: Vec<(String, String)>,
    /// The listing of each layer whose checksum is no reference.
    pub(super) listings: BTreeMap<String, Vec<String>>,
    /// Every layer was checked.
    pub(super) verified: bool,
    /// The workload's markers.
    pub(super) events: Vec<Event>,
    /// Lines that tell of trouble in the guest (`insmod-failed`, `disk-failed`, …).
    pub(super) trouble: Vec<String>,
    /// The guest reached its power-off.
    pub(super) done: bool,
}

impl BootLog {
    /// Reads a serial log.
    pub(super) fn parse(text: &str) -> BootLog {
        let mut log = BootLog::default();
        let mut marks = 0usize;
        // 0: before fsck, 1: in --repair, 2: in the check, 3: after.
        let mut fsck = 0;
        for line in text.lines() {
            let Some(rest) = marker(line) else {
                let line = line.trim();
                let finding = ["repaired:", "repairable:", "unrepairable:"]
                    .iter()
                    .any(|p| line.starts_with(p));
                match fsck {
                    1 if finding => log.findings.push(line.to_string()),
                    2 if finding => log.remaining.push(line.to_string()),
                    _ => {}
                }
                continue;
            };
            let mark = marks;
            marks += 1;
            let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
            match word {
                "kernel" => log.booted = true,
                "fsck-begin" => fsck = 1,
                "fsck-repair" => {
                    log.repair_rc = args.trim().parse().ok();
                    fsck = 2;
                }
                "fsck-check" => {
                    log.check_rc = args.trim().parse().ok();
                    fsck = 3;
                }
                "layer" => {
                    if let Some((id, sum)) = args.split_once(' ') {
                        log.layers.push((id.to_string(), sum.trim().to_string()));
                    }
                }
                "list" => {
                    if let Some((id, entry)) = args.split_once(' ') {
                        log.listings
                            .entry(id.to_string())
                            .or_default()
                            .push(entry.to_string());
                    }
                }
                "verified" => log.verified = true,
                "begin" | "done" if !args.is_empty() => {
                    let step = if word == "begin" {
                        Step::Begin
                    } else {
                        Step::Done
                    };
                    if let Some(cmd) = Cmd::parse(args) {
                        log.events.push(Event { mark, step, cmd });
                    }
                }
                "fail" => {
                    let (rc, what) = args.split_once(' ').unwrap_or((args, ""));
                    if let Some(cmd) = Cmd::parse(what) {
                        let step = Step::Fail(rc.parse().unwrap_or(-1));
                        log.events.push(Event { mark, step, cmd });
                    }
                }
                "done" => log.done = true,
                "insmod-failed" | "disk-failed" | "ls-failed" | "listing-failed"
                | "umount-failed" => log.trouble.push(rest.to_string()),
                _ => {}
            }
        }
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_from_their_markers() {
        assert_eq!(Cmd::parse("import img2"), Some(Cmd::Import(2)));
        assert_eq!(
            Cmd::parse("apply c003-002 t1"),
            Some(Cmd::Apply("c003-002".into(), 1))
        );
        assert_eq!(
            Cmd::parse("rm a b"),
            Some(Cmd::Rm(vec!["a".into(), "b".into()]))
        );
        assert_eq!(Cmd::parse("mount x"), None);
    }

    #[test]
    fn a_log_gives_fsck_layers_and_events() {
        let log = "\x1b[0m@@powercut kernel 7.0\n@@powercut fsck-begin\n\
                   repaired: records: layer x is incomplete\n@@powercut fsck-repair 0\n\
                   @@powercut fsck-check 0\n@@powercut listed 1\n\
                   @@powercut layer a 0123\n@@powercut list a ./x 81a4 0 0 ./x\n\
                   @@powercut verified\n@@powercut workload\n\
                   @@powercut begin create c001-001\n@@powercut done create c001-001\n\
                   @@powercut begin apply c001-001 t0\n";
        let l = BootLog::parse(log);
        assert!(l.booted && l.verified && !l.done);
        assert_eq!(l.findings.len(), 1);
        assert_eq!(l.layers, [("a".to_string(), "0123".to_string())]);
        assert_eq!(l.listings["a"], ["./x 81a4 0 0 ./x"]);
        assert_eq!(l.events.len(), 3);
        assert_eq!(l.events[2].step, Step::Begin);
        assert_eq!(l.events[2].mark, 11);
    }
}
