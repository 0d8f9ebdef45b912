//! The pool's behaviours, one test each, under tokio's paused clock.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestError, TestManager, drain, eventually, run_ready_tasks};
use parking_lot::Mutex;
use pool_core::{
    DestroyReason, Error, ManagerPanic, Pool, PoolConfig, PoolEvent, Priority, Selection,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

fn config() -> PoolConfig {
    PoolConfig { health_check_interval: None, idle_timeout: None, ..PoolConfig::default() }
}

fn pool(config: PoolConfig) -> (Pool<TestManager>, TestManager) {
    let manager = TestManager::default();
    (Pool::new(manager.clone(), config).expect("a valid config"), manager)
}

const SECOND: Duration = Duration::from_secs(1);

/// Holds every create back until the returned gate is given permits.
fn hold_creates(manager: &TestManager) -> Arc<Semaphore> {
    let gate = Arc::new(Semaphore::new(0));
    *manager.probe.create_gate.lock() = Some(gate.clone());
    gate
}

/// Starts `n` acquires, each in its own task; a task's output keeps the lease it got.
fn spawn_acquires(
    pool: &Pool<TestManager>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<pool_core::Result<pool_core::Lease<TestManager>>>> {
    (0..n)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire().await })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn min_instances_are_created_in_the_background_and_restored() {
    let (pool, manager) = pool(PoolConfig { min: 2, ..config() });
    let mut events = pool.subscribe();
    eventually("two warm instances", || pool.status().size == 2).await;
    assert_eq!(pool.status().idle, 2);

    // A broken instance is destroyed and replaced.
    let mut lease = pool.acquire().await.unwrap();
    let broken = lease.id();
    lease.mark_broken();
    drop(lease);
    eventually("the broken instance is replaced", || {
        manager.probe.created.load(Ordering::SeqCst) == 3 && pool.status().size == 2
    })
    .await;
    assert_eq!(manager.probe.destroyed_serials().len(), 1);
    let seen = drain(&mut events);
    assert!(
        seen.contains(&PoolEvent::Destroyed { instance: broken, reason: DestroyReason::Broken }),
        "{seen:?}"
    );

    // After failed creates, the minimum is restored once the backoff has passed.
    manager.probe.fail_creates.store(2, Ordering::SeqCst);
    let mut lease = pool.acquire().await.unwrap();
    lease.mark_broken();
    drop(lease);
    eventually("the minimum is restored after two failures", || pool.status().size == 2).await;
    let status = pool.status();
    assert_eq!(status.counters.create_failures, 2);
    assert_eq!(manager.probe.creates_started.load(Ordering::SeqCst), 6);
}

#[tokio::test(start_paused = true)]
async fn idle_eviction_never_goes_below_min() {
    let (pool, _manager) =
        pool(PoolConfig { min: 1, max: 4, idle_timeout: Some(10 * SECOND), ..config() });
    let mut events = pool.subscribe();
    let leases = [
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
    ];
    drop(leases);
    assert_eq!(pool.status().size, 3);

    tokio::time::sleep(11 * SECOND).await;
    eventually("eviction down to min", || pool.status().size == 1).await;
    // Much later, the warm instance is still there.
    tokio::time::sleep(100 * SECOND).await;
    assert_eq!(pool.status().size, 1);
    let evicted = drain(&mut events)
        .into_iter()
        .filter(|event| {
            matches!(event, PoolEvent::Destroyed { reason: DestroyReason::IdleTimeout, .. })
        })
        .count();
    assert_eq!(evicted, 2);
}

#[tokio::test(start_paused = true)]
async fn creates_get_the_ids_events_use_and_the_manager_hears_of_each_lease() {
    let (pool, manager) = pool(PoolConfig { min: 2, ..config() });
    let mut events = pool.subscribe();
    eventually("the minimum is created", || manager.probe.created.load(Ordering::SeqCst) == 2)
        .await;
    let mut created: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|event| match event {
            PoolEvent::Created { instance } => Some(instance),
            _ => None,
        })
        .collect();
    created.sort();
    let mut given = manager.probe.create_ids.lock().clone();
    given.sort();
    assert_eq!(given, [pool_core::InstanceId(0), pool_core::InstanceId(1)]);
    assert_eq!(created, given, "events name instances by the id their create was given");

    let first = pool.acquire().await.unwrap();
    let second = pool.acquire().await.unwrap();
    assert_eq!(manager.probe.leased.lock().len(), 2);
    let instances = pool.instances();
    assert_eq!(instances.len(), 2);
    assert!(instances.iter().all(|i| i.state == pool_core::InstanceState::Busy && i.leases == 1));
    assert_eq!(instances.iter().map(|i| i.uses).sum::<u64>(), 2);
    drop(first);
    let third = pool.acquire().await.unwrap();
    let mut leased = manager.probe.leased.lock().clone();
    assert_eq!(leased.len(), 3, "one call per lease handed out: {leased:?}");
    leased.sort();
    leased.dedup();
    assert_eq!(leased, [0, 1], "each lease is on one of the two instances");
    drop((second, third));
}

#[tokio::test(start_paused = true)]
async fn max_uses_retires_an_instance_only_once_it_is_idle() {
    let (pool, manager) = pool(PoolConfig { max_uses: Some(2), ..config() });
    let mut events = pool.subscribe();
    let first = pool.acquire().await.unwrap();
    let id = first.id();
    drop(first);
    let second = pool.acquire().await.unwrap();
    assert_eq!(second.id(), id, "the instance serves its second and last use");
    run_ready_tasks().await;
    assert!(manager.probe.destroyed_serials().is_empty(), "destroyed under a lease");
    drop(second);
    eventually("the used-up instance is destroyed", || manager.probe.destroyed_serials() == [0])
        .await;
    let seen = drain(&mut events);
    assert!(
        seen.contains(&PoolEvent::Destroyed { instance: id, reason: DestroyReason::MaxUses }),
        "{seen:?}"
    );
    let third = pool.acquire().await.unwrap();
    assert_ne!(third.id(), id);
    // The lease derefs to the instance the manager made.
    assert_eq!(third.serial, 1);
}

