//! perf-monitor's histograms and exposition against hdrhistogram 7 and `metrics` 0.24 +
//! metrics-exporter-prometheus 0.18, side by side in one run.
//!
//! Every recorded value comes from one table of 4096 durations, log-uniform from 10 µs to
//! 100 ms, drawn from a fixed seed and read in order (wrapping), so that bucket indexes, min/max
//! checks and the peers' branches see values the branch predictor cannot learn. Each side reads
//! the table in the type its API takes — `u64` nanoseconds for ours and hdrhistogram, `f64`
//! seconds for `metrics` — so that no conversion is timed.
//!
//! - `record/<impl>`: one thread, time per record. ours: `Histogram::record` on a registry
//!   histogram; hdrhistogram: `Histogram::<u64>::record`, bounds 1 ns..1 h, 3 significant
//!   figures; metrics: `metrics::Histogram::record` on a handle registered once (through
//!   `with_local_recorder` and `histogram!`) with a `PrometheusRecorder` from `build_recorder`,
//!   default settings: the cheapest way to record with `metrics`. It buffers every sample (value
//!   and timestamp) until upkeep drains it: here upkeep runs every 65 536 samples, outside the
//!   timing, as the exporter's upkeep task would. `metrics-macro` is the common usage instead,
//!   `histogram!(name, labels).record(v)` at every call, which looks the series up each time;
//!   `metrics-no-upkeep` is the handle with nothing draining, so the buffer grows into fresh
//!   memory (a new recorder per criterion sample bounds it).
//! - `record_2t/<impl>`: two threads record at once into one shared histogram, each its own
//!   walk of the table; time per record per thread: the span from the first thread's start to
//!   the last one's end, over the records of one thread. hdrhistogram twice: `mutex`, one
//!   histogram behind a `std::sync::Mutex` — the like-for-like comparison, one histogram
//!   readable at any moment — and `sync`, a `SyncHistogram` with a `Recorder` per thread:
//!   per-thread histograms that the reader merges in `refresh`, which waits for every recorder to
//!   hand its counts over. That is sharding rather than sharing, the floor of what two threads
//!   can do. The paired table also gives the share of each batch during which both threads
//!   ran: two vCPUs of a shared machine are not always both there.
//! - `query/<impl>`: one histogram holding 1 048 576 values. Ours, with a 180 ms window, got
//!   them spread over the window's 7 slices (the current and the 6 before), so that a query
//!   merges them all, as it does in steady state; nothing ticks afterwards, so they stay.
//!   `ours/p99` is `quantile(0.99)`, `ours/summary` is `summary()` (count, min, max, mean, p50,
//!   p95, p99); `hdrhistogram/p99` is `value_at_quantile(0.99)` and `hdrhistogram/summary` the
//!   same figures from `value_at_quantile` ×3, `min`, `max`, `mean`. `metrics` has no query
//!   API: its quantiles exist only inside a render.
//! - `render/<impl>`: the Prometheus text of 100 series, 1000 values each: 1 family × 100
//!   `endpoint` label values. Ours renders each histogram twice: cumulative buckets (15 bucket
//!   lines, `_sum`, `_count`) and the window's summary (3 quantiles, `_sum`, `_count`), 22
//!   lines a series. `metrics-summary` is the exporter's default, a rolling summary (7
//!   quantiles, `_sum`, `_count`: 9 lines); `metrics-buckets` has `set_buckets` with ours' 14
//!   bounds, 4^5 to 4^18 ns (17 lines, as our histogram part). Plus 100 counters on each side. The first render of `metrics` (which drains the
//!   recorded samples into the summaries) is outside the timing.
//! - `paired/<cell>`: ours and its peers timed in alternation, batch after batch, so that the
//!   machine's drift hits all sides alike; the report is the table printed after the group: the
//!   median ratio ours/peer of paired batches with its quartiles, the median time per operation
//!   of each side, and ours against the issue's targets. This is the table docs/performance.md
//!   quotes.
//!
//! Compare within a row: absolute numbers on a shared two-core machine are noise, ratios less so.
//!
//! ```text
//! cargo bench -p benches --bench monitor                   # everything, ~1 min on 2 cores
//! cargo bench -p benches --bench monitor -- record/        # one group
//! cargo bench -p benches --bench monitor -- paired         # the paired table and the targets
//! ```

