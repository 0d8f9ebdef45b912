//! Threshold alerts with hysteresis and a minimum duration, and the recommendations derived from
//! the current figures.
//!
//! [`Alerts`] is pure logic: it reads no clock and spawns no task. Whoever samples the figures
//! hands it an [`Observation`] with the instant it was taken and gets back what fired or
//! cleared; subscribers receive the same events through a bounded channel.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Events a subscriber may fall behind by before it loses the oldest ones.
const EVENT_CAPACITY: usize = 64;

/// The message of the one recommendation given when nothing is wrong.
const HEALTHY: &str = "System operating within normal parameters";

/// What an alert watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// CPU use of the process, in percent of the whole machine (all cores busy = 100).
    CpuPercent,
    /// Memory in use, in percent of the limit that applies.
    MemoryPercent,
    /// Failed requests, in percent of all requests over the window.
    ErrorRatePercent,
    /// Requests waiting for an instance.
    QueueDepth,
    /// The 99th percentile of request latency over the window, in milliseconds.
    P99LatencyMs,
}

impl AlertMetric {
    /// Every metric, in their sort order.
    pub const ALL: [AlertMetric; 5] = [
        AlertMetric::CpuPercent,
        AlertMetric::MemoryPercent,
        AlertMetric::ErrorRatePercent,
        AlertMetric::QueueDepth,
        AlertMetric::P99LatencyMs,
    ];

    /// The metric's name as serde writes it (`cpu_percent`), for labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertMetric::CpuPercent => "cpu_percent",
            AlertMetric::MemoryPercent => "memory_percent",
            AlertMetric::ErrorRatePercent => "error_rate_percent",
            AlertMetric::QueueDepth => "queue_depth",
            AlertMetric::P99LatencyMs => "p99_latency_ms",
        }
    }

    /// How messages name the metric, lower-case (`cpu`, `error rate`).
    fn label(self) -> &'static str {
        match self {
            AlertMetric::CpuPercent => "cpu",
            AlertMetric::MemoryPercent => "memory",
            AlertMetric::ErrorRatePercent => "error rate",
            AlertMetric::QueueDepth => "queue depth",
            AlertMetric::P99LatencyMs => "p99 latency",
        }
    }

    /// How a recommendation opens: the label at the start of a sentence.
    fn title(self) -> &'static str {
        match self {
            AlertMetric::CpuPercent => "CPU",
            AlertMetric::MemoryPercent => "Memory",
            AlertMetric::ErrorRatePercent => "Error rate",
            AlertMetric::QueueDepth => "Queue depth",
            AlertMetric::P99LatencyMs => "P99 latency",
        }
    }

    /// Writes `value` with the metric's unit: `91.2%`, `150`, `1200 ms`.
    fn figure(self, value: f64) -> String {
        let number = number(value);
        match self {
            AlertMetric::CpuPercent
            | AlertMetric::MemoryPercent
            | AlertMetric::ErrorRatePercent => format!("{number}%"),
            AlertMetric::QueueDepth => number,
            AlertMetric::P99LatencyMs => format!("{number} ms"),
        }
    }

    /// The `type` of the recommendation about this metric.
    fn recommendation_kind(self) -> &'static str {
        match self {
            AlertMetric::CpuPercent => "cpu",
            AlertMetric::MemoryPercent => "memory",
            AlertMetric::ErrorRatePercent => "errors",
            AlertMetric::QueueDepth => "queue",
            AlertMetric::P99LatencyMs => "latency",
        }
    }

    /// What to do when the metric is high.
    fn advice(self) -> &'static str {
        match self {
            AlertMetric::CpuPercent => {
                "add instances on other hosts or lower max_instances/concurrency"
            }
            AlertMetric::MemoryPercent => "lower cache sizes or max_instances",
            AlertMetric::ErrorRatePercent => "check the failing endpoint(s) and their backends",
            AlertMetric::QueueDepth => "raise max_instances or queue_limit",
            AlertMetric::P99LatencyMs => {
                "look at the slowest endpoint(s), cache their results or raise max_instances"
            }
        }
    }
}

/// One rule: fires once the value has stayed at or above `fire_at` for `for_duration`; clears
/// once it falls below `clear_below` (≤ `fire_at`).
///
/// "Stayed" means at every observation: one observation below `fire_at` before the alert has
/// fired restarts the `for_duration` timer, even when it is above `clear_below`. Once fired, the
/// alert stays active while the value is anywhere at or above `clear_below` (hysteresis), so a
/// value wavering around `fire_at` fires once, not once per crossing.
///
/// In a config file `for_duration` is a human-readable duration (`"10s"`, `"1m 30s"`); absent,
/// it is zero and the rule fires at the first observation at or above `fire_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// What the rule watches.
    pub metric: AlertMetric,
    /// The value at or above which the alert fires, after `for_duration`.
    pub fire_at: f64,
    /// The value below which an active alert clears; at most `fire_at`.
    pub clear_below: f64,
    /// How long the value must stay at or above `fire_at` before the alert fires.
    #[serde(with = "humantime_serde", default)]
    pub for_duration: Duration,
}

/// The rules, at most one per metric.
///
/// The defaults are the predecessor's thresholds, each with a clear level below it and a
/// `for_duration` of 10 s:
///
/// | metric               | `fire_at` | `clear_below` |
/// |----------------------|-----------|---------------|
/// | `cpu_percent`        | 80        | 70            |
/// | `memory_percent`     | 85        | 75            |
/// | `error_rate_percent` | 5         | 3             |
/// | `queue_depth`        | 100       | 80            |
/// | `p99_latency_ms`     | 1000      | 800           |
///
/// An absent `rules` key means these defaults; an empty list turns alerting off. Unknown keys
/// are errors.
///
/// ```
/// let config: perf_monitor::AlertConfig = serde_json::from_str(
///     r#"{ "rules": [ { "metric": "cpu_percent", "fire_at": 90, "clear_below": 75, "for_duration": "30s" } ] }"#,
/// )
/// .unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.rules[0].for_duration, std::time::Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// The rules, evaluated in this order.
    pub rules: Vec<AlertRule>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        let rule = |metric, fire_at, clear_below| AlertRule {
            metric,
            fire_at,
            clear_below,
            for_duration: Duration::from_secs(10),
        };
        Self {
            rules: vec![
                rule(AlertMetric::CpuPercent, 80.0, 70.0),
                rule(AlertMetric::MemoryPercent, 85.0, 75.0),
                rule(AlertMetric::ErrorRatePercent, 5.0, 3.0),
                rule(AlertMetric::QueueDepth, 100.0, 80.0),
                rule(AlertMetric::P99LatencyMs, 1000.0, 800.0),
            ],
        }
    }
}

