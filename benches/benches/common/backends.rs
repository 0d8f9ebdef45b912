//! What the backend benchmarks (`process`, `docker`) share: their runtimes, a warm pool, and
//! the timed acquires with the report printed after them.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pool_core::{Backend, FunctionManager, Pool, PoolConfig};
use tokio::runtime::Runtime;

pub(crate) type BackendPool<B> = Pool<FunctionManager<B>>;

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

/// A pool of `warm` instances of `manager`, all ready and idle within `limit`. Must run
/// inside the runtime.
pub(crate) async fn warm_pool<B: Backend>(
    manager: FunctionManager<B>,
    warm: usize,
    limit: Duration,
) -> BackendPool<B> {
    let config = PoolConfig { min: warm, max: warm, ..PoolConfig::default() };
    let pool = Pool::new(manager, config).expect("a valid config");
    let start = Instant::now();
    while pool.status().idle < warm {
        assert!(
            start.elapsed() < limit,
            "the pool did not get {warm} idle instances in {limit:?}: {:?}",
            pool.status()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    pool
}

/// Times `iterations` acquire + drop pairs one by one into an HDR histogram (after as many
/// untimed ones), shuts the pool down, and prints `title`, the latency table and what the
/// shutdown did. Returns how many instances the pool created.
pub(crate) fn time_acquires_and_shut_down<B: Backend>(
    runtime: &Runtime,
    pool: BackendPool<B>,
    iterations: usize,
    title: &str,
) -> u64 {
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
    runtime.block_on(async {
        for _ in 0..iterations {
            drop(pool.acquire().await.expect("a warm instance"));
        }
        for _ in 0..iterations {
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
