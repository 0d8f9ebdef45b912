//! Performance monitoring for Serverless Managers: metrics recorded without locks in fixed
//! memory, rolling-window percentiles, request tracking, system statistics, alerts with
//! hysteresis, memory pressure, and exposition as Prometheus text, OpenMetrics and a JSON
//! snapshot.
//!
//! - A [`Registry`] holds named, labelled [`Counter`]s, [`Gauge`]s and [`Histogram`]s.
//!   Handles are cheap to clone; recording is one atomic operation (plus a load and compare
//!   for a histogram's min and max) and never takes a lock. A family keeps at most
//!   [`DEFAULT_MAX_SERIES`] label sets (configurable); further ones share an `other` series.
//! - Histograms keep the last window (default 60 s) in 8 time slices of a sixth of it and
//!   report count, min, max, mean, p50, p95 and p99 within 6.25% (min and max exactly), plus
//!   cumulative counts for Prometheus. **Footprint:** 328 buckets of 8 bytes per slice, 8
//!   slices and one all-time array: 9 × 2,624 B ≈ 23 KiB per histogram series, whatever is
//!   recorded.
//! - A [`RequestTracker`] gives per endpoint and in total: requests, successes, failures,
//!   error rate and throughput over the window, and latency percentiles.
//! - [`SystemSampler`] reads this process's CPU and resident memory, the host's memory and
//!   load average (sysinfo); [`MemoryPressure`] turns memory use against the limit that
//!   applies (the cgroup's, else the host's) into levels low/medium/high/critical, tells
//!   subscribers of changes and calls the shrink callbacks components register.
//! - [`Alerts`] fire once a value stays above its threshold for a minimum duration and clear
//!   below a lower mark; [`recommendations`] turn the current figures into advice.
//! - A [`Monitor`] puts it all together with one background task that ends when the monitor
//!   is dropped, and renders [`Format::Prometheus`], [`Format::OpenMetrics`] or the
//!   [`PerformanceSnapshot`] of `/performance/metrics`.
//!
//! It is a layer-0 crate: it depends on no other crate of the workspace.
//!
//! ```
//! use std::time::Duration;
//! use perf_monitor::{Format, Monitor, MonitorConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> perf_monitor::Result<()> {
//! let monitor = Monitor::start(MonitorConfig::default())?;
//! monitor.track(Duration::from_millis(12), true, "/fn/hello");
//! monitor.track(Duration::from_millis(30), false, "/fn/hello");
//!
//! let figures = monitor.tracker().total();
//! assert_eq!((figures.requests, figures.failures), (2, 1));
//! assert!(monitor.render(Format::Prometheus).contains("smgr_endpoint_requests_total{endpoint=\"/fn/hello\"} 2"));
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! None.

mod alerts;
mod error;
mod expose;
mod histogram;
mod monitor;
mod pressure;
mod registry;
mod system;
mod tracker;

pub use alerts::*;
pub use error::{Error, Result};
pub use expose::Format;
pub use histogram::{Histogram, MAX_VALUE, Summary};
pub use monitor::{
    AlertFigures, EndpointFigures, LatencyFigures, Monitor, MonitorConfig, PerformanceSnapshot,
    RequestFigures, SystemFigures,
};
pub use pressure::*;
pub use registry::{Counter, DEFAULT_MAX_SERIES, Gauge, Registry, Unit};
pub use system::*;
pub use tracker::{EndpointStats, EndpointTracker, LatencyMs, RequestStats, RequestTracker};