impl AlertConfig {
    /// Checks that every number is finite, that `clear_below` does not exceed `fire_at`, and
    /// that no metric has two rules; the error names the field (`alerts.rules[2].clear_below`).
    pub fn validate(&self) -> Result<()> {
        for (index, rule) in self.rules.iter().enumerate() {
            for (name, value) in [("fire_at", rule.fire_at), ("clear_below", rule.clear_below)] {
                if !value.is_finite() {
                    return Err(invalid(
                        index,
                        name,
                        format!("must be a finite number, got {value}"),
                    ));
                }
            }
            if rule.clear_below > rule.fire_at {
                return Err(invalid(
                    index,
                    "clear_below",
                    format!(
                        "must not exceed fire_at ({}), got {}",
                        number(rule.fire_at),
                        number(rule.clear_below)
                    ),
                ));
            }
            if let Some(first) = self.rules[..index].iter().position(|r| r.metric == rule.metric) {
                return Err(invalid(
                    index,
                    "metric",
                    format!("{} already has a rule at alerts.rules[{first}]", rule.metric.as_str()),
                ));
            }
        }
        Ok(())
    }

    /// The rule for `metric`, if there is one.
    pub fn rule(&self, metric: AlertMetric) -> Option<&AlertRule> {
        self.rules.iter().find(|rule| rule.metric == metric)
    }
}

fn invalid(index: usize, field: &str, reason: String) -> Error {
    Error::InvalidConfig { field: format!("alerts.rules[{index}].{field}"), reason }
}

/// The current values, each `None` when not measured.
///
/// A `None` (or a NaN) never fires and never clears an alert: the rule keeps its state, and a
/// pending rule keeps its timer, until a real value arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Observation {
    /// CPU use of the process, in percent of the whole machine (all cores busy = 100).
    pub cpu_percent: Option<f64>,
    /// Memory in use, in percent of the limit that applies.
    pub memory_percent: Option<f64>,
    /// Failed requests, in percent of all requests over the window.
    pub error_rate_percent: Option<f64>,
    /// Requests waiting for an instance.
    pub queue_depth: Option<f64>,
    /// The 99th percentile of request latency over the window, in milliseconds.
    pub p99_latency_ms: Option<f64>,
}

impl Observation {
    /// The value of `metric`, if it was measured.
    pub fn get(&self, metric: AlertMetric) -> Option<f64> {
        match metric {
            AlertMetric::CpuPercent => self.cpu_percent,
            AlertMetric::MemoryPercent => self.memory_percent,
            AlertMetric::ErrorRatePercent => self.error_rate_percent,
            AlertMetric::QueueDepth => self.queue_depth,
            AlertMetric::P99LatencyMs => self.p99_latency_ms,
        }
    }

    /// The value of `metric` if it was measured and is a number.
    fn measured(&self, metric: AlertMetric) -> Option<f64> {
        self.get(metric).filter(|value| !value.is_nan())
    }
}

/// An active alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// What fired.
    pub metric: AlertMetric,
    /// The latest value observed; below `threshold` while in the hysteresis band.
    pub value: f64,
    /// The rule's `fire_at`.
    pub threshold: f64,
    /// When the alert fired (the wall time given to the evaluation that fired it).
    pub since: SystemTime,
    /// The figures in words, kept up to date with `value`:
    /// `cpu at 91.2% (threshold 80%) for 10s`, where the duration is how long the value has
    /// stayed at or above the threshold; `cpu at 75% (threshold 80%, clears below 70%)` while
    /// it is in the hysteresis band.
    pub message: String,
}

/// What an evaluation changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AlertEvent {
    /// An alert fired: its value stayed at or above the threshold for the rule's duration.
    Fired(Alert),
    /// An active alert cleared: its value fell below the rule's `clear_below`.
    Cleared {
        /// What cleared.
        metric: AlertMetric,
        /// The value that cleared it.
        value: f64,
    },
}

/// Where one rule stands.
#[derive(Debug)]
enum RuleState {
    /// Below `fire_at`.
    Idle,
    /// At or above `fire_at` at every observation since `since`.
    Pending { since: Instant },
    /// Fired; `above_since` is when the value last reached `fire_at`, `None` while it is in the
    /// hysteresis band.
    Active { alert: Alert, above_since: Option<Instant> },
}

/// The alert engine: evaluates [`Observation`]s against an [`AlertConfig`].
///
/// Methods take `&self`, so one `Alerts` can be shared (in an `Arc`) between the sampler that
/// evaluates and the handlers that list active alerts. Nothing here reads a clock or runs in
/// the background: time passes only through the instants given to [`Alerts::evaluate`].
///
/// Subscribers ([`Alerts::subscribe`]) receive every [`AlertEvent`] in the order the
/// evaluations produced them. The channel holds 64 events: a subscriber that falls further
/// behind loses the oldest ones, and its next `recv` reports how many with
/// [`RecvError::Lagged`](tokio::sync::broadcast::error::RecvError::Lagged); it can resync
/// from [`Alerts::active`].
///
/// ```
/// use std::time::{Duration, SystemTime};
///
/// use perf_monitor::{AlertConfig, AlertEvent, AlertMetric, Alerts, Observation};
/// use tokio::time::Instant;
///
/// let alerts = Alerts::new(AlertConfig::default())?;
/// let start = Instant::now();
/// let busy = Observation { cpu_percent: Some(91.2), ..Observation::default() };
/// // At or above 80 % now, but not yet for the 10 s the default rule asks for.
/// assert!(alerts.evaluate(start, SystemTime::now(), &busy).is_empty());
/// let events = alerts.evaluate(start + Duration::from_secs(10), SystemTime::now(), &busy);
/// assert!(matches!(&events[..], [AlertEvent::Fired(alert)] if alert.metric == AlertMetric::CpuPercent));
/// assert_eq!(alerts.active()[0].message, "cpu at 91.2% (threshold 80%) for 10s");
/// # Ok::<(), perf_monitor::Error>(())
/// ```
#[derive(Debug)]
pub struct Alerts {
    config: AlertConfig,
    /// One state per rule, in the order of `config.rules`.
    states: Mutex<Vec<RuleState>>,
    events: broadcast::Sender<AlertEvent>,
}

