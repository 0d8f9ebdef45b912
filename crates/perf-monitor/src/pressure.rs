//! Memory pressure: memory use against the limit that applies to this process, as levels that
//! subscribers watch and that make registered components shrink.

use std::fmt;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{Error, Result};

/// How close memory use is to its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PressureLevel {
    /// Below the medium threshold.
    Low,
    /// At or above [`PressureThresholds::medium`].
    Medium,
    /// At or above [`PressureThresholds::high`]: components are asked to shrink.
    High,
    /// At or above [`PressureThresholds::critical`]: components are asked to shrink again.
    Critical,
}

impl PressureLevel {
    /// The level's name as it is serialized: `low`, `medium`, `high` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    fn below(self) -> Self {
        match self {
            Self::Low | Self::Medium => Self::Low,
            Self::High => Self::Medium,
            Self::Critical => Self::High,
        }
    }
}

impl fmt::Display for PressureLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fractions of the limit at which each level starts; a level is left only when use falls
/// `hysteresis` below its start.
///
/// With the defaults, use rising to 0.86 of the limit is [`PressureLevel::High`]; it stays High
/// down to 0.80 and becomes [`PressureLevel::Medium`] below that.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PressureThresholds {
    /// Where [`PressureLevel::Medium`] starts (default 0.70).
    pub medium: f64,
    /// Where [`PressureLevel::High`] starts (default 0.85).
    pub high: f64,
    /// Where [`PressureLevel::Critical`] starts (default 0.95).
    pub critical: f64,
    /// How far below a level's start use must fall to leave it (default 0.05).
    pub hysteresis: f64,
}

impl Default for PressureThresholds {
    fn default() -> Self {
        Self { medium: 0.70, high: 0.85, critical: 0.95, hysteresis: 0.05 }
    }
}

impl PressureThresholds {
    /// Checks `0 < medium < high < critical <= 1` and `0 <= hysteresis < medium`; the error names
    /// the offending setting (`pressure.high`).
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &str, reason: String| {
            Err(Error::InvalidConfig { field: format!("pressure.{field}"), reason })
        };
        let Self { medium, high, critical, hysteresis } = *self;
        for (field, value) in
            [("medium", medium), ("high", high), ("critical", critical), ("hysteresis", hysteresis)]
        {
            if !value.is_finite() {
                return invalid(field, format!("must be a finite fraction, got {value}"));
            }
        }
        if medium <= 0.0 {
            return invalid("medium", format!("must be above 0, got {medium}"));
        }
        if high <= medium {
            return invalid(
                "high",
                format!("must be above pressure.medium ({medium}), got {high}"),
            );
        }
        if critical <= high {
            return invalid(
                "critical",
                format!("must be above pressure.high ({high}), got {critical}"),
            );
        }
        if critical > 1.0 {
            return invalid(
                "critical",
                format!("must be at most 1 (the whole limit), got {critical}"),
            );
        }
        if hysteresis < 0.0 || hysteresis >= medium {
            return invalid(
                "hysteresis",
                format!(
                    "must be at least 0 and below pressure.medium ({medium}), got {hysteresis}"
                ),
            );
        }
        Ok(())
    }

    /// Where `level` starts; `None` for [`PressureLevel::Low`], which has no start.
    fn start(&self, level: PressureLevel) -> Option<f64> {
        match level {
            PressureLevel::Low => None,
            PressureLevel::Medium => Some(self.medium),
            PressureLevel::High => Some(self.high),
            PressureLevel::Critical => Some(self.critical),
        }
    }

    /// The level after `current` when use is `fraction` of the limit: up at once to the level
    /// reached, down only past each level's start minus the hysteresis.
    fn level_after(&self, current: PressureLevel, fraction: f64) -> PressureLevel {
        let reached = if fraction >= self.critical {
            PressureLevel::Critical
        } else if fraction >= self.high {
            PressureLevel::High
        } else if fraction >= self.medium {
            PressureLevel::Medium
        } else {
            PressureLevel::Low
        };
        if reached >= current {
            return reached;
        }
        let mut level = current;
        while let Some(start) = self.start(level) {
            if fraction >= start - self.hysteresis {
                break;
            }
            level = level.below();
        }
        level
    }
}

/// The limit that applies to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum MemoryLimit {
    /// A memory limit set by this process's cgroup (or one of its ancestors).
    Cgroup {
        /// The limit, in bytes.
        bytes: u64,
    },
    /// No cgroup limit below the host's memory: the host's total memory.
    System {
        /// The host's total memory, in bytes.
        bytes: u64,
    },
}

