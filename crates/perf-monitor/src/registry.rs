//! [`Registry`]: named, labelled counters, gauges and histograms, registered once and recorded
//! through cheap handles without a lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::histogram::{Clock, Core, Histogram};

/// The most series one family keeps by default; further label sets share one overflow series
/// whose labels all read `other`, so that outside input cannot grow memory without bound.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// A monotonically increasing count. Cheap to clone; `inc` is one atomic add.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Cheap to clone; `set` is one atomic store.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: f64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + delta).to_bits())
        });
    }

    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// The unit of a histogram's values, for exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Recorded in nanoseconds, exposed in seconds.
    Seconds,
    /// Bytes.
    Bytes,
    /// A plain number.
    None,
}

impl Unit {
    /// How many base units make one exposed unit.
    pub(crate) fn scale(self) -> f64 {
        match self {
            Unit::Seconds => 1e9,
            Unit::Bytes | Unit::None => 1.0,
        }
    }
}

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram(Unit),
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        }
    }
}

/// One series' storage.
#[derive(Debug, Clone)]
pub(crate) enum Series {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicU64>),
    Histogram(Arc<Core>),
}

/// Label pairs, sorted by name.
pub(crate) type Labels = Vec<(String, String)>;

/// Every series of one metric name.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) kind: Kind,
    pub(crate) help: String,
    pub(crate) label_names: Vec<String>,
    pub(crate) series: BTreeMap<Labels, Series>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) clock: Arc<Clock>,
    pub(crate) families: RwLock<BTreeMap<String, Family>>,
    max_series: usize,
}

/// Named, labelled metrics. Cheap to clone: clones share the metrics.
///
/// Registering takes a lock; recording through the returned handles never does. Registering
/// the same name and labels again returns the same series. Histograms keep their values over
/// the registry's window (default 60 s), in time slices that [`Registry::tick`] advances; the
/// monitor's background task ticks, and so does every query.
#[derive(Debug, Clone)]
pub struct Registry {
    pub(crate) inner: Arc<Inner>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl Registry {
    /// A registry whose histograms cover `window`.
    pub fn new(window: Duration) -> Self {
        Self::with_limits(window, DEFAULT_MAX_SERIES)
    }

    /// A registry whose families keep at most `max_series` label sets each.
    pub fn with_limits(window: Duration, max_series: usize) -> Self {
        let clock = Arc::new(Clock::new(window, Instant::now()));
        Self {
            inner: Arc::new(Inner {
                clock,
                families: RwLock::new(BTreeMap::new()),
                max_series: max_series.max(1),
            }),
        }
    }

    /// The window of the histograms: a query covers it plus up to a sixth of it more.
    pub fn window(&self) -> Duration {
        self.inner.clock.window()
    }

    /// Moves the histograms' current time slice to `now`'s.
    pub fn tick(&self) {
        self.inner.clock.tick(Instant::now());
    }

    /// The time the window spans right now (less while the registry is young).
    pub fn covered(&self) -> Duration {
        self.inner.clock.covered(Instant::now())
    }

    /// The counter `name` with `labels`. The exposed name gets `_total` appended.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Result<Counter> {
        match self.series(name, help, Kind::Counter, labels)? {
            Series::Counter(value) => Ok(Counter(value)),
            _ => unreachable!("the family's kind was checked"),
        }
    }

    /// The gauge `name` with `labels`.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Result<Gauge> {
        match self.series(name, help, Kind::Gauge, labels)? {
            Series::Gauge(value) => Ok(Gauge(value)),
            _ => unreachable!("the family's kind was checked"),
        }
    }

    /// The histogram `name` with `labels`, whose values are in `unit`'s base unit.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        unit: Unit,
        labels: &[(&str, &str)],
    ) -> Result<Histogram> {
        match self.series(name, help, Kind::Histogram(unit), labels)? {
            Series::Histogram(core) => Ok(Histogram::from_core(core)),
            _ => unreachable!("the family's kind was checked"),
        }
    }

    fn series(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
    ) -> Result<Series> {
        check_metric_name(name)?;
        let mut sorted: Labels = Vec::with_capacity(labels.len());
        for (label, value) in labels {
            check_label_name(label)?;
            sorted.push(((*label).to_owned(), (*value).to_owned()));
        }
        sorted.sort();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(Error::InvalidName {
                what: "label",
                name: pair[0].0.clone(),
                reason: "given twice".to_owned(),
            });
        }
        let names: Vec<String> = sorted.iter().map(|(label, _)| label.clone()).collect();
        if let Some(family) = self.inner.families.read().get(name) {
            check_family(name, family, kind, &names)?;
            if let Some(series) = family.series.get(&sorted) {
                return Ok(series.clone());
            }
        }
        let mut families = self.inner.families.write();
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            kind,
            help: help.to_owned(),
            label_names: names.clone(),
            series: BTreeMap::new(),
        });
        check_family(name, family, kind, &names)?;
        if !family.series.contains_key(&sorted) && family.series.len() >= self.inner.max_series {
            // Full: this label set shares the overflow series.
            sorted = names.iter().map(|label| (label.clone(), "other".to_owned())).collect();
        }
        let clock = &self.inner.clock;
        let series = family.series.entry(sorted).or_insert_with(|| match kind {
            Kind::Counter => Series::Counter(Arc::default()),
            Kind::Gauge => Series::Gauge(Arc::new(AtomicU64::new(0f64.to_bits()))),
            Kind::Histogram(_) => Series::Histogram(Core::new(clock.clone())),
        });
        Ok(series.clone())
    }

    /// How many handles share this registry (clones, the monitor, its task): a way to see
    /// that a task holding one has ended.
    pub fn strong_handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// How many series the registry holds.
    pub fn series_count(&self) -> usize {
        self.inner.families.read().values().map(|family| family.series.len()).sum()
    }
}