#[tokio::test(start_paused = true)]
async fn a_lease_returned_to_a_waiter_counts_a_use_and_the_last_use_retires_it() {
    let (pool, manager) = pool(PoolConfig { max: 1, max_uses: Some(2), ..config() });
    let mut events = pool.subscribe();
    let first = pool.acquire().await.unwrap();
    let id = first.id();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await })
    };
    run_ready_tasks().await;
    assert_eq!(pool.status().waiting, 1);
    drop(first);
    let second = waiter.await.unwrap().unwrap();
    assert_eq!(second.id(), id, "the returned instance goes to the waiter");
    let third = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await })
    };
    run_ready_tasks().await;
    assert!(manager.probe.destroyed_serials().is_empty(), "destroyed under a lease");
    // Its second use was its last: it goes when it comes back, and the waiter gets a new one.
    drop(second);
    let third = third.await.unwrap().unwrap();
    assert_ne!(third.id(), id);
    eventually("the used-up instance is destroyed", || manager.probe.destroyed_serials() == [0])
        .await;
    assert!(
        drain(&mut events)
            .contains(&PoolEvent::Destroyed { instance: id, reason: DestroyReason::MaxUses }),
        "the instance retired for its uses"
    );
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_retires_an_instance_only_once_it_is_idle() {
    let (pool, manager) = pool(PoolConfig { max_lifetime: Some(10 * SECOND), ..config() });
    let mut events = pool.subscribe();
    let lease = pool.acquire().await.unwrap();
    tokio::time::sleep(30 * SECOND).await;
    assert!(manager.probe.destroyed_serials().is_empty(), "destroyed under a lease");
    drop(lease);
    eventually("the old instance is destroyed", || manager.probe.destroyed_serials() == [0]).await;
    assert!(drain(&mut events).contains(&PoolEvent::Destroyed {
        instance: pool_core::InstanceId(0),
        reason: DestroyReason::MaxLifetime,
    }));

    // An idle instance past its lifetime is retired in the background.
    drop(pool.acquire().await.unwrap());
    tokio::time::sleep(11 * SECOND).await;
    eventually("the idle old instance is destroyed", || {
        manager.probe.destroyed_serials().len() == 2
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_fifo_within_a_priority_and_by_priority() {
    let (pool, _manager) = pool(PoolConfig { max: 1, ..config() });
    let held = pool.acquire().await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (name, priority) in [
        ("low", Priority::Low),
        ("normal-1", Priority::Normal),
        ("high-1", Priority::High),
        ("normal-2", Priority::Normal),
        ("high-2", Priority::High),
    ] {
        let (pool, served) = (pool.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let lease = pool.acquire_with(priority, 60 * SECOND).await.unwrap();
            served.lock().push(name);
            tokio::time::sleep(SECOND).await;
            drop(lease);
        }));
        run_ready_tasks().await;
    }
    assert_eq!(pool.status().waiting, 5);
    drop(held);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*served.lock(), ["high-1", "high-2", "normal-1", "normal-2", "low"]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_fails_at_once_and_a_long_wait_times_out() {
    let (pool, _manager) = pool(PoolConfig { max: 1, queue_limit: 1, ..config() });
    let _held = pool.acquire().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(
            async move { pool.acquire_with(Priority::Normal, 5 * SECOND).await.map(|_| ()) },
        )
    };
    run_ready_tasks().await;

    let start = Instant::now();
    let error = pool.acquire().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "a full queue must not wait");
    assert!(matches!(error, Error::QueueFull { limit: 1, max: 1 }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "the pool's waiter queue is full (1 waiting for a busy instance, all 1 instances busy \
         or being created)"
    );

    let error = waiter.await.unwrap().unwrap_err();
    match error {
        Error::Timeout { waited, max: 1, concurrency: 1 } => assert_eq!(waited, 5 * SECOND),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(error.to_string().contains("within 5s"), "{error}");
    let counters = pool.status().counters;
    assert_eq!((counters.queue_full, counters.timeouts), (1, 1));
}

/// Longer than any test runs, short enough to add to the present moment.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[tokio::test(start_paused = true)]
async fn an_acquire_without_a_timeout_waits_until_served_or_shut_down() {
    let (pool, _manager) = pool(PoolConfig { max: 1, acquire_timeout: None, ..config() });
    let held = pool.acquire().await.unwrap();
    let id = held.id();
    let unbounded = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|lease| lease.id()) })
    };
    run_ready_tasks().await;
    // Too long to add to the present moment: waits like no timeout at all.
    let longest = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.acquire_with(Priority::Normal, Duration::MAX).await.map(|lease| lease.id())
        })
    };
    tokio::time::sleep(CENTURY).await;
    let status = pool.status();
    assert_eq!((status.waiting, status.counters.timeouts), (2, 0), "{status:?}");
    drop(held);
    assert_eq!(unbounded.await.unwrap().unwrap(), id);
    assert_eq!(longest.await.unwrap().unwrap(), id);

    let held = pool.acquire().await.unwrap();
    let refused = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|_| ()) })
    };
    run_ready_tasks().await;
    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(Duration::MAX).await })
    };
    let error = refused.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::ShuttingDown), "{error:?}");
    tokio::time::sleep(CENTURY).await;
    assert!(!shutdown.is_finished(), "a shutdown without a deadline waits for the lease");
    drop(held);
    let report = shutdown.await.unwrap();
    assert_eq!((report.waiters_rejected, report.leases_returned), (1, 1), "{report:?}");
    assert_eq!(report.destroyed, 1);
}

#[tokio::test(start_paused = true)]
async fn chores_timed_too_far_to_represent_never_come_and_the_rest_still_runs() {
    let never = Some(Duration::MAX);
    let (pool, manager) = pool(PoolConfig {
        min: 1,
        max: 1,
        idle_timeout: never,
        max_lifetime: never,
        health_check_interval: never,
        leak_threshold: never,
        ..PoolConfig::default()
    });
    let held = pool.acquire().await.unwrap();
    // The background task times waiters out: it survived computing when its chores are due.
    let waited = tokio::time::timeout(10 * SECOND, pool.acquire_with(Priority::Normal, SECOND));
    let error = waited.await.expect("the waiter was timed out").unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    drop(held);
    tokio::time::sleep(CENTURY).await;
    let status = pool.status();
    assert_eq!((status.size, status.counters.leaks_suspected), (1, 0), "{status:?}");
    assert!(manager.probe.destroyed_serials().is_empty());
    assert!(manager.probe.checked.lock().is_empty(), "a health check ran");
}

