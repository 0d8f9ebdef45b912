//! The Docker backend (`backend-docker`) on the real Docker Engine of this machine, with the
//! fixture function's image (`smgr-fixture`, the std-only HTTP server, built `FROM scratch` by
//! `backend_docker::testkit::fixture_image`), against what the docker CLI does.
//!
//! - `docker_cold_start/backend`: `DockerBackend::launch` of the fixture image with HTTP readiness
//!   (`GET /healthz`), `pull = never`, every other setting the spec's default (init as process
//!   1, every capability dropped, no new privileges, the `smgr.*` labels and `SMGR_*`
//!   environment), from the call to a ready instance: the spec check, the image check (cached
//!   after the first launch), create, start, inspect for the published port, and the readiness
//!   attempts (a 2 ms pause, ×1.5 per attempt up to 50 ms). The instance is terminated (1 s
//!   grace: stop, then remove) outside the timed region.
//! - `docker_cold_start/cli`: the peer, the docker CLI: `docker run -d -p 127.0.0.1::8080 -e PORT=8080
//!   --label smgr-bench=cli <image> --any-address` (a `tokio::process` child, waited for, the
//!   container id read from its stdout), then `docker port <id> 8080/tcp` for the host port
//!   (the CLI needs it too), then `GET /healthz` on that port every 1 ms (a tokio sleep) until
//!   it answers 200. Removed (`docker rm -f <id>`) outside the timed region.
//! - `docker_cold_start/paired`: both again, alternating within each iteration (and which goes first)
//!   so that the machine's drift hits both alike; the report is the table printed after the
//!   group: the median ratio backend/cli of the pairs, with its quartiles, and the median of
//!   each of the CLI's three steps. This is the figure docs/performance.md quotes against the
//!   target (≤ 1.0×).
//! - `docker_warm_acquire/backend_pool`: a `pool_core::Pool` of `FunctionManager<DockerBackend>` with
//!   4 ready containers (min = max = 4, every other setting the default), on a current-thread
//!   runtime: acquire and drop one lease. After the group, 100 000 more acquire + drop pairs
//!   are timed one by one into an HDR histogram and its percentiles printed (no target beyond
//!   recording it; the process backend's is p50 ≤ 2 µs). Each timing includes one clock read
//!   (~20–30 ns).
//!
//! Cold starts run on a multi-thread runtime with two workers, as the gateway does. Every
//! instance is terminated, every CLI container removed and the pool shut down before the run
//! ends; a run that leaves a container behind (label `smgr.pool=bench-docker` or
//! `smgr-bench=cli`) panics. What a run killed midway left behind is removed at the start of
//! the next.
//!
//! Every cold-start sample is a single iteration, so criterion warns that it cannot complete
//! the samples in the measurement time: expected, and harmless. The groups are named
//! `docker_*` so that criterion keeps their results apart from `process.rs`'s.
//!
//! The engine is `DOCKER_HOST` or /var/run/docker.sock, and the CLI is `docker` on `PATH`.
//! Without an engine that answers, the bench says so and exits without measuring anything
//! (benchmarks are compiled in CI but run by hand). The image is compiled with `rustc` and
//! built on the first run, under `target/bench-docker`; later runs find it on the engine.
//!
//! ```text
//! cargo bench -p benches --bench docker                 # everything, ~2-3 min on 2 cores
//! cargo bench -p benches --bench docker -- docker_cold_start   # one group
//! cargo bench -p benches --bench docker -- docker_warm_acquire
//! ```

// A report tool: the ratio and percentile tables go to stdout, next to criterion's own output.
#![allow(clippy::print_stdout)]

mod common;

use common::{short, spread};

#[path = "common/backends.rs"]
mod backends;

