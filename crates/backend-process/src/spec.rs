//! [`ProcessSpec`]: how to run one function as a child process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to start, watch and stop a function's process. Plain data: every field but `program`
/// has a default, and unknown keys are refused.
///
/// ```
/// use backend_process::{ProcessSpec, Readiness};
///
/// let spec: ProcessSpec = serde_json::from_value(serde_json::json!({
///     "program": "python3",
///     "args": ["hello.py", "--port", "{port}"],
///     "readiness": { "http": "/healthz" },
///     "startup_timeout": "5s",
/// }))
/// .unwrap();
/// assert_eq!(spec.readiness, Readiness::Http("/healthz".into()));
/// assert_eq!(spec.pass_env, ["PATH", "LANG"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// The program: a path (relative ones resolve against `working_dir`), or a bare name
    /// looked up in the `PATH` the child gets.
    pub program: PathBuf,
    /// Its arguments; `{port}` in any of them becomes the instance's port.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables set for the child, after the pass-through ones and `PORT`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The child's working directory; the host's when unset.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// When the instance counts as ready: the port accepts a connection (`"tcp"`, the default)
    /// or a path answers 2xx (`{ http = "/healthz" }`). An HTTP readiness path is also checked
    /// by every probe.
    #[serde(default)]
    pub readiness: Readiness,
    /// How long a new instance may take to get ready before it is stopped and the launch
    /// fails. Default 10 s.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// How long a stopping instance gets between SIGTERM and SIGKILL. Unset, the pool's
    /// `destroy_grace` applies.
    #[serde(default, with = "humantime_serde")]
    pub grace_period: Option<Duration>,
    /// Hand the child an already listening socket on fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`, as
    /// systemd does) instead of a port to bind: no port race, and connections made before the
    /// program accepts wait in the socket's backlog. The program must support it.
    #[serde(default)]
    pub socket_activation: bool,
    /// Resource limits (rlimits) of the child.
    #[serde(default)]
    pub limits: Limits,
    /// Run the child as this user id (the host must be allowed to switch to it).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Run the child with this group id.
    #[serde(default)]
    pub gid: Option<u32>,
    /// The host's environment variables passed through to the child; every other one is
    /// cleared. Default: `PATH` and `LANG`.
    #[serde(default = "default_pass_env")]
    pub pass_env: Vec<String>,
    /// How many of the latest stdout and stderr lines each instance keeps. Default 100.
    #[serde(default = "default_log_lines")]
    pub log_lines: usize,
}

pub use pool_core::Readiness;

/// Resource limits applied to the child with `setrlimit` before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Address space in bytes (`RLIMIT_AS`).
    pub memory_bytes: Option<u64>,
    /// CPU time in seconds (`RLIMIT_CPU`).
    pub cpu_seconds: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Processes of the child's user (`RLIMIT_NPROC`).
    pub processes: Option<u64>,
}

impl ProcessSpec {
    /// A spec running `program` with every default.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            readiness: Readiness::Tcp,
            startup_timeout: default_startup_timeout(),
            grace_period: None,
            socket_activation: false,
            limits: Limits::default(),
            uid: None,
            gid: None,
            pass_env: default_pass_env(),
            log_lines: default_log_lines(),
        }
    }

    /// The spec with these arguments.
    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }
}

fn default_startup_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_pass_env() -> Vec<String> {
    vec!["PATH".to_owned(), "LANG".to_owned()]
}

fn default_log_lines() -> usize {
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<ProcessSpec, String> {
        serde_json::from_value(json).map_err(|error| error.to_string())
    }

    #[test]
    fn defaults_fill_everything_but_the_program() {
        let spec = parse(serde_json::json!({ "program": "app" })).expect("parses");
        assert_eq!(spec, ProcessSpec::new("app"));
        assert_eq!(spec.startup_timeout, Duration::from_secs(10));
        assert_eq!(spec.readiness, Readiness::Tcp);
        assert!(parse(serde_json::json!({})).unwrap_err().contains("missing field `program`"));
    }

    #[test]
    fn bad_input_is_refused_naming_the_key() {
        let unknown = parse(serde_json::json!({ "program": "app", "programme": "x" })).unwrap_err();
        assert!(unknown.contains("unknown field `programme`"), "{unknown}");
        let duration =
            parse(serde_json::json!({ "program": "app", "startup_timeout": "soon" })).unwrap_err();
        assert!(duration.contains("soon") || duration.contains("duration"), "{duration}");
        let limit =
            parse(serde_json::json!({ "program": "app", "limits": { "memory": 1 } })).unwrap_err();
        assert!(limit.contains("unknown field `memory`"), "{limit}");
        let readiness =
            parse(serde_json::json!({ "program": "app", "readiness": "udp" })).unwrap_err();
        assert!(readiness.contains("udp"), "{readiness}");
    }
}
