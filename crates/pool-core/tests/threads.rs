//! The pool on a multi-threaded runtime, in real time: acquires given up at random moments,
//! leases returned from other tasks, broken or detached, resizes and a shutdown in the middle
//! of it all. At the end every instance made was destroyed or detached exactly once, and no
//! instance ever carried more leases than its `concurrency`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{TestInstance, TestManager};
use parking_lot::Mutex;
use pool_core::{Error, Lease, Pool, PoolConfig, Priority};

/// xorshift64*: a stream of its own for each task, the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Leases held right now, by instance serial.
type Held = Arc<Mutex<HashMap<u64, usize>>>;

fn give_back(held: &Held, lease: &Lease<TestManager>) {
    let mut held = held.lock();
    let count = held.get_mut(&serial(lease)).expect("a held lease is counted");
    *count -= 1;
}

fn serial(lease: &Lease<TestManager>) -> u64 {
    let instance: &TestInstance = lease;
    instance.serial
}

async fn churn(config: PoolConfig, seed: u64) {
    let manager = TestManager::default();
    *manager.probe.create_delay.lock() = Duration::from_millis(seed % 2);
    let probe = manager.probe.clone();
    let concurrency = config.concurrency;
    let pool = Pool::new(manager, config).expect("a valid config");
    let held: Held = Arc::default();
    let detached = Arc::new(AtomicU64::new(0));

    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (pool, held, detached) = (pool.clone(), held.clone(), detached.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed.wrapping_mul(1_000_003) + task + 1);
                for _ in 0..150 {
                    let priority =
                        [Priority::High, Priority::Normal, Priority::Low][rng.below(3) as usize];
                    let acquire = pool.acquire_with(priority, Duration::from_secs(10));
                    let outcome = if rng.below(3) == 0 {
                        // Given up after a moment: while queued, or just as it is served.
                        let patience = Duration::from_micros(rng.below(300));
                        match tokio::time::timeout(patience, acquire).await {
                            Ok(outcome) => outcome,
                            Err(_) => continue,
                        }
                    } else {
                        acquire.await
                    };
                    let mut lease = match outcome {
                        Ok(lease) => lease,
                        Err(Error::ShuttingDown) => return,
                        Err(other) => panic!("unexpected acquire error: {other}"),
                    };
                    {
                        let mut held = held.lock();
                        let count = held.entry(serial(&lease)).or_default();
                        *count += 1;
                        assert!(*count <= concurrency, "{count} leases on one instance");
                    }
                    for _ in 0..rng.below(3) {
                        tokio::task::yield_now().await;
                    }
                    give_back(&held, &lease);
                    match rng.below(20) {
                        0 => lease.mark_broken(),
                        1 => {
                            // Out of the pool's hands: neither counted nor destroyed by it.
                            if lease.detach().is_ok() {
                                detached.fetch_add(1, Ordering::SeqCst);
                            }
                            continue;
                        }
                        2..=6 => {
                            // Returned from another task, on whichever worker it runs.
                            tokio::spawn(async move {
                                tokio::task::yield_now().await;
                                drop(lease);
                            });
                            continue;
                        }
                        _ => {}
                    }
                    drop(lease);
                }
            })
        })
        .collect();

    let resizer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for (min, max) in [(0, 1), (2, 4), (1, 2), (0, 3)] {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if pool.resize(min, max).is_err() {
                    return;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(10 + seed % 20)).await;
    let report = pool.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.leases_abandoned, 0, "{report:?}");
    for task in tasks {
        task.await.expect("a task of the churn panicked");
    }
    resizer.await.expect("the resizer panicked");

    let status = pool.status();
    assert_eq!((status.size, status.leased, status.creating), (0, 0, 0), "{status:?}");
    let destroyed = probe.destroyed_serials();
    let unique: BTreeSet<u64> = destroyed.iter().copied().collect();
    assert_eq!(unique.len(), destroyed.len(), "an instance was destroyed twice");
    let made = probe.created.load(Ordering::SeqCst);
    assert_eq!(made, destroyed.len() as u64 + detached.load(Ordering::SeqCst));
}

fn config() -> PoolConfig {
    PoolConfig {
        min: 1,
        max: 3,
        health_check_interval: Some(Duration::from_millis(1)),
        idle_timeout: Some(Duration::from_millis(2)),
        ..PoolConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_leases_on_two_workers_keep_the_count() {
    for seed in 0..40 {
        churn(config(), seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_leases_with_lifetimes_on_two_workers_keep_the_count() {
    for seed in 0..40 {
        let config = PoolConfig {
            concurrency: 3,
            max_uses: Some(5),
            max_lifetime: Some(Duration::from_millis(3)),
            leak_threshold: Some(Duration::from_millis(1)),
            ..config()
        };
        churn(config, seed).await;
    }
}