#[tokio::test(start_paused = true)]
async fn a_create_backoff_too_long_to_represent_lasts_as_long_as_the_pool() {
    let (pool, manager) = pool(PoolConfig {
        create_backoff: Duration::MAX,
        create_backoff_max: Duration::MAX,
        ..config()
    });
    manager.probe.fail_creates.store(1, Ordering::SeqCst);
    let failed = tokio::time::timeout(10 * SECOND, pool.acquire()).await;
    let error = failed.expect("the create's failure reached the acquire").unwrap_err();
    assert!(matches!(error, Error::Create(_)), "{error:?}");
    tokio::time::sleep(CENTURY).await;
    let error = pool.acquire().await.unwrap_err();
    assert!(matches!(error, Error::Create(_)), "still backing off: {error:?}");
    assert_eq!(manager.probe.creates_started.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_manager_future_that_panics_when_its_timeout_cuts_it_short_ends_its_work() {
    let (pool, manager) = pool(PoolConfig {
        min: 1,
        max: 2,
        health_check_interval: Some(SECOND),
        health_check_timeout: SECOND,
        create_timeout: 2 * SECOND,
        ..config()
    });
    eventually("the warm instance", || pool.status().size == 1).await;
    manager.probe.panics_when_cut.lock().extend(["create", "check"]);
    *manager.probe.check_delay.lock() = 10 * SECOND;
    *manager.probe.create_delay.lock() = 10 * SECOND;
    // The check runs past its timeout and panics as it is dropped: it fails all the same, and
    // the instance goes. Its replacement's create does the same: the create fails.
    eventually("the check fails", || pool.status().counters.health_check_failures == 1).await;
    eventually("the create fails", || pool.status().counters.create_failures == 1).await;
    let status = pool.status();
    assert_eq!((status.size, status.creating), (0, 0), "{status:?}");

    // Nothing is left counted: the pool creates again and shuts down.
    manager.probe.panics_when_cut.lock().clear();
    *manager.probe.create_delay.lock() = Duration::ZERO;
    eventually("the minimum is restored", || pool.status().size == 1).await;
    let report = tokio::time::timeout(10 * SECOND, pool.shutdown(SECOND))
        .await
        .expect("the shutdown finishes");
    assert_eq!(report.destroyed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_manager_that_panics_fails_that_call_and_the_pool_carries_on() {
    let (pool, manager) = pool(PoolConfig { max: 1, ..config() });
    manager.probe.panics.lock().insert("create");
    let start = Instant::now();
    let error = pool.acquire().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "the panic must reach the waiter at once");
    let Error::Create(source) = &error else { panic!("expected a create error, got {error:?}") };
    let panic = ManagerPanic { method: "create", message: "test manager: create panics".into() };
    assert_eq!(source.downcast_ref::<ManagerPanic>(), Some(&panic));
    assert_eq!(source.to_string(), "the manager's `create` panicked: test manager: create panics");
    assert_eq!(pool.status().creating, 0, "the failed create still counts");

    // Once the manager behaves and the backoff has passed, the pool creates again.
    manager.probe.panics.lock().clear();
    tokio::time::sleep(SECOND).await;
    let lease = pool.acquire().await.unwrap();
    drop(lease);

    // `leased` panics on the acquiring task; the lease goes back as it unwinds.
    manager.probe.panics.lock().insert("leased");
    let acquire = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|_| ()) })
    };
    assert!(acquire.await.unwrap_err().is_panic());
    let status = pool.status();
    assert_eq!((status.leased, status.idle), (0, 1), "{status:?}");
    manager.probe.panics.lock().clear();

    // A destroy that panics still counts as done: the shutdown does not wait for it forever.
    manager.probe.panics.lock().insert("destroy");
    let report = tokio::time::timeout(10 * SECOND, pool.shutdown(SECOND)).await;
    let report = report.expect("the shutdown waited for a destroy that had panicked");
    assert_eq!(report.destroyed, 1, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_health_check_that_panics_fails_and_the_instance_is_replaced() {
    let (pool, manager) =
        pool(PoolConfig { min: 1, health_check_interval: Some(10 * SECOND), ..config() });
    let mut events = pool.subscribe();
    eventually("the warm instance exists", || pool.status().idle == 1).await;
    manager.probe.panics.lock().insert("check");
    tokio::time::sleep(11 * SECOND).await;
    manager.probe.panics.lock().clear();
    eventually("a replacement is up", || {
        manager.probe.destroyed_serials() == [0] && pool.status().idle == 1
    })
    .await;
    let failures: Vec<String> = drain(&mut events)
        .into_iter()
        .filter_map(|event| match event {
            PoolEvent::HealthCheckFailed { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(failures, ["the manager's `check` panicked: test manager: check panics"]);
    assert_eq!(pool.status().counters.health_check_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_create_failure_reaches_its_waiter_at_once_with_the_managers_error() {
    let (pool, manager) = pool(config());
    manager.probe.fail_creates.store(1, Ordering::SeqCst);
    let start = Instant::now();
    let error = pool.acquire().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "the failure must not wait for a timeout");
    let Error::Create(source) = &error else { panic!("expected a create error, got {error:?}") };
    assert_eq!(source.downcast_ref::<TestError>(), Some(&TestError("create 0 refused".into())));
    let source = std::error::Error::source(&error).expect("the manager's error is the source");
    assert_eq!(source.to_string(), "test manager: create 0 refused");
}

#[tokio::test(start_paused = true)]
async fn while_creates_fail_and_nothing_runs_an_acquire_gets_the_last_error_at_once() {
    let (pool, manager) = pool(PoolConfig {
        min: 1,
        create_backoff: Duration::from_secs(20),
        create_backoff_max: Duration::from_secs(20),
        acquire_timeout: Some(Duration::from_secs(10)),
        ..config()
    });
    manager.probe.fail_creates.store(2, Ordering::SeqCst);
    eventually("the warm-up create fails", || pool.status().counters.create_failures == 1).await;
    // The pool backs off for 20 s with no instance: a waiter would time out after 10 s with
    // "no instance became available"; it gets the reason instead, without waiting.
    let start = Instant::now();
    let error = pool.acquire().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let Error::Create(source) = &error else { panic!("expected a create error, got {error:?}") };
    assert_eq!(source.downcast_ref::<TestError>(), Some(&TestError("create 0 refused".into())));

    // After the backoff the next create fails too; then one succeeds and serves as usual.
    tokio::time::advance(Duration::from_secs(20)).await;
    eventually("the second failure", || pool.status().counters.create_failures == 2).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    eventually("the warm instance", || pool.status().size == 1).await;
    let start = Instant::now();
    let _lease = pool.acquire().await.expect("an instance serves once creates work");
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn repeated_create_failures_back_off() {
    let (pool, manager) = pool(PoolConfig {
        min: 1,
        create_backoff: Duration::from_millis(100),
        create_backoff_max: Duration::from_millis(800),
        ..config()
    });
    manager.probe.fail_creates.store(6, Ordering::SeqCst);
    eventually("the warm instance after six failures", || pool.status().size == 1).await;
    let times = manager.probe.create_times.lock().clone();
    let gaps: Vec<u128> = times.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert_eq!(gaps, [100, 200, 400, 800, 800, 800]);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_joins_during_a_backoff_gets_a_create_when_it_ends() {
    // No deadline and no warm minimum: nothing but the waiter itself calls for the create.
    let (pool, manager) = pool(PoolConfig {
        max: 2,
        acquire_timeout: None,
        create_backoff: Duration::from_millis(100),
        ..config()
    });
    let held = pool.acquire().await.unwrap();
    manager.probe.fail_creates.store(1, Ordering::SeqCst);
    let error = pool.acquire().await.unwrap_err();
    assert!(matches!(error, Error::Create(_)), "{error:?}");
    // Within the backoff: the pool has room for one more, but may not create yet.
    let waiter = spawn_acquires(&pool, 1).pop().unwrap();
    run_ready_tasks().await;
    assert_eq!((pool.status().waiting, pool.status().creating), (1, 0));
    let start = Instant::now();
    let served = tokio::time::timeout(10 * SECOND, waiter).await;
    let lease = served
        .expect("the waiter is served, not left waiting")
        .unwrap()
        .expect("the create after the backoff serves the waiter");
    assert_eq!(start.elapsed(), Duration::from_millis(100), "served when the backoff ends");
    assert_ne!(lease.id(), held.id());
}

#[tokio::test(start_paused = true)]
async fn the_minimum_lost_during_a_backoff_is_restored_when_it_ends() {
    // No acquire asks for the create: the warm minimum alone calls for it.
    let (pool, manager) =
        pool(PoolConfig { min: 1, max: 2, create_backoff: Duration::from_millis(100), ..config() });
    eventually("the warm instance", || pool.status().size == 1).await;
    let mut lease = pool.acquire().await.unwrap();
    manager.probe.fail_creates.store(1, Ordering::SeqCst);
    let error = pool.acquire_with(Priority::Normal, SECOND).await.unwrap_err();
    assert!(matches!(error, Error::Create(_)), "{error:?}");
    lease.mark_broken();
    drop(lease);
    run_ready_tasks().await;
    assert_eq!((pool.status().size, pool.status().creating), (0, 0), "still backing off");
    eventually("the minimum is restored after the backoff", || pool.status().size == 1).await;
    let times = manager.probe.create_times.lock().clone();
    let [.., failed, restored] = times[..] else { panic!("three creates, got {times:?}") };
    assert_eq!(restored - failed, Duration::from_millis(100), "created when the backoff ends");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_create_is_running_takes_an_instance_returned_meanwhile() {
    let (pool, manager) = pool(PoolConfig { max: 2, ..config() });
    let held = pool.acquire().await.unwrap();
    let returned_id = held.id();
    let gate = hold_creates(&manager);

    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|lease| lease.id()) })
    };
    run_ready_tasks().await;
    assert_eq!(pool.status().creating, 1, "the waiter started a create");
    drop(held);
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got, returned_id, "the waiter took the returned instance");

    // The create still finishes and its instance waits, idle.
    gate.add_permits(1);
    eventually("the late instance arrives", || pool.status().size == 2).await;
    assert_eq!(pool.status().idle, 2);
}

#[tokio::test(start_paused = true)]
async fn an_instance_carries_at_most_concurrency_leases() {
    let (pool, _manager) = pool(PoolConfig { max: 1, concurrency: 3, ..config() });
    let leases = [
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
    ];
    assert!(leases.iter().all(|lease| lease.id() == leases[0].id()));
    assert_eq!(pool.status().leased, 3);
    let error = pool.acquire_with(Priority::Normal, SECOND).await.unwrap_err();
    assert!(matches!(error, Error::Timeout { concurrency: 3, .. }), "{error:?}");
    let [first, leases_left @ ..] = leases;
    drop(first);
    let mut fourth = pool.acquire_with(Priority::Normal, SECOND).await.unwrap();
    assert_eq!(pool.status().leased, 3);
    // A shared lease never lends the instance mutably, not even when it is the last one held.
    drop(leases_left);
    assert!(fourth.get_mut().is_none());
    drop(fourth);
    let (exclusive, _manager) = self::pool(PoolConfig { max: 1, ..config() });
    let mut lease = exclusive.acquire().await.unwrap();
    assert!(lease.get_mut().is_some(), "an exclusive lease lends it mutably");
}

#[tokio::test(start_paused = true)]
async fn a_failing_health_check_destroys_and_replaces_the_instance() {
    let (pool, manager) =
        pool(PoolConfig { min: 1, health_check_interval: Some(10 * SECOND), ..config() });
    let mut events = pool.subscribe();
    eventually("one warm instance", || pool.status().size == 1).await;
    manager.probe.failing_checks.lock().insert(0);
    tokio::time::sleep(11 * SECOND).await;
    eventually("the failing instance is replaced", || {
        manager.probe.destroyed_serials() == [0] && pool.status().size == 1
    })
    .await;
    let seen = drain(&mut events);
    assert!(seen.iter().any(|event| matches!(event, PoolEvent::HealthCheckFailed { error, .. } if error.contains("unwell"))), "{seen:?}");
    assert!(
        seen.contains(&PoolEvent::Destroyed {
            instance: pool_core::InstanceId(0),
            reason: DestroyReason::HealthCheckFailed
        }),
        "{seen:?}"
    );
    assert_eq!(pool.status().counters.health_check_failures, 1);
    // The healthy replacement passes its checks and stays.
    tokio::time::sleep(30 * SECOND).await;
    assert_eq!(manager.probe.destroyed_serials(), [0]);
    assert!(manager.probe.checked.lock().len() >= 3);
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_past_the_leak_threshold_is_reported_once() {
    let (pool, _manager) = pool(PoolConfig { leak_threshold: Some(5 * SECOND), ..config() });
    let mut events = pool.subscribe();
    let leaks = move |events: &mut tokio::sync::broadcast::Receiver<PoolEvent>| {
        drain(events)
            .into_iter()
            .filter(|event| matches!(event, PoolEvent::LeakSuspected { .. }))
            .collect::<Vec<_>>()
    };
    let lease = pool.acquire().await.unwrap();
    tokio::time::sleep(4 * SECOND).await;
    assert!(leaks(&mut events).is_empty(), "reported too early");
    tokio::time::sleep(2 * SECOND).await;
    run_ready_tasks().await;
    assert_eq!(
        leaks(&mut events),
        [PoolEvent::LeakSuspected { instance: lease.id(), held: 5 * SECOND }]
    );
    tokio::time::sleep(60 * SECOND).await;
    assert!(leaks(&mut events).is_empty(), "reported twice");
    assert_eq!(pool.status().counters.leaks_suspected, 1);
    // A lease returned in time is never reported.
    drop(lease);
    let quick = pool.acquire().await.unwrap();
    tokio::time::sleep(4 * SECOND).await;
    drop(quick);
    tokio::time::sleep(60 * SECOND).await;
    assert!(leaks(&mut events).is_empty(), "a returned lease was reported");
}

#[tokio::test(start_paused = true)]
async fn resize_up_creates_and_down_retires_idle_instances_first() {
    let (pool, manager) = pool(PoolConfig { max: 4, ..config() });
    let mut events = pool.subscribe();
    pool.resize(3, 4).unwrap();
    eventually("three instances", || pool.status().size == 3).await;

    let busy = pool.acquire().await.unwrap();
    pool.resize(0, 1).unwrap();
    eventually("the idle ones are destroyed", || manager.probe.destroyed_serials().len() == 2)
        .await;
    assert_eq!(pool.status().size, 1);
    assert_eq!(pool.status().busy, 1, "the busy instance stays: it is within the new max");
    drop(busy);
    run_ready_tasks().await;
    assert_eq!(pool.status().size, 1);

    let seen = drain(&mut events);
    assert!(seen.contains(&PoolEvent::Resized { min: 3, max: 4 }), "{seen:?}");
    assert!(seen.contains(&PoolEvent::Resized { min: 0, max: 1 }), "{seen:?}");
    let resized = seen
        .iter()
        .filter(|e| matches!(e, PoolEvent::Destroyed { reason: DestroyReason::Resized, .. }))
        .count();
    assert_eq!(resized, 2);

    let error = pool.resize(2, 1).unwrap_err();
    assert!(error.to_string().contains("`min` must not exceed max (1), got 2"), "{error}");
    assert_eq!(pool.config().max, 1, "a refused resize changes nothing");
}

#[tokio::test(start_paused = true)]
async fn resize_down_retires_a_busy_instance_when_its_lease_returns() {
    let (pool, manager) = pool(PoolConfig { max: 2, ..config() });
    let first = pool.acquire().await.unwrap();
    let second = pool.acquire().await.unwrap();
    pool.resize(0, 1).unwrap();
    run_ready_tasks().await;
    assert!(manager.probe.destroyed_serials().is_empty(), "a busy instance was destroyed");
    drop(first);
    eventually("one instance retired on release", || manager.probe.destroyed_serials().len() == 1)
        .await;
    drop(second);
    run_ready_tasks().await;
    assert_eq!(pool.status().size, 1);
    assert_eq!(pool.status().idle, 1);
}

#[tokio::test(start_paused = true)]
async fn after_a_resize_down_a_lease_returned_while_acquires_wait_retires_the_surplus_first() {
    let (pool, manager) = pool(PoolConfig { max: 2, ..config() });
    let first = pool.acquire().await.unwrap();
    let second = pool.acquire().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await })
    };
    run_ready_tasks().await;
    pool.resize(0, 1).unwrap();
    // The pool is one over its new `max`: the first instance back goes, the waiter waits on.
    drop(first);
    eventually("one instance retired on release", || manager.probe.destroyed_serials() == [0])
        .await;
    assert_eq!(pool.status().waiting, 1);
    let kept = second.id();
    drop(second);
    let served = waiter.await.unwrap().unwrap();
    assert_eq!(served.id(), kept, "the instance within the new `max` goes to the waiter");
    assert_eq!(pool.status().size, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_refuses_acquires_and_waits_for_leases_until_its_deadline() {
    let (pool, manager) = pool(PoolConfig { max: 4, ..config() });
    let returned_early = [pool.acquire().await.unwrap(), pool.acquire().await.unwrap()];
    let returned_late = pool.acquire().await.unwrap();
    let abandoned = pool.acquire().await.unwrap();
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|_| ()) })
    };
    run_ready_tasks().await;
    assert_eq!(pool.status().waiting, 1);

    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(10 * SECOND).await })
    };
    run_ready_tasks().await;
    assert!(matches!(waiting.await.unwrap(), Err(Error::ShuttingDown)));
    assert!(matches!(pool.acquire().await, Err(Error::ShuttingDown)));

    drop(returned_early);
    tokio::time::sleep(2 * SECOND).await;
    drop(returned_late);
    let report = shutdown.await.unwrap();
    assert_eq!(report.waiters_rejected, 1);
    assert_eq!(report.leases_outstanding, 4);
    assert_eq!(report.leases_returned, 3);
    assert_eq!(report.leases_abandoned, 1);
    assert_eq!(report.destroyed, 3);
    assert_eq!(report.elapsed, 10 * SECOND, "the shutdown waits for leases until its deadline");

    // The abandoned lease's instance is destroyed when it finally returns.
    drop(abandoned);
    eventually("everything destroyed", || manager.probe.live() == 0).await;
    assert_eq!(manager.probe.destroyed_serials().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn shutdown_destroys_instances_concurrently_with_their_grace_period() {
    let (pool, manager) = pool(PoolConfig { min: 3, destroy_grace: 7 * SECOND, ..config() });
    eventually("three warm instances", || pool.status().size == 3).await;
    *manager.probe.destroy_delay.lock() = SECOND;
    let mut events = pool.subscribe();
    let report = pool.shutdown(30 * SECOND).await;
    assert_eq!(report.destroyed, 3);
    assert_eq!(report.leases_outstanding, 0);
    assert_eq!(report.elapsed, SECOND, "three one-second destroys side by side take one second");
    let destroyed = manager.probe.destroyed.lock().clone();
    assert_eq!(destroyed.len(), 3);
    assert!(destroyed.iter().all(|(_, grace)| *grace == 7 * SECOND), "{destroyed:?}");
    let reasons: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|event| match event {
            PoolEvent::Destroyed { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [DestroyReason::Shutdown; 3]);
    assert!(pool.status().closed);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_pool_stops_its_background_task_and_destroys_its_instances() {
    let manager = TestManager::default();
    let probe = manager.probe.clone();
    let pool =
        Pool::new(manager, PoolConfig { min: 2, health_check_interval: Some(SECOND), ..config() })
            .unwrap();
    eventually("two warm instances", || pool.status().size == 2).await;
    let lease = pool.acquire().await.unwrap();
    drop(pool);
    eventually("the idle instance is destroyed", || probe.destroyed.lock().len() == 1).await;
    drop(lease);
    eventually("the leased instance is destroyed on return", || probe.live() == 0).await;
    // Nothing runs any more: every task that held the pool, the background one included,
    // held the manager with it, and the manager is gone.
    tokio::time::sleep(10 * SECOND).await;
    assert_eq!(Arc::strong_count(&probe), 1, "a task still holds the pool");
}

#[tokio::test(start_paused = true)]
async fn selection_strategies_pick_the_expected_instance() {
    for (selection, expected) in [
        (Selection::MostRecent, [2, 2, 2]),
        (Selection::RoundRobin, [0, 1, 2]),
        (Selection::LeastLoaded, [0, 1, 2]),
    ] {
        let (pool, _manager) = pool(PoolConfig { selection, ..config() });
        let leases = [
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
        ];
        // Returned in order 0, 1, 2: the most recent is 2, the longest idle is 0.
        drop(leases);
        let mut picked = Vec::new();
        for _ in 0..3 {
            let lease = pool.acquire().await.unwrap();
            picked.push(lease.id().0);
        }
        assert_eq!(picked, expected, "{selection:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn least_loaded_spreads_shared_leases() {
    let (pool, _manager) =
        pool(PoolConfig { max: 2, concurrency: 4, selection: Selection::LeastLoaded, ..config() });
    let warm = [
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
    ];
    drop(warm);
    let leases: Vec<_> = acquire_many(&pool, 4).await;
    let on_first = leases.iter().filter(|lease| lease.id().0 == 0).count();
    assert_eq!(on_first, 2, "four leases over two instances: two each");
}

async fn acquire_many(pool: &Pool<TestManager>, n: usize) -> Vec<pool_core::Lease<TestManager>> {
    let mut leases = Vec::new();
    for _ in 0..n {
        leases.push(pool.acquire().await.unwrap());
    }
    leases
}

#[tokio::test(start_paused = true)]
async fn detach_takes_the_instance_out_and_the_minimum_is_restored() {
    let (pool, manager) = pool(PoolConfig { min: 1, ..config() });
    eventually("one warm instance", || pool.status().size == 1).await;
    let lease = pool.acquire().await.unwrap();
    let instance = lease.detach().unwrap();
    assert_eq!(instance.serial, 0);
    eventually("a replacement for the minimum", || {
        pool.status().size == 1 && pool.status().idle == 1
    })
    .await;
    assert!(manager.probe.destroyed_serials().is_empty(), "a detached instance is not destroyed");
    assert_eq!(pool.status().leased, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_acquire_leaves_the_queue() {
    let (pool, _manager) = pool(PoolConfig { max: 1, ..config() });
    let held = pool.acquire().await.unwrap();
    let cancelled = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|_| ()) })
    };
    run_ready_tasks().await;
    assert_eq!(pool.status().waiting, 1);
    cancelled.abort();
    run_ready_tasks().await;
    assert_eq!(pool.status().waiting, 0);
    drop(held);
    let again = pool.acquire_with(Priority::Normal, SECOND).await.unwrap();
    assert_eq!(pool.status().leased, 1);
    drop(again);
}

#[tokio::test(start_paused = true)]
async fn status_reports_wait_times() {
    let (pool, _manager) = pool(PoolConfig { max: 1, ..config() });
    let held = pool.acquire().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|_| ()) })
    };
    tokio::time::sleep(3 * SECOND).await;
    drop(held);
    waiter.await.unwrap().unwrap();
    let status = pool.status();
    assert_eq!(status.wait.count, 2);
    assert_eq!(status.wait.max, 3 * SECOND);
    // Both waited: the first for its create, the second for the first's return.
    assert_eq!(status.counters.waited, 2);
    assert_eq!(status.counters.acquired, 2);
}

