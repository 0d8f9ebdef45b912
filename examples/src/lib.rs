//! Example programs for Serverless Managers.
//!
//! - `process_pool.rs`: a pool of Python functions on the process backend, 100 requests, the
//!   pool's statistics: `cargo run -p examples --example process_pool`.
//! - `functions/`: example functions that follow the function contract
//!   (`docs/function-contract.md`): `hello.py` (Python, standard library only) and
//!   `hello_fn.rs` (Rust, std only; the `hello-fn` binary of this package).
//!
//! The library itself is empty: cargo needs a target in every package.