impl Alerts {
    /// Creates the engine, every rule idle; fails when `config` does not
    /// [validate](AlertConfig::validate).
    pub fn new(config: AlertConfig) -> Result<Self> {
        config.validate()?;
        let states = config.rules.iter().map(|_| RuleState::Idle).collect();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Self { config, states: Mutex::new(states), events })
    }

    /// Evaluates `observation`, taken at `now` (monotonic; a `tokio::time::Instant` so that
    /// tests can run on the paused clock) and at `wall` (the time recorded as an alert's
    /// `since`): returns what fired or cleared, in the order of the rules, and sends the same
    /// events to subscribers.
    ///
    /// Each rule fires at the first evaluation at which its value has been at or above
    /// `fire_at` at every evaluation for at least `for_duration`, and clears at the first
    /// evaluation below `clear_below`; see [`AlertRule`]. A `now` earlier than a previous one
    /// counts as no time passing.
    pub fn evaluate(
        &self,
        now: Instant,
        wall: SystemTime,
        observation: &Observation,
    ) -> Vec<AlertEvent> {
        let mut states = self.states.lock();
        let mut events = Vec::new();
        for (rule, state) in self.config.rules.iter().zip(states.iter_mut()) {
            let Some(value) = observation.measured(rule.metric) else { continue };
            if let Some(event) = step(rule, state, value, now, wall) {
                events.push(event);
            }
        }
        // Sent under the lock so that concurrent evaluations reach subscribers in the order
        // their transitions happened. Sending fails only when nobody subscribes.
        for event in &events {
            let _ = self.events.send(event.clone());
        }
        events
    }

    /// The active alerts, sorted by metric.
    pub fn active(&self) -> Vec<Alert> {
        let states = self.states.lock();
        let mut active: Vec<Alert> = states
            .iter()
            .filter_map(|state| match state {
                RuleState::Active { alert, .. } => Some(alert.clone()),
                RuleState::Idle | RuleState::Pending { .. } => None,
            })
            .collect();
        active.sort_by_key(|alert| alert.metric);
        active
    }

    /// A receiver of every event from now on (see the type's docs on falling behind).
    pub fn subscribe(&self) -> broadcast::Receiver<AlertEvent> {
        self.events.subscribe()
    }

    /// The rules this engine evaluates.
    pub fn config(&self) -> &AlertConfig {
        &self.config
    }
}

/// Moves one rule on by one measured value; returns the event when it fired or cleared.
fn step(
    rule: &AlertRule,
    state: &mut RuleState,
    value: f64,
    now: Instant,
    wall: SystemTime,
) -> Option<AlertEvent> {
    match state {
        RuleState::Idle | RuleState::Pending { .. } if value < rule.fire_at => {
            // Below the threshold before firing: the duration has to start over.
            *state = RuleState::Idle;
            None
        }
        RuleState::Idle | RuleState::Pending { .. } => {
            let since = match *state {
                RuleState::Pending { since } => since,
                RuleState::Idle | RuleState::Active { .. } => now,
            };
            if now.saturating_duration_since(since) < rule.for_duration {
                *state = RuleState::Pending { since };
                return None;
            }
            let alert = Alert {
                metric: rule.metric,
                value,
                threshold: rule.fire_at,
                since: wall,
                message: alert_message(rule, value, Some(since), now),
            };
            *state = RuleState::Active { alert: alert.clone(), above_since: Some(since) };
            Some(AlertEvent::Fired(alert))
        }
        RuleState::Active { .. } if value < rule.clear_below => {
            *state = RuleState::Idle;
            Some(AlertEvent::Cleared { metric: rule.metric, value })
        }
        RuleState::Active { alert, above_since } => {
            *above_since = match (*above_since, value >= rule.fire_at) {
                (_, false) => None,
                (Some(since), true) => Some(since),
                (None, true) => Some(now),
            };
            alert.value = value;
            alert.message = alert_message(rule, value, *above_since, now);
            None
        }
    }
}

/// `cpu at 91.2% (threshold 80%) for 10s`, or with the clear level while in the band.
fn alert_message(
    rule: &AlertRule,
    value: f64,
    above_since: Option<Instant>,
    now: Instant,
) -> String {
    let metric = rule.metric;
    let mut message = format!("{} at {}", metric.label(), metric.figure(value));
    match above_since {
        Some(since) => {
            let _ = write!(message, " (threshold {})", metric.figure(rule.fire_at));
            let held = readable(now.saturating_duration_since(since));
            if !held.is_zero() {
                let _ = write!(
                    message,
                    " for {}",
                    humantime_serde::re::humantime::format_duration(held)
                );
            }
        }
        None => {
            let _ = write!(
                message,
                " (threshold {}, clears below {})",
                metric.figure(rule.fire_at),
                metric.figure(rule.clear_below)
            );
        }
    }
    message
}

/// Rounds a duration down for a message: whole seconds from one second up, else milliseconds.
fn readable(duration: Duration) -> Duration {
    if duration >= Duration::from_secs(1) {
        Duration::from_secs(duration.as_secs())
    } else {
        Duration::from_millis(duration.subsec_millis().into())
    }
}

/// A number with at most two decimals and no trailing zeros: `80`, `91.2`, `5.25`.
fn number(value: f64) -> String {
    let mut text = format!("{value:.2}");
    if text.contains('.') {
        let trimmed = text.trim_end_matches('0').trim_end_matches('.').len();
        text.truncate(trimmed);
    }
    if text == "-0" { "0".to_owned() } else { text }
}

/// A suggestion derived from the current figures, as the predecessor gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recommendation {
    /// What it is about: `health`, `cpu`, `memory`, `errors`, `queue` or `latency`.
    #[serde(rename = "type")]
    pub kind: String,
    /// How urgent it is.
    pub severity: Severity,
    /// The figure, the threshold and what to do.
    pub message: String,
}

/// How urgent a [`Recommendation`] is, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information: all is well.
    Info,
    /// A figure is approaching its threshold, or an alert is active but not far over it.
    Warning,
    /// An alert is active with its value at least 1.25 times the threshold.
    Critical,
}

/// The factor over the threshold from which an active alert is critical.
const CRITICAL_FACTOR: f64 = 1.25;

