//! What the backend benchmarks (`process`, `docker`) share: their runtimes, a warm pool, and
//! the timed acquires with the report printed after them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hdrhistogram::Histogram;
use pool_core::{Backend, FunctionManager, FunctionSpec, Pool, PoolConfig};
use tokio::runtime::Runtime;

use crate::common::short;

pub(crate) type BackendPool<B> = Pool<FunctionManager<B>>;

/// Warm instances of `warm_acquire`.
const WARM: usize = 4;
/// Acquire + drop pairs timed one by one into the histogram, after as many untimed ones.
const HDR_ITERATIONS: usize = 100_000;

pub(crate) fn two_workers() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

pub(crate) fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// The time of `iters` runs of `once` on `runtime`, each timing itself (setup and teardown left
/// out): for `iter_custom`.
pub(crate) fn summed(
    runtime: &Runtime,
    iters: u64,
    mut once: impl AsyncFnMut() -> Duration,
) -> Duration {
    runtime.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            total += once().await;
        }
        total
    })
}

/// A pool of [`WARM`] instances of `function` on `backend`, all ready and idle within
/// `limit`. Must run inside the runtime.
pub(crate) async fn warm_pool<B: Backend>(
    backend: Arc<B>,
    function: FunctionSpec<B::Spec>,
    limit: Duration,
) -> BackendPool<B> {
    let manager = FunctionManager::new(backend, function).expect("a valid spec");
    let config = PoolConfig { min: WARM, max: WARM, ..PoolConfig::default() };
    let pool = Pool::new(manager, config).expect("a valid config");
    let start = Instant::now();
    while pool.status().idle < WARM {
        assert!(
            start.elapsed() < limit,
            "the pool did not get {WARM} idle instances in {limit:?}: {:?}",
            pool.status()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    pool
}

/// The `warm_acquire` group named `name`: acquire + drop on a pool of [`WARM`] ready instances
/// (a [`warm_pool`]), made by `make` on `runtime` the first time the group runs; then
/// [`HDR_ITERATIONS`] of them timed one by one and reported under a title naming the
/// instances `what` and the `target` (see [`time_acquires_and_shut_down`]). After the pool is gone `nothing_left` checks the backend
/// left nothing running, and the warm instances must never have been replaced.
pub(crate) fn warm_acquire_group<B: Backend>(
    c: &mut Criterion,
    name: &str,
    runtime: &Runtime,
    make: impl AsyncFn() -> BackendPool<B>,
    (what, target): (&str, &str),
    nothing_left: impl Fn(),
) {
    let title = format!(
        "warm_acquire: {WARM} warm fixture {what}, current-thread runtime, \
         {HDR_ITERATIONS} acquire + drop pairs timed one by one (HDR histogram); {target}"
    );
    let mut slot: Option<BackendPool<B>> = None;
    let mut group = c.benchmark_group(name);
    short(&mut group, 20, 500, 2_000);
    group.bench_function("backend_pool", |b| {
        let pool = slot.get_or_insert_with(|| runtime.block_on(make())).clone();
        b.to_async(runtime).iter(|| async {
            drop(pool.acquire().await.expect("a warm instance"));
        });
    });
    group.finish();
    let Some(pool) = slot else {
        nothing_left();
        return;
    };
    let created = time_acquires_and_shut_down(runtime, pool, &title);
    nothing_left();
    assert_eq!(created, WARM as u64, "the warm instances were never replaced");
}

/// Times [`HDR_ITERATIONS`] acquire + drop pairs one by one into an HDR histogram (after as
/// many untimed ones), shuts the pool down, and prints `title`, the latency table and what the
/// shutdown did. Returns how many instances the pool created.
fn time_acquires_and_shut_down<B: Backend>(
    runtime: &Runtime,
    pool: BackendPool<B>,
    title: &str,
) -> u64 {
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
    runtime.block_on(async {
        for _ in 0..HDR_ITERATIONS {
            drop(pool.acquire().await.expect("a warm instance"));
        }
        for _ in 0..HDR_ITERATIONS {
            let start = Instant::now();
            let lease = pool.acquire().await.expect("a warm instance");
            drop(lease);
            latency.saturating_record(start.elapsed().as_nanos() as u64);
        }
    });
    let created = pool.status().counters.created;
    let report = runtime.block_on(pool.shutdown(Duration::from_secs(10)));
    let terminations = pool.manager().terminations().clone();
    drop(pool);

    println!("\n{title}");
    println!("| p50 ns | p90 ns | p99 ns | p99.9 ns | max ns | mean ns |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {:.0} |",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.9),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max(),
        latency.mean(),
    );
    println!(
        "shutdown: {} instances destroyed in {:?} (graceful {}, forced {}, already gone {}, \
         failed {})\n",
        report.destroyed,
        report.elapsed,
        terminations.graceful(),
        terminations.forced(),
        terminations.already_gone(),
        terminations.failed(),
    );
    created
}
