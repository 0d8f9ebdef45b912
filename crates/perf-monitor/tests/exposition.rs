//! The exposition is read back by an independent parser (prometheus-parse): every line must be
//! one it recognizes, and the values must come back.

use std::time::Duration;

use perf_monitor::{Format, Registry, Unit};
use prometheus_parse::{LineInfo, Scrape, Value};

fn registry() -> Registry {
    let registry = Registry::new(Duration::from_secs(60));
    let hits = registry
        .counter("smgr_hits", "Hits, by \"function\"\\path", &[("function", "hello \"world\"\n")])
        .unwrap();
    hits.add(42);
    registry.gauge("smgr_queue_depth", "Waiting", &[("pool", "a")]).unwrap().set(3.5);
    let latency = registry
        .histogram("smgr_latency_seconds", "Latency", Unit::Seconds, &[("endpoint", "/x")])
        .unwrap();
    for ms in 1..=100u64 {
        latency.record_duration(Duration::from_millis(ms));
    }
    registry.histogram("smgr_sizes_bytes", "", Unit::Bytes, &[]).unwrap().record(5000);
    registry
}

fn lines_are_all_recognized(text: &str) {
    for line in text.lines() {
        if line.starts_with("# EOF") {
            continue;
        }
        let parsed = LineInfo::parse(line);
        assert!(!matches!(parsed, LineInfo::Ignored | LineInfo::Empty), "not recognized: {line:?}");
    }
}

#[test]
fn prometheus_text_parses_and_carries_the_values() {
    let text = registry().render(Format::Prometheus);
    lines_are_all_recognized(&text);
    let scrape = Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("parses");

    let find = |metric: &str| {
        scrape.samples.iter().filter(|sample| sample.metric == metric).collect::<Vec<_>>()
    };
    let hits = find("smgr_hits_total");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].value, Value::Counter(42.0));
    let gauge = find("smgr_queue_depth");
    assert_eq!(gauge[0].value, Value::Gauge(3.5));
    assert_eq!(gauge[0].labels.get("pool"), Some("a"));

    let histogram = find("smgr_latency_seconds");
    let Value::Histogram(buckets) = &histogram[0].value else { panic!("{histogram:?}") };
    assert_eq!(buckets.last().map(|b| (b.less_than, b.count)), Some((f64::INFINITY, 100.0)));
    assert!(buckets.windows(2).all(|pair| pair[0].count <= pair[1].count), "cumulative");
    // 2^26 ns = 67.1 ms: 67 of the values 1..=100 ms lie below it.
    let at_67ms =
        buckets.iter().find(|b| (b.less_than - 0.067108864).abs() < 1e-12).expect("bound");
    assert_eq!(at_67ms.count, 67.0);
    let count = find("smgr_latency_seconds_count");
    assert_eq!(count[0].value, Value::Untyped(100.0));
    let Value::Untyped(sum) = find("smgr_latency_seconds_sum")[0].value else { panic!() };
    assert!((sum - 5.05).abs() <= 5.05 * 0.0625, "sum {sum}");

    let window = find("smgr_latency_seconds_window");
    let Value::Summary(quantiles) = &window[0].value else { panic!("{window:?}") };
    let p99 = quantiles.iter().find(|q| q.quantile == 0.99).expect("p99").count;
    assert!((p99 - 0.099).abs() <= 0.099 * 0.0625, "p99 {p99}");
}

#[test]
fn openmetrics_text_is_recognized_and_ends_with_eof() {
    let text = registry().render(Format::OpenMetrics);
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    lines_are_all_recognized(&text);
    assert!(text.contains("# TYPE smgr_hits counter\n"), "family named without _total");
    assert!(text.contains("\nsmgr_hits_total{function=\"hello \\\"world\\\"\\n\"} 42\n"), "{text}");
    assert!(text.contains("# HELP smgr_hits Hits, by \\\"function\\\"\\\\path\n"), "{text}");
    assert_eq!(
        Format::from_accept(Some("application/openmetrics-text; version=1.0.0")),
        Format::OpenMetrics
    );
    assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
    assert_eq!(Format::from_accept(None), Format::Prometheus);
}
