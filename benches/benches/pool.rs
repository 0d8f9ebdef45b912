//! Checkouts from `pool_core::Pool` against deadpool 0.13 (managed pool), bb8 0.9 and a bare
//! `tokio::sync::Semaphore`, the floor: a permit is the least any async pool can hand out.
//!
//! Every pool serves the same no-op manager: create returns a unit object at once (after 1 ms in
//! `cold_burst`), recycle and validity checks accept it, and every background chore that the
//! pool lets us turn off (health checks, idle eviction, bb8's reaper, bb8's test on checkout) is
//! off. Pools are filled to their size before anything is measured.
//!
//! Every pool bounds the wait of a checkout at 30 s, as ours does by default: our
//! `acquire_timeout` and bb8's `connection_timeout` are their defaults, and deadpool, which
//! waits forever unless told, gets `wait_timeout(30 s)`. A bound costs a pool something
//! (deadpool arms a tokio timer for every get that waits), so the groups whose names end in
//! `/unbounded` run ours (`acquire_timeout: None`) and deadpool (its default) without one, for
//! the users who wait as long as it takes. The semaphore has no bound.
//!
//! - `uncontended/<impl>`: take and drop one object in a loop on a current-thread runtime,
//!   pool of 1. Time per checkout.
//! - `contended/hold=<none|yield>/<impl>/W<tasks>xS<size>`: on a multi-thread runtime with two
//!   workers, W tasks share a pool of S objects and make 1024 checkouts between them, each
//!   holding its object for nothing or across one `yield_now`. The time is the whole batch
//!   (spawning the tasks included) divided by 1024: time per checkout.
//! - `paired/hold=<none|yield>/W<tasks>xS<size>`: the `contended` workload again, with ours,
//!   deadpool and bb8 timed in alternation batch after batch so that the machine's drift hits
//!   all alike, and ours and deadpool unbounded in the same alternation; the report is the table
//!   printed after the group: the median ratio ours/peer of paired batches, with its quartiles,
//!   both bounded, both unbounded, and with each pool's default (ours bounded, deadpool not).
//!   This is the table docs/performance.md quotes.
//! - `fairness/<impl>`: 64 tasks, 4 objects, 50 checkouts each, each holding its object for
//!   100 µs. The hold yields in a loop until 100 µs have passed rather than sleeping (tokio's
//!   timer has a 1 ms granularity) or spinning (a spin blocks one of the two workers, so at most
//!   two objects would ever be in use). Criterion times a whole run (3 200 checkouts; 80 ms is
//!   the ideal); the report is the table printed after the group: p50, p99 and max of the wait
//!   of every checkout, from calling get to holding the object, over all runs.
//! - `fairness_paired/rounds`: the `fairness` run again, ours and deadpool, each bounded and
//!   unbounded, in alternation round after round; the report is the table printed after the
//!   group: for both bounded, both unbounded and each at its default (ours bounded, deadpool
//!   not), the ratio of the p99 waits of runs from one round, ours/deadpool, median and
//!   quartiles, and how often ours was the lower and how often the higher. This is the
//!   fairness figure docs/performance.md quotes.
//! - `cold_burst/<impl>`: an empty pool of at most 8, creates costing 1 ms (a tokio sleep),
//!   64 tasks acquiring at once (each holds across one `yield_now`): the time until all 64 were
//!   served, on a fresh pool every iteration. Our pool may run 8 creates at once, like the
//!   others. No semaphore here: it has nothing to create.
//!
//! Compare within a row: absolute numbers on a shared two-core machine are noise, ratios less so.
//!
//! ```text
//! cargo bench -p benches --bench pool                        # everything, ~5 min on 2 cores
//! cargo bench -p benches --bench pool -- uncontended         # one group
//! cargo bench -p benches --bench pool -- 'contended/hold=none/.*/W32xS8'
//! cargo bench -p benches --bench pool -- fairness            # the wait-time tables
//! cargo bench -p benches --bench pool -- paired              # the paired ratio table
//! ```

// A report tool: the fairness table goes to stdout, next to criterion's own output.
#![allow(clippy::print_stdout)]

mod common;