// A report tool: the paired table goes to stdout, next to criterion's own output.
#![allow(clippy::print_stdout)]

mod common;

use common::{quartiles, short, spread};

use std::cell::RefCell;
use std::hint::black_box;
use std::sync::{Barrier, LazyLock, Mutex};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use perf_monitor::{Format, Registry, Unit};

/// Values in the table: a power of two, so that wrapping is a mask.
const VALUES: usize = 4096;
const MASK: usize = VALUES - 1;
/// Records per batch of `paired` (one thread) and per thread (two threads).
const RECORD_BATCH: usize = VALUES;
const RECORD_2T_BATCH: usize = 16 * VALUES;
/// Values in the histogram of `query`, and queries per batch of `paired`.
const QUERY_VALUES: usize = 1 << 20;
const QUERY_BATCH: usize = 16;
/// Series rendered, and values recorded into each histogram series.
const SERIES: usize = 100;
const PER_SERIES: usize = 1000;
/// `metrics` buffers every sample (value and timestamp, 16 bytes) until upkeep drains it;
/// upkeep runs, outside the timing, before the buffer holds more than this many.
const METRICS_DRAIN: usize = 1 << 16;
/// hdrhistogram's bounds: 1 ns to 1 h, 3 significant figures.
const HDR_HIGH: u64 = 3_600_000_000_000;
const HDR_FIGURES: u8 = 3;

/// Targets of issue 5.
const TARGET_RECORD_NS: f64 = 10.0;
const TARGET_P99_NS: f64 = 3_000.0;
const TARGET_RENDER_NS: f64 = 1_000_000.0;

const LATENCY: &str = "smgr_bench_request_duration_seconds";
const LATENCY_HELP: &str = "Request latency.";
const REQUESTS: &str = "smgr_bench_requests";
const REQUESTS_HELP: &str = "Requests served.";

// ---------------------------------------------------------------------------------------------
// Values and subjects

/// The table of values, in each side's type.
struct Table {
    nanos: Vec<u64>,
    seconds: Vec<f64>,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    // xorshift64*, fixed seed: the same values every run.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let nanos: Vec<u64> = (0..VALUES)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
            // 10^4 to 10^8 ns: 10 µs to 100 ms, log-uniform.
            (1e4 * 10f64.powf(4.0 * unit)).round() as u64
        })
        .collect();
    let seconds = nanos.iter().map(|&nanos| nanos as f64 / 1e9).collect();
    Table { nanos, seconds }
});

fn nanos() -> &'static [u64] {
    &TABLE.nanos
}

fn seconds() -> &'static [f64] {
    &TABLE.seconds
}

fn hdr() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, HDR_HIGH, HDR_FIGURES).expect("valid bounds")
}

/// Our histogram to record into: a series of a default registry (60 s window). Nothing ticks
/// while it records, as between two ticks of the monitor's task.
fn ours_histogram() -> (Registry, perf_monitor::Histogram) {
    let registry = Registry::default();
    let histogram = registry
        .histogram(LATENCY, LATENCY_HELP, Unit::Seconds, &[("endpoint", "/bench")])
        .expect("a valid histogram");
    (registry, histogram)
}

/// A `metrics` histogram handle on a recorder (default settings: summaries), with the samples
/// it buffers counted so that upkeep drains them, outside the timing, before there are more
/// than [`METRICS_DRAIN`] — as the exporter's upkeep task does (every 5 s by default).
struct MetricsSide {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    histogram: metrics::Histogram,
    buffered: usize,
}

