//! The backend conformance suite: the scenarios every [`Backend`] must pass, parameterized by a
//! [`Target`] that knows how to build the backend, run its fixture function and see what is
//! still running.
//!
//! A backend's tests run the whole suite with one line:
//!
//! ```text
//! pool_core::conformance_suite!(MyTarget::new());
//! ```
//!
//! Every scenario uses a pool name of its own, stops what it started, and ends by checking
//! through [`Target::leftovers`] that nothing of its scope still runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{Backend, BackendError, Endpoint, FunctionManager, FunctionSpec, Health};
use crate::backend::{Instance, Termination};
use crate::config::PoolConfig;
use crate::owner::{Liveness, OwnerId, PoolName, Scope};
use crate::pool::Pool;
use crate::status::PoolEvent;

/// How the fixture function should behave in a scenario.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// Ignore SIGTERM, so that only the forced stop ends it.
    pub ignore_sigterm: bool,
    /// Never become ready.
    pub never_ready: bool,
    /// Exit after answering this many requests.
    pub crash_after: Option<u64>,
    /// The startup timeout to give the function, when the scenario needs a short one.
    pub startup_timeout: Option<Duration>,
}

/// A backend under test: how to build it and its functions, and how to see what runs.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// The backend under test.
    type Backend: Backend;

    /// A backend that launches for `scope`.
    fn backend(&self, scope: Scope) -> Result<Self::Backend, BackendError>;

    /// The fixture function, named `name`, behaving as `behaviour` says. It serves HTTP and
    /// answers `GET /` with 200 and a non-empty body.
    fn function(
        &self,
        name: &str,
        behaviour: &Behaviour,
    ) -> FunctionSpec<<Self::Backend as Backend>::Spec>;

    /// A function whose spec cannot work (a missing program, an image that does not exist).
    fn bad_function(&self, name: &str) -> FunctionSpec<<Self::Backend as Backend>::Spec>;

    /// What still runs on behalf of `scope` — processes, containers, pods — each described in
    /// a line; empty when nothing does. It must look at the system itself, not at the
    /// backend's own records.
    async fn leftovers(&self, scope: &Scope) -> Vec<String>;

    /// Lets go of an instance the way a crashed owner would: without stopping it. The
    /// default forgets it, so that nothing it holds is dropped.
    fn abandon(&self, instance: Instance<<Self::Backend as Backend>::Details>) {
        std::mem::forget(instance);
    }
}

type Spec<T> = FunctionSpec<<<T as Target>::Backend as Backend>::Spec>;

/// A scope of its own for each scenario run, owned by this process.
fn fresh_scope(scenario: &str) -> Scope {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let pool = format!("conf-{scenario}-{}-{run}", std::process::id());
    let pool = pool.chars().take(crate::owner::MAX_NAME_LEN).collect::<String>();
    Scope::current(PoolName::new(pool).expect("scenario names are valid pool names"))
}

fn backend<T: Target>(target: &T, scope: &Scope) -> Arc<T::Backend> {
    Arc::new(target.backend(scope.clone()).expect("the target builds a backend"))
}

async fn launch<T: Target>(
    backend: &T::Backend,
    function: &Spec<T>,
    id: u64,
) -> Instance<<T::Backend as Backend>::Details> {
    match backend.launch(function, crate::InstanceId(id)).await {
        Ok(instance) => instance,
        Err(error) => panic!("launching `{}` failed: {error}", function.name),
    }
}

fn address<D>(instance: &Instance<D>) -> SocketAddr {
    match instance.endpoint() {
        Endpoint::Http(address) => address,
        other => panic!("the conformance suite needs HTTP endpoints, got {other}"),
    }
}

/// Sends `GET path` and reads the whole answer: the status code and the body.
pub async fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map_err(|e| format!("read: {e}"))?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
        Ok((code, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("GET {path} on {address}: no answer within 10s"))?
}

/// Waits until nothing of `scope` runs, or fails the scenario naming what does. Stopping takes
/// effect asynchronously in some backends (a killed process exits a moment later), so this
/// looks again for a few seconds before it fails.
pub async fn assert_nothing_left<T: Target>(target: &T, scope: &Scope) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = target.leftovers(scope).await;
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "still running for pool `{}` owner `{}`:\n  {}",
                scope.pool,
                scope.owner,
                left.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Launch → ready → an HTTP request works → terminate.
