//! Rolling-window histograms: lock-free recording into time slices, percentiles over the window,
//! cumulative counts for Prometheus — in fixed memory.
//!
//! Values are `u64` in the histogram's base unit (nanoseconds for durations). Buckets are
//! log-linear: values below 8 have a bucket each; above, every power of two is split into 8
//! buckets, so a bucket spans at most 1/8 of its lower edge and a reported value (the bucket's
//! midpoint, kept within the recorded min and max) is within 6.25% of the true one. Values
//! above [`MAX_VALUE`] (2^43 − 1: about 2 h 26 min in nanoseconds) count as `MAX_VALUE`.
//!
//! Time is cut into slices of `window / 6`. A histogram keeps 8 slices: the current one, the 6
//! before it — together the window, plus the part of the current slice that has passed — and a
//! spare, zeroed ahead of time so that recording never has to clear anything. Recording is one
//! atomic increment plus a relaxed load and compare for each of min and max.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The largest value a histogram tells apart; larger values are counted as this.
pub const MAX_VALUE: u64 = (1 << 43) - 1;

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Buckets: 8 exact small values, then 8 per power of two from 2^3 to 2^42.
pub(crate) const BUCKETS: usize = SUB + (43 - SUB_BITS as usize) * SUB;
/// Time slices kept: 7 in the window (the current one and 6 before it) and a spare.
const SLOTS: usize = 8;
/// Slices in a window.
pub(crate) const SLICES_PER_WINDOW: u32 = 6;

