//! The monitor as a whole: request figures, system sampling, alerts, the JSON snapshot, and a
//! background task that ends with the monitor.

use std::time::Duration;

use tokio::sync::broadcast;

use perf_monitor::{
    AlertConfig, AlertEvent, AlertMetric, AlertRule, Format, Monitor, MonitorConfig,
};

/// The default rules for the figures these tests drive, firing at once. The CPU and memory rules
/// are left out: they read this machine, which may be busy with other tests, and would add
/// alerts and advice the tests do not control.
fn config() -> MonitorConfig {
    let mut alerts = AlertConfig::default();
    alerts.rules.retain(|rule| {
        !matches!(rule.metric, AlertMetric::CpuPercent | AlertMetric::MemoryPercent)
    });
    for rule in &mut alerts.rules {
        rule.for_duration = Duration::ZERO;
    }
    MonitorConfig { alerts, ..MonitorConfig::default() }
}

/// Evaluates now and returns every event since the last call: the monitor's own task evaluates
/// too, and may see a change first, so the events come from the subscription, not the return
/// value. Each evaluation sends its events before it returns, so none is missed.
fn evaluate(monitor: &Monitor, alerts: &mut broadcast::Receiver<AlertEvent>) -> Vec<AlertEvent> {
    monitor.evaluate();
    std::iter::from_fn(|| alerts.try_recv().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_has_the_predecessors_shape_and_the_figures() {
    let monitor = Monitor::start(config()).expect("starts");
    let mut alerts = monitor.alerts().subscribe();
    for i in 0..20 {
        monitor.track(Duration::from_millis(5 + i), i % 10 != 0, "/fn/hello");
    }
    let stats = tokio::task::block_in_place(|| monitor.sample_system()).expect("samples");
    assert!(stats.memory_total_bytes > 0);

    let snapshot = serde_json::to_value(monitor.snapshot()).expect("serializes");
    for key in ["window", "requests", "latency", "system", "alerts", "recommendations", "endpoints"]
    {
        assert!(snapshot.get(key).is_some(), "no {key} in {snapshot:#}");
    }
    assert_eq!(snapshot["window"], "1m");
    assert_eq!(snapshot["requests"]["total"], 20);
    assert_eq!(snapshot["requests"]["failed"], 2);
    assert_eq!(snapshot["requests"]["errorRate"], 10.0);
    assert!(snapshot["latency"]["p99"].as_f64().is_some_and(|p99| p99 >= 20.0));
    assert!(snapshot["system"]["rss"].as_u64().is_some_and(|rss| rss > 0));
    assert!(snapshot["system"]["cpuCount"].as_u64().is_some_and(|cpus| cpus >= 1));
    assert_eq!(snapshot["endpoints"]["/fn/hello"]["requests"]["total"], 20);
    // A 10% error rate is over the default 5% threshold: the alert fires at the first
    // evaluation (for_duration is zero here) and the recommendations say so.
    let events = evaluate(&monitor, &mut alerts);
    assert!(
        events.iter().any(|event| matches!(event, AlertEvent::Fired(alert) if alert.metric == AlertMetric::ErrorRatePercent)),
        "{events:?}"
    );
    let snapshot = serde_json::to_value(monitor.snapshot()).expect("serializes");
    assert_eq!(
        snapshot["alerts"]["types"],
        serde_json::json!(["error_rate_percent"]),
        "{snapshot:#}"
    );
    let advice = snapshot["recommendations"].to_string();
    assert!(advice.contains("errors"), "{advice}");

    let text = monitor.render(Format::Prometheus);
    for metric in [
        "smgr_endpoint_requests_total{endpoint=\"/fn/hello\"} 20",
        "smgr_process_resident_memory_bytes ",
        "smgr_queue_depth 0",
    ] {
        assert!(text.contains(metric), "no {metric:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_figures_give_the_normal_parameters_message_and_queue_depth_alerts() {
    let monitor = Monitor::start(config()).expect("starts");
    let mut alerts = monitor.alerts().subscribe();
    let advice = monitor.recommendations();
    assert_eq!(advice.len(), 1);
    assert_eq!(advice[0].message, "System operating within normal parameters");
    monitor.queue_depth().set(150.0);
    let events = evaluate(&monitor, &mut alerts);
    assert!(events.iter().any(|event| matches!(event, AlertEvent::Fired(alert) if alert.metric == AlertMetric::QueueDepth)), "{events:?}");
    monitor.queue_depth().set(10.0);
    let events = evaluate(&monitor, &mut alerts);
    assert!(
        events.iter().any(|event| matches!(
            event,
            AlertEvent::Cleared { metric: AlertMetric::QueueDepth, .. }
        )),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_samples_and_ends_with_the_monitor() {
    let monitor = Monitor::start(MonitorConfig {
        system_interval: Duration::from_secs(1),
        evaluation_interval: Duration::from_millis(100),
        ..MonitorConfig::default()
    })
    .expect("starts");
    let mut sampled = false;
    for _ in 0..100 {
        if monitor.system().is_some() {
            sampled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sampled, "the background task sampled the system");
    let registry = monitor.registry().clone();
    let alive = registry.strong_handles();
    assert!(alive >= 3, "the monitor, its task and this clone hold the registry: {alive}");
    drop(monitor);
    let mut after = alive;
    for _ in 0..100 {
        after = registry.strong_handles();
        if after == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(after, 1, "only this clone is left: the task has ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_interval_too_long_to_count_down_samples_once_and_the_task_goes_on() {
    let monitor = Monitor::start(MonitorConfig {
        system_interval: Duration::MAX,
        evaluation_interval: Duration::from_millis(100),
        ..MonitorConfig::default()
    })
    .expect("starts");
    for _ in 0..100 {
        if monitor.system().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(monitor.system().is_some(), "the background task sampled the system");
    // Several evaluation rounds after the first sample, when the next one was scheduled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let alive = monitor.registry().strong_handles();
    assert!(alive >= 2, "the task holds the registry still, beside the monitor: {alive}");
}

#[test]
fn bad_settings_are_refused_naming_them() {
    let error = MonitorConfig { window: Duration::from_millis(10), ..MonitorConfig::default() }
        .validate()
        .unwrap_err()
        .to_string();
    assert!(error.contains("monitor.window"), "{error}");
    let mut alerts = AlertConfig::default();
    alerts.rules.push(AlertRule {
        metric: AlertMetric::QueueDepth,
        fire_at: 10.0,
        clear_below: 20.0,
        for_duration: Duration::ZERO,
    });
    let error =
        MonitorConfig { alerts, ..MonitorConfig::default() }.validate().unwrap_err().to_string();
    assert!(error.contains("alerts.rules"), "{error}");
    let parsed: Result<MonitorConfig, _> = serde_json::from_str(r#"{"window": "30s", "windw": 1}"#);
    assert!(parsed.unwrap_err().to_string().contains("unknown field `windw`"));
    let parsed: MonitorConfig = serde_json::from_str(r#"{"window": "30s"}"#).expect("parses");
    assert_eq!(parsed.window, Duration::from_secs(30));
    assert!(Monitor::start(MonitorConfig::default()).is_err(), "outside a runtime");
}
