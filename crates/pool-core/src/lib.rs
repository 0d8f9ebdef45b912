//! The one async pool engine of Serverless Managers.
//!
//! Every backend, the connection pool and the `smgr` gateway keep their instances in a
//! [`Pool`] built by this crate. It is the tiny core of the workspace: it knows nothing of
//! Docker, Kubernetes, HTTP servers or any particular backend, and depends only on tokio's
//! sync and time parts, parking_lot, thiserror, async-trait and serde.
//!
//! A [`Manager`] says how to create, check and destroy an instance; the pool decides when:
//!
//! - it keeps `min` instances warm in the background, restores them after failures, and never
//!   evicts them for being idle; it never holds more than `max`;
//! - an instance carries one lease at a time, or `concurrency` shared leases;
//! - acquires wait in a bounded queue, first come first served within three [`Priority`]
//!   levels, for at most `acquire_timeout` (30 s unless configured, or unbounded); a full queue
//!   fails at once;
//! - a failed create reaches the acquires that were counting on it at once, with the
//!   manager's error as the source, and further creates back off;
//! - an acquire whose create is still running takes an instance returned meanwhile;
//! - idle timeout, max lifetime and max uses retire instances only while they are idle;
//!   background health checks replace failing ones; leases held too long are reported;
//! - [`Pool::resize`] changes the limits at run time, and [`Pool::shutdown`] drains: it refuses
//!   new acquires, waits for leases up to a deadline and destroys everything concurrently,
//!   each instance with a grace period.
//!
//! ```
//! use std::convert::Infallible;
//! use pool_core::{InstanceId, Manager, Pool, PoolConfig};
//!
//! /// Hands out numbered buffers.
//! struct Buffers;
//!
//! #[async_trait::async_trait]
//! impl Manager for Buffers {
//!     type Instance = Vec<u8>;
//!     type Error = Infallible;
//!
//!     async fn create(&self, _: InstanceId) -> Result<Vec<u8>, Infallible> {
//!         Ok(Vec::with_capacity(4096))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pool_core::Result<()> {
//! let pool = Pool::new(Buffers, PoolConfig { min: 1, max: 4, ..PoolConfig::default() })?;
//! let mut buffer = pool.acquire().await?;
//! buffer.get_mut().expect("an exclusive lease").extend_from_slice(b"hello");
//! assert_eq!(&buffer[..], b"hello");
//! drop(buffer); // back to the pool
//!
//! let report = pool.shutdown(std::time::Duration::from_secs(5)).await;
//! assert_eq!(report.leases_abandoned, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Events and status
//!
//! [`Pool::subscribe`] delivers [`PoolEvent`]s (created, destroyed with a [`DestroyReason`],
//! create failed, health check failed, leak suspected, resized); [`Pool::status`] is a
//! [`PoolStatus`] snapshot with sizes, counters and the distribution of wait times.
//!
//! # Functions and backends
//!
//! On top of the engine sits the serverless layer: a [`FunctionSpec`] names a function and
//! carries its backend's spec; a [`Backend`] (processes, containers, pods, worker threads)
//! launches, probes and terminates [`Instance`]s of it and reaps what dead owners left behind;
//! and [`FunctionManager`] turns a backend and a function into a [`Manager`], so that a pool of
//! function instances is `Pool::new(FunctionManager::new(backend, spec)?, config)`. Every
//! instance carries its [`Scope`] — the pool name and the [`OwnerId`] of the process that
//! launched it — so that a restarted owner finds its predecessor's leftovers.
//!
//! # Feature flags
//!
//! - `probe`: `probe::http_ok`, the `GET` answers-2xx check that backends use for readiness
//!   and liveness.
//! - `testkit`: the backend conformance suite (the `testkit` module) that every backend's tests
//!   run.
// Named without links: a link to a module behind a feature breaks the docs built without it.

mod backend;
mod config;
mod deadline;
mod error;
mod lease;
mod mailbox;
mod manager;
mod owner;
mod pool;
#[cfg(feature = "probe")]
#[cfg_attr(docsrs, doc(cfg(feature = "probe")))]
pub mod probe;
mod state;
mod status;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;

pub use backend::{
    Backend, BackendError, Endpoint, FunctionManager, FunctionName, FunctionSpec, Health, Instance,
    InstanceRecord, Readiness, Reaped, Termination, Terminations, check_launch_rules, is_env_name,
};
pub use config::{PoolConfig, Selection};
pub use deadline::deadline_after;
pub use error::{Error, ManagerError, ManagerPanic, Result};
pub use lease::Lease;
pub use manager::Manager;
pub use owner::{Liveness, MAX_NAME_LEN, OwnerId, PoolName, Scope, process_start};
pub use pool::{Acquire, Pool, ShutdownReport};
pub use state::Priority;
pub use status::{
    DestroyReason, InstanceId, InstanceState, InstanceStatus, PoolCounters, PoolEvent, PoolStatus,
    WaitTimes,
};
