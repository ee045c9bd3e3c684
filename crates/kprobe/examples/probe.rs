//! Prints the probe report for a directory (the current one by default).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).unwrap_or_else(|| ".".into());
    let start = std::time::Instant::now();
    let report = plies_kprobe::probe_all(std::path::Path::new(&dir))?;
    let elapsed = start.elapsed();
    if std::env::args().any(|a| a == "--json") {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    for (name, value) in report.rows() {
        println!("{name}: {value}");
    }
    println!("(probed in {elapsed:?})");
    Ok(())
}
