//! Benchmarks of Serverless Managers against peer libraries.
//!
//! Every benchmark in `benches/benches/` runs our implementation and the peer (deadpool, bb8,
//! hdrhistogram, moka, governor, nginx, ...) in the same binary or script, on the same workload,
//! and reports a ratio; absolute numbers on a shared machine are noise. Results and the command
//! that reproduces them go to `docs/performance.md`. CI compiles the benchmarks
//! (`cargo bench --no-run`) and never runs them.
//!
//! # Status
//!
//! No benchmark has landed yet: each one arrives with the capability it measures. The library
//! itself is empty: cargo needs a target in every package.
