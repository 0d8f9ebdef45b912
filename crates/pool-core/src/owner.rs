//! Who owns an instance: the [`Scope`] every backend stamps on what it launches, so that a
//! restarted host finds and reaps what a killed one left behind.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;

/// The longest [`PoolName`] and [`FunctionName`](crate::FunctionName): it must fit a Docker or
/// Kubernetes label value (63 characters) and a file name.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a name used in labels, file names and URLs: 1 to 63 characters, ASCII letters,
/// digits, `-` and `_`, starting with a letter or digit.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), BackendError> {
    let reason = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!("it is {} characters long, the limit is {MAX_NAME_LEN}", name.len()))
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("it must start with an ASCII letter or digit".to_owned())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            .map(|c| format!("{c:?} is not allowed (only ASCII letters, digits, '-' and '_')"))
    };
    match reason {
        Some(reason) => {
            Err(BackendError::InvalidName { kind: kind.to_owned(), name: name.to_owned(), reason })
        }
        None => Ok(()),
    }
}

/// The name of a deployment — one `smgr` config, one application — shared by its successive
/// owners: a new owner reaps what dead owners of the same pool name left behind, and leaves
/// other pools alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolName(String);

impl PoolName {
    /// Checks `name` (1 to 63 ASCII letters, digits, `-` and `_`).
    pub fn new(name: impl Into<String>) -> Result<Self, BackendError> {
        let name = name.into();
        check_name("pool", &name)?;
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PoolName {
    type Error = BackendError;

    fn try_from(name: String) -> Result<Self, BackendError> {
        Self::new(name)
    }
}

impl From<PoolName> for String {
    fn from(name: PoolName) -> String {
        name.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one running owner — a process that launches instances — on one host:
/// `<pid>-<start>-<host>`, where `start` is the process's start time in clock ticks since
/// boot, so that a recycled pid is not mistaken for the owner.
///
/// Because the id says which process owns an instance, any later process on the same host can
/// tell whether that owner still runs ([`OwnerId::liveness`]) from the id alone: from a state
/// file, a container label or a pod label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OwnerId {
    text: String,
    pid: u32,
    start: u64,
}

/// Whether an owner still runs, as far as this host can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The owner's process runs.
    Alive,
    /// No process with the owner's pid and start time runs on this host.
    Dead,
    /// The owner ran on another host (or this platform cannot tell): leave its instances alone.
    Unknown,
}

impl OwnerId {
    /// The id of the current process.
    pub fn current() -> &'static OwnerId {
        static CURRENT: OnceLock<OwnerId> = OnceLock::new();
        CURRENT.get_or_init(|| {
            let pid = std::process::id();
            // Without /proc the start time is unknown; the pid alone then names the owner.
            let start = process_start(pid).unwrap_or(0);
            OwnerId::from_parts(pid, start, &host_name())
        })
    }

    /// The id of another process of this host, or `None` when it does not run.
    pub fn of_process(pid: u32) -> Option<OwnerId> {
        let start = process_start(pid)?;
        Some(OwnerId::from_parts(pid, start, &host_name()))
    }

    fn from_parts(pid: u32, start: u64, host: &str) -> OwnerId {
        let mut text = format!("{pid}-{start}-");
        // Keep the id label-safe and at most 63 characters: the host part is cut to fit.
        let room = MAX_NAME_LEN.saturating_sub(text.len());
        text.extend(
            host.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
                .take(room),
        );
        while text.ends_with('-') && text.len() > 1 {
            text.pop();
        }
        OwnerId { text, pid, start }
    }

    /// The owner's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the owner still runs. An owner of another host is [`Liveness::Unknown`].
    pub fn liveness(&self) -> Liveness {
        let this_host = OwnerId::current();
        if self.host() != this_host.host() || this_host.start == 0 {
            return Liveness::Unknown;
        }
        match process_start(self.pid) {
            Some(start) if start == self.start => Liveness::Alive,
            _ => Liveness::Dead,
        }
    }

    fn host(&self) -> &str {
        // The text is `<pid>-<start>-<host>`; the host may itself hold dashes.
        self.text.splitn(3, '-').nth(2).unwrap_or("")
    }
}

impl FromStr for OwnerId {
    type Err = BackendError;