use common::{quartiles, short, spread};

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode};
use criterion::{criterion_group, criterion_main};
use hdrhistogram::Histogram;
use pool_core::{Lease, PoolConfig};
use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Checkouts per iteration of `contended`, shared among the tasks.
const CONTENDED_TOTAL: usize = 1024;
/// (tasks, pool size) pairs of `contended`: every tasks × size with tasks ≥ size.
const SHAPES: [(usize, usize); 13] = [
    (2, 1),
    (2, 2),
    (8, 1),
    (8, 2),
    (8, 8),
    (32, 1),
    (32, 2),
    (32, 8),
    (32, 16),
    (128, 1),
    (128, 2),
    (128, 8),
    (128, 16),
];
/// Tasks, objects, checkouts per task and hold of `fairness`.
const FAIR_TASKS: usize = 64;
const FAIR_SIZE: usize = 4;
const FAIR_ROUNDS: usize = 50;
const FAIR_HOLD: Duration = Duration::from_micros(100);
/// Pool bound, create cost and simultaneous acquires of `cold_burst`.
const COLD_MAX: usize = 8;
const COLD_CREATE: Duration = Duration::from_millis(1);
const COLD_TASKS: usize = 64;
/// Our pool's `queue_limit`: above every number of waiters here (its default is 64).
const QUEUE_LIMIT: usize = 1024;
/// The longest a checkout may wait, in every pool but the `/unbounded` ones: our pool's default
/// `acquire_timeout`, bb8's default `connection_timeout`.
const WAIT_BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The manager and the pools

/// What every pool hands out.
#[derive(Debug)]
struct Object;

/// The one manager of every pool: creates at once or after `create_cost`, accepts every object.
#[derive(Debug, Clone, Copy, Default)]
struct Noop {
    create_cost: Option<Duration>,
}

impl Noop {
    fn costing(cost: Duration) -> Self {
        Self { create_cost: Some(cost) }
    }

    async fn make(&self) -> Object {
        if let Some(cost) = self.create_cost {
            tokio::time::sleep(cost).await;
        }
        Object
    }
}

#[async_trait::async_trait]
impl pool_core::Manager for Noop {
    type Instance = Object;
    type Error = Infallible;

    async fn create(&self, _: pool_core::InstanceId) -> Result<Object, Infallible> {
        Ok(self.make().await)
    }
}

impl deadpool::managed::Manager for Noop {
    type Type = Object;
    type Error = Infallible;

    async fn create(&self) -> Result<Object, Infallible> {
        Ok(self.make().await)
    }

    async fn recycle(
        &self,
        _: &mut Object,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

impl bb8::ManageConnection for Noop {
    type Connection = Object;
    type Error = Infallible;

    async fn connect(&self) -> Result<Object, Infallible> {
        Ok(self.make().await)
    }

    async fn is_valid(&self, _: &mut Object) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _: &mut Object) -> bool {
        false
    }
}

/// A pool under test, as the workloads see it.
trait Subject: Clone + Send + Sync + 'static {
    /// A checked-out object; dropping it gives the object back.
    type Guard<'a>: Send
    where
        Self: 'a;

    /// Checks an object out, waiting as long as it takes.
    fn get(&self) -> impl Future<Output = Self::Guard<'_>> + Send;
}

#[derive(Clone)]
struct Ours(pool_core::Pool<Noop>);

impl Subject for Ours {
    type Guard<'a> = Lease<Noop>;

    async fn get(&self) -> Lease<Noop> {
        self.0.acquire().await.expect("our pool hands out an object")
    }
}

#[derive(Clone)]
struct Deadpool(deadpool::managed::Pool<Noop>);

impl Subject for Deadpool {
    type Guard<'a> = deadpool::managed::Object<Noop>;

    async fn get(&self) -> deadpool::managed::Object<Noop> {
        self.0.get().await.expect("deadpool hands out an object")
    }
}

#[derive(Clone)]
struct Bb8(bb8::Pool<Noop>);

impl Subject for Bb8 {
    type Guard<'a> = bb8::PooledConnection<'a, Noop>;

    async fn get(&self) -> bb8::PooledConnection<'_, Noop> {
        self.0.get().await.expect("bb8 hands out an object")
    }
}

#[derive(Clone)]
struct Floor(Arc<Semaphore>);

impl Subject for Floor {
    type Guard<'a> = OwnedSemaphorePermit;

    async fn get(&self) -> OwnedSemaphorePermit {
        self.0.clone().acquire_owned().await.expect("the semaphore is never closed")
    }
}

