//! [`Monitor`]: the registry, request tracking, system statistics, memory pressure and alerts
//! together, kept current by one background task that ends with the monitor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::alerts::{
    Alert, AlertConfig, AlertEvent, Alerts, Observation, Recommendation, recommendations,
};
use crate::error::{Error, Result};
use crate::expose::Format;
use crate::pressure::{MemoryPressure, PressureThresholds};
use crate::registry::{Gauge, Registry};
use crate::system::{SystemSampler, SystemStats};
use crate::tracker::{EndpointStats, RequestTracker};

/// How a [`Monitor`] runs. Plain data with serde; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// The window of percentiles, error rates and throughput. Default 60 s, at least 1 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How often system statistics and memory pressure are sampled. Default 5 s, at least 1 s.
    #[serde(with = "humantime_serde")]
    pub system_interval: Duration,
    /// How often alerts are evaluated. Default 1 s, at least 100 ms.
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
    /// Alert rules.
    pub alerts: AlertConfig,
    /// Memory pressure levels.
    pub pressure: PressureThresholds,
    /// Label sets kept per metric before they share an `other` series. Default 1000.
    pub max_series: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            system_interval: Duration::from_secs(5),
            evaluation_interval: Duration::from_secs(1),
            alerts: AlertConfig::default(),
            pressure: PressureThresholds::default(),
            max_series: crate::registry::DEFAULT_MAX_SERIES,
        }
    }
}