/// The bucket of `value`.
#[inline]
pub(crate) fn bucket_of(value: u64) -> usize {
    let value = value.min(MAX_VALUE);
    if value < SUB as u64 {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= SUB_BITS
    let sub = (value >> (exponent - SUB_BITS)) as usize & (SUB - 1);
    SUB + (exponent - SUB_BITS) as usize * SUB + sub
}

/// The lowest and highest value of bucket `index`.
pub(crate) fn bucket_range(index: usize) -> (u64, u64) {
    if index < SUB {
        return (index as u64, index as u64);
    }
    let exponent = ((index - SUB) / SUB) as u32 + SUB_BITS;
    let sub = ((index - SUB) % SUB) as u64;
    let width = 1u64 << (exponent - SUB_BITS);
    let low = (1u64 << exponent) + sub * width;
    (low, low + width - 1)
}

/// The coarse clock of a registry: which slice is current. Advanced by [`Clock::tick`], which
/// the owner calls at least once per slice (the monitor's background task does; queries do
/// too); recording only reads it.
#[derive(Debug)]
pub(crate) struct Clock {
    start: Instant,
    slice: Duration,
    /// The current slice's number since `start`.
    epoch: AtomicU64,
    /// `epoch % SLOTS`, so that recording needs no division.
    slot: AtomicUsize,
    /// Every histogram of the registry, to prepare their spare slices on each tick.
    members: Mutex<Vec<std::sync::Weak<Core>>>,
}

impl Clock {
    pub(crate) fn new(window: Duration, now: Instant) -> Self {
        let slice = (window / SLICES_PER_WINDOW).max(Duration::from_millis(1));
        Self {
            start: now,
            slice,
            epoch: AtomicU64::new(0),
            slot: AtomicUsize::new(0),
            members: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.slice * SLICES_PER_WINDOW
    }

    fn epoch_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        u64::try_from(elapsed.as_nanos() / self.slice.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Moves the current slice to the one `now` falls in: for each step, every histogram first
    /// retires the slice that leaves its window and zeroes it for reuse.
    pub(crate) fn tick(&self, now: Instant) {
        // Held throughout, so that a histogram registering meanwhile sees either the old epoch
        // (and is prepared below) or the new one.
        let mut members = self.members.lock();
        let target = self.epoch_at(now);
        let mut epoch = self.epoch.load(Ordering::Acquire);
        if target <= epoch {
            return;
        }
        members.retain(|member| member.strong_count() > 0);
        let cores: Vec<Arc<Core>> = members.iter().filter_map(std::sync::Weak::upgrade).collect();
        // After a long pause, the slices in between are empty: jump instead of stepping
        // through each.
        if target - epoch > SLOTS as u64 {
            epoch = target - SLOTS as u64;
        }
        while epoch < target {
            epoch += 1;
            for core in &cores {
                core.prepare(epoch);
            }
            self.slot.store((epoch % SLOTS as u64) as usize, Ordering::Release);
            self.epoch.store(epoch, Ordering::Release);
        }
    }

    /// The time covered by the window at `now`: the full slices before the current one, and
    /// the part of the current one that has passed — less for a young registry.
    pub(crate) fn covered(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.start);
        let epoch = self.epoch.load(Ordering::Acquire);
        let into_current =
            elapsed.saturating_sub(self.slice * u32::try_from(epoch).unwrap_or(u32::MAX));
        let full = epoch.min(u64::from(SLICES_PER_WINDOW));
        (self.slice * full as u32 + into_current.min(self.slice)).max(Duration::from_millis(1))
    }
}

/// One time slice's counts.
#[derive(Debug)]
struct Slice {
    /// The epoch these counts belong to.
    epoch: AtomicU64,
    buckets: Box<[AtomicU64]>,
    min: AtomicU64,
    max: AtomicU64,
}

impl Slice {
    fn new(epoch: u64) -> Self {
        Self {
            epoch: AtomicU64::new(epoch),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }
}

/// The shared state of one histogram series.
#[derive(Debug)]
pub(crate) struct Core {
    clock: Arc<Clock>,
    slots: Box<[Slice]>,
    /// Counts of slices that left the window, for the all-time figures; written only by
    /// `prepare`, under the clock's tick.
    retired: Box<[AtomicU64]>,
}

impl Core {
    pub(crate) fn new(clock: Arc<Clock>) -> Arc<Self> {
        let mut members = clock.members.lock();
        let epoch = clock.epoch.load(Ordering::Acquire);
        let slots = (0..SLOTS)
            .map(|slot| {
                // Slices other than the current one start as if long past (never in a window).
                let stamp = if slot == (epoch % SLOTS as u64) as usize { epoch } else { u64::MAX };
                Slice::new(stamp)
            })
            .collect();
        let core = Arc::new(Self {
            clock: clock.clone(),
            slots,
            retired: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        });
        members.retain(|member| member.strong_count() > 0);
        members.push(Arc::downgrade(&core));
        drop(members);
        core
    }

    #[inline]
    pub(crate) fn record(&self, value: u64) {
        let slice = &self.slots[self.clock.slot.load(Ordering::Relaxed)];
        slice.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        if value > slice.max.load(Ordering::Relaxed) {
            slice.max.fetch_max(value, Ordering::Relaxed);
        }
        if value < slice.min.load(Ordering::Relaxed) {
            slice.min.fetch_min(value, Ordering::Relaxed);
        }
    }

    /// Readies the slot of `epoch`: folds its old counts into the all-time ones and zeroes it.
    fn prepare(&self, epoch: u64) {
        let slice = &self.slots[(epoch % SLOTS as u64) as usize];
        for (retired, bucket) in self.retired.iter().zip(slice.buckets.iter()) {
            let count = bucket.swap(0, Ordering::AcqRel);
            if count > 0 {
                retired.fetch_add(count, Ordering::Relaxed);
            }
        }
        slice.min.store(u64::MAX, Ordering::Relaxed);
        slice.max.store(0, Ordering::Relaxed);
        slice.epoch.store(epoch, Ordering::Release);
    }

    /// The counts of the window, merged.
    pub(crate) fn window(&self) -> Merged {
        let epoch = self.clock.epoch.load(Ordering::Acquire);
        let oldest = epoch.saturating_sub(u64::from(SLICES_PER_WINDOW));
        let mut merged = Merged::empty();
        for slice in self.slots.iter() {
            let stamp = slice.epoch.load(Ordering::Acquire);
            if stamp == u64::MAX || stamp < oldest || stamp > epoch {
                continue;
            }
            merged.add(slice);
        }
        merged
    }

    /// All-time counts per bucket (the retired ones and every live slice).
    pub(crate) fn cumulative(&self) -> Vec<u64> {
        let mut counts: Vec<u64> = self.retired.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        for slice in self.slots.iter() {
            for (total, bucket) in counts.iter_mut().zip(slice.buckets.iter()) {
                *total += bucket.load(Ordering::Relaxed);
            }
        }
        counts
    }
}

/// Counts merged from several slices.
#[derive(Debug, Clone)]
pub(crate) struct Merged {
    pub(crate) buckets: Vec<u64>,
    pub(crate) count: u64,
    min: u64,
    max: u64,
}

impl Merged {
    fn empty() -> Self {
        Self { buckets: vec![0; BUCKETS], count: 0, min: u64::MAX, max: 0 }
    }

    fn add(&mut self, slice: &Slice) {
        for (total, bucket) in self.buckets.iter_mut().zip(slice.buckets.iter()) {
            let count = bucket.load(Ordering::Relaxed);
            *total += count;
            self.count += count;
        }
        self.min = self.min.min(slice.min.load(Ordering::Relaxed));
        self.max = self.max.max(slice.max.load(Ordering::Relaxed));
    }

    /// The value at quantile `q` (0..=1): the midpoint of its bucket, within min and max.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, &count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, high) = bucket_range(index);
                return (low + (high - low) / 2).clamp(self.min(), self.max());
            }
        }
        self.max()
    }

    pub(crate) fn min(&self) -> u64 {
        if self.count == 0 { 0 } else { self.min.min(self.max) }
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The mean, from bucket midpoints (within 6.25%).
    pub(crate) fn mean(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        estimated_sum(&self.buckets) / self.count as f64
    }

    pub(crate) fn summary(&self) -> Summary {
        Summary {
            count: self.count,
            min: self.min(),
            max: self.max(),
            mean: self.mean(),
            p50: self.quantile(0.50),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
        }
    }
}

/// The sum of the values counted in `buckets`, from their midpoints.
pub(crate) fn estimated_sum(buckets: &[u64]) -> f64 {
    buckets
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(index, &count)| {
            let (low, high) = bucket_range(index);
            (low as f64 + (high - low) as f64 / 2.0) * count as f64
        })
        .sum()
}