impl MemoryLimit {
    /// The limit in bytes, whatever its source.
    pub fn bytes(self) -> u64 {
        match self {
            Self::Cgroup { bytes } | Self::System { bytes } => bytes,
        }
    }
}

/// Memory use against its limit.
///
/// [`read_memory_use`] reads it from the cgroup when the cgroup sets a limit, else from the
/// system's total and used memory.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MemoryUse {
    /// Memory in use, in bytes: the cgroup's usage (page cache included, as the kernel counts
    /// it) or, for a system limit, total minus available memory.
    pub used_bytes: u64,
    /// The limit the use is measured against.
    pub limit: MemoryLimit,
}

impl MemoryUse {
    /// `used_bytes / limit`; above 1 when use exceeds the limit (a limit of 0 counts as 1 byte).
    pub fn fraction(&self) -> f64 {
        self.used_bytes as f64 / self.limit.bytes().max(1) as f64
    }
}

/// Reads this process's memory use and the limit that applies (blocking: reads files).
///
/// The cgroup is found from `/proc/self/cgroup` under `/sys/fs/cgroup`: with cgroup v2,
/// `memory.max` and `memory.current`; with v1, `memory/…/memory.limit_in_bytes` and
/// `memory.usage_in_bytes`. The process's cgroup and its ancestors up to the mount point are
/// read, and the one closest to its limit is used. When the process's cgroup directory is not
/// visible (a container whose cgroup is mounted as the root), the mount point's own files are
/// read. A cgroup sets no limit when the file says `max` or gives a value at or above the host's
/// total memory (v1 writes a huge number for "none"); when no cgroup sets one, the limit is the
/// host's total memory and the use its total minus available memory.
///
/// # Errors
///
/// [`Error::Io`] when a cgroup file exists but cannot be read or parsed, or when the host's
/// memory cannot be read (a platform sysinfo does not support).
pub fn read_memory_use() -> Result<MemoryUse> {
    let proc_self_cgroup = match std::fs::read_to_string("/proc/self/cgroup") {
        Ok(text) => text,
        // Not Linux, or no procfs: no cgroup to read.
        Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(Error::Io { operation: "reading /proc/self/cgroup".into(), source });
        }
    };
    read_memory_use_from(Path::new("/sys/fs/cgroup"), &proc_self_cgroup, system_memory)
}

/// The host's used (total minus available) and total memory, in bytes; zeros where sysinfo does
/// not support the platform.
fn system_memory() -> (u64, u64) {
    match sysinfo::System::new() {
        Ok(mut system) => {
            system.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
            (system.used_memory(), system.total_memory())
        }
        Err(_) => (0, 0),
    }
}

/// Which cgroup files hold the memory limit and use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    fn limit_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.limit_in_bytes",
            Self::V2 => "memory.max",
        }
    }

    fn usage_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.usage_in_bytes",
            Self::V2 => "memory.current",
        }
    }
}

/// [`read_memory_use`] with the cgroup mount `root`, the text of `/proc/self/cgroup` and a source
/// of the host's `(used, total)` memory given.
pub(crate) fn read_memory_use_from(
    root: &Path,
    proc_self_cgroup: &str,
    system: impl FnOnce() -> (u64, u64),
) -> Result<MemoryUse> {
    let (system_used, system_total) = system();
    // The (used, limit) closest to its limit.
    let mut tightest: Option<(u64, u64)> = None;
    for (version, dir) in cgroup_memory_dirs(root, proc_self_cgroup) {
        let limit_path = dir.join(version.limit_file());
        let Some(limit_text) = read_if_present(&limit_path)? else {
            continue;
        };
        let Some(limit) =
            parse_limit(&limit_text).map_err(|source| io_error(&limit_path, source))?
        else {
            continue;
        };
        if system_total > 0 && limit >= system_total {
            continue;
        }
        let usage_path = dir.join(version.usage_file());
        let usage_text =
            std::fs::read_to_string(&usage_path).map_err(|source| io_error(&usage_path, source))?;
        let used = parse_bytes(&usage_text).map_err(|source| io_error(&usage_path, source))?;
        let closer = tightest.is_none_or(|(tight_used, tight_limit)| {
            u128::from(used) * u128::from(tight_limit.max(1))
                > u128::from(tight_used) * u128::from(limit.max(1))
        });
        if closer {
            tightest = Some((used, limit));
        }
    }
    match tightest {
        Some((used_bytes, bytes)) => {
            Ok(MemoryUse { used_bytes, limit: MemoryLimit::Cgroup { bytes } })
        }
        None if system_total == 0 => Err(Error::Io {
            operation: "reading the host's memory".into(),
            source: io::Error::new(io::ErrorKind::Unsupported, "no total memory reported"),
        }),
        None => Ok(MemoryUse {
            used_bytes: system_used.min(system_total),
            limit: MemoryLimit::System { bytes: system_total },
        }),
    }
}

