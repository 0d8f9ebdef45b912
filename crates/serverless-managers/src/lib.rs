//! Serverless Managers: warm pools of execution environments for functions.
//!
//! This is the facade crate. It re-exports the crates of the workspace behind feature flags and
//! contains nothing else, so depending on it with the features you need is the same as depending
//! on those crates one by one.
//!
//! | module | crate | an instance is |
//! | --- | --- | --- |
//! | [`pool`] | `pool-core` | (the engine every backend shares; always present) |
//! | `worker` | `backend-worker` | an in-process worker thread running a Rust handler |
//! | `process` | `backend-process` | an OS child process serving HTTP on `$PORT` |
//! | `docker` | `backend-docker` | a container on a Docker Engine |
//! | `k8s` | `backend-k8s` | a Pod on a Kubernetes cluster |
//! | `cache` | `cache-tiers` | (tiered cache: memory, disk, streaming) |
//! | `monitor` | `perf-monitor` | (metrics, percentiles, alerts, exposition) |
//! | `resilience` | `resilience` | (breaker, retry, rate limits, connection pool) |
//! | `gateway` | `gateway` | (the library behind the `smgr` binary) |
//!
//! # Feature flags
//!
//! - `default`: `worker`, `process`, `cache`, `monitor` and `resilience` — everything that
//!   needs no outside service.
//! - `worker`: in-process worker threads, as `serverless_managers::worker`.
//! - `process`: child processes serving HTTP on `$PORT`, as `serverless_managers::process`.
//! - `docker`: containers on a Docker Engine, as `serverless_managers::docker`; needs a running
//!   engine at run time.
//! - `k8s`: Pods on a Kubernetes cluster, as `serverless_managers::k8s`; needs a reachable
//!   cluster at run time.
//! - `cache`: the tiered cache, as `serverless_managers::cache`.
//! - `monitor`: the performance monitor, as `serverless_managers::monitor`.
//! - `resilience`: resilience primitives, as `serverless_managers::resilience`.
//! - `gateway`: the gateway library, as `serverless_managers::gateway`; it composes every
//!   backend, so it is not a default.
//! - `full`: all of the above.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(inline)]
pub use pool_core as pool;

#[cfg(feature = "worker")]
#[cfg_attr(docsrs, doc(cfg(feature = "worker")))]
#[doc(inline)]
pub use backend_worker as worker;

#[cfg(feature = "process")]
#[cfg_attr(docsrs, doc(cfg(feature = "process")))]
#[doc(inline)]
pub use backend_process as process;

#[cfg(feature = "docker")]
#[cfg_attr(docsrs, doc(cfg(feature = "docker")))]
#[doc(inline)]
pub use backend_docker as docker;

#[cfg(feature = "k8s")]
#[cfg_attr(docsrs, doc(cfg(feature = "k8s")))]
#[doc(inline)]
pub use backend_k8s as k8s;

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
#[doc(inline)]
pub use cache_tiers as cache;

#[cfg(feature = "monitor")]
#[cfg_attr(docsrs, doc(cfg(feature = "monitor")))]
#[doc(inline)]
pub use perf_monitor as monitor;

#[cfg(feature = "resilience")]
#[cfg_attr(docsrs, doc(cfg(feature = "resilience")))]
#[doc(inline)]
pub use resilience;

#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
#[doc(inline)]
pub use gateway;
