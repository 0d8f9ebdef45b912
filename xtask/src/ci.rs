//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.
//!
//! The steps: `fmt`, `clippy`, `tidy`, `docker` (makes sure a Docker Engine answers, starting
//! one when needed: see [`crate::docker_engine`]), `test` (nextest and the doc tests, with
//! `SMGR_REQUIRE_DOCKER=1` so the Docker tests fail rather than skip without an engine), `doc`,
//! `deny` and `bench`. `--fast` skips `doc` and `deny`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::docker_engine;

/// Which steps to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every step.
    Full,
    /// Every step but rustdoc and cargo-deny, for a quicker loop while working.
    Fast,
}

/// Versions installed when a tool is missing, so every machine runs the same checks.
const NEXTEST: Tool = Tool { subcommand: "nextest", package: "cargo-nextest", version: "0.9.143" };
const DENY: Tool = Tool { subcommand: "deny", package: "cargo-deny", version: "0.20.2" };

/// A cargo subcommand installed from crates.io when it is missing.
struct Tool {
    subcommand: &'static str,
    package: &'static str,
    version: &'static str,
}

/// One step of the run: a name for the summary and the commands it runs in order.
struct Step {
    name: &'static str,
    skipped_in_fast_mode: bool,
    /// What to make sure of before the commands run.
    needs: Option<Need>,
    commands: Vec<Cargo>,
}

/// Something a step makes sure of before its commands run.
#[derive(Clone, Copy)]
enum Need {
    /// A tool to install first when `cargo <subcommand> --version` fails.
    Tool(&'static Tool),
    /// A Docker Engine that answers, started when it is the local one.
    DockerEngine,
}

/// A cargo invocation: its arguments, extra environment variables, and how to count its tests.
struct Cargo {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    tally: Tally,
}

/// Where the number of tests a command ran comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tally {
    /// The command runs no tests worth counting.
    None,
    /// The JUnit report nextest writes (configured in `.config/nextest.toml`).
    NextestJunit,
    /// libtest's `test result:` lines on stdout.
    LibtestOutput,
}

/// Tests that passed and failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// The environment of the test commands: Docker tests fail, rather than skip, without an engine.
const TEST_ENV: &[(&str, &str)] = &[("SMGR_REQUIRE_DOCKER", "1")];

/// Where nextest writes its JUnit report, relative to the workspace root.
const NEXTEST_JUNIT: &str = "target/nextest/default/junit.xml";

const fn cargo(args: &'static [&'static str]) -> Cargo {
    Cargo { args, env: &[], tally: Tally::None }
}

/// A rustdoc command, its warnings denied.
const fn rustdoc(args: &'static [&'static str]) -> Cargo {
    Cargo { args, env: &[("RUSTDOCFLAGS", "-D warnings")], tally: Tally::None }
}

/// The packages the doc step documents on their own, each with its default features.
pub(crate) fn documented_at_defaults() -> Vec<&'static str> {
    steps()
        .into_iter()
        .filter(|step| step.name == "doc")
        .flat_map(|step| step.commands)
        .filter_map(|command| {
            let args = command.args;
            let at = args.iter().position(|arg| *arg == "--package")?;
            args.get(at + 1).copied()
        })
        .collect()
}