/// Our pool with `size` objects, all created, its waits bounded by `wait` (`None`: unbounded).
/// Must run inside the runtime.
async fn prefilled_ours(size: usize, wait: Option<Duration>) -> Ours {
    let config = PoolConfig {
        min: size,
        max: size,
        acquire_timeout: wait,
        health_check_interval: None,
        idle_timeout: None,
        queue_limit: QUEUE_LIMIT,
        ..PoolConfig::default()
    };
    let pool = pool_core::Pool::new(Noop::default(), config).expect("a valid config");
    while pool.status().size < size {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ours(pool)
}

/// A deadpool of `size` objects, all created (`size` checkouts at once, then returned), its
/// waits bounded by `wait` (`None`: unbounded, deadpool's default).
async fn prefilled_deadpool(size: usize, wait: Option<Duration>) -> Deadpool {
    let pool =
        deadpool_builder(Noop::default(), size, wait).build().expect("a valid deadpool config");
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(pool.get().await.expect("deadpool creates an object"));
    }
    drop(held);
    assert_eq!(pool.status().size, size, "deadpool kept its objects");
    Deadpool(pool)
}

/// A deadpool of at most `size` objects whose gets wait at most `wait`.
fn deadpool_builder(
    manager: Noop,
    size: usize,
    wait: Option<Duration>,
) -> deadpool::managed::PoolBuilder<Noop> {
    let builder = deadpool::managed::Pool::builder(manager).max_size(size);
    // A timeout needs deadpool to know the runtime.
    builder.wait_timeout(wait).runtime(deadpool::Runtime::Tokio1)
}

/// A bb8 pool with `size` idle connections.
async fn prefilled_bb8(size: usize) -> Bb8 {
    let pool = bb8_builder(size).min_idle(Some(size as u32)).build(Noop::default()).await;
    let pool = pool.expect("bb8 connects");
    while pool.state().idle_connections < size as u32 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Bb8(pool)
}

/// bb8 without its reaper (no idle timeout, no max lifetime) and without checks on checkout.
fn bb8_builder(size: usize) -> bb8::Builder<Noop> {
    bb8::Pool::builder()
        .max_size(size as u32)
        .connection_timeout(WAIT_BOUND)
        .test_on_check_out(false)
        .idle_timeout(None)
        .max_lifetime(None)
}

/// The floor: `size` permits.
async fn floor(size: usize) -> Floor {
    Floor(Arc::new(Semaphore::new(size)))
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// How long a checkout holds its object.
#[derive(Debug, Clone, Copy)]
enum Hold {
    /// Gives it back at once.
    None,
    /// Across one `yield_now`: another task runs meanwhile.
    Yield,
    /// Yields in a loop until this long has passed.
    Busy(Duration),
}

impl Hold {
    fn name(self) -> &'static str {
        match self {
            Hold::None => "none",
            Hold::Yield => "yield",
            Hold::Busy(_) => "busy",
        }
    }

    async fn run(self) {
        match self {
            Hold::None => {}
            Hold::Yield => tokio::task::yield_now().await,
            Hold::Busy(length) => {
                let start = Instant::now();
                while start.elapsed() < length {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Spawns `tasks` tasks that each make `rounds` checkouts holding for `hold`, and waits for
/// them all.
async fn batch<S: Subject>(pool: &S, tasks: usize, rounds: usize, hold: Hold) {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let guard = pool.get().await;
                    hold.run().await;
                    drop(guard);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a checkout task panicked");
    }
}

/// Like [`batch`], timing every get; returns the waits in nanoseconds.
async fn timed_batch<S: Subject>(pool: &S, tasks: usize, rounds: usize, hold: Hold) -> Vec<u64> {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut waits = Vec::with_capacity(rounds);
                for _ in 0..rounds {
                    let asked = Instant::now();
                    let guard = pool.get().await;
                    waits.push(asked.elapsed().as_nanos() as u64);
                    hold.run().await;
                    drop(guard);
                }
                waits
            })
        })
        .collect();
    let mut waits = Vec::with_capacity(tasks * rounds);
    for handle in handles {
        waits.extend(handle.await.expect("a checkout task panicked"));
    }
    waits
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime")
}

fn two_workers() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a runtime")
}

