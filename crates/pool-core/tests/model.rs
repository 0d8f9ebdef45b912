//! Property test: random sequences of pool operations, checked against a simple model.
//!
//! Each case runs on its own current-thread runtime with a paused clock, so time only moves
//! when the sequence says so (or when every task is idle), and a case is deterministic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Probe, TestManager, run_ready_tasks};
use parking_lot::Mutex;
use pool_core::{Error, Lease, Pool, PoolConfig, Priority};
use proptest::prelude::*;
use tokio::time::Instant;

#[derive(Debug, Clone)]
enum Op {
    /// Start an acquire (in its own task) that waits at most this many milliseconds, or as long
    /// as it takes (`Duration::MAX`) when `None`.
    Acquire {
        priority: Priority,
        timeout_ms: Option<u64>,
    },
    /// Return the n-th held lease (modulo the number held).
    Release(usize),
    /// Mark the n-th held lease broken and return it.
    MarkBroken(usize),
    /// Make the next create fail.
    FailNextCreate,
    /// Make creates from now on take this many milliseconds (past the 1 s create timeout,
    /// they time out).
    CreateDelay(u64),
    /// Make the health checks of the n-th instance made so far (modulo their number) fail.
    FailChecks(u64),
    /// Let this many milliseconds pass.
    Advance(u64),
    Resize {
        min: usize,
        max: usize,
    },
    /// Shut down with this deadline in milliseconds, leases still held.
    Shutdown(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let priority = prop_oneof![Just(Priority::High), Just(Priority::Normal), Just(Priority::Low)];
    prop_oneof![
        6 => (priority, prop_oneof![5 => (0..3_000u64).prop_map(Some), 1 => Just(None)])
            .prop_map(|(priority, timeout_ms)| Op::Acquire { priority, timeout_ms }),
        4 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::MarkBroken),
        1 => Just(Op::FailNextCreate),
        1 => prop_oneof![Just(0u64), 1..1_500u64].prop_map(Op::CreateDelay),
        1 => any::<u64>().prop_map(Op::FailChecks),
        3 => (1..2_500u64).prop_map(Op::Advance),
        1 => (0..4usize, 1..5usize).prop_map(|(min, max)| Op::Resize { min: min.min(max), max }),
        1 => (0..2_000u64).prop_map(Op::Shutdown),
    ]
}

fn pool_config() -> impl Strategy<Value = PoolConfig> {
    let timers = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>());
    (1..4usize, 1..5usize, 0..5usize, 0..6usize, proptest::option::of(1..4u64), timers).prop_map(
        |(concurrency, max, min, queue_limit, max_uses, (idle, lifetime, leaks, checks))| {
            PoolConfig {
                min: min.min(max),
                max,
                concurrency,
                queue_limit,
                max_uses,
                acquire_timeout: Some(Duration::from_secs(1)),
                create_timeout: Duration::from_secs(1),
                create_backoff: Duration::from_millis(50),
                create_backoff_max: Duration::from_millis(400),
                idle_timeout: idle.then_some(Duration::from_millis(700)),
                max_lifetime: lifetime.then_some(Duration::from_secs(5)),
                // Off in some cases: its ticks must not be what gets a waiter its create.
                health_check_interval: checks.then_some(Duration::from_millis(900)),
                leak_threshold: leaks.then_some(Duration::from_secs(2)),
                ..PoolConfig::default()
            }
        },
    )
}

/// What the acquires did, as the model sees it.
#[derive(Default)]
struct Record {
    held: Vec<Lease<TestManager>>,
    /// (started, ended, timeout) of every finished acquire.
    finished: Vec<(Instant, Instant, Duration)>,
    started: usize,
    /// (started, timeout) of every acquire still running, by its number.
    pending: BTreeMap<usize, (Instant, Duration)>,
    /// The pool's status right after each `QueueFull` (taken before any other task ran).
    refused: Vec<pool_core::PoolStatus>,
    /// Acquires without a timeout that failed with `Timeout` all the same.
    unbounded_timeouts: usize,
}

/// What the model allows the pool's size to reach: `max`, or after a resize down the size the
/// pool had then, shrinking as instances over the new `max` go and never growing again; and
/// the highest `max` so far.
struct Ceiling(usize, usize);