impl MetricsSide {
    fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let histogram = metrics::with_local_recorder(
            &recorder,
            || metrics::histogram!(LATENCY, "endpoint" => "/bench"),
        );
        let handle = recorder.handle();
        Self { recorder, handle, histogram, buffered: 0 }
    }

    /// Makes room for `samples` more: drains the buffer first if they would overfill it.
    fn room_for(&mut self, samples: usize) {
        if self.buffered + samples > METRICS_DRAIN {
            self.handle.run_upkeep();
            self.buffered = 0;
        }
        self.buffered += samples;
    }
}

// ---------------------------------------------------------------------------------------------
// Timed loops

/// `record(i)` for `count` table indexes from `from` on; the time they took.
#[inline(always)]
fn timed_records(count: usize, from: usize, mut record: impl FnMut(usize)) -> Duration {
    let start = Instant::now();
    for i in from..from + count {
        record(i & MASK);
    }
    start.elapsed()
}

/// Two threads, each with a recorder from `make`, record `count` values at once (from opposite
/// halves of the table). Returns the span from the first thread's start to the last one's end,
/// and the share of that span during which both ran: a check that they did run at once.
/// Spawning is outside the timing: both threads start on a barrier.
fn two_threads<R>(count: usize, make: impl Fn() -> R) -> (Duration, f64)
where
    R: FnMut(usize) + Send,
{
    let barrier = Barrier::new(2);
    let recorders = [make(), make()];
    let runs: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let threads: Vec<_> = recorders
            .into_iter()
            .enumerate()
            .map(|(thread, mut record)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let from = thread * VALUES / 2;
                    for i in from..from + count {
                        record(i & MASK);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a recording thread panicked"))
            .collect()
    });
    let (first, last) = (runs[0].0.min(runs[1].0), runs[0].1.max(runs[1].1));
    let both = runs[0].1.min(runs[1].1).saturating_duration_since(runs[0].0.max(runs[1].0));
    let span = last - first;
    (span, both.as_secs_f64() / span.as_secs_f64().max(1e-12))
}

/// Runs `count` operations in chunks of at most `chunk` through `timed`, which times one chunk
/// (after preparing it, untimed, if it needs to); the total time.
fn chunked(count: usize, chunk: usize, mut timed: impl FnMut(usize) -> Duration) -> Duration {
    let mut left = count;
    let mut total = Duration::ZERO;
    while left > 0 {
        let now = left.min(chunk);
        total += timed(now);
        left -= now;
    }
    total
}

/// `iters` as a count of records.
fn count(iters: u64) -> usize {
    usize::try_from(iters).expect("iterations fit in usize")
}

// ---------------------------------------------------------------------------------------------
// record, record_2t

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    short(&mut group, 30, 300, 1000);
    let nanos = nanos();
    let seconds = seconds();
    let (_registry, ours) = ours_histogram();
    group.bench_function("ours", |b| {
        b.iter_custom(|iters| timed_records(count(iters), 0, |i| ours.record(nanos[i])));
    });
    let mut peer = hdr();
    group.bench_function("hdrhistogram", |b| {
        b.iter_custom(|iters| {
            timed_records(count(iters), 0, |i| {
                peer.record(nanos[i]).expect("within bounds");
            })
        });
    });
    let mut side = None;
    group.bench_function("metrics", |b| {
        let side = side.get_or_insert_with(MetricsSide::new);
        b.iter_custom(|iters| {
            chunked(count(iters), METRICS_DRAIN, |n| {
                side.room_for(n);
                timed_records(n, 0, |i| side.histogram.record(seconds[i]))
            })
        });
    });
    let mut side = None;
    group.bench_function("metrics-macro", |b| {
        let side = side.get_or_insert_with(MetricsSide::new);
        b.iter_custom(|iters| {
            chunked(count(iters), METRICS_DRAIN, |n| {
                side.room_for(n);
                metrics::with_local_recorder(&side.recorder, || {
                    timed_records(n, 0, |i| {
                        metrics::histogram!(LATENCY, "endpoint" => "/bench").record(seconds[i]);
                    })
                })
            })
        });
    });
    group.bench_function("metrics-no-upkeep", |b| {
        b.iter_custom(|iters| {
            // Nothing drains: the buffer grows by 16 bytes a sample, into fresh memory. A new
            // recorder per criterion sample bounds it; it is dropped outside the timing.
            let side = MetricsSide::new();
            let elapsed = timed_records(count(iters), 0, |i| side.histogram.record(seconds[i]));
            drop(side);
            elapsed
        });
    });
    group.finish();
}