/// A test command: counted, and run with [`TEST_ENV`].
const fn test_command(args: &'static [&'static str], tally: Tally) -> Cargo {
    Cargo { args, env: TEST_ENV, tally }
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            name: "fmt",
            skipped_in_fast_mode: false,
            needs: None,
            commands: vec![cargo(&["fmt", "--all", "--check"])],
        },
        Step {
            name: "clippy",
            skipped_in_fast_mode: false,
            needs: None,
            commands: vec![
                cargo(&[
                    "clippy",
                    "--locked",
                    "--workspace",
                    "--all-targets",
                    "--all-features",
                    "--",
                    "-D",
                    "warnings",
                ]),
                // The facade with its default features: code behind `cfg(feature)` must also
                // build when a feature is off.
                cargo(&[
                    "clippy",
                    "--locked",
                    "--package",
                    "serverless-managers",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]),
            ],
        },
        Step {
            name: "tidy",
            skipped_in_fast_mode: false,
            needs: None,
            commands: vec![cargo(&["test", "--locked", "--package", "xtask", "--", "tidy::"])],
        },
        Step {
            // The test step needs it: no Docker test may skip.
            name: "docker",
            skipped_in_fast_mode: false,
            needs: Some(Need::DockerEngine),
            commands: vec![],
        },
        Step {
            name: "test",
            skipped_in_fast_mode: false,
            needs: Some(Need::Tool(&NEXTEST)),
            commands: vec![
                test_command(
                    &[
                        "nextest",
                        "run",
                        "--locked",
                        "--workspace",
                        "--all-features",
                        "--no-fail-fast",
                    ],
                    Tally::NextestJunit,
                ),
                // nextest does not run doc tests.
                test_command(
                    &["test", "--locked", "--workspace", "--all-features", "--doc"],
                    Tally::LibtestOutput,
                ),
            ],
        },
        Step {
            name: "doc",
            skipped_in_fast_mode: true,
            needs: None,
            commands: vec![
                rustdoc(&["doc", "--locked", "--no-deps", "--workspace", "--all-features"]),
                // The crates with features, each with its defaults: a link to a module that is
                // off breaks their docs. Tidy fails a crate with features missing here.
                rustdoc(&["doc", "--locked", "--no-deps", "--package", "pool-core"]),
                rustdoc(&["doc", "--locked", "--no-deps", "--package", "backend-docker"]),
                rustdoc(&["doc", "--locked", "--no-deps", "--package", "serverless-managers"]),
            ],
        },
        Step {
            name: "deny",
            skipped_in_fast_mode: true,
            needs: Some(Need::Tool(&DENY)),
            // Advisories are not checked: deny.toml says why.
            commands: vec![cargo(&[
                "deny",
                "--all-features",
                "check",
                "licenses",
                "bans",
                "sources",
            ])],
        },
        Step {
            name: "bench",
            skipped_in_fast_mode: false,
            needs: None,
            commands: vec![cargo(&[
                "bench",
                "--locked",
                "--workspace",
                "--all-features",
                "--no-run",
            ])],
        },
    ]
}