impl MonitorConfig {
    /// Checks every setting; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let at_least = |field: &str, value: Duration, min: Duration| {
            if value < min {
                Err(Error::InvalidConfig {
                    field: field.to_owned(),
                    reason: format!("{value:?} is below the minimum of {min:?}"),
                })
            } else {
                Ok(())
            }
        };
        at_least("monitor.window", self.window, Duration::from_secs(1))?;
        at_least("monitor.system_interval", self.system_interval, Duration::from_secs(1))?;
        at_least(
            "monitor.evaluation_interval",
            self.evaluation_interval,
            Duration::from_millis(100),
        )?;
        if self.max_series == 0 {
            return Err(Error::InvalidConfig {
                field: "monitor.max_series".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        self.alerts.validate()?;
        self.pressure.validate()
    }
}

/// What the background task and the handles share.
#[derive(Debug)]
struct Shared {
    config: MonitorConfig,
    registry: Registry,
    tracker: RequestTracker,
    alerts: Alerts,
    pressure: MemoryPressure,
    system: Mutex<Option<SystemStats>>,
    sampler: Arc<Mutex<SystemSampler>>,
    queue_depth: Gauge,
    gauges: SystemGauges,
}

/// The system statistics as gauges, for Prometheus.
#[derive(Debug)]
struct SystemGauges {
    process_cpu: Gauge,
    process_rss: Gauge,
    memory: Gauge,
    load: [Gauge; 3],
}

/// Performance monitoring for one process: see the crate docs.
///
/// Its background task (started by [`Monitor::start`]) advances the histograms' time slices,
/// samples system statistics and memory pressure every `system_interval` on a blocking thread,
/// and evaluates alerts every `evaluation_interval`. Dropping the monitor stops the task.
#[derive(Debug)]
pub struct Monitor {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Monitor {
    /// Starts a monitor; must be called inside a Tokio runtime, which runs its task.
    pub fn start(config: MonitorConfig) -> Result<Self> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::InvalidConfig {
            field: "runtime".to_owned(),
            reason: "Monitor::start must be called inside a Tokio runtime".to_owned(),
        })?;
        let registry = Registry::with_limits(config.window, config.max_series);
        let tracker = RequestTracker::new(registry.clone())?;
        let gauge = |name: &str, help: &str| registry.gauge(name, help, &[]);
        let gauges = SystemGauges {
            process_cpu: gauge(
                "smgr_process_cpu_percent",
                "CPU used by this process, percent of the machine",
            )?,
            process_rss: gauge(
                "smgr_process_resident_memory_bytes",
                "Resident memory of this process",
            )?,
            memory: gauge("smgr_system_memory_percent", "Memory in use on the host, percent")?,
            load: [
                registry.gauge("smgr_system_load_average", "Load average", &[("period", "1m")])?,
                registry.gauge("smgr_system_load_average", "Load average", &[("period", "5m")])?,
                registry.gauge("smgr_system_load_average", "Load average", &[("period", "15m")])?,
            ],
        };
        let queue_depth = gauge("smgr_queue_depth", "Requests waiting for an instance")?;
        let shared = Arc::new(Shared {
            alerts: Alerts::new(config.alerts.clone())?,
            pressure: MemoryPressure::new(config.pressure.clone())?,
            config,
            registry,
            tracker,
            system: Mutex::new(None),
            sampler: Arc::new(Mutex::new(SystemSampler::new())),
            queue_depth,
            gauges,
        });
        let task = runtime.spawn(run(shared.clone()));
        Ok(Self { shared, task })
    }

    /// The metrics registry: register counters, gauges and histograms of your own here.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Request tracking per endpoint.
    pub fn tracker(&self) -> &RequestTracker {
        &self.shared.tracker
    }

    /// Records one request: shorthand for `tracker().track(...)`.
    pub fn track(&self, duration: Duration, success: bool, endpoint: &str) {
        self.shared.tracker.track(duration, success, endpoint);
    }

    /// The alerts: subscribe to them, or list the active ones.
    pub fn alerts(&self) -> &Alerts {
        &self.shared.alerts
    }

    /// The memory pressure monitor: subscribe to levels, register shrink callbacks.
    pub fn pressure(&self) -> &MemoryPressure {
        &self.shared.pressure
    }

    /// The gauge of requests waiting for capacity, which the `queue_depth` alert watches; the
    /// pools or the gateway set it.
    pub fn queue_depth(&self) -> &Gauge {
        &self.shared.queue_depth
    }

    /// The latest system statistics; `None` until the first sample.
    pub fn system(&self) -> Option<SystemStats> {
        *self.shared.system.lock()
    }

    /// Samples system statistics and memory pressure now (blocking: call it from a blocking
    /// context, or let the background task do it).
    pub fn sample_system(&self) -> Result<SystemStats> {
        self.shared.sample_system()
    }

    /// The figures alerts watch, as they are now.
    pub fn observation(&self) -> Observation {
        self.shared.observation()
    }

    /// Evaluates the alerts now, as the background task does every `evaluation_interval`.
    pub fn evaluate(&self) -> Vec<AlertEvent> {
        self.shared.evaluate()
    }

    /// Suggestions from the current figures.
    pub fn recommendations(&self) -> Vec<Recommendation> {
        let shared = &self.shared;
        recommendations(&shared.config.alerts, &shared.observation(), &shared.alerts.active())
    }

    /// Every metric in the Prometheus text format or OpenMetrics.
    pub fn render(&self, format: Format) -> String {
        self.shared.registry.render(format)
    }

    /// The JSON snapshot of `/performance/metrics`.
    pub fn snapshot(&self) -> PerformanceSnapshot {
        let shared = &self.shared;
        let requests = shared.tracker.stats();
        let active = shared.alerts.active();
        let observation = shared.observation();
        PerformanceSnapshot {
            window: humantime::format_duration(shared.config.window).to_string(),
            requests: RequestFigures::from(&requests.total),
            latency: LatencyFigures::from(&requests.total),
            system: self.system().map(SystemFigures::from),
            alerts: AlertFigures {
                active: active.len(),
                types: active.iter().map(|alert| alert.metric.as_str().to_owned()).collect(),
                list: active.clone(),
            },
            recommendations: recommendations(&shared.config.alerts, &observation, &active),
            endpoints: requests
                .endpoints
                .iter()
                .map(|(name, stats)| {
                    (
                        name.clone(),
                        EndpointFigures { requests: stats.into(), latency: stats.into() },
                    )
                })
                .collect(),
        }
    }
}

impl Shared {
    fn sample_system(&self) -> Result<SystemStats> {
        let stats = self.sampler.lock().sample();
        *self.system.lock() = Some(stats);
        let gauges = &self.gauges;
        gauges.process_cpu.set(stats.process_cpu_percent);
        gauges.process_rss.set(stats.process_rss_bytes as f64);
        gauges.memory.set(stats.memory_percent);
        for (gauge, load) in gauges.load.iter().zip(stats.load_average) {
            gauge.set(load);
        }
        self.pressure.sample()?;
        Ok(stats)
    }

    fn observation(&self) -> Observation {
        let system = *self.system.lock();
        let total = self.tracker.total();
        let requests = total.requests > 0;
        Observation {
            cpu_percent: system.map(|stats| stats.process_cpu_percent),
            memory_percent: system.map(|stats| stats.memory_percent),
            error_rate_percent: requests.then_some(total.error_rate_percent),
            queue_depth: Some(self.queue_depth.get()),
            p99_latency_ms: requests.then_some(total.latency_ms.p99),
        }
    }