fn record_2t(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_2t");
    short(&mut group, 20, 300, 1000);
    let nanos = nanos();
    let seconds = seconds();
    let (_registry, ours) = ours_histogram();
    group.bench_function("ours", |b| {
        b.iter_custom(|iters| {
            let ours = || {
                let ours = ours.clone();
                move |i| ours.record(nanos[i])
            };
            two_threads(count(iters), ours).0
        });
    });
    let shared = Mutex::new(hdr());
    group.bench_function("hdrhistogram-mutex", |b| {
        b.iter_custom(|iters| two_threads(count(iters), || locked(&shared)).0);
    });
    group.bench_function("hdrhistogram-sync", |b| {
        b.iter_custom(|iters| {
            let mut sync = hdr().into_sync();
            let (elapsed, _) = two_threads(count(iters), || {
                let mut recorder = sync.recorder();
                move |i| recorder.record(nanos[i]).expect("within bounds")
            });
            // The recorders are gone: their counts wait in the channel. Untimed.
            sync.refresh();
            assert_eq!(sync.len(), 2 * iters, "the reader got every record");
            elapsed
        });
    });
    let mut side = None;
    group.bench_function("metrics", |b| {
        let side = side.get_or_insert_with(MetricsSide::new);
        b.iter_custom(|iters| {
            chunked(count(iters), METRICS_DRAIN / 2, |n| {
                side.room_for(2 * n);
                let histogram = &side.histogram;
                two_threads(n, || {
                    let histogram = histogram.clone();
                    move |i| histogram.record(seconds[i])
                })
                .0
            })
        });
    });
    group.finish();
}

/// A recorder into hdrhistogram behind a mutex.
fn locked(shared: &Mutex<hdrhistogram::Histogram<u64>>) -> impl FnMut(usize) + Send + '_ {
    let nanos = nanos();
    move |i| {
        let mut histogram = shared.lock().expect("not poisoned");
        histogram.record(nanos[i]).expect("within bounds");
    }
}

// ---------------------------------------------------------------------------------------------
// query

/// Our histogram with [`QUERY_VALUES`] values spread over the 7 slices of its window: 180 ms,
/// slices of 30 ms; a seventh of the values in each, recorded mid-slice after a tick.
fn ours_full() -> (Registry, perf_monitor::Histogram) {
    let nanos = nanos();
    let slice = Duration::from_millis(30);
    for _attempt in 0..5 {
        let registry = Registry::new(slice * 6);
        let start = Instant::now();
        let histogram = registry
            .histogram(LATENCY, LATENCY_HELP, Unit::Seconds, &[])
            .expect("a valid histogram");
        let mut recorded = 0;
        for part in 0..7 {
            let mid = start + slice * part + slice / 2;
            std::thread::sleep(mid.saturating_duration_since(Instant::now()));
            registry.tick();
            let until = QUERY_VALUES * (part as usize + 1) / 7;
            for i in recorded..until {
                histogram.record(nanos[i & MASK]);
            }
            recorded = until;
        }
        // A late wake-up may have skipped a slice: then the first part left the window.
        if histogram.summary().count == QUERY_VALUES as u64 {
            return (registry, histogram);
        }
    }
    panic!("could not spread the values over the window's slices: the machine is too loaded");
}

fn hdr_full() -> hdrhistogram::Histogram<u64> {
    let nanos = nanos();
    let mut histogram = hdr();
    for i in 0..QUERY_VALUES {
        histogram.record(nanos[i & MASK]).expect("within bounds");
    }
    histogram
}