/// How a step ended, for the summary.
enum Outcome {
    Passed(Duration),
    Failed(Duration),
    Skipped(&'static str),
}

/// Runs the steps in order and prints the summary; the exit code says whether all passed.
pub(crate) fn run(root: &Path, mode: Mode) -> ExitCode {
    let started = Instant::now();
    let mut outcomes: Vec<(&'static str, Outcome)> = Vec::new();
    let mut failure = None;
    let mut counts: Option<Counts> = None;
    for step in steps() {
        if failure.is_some() {
            outcomes.push((step.name, Outcome::Skipped("not run: an earlier step failed")));
            continue;
        }
        if mode == Mode::Fast && step.skipped_in_fast_mode {
            outcomes.push((step.name, Outcome::Skipped("skipped: --fast")));
            continue;
        }
        println!("\n==> xtask ci: {}", step.name);
        let step_started = Instant::now();
        match run_step(root, &step, &mut counts) {
            Ok(()) => outcomes.push((step.name, Outcome::Passed(step_started.elapsed()))),
            Err(error) => {
                outcomes.push((step.name, Outcome::Failed(step_started.elapsed())));
                failure = Some(format!("step `{}` failed: {error}", step.name));
            }
        }
    }
    println!("{}", summary(&outcomes, started.elapsed()));
    if let Some(Counts { passed, failed }) = counts {
        // The closing line: every test and doc test of the run.
        println!("tests: {passed} passed, {failed} failed");
    }
    match failure {
        Some(message) => {
            eprintln!("xtask ci: {message}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}

fn run_step(root: &Path, step: &Step, counts: &mut Option<Counts>) -> Result<(), String> {
    match step.needs {
        Some(Need::Tool(tool)) => ensure_installed(root, tool)?,
        Some(Need::DockerEngine) => docker_engine::ensure_running(root)?,
        None => {}
    }
    for command in &step.commands {
        run_cargo(root, command, counts)?;
    }
    Ok(())
}

/// Installs `tool` with `cargo install --locked` unless `cargo <subcommand> --version` works.
fn ensure_installed(root: &Path, tool: &Tool) -> Result<(), String> {
    let probe = Command::new(cargo_program())
        .args([tool.subcommand, "--version"])
        .current_dir(root)
        .output();
    if probe.is_ok_and(|output| output.status.success()) {
        return Ok(());
    }
    println!("xtask ci: `cargo {}` is missing; installing {}", tool.subcommand, tool.package);
    let spec = format!("{}@{}", tool.package, tool.version);
    let status = Command::new(cargo_program())
        .args(["install", "--locked", &spec])
        .current_dir(root)
        .status()
        .map_err(|error| format!("could not run `cargo install {spec}`: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo install --locked {spec}` exited with {status}"))
    }
}

/// Runs one cargo command, adding the tests it ran to `counts`.
fn run_cargo(root: &Path, command: &Cargo, counts: &mut Option<Counts>) -> Result<(), String> {
    let shown = format!("cargo {}", command.args.join(" "));
    let env_shown: String =
        command.env.iter().map(|(key, value)| format!("{key}='{value}' ")).collect();
    println!("$ {env_shown}{shown}");
    let mut process = Command::new(cargo_program());
    process.args(command.args).envs(command.env.iter().copied()).current_dir(root);
    let could_not_run = |error| format!("could not run `{shown}`: {error}");

    let status = match command.tally {
        Tally::None => process.status().map_err(could_not_run)?,
        Tally::NextestJunit => {
            // A report left by an earlier run must not be counted again.
            let report = root.join(NEXTEST_JUNIT);
            let _ = std::fs::remove_file(&report);
            let status = process.status().map_err(could_not_run)?;
            if let Ok(xml) = std::fs::read_to_string(&report) {
                let ran = junit_counts(&xml)
                    .ok_or_else(|| format!("{} holds no test counts", report.display()))?;
                counts.get_or_insert_default().add(ran);
            }
            status
        }
        Tally::LibtestOutput => {
            // Echo libtest's output line by line as it comes, counting its results.
            let mut child = process.stdout(Stdio::piped()).spawn().map_err(could_not_run)?;
            let stdout = child.stdout.take().expect("stdout is piped");
            let mut ran = Counts::default();
            for line in BufReader::new(stdout).lines() {
                let line = line.map_err(|error| format!("reading `{shown}`: {error}"))?;
                println!("{line}");
                ran.add(libtest_counts(&line).unwrap_or_default());
            }
            counts.get_or_insert_default().add(ran);
            child.wait().map_err(could_not_run)?
        }
    };
    if status.success() { Ok(()) } else { Err(format!("`{shown}` exited with {status}")) }
}

/// The counts on the `<testsuites>` element of a JUnit report.
fn junit_counts(xml: &str) -> Option<Counts> {
    let start = xml.find("<testsuites")?;
    let element = &xml[start..start + xml[start..].find('>')?];
    let attribute = |name: &str| -> Option<u64> {
        let value = element.split_once(&format!(" {name}=\""))?.1;
        value[..value.find('"')?].parse().ok()
    };
    let tests = attribute("tests")?;
    let failed = attribute("failures")? + attribute("errors").unwrap_or(0);
    Some(Counts { passed: tests.saturating_sub(failed), failed })
}

/// The counts of a libtest `test result: ok. 3 passed; 1 failed; ...` line.
fn libtest_counts(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let number_before = |word: &str| -> Option<u64> {
        let at = rest.find(word)?;
        rest[..at].split_whitespace().next_back()?.parse().ok()
    };
    Some(Counts { passed: number_before(" passed")?, failed: number_before(" failed")? })
}

/// The cargo that runs xtask, so the same toolchain runs every step.
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn summary(outcomes: &[(&'static str, Outcome)], total: Duration) -> String {
    let mut out = String::from("\nxtask ci summary\n");
    for (name, outcome) in outcomes {
        let (status, time) = match outcome {
            Outcome::Passed(time) => ("ok", format_duration(*time)),
            Outcome::Failed(time) => ("FAILED", format_duration(*time)),
            Outcome::Skipped(why) => (*why, String::new()),
        };
        let _ = writeln!(out, "  {name:<8} {time:>9}  {status}");
    }
    let all_passed = outcomes.iter().all(|(_, outcome)| !matches!(outcome, Outcome::Failed(_)));
    let verdict = if all_passed { "ok" } else { "FAILED" };
    let _ = write!(out, "  {:<8} {:>9}  {verdict}", "total", format_duration(total));
    out
}

fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        let whole = duration.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_run_in_the_documented_order() {
        let names: Vec<&str> = steps().iter().map(|step| step.name).collect();
        assert_eq!(names, ["fmt", "clippy", "tidy", "docker", "test", "doc", "deny", "bench"]);
    }

    #[test]
    fn the_docker_engine_is_ensured_right_before_the_tests() {
        let steps = steps();
        let at = steps.iter().position(|step| step.name == "docker").expect("a docker step");
        assert!(matches!(steps[at].needs, Some(Need::DockerEngine)));
        assert!(!steps[at].skipped_in_fast_mode);
        assert_eq!(steps[at + 1].name, "test");
    }

    #[test]
    fn every_test_command_requires_docker() {
        let steps = steps();
        let test = steps.iter().find(|step| step.name == "test").expect("a test step");
        assert_eq!(test.commands.len(), 2, "nextest and the doc tests");
        for command in &test.commands {
            assert!(
                command.env.contains(&("SMGR_REQUIRE_DOCKER", "1")),
                "{:?} runs without SMGR_REQUIRE_DOCKER=1",
                command.args
            );
        }
    }

    #[test]
    fn fast_mode_skips_only_doc_and_deny() {
        let skipped: Vec<&str> =
            steps().iter().filter(|step| step.skipped_in_fast_mode).map(|step| step.name).collect();
        assert_eq!(skipped, ["doc", "deny"]);
    }

    #[test]
    fn clippy_denies_warnings_on_every_target_and_feature() {
        let steps = steps();
        let clippy = steps.iter().find(|step| step.name == "clippy").expect("a clippy step");
        let args = clippy.commands[0].args;
        for wanted in ["--workspace", "--all-targets", "--all-features", "-D", "warnings"] {
            assert!(args.contains(&wanted), "clippy is missing {wanted}: {args:?}");
        }
    }

    #[test]
    fn junit_counts_come_from_the_testsuites_element() {
        let xml = "<?xml version=\"1.0\"?>\n<testsuites name=\"nextest-run\" tests=\"27\" \
                   failures=\"2\" errors=\"1\" uuid=\"x\">\n<testsuite tests=\"5\"/></testsuites>";
        assert_eq!(junit_counts(xml), Some(Counts { passed: 24, failed: 3 }));
        assert_eq!(junit_counts("<testsuite tests=\"5\"/>"), None);
    }

    #[test]
    fn libtest_counts_come_from_result_lines_only() {
        let line =
            "test result: FAILED. 19 passed; 2 failed; 0 ignored; 0 measured; 4 filtered out";
        assert_eq!(libtest_counts(line), Some(Counts { passed: 19, failed: 2 }));
        assert_eq!(libtest_counts("test tidy::x ... ok"), None);
    }

    #[test]
    fn summary_lists_each_step_with_its_time_and_the_failure() {
        let outcomes = vec![
            ("fmt", Outcome::Passed(Duration::from_millis(400))),
            ("clippy", Outcome::Failed(Duration::from_secs(75))),
            ("tidy", Outcome::Skipped("not run: an earlier step failed")),
        ];
        let text = summary(&outcomes, Duration::from_secs(76));
        assert!(text.contains("fmt           0.4s  ok"), "{text}");
        assert!(text.contains("clippy       1m15s  FAILED"), "{text}");
        assert!(text.contains("tidy                not run: an earlier step failed"), "{text}");
        assert!(text.ends_with("total        1m16s  FAILED"), "{text}");
    }
}