pub async fn launch_then_request<T: Target>(target: &T) {
    let scope = fresh_scope("request");
    let backend = backend(target, &scope);
    let function = target.function("echo", &Behaviour::default());
    let instance = launch::<T>(&backend, &function, 0).await;
    assert_eq!(instance.function(), &function.name);
    let (code, body) = http_get(address(&instance), "/").await.expect("the ready instance answers");
    assert_eq!(code, 200, "body: {body}");
    assert!(!body.is_empty(), "the fixture answers with a body");
    assert_eq!(backend.probe(&instance).await.expect("probe works"), Health::Alive);
    assert_eq!(target.leftovers(&scope).await.len(), 1, "the instance is seen running");
    let ended = backend.terminate(instance, Duration::from_secs(5)).await.expect("terminate works");
    assert_eq!(ended, Termination::Graceful);
    assert_nothing_left(target, &scope).await;
}

/// Concurrent launches get distinct endpoints that all answer.
pub async fn concurrent_launches_get_distinct_endpoints<T: Target>(target: &T) {
    const COUNT: u64 = 4;
    let scope = fresh_scope("concurrent");
    let backend = backend(target, &scope);
    let function = Arc::new(target.function("many", &Behaviour::default()));
    let launches: Vec<_> = (0..COUNT)
        .map(|id| {
            let (backend, function) = (backend.clone(), function.clone());
            tokio::spawn(async move { launch::<T>(&backend, &function, id).await })
        })
        .collect();
    let mut instances = Vec::new();
    for launch in launches {
        instances.push(launch.await.expect("a launch task finishes"));
    }
    let mut endpoints: Vec<SocketAddr> = instances.iter().map(address).collect();
    endpoints.sort();
    endpoints.dedup();
    assert_eq!(endpoints.len(), COUNT as usize, "every instance has its own endpoint");
    for instance in &instances {
        let (code, _) = http_get(address(instance), "/").await.expect("every instance answers");
        assert_eq!(code, 200);
    }
    for instance in instances {
        backend.terminate(instance, Duration::from_secs(5)).await.expect("terminate works");
    }
    assert_nothing_left(target, &scope).await;
}

/// An instance that exits is reported dead by probe, and a pool replaces it.
pub async fn exited_instance_is_dead_and_replaced<T: Target>(target: &T) {
    let scope = fresh_scope("exited");
    let backend = backend(target, &scope);
    let crashing =
        target.function("crashy", &Behaviour { crash_after: Some(1), ..Behaviour::default() });

    // Probe alone.
    let instance = launch::<T>(&backend, &crashing, 0).await;
    let _ = http_get(address(&instance), "/").await;
    let health = wait_for_death(&*backend, &instance).await;
    assert!(matches!(health, Health::Dead(_)), "probe saw {health:?}");
    let ended = backend.terminate(instance, Duration::from_secs(5)).await.expect("terminate works");
    // Probe may see it dead (its port closed) while its exit is still under way, so terminate
    // finds it gone or stopping, never needing force.
    assert!(matches!(ended, Termination::AlreadyGone | Termination::Graceful), "{ended:?}");

    // In a pool: the health check finds it dead, the pool destroys it and creates another.
    let manager = FunctionManager::new(backend.clone(), crashing).expect("the spec is valid");
    let config = PoolConfig {
        min: 1,
        max: 1,
        health_check_interval: Some(Duration::from_millis(50)),
        ..PoolConfig::default()
    };
    let pool = Pool::new(manager, config).expect("the config is valid");
    let mut events = pool.subscribe();
    let first = pool.acquire().await.expect("the pool launches an instance");
    let first_id = first.id();
    let _ = http_get(address(&first), "/").await;
    drop(first);
    let replaced = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(PoolEvent::Created { instance }) if instance != first_id => return instance,
                Ok(_) => {}
                Err(error) => panic!("the pool's events ended: {error}"),
            }
        }
    })
    .await
    .expect("the pool replaces the dead instance");
    let second = pool.acquire().await.expect("the replacement is leased");
    assert_eq!(second.id(), replaced);
    let (code, _) = http_get(address(&second), "/").await.expect("the replacement answers");
    assert_eq!(code, 200);
    drop(second);
    let report = pool.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.leases_abandoned, 0);
    assert_nothing_left(target, &scope).await;
}