/// Builds a pool on the first call only, so that benchmarks left out by a filter build nothing.
fn lazily<S, F>(slot: &mut Option<S>, runtime: &Runtime, make: impl FnOnce() -> F) -> S
where
    S: Subject,
    F: Future<Output = S>,
{
    slot.get_or_insert_with(|| runtime.block_on(make())).clone()
}

// ---------------------------------------------------------------------------------------------
// Groups

fn uncontended(c: &mut Criterion) {
    let runtime = current_thread();
    let mut group = c.benchmark_group("uncontended");
    short(&mut group, 20, 500, 2000);
    uncontended_one(&mut group, &runtime, "ours", || prefilled_ours(1, Some(WAIT_BOUND)));
    uncontended_one(&mut group, &runtime, "deadpool", || prefilled_deadpool(1, Some(WAIT_BOUND)));
    uncontended_one(&mut group, &runtime, "bb8", || prefilled_bb8(1));
    uncontended_one(&mut group, &runtime, "semaphore", || floor(1));
    group.finish();
    let mut group = c.benchmark_group("uncontended/unbounded");
    short(&mut group, 20, 500, 2000);
    uncontended_one(&mut group, &runtime, "ours", || prefilled_ours(1, None));
    uncontended_one(&mut group, &runtime, "deadpool", || prefilled_deadpool(1, None));
    group.finish();
}

fn uncontended_one<S, F>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    name: &str,
    make: impl Fn() -> F,
) where
    S: Subject,
    F: Future<Output = S>,
{
    let mut pool = None;
    group.bench_function(name, |b| {
        let pool = lazily(&mut pool, runtime, &make);
        b.to_async(runtime).iter(|| async { drop(pool.get().await) });
    });
}

fn contended(c: &mut Criterion) {
    let runtime = two_workers();
    for hold in [Hold::None, Hold::Yield] {
        let mut group = c.benchmark_group(format!("contended/hold={}", hold.name()));
        short(&mut group, 20, 500, 1000);
        group.sampling_mode(SamplingMode::Flat);
        for (tasks, size) in SHAPES {
            let shape = format!("W{tasks}xS{size}");
            let id = |name| BenchmarkId::new(name, &shape);
            let run = (tasks, hold);
            let bound = Some(WAIT_BOUND);
            contended_one(&mut group, &runtime, id("ours"), run, || prefilled_ours(size, bound));
            let deadpool = || prefilled_deadpool(size, bound);
            contended_one(&mut group, &runtime, id("deadpool"), run, deadpool);
            contended_one(&mut group, &runtime, id("bb8"), run, || prefilled_bb8(size));
            contended_one(&mut group, &runtime, id("semaphore"), run, || floor(size));
        }
        group.finish();
    }
}

fn contended_one<S, F>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    id: BenchmarkId,
    (tasks, hold): (usize, Hold),
    make: impl Fn() -> F,
) where
    S: Subject,
    F: Future<Output = S>,
{
    let rounds = CONTENDED_TOTAL / tasks;
    let mut pool = None;
    group.bench_function(id, |b| {
        let pool = lazily(&mut pool, runtime, &make);
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    batch(&pool, tasks, rounds, hold).await;
                }
                // Per checkout: criterion divides by `iters`, this by the checkouts of one.
                start.elapsed() / CONTENDED_TOTAL as u32
            })
        });
    });
}

