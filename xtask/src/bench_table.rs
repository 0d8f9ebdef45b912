//! `cargo xtask bench-table`: the latest criterion results as a markdown table of ratios.
//!
//! Reads `target/criterion/**/new/{benchmark,estimates}.json`, groups the benchmarks by cell
//! (criterion group and parameter) with one column per implementation, and adds the ratio of
//! `ours` to the chosen peer: below 1 means ours is faster. docs/performance.md is made from it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

/// One measured benchmark: its cell, its implementation and its median time in nanoseconds.
#[derive(Debug, Clone, PartialEq)]
struct Measurement {
    cell: String,
    implementation: String,
    median_ns: f64,
}

pub(crate) fn run(root: &Path, peer: &str) -> ExitCode {
    let dir = root.join("target/criterion");
    match measurements(&dir) {
        Ok(found) if found.is_empty() => {
            eprintln!(
                "bench-table: no criterion results under {}; run `cargo bench` first",
                dir.display()
            );
            ExitCode::FAILURE
        }
        Ok(found) => {
            println!("{}", table(&found, peer));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bench-table: {error}");
            ExitCode::FAILURE
        }
    }
}

fn measurements(dir: &Path) -> Result<Vec<Measurement>, String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|name| name == "new") {
                found.extend(measurement(&path)?);
            } else {
                pending.push(path);
            }
        }
    }
    found.sort_by(|a, b| (&a.cell, &a.implementation).cmp(&(&b.cell, &b.implementation)));
    Ok(found)
}

fn json(path: PathBuf) -> Result<Value, String> {
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// The measurement in a criterion `new` directory; `None` for the `paired` group, whose
/// benchmark ids are cells, not implementations (it prints its own table of ratios).
fn measurement(new: &Path) -> Result<Option<Measurement>, String> {
    let benchmark = json(new.join("benchmark.json"))?;
    let estimates = json(new.join("estimates.json"))?;
    let text = |key: &str| benchmark.get(key).and_then(Value::as_str).unwrap_or_default();
    let group = text("group_id");
    if group == "paired" {
        return Ok(None);
    }
    let value = text("value_str");
    let cell = if value.is_empty() { group.to_owned() } else { format!("{group} {value}") };
    let median_ns = estimates["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{} has no median", new.display()))?;
    Ok(Some(Measurement { cell, implementation: text("function_id").to_owned(), median_ns }))
}

fn table(found: &[Measurement], peer: &str) -> String {
    let mut implementations: Vec<&str> = Vec::new();
    let mut cells: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for m in found {
        if !implementations.contains(&m.implementation.as_str()) {
            implementations.push(&m.implementation);
        }
        cells.entry(&m.cell).or_default().insert(&m.implementation, m.median_ns);
    }
    // `ours` first, then the peers in name order.
    implementations.sort_by_key(|name| (*name != "ours", *name));
    let mut out = format!("| cell | {} | ours/{peer} |\n", implementations.join(" | "));
    out.push_str(&format!("|---|{}---|\n", "---:|".repeat(implementations.len())));
    for (cell, times) in cells {
        let columns: Vec<String> = implementations
            .iter()
            .map(|name| times.get(name).map_or("–".into(), |ns| duration(*ns)))
            .collect();
        let ratio = match (times.get("ours"), times.get(peer)) {
            (Some(ours), Some(theirs)) => format!("{:.2}", ours / theirs),
            _ => "–".into(),
        };
        out.push_str(&format!("| {cell} | {} | {ratio} |\n", columns.join(" | ")));
    }
    out
}

fn duration(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_puts_ours_first_and_gives_the_ratio_to_the_peer() {
        let m = |cell: &str, implementation: &str, median_ns| Measurement {
            cell: cell.into(),
            implementation: implementation.into(),
            median_ns,
        };
        let found = [
            m("uncontended", "deadpool", 200.0),
            m("uncontended", "ours", 100.0),
            m("cold", "deadpool", 2.5e6),
            m("cold", "ours", 3e6),
            m("cold", "bb8", 1500.0),
        ];
        let table = table(&found, "deadpool");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| cell | ours | bb8 | deadpool | ours/deadpool |");
        assert_eq!(lines[2], "| cold | 3.00 ms | 1.50 µs | 2.50 ms | 1.20 |");
        assert_eq!(lines[3], "| uncontended | 100 ns | – | 200 ns | 0.50 |");
    }
}