/// hdrhistogram's counterpart of our `summary()`.
fn hdr_summary(histogram: &hdrhistogram::Histogram<u64>) -> (u64, u64, f64, u64, u64, u64) {
    (
        histogram.min(),
        histogram.max(),
        histogram.mean(),
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.95),
        histogram.value_at_quantile(0.99),
    )
}

fn query(c: &mut Criterion) {
    let mut group = c.benchmark_group("query");
    short(&mut group, 30, 300, 1000);
    let mut ours = None;
    let mut peer = None;
    group.bench_function("ours/p99", |b| {
        let (_, ours) = ours.get_or_insert_with(ours_full);
        b.iter(|| ours.quantile(black_box(0.99)));
    });
    group.bench_function("ours/summary", |b| {
        let (_, ours) = ours.get_or_insert_with(ours_full);
        b.iter(|| ours.summary());
    });
    group.bench_function("hdrhistogram/p99", |b| {
        let peer = peer.get_or_insert_with(hdr_full);
        b.iter(|| peer.value_at_quantile(black_box(0.99)));
    });
    group.bench_function("hdrhistogram/summary", |b| {
        let peer = peer.get_or_insert_with(hdr_full);
        b.iter(|| hdr_summary(peer));
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// render

/// The `endpoint` label of series `n`.
fn endpoint(n: usize) -> String {
    format!("/functions/fn-{n:03}")
}

/// Our registry with [`SERIES`] histogram series of [`PER_SERIES`] values each.
fn ours_histograms() -> Registry {
    let nanos = nanos();
    let registry = Registry::default();
    for series in 0..SERIES {
        let label = endpoint(series);
        let histogram = registry
            .histogram(LATENCY, LATENCY_HELP, Unit::Seconds, &[("endpoint", &label)])
            .expect("a valid histogram");
        for i in 0..PER_SERIES {
            histogram.record(nanos[(series * 37 + i) & MASK]);
        }
    }
    registry
}

/// Our registry with [`SERIES`] counters.
fn ours_counters() -> Registry {
    let registry = Registry::default();
    for series in 0..SERIES {
        let label = endpoint(series);
        let counter = registry
            .counter(REQUESTS, REQUESTS_HELP, &[("endpoint", &label)])
            .expect("a valid counter");
        counter.add(series as u64 * 1000 + 1);
    }
    registry
}

/// The histogram bounds of `metrics-buckets`: ours, 4^5 to 4^18 ns, in seconds.
fn bucket_bounds() -> Vec<f64> {
    (5..=18).map(|exponent| (1u64 << (2 * exponent)) as f64 / 1e9).collect()
}

/// A `metrics` recorder with [`SERIES`] histogram series of [`PER_SERIES`] values each, rendered
/// once so that the samples are drained into the summaries (or buckets).
fn metrics_histograms(buckets: bool) -> PrometheusHandle {
    let seconds = seconds();
    let mut builder = PrometheusBuilder::new();
    if buckets {
        builder = builder.set_buckets(&bucket_bounds()).expect("valid buckets");
    }
    let recorder = builder.build_recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_histogram!(LATENCY, metrics::Unit::Seconds, LATENCY_HELP);
        for series in 0..SERIES {
            let histogram = metrics::histogram!(LATENCY, "endpoint" => endpoint(series));
            for i in 0..PER_SERIES {
                histogram.record(seconds[(series * 37 + i) & MASK]);
            }
        }
    });
    let handle = recorder.handle();
    black_box(handle.render());
    handle
}

/// A `metrics` recorder with [`SERIES`] counters.
fn metrics_counters() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_counter!(REQUESTS, REQUESTS_HELP);
        for series in 0..SERIES {
            metrics::counter!(REQUESTS, "endpoint" => endpoint(series))
                .increment(series as u64 * 1000 + 1);
        }
    });
    let handle = recorder.handle();
    black_box(handle.render());
    handle
}

/// A subject of `render`: what it renders from, built on first use.
enum Renders {
    Ours(fn() -> Registry, Option<Registry>),
    Metrics(fn() -> PrometheusHandle, Option<PrometheusHandle>),
}

