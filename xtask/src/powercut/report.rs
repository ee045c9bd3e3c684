//! The report of a run.

use super::*;

/// The table, each boot's line, and every failure in full.
pub(super) fn render(
    kernel: &Kernel,
    seed: u64,
    rows: &[Row],
    model: &Model,
    estimates: &Estimates,
) -> String {
    let mut s = String::new();
    let cuts: Vec<&Cut> = rows.iter().filter_map(|r| r.cut.as_ref()).collect();
    let during: Vec<&Cmd> = cuts
        .iter()
        .filter_map(|c| match c {
            Cut::During(cmd) => Some(cmd),
            _ => None,
        })
        .collect();
    let after = cuts.iter().filter(|c| matches!(c, Cut::After(..))).count();
    let by_kind = |cmds: &[&Cmd]| {
        let mut n: BTreeMap<&str, usize> = BTreeMap::new();
        for c in cmds {
            *n.entry(c.kind()).or_default() += 1;
        }
        n.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let after_cmds: Vec<&Cmd> = cuts
        .iter()
        .filter_map(|c| match c {
            Cut::After(cmd, _) => Some(cmd),
            _ => None,
        })
        .collect();
    let fsck = |what: &str| rows.iter().filter(|r| r.fsck == what).count();
    let count = |what: &str| model.failures.iter().filter(|f| f.what == what).count();
    let _ = writeln!(s, "\npowercut results ({}, seed {seed})\n", kernel.release);
    let mut table = vec![
        ("boots", rows.len().to_string()),
        ("cuts", cuts.len().to_string()),
        (
            "  during a command",
            format!("{} ({})", during.len(), by_kind(&during)),
        ),
        (
            "  right after one",
            format!("{after} ({})", by_kind(&after_cmds)),
        ),
        (
            "commands completed",
            rows.iter().map(|r| r.commands).sum::<usize>().to_string(),
        ),
        (
            "command times (last seen)",
            estimates
                .0
                .iter()
                .map(|(k, d)| format!("{k} {:.1}s", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "layers checked",
            rows.iter().map(|r| r.checked).sum::<usize>().to_string(),
        ),
        ("layers lost", count("lost").to_string()),
        ("layers corrupt", count("corrupt").to_string()),
        ("removed layers listed again", model.resurrected.to_string()),
        (
            "removals undone (record back, repaired)",
            model.undone.len().to_string(),
        ),
        (
            "fsck clean / repaired / unrepairable",
            format!(
                "{} / {} / {}",
                fsck("clean"),
                fsck("repaired"),
                fsck("unrepairable")
            ),
        ),
        (
            "commands failed uncut",
            rows.iter()
                .map(|r| r.failed_commands)
                .sum::<usize>()
                .to_string(),
        ),
        (
            "boots with a problem",
            rows.iter()
                .filter(|r| r.problem.is_some())
                .count()
                .to_string(),
        ),
    ];
    let width = table.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in table.drain(..) {
        let _ = writeln!(s, "{k:<width$}  {v}");
    }
    let _ = writeln!(s);
    for r in rows {
        let _ = writeln!(s, "{}", r.line());
    }
    for f in model.failures.iter().chain(&model.undone) {
        let _ = writeln!(
            s,
            "\nboot {}: {} layer {}: {}",
            f.boot, f.what, f.id, f.detail
        );
    }
    s
}
