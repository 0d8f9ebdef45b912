//! Resilience primitives for Serverless Managers.
//!
//! This crate will hold what keeps a service standing when its dependencies misbehave: a circuit
//! breaker, retry with backoff, rate limiting (local, and shared through Redis), adaptive
//! admission, a connection pool built on the `pool-core` engine, and a cleanup manager that
//! releases resources in order on shutdown.
//!
//! It is a layer-1 crate: it may build on `pool-core` and the other layer-0 crates, never on a
//! backend or the gateway.
//!
//! # Status
//!
//! The primitives have not landed yet, so this crate exports nothing today.