/// The cgroup directories whose memory limit may apply, innermost first: for the v2 hierarchy
/// (mounted at `root`) and the v1 memory hierarchy (at `root/memory`) named in
/// `proc_self_cgroup`, the process's cgroup and its ancestors up to the mount point; only the
/// mount point when the process's cgroup is not visible under it.
pub(crate) fn cgroup_memory_dirs(
    root: &Path,
    proc_self_cgroup: &str,
) -> Vec<(CgroupVersion, PathBuf)> {
    let mut dirs = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (version, mount) = if id == "0" && controllers.is_empty() {
            (CgroupVersion::V2, root.to_path_buf())
        } else if controllers.split(',').any(|controller| controller == "memory") {
            (CgroupVersion::V1, root.join("memory"))
        } else {
            continue;
        };
        let relative = Path::new(path.trim_start_matches('/'));
        let inside_mount = relative.components().all(|part| matches!(part, Component::Normal(_)));
        let leaf = mount.join(relative);
        if inside_mount && leaf.is_dir() {
            let mut dir = leaf.as_path();
            loop {
                dirs.push((version, dir.to_path_buf()));
                match dir.parent() {
                    Some(parent) if dir != mount => dir = parent,
                    _ => break,
                }
            }
        } else {
            dirs.push((version, mount));
        }
    }
    dirs
}

/// The file's text, or `None` when it does not exist.
fn read_if_present(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error(path, source)),
    }
}

/// A limit file's value: `None` for `max` (v2's "no limit").
pub(crate) fn parse_limit(text: &str) -> io::Result<Option<u64>> {
    if text.trim() == "max" { Ok(None) } else { parse_bytes(text).map(Some) }
}

/// A byte count as cgroup files write it: decimal digits and a newline.
pub(crate) fn parse_bytes(text: &str) -> io::Result<u64> {
    text.trim().parse().map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, format!("expected a byte count, got {text:?}"))
    })
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io { operation: format!("reading {}", path.display()), source }
}

/// A level change.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PressureChange {
    /// The level before.
    pub from: PressureLevel,
    /// The level now.
    pub to: PressureLevel,
    /// Memory in use at the reading that changed the level, in bytes.
    pub used_bytes: u64,
    /// The limit it was measured against.
    pub limit: MemoryLimit,
}

/// The memory pressure monitor: turns [`MemoryUse`] readings into a [`PressureLevel`] with
/// hysteresis, tells subscribers when the level changes and asks registered components to shrink
/// when it rises to [`PressureLevel::High`] or [`PressureLevel::Critical`].
///
/// It takes no readings by itself: its owner calls [`sample`](Self::sample) (blocking) or
/// [`observe`](Self::observe) periodically. Clones share the same monitor.
///
/// ```
/// use perf_monitor::{MemoryLimit, MemoryPressure, MemoryUse, PressureLevel, PressureThresholds};
///
/// let pressure = MemoryPressure::new(PressureThresholds::default())?;
/// let _registration = pressure.register_shrink("cache", |level| {
///     // Drop entries; more of them at `PressureLevel::Critical`.
///     let _ = level;
/// });
/// let limit = MemoryLimit::Cgroup { bytes: 1_000 };
/// let change = pressure.observe(MemoryUse { used_bytes: 900, limit });
/// assert_eq!(change.map(|change| change.to), Some(PressureLevel::High));
/// # Ok::<(), perf_monitor::Error>(())
/// ```
#[derive(Clone)]
pub struct MemoryPressure {
    inner: Arc<Inner>,
}

struct Inner {
    thresholds: PressureThresholds,
    state: Mutex<State>,
    level_tx: watch::Sender<PressureLevel>,
    shrinkers: Mutex<Shrinkers>,
}

struct State {
    level: PressureLevel,
    last: Option<MemoryUse>,
}

#[derive(Default)]
struct Shrinkers {
    next_id: u64,
    entries: Vec<Arc<Shrinker>>,
}

struct Shrinker {
    id: u64,
    component: String,
    /// Cleared when the registration is dropped, so that a callback unregistered while others
    /// are being called is skipped.
    active: AtomicBool,
    shrink: Box<dyn Fn(PressureLevel) + Send + Sync>,
}

impl fmt::Debug for MemoryPressure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (level, last) = {
            let state = self.state.lock();
            (state.level, state.last)
        };
        let components: Vec<String> =
            self.shrinkers.lock().entries.iter().map(|entry| entry.component.clone()).collect();
        f.debug_struct("MemoryPressure")
            .field("thresholds", &self.thresholds)
            .field("level", &level)
            .field("last", &last)
            .field("components", &components)
            .finish()
    }
}