/// Probes `instance` until it is no longer alive, for up to 10 s; the last health seen.
pub async fn wait_for_death<B: Backend>(backend: &B, instance: &Instance<B::Details>) -> Health {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = backend.probe(instance).await.expect("probe works");
        if health != Health::Alive || Instant::now() >= deadline {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` runs no more: gone, or a zombie not reaped yet (which runs nothing).
pub fn has_ended(pid: u32) -> bool {
    crate::owner::process_state(pid).is_none_or(|state| state == 'Z')
}

/// A function that never gets ready fails after its startup timeout and leaves nothing.
pub async fn never_ready_fails_within_startup_timeout<T: Target>(target: &T) {
    let scope = fresh_scope("never-ready");
    let backend = backend(target, &scope);
    let timeout = Duration::from_millis(700);
    let function = target.function(
        "sleepy",
        &Behaviour { never_ready: true, startup_timeout: Some(timeout), ..Behaviour::default() },
    );
    let started = Instant::now();
    let error = backend.launch(&function, crate::InstanceId(0)).await.expect_err("never ready");
    assert!(
        started.elapsed() >= timeout,
        "gave up after {:?}, before the timeout",
        started.elapsed()
    );
    assert!(matches!(error, BackendError::NotReady { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("sleepy") && message.contains("700ms"), "{message}");
    assert_nothing_left(target, &scope).await;
}

/// A spec that cannot work is refused with an error naming the function.
pub async fn bad_spec_gives_clear_error<T: Target>(target: &T) {
    let scope = fresh_scope("bad-spec");
    let backend = backend(target, &scope);
    let function = target.bad_function("broken");
    let refused = FunctionManager::new(backend.clone(), target.bad_function("broken"))
        .expect_err("validation refuses the spec");
    assert!(refused.to_string().contains("`broken`"), "{refused}");
    let error = backend.launch(&function, crate::InstanceId(0)).await.expect_err("launch fails");
    assert!(error.to_string().contains("`broken`"), "{error}");
    assert_nothing_left(target, &scope).await;
}

/// Terminate is graceful for a function that exits on SIGTERM, forced after the grace period
/// for one that ignores it.
pub async fn terminate_is_graceful_or_forced<T: Target>(target: &T) {
    let scope = fresh_scope("terminate");
    let backend = backend(target, &scope);
    let polite = launch::<T>(&backend, &target.function("polite", &Behaviour::default()), 0).await;
    let stubborn_spec =
        target.function("stubborn", &Behaviour { ignore_sigterm: true, ..Behaviour::default() });
    let stubborn = launch::<T>(&backend, &stubborn_spec, 1).await;

    let ended = backend.terminate(polite, Duration::from_secs(10)).await.expect("terminate works");
    assert_eq!(ended, Termination::Graceful);
    let grace = Duration::from_millis(300);
    let started = Instant::now();
    let ended = backend.terminate(stubborn, grace).await.expect("terminate works");
    assert_eq!(ended, Termination::Forced);
    assert!(
        started.elapsed() >= grace,
        "forced after {:?}, before the grace period",
        started.elapsed()
    );
    assert_nothing_left(target, &scope).await;
}

/// What a dead owner left behind is reaped by the next owner of the same pool; a live
/// owner's instances are left alone.
pub async fn orphans_of_a_dead_owner_are_reaped<T: Target>(target: &T) {
    let ours = fresh_scope("orphans");
    let dead = Scope { pool: ours.pool.clone(), owner: dead_owner() };
    let alive_helper = Helper::start();
    let alive = Scope { pool: ours.pool.clone(), owner: alive_helper.owner.clone() };
    let function = target.function("left", &Behaviour::default());

    let crashed = target.backend(dead.clone()).expect("a backend for the dead owner");
    for id in 0..2 {
        let instance = launch::<T>(&crashed, &function, id).await;
        target.abandon(instance);
    }
    drop(crashed);
    let living = target.backend(alive.clone()).expect("a backend for the live owner");
    let kept = launch::<T>(&living, &function, 0).await;
    assert_eq!(target.leftovers(&dead).await.len(), 2, "the dead owner's instances run");

    let successor = target.backend(ours.clone()).expect("a backend for the new owner");
    let reaped = successor.reap_orphans().await.expect("reaping works");
    assert_eq!(reaped.owners, 1, "{reaped:?}");
    assert!(reaped.instances >= 2, "{reaped:?}");
    assert!(reaped.skipped_owners >= 1, "the live owner is skipped: {reaped:?}");
    assert_nothing_left(target, &dead).await;
    assert_eq!(target.leftovers(&alive).await.len(), 1, "the live owner's instance still runs");

    living.terminate(kept, Duration::from_secs(5)).await.expect("terminate works");
    assert_nothing_left(target, &alive).await;
    assert_nothing_left(target, &ours).await;
}

/// A pool's shutdown leaves nothing running.
pub async fn pool_shutdown_leaves_nothing<T: Target>(target: &T) {
    let scope = fresh_scope("shutdown");
    let backend = backend(target, &scope);
    let function = target.function("pooled", &Behaviour::default());
    let manager = FunctionManager::new(backend, function).expect("the spec is valid");
    let terminations = manager.terminations().clone();
    let config = PoolConfig { min: 2, max: 4, ..PoolConfig::default() };
    let pool = Pool::new(manager, config).expect("the config is valid");
    let leases = [pool.acquire().await, pool.acquire().await, pool.acquire().await];
    for lease in &leases {
        let lease = lease.as_ref().expect("the pool launches instances");
        let (code, _) = http_get(address(lease), "/").await.expect("a pooled instance answers");
        assert_eq!(code, 200);
        assert_eq!(lease.uses(), 1, "the lease counts as a use");
    }
    let live = pool.status().size;
    assert!(live >= 3, "three leases need three instances, the pool has {live}");
    let busy = pool.instances().iter().filter(|i| i.state == crate::InstanceState::Busy).count();
    assert_eq!(busy, 3, "{:?}", pool.instances());
    let records = pool.manager().instances();
    assert_eq!(records.len(), live, "{records:?}");
    for lease in leases.iter().flatten() {
        let record = records.iter().find(|r| r.id == lease.id()).expect("a record per lease");
        assert_eq!((record.endpoint, record.uses), (lease.endpoint(), 1));
    }
    drop(leases);
    let report = pool.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.destroyed, live as u64, "{report:?}");
    assert_eq!(terminations.graceful(), live as u64, "every instance stopped gracefully");
    assert_nothing_left(target, &scope).await;
}

/// Runs every scenario in turn.
pub async fn run_all<T: Target>(target: &T) {
    launch_then_request(target).await;
    concurrent_launches_get_distinct_endpoints(target).await;
    exited_instance_is_dead_and_replaced(target).await;
    never_ready_fails_within_startup_timeout(target).await;
    bad_spec_gives_clear_error(target).await;
    terminate_is_graceful_or_forced(target).await;
    orphans_of_a_dead_owner_are_reaped(target).await;
    pool_shutdown_leaves_nothing(target).await;
}

/// A process of this host that runs until dropped, standing in for a live owner.
struct Helper {
    child: std::process::Child,
    owner: OwnerId,
}

impl Helper {
    fn start() -> Self {
        let child = std::process::Command::new("sleep").arg("600").spawn().expect("`sleep` runs");
        let owner = OwnerId::of_process(child.id()).expect("the helper runs");
        Self { child, owner }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The id of an owner that ran on this host and is gone.
fn dead_owner() -> OwnerId {
    let helper = Helper::start();
    let owner = helper.owner.clone();
    drop(helper);
    assert_eq!(owner.liveness(), Liveness::Dead, "the stand-in owner has exited");
    owner
}

/// Emits one `#[tokio::test]` per conformance scenario for a [`Target`]: call it at the top
/// level of an integration test file with an expression that builds the target.
///
/// With `skip_if = path;` first, each test first calls `path(scenario_name) -> bool` and
/// returns at once when it says `true`: for backends that need something outside the test
/// (an engine, a cluster), which the function reports loudly when it is missing.
#[macro_export]
macro_rules! conformance_suite {
    (skip_if = $skip:path; $target:expr) => {
        $crate::conformance_suite!(@tests $skip; $target;
            launch_then_request,
            concurrent_launches_get_distinct_endpoints,
            exited_instance_is_dead_and_replaced,
            never_ready_fails_within_startup_timeout,
            bad_spec_gives_clear_error,
            terminate_is_graceful_or_forced,
            orphans_of_a_dead_owner_are_reaped,
            pool_shutdown_leaves_nothing
        );
    };
    ($target:expr) => {
        $crate::conformance_suite!(skip_if = $crate::testkit::never_skip; $target);
    };
    (@tests $skip:path; $target:expr; $($scenario:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                if $skip(stringify!($scenario)) {
                    return;
                }
                $crate::testkit::$scenario(&$target).await;
            }
        )+
    };
}

/// The `skip_if` of a suite that always runs.
pub fn never_skip(_scenario: &str) -> bool {
    false
}