fn fairness(c: &mut Criterion) {
    let runtime = two_workers();
    let mut rows = Vec::new();
    for wait in [Some(WAIT_BOUND), None] {
        // The table tells the unbounded rows by their label.
        let (name, label) = match wait {
            Some(_) => ("fairness", ""),
            None => ("fairness/unbounded", " unbounded"),
        };
        let mut group = c.benchmark_group(name);
        short(&mut group, 10, 200, 1000);
        group.sampling_mode(SamplingMode::Flat);
        let ours = || prefilled_ours(FAIR_SIZE, wait);
        fairness_one(&mut group, &runtime, ("ours", label), &mut rows, ours);
        let deadpool = || prefilled_deadpool(FAIR_SIZE, wait);
        fairness_one(&mut group, &runtime, ("deadpool", label), &mut rows, deadpool);
        if wait.is_some() {
            let bb8 = || prefilled_bb8(FAIR_SIZE);
            fairness_one(&mut group, &runtime, ("bb8", label), &mut rows, bb8);
            let floor = || floor(FAIR_SIZE);
            fairness_one(&mut group, &runtime, ("semaphore", label), &mut rows, floor);
        }
        group.finish();
    }
    if rows.is_empty() {
        return;
    }
    println!(
        "\nfairness: {FAIR_TASKS} tasks, {FAIR_SIZE} objects, {FAIR_ROUNDS} checkouts per task \
         per run, each held {} µs (yield loop); wait from get() to object, all runs",
        FAIR_HOLD.as_micros()
    );
    println!(
        "{:<20} {:>6} {:>9} {:>12} {:>12} {:>12} {:>12}",
        "impl", "runs", "checkouts", "mean µs", "p50 µs", "p99 µs", "max µs"
    );
    let micros = |nanos: u64| nanos as f64 / 1000.0;
    for (name, runs, waits) in rows {
        println!(
            "{:<20} {:>6} {:>9} {:>12.1} {:>12.1} {:>12.1} {:>12.1}",
            name,
            runs,
            waits.len(),
            waits.mean() / 1000.0,
            micros(waits.value_at_quantile(0.5)),
            micros(waits.value_at_quantile(0.99)),
            micros(waits.max()),
        );
    }
    println!();
}

fn fairness_one<S, F>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    (name, label): (&str, &str),
    rows: &mut Vec<(String, u64, Histogram<u64>)>,
    make: impl Fn() -> F,
) where
    S: Subject,
    F: Future<Output = S>,
{
    let mut waits = wait_histogram();
    let mut runs = 0;
    let mut pool = None;
    group.bench_function(name, |b| {
        let pool = lazily(&mut pool, runtime, &make);
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let run = runtime.block_on(timed_batch(
                    &pool,
                    FAIR_TASKS,
                    FAIR_ROUNDS,
                    Hold::Busy(FAIR_HOLD),
                ));
                elapsed += start.elapsed();
                for wait in run {
                    waits.saturating_record(wait);
                }
                runs += 1;
            }
            elapsed
        });
    });
    if runs > 0 {
        rows.push((format!("{name}{label}"), runs, waits));
    }
}

/// `fairness` again, with ours and deadpool, each bounded and unbounded, in alternation run
/// after run, so that the machine's drift hits all alike. The report is the table printed after
/// the group, for both bounded, neither, and each at its default (ours bounded, deadpool not):
/// per pair of runs from one round, the ratio of their p99 waits, ours/deadpool, as a median
/// with its quartiles, and how often ours was the lower and how often the higher.
fn fairness_paired(c: &mut Criterion) {
    let runtime = two_workers();
    let mut group = c.benchmark_group("fairness_paired");
    short(&mut group, 10, 200, 27000);
    group.sampling_mode(SamplingMode::Flat);
    let pools = runtime.block_on(async {
        (
            prefilled_ours(FAIR_SIZE, Some(WAIT_BOUND)).await,
            prefilled_deadpool(FAIR_SIZE, Some(WAIT_BOUND)).await,
            prefilled_ours(FAIR_SIZE, None).await,
            prefilled_deadpool(FAIR_SIZE, None).await,
        )
    });
    // The p99 of each pool's run, round after round, in the order of `pools`.
    let mut rounds: Vec<[u64; 4]> = Vec::new();
    group.bench_function("rounds", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let (ours, deadpool, ours_unbounded, deadpool_unbounded) = &pools;
                let mut elapsed = Duration::ZERO;
                for iteration in 0..iters {
                    let start = Instant::now();
                    let p99s = round(iteration, |pool| async move {
                        match pool {
                            0 => fair_p99(ours).await,
                            1 => fair_p99(deadpool).await,
                            2 => fair_p99(ours_unbounded).await,
                            _ => fair_p99(deadpool_unbounded).await,
                        }
                    })
                    .await;
                    elapsed += start.elapsed();
                    rounds.push(p99s);
                }
                elapsed
            })
        });
    });
    group.finish();
    if rounds.is_empty() {
        return;
    }
    println!(
        "\nfairness, paired: the p99 wait of a run of ours / of the run of deadpool in the same \
         round; median [p25, p75]; below 1 means ours waited less; defaults: ours bounded at \
         {WAIT_BOUND:?}, deadpool unbounded"
    );
    println!(
        "| waits | p99 ours/deadpool | ours lower | ours higher | median p99, ours / deadpool |"
    );
    println!("|---|---:|---:|---:|---:|");
    let pairs = rounds.len();
    // Which of the round's runs each row compares: (ours, deadpool).
    for (name, ours, deadpool) in [("bounded", 0, 1), ("unbounded", 2, 3), ("defaults", 0, 3)] {
        let lower = rounds.iter().filter(|p99s| p99s[ours] < p99s[deadpool]).count();
        // A pair neither lower nor higher is a tie: the histogram keeps three significant
        // figures.
        let higher = rounds.iter().filter(|p99s| p99s[ours] > p99s[deadpool]).count();
        let mut ratios: Vec<f64> =
            rounds.iter().map(|p99s| p99s[ours] as f64 / p99s[deadpool] as f64).collect();
        // The median p99 of one side, in microseconds.
        let median = |side: usize| {
            let mut micros: Vec<f64> =
                rounds.iter().map(|p99s| p99s[side] as f64 / 1000.0).collect();
            quartiles(&mut micros).1
        };
        println!(
            "| {name} | {} | {lower} of {pairs} pairs | {higher} | {:.0} / {:.0} µs |",
            spread(&mut ratios, 2),
            median(ours),
            median(deadpool)
        );
    }
    println!();
}

