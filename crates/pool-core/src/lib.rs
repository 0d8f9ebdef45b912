//! The one async pool engine of Serverless Managers.
//!
//! Every backend, the connection pool and the `smgr` gateway keep their instances in a pool built
//! by this crate. It is the tiny core of the workspace: it knows nothing of Docker, Kubernetes,
//! HTTP servers or any particular backend, and its dependencies stay small.
//!
//! What it will provide (see `docs/architecture.md` in the repository):
//!
//! - a generic `Pool` over a `Manager` that creates, checks and destroys instances, with a warm
//!   minimum, a maximum, per-instance concurrency, a fair bounded waiter queue with priorities,
//!   health checks, idle/lifetime/use limits, resize and a draining shutdown;
//! - the serverless layer: function specs, instances, endpoints and the `Backend` trait that the
//!   worker, process, Docker and Kubernetes backends implement.
//!
//! # Status
//!
//! The engine has not landed yet, so this crate exports nothing today.