    fn from_str(text: &str) -> Result<Self, BackendError> {
        let invalid = |reason: &str| BackendError::InvalidName {
            kind: "owner".to_owned(),
            name: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = text.splitn(3, '-');
        let pid = parts.next().and_then(|pid| pid.parse().ok());
        let start = parts.next().and_then(|start| start.parse().ok());
        match (pid, start) {
            (Some(pid), Some(start)) if text.len() <= MAX_NAME_LEN => {
                Ok(OwnerId { text: text.to_owned(), pid, start })
            }
            _ => Err(invalid("an owner id is `<pid>-<start>-<host>`, at most 63 characters")),
        }
    }
}

impl TryFrom<String> for OwnerId {
    type Error = BackendError;

    fn try_from(text: String) -> Result<Self, BackendError> {
        text.parse()
    }
}

impl From<OwnerId> for String {
    fn from(id: OwnerId) -> String {
        id.text
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a backend's instances belong: the pool name they serve and the owner that launched
/// them. Every backend stamps both on each instance (a state file, labels).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    /// The deployment the instances belong to.
    pub pool: PoolName,
    /// The process that launched them.
    pub owner: OwnerId,
}

impl Scope {
    /// A scope for `pool`, owned by the current process.
    pub fn current(pool: PoolName) -> Self {
        Self { pool, owner: OwnerId::current().clone() }
    }
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), or `None` when it does not run or the platform has no `/proc`.
pub fn process_start(pid: u32) -> Option<u64> {
    // `state` is field 3, `starttime` field 22.
    stat_after_name(pid)?.split_whitespace().nth(19)?.parse().ok()
}

/// The state of process `pid` (field 3 of `/proc/<pid>/stat`: `R`, `S`, `Z`...), or `None`
/// when it does not run or the platform has no `/proc`.
#[cfg(feature = "testkit")]
pub(crate) fn process_state(pid: u32) -> Option<char> {
    stat_after_name(pid)?.split_whitespace().next()?.chars().next()
}

/// The fields of `/proc/<pid>/stat` from field 3 on. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses: the fields after it start behind the last
/// ')'.
fn stat_after_name(pid: u32) -> Option<String> {
    let mut stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let end = stat.rfind(')')?;
    stat.drain(..=end);
    Some(stat)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_label_safe() {
        assert!(PoolName::new("gateway-1_a").is_ok());
        for bad in ["", "-lead", "has space", "dot.ted", &"x".repeat(64), "ünï"] {
            let error = PoolName::new(bad).expect_err(bad).to_string();
            assert!(error.contains("pool name"), "{error}");
        }
    }

    #[test]
    fn owner_ids_round_trip_and_fit_a_label() {
        let id = OwnerId::from_parts(42, 1234, "Build.Host.Example.COM");
        assert_eq!(id.as_str(), "42-1234-build-host-example-com");
        let parsed: OwnerId = id.as_str().parse().expect("a valid id");
        assert_eq!(parsed, id);
        let long = OwnerId::from_parts(4_000_000, u64::MAX, &"h".repeat(200));
        assert!(long.as_str().len() <= MAX_NAME_LEN);
        assert!("nonsense".parse::<OwnerId>().is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_current_process_is_alive_and_a_finished_one_dead() {
        assert_eq!(OwnerId::current().liveness(), Liveness::Alive);
        let mut child = std::process::Command::new("true").spawn().expect("`true` runs");
        let id = OwnerId::of_process(child.id());
        child.wait().expect("`true` ends");
        // The child may have ended before its start time was read.
        if let Some(id) = id {
            assert_eq!(id.liveness(), Liveness::Dead);
        }
        let recycled = OwnerId::from_parts(std::process::id(), 1, &host_name());
        assert_eq!(recycled.liveness(), Liveness::Dead, "same pid, other start time");
        let elsewhere = OwnerId::from_parts(std::process::id(), 1, "another-host");
        assert_eq!(elsewhere.liveness(), Liveness::Unknown);
    }
}