/// One run of `fairness`; returns the p99 of its waits, in nanoseconds, taken as the
/// `fairness` table takes it.
async fn fair_p99<S: Subject>(pool: &S) -> u64 {
    let mut waits = wait_histogram();
    for wait in timed_batch(pool, FAIR_TASKS, FAIR_ROUNDS, Hold::Busy(FAIR_HOLD)).await {
        waits.saturating_record(wait);
    }
    waits.value_at_quantile(0.99)
}

/// The histogram the `fairness` groups record waits in: 1 ns to a minute, 3 significant figures.
fn wait_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn cold_burst(c: &mut Criterion) {
    let runtime = two_workers();
    let mut group = c.benchmark_group("cold_burst");
    short(&mut group, 20, 300, 1500);
    group.sampling_mode(SamplingMode::Flat);
    cold_one(&mut group, &runtime, "ours", || cold_ours(Some(WAIT_BOUND)));
    cold_one(&mut group, &runtime, "deadpool", || cold_deadpool(Some(WAIT_BOUND)));
    cold_one(&mut group, &runtime, "bb8", || async {
        let pool = bb8_builder(COLD_MAX).min_idle(None).build(Noop::costing(COLD_CREATE)).await;
        Bb8(pool.expect("bb8 starts"))
    });
    group.finish();
    let mut group = c.benchmark_group("cold_burst/unbounded");
    short(&mut group, 20, 300, 1500);
    group.sampling_mode(SamplingMode::Flat);
    cold_one(&mut group, &runtime, "ours", || cold_ours(None));
    cold_one(&mut group, &runtime, "deadpool", || cold_deadpool(None));
    group.finish();
}

/// An empty pool of ours for `cold_burst`.
async fn cold_ours(wait: Option<Duration>) -> Ours {
    let config = PoolConfig {
        min: 0,
        max: COLD_MAX,
        max_concurrent_creates: COLD_MAX,
        acquire_timeout: wait,
        health_check_interval: None,
        idle_timeout: None,
        queue_limit: QUEUE_LIMIT,
        ..PoolConfig::default()
    };
    Ours(pool_core::Pool::new(Noop::costing(COLD_CREATE), config).expect("a valid config"))
}

/// An empty deadpool for `cold_burst`.
async fn cold_deadpool(wait: Option<Duration>) -> Deadpool {
    let builder = deadpool_builder(Noop::costing(COLD_CREATE), COLD_MAX, wait);
    Deadpool(builder.build().expect("a valid deadpool config"))
}

fn cold_one<S, F>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &Runtime,
    name: &str,
    make: impl Fn() -> F,
) where
    S: Subject,
    F: Future<Output = S>,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let pool = make().await;
                    let start = Instant::now();
                    batch(&pool, COLD_TASKS, 1, Hold::Yield).await;
                    elapsed += start.elapsed();
                }
                elapsed
            })
        });
    });
}

/// The columns of the `paired` table: which of a round's batches each divides, (ours, peer),
/// as the pools are listed in `paired`: ours bounded against deadpool bounded and against bb8,
/// ours unbounded against deadpool unbounded, ours bounded against deadpool unbounded.
const PAIRED_COLUMNS: [(usize, usize); 4] = [(0, 1), (0, 2), (3, 4), (0, 4)];

