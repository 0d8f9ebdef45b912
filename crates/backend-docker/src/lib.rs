//! The Docker backend of Serverless Managers: containers on a real Docker Engine as pooled,
//! health-checked functions, driven through bollard.
//!
//! An instance is a container that serves HTTP on `$PORT` (the spec's `container_port`,
//! default 8080) on every interface. The backend
//!
//! - makes sure the image is there as the pull policy says (`never`, `if_missing`, `always`;
//!   pull progress goes to [`DockerBackend::pull_events`] and to `tracing`, target
//!   `smgr::docker`);
//! - creates the container with the labels `smgr.owner`, `smgr.pool`, `smgr.function` and
//!   `smgr.instance`, every capability dropped and no new privileges (unless the spec says
//!   otherwise), memory, CPU and pids limits, an optional read-only root with a tmpfs `/tmp`,
//!   and a minimal init as process 1 so that SIGTERM reaches the function;
//! - copies the spec's files in with the archive upload API (so a remote engine works too);
//! - publishes the port on 127.0.0.1 with a host port the engine picks, starts the container,
//!   reads the mapping and probes readiness; a failed launch returns an error with the last
//!   lines of the container's logs, and the container is removed;
//! - limits concurrent creates (default 8);
//! - learns that a container died (`die`, `oom`, a SIGKILL) from the engine's event stream,
//!   without polling; while the stream is down, or when
//!   [`DockerBackendConfig::follow_events`] is off, probes inspect the container instead;
//! - stops a container with the grace period, then kills it, then removes it with its
//!   anonymous volumes; a container already gone is not an error;
//! - and [`Backend::reap_orphans`] removes the containers of the same pool whose owner process
//!   is dead, so a restarted gateway leaves nothing behind.
//!
//! The engine is `DOCKER_HOST` or the default unix socket, or the address in
//! [`DockerBackendConfig::host`]. An engine that does not answer gives
//! [`BackendError::Unavailable`](pool_core::BackendError::Unavailable) naming the address.
//!
//! It is a layer-2 crate: it builds on `pool-core` and never on another backend.
//!
//! ```no_run
//! use std::sync::Arc;
//! use backend_docker::{DockerBackend, DockerBackendConfig, DockerSpec, Readiness};
//! use pool_core::{Backend, FunctionManager, FunctionSpec, Pool, PoolConfig, PoolName, Scope};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scope = Scope::current(PoolName::new("demo")?);
//! let backend = Arc::new(DockerBackend::connect(DockerBackendConfig::new(scope)).await?);
//! backend.reap_orphans().await?; // what a crashed predecessor left behind
//! let spec = DockerSpec::new("registry.example/hello:1").readiness(Readiness::Http("/".into()));
//! let hello = FunctionSpec::new("hello", spec)?;
//! let pool = Pool::new(FunctionManager::new(backend, hello)?, PoolConfig::default())?;
//! let instance = pool.acquire().await?;
//! println!("serving at {}", instance.endpoint());
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! - `testkit`: helpers for tests against a real engine (skip or fail without one) and for
//!   packaging a one-file std-only Rust program into an image `FROM scratch` (the tests'
//!   fixture function; the `docker_pool` example's function).
//!
//! [`Backend::reap_orphans`]: pool_core::Backend::reap_orphans

mod backend;
mod http;
mod spec;
mod tar;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

pub use backend::{
    ContainerDetails, ContainerInfo, DEFAULT_HOST, DEFAULT_TCP_PORT, DockerBackend,
    DockerBackendConfig, FUNCTION_LABEL, INSTANCE_LABEL, OWNER_LABEL, POOL_LABEL, PullEvent,
    PullStage, check_spec, is_engine_address,
};
pub use spec::{DockerSpec, InjectedFile, Limits, PullPolicy, Readiness, Security};
