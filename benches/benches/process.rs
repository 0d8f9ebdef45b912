//! The child-process backend (`backend-process`) with its Rust fixture function, `smgr-fixture`
//! (std-only HTTP on `$PORT`), against what a hand-written launcher would do.
//!
//! - `cold_start/backend`: `ProcessBackend::launch` of the fixture with TCP readiness, from the
//!   call to a ready instance: the port pick, the spec check, the spawn (cleared environment,
//!   own process group, parent-death signal, piped and forwarded stdout and stderr), the state
//!   record and the readiness attempts (a 200 µs poll, then backoff). The instance is terminated outside
//!   the timed region.
//! - `cold_start/raw`: the peer, the same fixture binary started by hand: pick a free port the
//!   same way (bind 127.0.0.1:0, drop it, pass the port), `tokio::process::Command::new(fixture)
//!   .env("PORT", port).spawn()` (stdout to /dev/null, so that the fixture's banner stays out of
//!   the report), then try to connect every 1 ms (a tokio sleep) until it succeeds. Killed
//!   outside the timed region.
//! - `cold_start/paired`: both again, alternating within each iteration (and which goes first)
//!   so that the machine's drift hits both alike; the report is the table printed after the
//!   group: the median ratio backend/raw of the pairs, with its quartiles. This is the figure
//!   docs/performance.md quotes against the target (≤ 1.1×).
//! - `warm_acquire/backend_pool`: a `pool_core::Pool` of `FunctionManager<ProcessBackend>` with
//!   4 warm fixture instances (min = max = 4, every other setting the default), on a
//!   current-thread runtime: acquire and drop one lease. After the group, 100 000 more acquire +
//!   drop pairs are timed one by one into an HDR histogram and its p50 and p99 printed (target
//!   p50 ≤ 2 µs). Each timing includes one clock read (~20–30 ns).
//!
//! Cold starts run on a multi-thread runtime with two workers, as the gateway does. Every
//! instance is terminated and every pool shut down before its group ends; a group that leaves a
//! process behind panics.
//!
//! The fixture must be built first: benchmarks cannot name another package's binary, so it is
//! looked up next to the bench executable's `deps` directory (`target/release/smgr-fixture`).
//!
//! ```text
//! cargo build --release -p backend-process --bin smgr-fixture
//! cargo bench -p benches --bench process                 # everything, ~30 s on 2 cores
//! cargo bench -p benches --bench process -- cold_start   # one group
//! cargo bench -p benches --bench process -- warm_acquire
//! ```

// A report tool: the ratio and percentile tables go to stdout, next to criterion's own output.
#![allow(clippy::print_stdout)]

mod common;

use common::{short, spread};

#[path = "common/backends.rs"]
mod backends;

use backends::{current_thread, summed, two_workers, warm_acquire_group, warm_pool};

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backend_process::{ProcessBackend, ProcessBackendConfig, ProcessSpec, processes_of};
use criterion::{Criterion, SamplingMode};
use criterion::{criterion_group, criterion_main};
use pool_core::{Backend, FunctionSpec, InstanceId, PoolName, Scope};
use tokio::runtime::Runtime;

/// The pool name stamped on every instance the backend launches here.
const POOL_NAME: &str = "bench-process";
/// The function's name.
const FUNCTION: &str = "fixture";
/// Grace period of a terminate: the fixture stops at once on SIGTERM.
const GRACE: Duration = Duration::from_secs(5);
/// How long the raw baseline waits for the fixture before giving up.
const RAW_TIMEOUT: Duration = Duration::from_secs(10);
/// The raw baseline's pause between connect attempts.
const RAW_PAUSE: Duration = Duration::from_millis(1);
/// The first instance id of the cold starts, far from the pool's own (which start at 0).
const COLD_IDS: u64 = 1 << 32;

// ---------------------------------------------------------------------------------------------
// Setup

/// The fixture binary, next to the bench's `deps` directory.
fn fixture() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its own path");
    // target/<profile>/deps/process-<hash> -> target/<profile>/smgr-fixture
    let path = exe.parent().and_then(Path::parent).map_or_else(
        || PathBuf::from("target/release/smgr-fixture"),
        |dir| dir.join("smgr-fixture"),
    );
    assert!(
        path.is_file(),
        "smgr-fixture not found at {}: build it first with \
         `cargo build --release -p backend-process --bin smgr-fixture` \
         (without --release when the benches themselves are a debug build)",
        path.display()
    );
    path
}

/// The backend, with its records under `<temp>/smgr-bench-state`, after reaping what a bench
/// run killed midway left behind.
fn backend(runtime: &Runtime) -> Arc<ProcessBackend> {
    let scope = Scope::current(PoolName::new(POOL_NAME).expect("a valid pool name"));
    let config = ProcessBackendConfig {
        scope,
        state_dir: Some(std::env::temp_dir().join("smgr-bench-state")),
    };
    let backend = Arc::new(ProcessBackend::new(config).expect("the state directory is writable"));
    let reaped = runtime.block_on(backend.reap_orphans()).expect("reaping earlier runs' orphans");
    if reaped.instances > 0 {
        eprintln!("reaped {} fixture(s) left behind by an earlier run", reaped.instances);
    }
    backend
}