#[tokio::test(start_paused = true)]
async fn a_pool_outside_a_runtime_or_with_a_bad_config_is_refused() {
    let error = Pool::new(TestManager::default(), PoolConfig { max: 0, ..config() }).unwrap_err();
    assert!(matches!(error, Error::InvalidConfig { field: "max", .. }), "{error:?}");
    let outside = std::thread::spawn(|| Pool::new(TestManager::default(), config()).map(|_| ()));
    assert!(matches!(outside.join().unwrap(), Err(Error::NoRuntime)));
}

#[tokio::test(start_paused = true)]
async fn a_create_timeout_is_reported_as_such() {
    let (pool, manager) = pool(PoolConfig { create_timeout: 2 * SECOND, ..config() });
    *manager.probe.create_delay.lock() = 5 * SECOND;
    let start = Instant::now();
    let error = pool.acquire().await.unwrap_err();
    assert!(
        matches!(error, Error::CreateTimeout { timeout } if timeout == 2 * SECOND),
        "{error:?}"
    );
    assert_eq!(start.elapsed(), 2 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn a_shared_instance_past_its_lifetime_takes_no_new_lease_and_goes_when_free() {
    let (pool, manager) =
        pool(PoolConfig { concurrency: 2, max_lifetime: Some(10 * SECOND), ..config() });
    let old = pool.acquire().await.unwrap();
    tokio::time::sleep(11 * SECOND).await;
    let new = pool.acquire().await.unwrap();
    assert_ne!(new.id(), old.id(), "an instance past its lifetime took a new lease");
    run_ready_tasks().await;
    assert!(manager.probe.destroyed_serials().is_empty(), "destroyed under a lease");
    assert_eq!(pool.status().retiring, 1);
    drop(old);
    eventually("the old instance goes once free", || manager.probe.destroyed_serials() == [0])
        .await;
    assert_eq!(pool.status().retiring, 0);
}

#[tokio::test(start_paused = true)]
async fn an_acquire_dropped_after_being_served_returns_its_lease() {
    let (pool, _manager) = pool(PoolConfig { max: 1, ..config() });
    let held = pool.acquire().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire().await.map(|_| ()) })
    };
    run_ready_tasks().await;
    // Serve the waiter, then cancel it before it runs to collect its lease.
    drop(held);
    waiter.abort();
    run_ready_tasks().await;
    assert!(waiter.await.unwrap_err().is_cancelled());
    let status = pool.status();
    assert_eq!((status.leased, status.waiting, status.idle), (0, 0, 1), "{status:?}");
    let again = pool.acquire_with(Priority::Normal, SECOND).await;
    assert!(again.is_ok(), "the uncollected lease was not returned: {again:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_is_announced_with_its_error_the_failures_in_a_row_and_the_pause() {
    let (pool, manager) = pool(PoolConfig {
        min: 1,
        create_backoff: Duration::from_millis(100),
        create_backoff_max: Duration::from_secs(1),
        ..config()
    });
    let mut events = pool.subscribe();
    manager.probe.fail_creates.store(2, Ordering::SeqCst);
    eventually("the warm instance after two failures", || pool.status().size == 1).await;
    let failures: Vec<_> = drain(&mut events)
        .into_iter()
        .filter(|event| matches!(event, PoolEvent::CreateFailed { .. }))
        .collect();
    assert_eq!(
        failures,
        [
            PoolEvent::CreateFailed {
                error: "test manager: create 0 refused".into(),
                consecutive_failures: 1,
                backoff: Duration::from_millis(100),
            },
            PoolEvent::CreateFailed {
                error: "test manager: create 1 refused".into(),
                consecutive_failures: 2,
                backoff: Duration::from_millis(200),
            },
        ]
    );

    // A success resets the count: the next failure is the first in a row again.
    manager.probe.fail_creates.store(1, Ordering::SeqCst);
    let mut lease = pool.acquire().await.unwrap();
    lease.mark_broken();
    drop(lease);
    eventually("the minimum is restored", || {
        pool.status().size == 1 && pool.status().counters.create_failures == 3
    })
    .await;
    let again: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|event| match event {
            PoolEvent::CreateFailed { consecutive_failures, backoff, .. } => {
                Some((consecutive_failures, backoff))
            }
            _ => None,
        })
        .collect();
    assert_eq!(again, [(1, Duration::from_millis(100))]);
}

