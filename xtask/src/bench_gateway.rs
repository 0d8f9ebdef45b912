//! `cargo xtask bench-gateway`: the gateway's proxy throughput and added latency, side by side
//! with a direct connection to an instance and with nginx, in one run (DESIGN.md §7).
//!
//! The run:
//!
//! 1. installs what is missing: `nginx-light` (or `nginx`) and `wrk`, Debian's packages;
//! 2. builds `smgr` and the Rust fixture function `smgr-fixture` in release mode;
//! 3. starts `smgr serve` with a generated config whose one function runs `smgr-fixture
//!    --keep-alive` with `min_instances = max_instances = N`, and N more fixture instances of
//!    its own for nginx, whose generated config reverse-proxies to them over kept connections;
//! 4. runs `wrk` with the same settings against three targets — one of nginx's instances
//!    directly (the latency floor: wrk takes one URL), `smgr`, and nginx — for several rounds,
//!    rotating the order so that the machine's drift hits each target alike;
//! 5. stops everything, checks that no process it started is left, and prints each round, the
//!    medians, the ratios and whether the targets are met, as markdown for
//!    docs/performance.md.
//!
//! Targets: smgr's throughput at least nginx's, and its p50 at most 100 µs above direct.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::system::{apt_get, find_program};

/// The most p50 latency smgr may add over a direct connection, in microseconds.
const ADDED_P50_TARGET_US: f64 = 100.0;
/// The least throughput smgr may have, as a multiple of nginx's.
const THROUGHPUT_TARGET: f64 = 1.0;
/// The function's name in smgr's config, and the path prefix nginx serves it under.
const FUNCTION: &str = "bench";

/// What the command line chose.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    rounds: usize,
    /// Seconds of each wrk run.
    duration: u64,
    /// wrk's connections (`-c`).
    connections: usize,
    /// wrk's threads (`-t`).
    threads: usize,
    /// Fixture instances behind smgr, and as many behind nginx.
    instances: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { rounds: 3, duration: 10, connections: 32, threads: 2, instances: 4 }
    }
}

impl Options {
    /// Requests one smgr instance may serve at once: enough that smgr, like nginx, can have
    /// every one of wrk's connections in flight, so that neither proxy queues.
    fn concurrency(&self) -> usize {
        self.connections.div_ceil(self.instances)
    }

    fn wrk_args(&self) -> Vec<String> {
        vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration),
            "--latency".to_owned(),
        ]
    }
}

pub(crate) const USAGE: &str = "\
  bench-gateway [--rounds N] [--duration SECS] [--connections N] [--threads N] [--instances N]
                smgr's proxy throughput and added latency vs direct and nginx, with wrk
                (defaults: 3 rounds of 10 s, 32 connections, 2 threads, 4 instances;
                installs nginx and wrk with apt-get when missing)";

