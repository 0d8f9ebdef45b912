//! What every benchmark of this package uses: criterion group settings, and the quartiles the
//! paired tables print.

use std::time::Duration;

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;

/// Sets a group's sample count, warm-up and measurement time (in milliseconds).
pub(crate) fn short(
    group: &mut BenchmarkGroup<'_, WallTime>,
    samples: usize,
    warm_up_ms: u64,
    ms: u64,
) {
    group
        .sample_size(samples)
        .warm_up_time(Duration::from_millis(warm_up_ms))
        .measurement_time(Duration::from_millis(ms));
}

/// The median of `values` and its quartiles, as the paired tables print them:
/// `p50 [p25, p75]` with `digits` decimals.
pub(crate) fn spread(values: &mut [f64], digits: usize) -> String {
    let (p25, p50, p75) = quartiles(values);
    format!("{p50:.digits$} [{p25:.digits$}, {p75:.digits$}]")
}

/// The 25th, 50th and 75th percentiles of `values`.
pub(crate) fn quartiles(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}
