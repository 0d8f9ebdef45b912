//! `cargo xtask`: automation for the Serverless Managers workspace.
//!
//! - `cargo xtask ci` runs, in order, every check CI runs and prints a summary with the time of
//!   each step; `cargo xtask ci --fast` skips the rustdoc and cargo-deny steps.
//! - `cargo xtask tidy` checks the architecture invariants of `docs/architecture.md` and prints
//!   every violation. CI runs the same checks as the `tidy` unit tests of this crate.
//! - `cargo xtask bench-table` prints the latest criterion results as a markdown table of
//!   ratios, for docs/performance.md.
//! - `cargo xtask bench-gateway` measures smgr's proxy throughput and added latency against a
//!   direct connection and nginx, with wrk, and prints the table for docs/performance.md.
//!
//! The alias lives in `.cargo/config.toml`. xtask keeps few dependencies because it is built
//! before anything else runs.

// A command-line tool: printing is its job.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod bench_gateway;
mod bench_table;
mod ci;
mod docker_engine;
mod system;
mod tidy;

const COMMANDS: &str = "\
usage: cargo xtask <command>

commands:
  ci [--fast]   run what CI runs: fmt, clippy, tidy, tests (starting a Docker Engine when
                none runs), docs, deny, benchmark build (--fast skips docs and deny)
  tidy          check the architecture invariants and print every violation
  bench-table [--vs PEER]
                the latest criterion results as a markdown table, with the ratio of
                ours to PEER (default deadpool)";

fn usage() -> String {
    format!("{COMMANDS}\n  {}\n  help          print this message", bench_gateway::USAGE)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ci"] => ci::run(&workspace_root(), ci::Mode::Full),
        ["ci", "--fast"] => ci::run(&workspace_root(), ci::Mode::Fast),
        ["tidy"] => tidy::run(&workspace_root()),
        ["bench-table"] => bench_table::run(&workspace_root(), "deadpool"),
        ["bench-table", "--vs", peer] => bench_table::run(&workspace_root(), peer),
        ["bench-gateway", options @ ..] => bench_gateway::run(&workspace_root(), options),
        ["help" | "--help" | "-h"] => {
            println!("{}", usage());
            ExitCode::SUCCESS
        }
        [] => {
            eprintln!("{}", usage());
            ExitCode::from(2)
        }
        other => {
            eprintln!("xtask: unknown arguments `{}`\n\n{}", other.join(" "), usage());
            ExitCode::from(2)
        }
    }
}

/// The root of the workspace: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