use backends::{current_thread, summed, two_workers, warm_acquire_group, warm_pool};

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backend_docker::{DockerBackend, DockerBackendConfig, DockerSpec, PullPolicy, Readiness};
use criterion::{Criterion, SamplingMode, criterion_group};
use pool_core::testkit::http_get;
use pool_core::{Backend, FunctionSpec, InstanceId, PoolName, Scope};
use tokio::runtime::Runtime;

/// The pool name stamped on every container the backend launches here.
const POOL_NAME: &str = "bench-docker";
/// The label of the CLI baseline's containers, so that none can be left behind unseen.
const CLI_LABEL: &str = "smgr-bench=cli";
/// The function's name.
const FUNCTION: &str = "fixture";
/// The port the fixture listens on inside the container (the spec's default).
const CONTAINER_PORT: u16 = 8080;
/// The readiness path, on both sides.
const HEALTHZ: &str = "/healthz";
/// Grace period of a terminate: the fixture stops at once on SIGTERM.
const GRACE: Duration = Duration::from_secs(1);
/// How long the CLI baseline waits for the fixture before giving up.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// The CLI baseline's pause between readiness attempts.
const CLI_PAUSE: Duration = Duration::from_millis(1);
/// The first instance id of the cold starts, far from the pool's own (which start at 0).
const COLD_IDS: u64 = 1 << 32;

// ---------------------------------------------------------------------------------------------
// Setup

/// The backend, connected on `runtime` (whose event-stream task it keeps), after reaping what
/// a bench run killed midway left behind: the pool's containers and the CLI's.
fn backend(runtime: &Runtime) -> Arc<DockerBackend> {
    let scope = Scope::current(PoolName::new(POOL_NAME).expect("a valid pool name"));
    let backend = runtime
        .block_on(DockerBackend::connect(DockerBackendConfig::new(scope)))
        .expect("the engine answered a moment ago");
    let reaped = runtime.block_on(backend.reap_orphans()).expect("reaping earlier runs' orphans");
    if reaped.instances > 0 {
        eprintln!("reaped {} container(s) left behind by an earlier run", reaped.instances);
    }
    let cli_left = cli_containers();
    if !cli_left.is_empty() {
        eprintln!("removing {} CLI container(s) left behind by an earlier run", cli_left.len());
        docker(&["rm", "-f"], &cli_left);
    }
    Arc::new(backend)
}

/// The fixture function's image, compiled and built on the first run.
fn image(runtime: &Runtime, backend: &DockerBackend) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-docker");
    runtime
        .block_on(backend_docker::testkit::fixture_image(backend.docker(), &dir))
        .unwrap_or_else(|error| panic!("building the fixture image: {error}"))
}

/// The fixture as a function: HTTP readiness, the image already on the engine.
fn function(image: &str) -> FunctionSpec<DockerSpec> {
    let spec = DockerSpec::new(image)
        .command(["--any-address"])
        .pull(PullPolicy::Never)
        .readiness(Readiness::Http(HEALTHZ.into()));
    FunctionSpec::new(FUNCTION, spec).expect("a valid function name")
}

