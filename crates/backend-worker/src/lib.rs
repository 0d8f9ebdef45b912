//! The in-process worker backend of Serverless Managers.
//!
//! An instance of this backend is a worker thread running a Rust handler, reached by a direct
//! call over a channel: the cheapest kind of function, for work that is trusted and CPU-bound.
//! Its thread pool has its own job scheduler (a priority queue with retries and timeouts); the
//! instances themselves are kept by the `pool-core` engine like those of every other backend.
//!
//! It is a layer-2 crate: it builds on `pool-core` and never on another backend.
//!
//! # Status
//!
//! The backend has not landed yet, so this crate exports nothing today.
