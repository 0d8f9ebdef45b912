//! `cargo xtask bench-table`: the latest criterion results as a markdown table of ratios.
//!
//! Reads `target/criterion/**/new/{benchmark,estimates}.json`, groups the benchmarks by cell
//! (criterion group and parameter) with one column per implementation, and adds the ratio of
//! `ours` to the chosen peer: below 1 means ours is faster. docs/performance.md is made from it.
//!
//! Cells that share no peer (those of different benchmark binaries, say the pool's and the
//! monitor's) go in separate tables, so that each table has only its own columns.

use std::collections::{BTreeMap, BTreeSet};
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

/// The measurement in a criterion `new` directory; `None` for the paired groups (`paired`,
/// `fairness_paired`), whose benchmark ids are cells, not implementations, and which print
/// their own tables of ratios.
fn measurement(new: &Path) -> Result<Option<Measurement>, String> {
    let benchmark = json(new.join("benchmark.json"))?;
    let estimates = json(new.join("estimates.json"))?;
    let text = |key: &str| benchmark.get(key).and_then(Value::as_str).unwrap_or_default();
    let group = text("group_id");
    if group == "paired" || group.ends_with("_paired") {
        return Ok(None);
    }
    let value = text("value_str");
    let cell = if value.is_empty() { group.to_owned() } else { format!("{group} {value}") };
    let median_ns = estimates["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{} has no median", new.display()))?;
    Ok(Some(Measurement { cell, implementation: text("function_id").to_owned(), median_ns }))
}

/// One table per family of cells: two cells are in the same family when they share a peer.
fn table(found: &[Measurement], peer: &str) -> String {
    let mut cells: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    for m in found {
        cells.entry(&m.cell).or_default().insert(&m.implementation, m.median_ns);
    }
    let families = families(&cells);
    let tables: Vec<String> =
        families.iter().map(|family| family_table(family, &cells, peer)).collect();
    tables.join("\n")
}

/// The cells grouped into families, each in cell order, the families in the order of their
/// first cell.
fn families<'a>(cells: &BTreeMap<&'a str, BTreeMap<&'a str, f64>>) -> Vec<Vec<&'a str>> {
    let mut families: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
    for (cell, times) in cells {
        let peers: Vec<&str> = times.keys().copied().filter(|name| *name != "ours").collect();
        let (joined, rest): (Vec<_>, Vec<_>) = families
            .into_iter()
            .partition(|(_, known)| peers.iter().any(|name| known.contains(name)));
        families = rest;
        let mut family = (vec![*cell], peers);
        for (members, known) in joined {
            family.0.extend(members);
            family.1.extend(known);
        }
        families.push(family);
    }
    let mut families: Vec<Vec<&str>> = families
        .into_iter()
        .map(|(mut members, _)| {
            members.sort_unstable();
            members
        })
        .collect();
    families.sort();
    families
}

fn family_table(
    family: &[&str],
    cells: &BTreeMap<&str, BTreeMap<&str, f64>>,
    peer: &str,
) -> String {
    let names: BTreeSet<&str> =
        family.iter().flat_map(|cell| cells[cell].keys().copied()).collect();
    // `ours` first, then the peers in name order.
    let mut implementations: Vec<&str> = names.into_iter().collect();
    implementations.sort_by_key(|name| *name != "ours");
    let with_ratio = implementations.contains(&peer);
    let ratio_header = if with_ratio { format!(" ours/{peer} |") } else { String::new() };
    let mut out = format!("| cell | {} |{ratio_header}\n", implementations.join(" | "));
    let ratio_rule = if with_ratio { "---|" } else { "" };
    out.push_str(&format!("|---|{}{ratio_rule}\n", "---:|".repeat(implementations.len())));
    for cell in family {
        let times = &cells[cell];
        let columns: Vec<String> = implementations
            .iter()
            .map(|name| times.get(name).map_or("–".into(), |ns| duration(*ns)))
            .collect();
        let ratio = match (with_ratio, times.get("ours"), times.get(peer)) {
            (false, ..) => String::new(),
            (true, Some(ours), Some(theirs)) => format!(" {:.2} |", ours / theirs),
            (true, ..) => " – |".into(),
        };
        out.push_str(&format!("| {cell} | {} |{ratio}\n", columns.join(" | ")));
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

    fn m(cell: &str, implementation: &str, median_ns: f64) -> Measurement {
        Measurement { cell: cell.into(), implementation: implementation.into(), median_ns }
    }

    #[test]
    fn the_table_puts_ours_first_and_gives_the_ratio_to_the_peer() {
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
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn paired_groups_are_left_to_their_own_tables() {
        let dir = std::env::temp_dir().join(format!("bench-table-{}", std::process::id()));
        let read = |group: &str, function: &str| {
            fs::create_dir_all(&dir).unwrap();
            let benchmark = serde_json::json!({
                "group_id": group, "function_id": function, "value_str": null,
            });
            fs::write(dir.join("benchmark.json"), benchmark.to_string()).unwrap();
            let estimates = serde_json::json!({ "median": { "point_estimate": 81.5e6 } });
            fs::write(dir.join("estimates.json"), estimates.to_string()).unwrap();
            measurement(&dir).unwrap()
        };
        let fairness = read("fairness", "ours").expect("a group of implementations");
        assert_eq!(
            (fairness.cell.as_str(), fairness.implementation.as_str()),
            ("fairness", "ours")
        );
        assert!(read("paired", "hold=none/W2xS1").is_none());
        assert!(read("fairness_paired", "bounded").is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cells_that_share_no_peer_go_in_separate_tables() {
        let found = [
            m("contended", "ours", 100.0),
            m("contended", "deadpool", 200.0),
            m("contended", "semaphore", 50.0),
            m("record", "ours", 6.0),
            m("record", "metrics", 40.0),
            m("uncontended", "ours", 90.0),
            m("uncontended", "deadpool", 180.0),
            m("warm_acquire", "ours", 189.0),
        ];
        let table = table(&found, "deadpool");
        let tables: Vec<&str> = table.split("\n\n").collect();
        assert_eq!(
            tables,
            [
                "| cell | ours | deadpool | semaphore | ours/deadpool |\n\
                 |---|---:|---:|---:|---|\n\
                 | contended | 100 ns | 200 ns | 50 ns | 0.50 |\n\
                 | uncontended | 90 ns | 180 ns | – | 0.50 |",
                "| cell | ours | metrics |\n|---|---:|---:|\n| record | 6 ns | 40 ns |",
                "| cell | ours |\n|---|---:|\n| warm_acquire | 189 ns |\n",
            ]
        );
    }
}