#[tokio::test(start_paused = true)]
async fn a_create_failure_fails_only_the_waiters_no_running_create_covers() {
    // Two leases an instance: five waiters start three creates, held at a gate.
    let (pool, manager) = pool(PoolConfig { max: 4, concurrency: 2, ..config() });
    let gate = hold_creates(&manager);
    let order = Arc::new(Mutex::new(Vec::new()));
    let waiters: Vec<_> = (0..5)
        .map(|n| {
            let (pool, order) = (pool.clone(), order.clone());
            tokio::spawn(async move {
                let result = pool.acquire().await;
                order.lock().push(n);
                result
            })
        })
        .collect();
    run_ready_tasks().await;
    assert_eq!(pool.status().creating, 3);
    assert_eq!(pool.status().waiting, 5);

    // The first create through the gate fails. The two still running cover four waiters:
    // only the fifth's worth fails, and that is the longest waiting, at once.
    manager.probe.fail_creates.store(1, Ordering::SeqCst);
    let start = Instant::now();
    gate.add_permits(1);
    run_ready_tasks().await;
    assert_eq!(*order.lock(), [0], "exactly the first waiter failed");
    assert_eq!(pool.status().waiting, 4);
    assert_eq!(start.elapsed(), Duration::ZERO);

    // The two creates left serve the other four, two leases each.
    gate.add_permits(2);
    let mut results = Vec::new();
    for waiter in waiters {
        results.push(waiter.await.unwrap());
    }
    let [first, rest @ ..] = &results[..] else { unreachable!() };
    assert!(matches!(first, Err(Error::Create(_))), "{first:?}");
    assert!(rest.iter().all(Result::is_ok), "{rest:?}");
    assert_eq!(pool.status().size, 2);
}