/// Suggestions from the current figures: exactly one, `health`/[`Severity::Info`]
/// "System operating within normal parameters", when nothing is wrong; otherwise one per
/// problem, most severe first (then by metric), each quoting the figure and the threshold.
///
/// A problem is
/// - an alert in `active`: [`Severity::Critical`] when its value (the one in `observation`
///   when measured, else the alert's) is at least 1.25 times the threshold, else
///   [`Severity::Warning`];
/// - a value in `observation` above its rule's `clear_below`, or at or above `fire_at`, whose
///   alert is not active (approaching, or pending for `for_duration`): [`Severity::Warning`].
///
/// The advice per metric: CPU — add instances on other hosts or lower
/// `max_instances`/`concurrency`; memory — lower cache sizes or `max_instances`; error rate —
/// check the failing endpoint(s); queue depth — raise `max_instances` or `queue_limit`; p99
/// latency — look at the slowest endpoint(s), cache their results or raise `max_instances`.
///
/// ```
/// use perf_monitor::{AlertConfig, Observation, Severity, recommendations};
///
/// let config = AlertConfig::default();
/// let calm = Observation { cpu_percent: Some(40.0), ..Observation::default() };
/// let advice = recommendations(&config, &calm, &[]);
/// assert_eq!(advice.len(), 1);
/// assert_eq!(advice[0].message, "System operating within normal parameters");
///
/// let warm = Observation { cpu_percent: Some(75.0), ..Observation::default() };
/// let advice = recommendations(&config, &warm, &[]);
/// assert_eq!((advice[0].kind.as_str(), advice[0].severity), ("cpu", Severity::Warning));
/// ```
pub fn recommendations(
    config: &AlertConfig,
    observation: &Observation,
    active: &[Alert],
) -> Vec<Recommendation> {
    let mut found: Vec<Recommendation> = AlertMetric::ALL
        .into_iter()
        .filter_map(|metric| {
            let rule = config.rule(metric);
            let value = observation.measured(metric);
            match active.iter().find(|alert| alert.metric == metric) {
                Some(alert) => Some(for_active(alert, rule, value.unwrap_or(alert.value))),
                None => for_inactive(rule?, value?),
            }
        })
        .collect();
    if found.is_empty() {
        return vec![Recommendation {
            kind: "health".to_owned(),
            severity: Severity::Info,
            message: HEALTHY.to_owned(),
        }];
    }
    // Stable: equal severities keep the metric order.
    found.sort_by_key(|recommendation| std::cmp::Reverse(recommendation.severity));
    found
}