/// The fixture as a function with every default: TCP readiness, cleared environment.
fn function(fixture: &Path) -> FunctionSpec<ProcessSpec> {
    FunctionSpec::new(FUNCTION, ProcessSpec::new(fixture)).expect("a valid function name")
}

/// Panics when a child of this backend still runs.
fn assert_nothing_left(backend: &ProcessBackend) {
    let scope = backend.scope();
    let left = processes_of(&scope.pool, &scope.owner, None);
    assert!(left.is_empty(), "fixture processes left running: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// Cold start

/// Launches and terminates instances of one function, timing the launches only.
struct Cold {
    backend: Arc<ProcessBackend>,
    function: FunctionSpec<ProcessSpec>,
    fixture: PathBuf,
    next_id: AtomicU64,
}

impl Cold {
    /// One backend launch until ready; the terminate that follows is not timed.
    async fn backend(&self) -> Duration {
        let id = InstanceId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let start = Instant::now();
        let instance = self.backend.launch(&self.function, id).await.expect("the fixture starts");
        let elapsed = start.elapsed();
        self.backend.terminate(instance, GRACE).await.expect("the fixture stops");
        elapsed
    }

    /// One raw spawn + connect loop; the kill that follows is not timed.
    async fn raw(&self) -> Duration {
        let start = Instant::now();
        let port = {
            let listener =
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port on 127.0.0.1");
            listener.local_addr().expect("a bound address").port()
        };
        let mut child = tokio::process::Command::new(&self.fixture)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the fixture spawns");
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            match tokio::net::TcpStream::connect(address).await {
                // A connect to a port nobody listens on yet can reach itself (simultaneous
                // open), as the backend also checks.
                Ok(stream) if stream.local_addr().ok() != Some(address) => break,
                _ => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the fixture exited before it was ready: {status}");
            }
            assert!(start.elapsed() < RAW_TIMEOUT, "the fixture was not ready in {RAW_TIMEOUT:?}");
            tokio::time::sleep(RAW_PAUSE).await;
        }
        let elapsed = start.elapsed();
        child.kill().await.expect("the fixture is killed");
        elapsed
    }
}

fn cold_start(c: &mut Criterion) {
    let runtime = two_workers();
    let fixture = fixture();
    let backend = backend(&runtime);
    let cold =
        Cold { function: function(&fixture), backend, fixture, next_id: AtomicU64::new(COLD_IDS) };
    let mut group = c.benchmark_group("cold_start");
    short(&mut group, 20, 500, 3_000);
    group.sampling_mode(SamplingMode::Flat);

    group.bench_function("backend", |b| {
        b.iter_custom(|iters| summed(&runtime, iters, async || cold.backend().await));
    });
    group.bench_function("raw", |b| {
        b.iter_custom(|iters| summed(&runtime, iters, async || cold.raw().await));
    });

    // The reference: more pairs than the single-sided runs above.
    short(&mut group, 30, 500, 15_000);
    let mut ratios = Vec::new();
    let mut backend_ms = Vec::new();
    let mut raw_ms = Vec::new();
    group.bench_function("paired", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for iteration in 0..iters {
                    // Alternate who goes first, so neither always follows the other's teardown.
                    let (ours, raw) = if iteration % 2 == 0 {
                        let ours = cold.backend().await;
                        (ours, cold.raw().await)
                    } else {
                        let raw = cold.raw().await;
                        (cold.backend().await, raw)
                    };
                    ratios.push(ours.as_secs_f64() / raw.as_secs_f64());
                    backend_ms.push(ours.as_secs_f64() * 1e3);
                    raw_ms.push(raw.as_secs_f64() * 1e3);
                    total += ours;
                }
                total
            })
        });
    });
    group.finish();
    assert_nothing_left(&cold.backend);
    if ratios.is_empty() {
        return;
    }
    println!(
        "\ncold_start/paired: spawn -> ready, backend launch vs raw spawn + 1 ms connect loop; \
         median [p25, p75]; target backend/raw <= 1.1"
    );
    // The ratio of the means too: each side's time moves in steps of tokio's 1 ms timer tick,
    // which makes single pairs (and their median) jumpy.
    let mean_ratio = backend_ms.iter().sum::<f64>() / raw_ms.iter().sum::<f64>();
    println!("| backend ms | raw ms | backend/raw | mean backend / mean raw | pairs |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {mean_ratio:.2} | {} |",
        spread(&mut backend_ms, 2),
        spread(&mut raw_ms, 2),
        spread(&mut ratios, 2),
        ratios.len()
    );
    println!();
}

// ---------------------------------------------------------------------------------------------
// Warm acquire

fn warm_acquire(c: &mut Criterion) {
    let runtime = current_thread();
    let fixture = fixture();
    let backend = backend(&runtime);
    warm_acquire_group(
        c,
        "warm_acquire",
        &runtime,
        async || warm_pool(backend.clone(), function(&fixture), Duration::from_secs(30)).await,
        ("instances", "target p50 <= 2000 ns"),
        || assert_nothing_left(&backend),
    );
}

criterion_group!(benches, cold_start, warm_acquire);
criterion_main!(benches);