#[tokio::test(start_paused = true)]
async fn raising_max_serves_queued_waiters_without_waiting_for_a_return() {
    let (pool, _manager) = pool(PoolConfig { max: 1, ..config() });
    let held = pool.acquire().await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire().await.map(|lease| lease.id()) })
        })
        .collect();
    run_ready_tasks().await;
    assert_eq!((pool.status().waiting, pool.status().creating), (2, 0), "max 1 is reached");

    let start = Instant::now();
    pool.resize(0, 3).unwrap();
    for waiter in waiters {
        let id = waiter.await.unwrap().unwrap();
        assert_ne!(id, held.id(), "served by a new instance, not the held one");
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(pool.status().size, 3);
}

#[tokio::test(start_paused = true)]
async fn a_broken_shared_instance_takes_no_new_lease_and_goes_when_every_lease_is_back() {
    let (pool, manager) = pool(PoolConfig { max: 2, concurrency: 2, ..config() });
    let mut events = pool.subscribe();
    let mut first = pool.acquire().await.unwrap();
    let second = pool.acquire().await.unwrap();
    let broken = first.id();
    assert_eq!(second.id(), broken, "both leases share the one instance");
    first.mark_broken();
    assert!(first.is_broken());
    drop(first);
    run_ready_tasks().await;
    assert!(manager.probe.destroyed_serials().is_empty(), "destroyed under a lease");
    assert_eq!(pool.status().retiring, 1);

    let third = pool.acquire().await.unwrap();
    assert_ne!(third.id(), broken, "a broken instance took a new lease");
    drop(second);
    eventually("the broken instance goes", || manager.probe.destroyed_serials() == [0]).await;
    let seen = drain(&mut events);
    assert!(
        seen.contains(&PoolEvent::Destroyed { instance: broken, reason: DestroyReason::Broken }),
        "{seen:?}"
    );
    assert_eq!((pool.status().size, pool.status().retiring), (1, 0));
    drop(third);
}