impl fmt::Debug for Shrinker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shrinker")
            .field("id", &self.id)
            .field("component", &self.component)
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl MemoryPressure {
    /// Creates a monitor at [`PressureLevel::Low`] with no reading yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the thresholds are invalid (see
    /// [`PressureThresholds::validate`]).
    pub fn new(thresholds: PressureThresholds) -> Result<Self> {
        thresholds.validate()?;
        let (level_tx, _) = watch::channel(PressureLevel::Low);
        Ok(Self {
            inner: Arc::new(Inner {
                thresholds,
                state: Mutex::new(State { level: PressureLevel::Low, last: None }),
                level_tx,
                shrinkers: Mutex::new(Shrinkers::default()),
            }),
        })
    }

    /// The thresholds in use.
    pub fn thresholds(&self) -> &PressureThresholds {
        &self.inner.thresholds
    }

    /// The current level.
    pub fn level(&self) -> PressureLevel {
        self.inner.state.lock().level
    }

    /// The last reading observed, if any.
    pub fn last(&self) -> Option<MemoryUse> {
        self.inner.state.lock().last
    }

    /// A receiver of the level: it holds the current level and is marked changed at each change.
    pub fn subscribe(&self) -> watch::Receiver<PressureLevel> {
        self.inner.level_tx.subscribe()
    }

    /// Calls `shrink(level)` each time the level rises to High or Critical (and again on each
    /// rise), until the returned registration is dropped.
    ///
    /// `shrink` runs on the thread that calls [`observe`](Self::observe) or
    /// [`sample`](Self::sample), with no lock of the monitor held: it may read the level, register
    /// or drop registrations. A callback registered while callbacks are being called is first
    /// called at the next rise; one dropped then is skipped, unless another thread had already
    /// started calling it.
    pub fn register_shrink(
        &self,
        component: &str,
        shrink: impl Fn(PressureLevel) + Send + Sync + 'static,
    ) -> ShrinkRegistration {
        let mut shrinkers = self.inner.shrinkers.lock();
        let id = shrinkers.next_id;
        shrinkers.next_id += 1;
        let shrinker = Arc::new(Shrinker {
            id,
            component: component.to_owned(),
            active: AtomicBool::new(true),
            shrink: Box::new(shrink),
        });
        shrinkers.entries.push(Arc::clone(&shrinker));
        ShrinkRegistration { pressure: Arc::downgrade(&self.inner), shrinker }
    }

    /// Takes a reading: updates the level (with hysteresis), tells subscribers and, when it rose
    /// to High or Critical, the shrink callbacks; returns the change if any.
    ///
    /// If a shrink callback panics, the other callbacks are still called, then the first panic is
    /// resumed; the level has been updated by then.
    pub fn observe(&self, reading: MemoryUse) -> Option<PressureChange> {
        let change = {
            let mut state = self.inner.state.lock();
            state.last = Some(reading);
            let from = state.level;
            let to = self.inner.thresholds.level_after(from, reading.fraction());
            if to == from {
                return None;
            }
            state.level = to;
            // Sent under the state lock so that subscribers see changes in the order they happen.
            self.inner.level_tx.send_replace(to);
            PressureChange { from, to, used_bytes: reading.used_bytes, limit: reading.limit }
        };
        if change.to > change.from && change.to >= PressureLevel::High {
            self.shrink(change.to);
        }
        Some(change)
    }

    /// [`read_memory_use`] then [`observe`](Self::observe) (blocking: reads files).
    ///
    /// # Errors
    ///
    /// The error of [`read_memory_use`]; the level is then unchanged.
    pub fn sample(&self) -> Result<Option<PressureChange>> {
        read_memory_use().map(|reading| self.observe(reading))
    }

    /// The registered components' names, in registration order.
    pub fn components(&self) -> Vec<String> {
        self.inner.shrinkers.lock().entries.iter().map(|entry| entry.component.clone()).collect()
    }

    fn shrink(&self, level: PressureLevel) {
        // Cloned out so that no lock is held while callbacks run.
        let shrinkers = self.inner.shrinkers.lock().entries.clone();
        let mut first_panic = None;
        for shrinker in shrinkers {
            if !shrinker.active.load(Ordering::Acquire) {
                continue;
            }
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (shrinker.shrink)(level))) {
                first_panic.get_or_insert(panic);
            }
        }
        if let Some(panic) = first_panic {
            resume_unwind(panic);
        }
    }
}

