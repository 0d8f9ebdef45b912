//! [`RequestTracker`]: requests per endpoint and in total — count, successes, failures, error
//! rate, throughput and latency percentiles over the window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::error::Result;
use crate::histogram::Histogram;
use crate::registry::{Counter, Registry, Unit};

/// The metric names the tracker registers.
const LATENCY: &str = "smgr_endpoint_duration_seconds";
const REQUESTS: &str = "smgr_endpoint_requests";
const FAILURES: &str = "smgr_endpoint_failures";
/// The endpoint label of the totals.
const ALL: &str = "*";

/// The handles of one endpoint: latency of every request, and of failed ones (whose window
/// count is the failures in the window), plus all-time counters.
#[derive(Debug, Clone)]
pub struct EndpointTracker {
    latency: Histogram,
    failed_latency: Histogram,
    requests: Counter,
    failures: Counter,
}

impl EndpointTracker {
    /// Records one request; no lock.
    #[inline]
    pub fn track(&self, duration: Duration, success: bool) {
        self.latency.record_duration(duration);
        self.requests.inc();
        if !success {
            self.failed_latency.record_duration(duration);
            self.failures.inc();
        }
    }
}

/// Figures of one endpoint (or of all) over the window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EndpointStats {
    /// Requests in the window.
    pub requests: u64,
    /// Of which succeeded.
    pub successes: u64,
    /// Of which failed.
    pub failures: u64,
    /// failures / requests, in percent (0 without requests).
    pub error_rate_percent: f64,
    /// Requests per second over the time the window spans.
    pub throughput_per_second: f64,
    /// Latency in milliseconds: mean, min, max and percentiles (within 6.25%).
    pub latency_ms: LatencyMs,
    /// Requests since the tracker started.
    pub total_requests: u64,
    /// Failures since the tracker started.
    pub total_failures: u64,
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatencyMs {
    /// Mean.
    pub avg: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Request figures per endpoint and in total.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RequestStats {
    /// All endpoints together.
    pub total: EndpointStats,
    /// Each endpoint.
    pub endpoints: BTreeMap<String, EndpointStats>,
}

/// Tracks requests per endpoint and in total, in a [`Registry`] (metrics
/// `smgr_endpoint_duration_seconds`, `smgr_endpoint_requests_total` and
/// `smgr_endpoint_failures_total`,
/// labelled by `endpoint`; the totals have `endpoint="*"`).
///
/// Endpoints beyond the registry's series limit are counted together as `other`.
#[derive(Debug, Clone)]
pub struct RequestTracker {
    registry: Registry,
    all: EndpointTracker,
    endpoints: Arc<RwLock<BTreeMap<String, EndpointTracker>>>,
}

impl RequestTracker {
    /// A tracker recording into `registry`.
    pub fn new(registry: Registry) -> Result<Self> {
        let all = endpoint_handles(&registry, ALL)?;
        Ok(Self { registry, all, endpoints: Arc::default() })
    }

    /// The handles of `endpoint`, to record through without a lookup.
    pub fn endpoint(&self, endpoint: &str) -> Result<EndpointTracker> {
        if let Some(tracker) = self.endpoints.read().get(endpoint) {
            return Ok(tracker.clone());
        }
        let tracker = endpoint_handles(&self.registry, endpoint)?;
        // Past the series limit the registry hands out the shared `other` series; keep the map
        // within the same bound.
        let mut endpoints = self.endpoints.write();
        if endpoints.len() < crate::registry::DEFAULT_MAX_SERIES {
            endpoints.insert(endpoint.to_owned(), tracker.clone());
        }
        Ok(tracker)
    }

    /// Records one request of an endpoint whose handles [`RequestTracker::endpoint`] gave:
    /// like [`RequestTracker::track`] without the lookup by name.
    pub fn track_with(&self, endpoint: &EndpointTracker, duration: Duration, success: bool) {
        self.all.track(duration, success);
        endpoint.track(duration, success);
    }

    /// Records one request of `endpoint`: its duration and whether it succeeded.
    pub fn track(&self, duration: Duration, success: bool, endpoint: &str) {
        self.all.track(duration, success);
        // Registration fails only for a name the registry refuses, which the fixed metric
        // names and label rule out; the request still counts in the totals.
        if let Ok(tracker) = self.endpoint(endpoint) {
            tracker.track(duration, success);
        }
    }

    /// The figures over the window, per endpoint and in total.
    pub fn stats(&self) -> RequestStats {
        self.registry.tick();
        let covered = self.registry.covered();
        let endpoints = self
            .endpoints
            .read()
            .iter()
            .map(|(name, tracker)| (name.clone(), stats(tracker, covered)))
            .collect();
        RequestStats { total: stats(&self.all, covered), endpoints }
    }

    /// The figures of all endpoints together over the window.
    pub fn total(&self) -> EndpointStats {
        self.registry.tick();
        stats(&self.all, self.registry.covered())
    }
}

fn endpoint_handles(registry: &Registry, endpoint: &str) -> Result<EndpointTracker> {
    let labels = [("endpoint", endpoint)];
    Ok(EndpointTracker {
        latency: registry.histogram(LATENCY, "Request latency", Unit::Seconds, &labels)?,
        failed_latency: registry.histogram(
            "smgr_endpoint_failed_duration_seconds",
            "Latency of failed requests",
            Unit::Seconds,
            &labels,
        )?,
        requests: registry.counter(REQUESTS, "Requests served", &labels)?,
        failures: registry.counter(FAILURES, "Requests that failed", &labels)?,
    })
}

fn stats(tracker: &EndpointTracker, covered: Duration) -> EndpointStats {
    let latency = tracker.latency.summary();
    let failures = tracker.failed_latency.summary().count.min(latency.count);
    let ms = |nanos: u64| nanos as f64 / 1e6;
    EndpointStats {
        requests: latency.count,
        successes: latency.count - failures,
        failures,
        error_rate_percent: if latency.count == 0 {
            0.0
        } else {
            failures as f64 * 100.0 / latency.count as f64
        },
        throughput_per_second: latency.count as f64 / covered.as_secs_f64(),
        latency_ms: LatencyMs {
            avg: latency.mean / 1e6,
            min: ms(latency.min),
            max: ms(latency.max),
            p50: ms(latency.p50),
            p95: ms(latency.p95),
            p99: ms(latency.p99),
        },
        total_requests: tracker.requests.get(),
        total_failures: tracker.failures.get(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tracking_through_held_handles_counts_like_tracking_by_name() {
        let tracker = RequestTracker::new(Registry::new(Duration::from_secs(60))).unwrap();
        let held = tracker.endpoint("/held").unwrap();
        tracker.track_with(&held, Duration::from_millis(5), true);
        tracker.track_with(&held, Duration::from_millis(7), false);
        tracker.track(Duration::from_millis(9), true, "/held");
        let stats = tracker.stats();
        let endpoint = &stats.endpoints["/held"];
        assert_eq!((endpoint.requests, endpoint.failures), (3, 1));
        assert_eq!((stats.total.requests, stats.total.failures), (3, 1));
        assert_eq!((endpoint.latency_ms.min, endpoint.latency_ms.max), (5.0, 9.0));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_counted_per_endpoint_and_in_total_over_the_window() {
        let registry = Registry::new(Duration::from_secs(60));
        let tracker = RequestTracker::new(registry).unwrap();
        for i in 0..90 {
            tracker.track(Duration::from_millis(10 + i % 10), true, "/a");
        }
        for _ in 0..10 {
            tracker.track(Duration::from_millis(100), false, "/b");
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let stats = tracker.stats();
        assert_eq!(
            (stats.total.requests, stats.total.failures, stats.total.successes),
            (100, 10, 90)
        );
        assert!((stats.total.error_rate_percent - 10.0).abs() < 1e-9);
        assert!(
            (stats.total.throughput_per_second - 10.0).abs() < 0.01,
            "{}",
            stats.total.throughput_per_second
        );
        let a = &stats.endpoints["/a"];
        assert_eq!((a.requests, a.failures), (90, 0));
        assert!((a.latency_ms.p50 - 14.5).abs() <= 14.5 * 0.0625 + 0.5, "{:?}", a.latency_ms);
        assert_eq!(a.latency_ms.min, 10.0);
        assert_eq!(a.latency_ms.max, 19.0);
        let b = &stats.endpoints["/b"];
        assert_eq!((b.requests, b.failures, b.error_rate_percent), (10, 10, 100.0));

        // Two minutes later the window is empty; the all-time totals stay.
        tokio::time::advance(Duration::from_secs(120)).await;
        let later = tracker.stats();
        assert_eq!(later.total.requests, 0);
        assert_eq!((later.total.total_requests, later.total.total_failures), (100, 10));
    }
}
