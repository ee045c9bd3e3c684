//! Reading a guest's console log and printing the table.

use super::*;

pub(super) fn parse_log(log: &str, payload: &Payload, result: &mut KernelResult) {
    let mut current: Option<RunResult> = None;
    let mut probe: Option<(String, Vec<String>)> = None;
    let mut done = false;
    let mut booted = false;
    let mut testing: Option<String> = None;
    for raw in log.lines() {
        let line = raw.trim_end_matches('\r');
        // The firmware's escape sequences may precede the first mark on its line.
        if let Some(rest) = line.find(MARK).map(|i| line[i + MARK.len()..].trim()) {
            let mut words = rest.split_whitespace();
            match words.next() {
                Some("kernel") => booted = true,
                Some("begin") => {
                    current = Some(RunResult {
                        id: words.next().unwrap_or("").to_string(),
                        status: None,
                        summary: String::new(),
                        failures: Vec::new(),
                    })
                }
                Some("end") => {
                    if let Some(mut r) = current.take() {
                        r.status = words.nth(1).and_then(|s| s.parse().ok());
                        result.runs.push(r);
                    }
                }
                Some("probe") => probe = Some((words.next().unwrap_or("").to_string(), Vec::new())),
                Some("probe-end") => result.probes.extend(probe.take()),
                Some("done") => done = true,
                Some("insmod-failed" | "scratch-failed") => {
                    let note = format!("guest: {rest}");
                    result.skips.insert(note);
                }
                _ => {}
            }
            continue;
        }
        let kernel_message = line.starts_with('[') && line.contains("] ");
        if let Some((_, rows)) = probe.as_mut() {
            if !line.trim().is_empty() && !kernel_message {
                rows.push(line.to_string());
            }
        }
        if let Some(r) = current.as_mut() {
            // With --nocapture a test's output sits between `test NAME ... ` and its verdict.
            if let Some(summary) = line.strip_prefix("test result:") {
                r.summary = summary.trim().to_string();
            } else if let Some((name, verdict)) = line
                .strip_prefix("test ")
                .and_then(|l| l.split_once(" ... "))
            {
                testing = Some(name.to_string());
                if verdict.trim() == "FAILED" {
                    r.failures.extend(testing.take());
                }
            } else if line.trim() == "FAILED" {
                r.failures.extend(testing.take());
            }
        }
        if let Some(skip) = line.find("skipping ").map(|i| &line[i..]) {
            result.skips.insert(skip.to_string());
        }
    }
    // A run that began and never ended: the guest died or hung in it.
    result.runs.extend(current);
    for planned in &payload.runs {
        if !result.runs.iter().any(|r| r.id == planned.id) {
            result.runs.push(RunResult {
                id: planned.id.clone(),
                status: None,
                summary: "never started".into(),
                failures: Vec::new(),
            });
        }
    }
    if result.problem.is_none() {
        if !booted {
            result.problem = Some("the guest never reached its init".into());
        } else if !done {
            result.problem = Some("the guest stopped before the end".into());
        }
    }
}

pub(super) fn render(results: &[KernelResult], payload: &Payload) -> String {
    let mut s = String::from("\nvm-test results\n\n");
    let ids: Vec<&str> = payload.runs.iter().map(|r| r.id.as_str()).collect();
    let _ = writeln!(
        s,
        "{:<26} {:<8} {:<7} {:>6}  failed",
        "kernel", "asked", "result", "secs"
    );
    for r in results {
        let failed: Vec<String> = r
            .runs
            .iter()
            .filter(|x| x.status != Some(0))
            .map(|x| match x.status {
                Some(code) => format!("{} (exit {code})", x.id),
                None => format!("{} (unfinished)", x.id),
            })
            .chain(r.problem.clone())
            .collect();
        let _ = writeln!(
            s,
            "{:<26} {:<8} {:<7} {:>6.0}  {}",
            r.release,
            r.name,
            if r.passed() { "pass" } else { "FAIL" },
            r.seconds,
            if failed.is_empty() {
                "-".to_string()
            } else {
                failed.join(", ")
            }
        );
    }
    for r in results {
        let _ = writeln!(s, "\n== {} (log {})", r.release, r.log.display());
        for id in &ids {
            if let Some(x) = r.runs.iter().find(|x| x.id == *id) {
                let state = match x.status {
                    Some(0) => "ok".to_string(),
                    Some(c) => format!("exit {c}"),
                    None => "unfinished".to_string(),
                };
                let _ = writeln!(s, "  {:<28} {:<11} {}", x.id, state, x.summary);
                for f in &x.failures {
                    let _ = writeln!(s, "      failed: {f}");
                }
            }
        }
        for skip in &r.skips {
            let _ = writeln!(s, "  {skip}");
        }
        for (fs_name, rows) in &r.probes {
            let _ = writeln!(s, "  kprobe report and driver status on {fs_name}:");
            for row in rows {
                let _ = writeln!(s, "    {row}");
            }
        }
    }
    s
}