impl Renders {
    /// Builds the subject if needed; true if it was built now.
    fn ready(&mut self) -> bool {
        match self {
            Renders::Ours(make, slot @ None) => *slot = Some(make()),
            Renders::Metrics(make, slot @ None) => *slot = Some(make()),
            _ => return false,
        }
        true
    }

    fn render(&self) -> String {
        match self {
            Renders::Ours(_, Some(registry)) => registry.render(Format::Prometheus),
            Renders::Metrics(_, Some(handle)) => handle.render(),
            _ => unreachable!("built by `ready`"),
        }
    }
}

fn render(c: &mut Criterion) {
    let mut group = c.benchmark_group("render");
    short(&mut group, 20, 300, 1000);
    let subjects = [
        ("ours/100_histograms", Renders::Ours(ours_histograms, None)),
        ("ours/100_counters", Renders::Ours(ours_counters, None)),
        ("metrics-summary/100_histograms", Renders::Metrics(|| metrics_histograms(false), None)),
        ("metrics-buckets/100_histograms", Renders::Metrics(|| metrics_histograms(true), None)),
        ("metrics/100_counters", Renders::Metrics(metrics_counters, None)),
    ];
    let mut sizes = Vec::new();
    for (name, mut subject) in subjects {
        group.bench_function(name, |b| {
            if subject.ready() {
                let text = subject.render();
                sizes.push((name, text.lines().count(), text.len()));
            }
            b.iter(|| subject.render());
        });
    }
    group.finish();
    if sizes.is_empty() {
        return;
    }
    println!("\nrender output: {SERIES} series");
    println!("| impl | lines | bytes |");
    println!("|---|---:|---:|");
    for (name, lines, bytes) in sizes {
        println!("| {name} | {lines} | {bytes} |");
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// paired

/// One side of a pair: runs one batch and returns its time.
type Side<'a> = (&'static str, Box<dyn FnMut() -> Duration + 'a>);

/// The batches of one cell: ours and each peer, in ns per operation.
struct Cell {
    name: &'static str,
    ours: Vec<f64>,
    peers: Vec<(&'static str, Vec<f64>, Vec<f64>)>,
}

/// Times `ours` and every peer in alternation, one batch each per iteration (reversed order on
/// odd iterations, so that no side always runs first); `per` operations per batch. Criterion
/// reports ours per operation.
fn pair(
    group: &mut BenchmarkGroup<'_, WallTime>,
    cells: &mut Vec<Cell>,
    name: &'static str,
    per: usize,
    mut ours: Box<dyn FnMut() -> Duration + '_>,
    mut peers: Vec<Side<'_>>,
) {
    let mut cell = Cell {
        name,
        ours: Vec::new(),
        peers: peers.iter().map(|(peer, _)| (*peer, Vec::new(), Vec::new())).collect(),
    };
    let per_op = |elapsed: Duration| elapsed.as_nanos() as f64 / per as f64;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut times = vec![Duration::ZERO; peers.len()];
            for iteration in 0..iters {
                let mine = if iteration % 2 == 0 {
                    let mine = ours();
                    for (time, (_, peer)) in times.iter_mut().zip(peers.iter_mut()) {
                        *time = peer();
                    }
                    mine
                } else {
                    for (time, (_, peer)) in times.iter_mut().zip(peers.iter_mut()).rev() {
                        *time = peer();
                    }
                    ours()
                };
                cell.ours.push(per_op(mine));
                for ((_, absolute, ratio), time) in cell.peers.iter_mut().zip(&times) {
                    absolute.push(per_op(*time));
                    ratio.push(mine.as_secs_f64() / time.as_secs_f64());
                }
                total += mine;
            }
            total / per as u32
        });
    });
    if !cell.ours.is_empty() {
        cells.push(cell);
    }
}

