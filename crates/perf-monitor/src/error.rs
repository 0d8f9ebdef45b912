//! The one error type of perf-monitor.

/// `Result` with perf-monitor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, naming the input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of its range or contradicts another.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting, as its config key (`alerts.cpu.clear_below`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A metric or label name breaks the Prometheus naming rules.
    #[error("invalid metric {what} {name:?}: {reason}")]
    InvalidName {
        /// `name` or `label`.
        what: &'static str,
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A metric was registered again with another kind (a counter as a gauge).
    #[error("metric {name:?} is already registered as a {existing}, not a {requested}")]
    KindMismatch {
        /// The metric's name.
        name: String,
        /// Its kind.
        existing: &'static str,
        /// The kind asked for.
        requested: &'static str,
    },
    /// Reading system or cgroup figures failed.
    #[error("{operation} failed: {source}")]
    Io {
        /// What was read (`reading /sys/fs/cgroup/memory.max`).
        operation: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