    fn evaluate(&self) -> Vec<AlertEvent> {
        self.alerts.evaluate(Instant::now(), SystemTime::now(), &self.observation())
    }
}

/// The longest pause between samples: for intervals too long to add to the present moment.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The background task: ticks, samples, evaluates; aborted when the monitor is dropped.
async fn run(shared: Arc<Shared>) {
    let mut next_sample = Instant::now();
    loop {
        shared.registry.tick();
        if Instant::now() >= next_sample {
            // An interval too long to add to the present moment (`Duration::MAX`): a century.
            let now = Instant::now();
            next_sample = now.checked_add(shared.config.system_interval).unwrap_or(now + CENTURY);
            let sampling = shared.clone();
            // sysinfo and the cgroup files are blocking reads.
            if let Ok(Err(error)) =
                tokio::task::spawn_blocking(move || sampling.sample_system()).await
            {
                // Sampling fails only when /proc or the cgroup files cannot be read; the
                // figures then stay as they were.
                let _ = error;
            }
        }
        shared.evaluate();
        let slice = shared.registry.window() / crate::histogram::SLICES_PER_WINDOW;
        tokio::time::sleep(shared.config.evaluation_interval.min(slice)).await;
    }
}

/// The `/performance/metrics` document: the predecessor's shape (window, requests, latency,
/// system, alerts, recommendations) with numbers instead of formatted strings — percentages as
/// percent, latencies in milliseconds, throughput in requests per second — plus the figures of
/// each endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PerformanceSnapshot {
    /// The window, e.g. `"1m"`.
    pub window: String,
    /// Requests over the window.
    pub requests: RequestFigures,
    /// Latency over the window.
    pub latency: LatencyFigures,
    /// The latest system sample; `null` before the first.
    pub system: Option<SystemFigures>,
    /// Active alerts.
    pub alerts: AlertFigures,
    /// Suggestions.
    pub recommendations: Vec<Recommendation>,
    /// Requests and latency per endpoint.
    pub endpoints: BTreeMap<String, EndpointFigures>,
}

/// Request counts over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestFigures {
    /// Requests.
    pub total: u64,
    /// Of which succeeded.
    pub successful: u64,
    /// Of which failed.
    pub failed: u64,
    /// Percent of requests that failed.
    pub error_rate: f64,
    /// Requests per second.
    pub throughput: f64,
}

impl From<&EndpointStats> for RequestFigures {
    fn from(stats: &EndpointStats) -> Self {
        Self {
            total: stats.requests,
            successful: stats.successes,
            failed: stats.failures,
            error_rate: stats.error_rate_percent,
            throughput: stats.throughput_per_second,
        }
    }
}

/// Latency over the window, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyFigures {
    /// Mean.
    pub avg: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
}

impl From<&EndpointStats> for LatencyFigures {
    fn from(stats: &EndpointStats) -> Self {
        let latency = &stats.latency_ms;
        Self {
            avg: latency.avg,
            p50: latency.p50,
            p95: latency.p95,
            p99: latency.p99,
            min: latency.min,
            max: latency.max,
        }
    }
}

/// One endpoint's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointFigures {
    /// Requests over the window.
    pub requests: RequestFigures,
    /// Latency over the window.
    pub latency: LatencyFigures,
}

/// The system sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemFigures {
    /// CPU used by this process, percent of the machine.
    pub cpu: f64,
    /// Memory in use on the host, percent.
    pub memory: f64,
    /// Resident memory of this process, bytes.
    pub rss: u64,
    /// 1, 5 and 15 minute load averages.
    pub load_average: [f64; 3],
    /// Logical CPUs.
    pub cpu_count: usize,
    /// How long this process has run, e.g. `"2days 5h 23m"`.
    pub uptime: String,
}

impl From<SystemStats> for SystemFigures {
    fn from(stats: SystemStats) -> Self {
        Self {
            cpu: stats.process_cpu_percent,
            memory: stats.memory_percent,
            rss: stats.process_rss_bytes,
            load_average: stats.load_average,
            cpu_count: stats.cpu_count,
            uptime: humantime::format_duration(Duration::from_secs(stats.uptime.as_secs()))
                .to_string(),
        }
    }
}

/// Active alerts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertFigures {
    /// How many.
    pub active: usize,
    /// Their metrics.
    pub types: Vec<String>,
    /// Each of them.
    pub list: Vec<Alert>,
}