fn paired(c: &mut Criterion) {
    let mut group = c.benchmark_group("paired");
    let mut cells = Vec::new();
    let nanos = nanos();
    let seconds = seconds();

    // Record, one thread: batches of 4096, about 20 µs for ours.
    short(&mut group, 30, 300, 2000);
    {
        let (_registry, ours) = ours_histogram();
        let mut peer = hdr();
        let mut side = MetricsSide::new();
        pair(
            &mut group,
            &mut cells,
            "record",
            RECORD_BATCH,
            Box::new(|| timed_records(RECORD_BATCH, 0, |i| ours.record(nanos[i]))),
            vec![
                (
                    "hdrhistogram",
                    Box::new(|| {
                        timed_records(RECORD_BATCH, 0, |i| {
                            peer.record(nanos[i]).expect("within bounds");
                        })
                    }),
                ),
                (
                    "metrics",
                    Box::new(|| {
                        side.room_for(RECORD_BATCH);
                        let histogram = &side.histogram;
                        timed_records(RECORD_BATCH, 0, |i| histogram.record(seconds[i]))
                    }),
                ),
            ],
        );
    }

    // Record, two threads: batches of 65 536 per thread.
    short(&mut group, 10, 300, 4000);
    let overlaps = RefCell::new(Vec::new());
    {
        let (_registry, ours) = ours_histogram();
        let shared = Mutex::new(hdr());
        let mut sync = hdr().into_sync();
        let mut side = MetricsSide::new();
        // Times one batch and notes how much of it the two threads overlapped.
        let noted = |name: &'static str, (span, overlap): (Duration, f64)| {
            overlaps.borrow_mut().push((name, overlap));
            span
        };
        pair(
            &mut group,
            &mut cells,
            "record_2t",
            RECORD_2T_BATCH,
            Box::new(|| {
                let ours = || {
                    let ours = ours.clone();
                    move |i| ours.record(nanos[i])
                };
                noted("ours", two_threads(RECORD_2T_BATCH, ours))
            }),
            vec![
                (
                    "hdrhistogram-mutex",
                    Box::new(|| {
                        noted(
                            "hdrhistogram-mutex",
                            two_threads(RECORD_2T_BATCH, || locked(&shared)),
                        )
                    }),
                ),
                (
                    "hdrhistogram-sync",
                    Box::new(|| {
                        let run = two_threads(RECORD_2T_BATCH, || {
                            let mut recorder = sync.recorder();
                            move |i| recorder.record(nanos[i]).expect("within bounds")
                        });
                        sync.refresh();
                        noted("hdrhistogram-sync", run)
                    }),
                ),
                (
                    "metrics",
                    Box::new(|| {
                        side.room_for(2 * RECORD_2T_BATCH);
                        let histogram = &side.histogram;
                        let run = two_threads(RECORD_2T_BATCH, || {
                            let histogram = histogram.clone();
                            move |i| histogram.record(seconds[i])
                        });
                        noted("metrics", run)
                    }),
                ),
            ],
        );
    }

    // Query: batches of 16 queries on 1M values.
    short(&mut group, 30, 300, 1500);
    {
        let (_registry, ours) = ours_full();
        let peer = hdr_full();
        pair(
            &mut group,
            &mut cells,
            "query_p99",
            QUERY_BATCH,
            repeated(QUERY_BATCH, || ours.quantile(black_box(0.99))),
            vec![(
                "hdrhistogram",
                repeated(QUERY_BATCH, || peer.value_at_quantile(black_box(0.99))),
            )],
        );
        pair(
            &mut group,
            &mut cells,
            "query_summary",
            QUERY_BATCH,
            repeated(QUERY_BATCH, || ours.summary()),
            vec![("hdrhistogram", repeated(QUERY_BATCH, || hdr_summary(&peer)))],
        );
    }

    // Render: one render per batch.
    short(&mut group, 20, 300, 1500);
    {
        let ours = ours_histograms();
        let summaries = metrics_histograms(false);
        let buckets = metrics_histograms(true);
        pair(
            &mut group,
            &mut cells,
            "render_100_histograms",
            1,
            repeated(1, || ours.render(Format::Prometheus)),
            vec![
                ("metrics-summary", repeated(1, || summaries.render())),
                ("metrics-buckets", repeated(1, || buckets.render())),
            ],
        );
        let ours = ours_counters();
        let peer = metrics_counters();
        pair(
            &mut group,
            &mut cells,
            "render_100_counters",
            1,
            repeated(1, || ours.render(Format::Prometheus)),
            vec![("metrics", repeated(1, || peer.render()))],
        );
    }
    group.finish();
    report(&mut cells, overlaps.into_inner());
}

