//! Performance monitoring for Serverless Managers.
//!
//! This crate will record what the pools and the gateway do, in fixed memory and without locks on
//! the hot path: counters, gauges and rolling-window histograms (p50/p95/p99), request tracking
//! per endpoint, background system statistics (CPU, memory, load), alerts with hysteresis,
//! a memory pressure monitor, and exposition as Prometheus text and as a JSON snapshot.
//!
//! It is a layer-0 crate: it depends on no other crate of the workspace.
//!
//! # Status
//!
//! The monitor has not landed yet, so this crate exports nothing today.