/// `contended` again, with our pool and each peer timed in alternation, batch after batch, so
/// that the machine's drift (shared cores, frequency, other load) hits both sides alike; the
/// report is the median ratio of paired batches, with its quartiles.
fn paired(c: &mut Criterion) {
    let runtime = two_workers();
    let mut group = c.benchmark_group("paired");
    short(&mut group, 10, 200, 1500);
    group.sampling_mode(SamplingMode::Flat);
    let mut rows = Vec::new();
    for hold in [Hold::None, Hold::Yield] {
        for (tasks, size) in SHAPES {
            let cell = format!("hold={}/W{tasks}xS{size}", hold.name());
            let rounds = CONTENDED_TOTAL / tasks;
            let bound = Some(WAIT_BOUND);
            let pools = runtime.block_on(async {
                (
                    prefilled_ours(size, bound).await,
                    prefilled_deadpool(size, bound).await,
                    prefilled_bb8(size).await,
                    prefilled_ours(size, None).await,
                    prefilled_deadpool(size, None).await,
                )
            });
            // One list of ratios per column of the table, in the order of `PAIRED_COLUMNS`.
            let mut columns: [Vec<f64>; 4] = Default::default();
            group.bench_function(&cell, |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let (ours, deadpool, bb8, ours_unbounded, deadpool_unbounded) = &pools;
                        let mut total = Duration::ZERO;
                        for iteration in 0..iters {
                            let times: [Duration; 5] = round(iteration, |pool| async move {
                                match pool {
                                    0 => timed(ours, tasks, rounds, hold).await,
                                    1 => timed(deadpool, tasks, rounds, hold).await,
                                    2 => timed(bb8, tasks, rounds, hold).await,
                                    3 => timed(ours_unbounded, tasks, rounds, hold).await,
                                    _ => timed(deadpool_unbounded, tasks, rounds, hold).await,
                                }
                            })
                            .await;
                            for (ratios, (ours, peer)) in columns.iter_mut().zip(PAIRED_COLUMNS) {
                                ratios.push(times[ours].as_secs_f64() / times[peer].as_secs_f64());
                            }
                            total += times[0];
                        }
                        total / CONTENDED_TOTAL as u32
                    })
                });
            });
            let pairs = columns[0].len();
            if pairs > 0 {
                let spreads = columns.map(|mut ratios| spread(&mut ratios, 2));
                rows.push((cell, spreads, pairs));
            }
        }
    }
    group.finish();
    if rows.is_empty() {
        return;
    }
    println!(
        "\npaired: ours / peer per batch of {CONTENDED_TOTAL} checkouts; median [p25, p75]; below 1 \
         means ours is faster; waits bounded at {WAIT_BOUND:?} but where the column says; \
         defaults: ours bounded, deadpool unbounded, as each pool is by default"
    );
    println!(
        "| cell | ours/deadpool | ours/bb8 | unbounded ours/deadpool | defaults ours/deadpool \
         | pairs |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (cell, [deadpool, bb8, unbounded, defaults], pairs) in rows {
        println!("| {cell} | {deadpool} | {bb8} | {unbounded} | {defaults} | {pairs} |");
    }
    println!();
}

/// One round of pools timed in alternation: `run(pool)` for each of the `N` pools, forward in
/// even rounds and backward in odd ones, so that none always runs first or on a warm cache.
/// The results come back in pool order.
async fn round<T, const N: usize, F>(iteration: u64, mut run: impl FnMut(usize) -> F) -> [T; N]
where
    T: Copy + Default,
    F: Future<Output = T>,
{
    let mut results = [T::default(); N];
    for turn in 0..N {
        let pool = if iteration.is_multiple_of(2) { turn } else { N - 1 - turn };
        results[pool] = run(pool).await;
    }
    results
}

/// One batch of `contended`, timed.
async fn timed<S: Subject>(pool: &S, tasks: usize, rounds: usize, hold: Hold) -> Duration {
    let start = Instant::now();
    batch(pool, tasks, rounds, hold).await;
    start.elapsed()
}

criterion_group!(benches, uncontended, contended, paired, fairness, fairness_paired, cold_burst);
criterion_main!(benches);