/// A histogram's figures over its window, in its base unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Values recorded in the window.
    pub count: u64,
    /// The smallest and largest of them (exact).
    pub min: u64,
    /// See `min`.
    pub max: u64,
    /// Their mean, estimated from the buckets (within 6.25%).
    pub mean: f64,
    /// The median (within 6.25%).
    pub p50: u64,
    /// The 95th percentile (within 6.25%).
    pub p95: u64,
    /// The 99th percentile (within 6.25%).
    pub p99: u64,
}

/// A handle on one histogram series. Cheap to clone; recording takes no lock.
#[derive(Debug, Clone)]
pub struct Histogram {
    core: Arc<Core>,
}

impl Histogram {
    pub(crate) fn from_core(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Records a value in the histogram's base unit.
    #[inline]
    pub fn record(&self, value: u64) {
        self.core.record(value);
    }

    /// Records a duration, in nanoseconds.
    #[inline]
    pub fn record_duration(&self, duration: Duration) {
        self.core.record(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The figures of the window as of the last tick.
    pub fn summary(&self) -> Summary {
        self.core.window().summary()
    }

    /// The value at quantile `q` (0..=1) over the window.
    pub fn quantile(&self, q: f64) -> u64 {
        self.core.window().quantile(q)
    }

    #[cfg(test)]
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_an_eighth() {
        let mut last = 0;
        for value in (0..5000).chain([MAX_VALUE - 1, MAX_VALUE]) {
            let index = bucket_of(value);
            assert!(index >= last && index < BUCKETS, "{value} -> {index}");
            let (low, high) = bucket_range(index);
            assert!(low <= value && value <= high, "{value} not in [{low}, {high}]");
            assert!((high - low) as f64 <= low as f64 / 8.0 + 1.0, "[{low}, {high}] too wide");
            last = index;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_range(BUCKETS - 1).1, MAX_VALUE);
        for index in 1..BUCKETS {
            assert_eq!(bucket_range(index).0, bucket_range(index - 1).1 + 1, "gap at {index}");
        }
    }

    fn histogram(window: Duration) -> (Arc<Clock>, Histogram) {
        let clock = Arc::new(Clock::new(window, Instant::now()));
        let histogram = Histogram::from_core(Core::new(clock.clone()));
        (clock, histogram)
    }

    #[test]
    fn percentiles_are_within_their_bucket() {
        let (_, histogram) = histogram(Duration::from_secs(60));
        for value in 1..=10_000u64 {
            histogram.record(value * 1000);
        }
        let summary = histogram.summary();
        assert_eq!(summary.count, 10_000);
        assert_eq!((summary.min, summary.max), (1000, 10_000_000));
        for (got, want) in
            [(summary.p50, 5_000_000.0), (summary.p95, 9_500_000.0), (summary.p99, 9_900_000.0)]
        {
            let error = (got as f64 - want).abs() / want;
            assert!(error <= 0.0625, "{got} vs {want}: {error}");
        }
        let mean_error = (summary.mean - 5_000_500.0).abs() / 5_000_500.0;
        assert!(mean_error <= 0.0625, "mean {}", summary.mean);
    }

    #[tokio::test(start_paused = true)]
    async fn old_slices_leave_the_window_and_stay_in_the_cumulative_counts() {
        let (clock, histogram) = histogram(Duration::from_secs(60));
        histogram.record(100);
        tokio::time::advance(Duration::from_secs(30)).await;
        clock.tick(Instant::now());
        histogram.record(200);
        assert_eq!(histogram.summary().count, 2);
        // 65 s after the first value: 6 full slices and part of a 7th have passed; the first
        // slice is still in (the window covers 60-70 s).
        tokio::time::advance(Duration::from_secs(35)).await;
        clock.tick(Instant::now());
        assert_eq!(histogram.summary().count, 2);
        tokio::time::advance(Duration::from_secs(10)).await;
        clock.tick(Instant::now());
        let summary = histogram.summary();
        assert_eq!((summary.count, summary.min, summary.max), (1, 200, 200));
        tokio::time::advance(Duration::from_secs(3600)).await;
        clock.tick(Instant::now());
        assert_eq!(histogram.summary().count, 0);
        assert_eq!(histogram.core().cumulative().iter().sum::<u64>(), 2, "nothing is lost");
    }

    #[test]
    fn recording_from_threads_loses_nothing() {
        let (_, histogram) = histogram(Duration::from_secs(60));
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for value in 0..25_000u64 {
                        histogram.record(value + thread);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(histogram.summary().count, 100_000);
        assert_eq!(histogram.summary().max, 25_002);
    }
}
