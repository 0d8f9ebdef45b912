//! A warm pool of child processes: the Python `hello` function (`functions/hello.py`) on the
//! process backend, 2 to 4 instances, serving 100 requests 8 at a time.
//!
//! ```text
//! cargo run -p examples --example process_pool
//! ```
//!
//! It reaps what a crashed earlier run left behind, starts the pool, sends every request
//! through a lease on an instance, checks each answer (status 200, and the pid in the body is
//! the leased instance's), prints the pool's status and each instance's uses, shuts the pool
//! down and checks that no process of it is left. It needs `python3` in `PATH`.
// An example program reports on stdout.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_process::{ProcessBackend, ProcessBackendConfig, ProcessSpec, Readiness, Stream};
use pool_core::{
    Backend, Endpoint, FunctionManager, FunctionSpec, InstanceId, Pool, PoolConfig, PoolName, Scope,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests sent in all.
const REQUESTS: usize = 100;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn Error + Send + Sync>;

/// What the example saw of one instance.
#[derive(Debug, Default)]
struct Seen {
    pid: u32,
    port: u16,
    /// Leases the instance has counted (`Instance::uses`), as of its latest lease.
    uses: u64,
    /// Requests it answered in this run.
    answered: u64,
    /// The last line it wrote to stderr.
    last_stderr: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let scope = Scope::current(PoolName::new("process-pool-example")?);
    let backend = Arc::new(ProcessBackend::new(ProcessBackendConfig::new(scope.clone()))?);
    let reaped = backend.reap_orphans().await?;
    println!(
        "reaped orphans: {} process(es) of {} dead owner(s); state directory {}",
        reaped.instances,
        reaped.owners,
        backend.state_dir().display()
    );

    // `hello.py` is executable with a shebang and could be the program itself; going through
    // `python3` also works where the executable bit was lost.
    let script = format!("{}/functions/hello.py", env!("CARGO_MANIFEST_DIR"));
    let mut spec = ProcessSpec::new("python3").args([script]);
    spec.readiness = Readiness::Http("/healthz".to_owned());
    spec.env.insert("GREETING".to_owned(), "hello from a warm pool".to_owned());
    let function = FunctionSpec::new("hello-py", spec)?;
    let manager = FunctionManager::new(backend.clone(), function)?;
    let terminations = manager.terminations().clone();
    let pool = Pool::new(manager, PoolConfig { min: 2, max: 4, ..PoolConfig::default() })?;

    let started = Instant::now();
    wait_for_idle(&pool, 2, Duration::from_secs(30)).await?;
    println!("{} instances warm after {:?}", pool.status().idle, started.elapsed());

    let seen = Arc::new(Mutex::new(BTreeMap::<InstanceId, Seen>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..CONCURRENCY)
        .map(|_| tokio::spawn(client(pool.clone(), next.clone(), seen.clone())))
        .collect();
    for client in clients {
        client.await??;
    }
    let elapsed = started.elapsed();
    println!(
        "{REQUESTS} requests, {CONCURRENCY} at a time: all answered 200 in {elapsed:?} ({:.0} req/s)",
        REQUESTS as f64 / elapsed.as_secs_f64()
    );

    let status = pool.status();
    println!(
        "pool: size {} (min {}, max {}), idle {}, busy {}, leased {}, creating {}, waiting {}",
        status.size,
        status.min,
        status.max,
        status.idle,
        status.busy,
        status.leased,
        status.creating,
        status.waiting
    );
    let counters = &status.counters;
    println!(
        "counters: acquired {}, waited {}, timeouts {}, queue full {}, created {}, create failures {}, destroyed {}, health check failures {}",
        counters.acquired,
        counters.waited,
        counters.timeouts,
        counters.queue_full,
        counters.created,
        counters.create_failures,
        counters.destroyed,
        counters.health_check_failures
    );
    println!(
        "acquire wait over {} acquires: p50 {:?}, p99 {:?}, max {:?}",
        status.wait.count, status.wait.p50, status.wait.p99, status.wait.max
    );
    let seen = std::mem::take(&mut *seen.lock().expect("no client panicked"));
    for (id, instance) in &seen {
        println!(
            "instance {id}: pid {}, port {}, uses {}, answered {}; its stderr: {:?}",
            instance.pid, instance.port, instance.uses, instance.answered, instance.last_stderr
        );
        if instance.uses != instance.answered {
            return Err(format!(
                "instance {id} counted {} uses but answered {} requests",
                instance.uses, instance.answered
            )
            .into());
        }
    }
    let answered: u64 = seen.values().map(|instance| instance.answered).sum();
    if answered != REQUESTS as u64 {
        return Err(format!("{answered} requests answered, {REQUESTS} sent").into());
    }

    let report = pool.shutdown(Duration::from_secs(10)).await;
    println!(
        "shutdown in {:?}: {} destroyed, {} waiters rejected, {} leases outstanding ({} returned, {} abandoned)",
        report.elapsed,
        report.destroyed,
        report.waiters_rejected,
        report.leases_outstanding,
        report.leases_returned,
        report.leases_abandoned
    );
    println!(
        "terminations: {} graceful (SIGTERM), {} forced (SIGKILL), {} already gone, {} failed",
        terminations.graceful(),
        terminations.forced(),
        terminations.already_gone(),
        terminations.failed()
    );
    let left = backend_process::processes_of(&scope.pool, &scope.owner, None);
    println!("processes of the pool still running: {}", left.len());
    if !left.is_empty() {
        return Err(format!("processes left running after the shutdown: {left:?}").into());
    }
    Ok(())
}

/// Sends requests through leases until all `REQUESTS` are taken, checking each answer.
async fn client(
    pool: Pool<FunctionManager<ProcessBackend>>,
    next: Arc<AtomicUsize>,
    seen: Arc<Mutex<BTreeMap<InstanceId, Seen>>>,
) -> Result<(), BoxError> {
    while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
        let lease = pool.acquire().await?;
        let Endpoint::Http(address) = lease.endpoint() else {
            return Err(format!("instance {} has no HTTP endpoint", lease.id()).into());
        };
        let (status, body) = http_get(address, "/greet").await?;
        if status != 200 {
            return Err(format!("GET /greet on {address} answered {status}: {body}").into());
        }
        let answer: serde_json::Value = serde_json::from_str(&body)
            .map_err(|error| format!("GET /greet on {address}: {error} in {body:?}"))?;
        let details = lease.details();
        if answer["pid"] != details.pid() {
            return Err(format!(
                "the answer came from pid {} but instance {} is pid {}",
                answer["pid"],
                lease.id(),
                details.pid()
            )
            .into());
        }
        let mut seen = seen.lock().expect("no client panicked");
        let instance = seen.entry(lease.id()).or_default();
        instance.pid = details.pid();
        instance.port = details.port();
        instance.uses = instance.uses.max(lease.uses());
        instance.answered += 1;
        if let Some(line) = details.logs().tail(Stream::Stderr, 1).pop() {
            instance.last_stderr = line;
        }
        // Dropping the lease (at the end of the iteration) returns the instance to the pool.
    }
    Ok(())
}

/// Waits until the pool holds `count` idle instances.
async fn wait_for_idle<M: pool_core::Manager>(
    pool: &Pool<M>,
    count: usize,
    timeout: Duration,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    while pool.status().idle < count {
        let status = pool.status();
        if Instant::now() >= deadline {
            return Err(format!(
                "{count} instances were not ready within {timeout:?}: {} created, {} create failures",
                status.counters.created, status.counters.create_failures
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// `GET path` with `Connection: close`: the status code and the body.
async fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET {path} on {address}: no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|error| format!("GET {path} on {address}: {error}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET {path} on {address}: not an HTTP answer: {head:?}"))?;
    Ok((status, body.to_owned()))
}
