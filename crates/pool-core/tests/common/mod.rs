//! A manager for tests that records what the pool asks of it and fails on command.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pool_core::{Manager, PoolEvent};
use tokio::sync::{Semaphore, broadcast};
use tokio::time::Instant;

/// The manager's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("test manager: {0}")]
pub struct TestError(pub String);

/// An instance: the number of the create that made it.
#[derive(Debug)]
pub struct TestInstance {
    pub serial: u64,
}

/// What the manager saw and what it is told to do.
#[derive(Debug, Default)]
pub struct Probe {
    pub creates_started: AtomicU64,
    pub created: AtomicU64,
    /// Serial numbers of destroyed instances, in order, with the grace period given.
    pub destroyed: Mutex<Vec<(u64, Duration)>>,
    /// Creates still to fail.
    pub fail_creates: AtomicU32,
    /// Serial numbers whose health checks fail.
    pub failing_checks: Mutex<HashSet<u64>>,
    /// When each create started.
    pub create_times: Mutex<Vec<Instant>>,
    /// When set, each create takes a permit first (tests hold creates back with it).
    pub create_gate: Mutex<Option<Arc<Semaphore>>>,
    pub create_delay: Mutex<Duration>,
    /// The id the pool gave each create, in the order the creates started.
    pub create_ids: Mutex<Vec<pool_core::InstanceId>>,
    /// Serial numbers of the instances leased, in order.
    pub leased: Mutex<Vec<u64>>,
    pub destroy_delay: Mutex<Duration>,
    /// How long each health check takes.
    pub check_delay: Mutex<Duration>,
    /// Serial numbers of the instances checked, in order.
    pub checked: Mutex<Vec<u64>>,
    /// The methods that panic (`create`, `check`, `leased`, `destroy`) until taken out.
    pub panics: Mutex<HashSet<&'static str>>,
    /// The methods (`create`, `check`) whose futures panic when dropped before they finish.
    pub panics_when_cut: Mutex<HashSet<&'static str>>,
}

/// Panics when dropped before [`Cut::finished`], if armed: a manager future that panics when
/// the pool drops it unfinished.
struct Cut(Option<&'static str>);

impl Cut {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        if let Some(method) = self.0
            && !std::thread::panicking()
        {
            panic!("test manager: {method} panics when cut short");
        }
    }
}

impl Probe {
    /// Panics when `method` is to.
    fn maybe_panic(&self, method: &str) {
        if self.panics.lock().contains(method) {
            panic!("test manager: {method} panics");
        }
    }

    /// Armed when `method`'s future is to panic if dropped unfinished.
    fn cut(&self, method: &'static str) -> Cut {
        Cut(self.panics_when_cut.lock().contains(method).then_some(method))
    }

    pub fn destroyed_serials(&self) -> Vec<u64> {
        self.destroyed.lock().iter().map(|(serial, _)| *serial).collect()
    }

    pub fn live(&self) -> u64 {
        self.created.load(Ordering::SeqCst) - self.destroyed.lock().len() as u64
    }
}

#[derive(Debug, Clone, Default)]
pub struct TestManager {
    pub probe: Arc<Probe>,
}

#[async_trait]
impl Manager for TestManager {
    type Instance = TestInstance;
    type Error = TestError;

    async fn create(&self, id: pool_core::InstanceId) -> Result<TestInstance, TestError> {
        let cut = self.probe.cut("create");
        let serial = self.probe.creates_started.fetch_add(1, Ordering::SeqCst);
        self.probe.create_ids.lock().push(id);
        self.probe.create_times.lock().push(Instant::now());
        let gate = self.probe.create_gate.lock().clone();
        if let Some(gate) = gate {
            gate.acquire().await.expect("the gate stays open").forget();
        }
        pause(&self.probe.create_delay).await;
        self.probe.maybe_panic("create");
        let fail = self
            .probe
            .fail_creates
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        cut.finished();
        if fail {
            return Err(TestError(format!("create {serial} refused")));
        }
        self.probe.created.fetch_add(1, Ordering::SeqCst);
        Ok(TestInstance { serial })
    }

    async fn check(&self, instance: &TestInstance) -> Result<(), TestError> {
        let cut = self.probe.cut("check");
        self.probe.checked.lock().push(instance.serial);
        pause(&self.probe.check_delay).await;
        cut.finished();
        self.probe.maybe_panic("check");
        if self.probe.failing_checks.lock().contains(&instance.serial) {
            return Err(TestError(format!("instance {} is unwell", instance.serial)));
        }
        Ok(())
    }

    fn leased(&self, instance: &TestInstance) {
        self.probe.maybe_panic("leased");
        self.probe.leased.lock().push(instance.serial);
    }

    async fn destroy(&self, instance: TestInstance, grace: Duration) {
        pause(&self.probe.destroy_delay).await;
        self.probe.maybe_panic("destroy");
        self.probe.destroyed.lock().push((instance.serial, grace));
    }
}

/// Sleeps as long as `delay` says, if at all.
async fn pause(delay: &Mutex<Duration>) {
    let delay = *delay.lock();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Lets background tasks run until `done` holds; panics after ten (virtual) seconds.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Lets every ready task run without moving the clock.
pub async fn run_ready_tasks() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// The events received so far.
pub fn drain(events: &mut broadcast::Receiver<PoolEvent>) -> Vec<PoolEvent> {
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    seen
}
