//! [`PoolConfig`]: the limits and timings of a pool, as plain data.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The limits and timings of a [`Pool`](crate::Pool).
///
/// Plain data with serde: durations are written as human-readable strings (`"250ms"`, `"30s"`,
/// `"5m"`), optional ones as `null` to turn the behaviour off, and unknown keys are errors.
/// Every field has a default (see [`PoolConfig::default`]), so a config file only names what
/// it changes: an absent field keeps its default, even an optional one.
///
/// A duration too long to add to the present moment, such as [`Duration::MAX`], means never:
/// an acquire with such a timeout waits as if it had none, an idle timeout that long never
/// evicts.
///
/// ```
/// let config: pool_core::PoolConfig =
///     serde_json::from_str(r#"{ "min": 2, "max": 8, "acquire_timeout": "5s" }"#).unwrap();
/// assert_eq!(config.max, 8);
/// assert_eq!(config.acquire_timeout, Some(std::time::Duration::from_secs(5)));
/// assert_eq!(config.concurrency, 1);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Instances kept warm: created in the background when the pool starts, restored after
    /// failures and destruction, and never evicted for being idle. Default 0.
    pub min: usize,
    /// The most instances alive at once, counting those being created and those waiting for
    /// their leases to come back before they are destroyed. One handed to
    /// [`Manager::destroy`](crate::Manager::destroy) no longer counts, so its replacement may
    /// start while it stops. Default 8.
    pub max: usize,
    /// Leases one instance carries at once: 1 makes every lease exclusive, N lets N requests
    /// share an instance. Default 1.
    pub concurrency: usize,
    /// Acquires allowed to wait for a busy instance to come back; one more fails at once with
    /// [`Error::QueueFull`]. Acquires that the creates running or still allowed under `max`
    /// will serve do not count, so a burst on a cold pool is not refused while it may grow.
    /// 0 means an acquire takes a free instance, waits for a create of its own, or fails at
    /// once. Default 64.
    pub queue_limit: usize,
    /// How long [`Pool::acquire`](crate::Pool::acquire) waits before failing with
    /// [`Error::Timeout`]. `None` waits until an instance is free or the pool shuts down, and
    /// keeps the waiting acquires off the timer. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Option<Duration>,
    /// How long one [`Manager::create`](crate::Manager::create) may take before it counts as
    /// failed. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub create_timeout: Duration,
    /// Creates running at once. Default 4.
    pub max_concurrent_creates: usize,
    /// The pause before the next create after one failure; it doubles with each further
    /// consecutive failure up to `create_backoff_max`, and resets on a success. Must be longer
    /// than zero: without a pause, a manager that fails at once (a daemon that refuses the
    /// connection) would be called again as fast as it fails. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub create_backoff: Duration,
    /// The longest pause between creates after repeated failures. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub create_backoff_max: Duration,
    /// An instance idle this long is destroyed, unless that would leave fewer than `min`.
    /// `None` keeps idle instances. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// An instance this old is retired the next time it is idle. `None` (the default) lets
    /// instances live forever.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
    /// An instance that has served this many leases is retired once they are all returned.
    /// `None` (the default) sets no limit.
    pub max_uses: Option<u64>,
    /// How often idle instances are checked with [`Manager::check`](crate::Manager::check);
    /// a failing instance is destroyed and replaced. `None` turns health checks off.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Option<Duration>,
    /// How long one health check may take before it counts as failed. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub health_check_timeout: Duration,
    /// Which instance an acquire gets when several have room. Default
    /// [`Selection::MostRecent`].
    pub selection: Selection,
    /// A lease held longer than this is reported with
    /// [`PoolEvent::LeakSuspected`](crate::PoolEvent::LeakSuspected). `None` (the default)
    /// turns leak detection off and keeps the clock off the acquire path.
    #[serde(with = "humantime_serde")]
    pub leak_threshold: Option<Duration>,
    /// The grace period given to [`Manager::destroy`](crate::Manager::destroy): how long an
    /// instance may take to stop on its own before it is forced. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub destroy_grace: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min: 0,
            max: 8,
            concurrency: 1,
            queue_limit: 64,
            acquire_timeout: Some(Duration::from_secs(30)),
            create_timeout: Duration::from_secs(30),
            max_concurrent_creates: 4,
            create_backoff: Duration::from_millis(100),
            create_backoff_max: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(300)),
            max_lifetime: None,
            max_uses: None,
            health_check_interval: Some(Duration::from_secs(30)),
            health_check_timeout: Duration::from_secs(5),
            selection: Selection::MostRecent,
            leak_threshold: None,
            destroy_grace: Duration::from_secs(10),
        }
    }
}