impl Ceiling {
    fn resized(&mut self, max: usize, total: usize) {
        self.settle(max, total);
        self.1 = self.1.max(max);
    }

    fn settle(&mut self, max: usize, total: usize) {
        self.0 = max.max(total.min(self.0));
    }
}

fn run_case(config: PoolConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let manager = TestManager::default();
        let probe = manager.probe.clone();
        let pool = Pool::new(manager, config.clone()).expect("a valid config");
        let record = Arc::new(Mutex::new(Record::default()));
        let mut closed = false;
        let mut ceiling = Ceiling(config.max, config.max);
        let (mut failures_seen, mut last_failure_by) = (0, None);

        for op in ops {
            match op {
                Op::Acquire { priority, timeout_ms } => {
                    let (pool, record) = (pool.clone(), record.clone());
                    let timeout = timeout_ms.map_or(Duration::MAX, Duration::from_millis);
                    let started = Instant::now();
                    let number = {
                        let mut record = record.lock();
                        record.started += 1;
                        let number = record.started;
                        record.pending.insert(number, (started, timeout));
                        number
                    };
                    tokio::spawn(async move {
                        let result = pool.acquire_with(priority, timeout).await;
                        let refused =
                            matches!(result, Err(Error::QueueFull { .. })).then(|| pool.status());
                        let mut record = record.lock();
                        record.refused.extend(refused);
                        record.pending.remove(&number);
                        record.finished.push((started, Instant::now(), timeout));
                        match result {
                            Ok(lease) => record.held.push(lease),
                            Err(Error::Timeout { .. }) if timeout == Duration::MAX => {
                                record.unbounded_timeouts += 1;
                            }
                            Err(Error::QueueFull { .. } | Error::Timeout { .. }) => {}
                            Err(Error::Create(_) | Error::CreateTimeout { .. }) => {}
                            Err(Error::ShuttingDown) => {}
                            Err(other) => panic!("unexpected acquire error: {other}"),
                        }
                    });
                }
                Op::Release(n) | Op::MarkBroken(n) => {
                    let lease = {
                        let mut record = record.lock();
                        let len = record.held.len();
                        (len > 0).then(|| record.held.swap_remove(n % len))
                    };
                    if let Some(mut lease) = lease {
                        if matches!(op, Op::MarkBroken(_)) {
                            lease.mark_broken();
                        }
                        drop(lease);
                    }
                }
                Op::FailNextCreate => {
                    probe.fail_creates.fetch_add(1, Ordering::SeqCst);
                }
                Op::CreateDelay(ms) => *probe.create_delay.lock() = Duration::from_millis(ms),
                Op::FailChecks(n) => {
                    let made = probe.creates_started.load(Ordering::SeqCst);
                    if made > 0 {
                        probe.failing_checks.lock().insert(n % made);
                    }
                }
                Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Op::Resize { min, max } => {
                    pool.resize(min, max).expect("a valid size");
                    let status = pool.status();
                    ceiling.resized(max, status.size + status.creating);
                }
                Op::Shutdown(ms) => {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool.shutdown(Duration::from_millis(ms)).await });
                    closed = true;
                }
            }
            run_ready_tasks().await;
            // A create failed at the latest by now if the count went up since the last step.
            let failures = pool.status().counters.create_failures;
            if failures > failures_seen {
                failures_seen = failures;
                last_failure_by = Some(Instant::now());
            }
            let backoff_over = last_failure_by
                .is_none_or(|at| Instant::now() > at + config.create_backoff_max + TIMER_TICK);
            let state = Step { closed, backoff_over };
            check_invariants(&pool, &probe, &record.lock(), &mut ceiling, state)?;
        }

        // Shut down for good, return every lease, and let everything finish.
        let shutdown = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.shutdown(Duration::from_secs(1)).await })
        };
        run_ready_tasks().await;
        let held = std::mem::take(&mut record.lock().held);
        drop(held);
        let report = shutdown.await.expect("shutdown finishes");
        prop_assert_eq!(report.leases_abandoned, 0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        run_ready_tasks().await;

        // Every acquire ended, and none later than its timeout: those without one by the
        // shutdown at the latest.
        let record = record.lock();
        prop_assert_eq!(record.finished.len(), record.started, "an acquire never completed");
        prop_assert_eq!(record.unbounded_timeouts, 0, "an acquire without a timeout timed out");
        for (started, ended, timeout) in &record.finished {
            prop_assert!(*ended - *started <= *timeout, "an acquire outlived its timeout");
        }
        // Every created instance was destroyed exactly once.
        let destroyed = probe.destroyed_serials();
        let unique: BTreeSet<u64> = destroyed.iter().copied().collect();
        prop_assert_eq!(unique.len(), destroyed.len(), "an instance was destroyed twice");
        prop_assert_eq!(destroyed.len() as u64, probe.created.load(Ordering::SeqCst));
        let status = pool.status();
        prop_assert_eq!((status.size, status.leased, status.creating), (0, 0, 0));
        Ok(())
    })
}