/// A shrink callback's registration with a [`MemoryPressure`]; dropping it unregisters the
/// callback.
#[derive(Debug)]
#[must_use = "dropping the registration unregisters the shrink callback"]
pub struct ShrinkRegistration {
    pressure: Weak<Inner>,
    shrinker: Arc<Shrinker>,
}

impl ShrinkRegistration {
    /// The component's name given at registration.
    pub fn component(&self) -> &str {
        &self.shrinker.component
    }
}

impl Drop for ShrinkRegistration {
    fn drop(&mut self) {
        self.shrinker.active.store(false, Ordering::Release);
        if let Some(inner) = self.pressure.upgrade() {
            inner.shrinkers.lock().entries.retain(|entry| entry.id != self.shrinker.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn cgroup(used_bytes: u64, bytes: u64) -> MemoryUse {
        MemoryUse { used_bytes, limit: MemoryLimit::Cgroup { bytes } }
    }

    /// A reading at `percent` of a 100-byte limit.
    fn at(percent: u64) -> MemoryUse {
        cgroup(percent, 100)
    }

    fn monitor() -> MemoryPressure {
        MemoryPressure::new(PressureThresholds::default()).expect("default thresholds are valid")
    }

    /// Records the levels its callback is called with.
    fn recorder(pressure: &MemoryPressure) -> (ShrinkRegistration, Arc<Mutex<Vec<PressureLevel>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let registration =
            pressure.register_shrink("recorder", move |level| seen.lock().push(level));
        (registration, calls)
    }

    #[test]
    fn levels_rise_at_once_and_fall_with_hysteresis() {
        let pressure = monitor();
        let steps = [
            (50, PressureLevel::Low),
            (70, PressureLevel::Medium),
            (86, PressureLevel::High),
            (95, PressureLevel::Critical),
            (91, PressureLevel::Critical),
            (89, PressureLevel::High),
            (83, PressureLevel::High),
            (79, PressureLevel::Medium),
            (66, PressureLevel::Medium),
            (64, PressureLevel::Low),
            (100, PressureLevel::Critical),
            (82, PressureLevel::High),
            (10, PressureLevel::Low),
        ];
        for (percent, expected) in steps {
            pressure.observe(at(percent));
            assert_eq!(pressure.level(), expected, "at {percent} %");
        }
        assert_eq!(pressure.last(), Some(at(10)));
    }

    #[test]
    fn observe_returns_the_change() {
        let pressure = monitor();
        assert_eq!(pressure.last(), None);
        assert_eq!(pressure.observe(at(10)), None);
        assert_eq!(
            pressure.observe(cgroup(900, 1_000)),
            Some(PressureChange {
                from: PressureLevel::Low,
                to: PressureLevel::High,
                used_bytes: 900,
                limit: MemoryLimit::Cgroup { bytes: 1_000 },
            })
        );
        assert_eq!(pressure.observe(cgroup(880, 1_000)), None);
    }

    #[test]
    fn use_above_the_limit_or_a_zero_limit_is_critical() {
        let pressure = monitor();
        pressure.observe(cgroup(2_000, 1_000));
        assert_eq!(pressure.level(), PressureLevel::Critical);
        pressure.observe(at(0));
        pressure.observe(cgroup(1, 0));
        assert_eq!(pressure.level(), PressureLevel::Critical);
    }

    #[test]
    fn subscribers_see_each_change() {
        let pressure = monitor();
        let mut rx = pressure.subscribe();
        assert_eq!(*rx.borrow_and_update(), PressureLevel::Low);
        pressure.observe(at(50));
        assert!(!rx.has_changed().expect("sender alive"), "no change, no notification");
        pressure.observe(at(90));
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(*rx.borrow_and_update(), PressureLevel::High);
        pressure.observe(at(70));
        assert_eq!(*rx.borrow_and_update(), PressureLevel::Medium);

        let late = pressure.subscribe();
        assert_eq!(*late.borrow(), PressureLevel::Medium, "a new subscriber starts at the level");
    }

    #[tokio::test]
    async fn subscribers_wake_on_a_change() {
        let pressure = monitor();
        let mut rx = pressure.subscribe();
        let observer = pressure.clone();
        let waiter = tokio::spawn(async move {
            rx.changed().await.expect("sender alive");
            *rx.borrow()
        });
        tokio::task::yield_now().await;
        observer.observe(at(97));
        assert_eq!(waiter.await.expect("waiter"), PressureLevel::Critical);
    }

    #[test]
    fn shrink_is_called_on_rises_to_high_and_critical_only() {
        let pressure = monitor();
        let (_registration, calls) = recorder(&pressure);
        for percent in [75, 86, 96, 90, 86, 70, 96, 50, 88, 97] {
            pressure.observe(at(percent));
        }
        use PressureLevel::{Critical, High};
        // 75 Medium: none; 86 High; 96 Critical; 90 High (fall); 86 High; 70 Medium (fall);
        // 96 Critical; 50 Low; 88 High; 97 Critical.
        assert_eq!(*calls.lock(), [High, Critical, Critical, High, Critical]);
    }

    #[test]
    fn dropping_the_registration_stops_calls() {
        let pressure = monitor();
        let (registration, calls) = recorder(&pressure);
        let (_other, other_calls) = recorder(&pressure);
        assert_eq!(registration.component(), "recorder");
        assert_eq!(pressure.components(), ["recorder", "recorder"]);
        pressure.observe(at(90));
        drop(registration);
        assert_eq!(pressure.components(), ["recorder"]);
        pressure.observe(at(10));
        pressure.observe(at(90));
        assert_eq!(calls.lock().len(), 1);
        assert_eq!(other_calls.lock().len(), 2);
    }

    #[test]
    fn a_registration_outliving_the_monitor_drops_quietly() {
        let pressure = monitor();
        let (registration, _calls) = recorder(&pressure);
        drop(pressure);
        drop(registration);
    }

    #[test]
    fn callbacks_may_use_the_monitor() {
        let pressure = monitor();
        let late_registrations = Arc::new(Mutex::new(Vec::new()));
        let seen_levels = Arc::new(Mutex::new(Vec::new()));
        let (victim, victim_calls) = recorder(&pressure);
        let victim = Arc::new(Mutex::new(Some(victim)));
        let _first = {
            let monitor = pressure.clone();
            let late_registrations = Arc::clone(&late_registrations);
            let seen_levels = Arc::clone(&seen_levels);
            let victim = Arc::clone(&victim);
            // Runs after the victim (registered first), then drops it and registers another.
            pressure.register_shrink("first", move |_| {
                seen_levels.lock().push((monitor.level(), monitor.components().len()));
                late_registrations.lock().push(monitor.register_shrink("late", |_| {}));
                victim.lock().take();
            })
        };
        pressure.observe(at(90));
        assert_eq!(*seen_levels.lock(), [(PressureLevel::High, 2)]);
        assert_eq!(pressure.components(), ["first", "late"]);
        assert_eq!(victim_calls.lock().len(), 1, "the victim was called before it was dropped");
    }

    #[test]
    fn a_callback_dropped_by_an_earlier_one_is_skipped() {
        let pressure = monitor();
        let later: Arc<Mutex<Option<ShrinkRegistration>>> = Arc::new(Mutex::new(None));
        let _dropper = {
            let later = Arc::clone(&later);
            pressure.register_shrink("dropper", move |_| {
                later.lock().take();
            })
        };
        let (registration, calls) = recorder(&pressure);
        *later.lock() = Some(registration);
        pressure.observe(at(90));
        assert!(calls.lock().is_empty(), "unregistered before its turn");
        assert_eq!(pressure.components(), ["dropper"]);
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_others_or_poison_the_monitor() {
        let pressure = monitor();
        let _panicker = pressure.register_shrink("panicker", |_| panic!("shrink failed"));
        let (_registration, calls) = recorder(&pressure);
        let result = catch_unwind(AssertUnwindSafe(|| pressure.observe(at(90))));
        assert!(result.is_err(), "the panic reaches the caller");
        assert_eq!(*calls.lock(), [PressureLevel::High], "the other callback ran");
        assert_eq!(pressure.level(), PressureLevel::High);
        let _more = pressure.register_shrink("more", |_| {});
        assert_eq!(pressure.components(), ["panicker", "recorder", "more"]);
        assert_eq!(pressure.observe(at(75)).map(|change| change.to), Some(PressureLevel::Medium));
    }

    #[test]
    fn shrink_runs_from_any_thread() {
        let pressure = monitor();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&count);
        let _registration = pressure.register_shrink("counter", move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let observer = pressure.clone();
        std::thread::spawn(move || observer.observe(at(99))).join().expect("observer thread");
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn default_thresholds_are_valid_and_deserialize_partially() {
        PressureThresholds::default().validate().expect("valid");
        let thresholds: PressureThresholds =
            serde_json::from_str(r#"{"high": 0.8}"#).expect("partial config");
        assert_eq!(thresholds, PressureThresholds { high: 0.8, ..PressureThresholds::default() });
        let unknown = serde_json::from_str::<PressureThresholds>(r#"{"hihg": 0.8}"#);
        assert!(unknown.is_err(), "unknown fields are rejected");
    }

    #[test]
    fn invalid_thresholds_name_the_field() {
        let base = PressureThresholds::default();
        let cases = [
            (PressureThresholds { medium: 0.0, ..base.clone() }, "pressure.medium"),
            (PressureThresholds { medium: f64::NAN, ..base.clone() }, "pressure.medium"),
            (PressureThresholds { high: 0.7, ..base.clone() }, "pressure.high"),
            (PressureThresholds { high: 0.96, ..base.clone() }, "pressure.critical"),
            (PressureThresholds { critical: 1.5, ..base.clone() }, "pressure.critical"),
            (PressureThresholds { hysteresis: -0.1, ..base.clone() }, "pressure.hysteresis"),
            (PressureThresholds { hysteresis: 0.7, ..base.clone() }, "pressure.hysteresis"),
            (PressureThresholds { hysteresis: f64::NAN, ..base.clone() }, "pressure.hysteresis"),
            (PressureThresholds { critical: f64::INFINITY, ..base.clone() }, "pressure.critical"),
        ];
        for (thresholds, expected) in cases {
            match thresholds.validate() {
                Err(Error::InvalidConfig { field, reason }) => {
                    assert_eq!(field, expected, "{thresholds:?}: {reason}");
                }
                other => panic!("{thresholds:?} gave {other:?}"),
            }
            assert!(MemoryPressure::new(thresholds).is_err());
        }
        let edge = PressureThresholds { critical: 1.0, hysteresis: 0.0, ..base };
        edge.validate().expect("critical at 1 and no hysteresis are allowed");
    }

    #[test]
    fn serializes_with_the_limit_source() {
        let json = serde_json::to_value(cgroup(1, 2)).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"used_bytes": 1, "limit": {"source": "cgroup", "bytes": 2}})
        );
        let json = serde_json::to_value(PressureLevel::Critical).expect("serializes");
        assert_eq!(json, "critical");
        assert_eq!(PressureLevel::High.to_string(), "high");
        let pressure = monitor();
        let _registration = pressure.register_shrink("cache", |_| {});
        let debug = format!("{pressure:?}");
        assert!(debug.starts_with("MemoryPressure {") && debug.contains("\"cache\""), "{debug}");
    }

    /// A directory under the system's temp dir, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new(name: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("perf-monitor-pressure-{}-{unique}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the fake cgroup root");
            Self(dir)
        }

        fn write(&self, relative: &str, text: &str) {
            let path = self.0.join(relative);
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create dirs");
            std::fs::write(path, text).expect("write a fake cgroup file");
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const GIB: u64 = 1 << 30;

    /// 3 GiB used of 16 GiB.
    fn host() -> (u64, u64) {
        (3 * GIB, 16 * GIB)
    }

    fn system_use() -> MemoryUse {
        MemoryUse { used_bytes: 3 * GIB, limit: MemoryLimit::System { bytes: 16 * GIB } }
    }

    #[test]
    fn cgroup_v2_without_a_limit_gives_the_system() {
        let root = FakeRoot::new("v2-max");
        root.write("user.slice/x/memory.max", "max\n");
        root.write("user.slice/x/memory.current", "1234\n");
        root.write("user.slice/memory.max", "max\n");
        root.write("user.slice/memory.current", "5678\n");
        let reading = read_memory_use_from(&root.0, "0::/user.slice/x\n", host).expect("reads");
        assert_eq!(reading, system_use());
    }

    #[test]
    fn cgroup_v2_limit_is_used() {
        let root = FakeRoot::new("v2-limit");
        root.write("user.slice/x/memory.max", "1073741824\n");
        root.write("user.slice/x/memory.current", "536870912\n");
        let reading = read_memory_use_from(&root.0, "0::/user.slice/x\n", host).expect("reads");
        assert_eq!(reading, cgroup(536_870_912, GIB));
        assert_eq!(reading.fraction(), 0.5);
    }

    #[test]
    fn cgroup_v2_ancestor_limit_applies() {
        let root = FakeRoot::new("v2-ancestor");
        root.write("a/b/c/memory.max", "max\n");
        root.write("a/b/c/memory.current", "100\n");
        root.write("a/b/memory.max", "8000\n");
        root.write("a/b/memory.current", "6000\n");
        root.write("a/memory.max", "4000\n");
        root.write("a/memory.current", "2000\n");
        let reading = read_memory_use_from(&root.0, "0::/a/b/c\n", host).expect("reads");
        assert_eq!(reading, cgroup(6_000, 8_000), "the cgroup closest to its limit");
    }

    #[test]
    fn cgroup_v2_namespaced_root_is_read() {
        let root = FakeRoot::new("v2-namespaced");
        root.write("memory.max", "2048\n");
        root.write("memory.current", "1024\n");
        let reading = read_memory_use_from(&root.0, "0::/\n", host).expect("reads");
        assert_eq!(reading, cgroup(1_024, 2_048));
    }

    #[test]
    fn cgroup_limit_at_or_above_the_host_memory_is_no_limit() {
        let root = FakeRoot::new("v2-huge");
        root.write("svc/memory.max", &format!("{}\n", 32 * GIB));
        root.write("svc/memory.current", "100\n");
        let reading = read_memory_use_from(&root.0, "0::/svc\n", host).expect("reads");
        assert_eq!(reading, system_use());
    }

    #[test]
    fn cgroup_v1_limit_is_used_and_huge_means_none() {
        let root = FakeRoot::new("v1");
        let proc_self_cgroup = "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        root.write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        root.write("memory/memory.usage_in_bytes", "999999\n");
        root.write("memory/docker/memory.limit_in_bytes", "9223372036854771712\n");
        root.write("memory/docker/memory.usage_in_bytes", "99999\n");
        root.write("memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
        root.write("memory/docker/abc/memory.usage_in_bytes", "9999\n");
        let reading = read_memory_use_from(&root.0, proc_self_cgroup, host).expect("reads");
        assert_eq!(reading, system_use());

        root.write("memory/docker/abc/memory.limit_in_bytes", "536870912\n");
        let reading = read_memory_use_from(&root.0, proc_self_cgroup, host).expect("reads");
        assert_eq!(reading, cgroup(9_999, 536_870_912));
    }

    #[test]
    fn cgroup_v1_mounted_at_the_containers_group_is_read_at_the_mount() {
        let root = FakeRoot::new("v1-mounted");
        root.write("memory/memory.limit_in_bytes", "4096\n");
        root.write("memory/memory.usage_in_bytes", "1024\n");
        let reading = read_memory_use_from(&root.0, "4:memory:/docker/not-visible-here\n", host)
            .expect("reads");
        assert_eq!(reading, cgroup(1_024, 4_096));
    }

    #[test]
    fn no_cgroup_gives_the_system() {
        let root = FakeRoot::new("none");
        assert_eq!(read_memory_use_from(&root.0, "", host).expect("reads"), system_use());
        let missing = root.0.join("does-not-exist");
        assert_eq!(
            read_memory_use_from(&missing, "0::/a\n4:memory:/a\n", host).expect("reads"),
            system_use()
        );
    }

    #[test]
    fn escaping_cgroup_paths_stay_at_the_mount() {
        let root = FakeRoot::new("escape");
        root.write("inner/memory.max", "4096\n");
        root.write("inner/memory.current", "4000\n");
        let dirs = cgroup_memory_dirs(&root.0.join("inner"), "0::/../../etc\n");
        assert_eq!(dirs, [(CgroupVersion::V2, root.0.join("inner"))]);
    }

    #[test]
    fn unreadable_cgroup_files_are_errors_naming_the_file() {
        let root = FakeRoot::new("garbage");
        root.write("svc/memory.max", "lots\n");
        match read_memory_use_from(&root.0, "0::/svc\n", host) {
            Err(Error::Io { operation, source }) => {
                assert!(operation.ends_with("memory.max"), "{operation}");
                assert_eq!(source.kind(), io::ErrorKind::InvalidData);
            }
            other => panic!("expected an error, got {other:?}"),
        }

        root.write("svc/memory.max", "4096\n");
        match read_memory_use_from(&root.0, "0::/svc\n", host) {
            Err(Error::Io { operation, .. }) => {
                assert!(operation.ends_with("memory.current"), "{operation}");
            }
            other => panic!("a limit without usage should fail, got {other:?}"),
        }
    }

    #[test]
    fn no_host_memory_is_an_error() {
        let root = FakeRoot::new("no-host");
        let result = read_memory_use_from(&root.0, "", || (0, 0));
        assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");
    }

    #[test]
    fn limit_and_usage_parse() {
        assert_eq!(parse_limit("max\n").expect("parses"), None);
        assert_eq!(parse_limit("1073741824\n").expect("parses"), Some(GIB));
        assert!(parse_limit("").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn this_machine_has_memory_in_use_and_a_limit() {
        let reading = read_memory_use().expect("reads this machine's memory");
        assert!(reading.used_bytes > 0, "{reading:?}");
        assert!(reading.limit.bytes() > 0, "{reading:?}");

        let pressure = monitor();
        pressure.sample().expect("samples");
        assert!(pressure.last().is_some_and(|last| last.limit.bytes() > 0));
    }
}