fn parse_options(args: &[&str]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(&arg) = args.next() {
        let mut number = || -> Result<usize, String> {
            let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
            match value.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{arg} {value:?}: not a positive number")),
            }
        };
        match arg {
            "--rounds" => options.rounds = number()?,
            "--duration" => options.duration = number()? as u64,
            "--connections" => options.connections = number()?,
            "--threads" => options.threads = number()?,
            "--instances" => options.instances = number()?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if options.threads > options.connections {
        return Err("--threads must not exceed --connections (wrk refuses it)".to_owned());
    }
    Ok(options)
}

pub(crate) fn run(root: &Path, args: &[&str]) -> ExitCode {
    let options = match parse_options(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("bench-gateway: {error}\n\nusage:\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("smgr-bench-gateway-{}", std::process::id()));
    let mut processes = Processes::default();
    let outcome = bench(root, &options, &dir, &mut processes);
    let stopped = processes.stop_all();
    match (outcome, stopped) {
        (Ok(report), Ok(())) => {
            let _ = fs::remove_dir_all(&dir);
            println!("{report}");
            ExitCode::SUCCESS
        }
        (Ok(report), Err(left)) => {
            println!("{report}");
            eprintln!("bench-gateway: {left}");
            ExitCode::FAILURE
        }
        (Err(error), stopped) => {
            eprintln!("bench-gateway: {error}");
            if let Err(left) = stopped {
                eprintln!("bench-gateway: {left}");
            }
            eprintln!("bench-gateway: logs and configs are kept in {}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Everything between installing the tools and stopping the processes; the report.
fn bench(
    root: &Path,
    options: &Options,
    dir: &Path,
    processes: &mut Processes,
) -> Result<String, String> {
    let tools = ensure_tools()?;
    build(root)?;
    let target = target_dir(root);
    let fixture = target.join("release/smgr-fixture");
    let smgr = target.join("release/smgr");
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    note(&format!("working in {}", dir.display()));

    // nginx's own instances: smgr's are leased by its pool and not shared.
    let mut upstreams = Vec::new();
    for index in 0..options.instances {
        let port = free_port()?;
        let log = log_file(dir, &format!("fixture-{index}.log"))?;
        let child = Command::new(&fixture)
            .arg("--keep-alive")
            .env_clear()
            .env("PORT", port.to_string())
            .env("SMGR_FUNCTION", FUNCTION)
            .env("SMGR_INSTANCE", (index + 1).to_string())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", fixture.display()))?;
        processes.add(format!("fixture {index}"), child, Stop::Kill);
        upstreams.push(port);
    }
    for &port in &upstreams {
        wait_for(&format!("the fixture on port {port}"), Duration::from_secs(10), || {
            get(local(port), "/healthz").is_ok_and(|(code, _)| code == 200)
        })?;
    }

    let smgr_port = free_port()?;
    let config = dir.join("smgr.toml");
    write(&config, &smgr_config(options, smgr_port, &fixture, dir))?;
    let log = log_file(dir, "smgr.log")?;
    let child = Command::new(&smgr)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", smgr.display()))?;
    let smgr_pid = child.id();
    processes.add("smgr".to_owned(), child, Stop::Terminate);
    wait_for("smgr's instances", Duration::from_secs(30), || {
        get(local(smgr_port), "/readyz").is_ok_and(|(code, _)| code == 200)
    })?;
    let (_, pools) = get(local(smgr_port), "/admin/pools")?;
    processes.watch_after_stop(instance_pids(&pools)?);

    let nginx_port = free_port()?;
    let nginx_conf = dir.join("nginx.conf");
    write(&nginx_conf, &nginx_config(nginx_port, &upstreams, dir))?;
    let child = Command::new(&tools.nginx)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&nginx_conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(log_file(dir, "nginx-stderr.log")?)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", tools.nginx.display()))?;
    let nginx_pid = child.id();
    processes.add("nginx".to_owned(), child, Stop::Terminate);
    let function_path = format!("/fn/{FUNCTION}/");
    wait_for("nginx", Duration::from_secs(10), || {
        get(local(nginx_port), &function_path).is_ok_and(|(code, _)| code == 200)
    })?;
    processes.watch_after_stop(children_of(nginx_pid));

    let targets = [
        Target { name: "direct", url: format!("http://127.0.0.1:{}/", upstreams[0]) },
        Target { name: "smgr", url: format!("http://127.0.0.1:{smgr_port}{function_path}") },
        Target { name: "nginx", url: format!("http://127.0.0.1:{nginx_port}{function_path}") },
    ];
    for target in &targets {
        let address = local(target.url_port());
        let (code, body) = get(address, target.url_path())?;
        if code != 200 || !body.starts_with(&format!("function={FUNCTION} ")) {
            return Err(format!("{} answered {code}: {body}", target.url));
        }
    }
    note(&format!(
        "smgr pid {smgr_pid}, nginx master pid {nginx_pid}; {} instances each, wrk {}",
        options.instances,
        options.wrk_args().join(" ")
    ));

    // A short warm-up of each target, not recorded: caches, kept connections, page faults.
    let warm_up = Options { duration: 2, ..options.clone() };
    for target in &targets {
        wrk(&tools.wrk, &warm_up, target)?;
    }
    let mut rounds = Vec::new();
    for round in 0..options.rounds {
        let mut results: [Option<WrkResult>; 3] = [None, None, None];
        let order = rotation(round, targets.len());
        for &index in &order {
            let result = wrk(&tools.wrk, options, &targets[index])?;
            note(&format!(
                "round {}: {:<6} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs",
                round + 1,
                targets[index].name,
                result.requests_per_sec,
                result.p50_us,
                result.p99_us
            ));
            results[index] = Some(result);
        }
        let [Some(direct), Some(smgr), Some(nginx)] = results else {
            return Err("a round lost a result".to_owned());
        };
        let order = order.iter().map(|&index| targets[index].name).collect::<Vec<_>>().join(", ");
        rounds.push(Round { order, direct, smgr, nginx });
    }
    Ok(report(options, &rounds))
}

/// One thing wrk loads.
struct Target {
    name: &'static str,
    url: String,
}

impl Target {
    fn url_port(&self) -> u16 {
        let rest = self.url.trim_start_matches("http://127.0.0.1:");
        rest.split('/').next().and_then(|port| port.parse().ok()).unwrap_or(0)
    }

    fn url_path(&self) -> &str {
        let rest = self.url.trim_start_matches("http://");
        rest.find('/').map_or("/", |slash| &rest[slash..])
    }
}

/// The order of the targets in round `round`: rotated by one each round, so that over as many
/// rounds as targets each one runs once in each position.
fn rotation(round: usize, targets: usize) -> Vec<usize> {
    (0..targets).map(|position| (position + round) % targets).collect()
}

// ---------------------------------------------------------------------------------------------
// Tools and build
// ---------------------------------------------------------------------------------------------

struct Tools {
    nginx: PathBuf,
    wrk: PathBuf,
}

/// nginx and wrk, installed with apt-get when missing.
fn ensure_tools() -> Result<Tools, String> {
    let missing: Vec<&str> = [("nginx", "nginx-light"), ("wrk", "wrk")]
        .into_iter()
        .filter(|(program, _)| find_program(program).is_none())
        .map(|(_, package)| package)
        .collect();
    if !missing.is_empty() {
        install(&missing)?;
    }
    let found = |program: &str| {
        find_program(program).ok_or_else(|| format!("{program} is still missing after installing"))
    };
    Ok(Tools { nginx: found("nginx")?, wrk: found("wrk")? })
}

/// `apt-get install -y packages`; then, if that fails, once more after `apt-get update`, and
/// with `nginx` in place of `nginx-light`, which not every Debian release has.
fn install(packages: &[&str]) -> Result<(), String> {
    let attempt = |packages: &[&str]| -> bool {
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend_from_slice(packages);
        apt_get(&args).is_ok()
    };
    if attempt(packages) {
        return Ok(());
    }
    if apt_get(&["update"]).is_ok() && attempt(packages) {
        return Ok(());
    }
    let plain: Vec<&str> =
        packages.iter().map(|&p| if p == "nginx-light" { "nginx" } else { p }).collect();
    if plain != packages && attempt(&plain) {
        return Ok(());
    }
    Err(format!(
        "cannot install {}: `apt-get install` failed (it needs root and Debian's package \
         sources). Install nginx and wrk by hand and run again.",
        packages.join(" ")
    ))
}

fn build(root: &Path) -> Result<(), String> {
    let args = [
        "build",
        "--release",
        "-p",
        "backend-process",
        "--bin",
        "smgr-fixture",
        "-p",
        "gateway",
        "--bin",
        "smgr",
    ];
    note(&format!("cargo {}", args.join(" ")));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("cargo build failed ({status})")) }
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

// ---------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------

fn smgr_config(options: &Options, port: u16, fixture: &Path, dir: &Path) -> String {
    format!(
        r#"# Generated by `cargo xtask bench-gateway`.
[server]
listen = "127.0.0.1:{port}"
pool = "bench-{pid}"
state_dir = {state}
shutdown_timeout = "5s"

[functions.{FUNCTION}]
command = [{fixture}, "--keep-alive"]
readiness = {{ http = "/healthz" }}
min_instances = {instances}
max_instances = {instances}
# {connections} connections over {instances} instances: every request can be in flight at once,
# as through nginx, so neither proxy queues.
concurrency = {concurrency}
queue_limit = 4096
"#,
        pid = std::process::id(),
        state = toml_string(&dir.join("state")),
        fixture = toml_string(fixture),
        instances = options.instances,
        connections = options.connections,
        concurrency = options.concurrency(),
    )
}

fn toml_string(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// nginx as a reverse proxy in front of `upstreams`, with kept connections to them, one worker
/// per core (as many as smgr's runtime threads), every path under `dir`.
fn nginx_config(port: u16, upstreams: &[u16], dir: &Path) -> String {
    let dir = dir.display();
    let mut servers = String::new();
    for upstream in upstreams {
        let _ = writeln!(servers, "        server 127.0.0.1:{upstream};");
    }
    format!(
        r#"# Generated by `cargo xtask bench-gateway`.
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream {FUNCTION} {{
{servers}        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port};
        location /fn/{FUNCTION}/ {{
            proxy_pass http://{FUNCTION}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

// ---------------------------------------------------------------------------------------------
// wrk
// ---------------------------------------------------------------------------------------------

/// What one wrk run measured.
#[derive(Debug, Clone, PartialEq)]
struct WrkResult {
    requests_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

fn wrk(wrk: &Path, options: &Options, target: &Target) -> Result<WrkResult, String> {
    let output = Command::new(wrk)
        .args(options.wrk_args())
        .arg(&target.url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk against {} failed ({}): {text}{}",
            target.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_wrk(&text).map_err(|error| format!("wrk against {}: {error}\n{text}", target.name))
}

/// Reads wrk's `--latency` report; fails on any error or non-2xx answer.
fn parse_wrk(text: &str) -> Result<WrkResult, String> {
    let mut requests_per_sec = None;
    let mut p50_us = None;
    let mut p99_us = None;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(value)) => {
                requests_per_sec = value.parse::<f64>().ok();
            }
            (Some("50%"), Some(value)) => p50_us = Some(parse_time(value)?),
            (Some("99%"), Some(value)) => p99_us = Some(parse_time(value)?),
            (Some("Non-2xx"), _) => return Err(format!("errors: {line}")),
            (Some("Socket"), Some("errors:")) => return Err(format!("errors: {line}")),
            _ => {}
        }
    }
    match (requests_per_sec, p50_us, p99_us) {
        (Some(requests_per_sec), Some(p50_us), Some(p99_us)) => {
            Ok(WrkResult { requests_per_sec, p50_us, p99_us })
        }
        _ => Err("no Requests/sec or latency distribution in wrk's output".to_owned()),
    }
}

/// A wrk duration (`635.91us`, `1.51ms`, `2.00s`, `1.00m`) in microseconds.
fn parse_time(text: &str) -> Result<f64, String> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return Err(format!("{text:?}: not a wrk duration")),
    };
    number.parse::<f64>().map(|n| n * scale).map_err(|_| format!("{text:?}: not a wrk duration"))
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// One round's three measurements and the order they ran in.
struct Round {
    order: String,
    direct: WrkResult,
    smgr: WrkResult,
    nginx: WrkResult,
}

impl Round {
    fn throughput_ratio(&self) -> f64 {
        self.smgr.requests_per_sec / self.nginx.requests_per_sec
    }

    fn added_p50_us(&self) -> f64 {
        self.smgr.p50_us - self.direct.p50_us
    }

    /// What the peer adds, for scale: the target is absolute.
    fn nginx_added_p50_us(&self) -> f64 {
        self.nginx.p50_us - self.direct.p50_us
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The markdown table of the rounds and their medians, and the verdict on each target.
fn report(options: &Options, rounds: &[Round]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "wrk {} against each target; {} fixture instances behind smgr (concurrency {}) and \
         {} behind nginx; direct = one of nginx's instances.\n",
        options.wrk_args().join(" "),
        options.instances,
        options.concurrency(),
        options.instances,
    );
    out.push_str(
        "| round (order) | direct req/s | p50 | p99 | smgr req/s | p50 | p99 | nginx req/s | p50 \
         | p99 | smgr/nginx req/s | smgr p50 − direct p50 | nginx p50 − direct p50 |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let row = |out: &mut String,
               label: &str,
               [d, s, n]: [&WrkResult; 3],
               ratio: f64,
               [added, nginx_added]: [f64; 2]| {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {ratio:.2}× | {added:+.0} µs \
             | {nginx_added:+.0} µs |",
            rate(d.requests_per_sec),
            micros(d.p50_us),
            micros(d.p99_us),
            rate(s.requests_per_sec),
            micros(s.p50_us),
            micros(s.p99_us),
            rate(n.requests_per_sec),
            micros(n.p50_us),
            micros(n.p99_us),
        );
    };
    for (index, round) in rounds.iter().enumerate() {
        let label = format!("{} ({})", index + 1, round.order);
        let results = [&round.direct, &round.smgr, &round.nginx];
        let added = [round.added_p50_us(), round.nginx_added_p50_us()];
        row(&mut out, &label, results, round.throughput_ratio(), added);
    }
    let median_of = |pick: fn(&Round) -> &WrkResult| WrkResult {
        requests_per_sec: median(rounds.iter().map(|r| pick(r).requests_per_sec).collect()),
        p50_us: median(rounds.iter().map(|r| pick(r).p50_us).collect()),
        p99_us: median(rounds.iter().map(|r| pick(r).p99_us).collect()),
    };
    let medians = [median_of(|r| &r.direct), median_of(|r| &r.smgr), median_of(|r| &r.nginx)];
    let ratio = median(rounds.iter().map(Round::throughput_ratio).collect());
    let added = median(rounds.iter().map(Round::added_p50_us).collect());
    let nginx_added = median(rounds.iter().map(Round::nginx_added_p50_us).collect());
    let medians = [&medians[0], &medians[1], &medians[2]];
    row(&mut out, "**median**", medians, ratio, [added, nginx_added]);
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let _ = write!(
        out,
        "\nThe ratios are the medians of each round's ratio.\n\
         - throughput: smgr {ratio:.2}× nginx (target ≥ {THROUGHPUT_TARGET:.1}×): {}\n\
         - added p50: {added:+.0} µs over direct (target ≤ {ADDED_P50_TARGET_US:.0} µs): {} \
         (nginx adds {nginx_added:+.0} µs)",
        verdict(ratio >= THROUGHPUT_TARGET),
        verdict(added <= ADDED_P50_TARGET_US),
    );
    out
}

fn rate(requests_per_sec: f64) -> String {
    format!("{requests_per_sec:.0}")
}

fn micros(us: f64) -> String {
    format!("{us:.0} µs")
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// How a started process is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL: it holds nothing worth a clean exit.
    Kill,
    /// SIGTERM, for a graceful shutdown that stops its own children; SIGKILL after a while.
    Terminate,
}

/// The processes the run started, stopped in reverse order at the end (or when dropped), and
/// the pids of their children, which must be gone once they are stopped.
#[derive(Default)]
struct Processes {
    started: Vec<(String, Child, Stop)>,
    watched: Vec<u32>,
}

impl Processes {
    fn add(&mut self, name: String, child: Child, stop: Stop) {
        self.started.push((name, child, stop));
    }

    fn watch_after_stop(&mut self, pids: Vec<u32>) {
        self.watched.extend(pids);
    }

    /// Stops every process; fails naming any that is still alive afterwards.
    fn stop_all(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        while let Some((name, mut child, stop)) = self.started.pop() {
            if stop == Stop::Terminate {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if matches!(child.try_wait(), Ok(None)) {
                if stop == Stop::Terminate {
                    problems.push(format!("{name} ignored SIGTERM for 15 s and was killed"));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // Children reparented after their parent exits may need a moment to go.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left: Vec<u32> = self.watched.clone();
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|&pid| alive(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        left.retain(|&pid| alive(pid));
        left.extend(children_of(std::process::id()).into_iter().filter(|&pid| alive(pid)));
        if !left.is_empty() {
            problems.push(format!("processes left behind: {left:?}"));
        }
        self.watched.clear();
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// The pids of the instances in smgr's `GET /admin/pools` answer.
fn instance_pids(pools: &str) -> Result<Vec<u32>, String> {
    let value: Value =
        serde_json::from_str(pools).map_err(|e| format!("smgr's /admin/pools: {e}: {pools}"))?;
    let pids: Vec<u32> = value["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|pool| pool["instances"].as_array().into_iter().flatten())
        .filter_map(|instance| instance["pid"].as_u64()?.try_into().ok())
        .collect();
    if pids.is_empty() {
        return Err(format!("smgr's /admin/pools names no instance pid: {pools}"));
    }
    Ok(pids)
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

fn note(message: &str) {
    eprintln!("bench-gateway: {message}");
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn log_file(dir: &Path, name: &str) -> Result<fs::File, String> {
    let path = dir.join(name);
    fs::File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            return Err(format!("{what} not ready within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One `GET` on its own connection: the status code and the body.
fn get(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let fail = |e: std::io::Error| format!("GET http://{address}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).map_err(fail)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(fail)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
        .map_err(fail)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(fail)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "\
Running 10s test @ http://127.0.0.1:40000/fn/bench/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   648.31us  210.11us  12.02ms   91.27%
    Req/Sec    24.61k     1.52k   27.90k    72.50%
  Latency Distribution
     50%  615.00us
     75%  702.00us
     90%  811.00us
     99%    1.51ms
  489870 requests in 10.00s, 95.97MB read
Requests/sec:  48986.85
Transfer/sec:      9.60MB
";

    #[test]
    fn reads_throughput_and_percentiles() {
        let result = parse_wrk(WRK).unwrap();
        assert_eq!(result, WrkResult { requests_per_sec: 48986.85, p50_us: 615.0, p99_us: 1510.0 });
    }

    #[test]
    fn refuses_runs_with_errors() {
        let errors = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
        );
        assert!(parse_wrk(&errors).unwrap_err().contains("read 3"));
        let non_2xx = WRK.replace("Requests/sec", "  Non-2xx or 3xx responses: 7\nRequests/sec");
        assert!(parse_wrk(&non_2xx).unwrap_err().contains("Non-2xx"));
        assert!(parse_wrk("Running 10s test").is_err());
    }

    #[test]
    fn converts_wrk_durations_to_microseconds() {
        assert_eq!(parse_time("635.91us"), Ok(635.91));
        assert_eq!(parse_time("1.50ms"), Ok(1500.0));
        assert_eq!(parse_time("2.00s"), Ok(2e6));
        assert_eq!(parse_time("1.00m"), Ok(60e6));
        assert!(parse_time("3parsecs").is_err());
        assert!(parse_time("fast").is_err());
    }

    #[test]
    fn rotates_the_order_so_each_target_takes_each_place() {
        assert_eq!(rotation(0, 3), [0, 1, 2]);
        assert_eq!(rotation(1, 3), [1, 2, 0]);
        assert_eq!(rotation(2, 3), [2, 0, 1]);
        assert_eq!(rotation(3, 3), [0, 1, 2]);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn options() {
        assert_eq!(parse_options(&[]), Ok(Options::default()));
        let options = parse_options(&["--rounds", "5", "--duration", "3"]).unwrap();
        assert_eq!((options.rounds, options.duration), (5, 3));
        assert_eq!(Options::default().concurrency(), 8);
        assert!(parse_options(&["--rounds"]).is_err());
        assert!(parse_options(&["--rounds", "0"]).is_err());
        assert!(parse_options(&["--fast"]).is_err());
        assert!(parse_options(&["--connections", "1"]).is_err());
    }

    #[test]
    fn configs_name_every_instance_and_path() {
        let dir = Path::new("/tmp/bench");
        let nginx = nginx_config(8000, &[9001, 9002], dir);
        assert!(nginx.contains("server 127.0.0.1:9001;\n        server 127.0.0.1:9002;"));
        assert!(nginx.contains("listen 127.0.0.1:8000;"));
        assert!(nginx.contains("pid /tmp/bench/nginx.pid;"));
        assert!(nginx.contains("keepalive 32;"));
        assert!(nginx.contains("proxy_set_header Connection \"\";"));
        let smgr = smgr_config(&Options::default(), 8001, Path::new("/t/smgr-fixture"), dir);
        assert!(smgr.contains("command = [\"/t/smgr-fixture\", \"--keep-alive\"]"));
        assert!(smgr.contains("min_instances = 4\nmax_instances = 4\n"));
        assert!(smgr.contains("concurrency = 8\n"));
        assert!(smgr.contains("state_dir = \"/tmp/bench/state\""));
    }

    #[test]
    fn target_urls_split_into_port_and_path() {
        let target = Target { name: "smgr", url: "http://127.0.0.1:8123/fn/bench/".to_owned() };
        assert_eq!((target.url_port(), target.url_path()), (8123, "/fn/bench/"));
    }

    #[test]
    fn reads_instance_pids() {
        let pools = r#"{"pools":[{"instances":[{"pid":10},{"pid":11}]}]}"#;
        assert_eq!(instance_pids(pools), Ok(vec![10, 11]));
        assert!(instance_pids(r#"{"pools":[]}"#).is_err());
    }

    #[test]
    fn reports_medians_and_verdicts() {
        let result = |rps: f64, p50: f64| WrkResult {
            requests_per_sec: rps,
            p50_us: p50,
            p99_us: 2.0 * p50,
        };
        let rounds: Vec<Round> = [(100.0, 90.0, 300.0), (110.0, 95.0, 320.0), (105.0, 80.0, 310.0)]
            .into_iter()
            .map(|(smgr, nginx, p50)| Round {
                order: "direct, smgr, nginx".to_owned(),
                direct: result(200.0, 250.0),
                smgr: result(smgr, p50),
                nginx: result(nginx, p50 + 10.0),
            })
            .collect();
        let text = report(&Options::default(), &rounds);
        assert!(text.contains("| **median** | 200 | 250 µs | 500 µs | 105 | 310 µs |"), "{text}");
        assert!(text.contains("smgr 1.16× nginx (target ≥ 1.0×): met"), "{text}");
        assert!(text.contains("+60 µs over direct (target ≤ 100 µs): met (nginx adds +70 µs)"));
        assert!(text.contains("| 1.16× | +60 µs | +70 µs |"), "{text}");
    }
}
