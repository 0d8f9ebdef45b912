//! Example programs for Serverless Managers.
//!
//! Each example lives in `examples/examples/` and runs with
//! `cargo run -p examples --example NAME`; example functions (programs that follow the function
//! contract in `docs/function-contract.md`) and the default `smgr` config live beside them.
//! The library itself is empty: cargo needs a target in every package.
//!
//! # Status
//!
//! No example has landed yet: each one arrives with the capability it shows.
