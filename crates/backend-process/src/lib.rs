//! The child-process backend of Serverless Managers: any program, in any language, that serves
//! HTTP on `$PORT` becomes a pooled, health-checked function.
//!
//! An instance is an OS child process (the function contract is in
//! `docs/function-contract.md`). The backend
//!
//! - starts it with a cleared environment — only the `pass_env` allow-list (default `PATH` and
//!   `LANG`), `PORT`, the instance's identity (`SMGR_POOL`, `SMGR_OWNER`, `SMGR_FUNCTION`,
//!   `SMGR_INSTANCE`) and the spec's own variables — in its own process group, with a
//!   parent-death signal on Linux so that it dies with its host, and with optional rlimits,
//!   uid and gid;
//! - gives it a free port, retried when the child reports the port taken, or a listening
//!   socket on fd 3 (`socket_activation`, as systemd does);
//! - knows it is ready when its port accepts a connection or a path answers 2xx, trying with
//!   backoff until the startup timeout; a child that exits first fails the launch with its
//!   exit status and the last lines of its stderr;
//! - sends each stdout and stderr line to `tracing` (target `smgr::function`, with function,
//!   instance and pid fields) and to a bounded buffer on the instance;
//! - stops it with SIGTERM to its group, then SIGKILL after the grace period, and says which;
//! - records every child in a state directory, so that [`Backend::reap_orphans`] of a later
//!   owner of the same pool kills what a dead owner left behind.
//!
//! It is a layer-2 crate: it builds on `pool-core` and never on another backend.
//!
//! ```no_run
//! use std::sync::Arc;
//! use backend_process::{ProcessBackend, ProcessBackendConfig, ProcessSpec};
//! use pool_core::{Backend, FunctionManager, FunctionSpec, Pool, PoolConfig, PoolName, Scope};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scope = Scope::current(PoolName::new("demo")?);
//! let backend = Arc::new(ProcessBackend::new(ProcessBackendConfig::new(scope))?);
//! backend.reap_orphans().await?; // what a crashed predecessor left behind
//! let hello = FunctionSpec::new("hello", ProcessSpec::new("python3").args(["hello.py"]))?;
//! let pool = Pool::new(FunctionManager::new(backend, hello)?, PoolConfig::default())?;
//! let instance = pool.acquire().await?;
//! println!("serving at {}", instance.endpoint());
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! None. The crate also builds `smgr-fixture`, the test function its tests and the
//! conformance suite run.
//!
//! [`Backend::reap_orphans`]: pool_core::Backend::reap_orphans

mod backend;
mod logs;
mod spawner;
mod spec;
mod state_dir;
mod sys;

pub use backend::{ProcessBackend, ProcessBackendConfig, ProcessDetails, check_spec};
pub use logs::{LogBuffer, Stream};
pub use spec::{Limits, ProcessSpec, Readiness};
pub use state_dir::{default_state_dir, processes_of};