fn check_family(name: &str, family: &Family, kind: Kind, names: &[String]) -> Result<()> {
    if family.kind != kind {
        return Err(Error::KindMismatch {
            name: name.to_owned(),
            existing: family.kind.name(),
            requested: kind.name(),
        });
    }
    if family.label_names != names {
        return Err(Error::InvalidName {
            what: "name",
            name: name.to_owned(),
            reason: format!(
                "registered with the labels {:?}, now asked with {:?}",
                family.label_names, names
            ),
        });
    }
    Ok(())
}

/// Metric names: `[a-zA-Z_:][a-zA-Z0-9_:]*`, as Prometheus requires.
fn check_metric_name(name: &str) -> Result<()> {
    let valid_start = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':');
    let valid_rest = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if valid_start && valid_rest {
        return Ok(());
    }
    Err(Error::InvalidName {
        what: "name",
        name: name.to_owned(),
        reason: "a metric name is ASCII letters, digits, '_' and ':', not starting with a digit"
            .to_owned(),
    })
}

/// Label names: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved), not `le` or
/// `quantile` (used by histograms and summaries).
fn check_label_name(name: &str) -> Result<()> {
    let reason = if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Some("a label name is ASCII letters, digits and '_', not starting with a digit")
    } else if name.starts_with("__") {
        Some("names starting with '__' are reserved")
    } else if name == "le" || name == "quantile" {
        Some("`le` and `quantile` are set by the exposition")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidName {
            what: "label",
            name: name.to_owned(),
            reason: reason.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_of_one_series_share_it_and_kinds_cannot_mix() {
        let registry = Registry::default();
        let a = registry.counter("requests", "served", &[("fn", "a"), ("code", "200")]).unwrap();
        let again =
            registry.counter("requests", "served", &[("code", "200"), ("fn", "a")]).unwrap();
        a.inc();
        again.add(2);
        assert_eq!(a.get(), 3, "label order does not matter");
        let error = registry.gauge("requests", "", &[]).unwrap_err().to_string();
        assert!(error.contains("already registered as a counter"), "{error}");
        let error = registry.counter("requests", "", &[("fn", "a")]).unwrap_err().to_string();
        assert!(error.contains("registered with the labels"), "{error}");
        let gauge = registry.gauge("depth", "", &[]).unwrap();
        gauge.set(2.5);
        gauge.add(-1.0);
        assert_eq!(gauge.get(), 1.5);
    }

    #[test]
    fn bad_names_are_refused_naming_them() {
        let registry = Registry::default();
        for (name, label) in
            [("2xx", "ok"), ("a-b", "ok"), ("ok", "le"), ("ok", "__x"), ("ok", "a b")]
        {
            let error = registry.counter(name, "", &[(label, "v")]).unwrap_err().to_string();
            assert!(error.contains(name) || error.contains(label), "{error}");
        }
        let error = registry.counter("dup", "", &[("a", "1"), ("a", "2")]).unwrap_err();
        assert!(error.to_string().contains("given twice"), "{error}");
    }

    #[test]
    fn families_stop_growing_at_their_limit() {
        let registry = Registry::with_limits(Duration::from_secs(60), 3);
        for endpoint in 0..10 {
            let name = format!("/path/{endpoint}");
            registry.counter("hits", "", &[("endpoint", &name)]).unwrap().inc();
        }
        assert_eq!(registry.series_count(), 4, "three named series and the overflow");
        let other = registry.counter("hits", "", &[("endpoint", "other")]).unwrap();
        assert_eq!(other.get(), 7);
    }
}