/// The recommendation for an active alert whose value is now `value`.
fn for_active(alert: &Alert, rule: Option<&AlertRule>, value: f64) -> Recommendation {
    let metric = alert.metric;
    let severity = if value >= alert.threshold * CRITICAL_FACTOR {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let mut message = format!(
        "{} at {} (threshold {})",
        metric.title(),
        metric.figure(value),
        metric.figure(alert.threshold)
    );
    if value >= alert.threshold {
        if let Some(rule) = rule.filter(|rule| !rule.for_duration.is_zero()) {
            let held = humantime_serde::re::humantime::format_duration(rule.for_duration);
            let _ = write!(message, " for at least {held}");
        }
    } else {
        message.push_str(", alert still active");
        if let Some(rule) = rule {
            let _ = write!(message, " until below {}", metric.figure(rule.clear_below));
        }
    }
    let _ = write!(message, ": {}", metric.advice());
    recommendation(metric, severity, message)
}

/// The recommendation for a metric whose alert is not active, if its value is high enough.
fn for_inactive(rule: &AlertRule, value: f64) -> Option<Recommendation> {
    let metric = rule.metric;
    let status = if value >= rule.fire_at {
        if rule.for_duration.is_zero() {
            "over the threshold, alert pending".to_owned()
        } else {
            let held = humantime_serde::re::humantime::format_duration(rule.for_duration);
            format!("over the threshold, alert if it stays for {held}")
        }
    } else if value > rule.clear_below {
        "approaching the threshold".to_owned()
    } else {
        return None;
    };
    let message = format!(
        "{} at {} (threshold {}), {status}: {}",
        metric.title(),
        metric.figure(value),
        metric.figure(rule.fire_at),
        metric.advice()
    );
    Some(recommendation(metric, Severity::Warning, message))
}

fn recommendation(metric: AlertMetric, severity: Severity, message: String) -> Recommendation {
    Recommendation { kind: metric.recommendation_kind().to_owned(), severity, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn cpu(value: f64) -> Observation {
        Observation { cpu_percent: Some(value), ..Observation::default() }
    }

    fn cpu_rule(for_duration: Duration) -> AlertConfig {
        AlertConfig {
            rules: vec![AlertRule {
                metric: AlertMetric::CpuPercent,
                fire_at: 80.0,
                clear_below: 70.0,
                for_duration,
            }],
        }
    }

    /// Feeds `values`, one a second from `start`, and returns the events with the second
    /// at which each came.
    fn feed(alerts: &Alerts, start: Instant, values: &[f64]) -> Vec<(u64, AlertEvent)> {
        let mut events = Vec::new();
        for (second, &value) in (0u64..).zip(values) {
            let now = start + SECOND * u32::try_from(second).unwrap();
            for event in alerts.evaluate(now, SystemTime::UNIX_EPOCH, &cpu(value)) {
                events.push((second, event));
            }
        }
        events
    }

    fn is_fired(event: &AlertEvent) -> bool {
        matches!(event, AlertEvent::Fired(_))
    }

    #[test]
    fn does_not_fire_before_for_duration() {
        let alerts = Alerts::new(cpu_rule(10 * SECOND)).unwrap();
        let start = Instant::now();
        // Ten observations at 0..=9 s: up for 9 s only.
        assert!(feed(&alerts, start, &[90.0; 10]).is_empty());
        assert!(alerts.active().is_empty());
        let later = alerts.evaluate(
            start + Duration::from_millis(9_999),
            SystemTime::UNIX_EPOCH,
            &cpu(90.0),
        );
        assert!(later.is_empty());
        let events = alerts.evaluate(start + 10 * SECOND, SystemTime::UNIX_EPOCH, &cpu(90.0));
        assert_eq!(events.len(), 1);
        assert!(is_fired(&events[0]));
    }

    #[test]
    fn dip_below_fire_at_restarts_the_timer() {
        let alerts = Alerts::new(cpu_rule(10 * SECOND)).unwrap();
        let start = Instant::now();
        // Up at 0..=5 s, 75 (between clear_below and fire_at) at 6 s, up again from 7 s.
        let mut values = vec![90.0; 6];
        values.push(75.0);
        values.extend([90.0; 14]);
        let events = feed(&alerts, start, &values);
        // Not at 10 s (counting from 0 s) but at 17 s (counting from 7 s).
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, 17);
        assert!(is_fired(&events[0].1));
    }

    #[test]
    fn fires_exactly_once_while_it_stays_up() {
        let alerts = Alerts::new(cpu_rule(2 * SECOND)).unwrap();
        let events = feed(&alerts, Instant::now(), &[85.0, 90.0, 95.0, 99.0, 81.0, 100.0, 80.0]);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, 2);
        let active = alerts.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].value, 80.0, "value is the latest");
        assert_eq!(active[0].threshold, 80.0);
    }

    #[test]
    fn stays_active_in_the_hysteresis_band() {
        let alerts = Alerts::new(cpu_rule(SECOND)).unwrap();
        let events = feed(&alerts, Instant::now(), &[90.0, 90.0, 79.0, 70.0, 75.0, 85.0, 70.0]);
        assert_eq!(events.len(), 1, "only the firing: {events:?}");
        let active = alerts.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].value, 70.0);
        assert_eq!(active[0].message, "cpu at 70% (threshold 80%, clears below 70%)");
    }

    #[test]
    fn clears_once_below_clear_below() {
        let alerts = Alerts::new(cpu_rule(SECOND)).unwrap();
        let events = feed(&alerts, Instant::now(), &[90.0, 90.0, 69.9, 50.0, 10.0, 75.0]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            events[1],
            (2, AlertEvent::Cleared { metric: AlertMetric::CpuPercent, value: 69.9 })
        );
        assert!(alerts.active().is_empty());
    }

    #[test]
    fn fires_again_after_a_clear() {
        let alerts = Alerts::new(cpu_rule(2 * SECOND)).unwrap();
        let values = [90.0, 90.0, 90.0, 60.0, 90.0, 90.0, 90.0, 90.0];
        let events = feed(&alerts, Instant::now(), &values);
        let seconds: Vec<_> =
            events.iter().map(|(second, event)| (*second, is_fired(event))).collect();
        // Fired at 2 s, cleared at 3 s, up from 4 s and fired again once 2 s later.
        assert_eq!(seconds, [(2, true), (3, false), (6, true)]);
        assert_eq!(alerts.active().len(), 1);
    }

    #[test]
    fn zero_duration_fires_at_the_first_observation_at_the_threshold() {
        let alerts = Alerts::new(cpu_rule(Duration::ZERO)).unwrap();
        let start = Instant::now();
        assert!(alerts.evaluate(start, SystemTime::UNIX_EPOCH, &cpu(79.9)).is_empty());
        let events = alerts.evaluate(start, SystemTime::UNIX_EPOCH, &cpu(80.0));
        assert_eq!(events.len(), 1);
        let AlertEvent::Fired(alert) = &events[0] else { panic!("{events:?}") };
        assert_eq!(alert.message, "cpu at 80% (threshold 80%)");
        assert!(alerts.evaluate(start, SystemTime::UNIX_EPOCH, &cpu(80.0)).is_empty());
    }

    #[test]
    fn unmeasured_values_leave_the_state_alone() {
        let alerts = Alerts::new(cpu_rule(10 * SECOND)).unwrap();
        let start = Instant::now();
        let nothing = Observation::default();
        let nan = cpu(f64::NAN);
        assert!(alerts.evaluate(start, SystemTime::UNIX_EPOCH, &cpu(90.0)).is_empty());
        // Neither a gap nor a NaN restarts the timer or fires.
        assert!(alerts.evaluate(start + 5 * SECOND, SystemTime::UNIX_EPOCH, &nothing).is_empty());
        assert!(alerts.evaluate(start + 8 * SECOND, SystemTime::UNIX_EPOCH, &nan).is_empty());
        assert!(alerts.evaluate(start + 12 * SECOND, SystemTime::UNIX_EPOCH, &nothing).is_empty());
        let events = alerts.evaluate(start + 12 * SECOND, SystemTime::UNIX_EPOCH, &cpu(90.0));
        assert_eq!(events.len(), 1, "the timer ran on from 0 s");
        // Nor do they clear an active alert.
        assert!(alerts.evaluate(start + 13 * SECOND, SystemTime::UNIX_EPOCH, &nothing).is_empty());
        assert!(alerts.evaluate(start + 14 * SECOND, SystemTime::UNIX_EPOCH, &nan).is_empty());
        let active = alerts.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].value, 90.0);
    }

    #[test]
    fn fired_alert_records_wall_time_and_message() {
        let alerts = Alerts::new(cpu_rule(10 * SECOND)).unwrap();
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        alerts.evaluate(start, SystemTime::UNIX_EPOCH, &cpu(91.2));
        let events = alerts.evaluate(start + Duration::from_millis(10_400), wall, &cpu(91.2));
        let expected = Alert {
            metric: AlertMetric::CpuPercent,
            value: 91.2,
            threshold: 80.0,
            since: wall,
            message: "cpu at 91.2% (threshold 80%) for 10s".to_owned(),
        };
        assert_eq!(events, [AlertEvent::Fired(expected.clone())]);
        assert_eq!(alerts.active(), [expected]);
        // The message follows the value and how long it has been up.
        alerts.evaluate(start + 75 * SECOND, SystemTime::now(), &cpu(95.0));
        let active = alerts.active();
        assert_eq!(active[0].message, "cpu at 95% (threshold 80%) for 1m 15s");
        assert_eq!(active[0].since, wall, "since is when it fired");
    }

    #[test]
    fn messages_use_each_metric_unit() {
        let config = AlertConfig {
            rules: AlertConfig::default()
                .rules
                .into_iter()
                .map(|rule| AlertRule { for_duration: Duration::ZERO, ..rule })
                .collect(),
        };
        let alerts = Alerts::new(config).unwrap();
        let all = Observation {
            cpu_percent: Some(90.0),
            memory_percent: Some(90.0),
            error_rate_percent: Some(7.25),
            queue_depth: Some(150.0),
            p99_latency_ms: Some(1234.5),
        };
        alerts.evaluate(Instant::now(), SystemTime::UNIX_EPOCH, &all);
        let messages: Vec<_> = alerts.active().into_iter().map(|alert| alert.message).collect();
        assert_eq!(
            messages,
            [
                "cpu at 90% (threshold 80%)",
                "memory at 90% (threshold 85%)",
                "error rate at 7.25% (threshold 5%)",
                "queue depth at 150 (threshold 100)",
                "p99 latency at 1234.5 ms (threshold 1000 ms)",
            ]
        );
    }

    #[test]
    fn active_is_sorted_by_metric_whatever_the_rule_order() {
        let mut rules = AlertConfig::default().rules;
        rules.reverse();
        for rule in &mut rules {
            rule.for_duration = Duration::ZERO;
        }
        let alerts = Alerts::new(AlertConfig { rules }).unwrap();
        let high = Observation {
            cpu_percent: Some(99.0),
            memory_percent: None,
            error_rate_percent: Some(50.0),
            queue_depth: Some(500.0),
            p99_latency_ms: Some(5000.0),
        };
        let events = alerts.evaluate(Instant::now(), SystemTime::UNIX_EPOCH, &high);
        let fired: Vec<_> = events
            .iter()
            .map(|event| match event {
                AlertEvent::Fired(alert) => alert.metric,
                AlertEvent::Cleared { metric, .. } => *metric,
            })
            .collect();
        // Events come in rule order, the list in metric order.
        use AlertMetric::*;
        assert_eq!(fired, [P99LatencyMs, QueueDepth, ErrorRatePercent, CpuPercent]);
        let active: Vec<_> = alerts.active().into_iter().map(|alert| alert.metric).collect();
        assert_eq!(active, [CpuPercent, ErrorRatePercent, QueueDepth, P99LatencyMs]);
    }

    #[test]
    fn an_earlier_now_counts_as_no_time_passing() {
        let alerts = Alerts::new(cpu_rule(10 * SECOND)).unwrap();
        let start = Instant::now() + 60 * SECOND;
        alerts.evaluate(start, SystemTime::UNIX_EPOCH, &cpu(90.0));
        assert!(
            alerts.evaluate(start - 30 * SECOND, SystemTime::UNIX_EPOCH, &cpu(90.0)).is_empty()
        );
        assert_eq!(
            alerts.evaluate(start + 10 * SECOND, SystemTime::UNIX_EPOCH, &cpu(90.0)).len(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn subscribers_receive_fired_and_cleared_in_order() {
        let alerts = Alerts::new(cpu_rule(10 * SECOND)).unwrap();
        let mut first = alerts.subscribe();
        let mut second = alerts.subscribe();
        let mut returned = Vec::new();
        for value in [90.0, 90.0, 90.0, 60.0, 95.0, 95.0, 95.0, 50.0] {
            returned.extend(alerts.evaluate(Instant::now(), SystemTime::now(), &cpu(value)));
            tokio::time::advance(5 * SECOND).await;
        }
        let kinds: Vec<_> = returned.iter().map(is_fired).collect();
        assert_eq!(kinds, [true, false, true, false]);
        for receiver in [&mut first, &mut second] {
            let mut received = Vec::new();
            while let Ok(event) = receiver.try_recv() {
                received.push(event);
            }
            assert_eq!(received, returned);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_subscriber_loses_the_oldest_events() {
        let alerts = Alerts::new(cpu_rule(Duration::ZERO)).unwrap();
        let mut receiver = alerts.subscribe();
        let total = EVENT_CAPACITY + 6;
        for index in 0..total {
            let value = if index % 2 == 0 { 90.0 } else { 10.0 };
            assert_eq!(alerts.evaluate(Instant::now(), SystemTime::now(), &cpu(value)).len(), 1);
            tokio::time::advance(SECOND).await;
        }
        assert_eq!(
            receiver.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6)),
            "the six oldest are gone"
        );
        let mut kept = 0;
        while let Ok(event) = receiver.try_recv() {
            if kept == 0 {
                // Event number 6 (a firing, as every even one) is the oldest kept.
                assert!(is_fired(&event), "{event:?}");
            }
            kept += 1;
        }
        assert_eq!(kept, EVENT_CAPACITY);
    }

    #[test]
    fn evaluating_without_subscribers_is_fine() {
        let alerts = Alerts::new(cpu_rule(Duration::ZERO)).unwrap();
        drop(alerts.subscribe());
        assert_eq!(alerts.evaluate(Instant::now(), SystemTime::now(), &cpu(99.0)).len(), 1);
    }

    #[test]
    fn defaults_are_the_predecessors_thresholds() {
        let config = AlertConfig::default();
        config.validate().unwrap();
        let table: Vec<_> = config
            .rules
            .iter()
            .map(|rule| (rule.metric, rule.fire_at, rule.clear_below, rule.for_duration))
            .collect();
        let ten = 10 * SECOND;
        use AlertMetric::*;
        assert_eq!(
            table,
            [
                (CpuPercent, 80.0, 70.0, ten),
                (MemoryPercent, 85.0, 75.0, ten),
                (ErrorRatePercent, 5.0, 3.0, ten),
                (QueueDepth, 100.0, 80.0, ten),
                (P99LatencyMs, 1000.0, 800.0, ten),
            ]
        );
        let alerts = Alerts::new(config.clone()).unwrap();
        assert_eq!(alerts.config(), &config);
    }

    fn invalid_field(config: &AlertConfig) -> (String, String) {
        match config.validate() {
            Err(Error::InvalidConfig { field, reason }) => (field, reason),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let base = AlertConfig::default();

        let mut config = base.clone();
        config.rules[2].clear_below = 6.0;
        let (field, reason) = invalid_field(&config);
        assert_eq!(field, "alerts.rules[2].clear_below");
        assert_eq!(reason, "must not exceed fire_at (5), got 6");

        let mut config = base.clone();
        config.rules[1].fire_at = f64::NAN;
        assert_eq!(invalid_field(&config).0, "alerts.rules[1].fire_at");

        let mut config = base.clone();
        config.rules[4].clear_below = f64::NEG_INFINITY;
        let (field, reason) = invalid_field(&config);
        assert_eq!(field, "alerts.rules[4].clear_below");
        assert_eq!(reason, "must be a finite number, got -inf");

        let mut config = base.clone();
        config.rules[0].fire_at = f64::INFINITY;
        assert_eq!(invalid_field(&config).0, "alerts.rules[0].fire_at");

        let mut config = base.clone();
        config.rules[3].metric = AlertMetric::MemoryPercent;
        let (field, reason) = invalid_field(&config);
        assert_eq!(field, "alerts.rules[3].metric");
        assert_eq!(reason, "memory_percent already has a rule at alerts.rules[1]");

        let message = Alerts::new(config).unwrap_err().to_string();
        assert!(message.starts_with("invalid alerts.rules[3].metric: "), "{message}");
    }

    #[test]
    fn validation_accepts_edge_cases() {
        // No hysteresis band, a zero threshold and no rules at all are all allowed.
        let mut config = cpu_rule(Duration::ZERO);
        config.rules[0].clear_below = 80.0;
        config.validate().unwrap();
        config.rules[0].fire_at = 0.0;
        config.rules[0].clear_below = 0.0;
        config.validate().unwrap();
        AlertConfig { rules: Vec::new() }.validate().unwrap();
    }

    #[test]
    fn equal_levels_fire_and_clear_at_the_same_mark() {
        let mut config = cpu_rule(Duration::ZERO);
        config.rules[0].clear_below = 80.0;
        let alerts = Alerts::new(config).unwrap();
        let events = feed(&alerts, Instant::now(), &[80.0, 80.0, 79.99, 80.0]);
        let seconds: Vec<_> =
            events.iter().map(|(second, event)| (*second, is_fired(event))).collect();
        assert_eq!(seconds, [(0, true), (2, false), (3, true)]);
    }

    #[test]
    fn config_round_trips_through_serde_with_readable_durations() {
        let mut config = AlertConfig::default();
        config.rules[1].for_duration = Duration::from_secs(90);
        config.rules[2].for_duration = Duration::from_millis(1_500);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["rules"][0]["for_duration"], "10s");
        assert_eq!(json["rules"][1]["for_duration"], "1m 30s");
        assert_eq!(json["rules"][2]["metric"], "error_rate_percent");
        let back: AlertConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);

        let written = r#"{"rules": [{"metric": "queue_depth", "fire_at": 50, "clear_below": 20,
            "for_duration": "2m"}, {"metric": "p99_latency_ms", "fire_at": 500, "clear_below": 400}]}"#;
        let parsed: AlertConfig = serde_json::from_str(written).unwrap();
        assert_eq!(parsed.rules[0].for_duration, Duration::from_secs(120));
        assert_eq!(parsed.rules[1].for_duration, Duration::ZERO, "absent means zero");
        let empty: AlertConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, AlertConfig::default(), "absent rules mean the defaults");
    }

    #[test]
    fn config_refuses_unknown_keys_and_bad_values() {
        let errors = [
            r#"{"rules": [], "extra": 1}"#,
            r#"{"rules": [{"metric": "cpu_percent", "fire_at": 80, "clear_below": 70, "threshold": 1}]}"#,
            r#"{"rules": [{"metric": "disk_percent", "fire_at": 80, "clear_below": 70}]}"#,
            r#"{"rules": [{"metric": "cpu_percent", "fire_at": 80, "clear_below": 70, "for_duration": "soon"}]}"#,
            r#"{"rules": [{"metric": "cpu_percent", "fire_at": 80}]}"#,
        ];
        for text in errors {
            let result = serde_json::from_str::<AlertConfig>(text);
            assert!(result.is_err(), "{text} was accepted: {result:?}");
        }
        let error = serde_json::from_str::<AlertConfig>(errors[1]).unwrap_err().to_string();
        assert!(error.contains("unknown field `threshold`"), "{error}");
    }

    #[test]
    fn events_serialize_with_an_event_tag() {
        let fired = AlertEvent::Fired(Alert {
            metric: AlertMetric::QueueDepth,
            value: 150.0,
            threshold: 100.0,
            since: SystemTime::UNIX_EPOCH,
            message: "queue depth at 150 (threshold 100) for 10s".to_owned(),
        });
        let json = serde_json::to_value(&fired).unwrap();
        assert_eq!(json["event"], "fired");
        assert_eq!(json["metric"], "queue_depth");
        assert_eq!(json["threshold"], 100.0);
        let cleared = AlertEvent::Cleared { metric: AlertMetric::P99LatencyMs, value: 700.0 };
        assert_eq!(
            serde_json::to_value(&cleared).unwrap(),
            serde_json::json!({ "event": "cleared", "metric": "p99_latency_ms", "value": 700.0 })
        );
    }

    #[test]
    fn observation_get_matches_each_field() {
        let observation = Observation {
            cpu_percent: Some(1.0),
            memory_percent: Some(2.0),
            error_rate_percent: Some(3.0),
            queue_depth: Some(4.0),
            p99_latency_ms: Some(5.0),
        };
        let values: Vec<_> = AlertMetric::ALL.map(|metric| observation.get(metric)).to_vec();
        assert_eq!(values, [Some(1.0), Some(2.0), Some(3.0), Some(4.0), Some(5.0)]);
        let names =
            AlertMetric::ALL.map(|metric| (serde_json::to_value(metric).unwrap(), metric.as_str()));
        for (serialized, name) in names {
            assert_eq!(serialized, name);
        }
        let mut sorted = AlertMetric::ALL;
        sorted.sort();
        assert_eq!(sorted, AlertMetric::ALL);
    }

    #[test]
    fn numbers_are_written_briefly() {
        assert_eq!(number(80.0), "80");
        assert_eq!(number(91.2), "91.2");
        assert_eq!(number(5.25), "5.25");
        assert_eq!(number(91.234), "91.23");
        assert_eq!(number(-0.001), "0");
        assert_eq!(number(1e6), "1000000");
    }

    // Recommendations.

    fn healthy() -> Recommendation {
        Recommendation {
            kind: "health".to_owned(),
            severity: Severity::Info,
            message: "System operating within normal parameters".to_owned(),
        }
    }

    fn alert(metric: AlertMetric, value: f64, threshold: f64) -> Alert {
        Alert { metric, value, threshold, since: SystemTime::UNIX_EPOCH, message: String::new() }
    }

    #[test]
    fn healthy_figures_give_exactly_the_health_message() {
        let config = AlertConfig::default();
        let calm = Observation {
            cpu_percent: Some(45.67),
            memory_percent: Some(62.34),
            error_rate_percent: Some(1.2),
            queue_depth: Some(5.0),
            p99_latency_ms: Some(250.78),
        };
        assert_eq!(recommendations(&config, &calm, &[]), [healthy()]);
        assert_eq!(recommendations(&config, &Observation::default(), &[]), [healthy()]);
        // At the clear level exactly is not "above" it.
        assert_eq!(recommendations(&config, &cpu(70.0), &[]), [healthy()]);
        let json = serde_json::to_value(recommendations(&config, &calm, &[])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{ "type": "health", "severity": "info",
                "message": "System operating within normal parameters" }])
        );
    }

    #[test]
    fn each_active_alert_gets_its_own_recommendation_naming_the_figure() {
        let config = AlertConfig::default();
        use AlertMetric::*;
        let active = [
            alert(CpuPercent, 91.0, 80.0),
            alert(MemoryPercent, 90.0, 85.0),
            alert(ErrorRatePercent, 12.5, 5.0),
            alert(QueueDepth, 120.0, 100.0),
            alert(P99LatencyMs, 1300.0, 1000.0),
        ];
        let advice = recommendations(&config, &Observation::default(), &active);
        let summary: Vec<_> =
            advice.iter().map(|r| (r.kind.as_str(), r.severity, r.message.as_str())).collect();
        assert_eq!(
            summary,
            [
                (
                    "errors",
                    Severity::Critical,
                    "Error rate at 12.5% (threshold 5%) for at least 10s: check the failing \
                     endpoint(s) and their backends"
                ),
                (
                    "latency",
                    Severity::Critical,
                    "P99 latency at 1300 ms (threshold 1000 ms) for at least 10s: look at the \
                     slowest endpoint(s), cache their results or raise max_instances"
                ),
                (
                    "cpu",
                    Severity::Warning,
                    "CPU at 91% (threshold 80%) for at least 10s: add instances on other hosts \
                     or lower max_instances/concurrency"
                ),
                (
                    "memory",
                    Severity::Warning,
                    "Memory at 90% (threshold 85%) for at least 10s: lower cache sizes or \
                     max_instances"
                ),
                (
                    "queue",
                    Severity::Warning,
                    "Queue depth at 120 (threshold 100) for at least 10s: raise max_instances \
                     or queue_limit"
                ),
            ]
        );
    }

    #[test]
    fn critical_from_one_and_a_quarter_times_the_threshold() {
        let config = AlertConfig::default();
        let active = [alert(AlertMetric::CpuPercent, 90.0, 80.0)];
        let severity = |value| recommendations(&config, &cpu(value), &active)[0].severity;
        assert_eq!(severity(99.99), Severity::Warning);
        assert_eq!(severity(100.0), Severity::Critical);
        // Without a measurement the alert's own value counts.
        let unmeasured = recommendations(&config, &Observation::default(), &active);
        assert_eq!(unmeasured[0].severity, Severity::Warning);
        assert!(unmeasured[0].message.starts_with("CPU at 90% (threshold 80%)"));
    }

    #[test]
    fn an_alert_in_the_band_says_it_is_still_active() {
        let config = AlertConfig::default();
        let active = [alert(AlertMetric::MemoryPercent, 78.0, 85.0)];
        let observation = Observation { memory_percent: Some(78.0), ..Observation::default() };
        let advice = recommendations(&config, &observation, &active);
        assert_eq!(advice.len(), 1);
        assert_eq!(advice[0].severity, Severity::Warning);
        assert_eq!(
            advice[0].message,
            "Memory at 78% (threshold 85%), alert still active until below 75%: lower cache \
             sizes or max_instances"
        );
    }

    #[test]
    fn approaching_or_pending_values_give_warnings() {
        let config = AlertConfig::default();
        let observation = Observation {
            cpu_percent: Some(75.0),
            queue_depth: Some(100.0),
            p99_latency_ms: Some(2500.0),
            ..Observation::default()
        };
        let advice = recommendations(&config, &observation, &[]);
        let summary: Vec<_> =
            advice.iter().map(|r| (r.kind.as_str(), r.severity, r.message.as_str())).collect();
        assert_eq!(
            summary,
            [
                (
                    "cpu",
                    Severity::Warning,
                    "CPU at 75% (threshold 80%), approaching the threshold: add instances on \
                     other hosts or lower max_instances/concurrency"
                ),
                (
                    "queue",
                    Severity::Warning,
                    "Queue depth at 100 (threshold 100), over the threshold, alert if it stays \
                     for 10s: raise max_instances or queue_limit"
                ),
                (
                    "latency",
                    Severity::Warning,
                    "P99 latency at 2500 ms (threshold 1000 ms), over the threshold, alert if \
                     it stays for 10s: look at the slowest endpoint(s), cache their results or \
                     raise max_instances"
                ),
            ]
        );
    }

    #[test]
    fn recommendations_follow_the_engine() {
        let alerts = Alerts::new(AlertConfig::default()).unwrap();
        let start = Instant::now();
        let busy = Observation { error_rate_percent: Some(8.0), ..Observation::default() };
        alerts.evaluate(start, SystemTime::UNIX_EPOCH, &busy);
        let pending = recommendations(alerts.config(), &busy, &alerts.active());
        assert_eq!((pending.len(), pending[0].severity), (1, Severity::Warning));
        assert!(pending[0].message.contains("alert if it stays for 10s"), "{pending:?}");

        alerts.evaluate(start + 10 * SECOND, SystemTime::UNIX_EPOCH, &busy);
        let firing = recommendations(alerts.config(), &busy, &alerts.active());
        assert_eq!((firing.len(), firing[0].severity), (1, Severity::Critical));
        assert!(firing[0].message.starts_with("Error rate at 8% (threshold 5%)"), "{firing:?}");

        let calm = Observation { error_rate_percent: Some(1.0), ..Observation::default() };
        alerts.evaluate(start + 20 * SECOND, SystemTime::UNIX_EPOCH, &calm);
        assert_eq!(recommendations(alerts.config(), &calm, &alerts.active()), [healthy()]);
    }

    #[test]
    fn an_active_alert_without_a_rule_still_counts() {
        let config = AlertConfig { rules: Vec::new() };
        let active = [alert(AlertMetric::QueueDepth, 130.0, 100.0)];
        let advice = recommendations(&config, &Observation::default(), &active);
        assert_eq!(advice.len(), 1);
        assert_eq!(
            advice[0].message,
            "Queue depth at 130 (threshold 100): raise max_instances or queue_limit"
        );
        assert_eq!(advice[0].severity, Severity::Critical);
    }
}
