//! [`DockerSpec`]: how to run one function as a container.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to create, watch and stop a function's containers. Plain data: every field but `image`
/// has a default, and unknown keys are refused.
///
/// ```
/// use backend_docker::{DockerSpec, PullPolicy, Readiness};
///
/// let spec: DockerSpec = serde_json::from_value(serde_json::json!({
///     "image": "registry.example/hello:1.2",
///     "command": ["--greeting", "hi"],
///     "readiness": { "http": "/healthz" },
///     "limits": { "memory_bytes": 134217728, "cpus": 0.5, "pids": 64 },
///     "pull": "never",
/// }))
/// .unwrap();
/// assert_eq!(spec.container_port, 8080);
/// assert_eq!(spec.pull, PullPolicy::Never);
/// assert!(spec.security.drop_all_capabilities && spec.security.no_new_privileges);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSpec {
    /// The image, as `docker run` takes it (`name[:tag]` or `name@digest`).
    pub image: String,
    /// The command (the image's `CMD` when unset).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The entrypoint (the image's `ENTRYPOINT` when unset).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables of the container, besides `PORT` and the instance's identity
    /// (`SMGR_POOL`, `SMGR_OWNER`, `SMGR_FUNCTION`, `SMGR_INSTANCE`), which the backend sets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The port the function listens on inside the container, on every interface; it is
    /// published on 127.0.0.1 with a port the engine picks, and passed as `$PORT`. Default
    /// 8080.
    #[serde(default = "default_container_port")]
    pub container_port: u16,
    /// When the instance counts as ready: the published port takes a connection that the
    /// function keeps open (`"tcp"`, the default), or a path answers 2xx
    /// (`{ http = "/healthz" }`). An HTTP readiness path is also checked by every probe.
    #[serde(default)]
    pub readiness: Readiness,
    /// How long a new container may take, from create to ready, before it is removed and the
    /// launch fails. A pull is not counted. Default 30 s.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// How long a stopping container gets between SIGTERM and SIGKILL; whole seconds, rounded
    /// up. Unset, the pool's `destroy_grace` applies.
    #[serde(default, with = "humantime_serde")]
    pub grace_period: Option<Duration>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Privileges: every capability dropped and no new privileges unless said otherwise.
    #[serde(default)]
    pub security: Security,
    /// The network to attach the container to (`docker run --network`); the engine's default
    /// bridge when unset. The port is published either way.
    #[serde(default)]
    pub network: Option<String>,
    /// Files copied into the container before it starts, with the engine's archive upload
    /// API, so that they reach a remote engine too.
    #[serde(default)]
    pub files: Vec<InjectedFile>,
    /// When to pull the image. Default `if_missing`.
    #[serde(default)]
    pub pull: PullPolicy,
    /// Labels added to the backend's own (`smgr.*`, which cannot be set here).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Run a minimal init (the engine's `docker-init`) as process 1, which forwards signals
    /// and reaps zombies: a program running as process 1 of a container gets no default
    /// signal handlers, so without it SIGTERM alone does not stop most programs. Default true.
    #[serde(default = "default_true")]
    pub init: bool,
}

pub use pool_core::Readiness;

/// Resource limits of a container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory in bytes (`--memory`).
    pub memory_bytes: Option<u64>,
    /// CPUs, fractions allowed (`--cpus`).
    pub cpus: Option<f64>,
    /// Processes and threads (`--pids-limit`).
    pub pids: Option<u64>,
}

/// The privileges of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Drop every Linux capability (`--cap-drop ALL`). Default true.
    #[serde(default = "default_true")]
    pub drop_all_capabilities: bool,
    /// Capabilities to keep when all are dropped (`--cap-add`), e.g. `NET_BIND_SERVICE`.
    #[serde(default)]
    pub add_capabilities: Vec<String>,
    /// Forbid gaining privileges (`--security-opt no-new-privileges`). Default true.
    #[serde(default = "default_true")]
    pub no_new_privileges: bool,
    /// Mount the root filesystem read-only, with a tmpfs on `/tmp` (`--read-only`). Default
    /// false. Files cannot be injected into a read-only root.
    #[serde(default)]
    pub read_only_root: bool,
    /// The user to run as (`--user`, `uid[:gid]` or a name the image knows).
    #[serde(default)]
    pub user: Option<String>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            drop_all_capabilities: true,
            add_capabilities: Vec::new(),
            no_new_privileges: true,
            read_only_root: false,
            user: None,
        }
    }
}

/// A file copied into the container before it starts: from a file of the host, or given
/// inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectedFile {
    /// Where it goes in the container: an absolute path. Missing directories are created.
    pub path: String,
    /// The host file to copy; read at each launch.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// The contents, when there is no `source`.
    #[serde(default)]
    pub contents: Option<String>,
    /// Permission bits. Default 0o644.
    #[serde(default = "default_mode")]
    pub mode: u32,
}

/// When to pull a function's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Never: the image must be on the engine already.
    Never,
    /// When the engine does not have it.
    #[default]
    IfMissing,
    /// Before the first launch of each backend, to pick up a moved tag.
    Always,
}

impl InjectedFile {
    /// The mode of a file that names none: `0o644`.
    pub const DEFAULT_MODE: u32 = 0o644;
}

impl DockerSpec {
    /// A spec running `image` with every default.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            command: None,
            entrypoint: None,
            env: BTreeMap::new(),
            container_port: default_container_port(),
            readiness: Readiness::default(),
            startup_timeout: default_startup_timeout(),
            grace_period: None,
            limits: Limits::default(),
            security: Security::default(),
            network: None,
            files: Vec::new(),
            pull: PullPolicy::default(),
            labels: BTreeMap::new(),
            init: true,
        }
    }

    /// With `command` as the container's command.
    pub fn command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = Some(command.into_iter().map(Into::into).collect());
        self
    }

    /// With an environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// With `readiness`.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// With the pull policy `pull`.
    pub fn pull(mut self, pull: PullPolicy) -> Self {
        self.pull = pull;
        self
    }
}

fn default_container_port() -> u16 {
    8080
}

fn default_startup_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_true() -> bool {
    true
}

fn default_mode() -> u32 {
    InjectedFile::DEFAULT_MODE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_locked_down() {
        let spec: DockerSpec = serde_json::from_str(r#"{"image": "x"}"#).unwrap();
        assert_eq!(spec, DockerSpec::new("x"));
        assert!(spec.security.drop_all_capabilities);
        assert!(spec.security.no_new_privileges);
        assert!(!spec.security.read_only_root);
        assert!(spec.init);
        assert_eq!(spec.pull, PullPolicy::IfMissing);
        assert_eq!(spec.startup_timeout, Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let error = serde_json::from_str::<DockerSpec>(r#"{"image": "x", "imgae": "y"}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("imgae"), "{error}");
        let error = serde_json::from_str::<DockerSpec>(r#"{"image": "x", "limits": {"cpu": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cpu"), "{error}");
    }
}