/// A side that runs `operation` `count` times per batch, its results kept from the optimizer.
fn repeated<'a, T>(
    count: usize,
    mut operation: impl FnMut() -> T + 'a,
) -> Box<dyn FnMut() -> Duration + 'a> {
    Box::new(move || {
        let start = Instant::now();
        for _ in 0..count {
            black_box(operation());
        }
        start.elapsed()
    })
}

/// A time in ns, in the unit that reads best.
fn time(nanos: f64) -> String {
    if nanos < 1_000.0 {
        format!("{nanos:.1} ns")
    } else if nanos < 1_000_000.0 {
        format!("{:.2} µs", nanos / 1e3)
    } else {
        format!("{:.2} ms", nanos / 1e6)
    }
}

fn report(cells: &mut [Cell], overlaps: Vec<(&'static str, f64)>) {
    if cells.is_empty() {
        return;
    }
    println!(
        "\npaired: per operation (record: per record, per thread for record_2t; query: per query; \
         render: per render of {SERIES} series); median [p25, p75] of paired batches; \
         ours/peer below 1 means ours is faster"
    );
    println!("| cell | ours | peer | peer time | ours/peer | pairs |");
    println!("|---|---:|---|---:|---:|---:|");
    let mut medians = Vec::new();
    for cell in cells.iter_mut() {
        let (_, ours, _) = quartiles(&mut cell.ours);
        medians.push((cell.name, ours));
        for (peer, absolute, ratio) in &mut cell.peers {
            let (_, theirs, _) = quartiles(absolute);
            let pairs = ratio.len();
            println!(
                "| {} | {} | {peer} | {} | {} | {pairs} |",
                cell.name,
                time(ours),
                time(theirs),
                spread(ratio, 2),
            );
        }
    }
    if !overlaps.is_empty() {
        let mut shares = Vec::new();
        for (name, _) in &overlaps {
            if !shares.iter().any(|(seen, _)| seen == name) {
                let mut of: Vec<f64> =
                    overlaps.iter().filter(|(n, _)| n == name).map(|(_, share)| *share).collect();
                shares.push((*name, quartiles(&mut of)));
            }
        }
        let shares: Vec<String> = shares
            .into_iter()
            .map(|(name, (p25, p50, _))| {
                format!("{name} {:.0}% (p25 {:.0}%)", p50 * 100.0, p25 * 100.0)
            })
            .collect();
        println!(
            "\nrecord_2t: both threads running, share of the batch, median: {}",
            shares.join(", ")
        );
    }
    println!("\ntargets (issue 5), ours, median of the paired batches");
    println!("| what | ours | target | status |");
    println!("|---|---:|---:|---|");
    let targets = [
        ("record", "record, one thread", TARGET_RECORD_NS),
        ("query_p99", "p99 query, 1M values over 7 slices", TARGET_P99_NS),
        ("render_100_histograms", "render 100 histogram series", TARGET_RENDER_NS),
        ("render_100_counters", "render 100 counters", TARGET_RENDER_NS),
    ];
    for (cell, what, target) in targets {
        if let Some((_, ours)) = medians.iter().find(|(name, _)| *name == cell) {
            let status = if *ours <= target { "met" } else { "missed" };
            println!("| {what} | {} | ≤ {} | {status} |", time(*ours), time(target));
        }
    }
    println!();
}

criterion_group!(benches, record, record_2t, query, render, paired);
criterion_main!(benches);