#[tokio::test(start_paused = true)]
async fn a_shared_lease_cannot_be_detached() {
    let (pool, manager) = pool(PoolConfig { max: 1, concurrency: 2, ..config() });
    let first = pool.acquire().await.unwrap();
    let second = pool.acquire().await.unwrap();
    let first = match first.detach() {
        Ok(_) => panic!("detached an instance another lease shares"),
        Err(lease) => lease,
    };
    assert_eq!(pool.status().leased, 2, "the refused detach gave the lease back");
    drop(second);
    let instance = first.detach().expect("the only lease can take the instance");
    assert_eq!(instance.serial, 0);
    assert_eq!((pool.status().size, pool.status().leased), (0, 0));
    run_ready_tasks().await;
    assert!(manager.probe.destroyed_serials().is_empty());
}

#[tokio::test(start_paused = true)]
async fn no_more_than_max_concurrent_creates_run_at_once() {
    let (pool, manager) = pool(PoolConfig { max: 8, max_concurrent_creates: 2, ..config() });
    let gate = hold_creates(&manager);
    // Each waiter keeps its lease, so each needs an instance of its own.
    let waiters = spawn_acquires(&pool, 5);
    run_ready_tasks().await;
    assert_eq!(pool.status().creating, 2);
    assert_eq!(manager.probe.creates_started.load(Ordering::SeqCst), 2);
    // Each finished create lets the next one start, never more than two at a time.
    for finished in 1..=3 {
        gate.add_permits(1);
        run_ready_tasks().await;
        assert_eq!(manager.probe.created.load(Ordering::SeqCst), finished);
        assert_eq!(pool.status().creating, 2, "after {finished} finished");
    }
    gate.add_permits(2);
    let mut leases = Vec::new();
    for waiter in waiters {
        leases.push(waiter.await.unwrap().unwrap());
    }
    assert_eq!(manager.probe.creates_started.load(Ordering::SeqCst), 5);
    assert_eq!(pool.status().size, 5);
}