/// What the model knows of the pool after a step.
#[derive(Clone, Copy)]
struct Step {
    /// A shutdown has started.
    closed: bool,
    /// No create failed within the longest backoff (and a timer tick), so none is held back.
    backoff_over: bool,
}

/// How late tokio's timers may fire.
const TIMER_TICK: Duration = Duration::from_millis(2);

fn check_invariants(
    pool: &Pool<TestManager>,
    probe: &Probe,
    record: &Record,
    ceiling: &mut Ceiling,
    Step { closed, backoff_over }: Step,
) -> Result<(), TestCaseError> {
    let status = pool.status();
    let config = pool.config();
    // The pool's count is the manager's: every instance made and not destroyed is in it
    // (destroys take no time here, and every ready task has run).
    prop_assert_eq!(probe.live(), status.size as u64, "the pool lost count: {:?}", status);
    // Never above max, counting creates and instances waiting to be destroyed; after a
    // resize down, the instances over the new max only go.
    let total = status.size + status.creating;
    prop_assert!(
        total <= ceiling.0,
        "above max {} (ceiling {}): {status:?}",
        config.max,
        ceiling.0
    );
    ceiling.settle(config.max, total);
    prop_assert_eq!(status.leased, record.held.len());
    // The queue refuses only acquires beyond its limit and beyond what the creates running or
    // still allowed under `max` will serve.
    for seen in &record.refused {
        let creates = seen.creating + seen.max.saturating_sub(seen.size + seen.creating);
        let limit = config.queue_limit + creates * config.concurrency;
        prop_assert!(seen.waiting >= limit, "refused below the limit of {}: {:?}", limit, seen);
    }
    // And the queue never holds more than the limit and a full pool's worth of leases (at the
    // highest `max` the case has had: waiters queued before a resize down stay).
    prop_assert!(
        status.waiting <= config.queue_limit + ceiling.1 * config.concurrency,
        "the queue outgrew its limit: {status:?}"
    );
    // No acquire is still waiting after its timeout (the timer has a 1 ms granularity); one
    // without a timeout waits until served or shut down.
    let now = Instant::now();
    for (started, timeout) in record.pending.values() {
        let end = started.checked_add(*timeout);
        prop_assert!(
            end.is_none_or(|end| now <= end + Duration::from_millis(1)),
            "an acquire waits past its timeout of {timeout:?}"
        );
    }
    let mut per_instance: BTreeMap<u64, usize> = BTreeMap::new();
    for lease in &record.held {
        *per_instance.entry(lease.id().0).or_default() += 1;
    }
    for (instance, leases) in per_instance {
        prop_assert!(
            leases <= config.concurrency,
            "instance {instance} carries {leases} leases, concurrency {}",
            config.concurrency
        );
    }
    if closed {
        prop_assert_eq!(status.waiting, 0, "waiters left after shutdown");
    }
    // No acquire waits while the pool has room and nothing holds a create back: no create
    // running, none failed within the longest backoff.
    if status.waiting > 0 && status.creating == 0 && backoff_over {
        prop_assert!(
            status.size >= config.max,
            "an acquire waits on a pool with room for it: {status:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        // Failures are printed with their minimal case; nothing is written to the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_keep_the_pool_invariants(
        config in pool_config(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run_case(config, ops)?;
    }
}