/// Runs `docker <args> <more>` to completion (blocking); its stdout. Panics when it fails.
fn docker(args: &[&str], more: &[String]) -> String {
    let output = std::process::Command::new("docker")
        .args(args)
        .args(more)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("running docker {args:?}: {error}"));
    assert!(
        output.status.success(),
        "docker {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The ids of the CLI baseline's containers, running or not.
fn cli_containers() -> Vec<String> {
    let filter = format!("label={CLI_LABEL}");
    docker(&["ps", "-aq", "--filter", &filter], &[]).lines().map(str::to_owned).collect()
}

/// Panics when a container of the pool (of any owner) or of the CLI baseline is left.
fn assert_nothing_left(runtime: &Runtime, backend: &DockerBackend) {
    let left = runtime
        .block_on(backend.containers_of(&backend.scope().pool, None))
        .expect("listing the pool's containers");
    assert!(left.is_empty(), "containers of pool {POOL_NAME} left behind: {left:?}");
    let cli_left = cli_containers();
    assert!(cli_left.is_empty(), "CLI containers ({CLI_LABEL}) left behind: {cli_left:?}");
}

// ---------------------------------------------------------------------------------------------
// Cold start

/// The CLI baseline's steps, each from the start of the cold start.
#[derive(Debug, Clone, Copy)]
struct CliTimes {
    /// `docker run -d` exited with the container's id.
    run: Duration,
    /// `docker port` exited with the host port.
    port: Duration,
    /// `GET /healthz` answered 200: the cold start.
    ready: Duration,
}

/// Launches and removes containers of one function, timing the launches only.
struct Cold {
    backend: Arc<DockerBackend>,
    function: FunctionSpec<DockerSpec>,
    image: String,
    next_id: AtomicU64,
}

impl Cold {
    /// One backend launch until ready; the terminate that follows is not timed.
    async fn backend(&self) -> Duration {
        let id = InstanceId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let start = Instant::now();
        let instance =
            self.backend.launch(&self.function, id).await.expect("the fixture container starts");
        let elapsed = start.elapsed();
        self.backend.terminate(instance, GRACE).await.expect("the fixture container stops");
        elapsed
    }

    /// One `docker run` + `docker port` + readiness loop; the `docker rm -f` that follows is
    /// not timed.
    async fn cli(&self) -> CliTimes {
        let start = Instant::now();
        let publish = format!("127.0.0.1::{CONTAINER_PORT}");
        let port_env = format!("PORT={CONTAINER_PORT}");
        let run = tokio::process::Command::new("docker")
            .args(["run", "-d", "--label", CLI_LABEL, "-p", &publish, "-e", &port_env])
            .args([self.image.as_str(), "--any-address"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("docker run spawns");
        assert!(
            run.status.success(),
            "docker run failed ({}): {}",
            run.status,
            String::from_utf8_lossy(&run.stderr).trim()
        );
        let id = String::from_utf8_lossy(&run.stdout).trim().to_owned();
        let after_run = start.elapsed();
        let port = tokio::process::Command::new("docker")
            .args(["port", &id, &format!("{CONTAINER_PORT}/tcp")])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("docker port spawns");
        let mapping = String::from_utf8_lossy(&port.stdout);
        let Some(address) = mapping.lines().find_map(|line| line.trim().parse::<SocketAddr>().ok())
        else {
            let _ = self.remove(&id).await;
            panic!(
                "docker port {id} gave no address ({}): {mapping:?} {}",
                port.status,
                String::from_utf8_lossy(&port.stderr).trim()
            );
        };
        let after_port = start.elapsed();
        loop {
            // The engine's port proxy accepts a connection before the fixture listens, then
            // closes it: only a 200 counts.
            if let Ok((200, _)) = http_get(address, HEALTHZ).await {
                break;
            }
            if start.elapsed() >= CLI_TIMEOUT {
                let _ = self.remove(&id).await;
                panic!("container {id} was not ready at {address} in {CLI_TIMEOUT:?}");
            }
            tokio::time::sleep(CLI_PAUSE).await;
        }
        let ready = start.elapsed();
        self.remove(&id).await.expect("docker rm -f");
        CliTimes { run: after_run, port: after_port, ready }
    }

    /// `docker rm -f <id>`.
    async fn remove(&self, id: &str) -> Result<(), String> {
        let removed = tokio::process::Command::new("docker")
            .args(["rm", "-f", id])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|error| format!("docker rm -f {id}: {error}"))?;
        if removed.status.success() {
            Ok(())
        } else {
            Err(format!(
                "docker rm -f {id} failed ({}): {}",
                removed.status,
                String::from_utf8_lossy(&removed.stderr).trim()
            ))
        }
    }
}

fn cold_start(c: &mut Criterion) {
    let runtime = two_workers();
    let backend = backend(&runtime);
    let image = image(&runtime, &backend);
    let cold =
        Cold { function: function(&image), backend, image, next_id: AtomicU64::new(COLD_IDS) };
    let mut group = c.benchmark_group("docker_cold_start");
    // One iteration per sample: a cold start costs 0.3-1 s, teardown not counted.
    short(&mut group, 10, 1_000, 4_000);
    group.sampling_mode(SamplingMode::Flat);

    group.bench_function("backend", |b| {
        b.iter_custom(|iters| summed(&runtime, iters, async || cold.backend().await));
    });
    group.bench_function("cli", |b| {
        b.iter_custom(|iters| summed(&runtime, iters, async || cold.cli().await.ready));
    });

    // The reference: more pairs than the single-sided runs above.
    short(&mut group, 30, 1_000, 10_000);
    let mut ratios = Vec::new();
    let mut backend_ms = Vec::new();
    let mut cli_ms = Vec::new();
    let mut steps_ms: [Vec<f64>; 3] = Default::default();
    group.bench_function("paired", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for iteration in 0..iters {
                    // Alternate who goes first, so neither always follows the other's teardown.
                    let (ours, cli) = if iteration % 2 == 0 {
                        let ours = cold.backend().await;
                        (ours, cold.cli().await)
                    } else {
                        let cli = cold.cli().await;
                        (cold.backend().await, cli)
                    };
                    ratios.push(ours.as_secs_f64() / cli.ready.as_secs_f64());
                    backend_ms.push(ours.as_secs_f64() * 1e3);
                    cli_ms.push(cli.ready.as_secs_f64() * 1e3);
                    steps_ms[0].push(cli.run.as_secs_f64() * 1e3);
                    steps_ms[1].push((cli.port - cli.run).as_secs_f64() * 1e3);
                    steps_ms[2].push((cli.ready - cli.port).as_secs_f64() * 1e3);
                    total += ours;
                }
                total
            })
        });
    });
    group.finish();
    assert_nothing_left(&runtime, &cold.backend);
    if ratios.is_empty() {
        return;
    }
    println!(
        "\ndocker_cold_start/paired: call -> ready, backend launch vs docker run + docker port + 1 ms \
         GET /healthz loop; median [p25, p75]; target backend/cli <= 1.0"
    );
    let mean_ratio = backend_ms.iter().sum::<f64>() / cli_ms.iter().sum::<f64>();
    println!("| backend ms | cli ms | backend/cli | mean backend / mean cli | pairs |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {mean_ratio:.2} | {} |",
        spread(&mut backend_ms, 1),
        spread(&mut cli_ms, 1),
        spread(&mut ratios, 2),
        ratios.len()
    );
    let [run, port, wait] = &mut steps_ms;
    println!(
        "cli steps, ms, median [p25, p75]: docker run {}; docker port {}; readiness wait {}\n",
        spread(run, 1),
        spread(port, 1),
        spread(wait, 1),
    );
}

// ---------------------------------------------------------------------------------------------
// Warm acquire

fn warm_acquire(c: &mut Criterion) {
    let runtime = current_thread();
    let backend = backend(&runtime);
    let image = image(&runtime, &backend);
    warm_acquire_group(
        c,
        "docker_warm_acquire",
        &runtime,
        async || warm_pool(backend.clone(), function(&image), Duration::from_secs(60)).await,
        ("containers", "no target (the process backend's: p50 <= 2000 ns)"),
        || assert_nothing_left(&runtime, &backend),
    );
}

criterion_group!(benches, cold_start, warm_acquire);

// `criterion_main!`, with a check first: without an engine there is nothing to measure.
fn main() {
    if let Err(why) = backend_docker::testkit::engine_answers() {
        eprintln!(
            "\n*** bench docker: no Docker Engine answers ({why}); nothing measured.\n*** Start \
             dockerd (or point DOCKER_HOST at one) and run it again.\n"
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