#[tokio::test(start_paused = true)]
async fn health_checks_skip_leased_instances_and_a_hanging_one_fails_at_its_timeout() {
    let (pool, manager) = pool(PoolConfig {
        max: 2,
        health_check_interval: Some(10 * SECOND),
        health_check_timeout: 3 * SECOND,
        ..config()
    });
    let mut events = pool.subscribe();
    let leased = pool.acquire().await.unwrap();
    let idle = pool.acquire().await.unwrap();
    assert_eq!((leased.serial, idle.serial), (0, 1));
    drop(idle);
    tokio::time::sleep(11 * SECOND).await;
    run_ready_tasks().await;
    assert_eq!(*manager.probe.checked.lock(), [1], "only the idle instance is checked");

    // A check that hangs counts as failed once the timeout passes, not before: the next
    // check starts at 20 s and times out at 23 s.
    *manager.probe.check_delay.lock() = 60 * SECOND;
    tokio::time::sleep(9 * SECOND).await;
    run_ready_tasks().await;
    assert_eq!(*manager.probe.checked.lock(), [1, 1]);
    tokio::time::sleep(2 * SECOND).await;
    run_ready_tasks().await;
    assert!(manager.probe.destroyed_serials().is_empty(), "failed before the timeout");
    tokio::time::sleep(SECOND).await;
    eventually("the hanging instance is destroyed", || manager.probe.destroyed_serials() == [1])
        .await;
    let seen = drain(&mut events);
    assert!(
        seen.contains(&PoolEvent::HealthCheckFailed {
            instance: pool_core::InstanceId(1),
            error: "the health check took longer than 3s".into(),
        }),
        "{seen:?}"
    );
    drop(leased);
}

#[tokio::test(start_paused = true)]
async fn a_queue_limit_of_zero_never_waits_for_a_busy_instance() {
    let (pool, manager) = pool(PoolConfig { max: 2, queue_limit: 0, ..config() });
    // On an empty pool an acquire waits for the create it starts, not for a return.
    let gate = hold_creates(&manager);
    let cold = spawn_acquires(&pool, 1).remove(0);
    run_ready_tasks().await;
    assert_eq!((pool.status().waiting, pool.status().creating), (1, 1));
    gate.add_permits(2);
    let first = cold.await.unwrap().unwrap();
    let second = pool.acquire().await.unwrap();
    // Both instances busy and no room for a third: the next acquire fails at once.
    let start = Instant::now();
    let error = pool.acquire().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(matches!(error, Error::QueueFull { limit: 0, max: 2 }), "{error:?}");
    drop((first, second));
}

#[tokio::test(start_paused = true)]
async fn a_burst_on_a_cold_pool_is_not_refused_while_the_pool_may_grow_for_it() {
    // Room for four instances of two leases each, and one more acquire may wait beyond them.
    let (pool, manager) = pool(PoolConfig { max: 4, concurrency: 2, queue_limit: 1, ..config() });
    let gate = hold_creates(&manager);
    let burst = spawn_acquires(&pool, 9);
    run_ready_tasks().await;
    assert_eq!((pool.status().waiting, pool.status().creating), (9, 4));
    let error = pool.acquire().await.unwrap_err();
    assert!(matches!(error, Error::QueueFull { limit: 1, max: 4 }), "{error:?}");

    gate.add_permits(4);
    run_ready_tasks().await;
    let mut results = Vec::new();
    for acquire in burst {
        if acquire.is_finished() {
            results.push(acquire.await.unwrap());
        } else {
            // The ninth waits for a busy instance; returning one serves it.
            assert_eq!(pool.status().waiting, 1);
            drop(results.pop());
            results.push(acquire.await.unwrap());
        }
    }
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(pool.status().size, 4);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_as_soon_as_the_last_lease_is_back() {
    let (pool, manager) = pool(PoolConfig { max: 2, ..config() });
    let leases = [pool.acquire().await.unwrap(), pool.acquire().await.unwrap()];
    let shutdown = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown(60 * SECOND).await })
    };
    tokio::time::sleep(3 * SECOND).await;
    drop(leases);
    let report = shutdown.await.unwrap();
    assert_eq!(report.elapsed, 3 * SECOND, "the shutdown waited past the last return");
    assert_eq!((report.leases_returned, report.leases_abandoned), (2, 0));
    assert_eq!(report.destroyed, 2);
    assert_eq!(manager.probe.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_huge_concurrency_does_not_overflow_the_queue_limit() {
    let (pool, manager) =
        pool(PoolConfig { max: 2, concurrency: usize::MAX, queue_limit: 1, ..config() });
    let gate = hold_creates(&manager);
    // The first waits for its create; the second finds the queue at its limit, and the count
    // of what creates will serve (2 × usize::MAX) saturates instead of overflowing.
    let waiters = spawn_acquires(&pool, 2);
    run_ready_tasks().await;
    assert_eq!(pool.status().waiting, 2);
    gate.add_permits(1);
    for waiter in waiters {
        drop(waiter.await.unwrap().unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn a_huge_concurrency_does_not_overflow_when_a_create_fails() {
    let (pool, manager) = pool(PoolConfig { min: 3, max: 3, concurrency: usize::MAX, ..config() });
    let mut events = pool.subscribe();
    let gate = hold_creates(&manager);
    eventually("three warm-up creates", || pool.status().creating == 3).await;
    // One fails while two still run: what those two will serve (2 × usize::MAX leases)
    // saturates instead of overflowing.
    manager.probe.fail_creates.store(1, Ordering::SeqCst);
    gate.add_permits(1);
    eventually("the failure is counted", || pool.status().counters.create_failures == 1).await;
    let failed = drain(&mut events)
        .into_iter()
        .any(|event| matches!(event, PoolEvent::CreateFailed { consecutive_failures: 1, .. }));
    assert!(failed, "the failure is reported");
    gate.add_permits(3);
    eventually("the minimum, after the backoff", || pool.status().size == 3).await;
}
