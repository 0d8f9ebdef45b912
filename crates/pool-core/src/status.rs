//! What a pool reports: [`PoolEvent`]s as they happen and [`PoolStatus`] snapshots.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// Identifies one instance of one pool, in events and on its [`Lease`](crate::Lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct InstanceId(pub u64);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Something that happened in a pool, delivered to the receivers of
/// [`Pool::subscribe`](crate::Pool::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// A new instance is ready.
    Created {
        /// The new instance.
        instance: InstanceId,
    },
    /// An instance was handed to [`Manager::destroy`](crate::Manager::destroy) and is gone.
    Destroyed {
        /// The destroyed instance.
        instance: InstanceId,
        /// Why it was destroyed.
        reason: DestroyReason,
    },
    /// A create failed; the next one waits for `backoff`.
    CreateFailed {
        /// The manager's error, or the timeout, as text.
        error: String,
        /// Failures in a row, this one included.
        consecutive_failures: u32,
        /// The pause before the next create.
        backoff: Duration,
    },
    /// An idle instance failed its health check and is being destroyed.
    HealthCheckFailed {
        /// The failing instance.
        instance: InstanceId,
        /// The manager's error, or the timeout, as text.
        error: String,
    },
    /// A lease has been held longer than `leak_threshold`.
    LeakSuspected {
        /// The leased instance.
        instance: InstanceId,
        /// How long the lease has been held.
        held: Duration,
    },
    /// [`Pool::resize`](crate::Pool::resize) changed the limits.
    Resized {
        /// The new minimum.
        min: usize,
        /// The new maximum.
        max: usize,
    },
}

/// Why an instance was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DestroyReason {
    /// Idle longer than `idle_timeout`.
    IdleTimeout,
    /// Older than `max_lifetime`.
    MaxLifetime,
    /// Served `max_uses` leases.
    MaxUses,
    /// Failed its health check.
    HealthCheckFailed,
    /// A lease on it was marked broken.
    Broken,
    /// The pool was resized below its size.
    Resized,
    /// The pool shut down or was dropped.
    Shutdown,
}

/// A snapshot of a pool, from [`Pool::status`](crate::Pool::status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// The configured minimum.
    pub min: usize,
    /// The configured maximum.
    pub max: usize,
    /// Live instances: idle, busy, being checked or retiring.
    pub size: usize,
    /// Instances with no lease.
    pub idle: usize,
    /// Instances with at least one lease.
    pub busy: usize,
    /// Instances marked to be destroyed once their leases return (after a resize down, a
    /// broken lease, max uses or max lifetime); they take no new lease.
    pub retiring: usize,
    /// Leases held right now.
    pub leased: usize,
    /// Creates running.
    pub creating: usize,
    /// Acquires waiting.
    pub waiting: usize,
    /// Whether the pool has stopped taking acquires.
    pub closed: bool,
    /// What has happened since the pool started.
    pub counters: PoolCounters,
    /// How long acquires waited.
    pub wait: WaitTimes,
}

/// What a live instance is doing, in [`Pool::instances`](crate::Pool::instances).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// No lease.
    Idle,
    /// At least one lease.
    Busy,
    /// Idle, being health-checked: no lease meanwhile.
    Checking,
    /// Marked to be destroyed once its leases return.
    Retiring,
}

/// One live instance, in [`Pool::instances`](crate::Pool::instances).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceStatus {
    /// Its id.
    pub id: InstanceId,
    /// What it is doing.
    pub state: InstanceState,
    /// Leases held on it now.
    pub leases: usize,
    /// Leases it has been given.
    pub uses: u64,
    /// How long ago it was created.
    pub age: std::time::Duration,
}

/// Counts since the pool started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolCounters {
    /// Leases handed out.
    pub acquired: u64,
    /// Of those, how many had to wait in the queue.
    pub waited: u64,
    /// Acquires that failed with `Timeout`.
    pub timeouts: u64,
    /// Acquires that failed with `QueueFull`.
    pub queue_full: u64,
    /// Instances created.
    pub created: u64,
    /// Creates that failed or timed out.
    pub create_failures: u64,
    /// Instances destroyed.
    pub destroyed: u64,
    /// Health checks that failed.
    pub health_check_failures: u64,
    /// Leases reported as held past `leak_threshold`.
    pub leaks_suspected: u64,
}

/// The distribution of acquire wait times, from a log-scale histogram: quantiles are the upper
/// bound of their bucket (within a factor of two), `max` is exact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WaitTimes {
    /// Acquires recorded (successful ones).
    pub count: u64,
    /// The median wait.
    pub p50: Duration,
    /// The 99th percentile wait.
    pub p99: Duration,
    /// The longest wait.
    pub max: Duration,
}

/// Buckets of the wait histogram: 0 holds waits under 1 µs, bucket k holds [2^(k-1), 2^k) µs.
const BUCKETS: usize = 40;

/// A fixed-size log2 histogram of wait times, updated under the pool's lock.
///
/// The counts and the first buckets, which a short wait updates, come first (`repr(C)`), next
/// to the pool's other hot fields.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct WaitHistogram {
    waited: u64,
    immediate: u64,
    max: Duration,
    buckets: [u64; BUCKETS],
}

impl Default for WaitHistogram {
    fn default() -> Self {
        Self { waited: 0, immediate: 0, max: Duration::ZERO, buckets: [0; BUCKETS] }
    }
}

impl WaitHistogram {
    /// Acquires recorded.
    pub(crate) fn count(&self) -> u64 {
        self.waited + self.immediate
    }

    /// Of those, the acquires that waited in the queue.
    pub(crate) fn waited(&self) -> u64 {
        self.waited
    }

    /// Records an acquire that did not wait.
    pub(crate) fn record_immediate(&mut self) {
        self.buckets[0] += 1;
        self.immediate += 1;
    }

    #[inline]
    pub(crate) fn record(&mut self, wait: Duration) {
        // Whole microseconds without `as_micros`, whose 128-bit division shows in profiles.
        let micros = wait
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(wait.subsec_micros()));
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)] += 1;
        self.waited += 1;
        self.max = self.max.max(wait);
    }

    pub(crate) fn summary(&self) -> WaitTimes {
        WaitTimes {
            count: self.count(),
            p50: self.quantile(0.50),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }

    fn quantile(&self, q: f64) -> Duration {
        let count = self.count();
        if count == 0 {
            return Duration::ZERO;
        }
        // The rank of the quantile, 1-based, rounded up.
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, &count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let upper = if bucket == 0 { Duration::ZERO } else { micros(1 << bucket) };
                return upper.min(self.max);
            }
        }
        self.max
    }
}

fn micros(value: u64) -> Duration {
    Duration::from_micros(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_right_bucket_and_never_exceed_the_max() {
        let mut histogram = WaitHistogram::default();
        for _ in 0..98 {
            histogram.record_immediate();
        }
        histogram.record(Duration::from_millis(3));
        histogram.record(Duration::from_millis(5));
        let summary = histogram.summary();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50, Duration::ZERO);
        // The 99th of 100 waits is 3 ms, in the bucket [2048, 4096) µs.
        assert_eq!(summary.p99, Duration::from_micros(4096));
        assert_eq!(summary.max, Duration::from_millis(5));
    }

    #[test]
    fn an_empty_histogram_reports_zeros_and_huge_waits_stay_in_range() {
        assert_eq!(WaitHistogram::default().summary(), WaitTimes::default());
        let mut histogram = WaitHistogram::default();
        histogram.record(Duration::from_secs(u64::MAX));
        assert_eq!(histogram.summary().max, Duration::from_secs(u64::MAX));
    }
}