impl PoolConfig {
    /// Checks that the values make sense together; the error names the field and the value.
    pub fn validate(&self) -> Result<()> {
        validate_size(self.min, self.max)?;
        let positive = [
            ("concurrency", self.concurrency),
            ("max_concurrent_creates", self.max_concurrent_creates),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, format!("must be at least 1, got {value}")));
            }
        }
        if self.max_uses == Some(0) {
            return Err(invalid("max_uses", "must be at least 1 when set, got 0"));
        }
        let nonzero = [
            ("acquire_timeout", self.acquire_timeout),
            ("create_timeout", Some(self.create_timeout)),
            ("create_backoff", Some(self.create_backoff)),
            ("health_check_timeout", Some(self.health_check_timeout)),
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("health_check_interval", self.health_check_interval),
            ("leak_threshold", self.leak_threshold),
        ];
        for (field, value) in nonzero {
            if value == Some(Duration::ZERO) {
                return Err(invalid(field, "must be longer than zero"));
            }
        }
        if self.create_backoff > self.create_backoff_max {
            return Err(invalid(
                "create_backoff",
                format!(
                    "must not exceed create_backoff_max ({:?}), got {:?}",
                    self.create_backoff_max, self.create_backoff
                ),
            ));
        }
        Ok(())
    }

    /// The pause before the next create after `failures` consecutive failures.
    pub(crate) fn backoff_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.create_backoff.saturating_mul(1 << doublings).min(self.create_backoff_max)
    }
}

/// Checks a `min`/`max` pair, for the config and for [`Pool::resize`](crate::Pool::resize).
pub(crate) fn validate_size(min: usize, max: usize) -> Result<()> {
    if max == 0 {
        return Err(invalid("max", "must be at least 1, got 0"));
    }
    if min > max {
        return Err(invalid("min", format!("must not exceed max ({max}), got {min}")));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig { field, reason: reason.into() }
}

/// Which instance an acquire gets when several have room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The instance that has waited longest since its last use: spreads work over all of them.
    RoundRobin,
    /// The instance with the fewest leases; ties go to the one that waited longest.
    /// The same as `round_robin` when `concurrency` is 1.
    LeastLoaded,
    /// The instance returned last (the warmest), so that the others can idle out.
    #[default]
    MostRecent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_has_the_documented_defaults_and_round_trips() {
        let config: PoolConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, PoolConfig::default());
        config.validate().unwrap();
        // Every default as the field docs give it, written the way a config file would.
        let written = serde_json::to_value(&config).unwrap();
        assert_eq!(
            written,
            serde_json::json!({
                "min": 0,
                "max": 8,
                "concurrency": 1,
                "queue_limit": 64,
                "acquire_timeout": "30s",
                "create_timeout": "30s",
                "max_concurrent_creates": 4,
                "create_backoff": "100ms",
                "create_backoff_max": "30s",
                "idle_timeout": "5m",
                "max_lifetime": null,
                "max_uses": null,
                "health_check_interval": "30s",
                "health_check_timeout": "5s",
                "selection": "most_recent",
                "leak_threshold": null,
                "destroy_grace": "10s",
            })
        );
        let back: PoolConfig = serde_json::from_value(written).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn durations_read_as_human_strings_and_unknown_keys_are_refused() {
        let config: PoolConfig = serde_json::from_str(
            r#"{"idle_timeout": null, "max_lifetime": "1h", "selection": "least_loaded"}"#,
        )
        .unwrap();
        assert_eq!(config.idle_timeout, None);
        assert_eq!(config.max_lifetime, Some(Duration::from_secs(3600)));
        // Absent: the default, not off.
        assert_eq!(config.health_check_interval, Some(Duration::from_secs(30)));
        assert_eq!(config.acquire_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.selection, Selection::LeastLoaded);
        let config: PoolConfig = serde_json::from_str(r#"{"acquire_timeout": null}"#).unwrap();
        assert_eq!(config.acquire_timeout, None);
        config.validate().unwrap();

        let error = serde_json::from_str::<PoolConfig>(r#"{"maxx": 3}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `maxx`"), "{error}");
        let error =
            serde_json::from_str::<PoolConfig>(r#"{"acquire_timeout": "soon"}"#).unwrap_err();
        assert!(
            error.to_string().contains("soon") || error.to_string().contains("unit"),
            "{error}"
        );
    }

    #[test]
    fn invalid_values_name_the_field_and_the_value() {
        let cases = [
            (PoolConfig { max: 0, ..PoolConfig::default() }, "`max` must be at least 1, got 0"),
            (
                PoolConfig { min: 9, ..PoolConfig::default() },
                "`min` must not exceed max (8), got 9",
            ),
            (PoolConfig { concurrency: 0, ..PoolConfig::default() }, "`concurrency`"),
            (PoolConfig { max_uses: Some(0), ..PoolConfig::default() }, "`max_uses`"),
            (
                PoolConfig { idle_timeout: Some(Duration::ZERO), ..PoolConfig::default() },
                "`idle_timeout` must be longer than zero",
            ),
            (
                PoolConfig { create_backoff: Duration::ZERO, ..PoolConfig::default() },
                "`create_backoff` must be longer than zero",
            ),
            (
                PoolConfig { create_backoff: Duration::from_secs(60), ..PoolConfig::default() },
                "`create_backoff` must not exceed create_backoff_max (30s), got 60s",
            ),
        ];
        for (config, expected) in cases {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let config = PoolConfig {
            create_backoff: Duration::from_millis(100),
            create_backoff_max: Duration::from_secs(1),
            ..PoolConfig::default()
        };
        let pauses: Vec<u128> = (1..=6).map(|n| config.backoff_after(n).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(config.backoff_after(u32::MAX), Duration::from_secs(1));
    }
}
