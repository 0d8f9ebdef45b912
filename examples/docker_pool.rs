//! A warm pool of containers: the Rust `hello-fn` function (`functions/hello_fn.rs`) packaged
//! into an image `FROM scratch`, on the docker backend, 2 to 4 containers, serving 40 requests
//! 4 at a time.
//!
//! ```text
//! cargo run -p examples --example docker_pool
//! ```
//!
//! It needs a Docker Engine (`DOCKER_HOST`, or the default socket) and `rustc`: it compiles
//! `hello_fn.rs` statically and builds the image `smgr-hello-fn:<hash>` on the engine (nothing
//! is pulled). It removes what a crashed earlier run left behind, starts the pool, sends every
//! request through a lease on a container, checks each answer, prints the containers the
//! engine lists for the pool, shuts the pool down and checks that no container of it is left.
// An example program reports on stdout.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_docker::{DockerBackend, DockerBackendConfig, DockerSpec, PullPolicy, Readiness};
use pool_core::{
    Backend, Endpoint, FunctionManager, FunctionSpec, Pool, PoolConfig, PoolName, Scope,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests sent in all.
const REQUESTS: usize = 40;
/// Requests in flight at once.
const CONCURRENCY: usize = 4;

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let scope = Scope::current(PoolName::new("docker-pool-example")?);
    let backend = Arc::new(DockerBackend::connect(DockerBackendConfig::new(scope.clone())).await?);
    let reaped = backend.reap_orphans().await?;
    println!(
        "engine at {}; removed {} container(s) of {} dead owner(s)",
        backend.host(),
        reaped.instances,
        reaped.owners
    );

    let work_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/docker-pool-example");
    let image = backend_docker::testkit::scratch_image(
        backend.docker(),
        "smgr-hello-fn",
        include_str!("functions/hello_fn.rs"),
        &work_dir,
    )
    .await?;
    println!("image {image}");

    // A container listens on every interface, so that the engine can publish its port.
    let spec = DockerSpec::new(&image)
        .env("BIND", "0.0.0.0")
        .env("GREETING", "hello from a warm pool of containers")
        .readiness(Readiness::Http("/healthz".to_owned()))
        .pull(PullPolicy::Never);
    let function = FunctionSpec::new("hello-fn", spec)?;
    let manager = FunctionManager::new(backend.clone(), function)?;
    let terminations = manager.terminations().clone();
    let pool =
        Arc::new(Pool::new(manager, PoolConfig { min: 2, max: 4, ..PoolConfig::default() })?);

    let started = Instant::now();
    while pool.status().idle < 2 {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the pool did not warm 2 containers within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("2 containers warm after {:?}", started.elapsed());

    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..CONCURRENCY {
        let pool = pool.clone();
        workers.push(tokio::spawn(async move {
            for request in (worker..REQUESTS).step_by(CONCURRENCY) {
                let lease = pool.acquire().await?;
                let Endpoint::Http(address) = lease.endpoint() else {
                    return Err::<(), BoxError>("no HTTP endpoint".into());
                };
                let answer = get(address, &format!("/request/{request}")).await?;
                if !answer.starts_with("HTTP/1.1 200") || !answer.contains("warm pool") {
                    return Err(format!("unexpected answer: {answer}").into());
                }
            }
            Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    println!("{REQUESTS} requests answered in {:?}", started.elapsed());

    for container in backend.containers_of(&scope.pool, Some(&scope.owner)).await? {
        println!(
            "  container {} ({}), instance {}",
            container.name, container.state, container.instance
        );
    }
    let report = pool.shutdown(Duration::from_secs(10)).await;
    let status = pool.status();
    println!(
        "shut down: {} container(s) destroyed ({} gracefully); {} created in all",
        report.destroyed,
        terminations.graceful(),
        status.counters.created
    );
    let left = backend.containers_of(&scope.pool, Some(&scope.owner)).await?;
    if !left.is_empty() {
        return Err(format!("containers left behind: {left:?}").into());
    }
    println!("no container left");
    Ok(())
}

/// `GET path` on `address`; the whole answer.
async fn get(address: std::net::SocketAddr, path: &str) -> Result<String, BoxError> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await??;
    Ok(answer)
}
