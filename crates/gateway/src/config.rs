//! The `smgr` config file: what it may hold, how it is read, checked and resolved.
//!
//! A config names the gateway's [`ServerConfig`], the [`FunctionDefaults`] every function starts
//! from, and the functions themselves ([`FunctionConfig`]). It is TOML, YAML or JSON, chosen by
//! the file's extension ([`Format`]); `SMGR_*` environment variables override any value in it
//! (see [`Config::parse`]). Reading it reports every problem found rather than the first, each
//! with its file, line, column and dotted key ([`ConfigError`]), so that `smgr check` can list
//! them all at once.
//!
//! ```
//! use gateway::config::{Config, Format};
//!
//! let text = r#"
//! [functions.hello]
//! command = ["python3", "hello.py", "--port", "{port}"]
//! max_instances = "four"
//! "#;
//! let errors = Config::parse(text, Format::Toml, Some("smgr.toml".as_ref()), []).unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "smgr.toml:4:17: functions.hello.max_instances: \
//!      invalid type: string \"four\", expected usize",
//! );
//!
//! let env = [("SMGR_FUNCTIONS__HELLO__MAX_INSTANCES".to_owned(), "8".to_owned())];
//! let config = Config::parse(&text.replace("\"four\"", "2"), Format::Toml, None, env).unwrap();
//! assert_eq!(config.functions["hello"].max_instances, Some(8));
//! let functions = config.resolve("/srv/smgr".as_ref()).unwrap();
//! assert_eq!(functions[0].pool.max, 8);
//! assert_eq!(functions[0].spec.as_process().unwrap().args, ["hello.py", "--port", "{port}"]);
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use backend_docker::DockerSpec;
use backend_process::ProcessSpec;
use pool_core::{BackendError, FunctionName, PoolConfig, PoolName};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The prefix of the environment variables that override the config: `SMGR_SERVER__LISTEN`.
pub const ENV_PREFIX: &str = "SMGR_";

/// What separates the path segments of an override variable's name.
const ENV_SEPARATOR: &str = "__";

/// The top-level keys of a config.
const SECTIONS: [&str; 3] = ["server", "defaults", "functions"];

// ---------------------------------------------------------------------------------------------
// The config, as plain data
// ---------------------------------------------------------------------------------------------

/// The whole config file: the server, the defaults and the functions. Every part has defaults,
/// so an empty file is a valid config (with no functions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How the gateway listens and protects its admin routes.
    pub server: ServerConfig,
    /// The settings every function starts from; each may override any of them.
    pub defaults: FunctionDefaults,
    /// The functions served under `/fn/{name}/`, by name.
    pub functions: BTreeMap<String, FunctionConfig>,
}

/// How the gateway listens, limits requests and protects its admin routes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on. Default `127.0.0.1:8080`.
    #[schemars(with = "String", example = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The name of an environment variable holding the admin routes' bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_env: Option<String>,
    /// The admin routes' bearer token itself; set this or `admin_token_env`, not both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// The largest request body accepted: `"6MiB"`, `"512KiB"`, `"10MB"` or a number of bytes.
    /// Default 6 MiB.
    pub max_body: ByteSize,
    /// How long one request may take, queueing included. Default 30 s.
    #[serde(with = "duration")]
    #[schemars(with = "DurationText")]
    pub request_timeout: Duration,
    /// How long a shutdown waits for in-flight requests. Default 30 s.
    #[serde(with = "duration")]
    #[schemars(with = "DurationText")]
    pub shutdown_timeout: Duration,
    /// The pool name: instances that an earlier gateway with the same name left behind are
    /// reaped at start. Default `smgr`.
    pub pool: String,
    /// The process backend's state directory; its own default when unset
    /// (`$XDG_RUNTIME_DIR/smgr/process`). A relative path resolves against the config file's
    /// directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The Docker Engine of docker functions: `unix:///path/to/docker.sock` or
    /// `tcp://host:port`. Unset: `DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
    /// Containers created at once, at most, over every docker function; more launches wait.
    /// Default 8.
    pub docker_max_concurrent_creates: usize,
}

impl ServerConfig {
    /// The default listen address, `127.0.0.1:8080`.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Self::DEFAULT_LISTEN,
            admin_token_env: None,
            admin_token: None,
            max_body: ByteSize::mib(6),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            pool: "smgr".to_owned(),
            state_dir: None,
            docker_host: None,
            docker_max_concurrent_creates: 8,
        }
    }
}

// By hand so that the admin token stays out of logs.
impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("admin_token_env", &self.admin_token_env)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<hidden>"))
            .field("max_body", &self.max_body)
            .field("request_timeout", &self.request_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("pool", &self.pool)
            .field("state_dir", &self.state_dir)
            .field("docker_host", &self.docker_host)
            .field("docker_max_concurrent_creates", &self.docker_max_concurrent_creates)
            .finish()
    }
}

/// The settings every function starts from; each function may override any of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionDefaults {
    /// Instances kept warm, even when idle. Default 0.
    pub min_instances: usize,
    /// The most instances alive at once. Default 4.
    pub max_instances: usize,
    /// Requests one instance serves at once. Default 1.
    pub concurrency: usize,
    /// Requests allowed to wait for a busy instance; one more is refused with 429. Requests an
    /// instance being started (or still allowed under `max_instances`) will serve do not
    /// count; 0 refuses a request at once when every instance is busy and none may be added.
    /// Default 64.
    pub queue_limit: usize,
    /// How long a request waits for an instance before it is refused with 503. Default 10 s.
    #[serde(with = "duration")]
    #[schemars(with = "DurationText")]
    pub acquire_timeout: Duration,
    /// An instance idle this long is stopped (never below `min_instances`); `"off"` keeps idle
    /// instances. Default 5 min.
    #[serde(with = "switchable_duration")]
    #[schemars(with = "SwitchableDurationText")]
    pub idle_timeout: Option<Duration>,
    /// How long a new instance may take to get ready. Default 10 s.
    #[serde(with = "duration")]
    #[schemars(with = "DurationText")]
    pub startup_timeout: Duration,
    /// How long a stopping instance gets between SIGTERM and SIGKILL. Default 10 s.
    #[serde(with = "duration")]
    #[schemars(with = "DurationText")]
    pub grace_period: Duration,
    /// How often idle instances are probed; a failing one is replaced. `"off"` turns probes
    /// off. Default 30 s.
    #[serde(with = "switchable_duration")]
    #[schemars(with = "SwitchableDurationText")]
    pub health_check_interval: Option<Duration>,
}

impl Default for FunctionDefaults {
    fn default() -> Self {
        Self {
            min_instances: 0,
            max_instances: 4,
            concurrency: 1,
            queue_limit: 64,
            acquire_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            startup_timeout: Duration::from_secs(10),
            grace_period: Duration::from_secs(10),
            health_check_interval: Some(Duration::from_secs(30)),
        }
    }
}

/// One function: how to run it, and the [`FunctionDefaults`] it overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Where it runs: `process` (a child process, the default) or `docker` (a container).
    #[serde(default)]
    pub backend: BackendKind,
    /// `process`: the program and its arguments (required); `{port}` in any of them becomes
    /// the instance's port, and a relative program path (one containing `/`) resolves against
    /// the config file's directory. `docker`: the container's command (the image's `CMD` when
    /// unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `docker`, required: the image (`name[:tag]` or `name@digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `docker`: the port the function listens on in the container, on every interface, as
    /// `$PORT`. Default 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    /// `docker`: when to pull the image: `never`, `if_missing` (the default) or `always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullConfig>,
    /// `docker`: resource limits of each container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsConfig>,
    /// `docker`: privileges. Every capability is dropped and no new privileges are allowed
    /// unless this says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityConfig>,
    /// `docker`: the network to attach containers to; the engine's default bridge when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `docker`: files copied into each container before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileConfig>,
    /// `docker`: labels added to each container (the `smgr.*` labels are smgr's own).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `docker`: run a minimal init as process 1, which forwards SIGTERM to the function.
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Environment variables set for the instance. Numbers and booleans are taken as strings.
    #[serde(default, deserialize_with = "env_values")]
    #[schemars(with = "BTreeMap<String, EnvValueText>")]
    pub env: BTreeMap<String, String>,
    /// When an instance is ready: `"tcp"` (its port accepts connections, the default) or
    /// `{ http = "/healthz" }` (that path answers 2xx).
    #[serde(default)]
    pub readiness: Readiness,
    /// The instance's working directory, relative to the config file's directory. Default:
    /// the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
    /// Hand the instance an already listening socket on fd 3 (systemd style) instead of a
    /// port to bind. The program must support it. Default false.
    #[serde(default)]
    pub socket_activation: bool,
    /// The host's environment variables passed through to the instance; every other one is
    /// cleared. Default `["PATH", "LANG"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_env: Option<Vec<String>>,
    /// Overrides `defaults.min_instances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instances: Option<usize>,
    /// Overrides `defaults.max_instances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<usize>,
    /// Overrides `defaults.concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Overrides `defaults.queue_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_limit: Option<usize>,
    /// Overrides `defaults.acquire_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_duration")]
    #[schemars(with = "Option<DurationText>")]
    pub acquire_timeout: Option<Duration>,
    /// Overrides `defaults.idle_timeout` (`"off"` keeps idle instances).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_switchable")]
    #[schemars(with = "Option<SwitchableDurationText>")]
    pub idle_timeout: Option<Option<Duration>>,
    /// Overrides `defaults.startup_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_duration")]
    #[schemars(with = "Option<DurationText>")]
    pub startup_timeout: Option<Duration>,
    /// Overrides `defaults.grace_period`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_duration")]
    #[schemars(with = "Option<DurationText>")]
    pub grace_period: Option<Duration>,
    /// Overrides `defaults.health_check_interval` (`"off"` turns probes off).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_switchable")]
    #[schemars(with = "Option<SwitchableDurationText>")]
    pub health_check_interval: Option<Option<Duration>>,
}

impl FunctionConfig {
    /// The settings this function runs with: its own overrides over `defaults`.
    pub fn settings(&self, defaults: &FunctionDefaults) -> FunctionDefaults {
        FunctionDefaults {
            min_instances: self.min_instances.unwrap_or(defaults.min_instances),
            max_instances: self.max_instances.unwrap_or(defaults.max_instances),
            concurrency: self.concurrency.unwrap_or(defaults.concurrency),
            queue_limit: self.queue_limit.unwrap_or(defaults.queue_limit),
            acquire_timeout: self.acquire_timeout.unwrap_or(defaults.acquire_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(defaults.idle_timeout),
            startup_timeout: self.startup_timeout.unwrap_or(defaults.startup_timeout),
            grace_period: self.grace_period.unwrap_or(defaults.grace_period),
            health_check_interval: self
                .health_check_interval
                .unwrap_or(defaults.health_check_interval),
        }
    }

    /// Whether this function sets the [`FunctionDefaults`] field named `field` itself.
    fn overrides(&self, field: &str) -> bool {
        match field {
            "min_instances" => self.min_instances.is_some(),
            "max_instances" => self.max_instances.is_some(),
            "concurrency" => self.concurrency.is_some(),
            "queue_limit" => self.queue_limit.is_some(),
            "acquire_timeout" => self.acquire_timeout.is_some(),
            "idle_timeout" => self.idle_timeout.is_some(),
            "startup_timeout" => self.startup_timeout.is_some(),
            "grace_period" => self.grace_period.is_some(),
            "health_check_interval" => self.health_check_interval.is_some(),
            _ => false,
        }
    }

    /// This function with every [`FunctionDefaults`] field set to what it runs with.
    fn filled(&self, defaults: &FunctionDefaults) -> Self {
        let settings = self.settings(defaults);
        Self {
            pass_env: match self.backend {
                BackendKind::Process => {
                    Some(self.pass_env.clone().unwrap_or_else(default_pass_env))
                }
                BackendKind::Docker => self.pass_env.clone(),
            },
            min_instances: Some(settings.min_instances),
            max_instances: Some(settings.max_instances),
            concurrency: Some(settings.concurrency),
            queue_limit: Some(settings.queue_limit),
            acquire_timeout: Some(settings.acquire_timeout),
            idle_timeout: Some(settings.idle_timeout),
            startup_timeout: Some(settings.startup_timeout),
            grace_period: Some(settings.grace_period),
            health_check_interval: Some(settings.health_check_interval),
            ..self.clone()
        }
    }
}

/// Where a function runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A child process of the gateway.
    #[default]
    Process,
    /// A container on a Docker Engine.
    Docker,
}

impl BackendKind {
    /// The backends that exist in the project but are not part of this build.
    const UNAVAILABLE: [&str; 3] = ["k8s", "kubernetes", "worker"];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Docker => "docker",
        }
    }
}

/// When to pull a docker function's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullConfig {
    /// Never: the image must be on the engine.
    Never,
    /// When the engine does not have it.
    IfMissing,
    /// Before the first launch, to pick up a moved tag.
    Always,
}

impl From<PullConfig> for backend_docker::PullPolicy {
    fn from(pull: PullConfig) -> Self {
        match pull {
            PullConfig::Never => Self::Never,
            PullConfig::IfMissing => Self::IfMissing,
            PullConfig::Always => Self::Always,
        }
    }
}

/// Resource limits of a docker function's containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory (`"128MiB"`, or bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// CPUs, fractions allowed (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// A number of CPUs, fractions allowed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Cpus(pub f64);

impl PartialEq for Cpus {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Cpus {}

/// The privileges of a docker function's containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Drop every Linux capability. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_all_capabilities: Option<bool>,
    /// Capabilities to keep when all are dropped, e.g. `NET_BIND_SERVICE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_capabilities: Vec<String>,
    /// Forbid gaining privileges. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_new_privileges: Option<bool>,
    /// A read-only root filesystem with a tmpfs `/tmp`. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root: Option<bool>,
    /// The user to run as (`uid[:gid]` or a name the image knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A file copied into a docker function's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where it goes in the container: an absolute path.
    pub path: String,
    /// A file of the host to copy, relative to the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// The contents, when there is no `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    /// Permission bits, e.g. `0o600` in TOML or 384. Default 0o644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// How a resolved function runs.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendSpec {
    /// As a child process.
    Process(ProcessSpec),
    /// As a container.
    Docker(DockerSpec),
}

impl BackendSpec {
    /// The process spec, for a `process` function.
    pub fn as_process(&self) -> Option<&ProcessSpec> {
        match self {
            Self::Process(spec) => Some(spec),
            Self::Docker(_) => None,
        }
    }

    /// The docker spec, for a `docker` function.
    pub fn as_docker(&self) -> Option<&DockerSpec> {
        match self {
            Self::Docker(spec) => Some(spec),
            Self::Process(_) => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// By hand so that the backends of other builds get a message of their own.
impl<'de> Deserialize<'de> for BackendKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "process" => Ok(Self::Process),
            "docker" => Ok(Self::Docker),
            other if Self::UNAVAILABLE.contains(&other) => Err(de::Error::custom(format_args!(
                "backend `{other}` is not available in this build"
            ))),
            other => Err(de::Error::unknown_variant(other, &["process", "docker"])),
        }
    }
}

/// When a new instance counts as ready.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Its port accepts a TCP connection.
    #[default]
    Tcp,
    /// `GET` of this path (starting with `/`) answers 2xx.
    Http(String),
}

impl From<Readiness> for pool_core::Readiness {
    fn from(readiness: Readiness) -> Self {
        match readiness {
            Readiness::Tcp => Self::Tcp,
            Readiness::Http(path) => Self::Http(path),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes and durations
// ---------------------------------------------------------------------------------------------

/// A number of bytes, written `"6MiB"`, `"512KiB"`, `"10MB"`, `"1048576"` or as an integer.
///
/// Units are case-insensitive: `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) and
/// `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024); a fraction is allowed (`"1.5MiB"`).
///
/// ```
/// use gateway::config::ByteSize;
///
/// assert_eq!("6MiB".parse::<ByteSize>().unwrap(), ByteSize(6 * 1024 * 1024));
/// assert_eq!("10 MB".parse::<ByteSize>().unwrap(), ByteSize(10_000_000));
/// assert_eq!(ByteSize(512 * 1024).to_string(), "512KiB");
/// assert!("6 parsecs".parse::<ByteSize>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The units, largest first within each family, as written by [`Display`](fmt::Display).
    const UNITS: [(&str, u64); 9] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("B", 1),
    ];

    /// `n` kibibytes.
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0B");
        }
        let (unit, size) = Self::UNITS
            .into_iter()
            .find(|(_, size)| self.0.is_multiple_of(*size))
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / size)
    }
}

/// A size that [`ByteSize`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason}")]
pub struct InvalidByteSize {
    input: String,
    reason: String,
}

impl FromStr for ByteSize {
    type Err = InvalidByteSize;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| InvalidByteSize { input: input.to_owned(), reason };
        let text = input.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'));
        let (number, unit) = text.split_at(split.unwrap_or(text.len()));
        let number = number.replace('_', "");
        if number.is_empty() {
            return Err(invalid("expected a number of bytes, optionally with a unit".to_owned()));
        }
        let unit = unit.trim();
        let multiplier = match Self::UNITS.iter().find(|(name, _)| name.eq_ignore_ascii_case(unit))
        {
            Some((_, size)) => *size,
            None if unit.is_empty() => 1,
            None => {
                return Err(invalid(format!(
                    "unknown unit `{unit}` (expected B, KB, KiB, MB, MiB, GB, GiB, TB or TiB)"
                )));
            }
        };
        let too_large = || invalid("it does not fit in 64 bits".to_owned());
        if number.contains('.') {
            let value: f64 = number.parse().map_err(|_| invalid("not a number".to_owned()))?;
            let bytes = (value * multiplier as f64).round();
            if bytes >= u64::MAX as f64 {
                return Err(too_large());
            }
            // Checked above: finite, non-negative and in range.
            Ok(Self(bytes as u64))
        } else {
            let value: u64 = number.parse().map_err(|_| too_large())?;
            value.checked_mul(multiplier).map(Self).ok_or_else(too_large)
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"6MiB\", \"512KiB\" or \"10MB\", or a number of bytes")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
                u64::try_from(value)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(value), &self))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
                value.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: a number of bytes, or a string with a unit (B, KB, KiB, MB, \
                MiB, GB, GiB, TB, TiB), e.g. \"6MiB\".",
            "type": ["string", "integer"],
            "minimum": 0,
            "pattern": "^\\s*[0-9_]+(\\.[0-9_]*)?\\s*([KkMmGgTt][Ii]?)?[Bb]?\\s*$",
            "examples": ["6MiB", "512KiB", "10MB", 1048576],
        })
    }
}

/// The schema of a duration written for humantime: `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as \"30s\", \"5m\", \"1h 30m\" or \"250ms\".",
            "type": "string",
            "examples": ["30s", "5m", "250ms"],
        })
    }
}

/// The schema of a duration that may be turned off with `"off"`.
struct SwitchableDurationText;

impl JsonSchema for SwitchableDurationText {
    fn schema_name() -> Cow<'static, str> {
        "SwitchableDuration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as \"30s\" or \"5m\", or \"off\".",
            "type": ["string", "null"],
            "examples": ["5m", "off"],
        })
    }
}

/// The schema of an environment variable's value.
struct EnvValueText;

impl JsonSchema for EnvValueText {
    fn schema_name() -> Cow<'static, str> {
        "EnvValue".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

/// Durations as humantime strings, with humantime's reason when one does not parse.
mod duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }

    pub(super) struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"30s\", \"5m\" or \"250ms\"")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
            humantime::parse_duration(value)
                .map_err(|error| E::custom(format_args!("invalid duration {value:?}: {error}")))
        }
    }
}

/// `Option<Duration>` where `"off"` (or null) is `None`: TOML has no null.
mod switchable_duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => duration::serialize(value, serializer),
            None => serializer.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_option(SwitchableVisitor)
    }

    struct SwitchableVisitor;

    impl<'de> Visitor<'de> for SwitchableVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"30s\" or \"5m\", or \"off\"")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            if value.eq_ignore_ascii_case("off") {
                Ok(None)
            } else {
                duration::DurationVisitor.visit_str(value).map(Some)
            }
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_str(self)
        }
    }
}

/// An optional override of a duration: absent is `None`.
mod optional_duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => duration::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(deserializer).map(Some)
    }
}

/// An optional override of a switchable duration: absent is `None`, `"off"` is `Some(None)`.
mod optional_switchable {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Option<Duration>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => switchable_duration::serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<Duration>>, D::Error> {
        switchable_duration::deserialize(deserializer).map(Some)
    }
}

/// Reads an `env` table whose values may be numbers or booleans, as strings.
fn env_values<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct EnvValue(String);

    impl<'de> Deserialize<'de> for EnvValue {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct EnvVisitor;

            impl Visitor<'_> for EnvVisitor {
                type Value = EnvValue;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string, number or boolean")
                }

                fn visit_str<E: de::Error>(self, value: &str) -> Result<EnvValue, E> {
                    Ok(EnvValue(value.to_owned()))
                }

                fn visit_bool<E: de::Error>(self, value: bool) -> Result<EnvValue, E> {
                    Ok(EnvValue(value.to_string()))
                }

                fn visit_i64<E: de::Error>(self, value: i64) -> Result<EnvValue, E> {
                    Ok(EnvValue(value.to_string()))
                }

                fn visit_u64<E: de::Error>(self, value: u64) -> Result<EnvValue, E> {
                    Ok(EnvValue(value.to_string()))
                }

                fn visit_f64<E: de::Error>(self, value: f64) -> Result<EnvValue, E> {
                    Ok(EnvValue(value.to_string()))
                }
            }

            deserializer.deserialize_any(EnvVisitor)
        }
    }

    let values = BTreeMap::<String, EnvValue>::deserialize(deserializer)?;
    Ok(values.into_iter().map(|(key, EnvValue(value))| (key, value)).collect())
}

fn default_pass_env() -> Vec<String> {
    ProcessSpec::new("").pass_env
}

// ---------------------------------------------------------------------------------------------
// Formats and errors
// ---------------------------------------------------------------------------------------------

/// The syntax of a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// TOML (`.toml`).
    Toml,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// JSON (`.json`).
    Json,
}

impl Format {
    /// The format named by `path`'s extension (case-insensitive), if it is one.
    pub fn from_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "toml" => Some(Self::Toml),
            "yaml" | "yml" => Some(Self::Yaml),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Toml => "TOML",
            Self::Yaml => "YAML",
            Self::Json => "JSON",
        })
    }
}

/// One problem with a config, and where it is.
///
/// Displays as `file:line:column: key: reason`, leaving out the parts it does not have:
/// `smgr.toml:12:17: functions.hello.max_instances: invalid type: string "x", expected usize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file, when the problem is in one (not for environment variables).
    pub file: Option<PathBuf>,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// The 1-based column, in characters, when known.
    pub column: Option<usize>,
    /// The dotted key (`functions.hello.max_instances`), the environment variable
    /// (`SMGR_DEFAULTS__MAX_INSTANCES`), or empty for syntax errors.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// A problem with no location.
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { file: None, line: None, column: None, key: key.into(), reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line, self.column) {
            (Some(file), Some(line), Some(column)) => {
                write!(f, "{}:{line}:{column}: ", file.display())?;
            }
            (Some(file), Some(line), None) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None, _) => write!(f, "{}: ", file.display())?,
            (None, Some(line), Some(column)) => write!(f, "line {line}, column {column}: ")?,
            (None, Some(line), None) => write!(f, "line {line}: ")?,
            (None, None, _) => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config: those in the file in its order, then the others (the
/// environment variables') by key.
/// Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------------------------
// Loading, checking, resolving
// ---------------------------------------------------------------------------------------------

/// A function ready to start: its name, backend, pool settings and backend spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedFunction {
    /// Its name, checked.
    pub name: FunctionName,
    /// Where it runs.
    pub backend: BackendKind,
    /// Its pool's limits and timings.
    pub pool: PoolConfig,
    /// How its backend runs it, with absolute paths.
    pub spec: BackendSpec,
}

/// The spec the function's backend runs: paths resolved against `base_dir`. The function was
/// checked already.
fn backend_spec(
    function: &FunctionConfig,
    settings: &FunctionDefaults,
    base_dir: &Path,
) -> BackendSpec {
    match function.backend {
        BackendKind::Docker => BackendSpec::Docker(docker_spec(function, settings, base_dir)),
        BackendKind::Process => BackendSpec::Process(process_spec(function, settings, base_dir)),
    }
}

/// Why the function's backend would refuse `spec` when the gateway starts (its program not
/// found, a file source missing...), by the backend's own check: `None` when it takes it.
fn backend_refusal(name: FunctionName, spec: BackendSpec) -> Option<String> {
    let (backend, checked) = match spec {
        BackendSpec::Process(spec) => (
            BackendKind::Process,
            backend_process::check_spec(&pool_core::FunctionSpec { name, spec }),
        ),
        BackendSpec::Docker(spec) => (
            BackendKind::Docker,
            backend_docker::check_spec(&pool_core::FunctionSpec { name, spec }),
        ),
    };
    let reason = match checked.err()? {
        BackendError::InvalidSpec { reason, .. } => reason,
        other => other.to_string(),
    };
    Some(format!("the {} backend refuses this function: {reason}", backend.as_str()))
}

/// The process spec of a process function, paths resolved against `base_dir`. Its command is
/// not empty: the config was validated.
fn process_spec(
    function: &FunctionConfig,
    settings: &FunctionDefaults,
    base_dir: &Path,
) -> ProcessSpec {
    let (program, args) = function
        .command
        .as_deref()
        .unwrap_or_default()
        .split_first()
        .expect("a validated process function has a command");
    let program = if program.contains('/') {
        normalize(&base_dir.join(program))
    } else {
        PathBuf::from(program)
    };
    let working_dir = match &function.working_dir {
        Some(dir) => normalize(&base_dir.join(dir)),
        None => base_dir.to_path_buf(),
    };
    ProcessSpec {
        args: args.to_vec(),
        env: function.env.clone(),
        working_dir: Some(working_dir),
        readiness: function.readiness.clone().into(),
        startup_timeout: settings.startup_timeout,
        grace_period: Some(settings.grace_period),
        socket_activation: function.socket_activation,
        pass_env: function.pass_env.clone().unwrap_or_else(default_pass_env),
        ..ProcessSpec::new(program)
    }
}

/// The docker spec of a `docker` function, checked already; file sources resolve against
/// `base_dir`.
fn docker_spec(
    function: &FunctionConfig,
    settings: &FunctionDefaults,
    base_dir: &Path,
) -> DockerSpec {
    let base = DockerSpec::new(function.image.clone().unwrap_or_default());
    let defaults = &base.security;
    let security = function.security.clone().unwrap_or_default();
    let limits = function.limits.clone().unwrap_or_default();
    DockerSpec {
        command: function.command.clone().filter(|command| !command.is_empty()),
        env: function.env.clone(),
        container_port: function.container_port.unwrap_or(base.container_port),
        readiness: function.readiness.clone().into(),
        startup_timeout: settings.startup_timeout,
        grace_period: Some(settings.grace_period),
        limits: backend_docker::Limits {
            memory_bytes: limits.memory.map(|size| size.0),
            cpus: limits.cpus.map(|cpus| cpus.0),
            pids: limits.pids,
        },
        security: backend_docker::Security {
            drop_all_capabilities: security
                .drop_all_capabilities
                .unwrap_or(defaults.drop_all_capabilities),
            add_capabilities: security.add_capabilities,
            no_new_privileges: security.no_new_privileges.unwrap_or(defaults.no_new_privileges),
            read_only_root: security.read_only_root.unwrap_or(defaults.read_only_root),
            user: security.user,
        },
        network: function.network.clone(),
        files: function
            .files
            .iter()
            .map(|file| backend_docker::InjectedFile {
                path: file.path.clone(),
                source: file.source.as_ref().map(|source| normalize(&base_dir.join(source))),
                contents: file.contents.clone(),
                mode: file.mode.unwrap_or(backend_docker::InjectedFile::DEFAULT_MODE),
            })
            .collect(),
        pull: function.pull.map_or(base.pull, Into::into),
        labels: function.labels.clone(),
        init: function.init.unwrap_or(base.init),
        ..base
    }
}

/// How much longer than `startup_timeout` the pool waits for a create, so that the backend's
/// own startup error, with the instance's last log lines, is the one reported.
const CREATE_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

impl Config {
    /// Reads the config at `path` (TOML, YAML or JSON by its extension), applies the
    /// environment overrides found in `env` (pass [`std::env::vars`] in production), checks
    /// it, and returns it or every problem found.
    ///
    /// Beyond what [`Config::parse`] checks, each function that passes goes through its
    /// backend's own check on this machine, as the gateway's start will (the program found,
    /// `working_dir` and file sources present), with relative paths resolved against the
    /// file's directory: a config this accepts, the gateway takes.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let in_file = |reason: String| ConfigError {
            file: Some(path.to_owned()),
            ..ConfigError::new("", reason)
        };
        let format = Format::from_path(path).ok_or_else(|| {
            in_file(
                "unknown config format: the file name must end in .toml, .yaml, .yml or .json"
                    .to_owned(),
            )
        })?;
        let text = std::fs::read_to_string(path)
            .map_err(|error| in_file(format!("cannot read the config file: {error}")))?;
        let base_dir = absolute_dir(path.parent().unwrap_or(Path::new("")));
        Self::read(&text, format, Some(path), env, Some(base_dir))
    }

    /// Reads a config from `text`, applies the environment overrides found in `env`, checks it,
    /// and returns it or every problem found; `file` names the text in errors.
    ///
    /// An override is a variable named `SMGR_` and the path of a key, its segments separated by
    /// `__` and matched case-insensitively: `SMGR_SERVER__LISTEN=0.0.0.0:9000`,
    /// `SMGR_DEFAULTS__MAX_INSTANCES=8`, `SMGR_FUNCTIONS__HELLO__MAX_INSTANCES=8`. A function
    /// segment must name a function of the config. The value is read as a TOML value when it
    /// is one (`8`, `true`, `["a", "b"]`, `{ http = "/healthz" }`) and as a string otherwise
    /// (`0.0.0.0:9000`, `30s`); when the TOML reading has the wrong type for its key, the
    /// variable's text is tried as a string (`SMGR_SERVER__ADMIN_TOKEN=12345`). Other
    /// variables, `SMGR_ADMIN_TOKEN` among them (no `__`), are ignored. Errors in an overridden
    /// value name the variable as their key, and no file.
    ///
    /// Unlike [`Config::load`], it leaves out the backends' own checks, which look at the disk
    /// around the file.
    pub fn parse(
        text: &str,
        format: Format,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        Self::read(text, format, file, env, None)
    }

    fn read(
        text: &str,
        format: Format,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        backend_base: Option<PathBuf>,
    ) -> Result<Config, ConfigErrors> {
        let document = Document::parse(text, format).map_err(|errors| {
            let located = errors.into_iter().map(|(position, reason)| ConfigError {
                file: file.map(Path::to_owned),
                line: position.map(|(line, _)| line),
                column: position.map(|(_, column)| column),
                ..ConfigError::new("", reason)
            });
            ConfigErrors(located.collect())
        })?;
        let mut loader = Loader {
            document,
            file: file.map(Path::to_owned),
            backend_base,
            errors: Vec::new(),
            overrides: Vec::new(),
        };
        loader.apply_env(env);
        let config = loader.read();
        let mut errors = loader.errors;
        // The file's order first, then the variables' by name.
        errors.sort_by(|a, b| {
            let unlocated = a.line.is_none() && b.line.is_none();
            (a.line.is_none(), a.line, a.column)
                .cmp(&(b.line.is_none(), b.line, b.column))
                .then_with(|| if unlocated { a.key.cmp(&b.key) } else { std::cmp::Ordering::Equal })
        });
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Checks a config built in code as [`Config::parse`] checks a text: every problem, by key.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut issues = server_issues(&self.server);
        issues.extend(defaults_issues(&self.defaults, &|_| false));
        for (name, function) in &self.functions {
            issues.extend(function_issues(name, function, &self.defaults, &|_| false));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            let errors =
                issues.into_iter().map(|issue| ConfigError::new(dotted(&issue.path), issue.reason));
            Err(ConfigErrors(errors.collect()))
        }
    }

    /// The functions ready to start, in name order.
    ///
    /// `base_dir` is the config file's directory (made absolute against the current
    /// directory): a relative program in `command[0]` (one containing `/`) and a relative
    /// `working_dir` resolve against it, and a function without a `working_dir` runs in it, so
    /// that relative paths among its arguments work too.
    pub fn resolve(&self, base_dir: &Path) -> Result<Vec<ResolvedFunction>, ConfigErrors> {
        self.validate()?;
        let base_dir = absolute_dir(base_dir);
        let mut resolved = Vec::with_capacity(self.functions.len());
        for (name, function) in &self.functions {
            let name = FunctionName::new(name).map_err(|error| {
                ConfigError::new(dotted(&key_path(&["functions", name])), error.to_string())
            })?;
            let settings = function.settings(&self.defaults);
            let spec = backend_spec(function, &settings, &base_dir);
            resolved.push(ResolvedFunction {
                name,
                backend: function.backend,
                pool: pool_config(&settings),
                spec,
            });
        }
        Ok(resolved)
    }

    /// The admin routes' bearer token: `server.admin_token`, or the value of the environment
    /// variable named by `server.admin_token_env` as found in `env` (an error when it is unset
    /// or empty), or `None` when neither is configured.
    pub fn admin_token(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Option<String>, ConfigErrors> {
        match (&self.server.admin_token, &self.server.admin_token_env) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "server.admin_token",
                "set either admin_token or admin_token_env, not both",
            )
            .into()),
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(variable)) => match env.into_iter().find(|(name, _)| name == variable) {
                Some((_, token)) if !token.is_empty() => Ok(Some(token)),
                Some(_) => Err(ConfigError::new(
                    "server.admin_token_env",
                    format!("the environment variable {variable} holding the admin token is empty"),
                )
                .into()),
                None => Err(ConfigError::new(
                    "server.admin_token_env",
                    format!(
                        "the environment variable {variable} holding the admin token is not set"
                    ),
                )
                .into()),
            },
            (None, None) => Ok(None),
        }
    }

    /// The process backend's state directory: `server.state_dir` resolved against `base_dir`
    /// (the config file's directory), or the backend's default.
    pub fn state_dir(&self, base_dir: &Path) -> PathBuf {
        match &self.server.state_dir {
            Some(dir) => normalize(&absolute_dir(base_dir).join(dir)),
            None => backend_process::default_state_dir(),
        }
    }

    /// This config with every function's settings filled in from the defaults.
    pub fn filled(&self) -> Config {
        let functions = self
            .functions
            .iter()
            .map(|(name, function)| (name.clone(), function.filled(&self.defaults)))
            .collect();
        Config { functions, ..self.clone() }
    }
}

/// `dir` made absolute against the current directory (`""`, the parent of a bare file name,
/// counts as `.`).
fn absolute_dir(dir: &Path) -> PathBuf {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    normalize(&std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()))
}

/// `path` without `.` segments.
fn normalize(path: &Path) -> PathBuf {
    path.components().collect()
}

/// The pool settings of a function that runs with `settings`.
fn pool_config(settings: &FunctionDefaults) -> PoolConfig {
    PoolConfig {
        min: settings.min_instances,
        max: settings.max_instances,
        concurrency: settings.concurrency,
        queue_limit: settings.queue_limit,
        acquire_timeout: Some(settings.acquire_timeout),
        create_timeout: settings.startup_timeout.saturating_add(CREATE_TIMEOUT_MARGIN),
        idle_timeout: settings.idle_timeout,
        health_check_interval: settings.health_check_interval,
        destroy_grace: settings.grace_period,
        ..PoolConfig::default()
    }
}

/// The JSON Schema of [`Config`], for editors and `smgr config schema`.
pub fn schema() -> Value {
    schemars::schema_for!(Config).to_value()
}

// ---------------------------------------------------------------------------------------------
// Semantic checks
// ---------------------------------------------------------------------------------------------

/// A value that is well-formed but wrong, by the path of its key.
struct Issue {
    path: KeyPath,
    /// What the error points at: the value, or the key when the key is what is wrong.
    part: Part,
    reason: String,
}

impl Issue {
    fn new(keys: &[&str], reason: impl Into<String>) -> Self {
        Self { path: key_path(keys), part: Part::Value, reason: reason.into() }
    }

    fn at_key(self) -> Self {
        Self { part: Part::Key, ..self }
    }

    /// The same issue about element `index` of the list its path names.
    fn at_index(mut self, index: usize) -> Self {
        self.path.push(Seg::Index(index));
        self
    }
}

fn server_issues(server: &ServerConfig) -> Vec<Issue> {
    let mut issues = Vec::new();
    if server.admin_token.is_some() && server.admin_token_env.is_some() {
        issues.push(Issue::new(
            &["server", "admin_token"],
            "set either admin_token or admin_token_env, not both",
        ));
    }
    if server.admin_token.as_deref() == Some("") {
        issues.push(Issue::new(&["server", "admin_token"], "must not be empty"));
    }
    if let Some(variable) = &server.admin_token_env
        && !pool_core::is_env_name(variable)
    {
        issues.push(Issue::new(
            &["server", "admin_token_env"],
            format!("must name an environment variable, got {variable:?}"),
        ));
    }
    if let Err(error) = PoolName::new(server.pool.as_str()) {
        issues.push(Issue::new(&["server", "pool"], error.to_string()));
    }
    if server.request_timeout.is_zero() {
        issues.push(Issue::new(&["server", "request_timeout"], "must be longer than zero"));
    }
    if let Some(host) = &server.docker_host
        && !backend_docker::is_engine_address(host)
    {
        issues.push(Issue::new(
            &["server", "docker_host"],
            format!("must be unix:///path, tcp://host:port or http://host:port, got {host:?}"),
        ));
    }
    if server.docker_max_concurrent_creates == 0 {
        issues.push(Issue::new(
            &["server", "docker_max_concurrent_creates"],
            "must be at least 1, got 0",
        ));
    }
    issues
}

/// The problems of the defaults; `unknown` tells which fields' values are unknown (because
/// they were already reported), so that problems involving them are left out.
fn defaults_issues(defaults: &FunctionDefaults, unknown: &dyn Fn(&str) -> bool) -> Vec<Issue> {
    settings_problems(defaults)
        .into_iter()
        .filter(|(fields, _)| !fields.iter().any(|field| unknown(field)))
        .map(|(fields, reason)| match fields.first() {
            Some(field) => Issue::new(&["defaults", field], reason),
            None => Issue::new(&["defaults"], reason),
        })
        .collect()
}

/// The problems of one function; `unknown` as for [`defaults_issues`].
fn function_issues(
    name: &str,
    function: &FunctionConfig,
    defaults: &FunctionDefaults,
    unknown: &dyn Fn(&str) -> bool,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    if let Err(error) = FunctionName::new(name) {
        issues.push(Issue::new(&["functions", name], error.to_string()).at_key());
    }
    match function.backend {
        BackendKind::Process => issues.extend(process_issues(name, function, unknown)),
        BackendKind::Docker => issues.extend(docker_issues(name, function)),
    }
    for key in function.env.keys() {
        if !pool_core::is_env_name(key) {
            issues.push(Issue::new(
                &["functions", name, "env", key],
                format!("{key:?} is not a valid environment variable name"),
            ));
        } else if key == "PORT" || key.starts_with("SMGR_") || key.starts_with("LISTEN_") {
            issues.push(Issue::new(
                &["functions", name, "env", key],
                format!("{key} is set by smgr itself (PORT, SMGR_*, LISTEN_*)"),
            ));
        }
    }
    if let Readiness::Http(path) = &function.readiness
        && !path.starts_with('/')
    {
        issues.push(Issue::new(
            &["functions", name, "readiness"],
            format!("the HTTP readiness path must start with '/', got {path:?}"),
        ));
    }
    // A problem that involves no field this function overrides is the defaults' own, reported
    // once for them.
    for (fields, reason) in settings_problems(&function.settings(defaults)) {
        if fields.iter().any(|field| unknown(field)) {
            continue;
        }
        if fields.is_empty() {
            issues.push(Issue::new(&["functions", name], reason));
        } else if let Some(field) = fields.iter().find(|field| function.overrides(field)) {
            issues.push(Issue::new(&["functions", name, field], reason));
        }
    }
    issues
}

/// What is wrong with the process-only part of a `process` function.
fn process_issues(
    name: &str,
    function: &FunctionConfig,
    unknown: &dyn Fn(&str) -> bool,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    match function.command.as_deref().map(<[String]>::first) {
        // Unreadable (reported already) is not missing.
        None if unknown("command") => {}
        None => issues.push(Issue::new(&["functions", name], "missing field `command`").at_key()),
        Some(None) => issues.push(Issue::new(
            &["functions", name, "command"],
            "must name the program to run, got an empty list",
        )),
        Some(Some(program)) if program.trim().is_empty() => issues.push(Issue::new(
            &["functions", name, "command"],
            "the program (the first element) must not be empty",
        )),
        Some(Some(_)) => {}
    }
    let docker_only = [
        ("image", function.image.is_some()),
        ("container_port", function.container_port.is_some()),
        ("pull", function.pull.is_some()),
        ("limits", function.limits.is_some()),
        ("security", function.security.is_some()),
        ("network", function.network.is_some()),
        ("files", !function.files.is_empty()),
        ("labels", !function.labels.is_empty()),
        ("init", function.init.is_some()),
    ];
    issues.extend(misplaced(
        name,
        &docker_only,
        "is for docker functions: set `backend = \"docker\"`",
    ));
    issues
}

/// The keys among `keys` that are set although they are for the other backend.
fn misplaced(name: &str, keys: &[(&str, bool)], why: &str) -> Vec<Issue> {
    keys.iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| Issue::new(&["functions", name, key], format!("`{key}` {why}")))
        .collect()
}

/// What is wrong with the docker-only part of a `docker` function.
fn docker_issues(name: &str, function: &FunctionConfig) -> Vec<Issue> {
    let mut issues = Vec::new();
    match function.image.as_deref().map(str::trim) {
        None => issues.push(
            Issue::new(&["functions", name], "a docker function needs `image`, the image to run")
                .at_key(),
        ),
        Some(image) if image.is_empty() || image.contains(char::is_whitespace) => {
            issues.push(Issue::new(
                &["functions", name, "image"],
                format!("{image:?} is not an image reference"),
            ))
        }
        Some(_) => {}
    }
    if function.container_port == Some(0) {
        issues.push(Issue::new(
            &["functions", name, "container_port"],
            "must be a port, 1 to 65535, got 0",
        ));
    }
    let process_only = [
        ("working_dir", function.working_dir.is_some()),
        ("socket_activation", function.socket_activation),
        ("pass_env", function.pass_env.is_some()),
    ];
    issues.extend(misplaced(
        name,
        &process_only,
        "is for process functions; a container gets `env` alone",
    ));
    if let Some(Cpus(cpus)) = function.limits.as_ref().and_then(|limits| limits.cpus)
        && !(cpus.is_finite() && cpus > 0.0)
    {
        issues.push(Issue::new(
            &["functions", name, "limits", "cpus"],
            format!("must be a number of CPUs above zero, got {cpus}"),
        ));
    }
    if let Some(label) = function.labels.keys().find(|label| label.starts_with("smgr.")) {
        issues.push(Issue::new(
            &["functions", name, "labels", label],
            "the smgr.* labels are smgr's own",
        ));
    }
    let read_only =
        function.security.as_ref().and_then(|security| security.read_only_root) == Some(true);
    let path = ["functions", name, "files"];
    for (index, file) in function.files.iter().enumerate() {
        if !file.path.starts_with('/') {
            issues.push(
                Issue::new(
                    &path,
                    format!("`path` must be absolute in the container, got {:?}", file.path),
                )
                .at_index(index),
            );
        }
        if file.source.is_some() == file.contents.is_some() {
            issues.push(
                Issue::new(&path, "give exactly one of `source` and `contents`").at_index(index),
            );
        }
        if read_only {
            issues.push(
                Issue::new(
                    &path,
                    "files cannot be copied into a read-only root (security.read_only_root)",
                )
                .at_index(index),
            );
        }
    }
    issues
}

/// What is wrong with a function's settings: the fields involved, and why.
fn settings_problems(settings: &FunctionDefaults) -> Vec<(Vec<&'static str>, String)> {
    let mut problems = Vec::new();
    if settings.max_instances == 0 {
        problems.push((vec!["max_instances"], "must be at least 1, got 0".to_owned()));
    } else if settings.min_instances > settings.max_instances {
        problems.push((
            vec!["min_instances", "max_instances"],
            format!(
                "min_instances ({}) must not exceed max_instances ({})",
                settings.min_instances, settings.max_instances
            ),
        ));
    }
    if settings.concurrency == 0 {
        problems.push((vec!["concurrency"], "must be at least 1, got 0".to_owned()));
    }
    let durations = [
        ("acquire_timeout", Some(settings.acquire_timeout), ""),
        ("startup_timeout", Some(settings.startup_timeout), ""),
        ("idle_timeout", settings.idle_timeout, " (\"off\" keeps idle instances)"),
        ("health_check_interval", settings.health_check_interval, " (\"off\" turns probes off)"),
    ];
    for (field, value, hint) in durations {
        if value == Some(Duration::ZERO) {
            problems.push((vec![field], format!("must be longer than zero{hint}")));
        }
    }
    // pool-core has the last word, for anything the checks above do not cover.
    if problems.is_empty()
        && let Err(error) = pool_config(settings).validate()
    {
        let problem = match error {
            pool_core::Error::InvalidConfig { field, reason } => match pool_field(field) {
                Some(field) => (vec![field], reason),
                None => (Vec::new(), format!("invalid pool setting `{field}`: {reason}")),
            },
            other => (Vec::new(), other.to_string()),
        };
        problems.push(problem);
    }
    problems
}

/// The config field behind a [`PoolConfig`] field.
fn pool_field(field: &str) -> Option<&'static str> {
    Some(match field {
        "min" => "min_instances",
        "max" => "max_instances",
        "concurrency" => "concurrency",
        "queue_limit" => "queue_limit",
        "acquire_timeout" => "acquire_timeout",
        "create_timeout" => "startup_timeout",
        "idle_timeout" => "idle_timeout",
        "health_check_interval" => "health_check_interval",
        "destroy_grace" => "grace_period",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Key paths
// ---------------------------------------------------------------------------------------------

/// One step into a document: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

type KeyPath = Vec<Seg>;

fn key_path(keys: &[&str]) -> KeyPath {
    keys.iter().map(|key| Seg::Key((*key).to_owned())).collect()
}

/// `functions.hello.command[1]`; keys that are not bare TOML keys are quoted.
fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&toml_key(key));
            }
            Seg::Index(index) => {
                let _ = write!(out, "[{index}]");
            }
        }
    }
    out
}

fn from_serde_path(path: &serde_path_to_error::Path) -> KeyPath {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

fn value_at<'v>(root: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    path.iter().try_fold(root, |value, seg| match seg {
        Seg::Key(key) => value.get(key),
        Seg::Index(index) => value.get(index),
    })
}

fn value_at_mut<'v>(root: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    path.iter().try_fold(root, |value, seg| match seg {
        Seg::Key(key) => value.get_mut(key),
        Seg::Index(index) => value.get_mut(index),
    })
}

// ---------------------------------------------------------------------------------------------
// Documents: a value tree plus where each key and value is
// ---------------------------------------------------------------------------------------------

/// Which part of an entry an error points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Key,
    Value,
}

/// Byte offsets of an entry's key (none for array elements) and value.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    key: Option<usize>,
    value: usize,
}

/// A line and a column, both 1-based.
type Position = (usize, usize);

/// A parsed config file: its values as a generic tree, and the means to find where a key is.
struct Document<'a> {
    text: &'a str,
    format: Format,
    root: Value,
    /// For TOML and JSON, found while parsing; YAML is searched when an error needs it.
    offsets: HashMap<KeyPath, Offsets>,
}

impl<'a> Document<'a> {
    /// Parses `text`, or returns its syntax errors.
    fn parse(text: &'a str, format: Format) -> Result<Self, Vec<(Option<Position>, String)>> {
        let mut offsets = HashMap::new();
        let root = match format {
            Format::Toml => {
                let (table, errors) = toml::de::DeTable::parse_recoverable(text);
                if !errors.is_empty() {
                    let mut found: Vec<(Option<Position>, String)> = Vec::new();
                    for error in errors {
                        let position = error.span().map(|span| line_column(text, span.start));
                        let entry = (position, error.message().to_owned());
                        if !found.contains(&entry) {
                            found.push(entry);
                        }
                    }
                    found.sort_by_key(|(position, _)| *position);
                    return Err(found);
                }
                toml_table(table.get_ref(), &mut Vec::new(), &mut offsets)
            }
            Format::Json => {
                let tree = serde_json::from_str::<Tree>(text).map_err(|error| {
                    let position =
                        (error.line() > 0).then(|| (error.line(), error.column().max(1)));
                    vec![(position, strip_location(&error.to_string()))]
                })?;
                JsonScanner { text, position: 0, offsets: &mut offsets }.value(&mut Vec::new());
                tree.0
            }
            Format::Yaml => {
                let tree = serde_norway::from_str::<Option<Tree>>(text).map_err(|error| {
                    let position = error.location().map(|at| (at.line(), at.column()));
                    vec![(position, strip_location(&error.to_string()))]
                })?;
                // An empty document is an empty config.
                match tree {
                    None | Some(Tree(Value::Null)) => Value::Object(Map::new()),
                    Some(Tree(value)) => value,
                }
            }
        };
        Ok(Self { text, format, root, offsets })
    }

    /// Where the entry at `path` is, or failing that the nearest enclosing entry's key.
    fn nearest(&self, path: &[Seg], part: Part) -> Option<Position> {
        (1..=path.len()).rev().find_map(|len| {
            let part = if len == path.len() { part } else { Part::Key };
            self.position(&path[..len], part)
        })
    }

    /// Where the entry at `path` is, if it is in the document.
    fn position(&self, path: &[Seg], part: Part) -> Option<Position> {
        let offset = match self.format {
            Format::Toml | Format::Json => {
                let offsets = self.offsets.get(path)?;
                match part {
                    Part::Key => offsets.key.unwrap_or(offsets.value),
                    Part::Value => offsets.value,
                }
            }
            Format::Yaml => return yaml_position(self.text, path, part),
        };
        Some(line_column(self.text, offset))
    }
}

/// The line and column of a byte offset into `text`.
fn line_column(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// A parser's message without the ` at line N column M` it appends (kept apart instead).
fn strip_location(message: &str) -> String {
    let Some(start) = message.find(" at line ") else { return message.to_owned() };
    let rest = &message[start + " at line ".len()..];
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let line_len = digits(rest);
    let Some(after_line) = rest[line_len..].strip_prefix(" column ") else {
        return message.to_owned();
    };
    let end = start + " at line ".len() + line_len + " column ".len() + digits(after_line);
    format!("{}{}", &message[..start], &message[end..])
}

fn toml_table(
    table: &toml::de::DeTable<'_>,
    path: &mut KeyPath,
    offsets: &mut HashMap<KeyPath, Offsets>,
) -> Value {
    let mut map = Map::new();
    for (key, value) in table.iter() {
        path.push(Seg::Key(key.get_ref().to_string()));
        offsets.insert(
            path.clone(),
            Offsets { key: Some(key.span().start), value: value.span().start },
        );
        let converted = toml_value(value, path, offsets);
        path.pop();
        map.insert(key.get_ref().to_string(), converted);
    }
    Value::Object(map)
}

fn toml_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    path: &mut KeyPath,
    offsets: &mut HashMap<KeyPath, Offsets>,
) -> Value {
    use toml::de::DeValue;
    match value.get_ref() {
        DeValue::String(text) => Value::String(text.to_string()),
        DeValue::Integer(integer) => i64::from_str_radix(integer.as_str(), integer.radix())
            .map(Value::from)
            .or_else(|_| u64::from_str_radix(integer.as_str(), integer.radix()).map(Value::from))
            .unwrap_or_else(|_| Value::String(integer.to_string())),
        DeValue::Float(float) => float
            .as_str()
            .parse()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(float.as_str().to_owned()), Value::Number),
        DeValue::Boolean(boolean) => Value::Bool(*boolean),
        DeValue::Datetime(datetime) => Value::String(datetime.to_string()),
        DeValue::Array(array) => Value::Array(
            array
                .iter()
                .enumerate()
                .map(|(index, element)| {
                    path.push(Seg::Index(index));
                    offsets
                        .insert(path.clone(), Offsets { key: None, value: element.span().start });
                    let converted = toml_value(element, path, offsets);
                    path.pop();
                    converted
                })
                .collect(),
        ),
        DeValue::Table(table) => toml_table(table, path, offsets),
    }
}

/// A value tree read from JSON or YAML, refusing duplicate keys (which a plain
/// [`Value`] would silently resolve to the last).
struct Tree(Value);

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TreeVisitor;

        impl<'de> Visitor<'de> for TreeVisitor {
            type Value = Tree;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Tree, E> {
                Ok(Tree(Value::Bool(value)))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Tree, E> {
                Ok(Tree(Value::from(value)))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Tree, E> {
                Ok(Tree(Value::from(value)))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Tree, E> {
                Ok(Tree(Value::from(value)))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Tree, E> {
                Ok(Tree(Value::String(value.to_owned())))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
                Ok(Tree(Value::Null))
            }

            fn visit_none<E: de::Error>(self) -> Result<Tree, E> {
                Ok(Tree(Value::Null))
            }

            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree, D::Error> {
                Tree::deserialize(deserializer)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
                let mut values = Vec::new();
                while let Some(Tree(value)) = seq.next_element()? {
                    values.push(value);
                }
                Ok(Tree(Value::Array(values)))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
                let mut values = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if values.contains_key(&key) {
                        return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                    }
                    let Tree(value) = map.next_value()?;
                    values.insert(key, value);
                }
                Ok(Tree(Value::Object(values)))
            }
        }

        deserializer.deserialize_any(TreeVisitor)
    }
}

/// Records where each key and value of a (valid) JSON text starts.
struct JsonScanner<'t, 'o> {
    text: &'t str,
    position: usize,
    offsets: &'o mut HashMap<KeyPath, Offsets>,
}

impl JsonScanner<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.position).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.position += 1;
        }
    }

    /// Scans the value at the current position, recording it at `path`.
    fn value(&mut self, path: &mut KeyPath) {
        self.skip_whitespace();
        let start = self.position;
        self.offsets.entry(path.clone()).or_insert(Offsets { key: None, value: start }).value =
            start;
        match self.peek() {
            Some(b'{') => {
                self.position += 1;
                loop {
                    self.skip_whitespace();
                    match self.peek() {
                        Some(b',') => self.position += 1,
                        Some(b'"') => {
                            let key_start = self.position;
                            let key = self.string();
                            self.skip_whitespace();
                            self.position += 1; // the ':'
                            path.push(Seg::Key(key));
                            self.offsets
                                .insert(path.clone(), Offsets { key: Some(key_start), value: 0 });
                            self.value(path);
                            path.pop();
                        }
                        Some(_) => {
                            self.position += 1; // the '}'
                            break;
                        }
                        None => break,
                    }
                }
            }
            Some(b'[') => {
                self.position += 1;
                let mut index = 0;
                loop {
                    self.skip_whitespace();
                    match self.peek() {
                        Some(b',') => self.position += 1,
                        Some(b']') => {
                            self.position += 1;
                            break;
                        }
                        Some(_) => {
                            path.push(Seg::Index(index));
                            self.value(path);
                            path.pop();
                            index += 1;
                        }
                        None => break,
                    }
                }
            }
            Some(b'"') => {
                self.string();
            }
            Some(_) => {
                while let Some(byte) = self.peek() {
                    if matches!(byte, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.position += 1;
                }
                if self.position == start {
                    self.position += 1; // never stall on unexpected input
                }
            }
            None => {}
        }
    }

    /// Scans the string at the current position and returns it unescaped.
    fn string(&mut self) -> String {
        let start = self.position;
        self.position += 1;
        while let Some(byte) = self.peek() {
            self.position += if byte == b'\\' { 2 } else { 1 };
            if byte == b'"' {
                break;
            }
        }
        let end = self.position.min(self.text.len());
        self.text.get(start..end).and_then(|raw| serde_json::from_str(raw).ok()).unwrap_or_default()
    }
}

/// The message a [`YamlSeeker`] fails with when it reaches its target, so that the YAML
/// deserializer attaches the target's position to it.
const FOUND: &str = "\u{0}smgr: found";

/// Where the entry at `path` is in a YAML text, found by deserializing down to it.
fn yaml_position(text: &str, path: &[Seg], part: Part) -> Option<Position> {
    if path.is_empty() && part == Part::Key {
        return None;
    }
    let deserializer = serde_norway::Deserializer::from_str(text);
    let error = YamlSeeker { path, part }.deserialize(deserializer).err()?;
    if !error.to_string().contains(FOUND) {
        return None;
    }
    error.location().map(|at| (at.line(), at.column()))
}

/// Walks a document down `path` and fails at the target key or value.
struct YamlSeeker<'p> {
    path: &'p [Seg],
    part: Part,
}

impl<'de> DeserializeSeed<'de> for YamlSeeker<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl YamlSeeker<'_> {
    fn at_scalar<E: de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() { Err(E::custom(FOUND)) } else { Ok(()) }
    }
}

impl<'de> Visitor<'de> for YamlSeeker<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.at_scalar()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.at_scalar()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.at_scalar()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.at_scalar()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.at_scalar()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.at_scalar()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.at_scalar()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(wanted), rest)) = self.path.split_first() else {
            return self.at_scalar();
        };
        for _ in 0..*wanted {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(YamlSeeker { path: rest, part: self.part })?;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(wanted), rest)) = self.path.split_first() else {
            return self.at_scalar();
        };
        let fail_at_key = rest.is_empty() && self.part == Part::Key;
        while let Some(found) = map.next_key_seed(YamlKeySeeker { wanted, fail_at_key })? {
            if found {
                return map.next_value_seed(YamlSeeker { path: rest, part: self.part });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Reads a key: whether it is the one wanted, failing at it when it is the target.
struct YamlKeySeeker<'w> {
    wanted: &'w str,
    fail_at_key: bool,
}

impl<'de> DeserializeSeed<'de> for YamlKeySeeker<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Visitor<'_> for YamlKeySeeker<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        match key == self.wanted {
            true if self.fail_at_key => Err(E::custom(FOUND)),
            found => Ok(found),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------------------
// The loader: overrides, sections, checks
// ---------------------------------------------------------------------------------------------

/// A value set (or a table created) by an environment variable.
struct Override {
    path: KeyPath,
    variable: String,
    /// The variable's text; `None` for a table created on the way to the value.
    raw: Option<String>,
    /// Whether the text was already tried as a plain string after its TOML reading failed.
    retried: bool,
}

/// What [`Loader::section`] could read of a table.
struct Section<T> {
    /// The table, read without the fields in `dropped`; `None` when even that failed.
    value: Option<T>,
    /// The fields that were reported as wrong and left out.
    dropped: Vec<String>,
}

impl<T> Section<T> {
    fn is_complete(&self) -> bool {
        self.value.is_some() && self.dropped.is_empty()
    }
}

struct Loader<'a> {
    document: Document<'a>,
    file: Option<PathBuf>,
    /// Where the relative paths of a config read from a file resolve, as `resolve` will have
    /// them; set, each function also goes through its backend's own check.
    backend_base: Option<PathBuf>,
    errors: Vec<ConfigError>,
    overrides: Vec<Override>,
}

impl Loader<'_> {
    /// The override that set `path` or a table above it, the deepest one if several did.
    fn override_of(&self, path: &[Seg]) -> Option<usize> {
        (0..self.overrides.len())
            .filter(|&index| path.starts_with(&self.overrides[index].path))
            .max_by_key(|&index| (self.overrides[index].path.len(), index))
    }

    /// An error about the entry at `path`: located in the file, or naming the environment
    /// variable that set it.
    fn error_at(&self, path: &[Seg], part: Part, reason: String) -> ConfigError {
        if let Some(index) = self.override_of(path) {
            let reason = format!("{reason} (sets {})", dotted(path));
            return ConfigError::new(self.overrides[index].variable.clone(), reason);
        }
        let position = self.document.nearest(path, part);
        ConfigError {
            file: self.file.clone(),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            key: dotted(path),
            reason,
        }
    }

    fn report(&mut self, path: &[Seg], part: Part, reason: String) {
        let error = self.error_at(path, part, reason);
        self.errors.push(error);
    }

    fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) {
        let mut variables: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name.contains(ENV_SEPARATOR))
            .collect();
        variables.sort();
        for (name, raw) in variables {
            if let Err(reason) = self.apply_override(&name, raw) {
                self.errors.push(ConfigError::new(name, reason));
            }
        }
    }

    fn apply_override(&mut self, variable: &str, raw: String) -> Result<(), String> {
        let segments: Vec<&str> = variable[ENV_PREFIX.len()..].split(ENV_SEPARATOR).collect();
        if segments.iter().any(|segment| segment.is_empty()) {
            return Err("an empty key in the name (a `__` too many)".to_owned());
        }
        if !SECTIONS.iter().any(|section| section.eq_ignore_ascii_case(segments[0])) {
            return Err(format!(
                "`{}` is not a section of the config (expected SERVER, DEFAULTS or FUNCTIONS)",
                segments[0]
            ));
        }
        if !self.document.root.is_object() {
            return Ok(()); // the document's own error is reported
        }
        let mut path = KeyPath::new();
        let mut node = &mut self.document.root;
        let mut created = Vec::new();
        let (last, parents) = segments.split_last().unwrap_or((&"", &[]));
        for segment in parents {
            let table = table_of(node, &path, segment)?;
            let key = override_key(table, &path, segment)?;
            path.push(Seg::Key(key.clone()));
            node = table.entry(key).or_insert_with(|| {
                created.push(path.clone());
                Value::Object(Map::new())
            });
        }
        let table = table_of(node, &path, last)?;
        let key = override_key(table, &path, last)?;
        path.push(Seg::Key(key.clone()));
        table.insert(key, env_value(&raw));
        for table in created {
            self.overrides.push(Override {
                path: table,
                variable: variable.to_owned(),
                raw: None,
                retried: false,
            });
        }
        self.overrides.push(Override {
            path,
            variable: variable.to_owned(),
            raw: Some(raw),
            retried: false,
        });
        Ok(())
    }

    /// Reads and checks every section, reporting what is wrong; the config when all is well.
    fn read(&mut self) -> Option<Config> {
        let root = match &self.document.root {
            Value::Object(root) => root.clone(),
            other => {
                let reason = format!(
                    "the config must be a table of `server`, `defaults` and `functions`, got {}",
                    describe(other)
                );
                self.errors
                    .push(ConfigError { file: self.file.clone(), ..ConfigError::new("", reason) });
                return None;
            }
        };
        for key in root.keys().filter(|key| !SECTIONS.contains(&key.as_str())) {
            let reason =
                format!("unknown field `{key}`, expected one of `server`, `defaults`, `functions`");
            self.report(&key_path(&[key]), Part::Key, reason);
        }
        let server: Section<ServerConfig> = self.section(key_path(&["server"]));
        let defaults: Section<FunctionDefaults> = self.section(key_path(&["defaults"]));
        let mut functions = BTreeMap::new();
        let mut complete = server.is_complete() && defaults.is_complete();
        match root.get("functions") {
            None => {}
            Some(Value::Object(table)) => {
                for name in table.keys() {
                    let function: Section<FunctionConfig> =
                        self.section(key_path(&["functions", name]));
                    complete &= function.is_complete();
                    match function.value {
                        Some(value) => {
                            functions.insert(name.clone(), (value, function.dropped));
                        }
                        // `function_issues` cannot run, but the name is still worth checking.
                        None => {
                            if let Err(error) = FunctionName::new(name) {
                                let path = key_path(&["functions", name]);
                                self.report(&path, Part::Key, error.to_string());
                            }
                        }
                    }
                }
            }
            Some(other) => {
                let reason =
                    format!("invalid type: {}, expected a table of functions", describe(other));
                self.report(&key_path(&["functions"]), Part::Value, reason);
                complete = false;
            }
        }

        // The checks run on what could be read, leaving out whatever involves a value that was
        // already reported (and dropped).
        let mut issues = Vec::new();
        if let Some(value) = &server.value {
            let dropped = |issue: &Issue| matches!(&issue.path[..], [_, Seg::Key(field), ..] if server.dropped.contains(field));
            issues.extend(server_issues(value).into_iter().filter(|issue| !dropped(issue)));
        }
        if let Some(settings) = &defaults.value {
            let unknown = |field: &str| defaults.dropped.iter().any(|dropped| dropped == field);
            issues.extend(defaults_issues(settings, &unknown));
            for (name, (function, function_dropped)) in &functions {
                let unknown = |field: &str| {
                    let dropped = |fields: &[String]| fields.iter().any(|dropped| dropped == field);
                    dropped(function_dropped)
                        || (!function.overrides(field) && dropped(&defaults.dropped))
                };
                let found = function_issues(name, function, settings, &unknown);
                // What the config's checks let through, the backend's own check sees as it
                // will at start: `check` passes only what `serve` takes.
                if found.is_empty()
                    && function_dropped.is_empty()
                    && defaults.dropped.is_empty()
                    && let Some(base_dir) = &self.backend_base
                    && let Ok(function_name) = FunctionName::new(name)
                    && let Some(reason) = backend_refusal(
                        function_name,
                        backend_spec(function, &function.settings(settings), base_dir),
                    )
                {
                    issues.push(Issue::new(&["functions", name], reason).at_key());
                }
                issues.extend(found);
            }
        }
        for issue in issues {
            self.report(&issue.path, issue.part, issue.reason);
        }
        if !complete {
            return None;
        }
        let functions =
            functions.into_iter().map(|(name, (function, _))| (name, function)).collect();
        Some(Config { server: server.value?, defaults: defaults.value?, functions })
    }

    /// Deserializes the table at `path`, reporting every error in it: after each, the field at
    /// fault is dropped and the table read again.
    fn section<T: DeserializeOwned>(&mut self, path: KeyPath) -> Section<T> {
        let mut value =
            value_at(&self.document.root, &path).cloned().unwrap_or(Value::Object(Map::new()));
        let mut dropped: Vec<String> = Vec::new();
        let failed = |dropped| Section { value: None, dropped };
        // An override read as TOML that failed and is being tried as a string: its error.
        let mut pending: Option<(usize, KeyPath, String)> = None;
        let attempts = value.as_object().map_or(1, |table| table.len() + self.overrides.len() + 1);
        for _ in 0..attempts {
            let error = match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(section) => return Section { value: Some(section), dropped },
                Err(error) => error,
            };
            let mut relative = from_serde_path(error.path());
            let mut reason = error.inner().to_string();
            let mut full: KeyPath = path.iter().cloned().chain(relative.iter().cloned()).collect();
            let owner = self.override_of(&full);
            match pending.take() {
                // Reading the text as a string did not help: report the first reading's error.
                Some((index, original, original_reason)) if owner == Some(index) => {
                    relative = original[path.len()..].to_vec();
                    full = original;
                    reason = original_reason;
                }
                _ => {
                    if let Some(index) = owner
                        && self.retry_as_string(index, &path, &mut value)
                    {
                        pending = Some((index, full, reason));
                        continue;
                    }
                }
            }
            if let Some(field) = missing_field(&reason)
                && dropped.iter().any(|dropped| dropped == field)
            {
                return failed(dropped); // caused by a field already reported and dropped
            }
            let part = if reason.starts_with("unknown field") || reason.starts_with("missing field")
            {
                Part::Key
            } else {
                Part::Value
            };
            self.report(&full, part, reason);
            let Some(Seg::Key(field)) = relative.first() else { return failed(dropped) };
            match value.as_object_mut().and_then(|table| table.remove(field)) {
                Some(_) => dropped.push(field.clone()),
                None => return failed(dropped),
            }
        }
        failed(dropped)
    }

    /// Replaces the value the override `index` set with its text as a string, if it was read
    /// as something else and has not been tried as a string yet.
    fn retry_as_string(&mut self, index: usize, section: &[Seg], value: &mut Value) -> bool {
        let entry = &mut self.overrides[index];
        let Some(raw) = &entry.raw else { return false };
        if entry.retried || entry.path.len() <= section.len() || !entry.path.starts_with(section) {
            return false;
        }
        match value_at_mut(value, &entry.path[section.len()..]) {
            Some(target) if !target.is_string() => {
                *target = Value::String(raw.clone());
                entry.retried = true;
                true
            }
            _ => false,
        }
    }
}

/// The table an override's next `segment` goes into.
fn table_of<'v>(
    node: &'v mut Value,
    path: &[Seg],
    segment: &str,
) -> Result<&'v mut Map<String, Value>, String> {
    node.as_object_mut()
        .ok_or_else(|| format!("`{}` is not a table, so it has no `{segment}`", dotted(path)))
}

/// The key of `table` (at `path`) that an override's `segment` names: an existing key matched
/// case-insensitively, or a new one. Functions must exist; `env` keys keep their case.
fn override_key(table: &Map<String, Value>, path: &[Seg], segment: &str) -> Result<String, String> {
    let matches: Vec<&String> =
        table.keys().filter(|key| key.eq_ignore_ascii_case(segment)).collect();
    match matches.as_slice() {
        [key] => Ok((*key).clone()),
        [] if path == key_path(&["functions"]).as_slice() => {
            let names: Vec<&str> = table.keys().map(String::as_str).collect();
            Err(format!(
                "no function is named `{segment}` (case-insensitively); the config has {}",
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            ))
        }
        [] if is_env_table(path) => Ok(segment.to_owned()),
        [] => Ok(segment.to_ascii_lowercase()),
        several => {
            let names: Vec<&str> = several.iter().map(|key| key.as_str()).collect();
            Err(format!("`{segment}` matches several keys: {}", names.join(", ")))
        }
    }
}

/// Whether `path` is a function's `env` table, whose keys keep the case they are written in.
fn is_env_table(path: &[Seg]) -> bool {
    matches!(path, [Seg::Key(functions), Seg::Key(_), Seg::Key(env)] if functions == "functions" && env == "env")
}

/// An override's text as a value: a TOML value when it is one, else the text as a string.
fn env_value(raw: &str) -> Value {
    match toml::de::DeValue::parse(raw.trim()) {
        Ok(value) => toml_value(&value, &mut Vec::new(), &mut HashMap::new()),
        Err(_) => Value::String(raw.to_owned()),
    }
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(reason: &str) -> Option<&str> {
    reason.strip_prefix("missing field `")?.split('`').next()
}

/// A value's type, the way serde's messages put it.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(value) => format!("boolean `{value}`"),
        Value::Number(value) => format!("number `{value}`"),
        Value::String(value) => format!("string {value:?}"),
        Value::Array(_) => "sequence".to_owned(),
        Value::Object(_) => "map".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// `smgr check`'s output: the config as TOML with every function's settings filled in from the
/// defaults (see [`Config::filled`]). Reading it back gives `config.filled()`, except that an
/// `admin_token` is left out (a comment says it is set) so that it does not end up in logs.
pub fn render_resolved(config: &Config) -> String {
    let mut filled = config.filled();
    let token_hidden = filled.server.admin_token.take().is_some();
    let mut out = String::from("# The resolved config: every default filled in.\n");
    out.push_str("\n[server]\n");
    if token_hidden {
        out.push_str("# admin_token is set (not shown)\n");
    }
    write_toml_entries(&mut out, &filled.server);
    out.push_str("\n[defaults]\n");
    write_toml_entries(&mut out, &filled.defaults);
    for (name, function) in &filled.functions {
        let _ = writeln!(out, "\n[functions.{}]", toml_key(name));
        write_toml_entries(&mut out, function);
    }
    out
}

/// Writes a struct's fields as `key = value` lines, in the order they are declared.
fn write_toml_entries(out: &mut String, table: &impl Serialize) {
    // Through JSON text, which keeps the fields' order ([`Value`]'s map sorts them).
    let entries = serde_json::to_string(table)
        .and_then(|json| serde_json::from_str::<OrderedEntries>(&json))
        .map_or_else(|_| Vec::new(), |entries| entries.0);
    for (key, value) in entries {
        if !value.is_null() {
            let _ = writeln!(out, "{} = {}", toml_key(&key), toml_inline(&value));
        }
    }
}

/// A map's entries in the order they come.
struct OrderedEntries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;

        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = OrderedEntries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedEntries(entries))
            }
        }

        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare =
        !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { key.to_owned() } else { toml_string(key) }
}

fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_inline(value: &Value) -> String {
    match value {
        // Not produced by the config's types; an empty string keeps the output valid.
        Value::Null => "\"\"".to_owned(),
        Value::Bool(value) => value.to_string(),
        Value::Number(value) => value.to_string(),
        Value::String(value) => toml_string(value),
        Value::Array(values) => {
            let values: Vec<String> = values.iter().map(toml_inline).collect();
            format!("[{}]", values.join(", "))
        }
        Value::Object(table) if table.is_empty() => "{}".to_owned(),
        Value::Object(table) => {
            let entries: Vec<String> = table
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| format!("{} = {}", toml_key(key), toml_inline(value)))
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    fn file_of(format: Format) -> &'static Path {
        Path::new(match format {
            Format::Toml => "smgr.toml",
            Format::Yaml => "smgr.yaml",
            Format::Json => "smgr.json",
        })
    }

    fn load(text: &str, format: Format, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        Config::parse(text, format, Some(file_of(format)), env(vars))
    }

    /// The errors of a config that must fail, one display line each.
    fn errors(text: &str, format: Format, vars: &[(&str, &str)]) -> Vec<String> {
        match load(text, format, vars) {
            Ok(config) => panic!("expected errors, got {config:?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn toml_errors(text: &str) -> Vec<String> {
        errors(text, Format::Toml, &[])
    }

    const HELLO: &str = "[functions.hello]\ncommand = [\"python3\", \"hello.py\"]\n";

    #[test]
    fn an_empty_config_has_every_default() {
        for format in [Format::Toml, Format::Yaml] {
            let config = load("", format, &[]).unwrap();
            assert_eq!(config, Config::default());
        }
        let config = load("{}", Format::Json, &[]).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.server.max_body, ByteSize(6 * 1024 * 1024));
        assert_eq!(config.server.request_timeout, Duration::from_secs(30));
        assert_eq!(config.server.pool, "smgr");
        assert_eq!(config.defaults.max_instances, 4);
        assert_eq!(config.defaults.idle_timeout, Some(Duration::from_secs(300)));
        assert!(config.functions.is_empty());
    }

    #[test]
    fn syntax_errors_carry_the_parsers_position() {
        assert_eq!(
            toml_errors("[server]\nlisten = 127.0.0.1:8080\n"),
            ["smgr.toml:2:15: invalid float, expected nothing"]
        );
        assert_eq!(
            errors("{\n  \"server\": {\n    \"listen\": ,\n  }\n}", Format::Json, &[]),
            ["smgr.json:3:15: expected value"]
        );
        let yaml = errors("server:\n  listen: [1\nfunctions: {}\n", Format::Yaml, &[]);
        assert_eq!(yaml.len(), 1);
        assert!(yaml[0].starts_with("smgr.yaml:3:"), "{yaml:?}");
        assert!(yaml[0].contains("did not find expected ',' or ']'"), "{yaml:?}");
    }

    #[test]
    fn duplicate_keys_are_errors_in_every_format() {
        let toml = toml_errors("[server]\npool = \"a\"\npool = \"b\"\n");
        assert_eq!(toml.len(), 1);
        assert!(
            toml[0].starts_with("smgr.toml:3:1: ") && toml[0].contains("duplicate"),
            "{toml:?}"
        );
        let json = errors(r#"{"server": {"pool": "a", "pool": "b"}}"#, Format::Json, &[]);
        assert_eq!(json.len(), 1);
        assert!(json[0].starts_with("smgr.json:1:") && json[0].contains("duplicate key `pool`"));
        let yaml = errors("server:\n  pool: a\n  pool: b\n", Format::Yaml, &[]);
        assert_eq!(yaml.len(), 1);
        assert!(yaml[0].starts_with("smgr.yaml:") && yaml[0].contains("duplicate"), "{yaml:?}");
    }

    #[test]
    fn unknown_keys_point_at_the_key() {
        let text = "bogus = 1\n\n[server]\nlisten = \"0.0.0.0:80\"\nlisen = \"x\"\n\n[functions.hello]\ncommand = [\"a\"]\n  max_instance = 3\n";
        assert_eq!(
            toml_errors(text),
            [
                "smgr.toml:1:1: bogus: unknown field `bogus`, expected one of `server`, `defaults`, `functions`",
                "smgr.toml:5:1: server.lisen: unknown field `lisen`, expected one of `listen`, \
                 `admin_token_env`, `admin_token`, `max_body`, `request_timeout`, \
                 `shutdown_timeout`, `pool`, `state_dir`, `docker_host`, \
                 `docker_max_concurrent_creates`",
                "smgr.toml:9:3: functions.hello.max_instance: unknown field `max_instance`, \
                 expected one of `backend`, `command`, `image`, `container_port`, `pull`, \
              `limits`, `security`, `network`, `files`, `labels`, `init`, `env`, `readiness`, `working_dir`, \
                 `socket_activation`, `pass_env`, `min_instances`, `max_instances`, \
                 `concurrency`, `queue_limit`, `acquire_timeout`, `idle_timeout`, \
                 `startup_timeout`, `grace_period`, `health_check_interval`",
            ]
        );
    }

    #[test]
    fn wrong_types_bad_durations_and_sizes_point_at_the_value() {
        let text = r#"[server]
max_body = "6 parsecs"
request_timeout = "soon"

[defaults]
acquire_timeout = 10

[functions.hello]
command = ["python3", 5]
max_instances = "x"
"#;
        assert_eq!(
            toml_errors(text),
            [
                "smgr.toml:2:12: server.max_body: invalid size \"6 parsecs\": unknown unit \
                 `parsecs` (expected B, KB, KiB, MB, MiB, GB, GiB, TB or TiB)",
                "smgr.toml:3:19: server.request_timeout: invalid duration \"soon\": expected \
                 number at 0",
                "smgr.toml:6:19: defaults.acquire_timeout: invalid type: integer `10`, expected \
                 a duration like \"30s\", \"5m\" or \"250ms\"",
                "smgr.toml:9:23: functions.hello.command[1]: invalid type: integer `5`, expected \
                 a string",
                "smgr.toml:10:17: functions.hello.max_instances: invalid type: string \"x\", \
                 expected usize",
            ]
        );
    }

    #[test]
    fn backends_of_other_builds_have_their_own_message() {
        let k8s = toml_errors("[functions.a]\nbackend = \"k8s\"\ncommand = [\"x\"]\n");
        assert_eq!(
            k8s,
            ["smgr.toml:2:11: functions.a.backend: backend `k8s` is not available in this build"]
        );
        let typo = toml_errors("[functions.a]\nbackend = \"proces\"\ncommand = [\"x\"]\n");
        assert_eq!(
            typo,
            [
                "smgr.toml:2:11: functions.a.backend: unknown variant `proces`, expected `process` or `docker`"
            ]
        );
    }

    #[test]
    fn a_missing_command_points_at_the_function() {
        assert_eq!(
            toml_errors("[functions.hello]\nmin_instances = 1\n"),
            ["smgr.toml:1:12: functions.hello: missing field `command`"]
        );
        // A command of the wrong type is reported once, not again as missing.
        assert_eq!(
            toml_errors("[functions.hello]\ncommand = \"python3 app.py\"\n"),
            ["smgr.toml:2:11: functions.hello.command: invalid type: string \"python3 app.py\", \
              expected a sequence"]
        );
    }

    #[test]
    fn readiness_is_tcp_or_an_http_path() {
        let config =
            load(&format!("{HELLO}readiness = {{ http = \"/healthz\" }}"), Format::Toml, &[])
                .unwrap();
        assert_eq!(config.functions["hello"].readiness, Readiness::Http("/healthz".into()));
        let config = load(&format!("{HELLO}readiness = \"tcp\""), Format::Toml, &[]).unwrap();
        assert_eq!(config.functions["hello"].readiness, Readiness::Tcp);
        assert_eq!(
            toml_errors(&format!("{HELLO}readiness = \"udp\"")),
            ["smgr.toml:3:13: functions.hello.readiness: unknown variant `udp`, expected `tcp` \
              or `http`"]
        );
        assert_eq!(
            toml_errors(&format!("{HELLO}readiness = {{ http = \"healthz\" }}")),
            ["smgr.toml:3:13: functions.hello.readiness: the HTTP readiness path must start \
              with '/', got \"healthz\""]
        );
    }

    #[test]
    fn semantic_errors_point_at_the_key_or_the_functions_table() {
        let text = r#"[server]
admin_token = "secret"
admin_token_env = "SMGR_ADMIN_TOKEN"
pool = "my pool"

[defaults]
concurrency = 0

[functions.hello]
command = []
min_instances = 5

[functions."bad name"]
command = ["x"]
acquire_timeout = "0s"
"#;
        assert_eq!(
            toml_errors(text),
            [
                "smgr.toml:2:15: server.admin_token: set either admin_token or admin_token_env, \
                 not both",
                "smgr.toml:4:8: server.pool: invalid pool name \"my pool\": ' ' is not allowed \
                 (only ASCII letters, digits, '-' and '_')",
                "smgr.toml:7:15: defaults.concurrency: must be at least 1, got 0",
                "smgr.toml:10:11: functions.hello.command: must name the program to run, got an \
                 empty list",
                "smgr.toml:11:17: functions.hello.min_instances: min_instances (5) must not \
                 exceed max_instances (4)",
                "smgr.toml:13:12: functions.\"bad name\": invalid function name \"bad name\": ' ' \
                 is not allowed (only ASCII letters, digits, '-' and '_')",
                "smgr.toml:15:19: functions.\"bad name\".acquire_timeout: must be longer than zero",
            ]
        );
    }

    #[test]
    fn a_function_breaking_a_default_is_reported_at_its_table() {
        // min_instances comes from the function's table, max_instances from the defaults: the
        // function's key carries the error.
        let text = "[defaults]\nmax_instances = 2\n\n[functions.hello]\ncommand = [\"x\"]\nmin_instances = 3\n";
        assert_eq!(
            toml_errors(text),
            ["smgr.toml:6:17: functions.hello.min_instances: min_instances (3) must not exceed \
              max_instances (2)"]
        );
        // A problem of the defaults alone is reported once, for the defaults.
        let text = "[defaults]\nmin_instances = 9\n\n[functions.a]\ncommand = [\"x\"]\n\n[functions.b]\ncommand = [\"x\"]\n";
        assert_eq!(
            toml_errors(text),
            ["smgr.toml:2:17: defaults.min_instances: min_instances (9) must not exceed \
              max_instances (4)"]
        );
        // Zero durations name the field, and how to turn it off instead.
        assert_eq!(
            toml_errors(&format!("{HELLO}idle_timeout = \"0s\"")),
            ["smgr.toml:3:16: functions.hello.idle_timeout: must be longer than zero (\"off\" \
              keeps idle instances)"]
        );
    }

    #[test]
    fn without_a_file_the_position_still_shows() {
        let errors = Config::parse("[server]\npool = 5\n", Format::Toml, None, env(&[]));
        assert_eq!(
            errors.unwrap_err().to_string(),
            "line 2, column 8: server.pool: invalid type: integer `5`, expected a string"
        );
        let error = ConfigError::new("server", "broken");
        assert_eq!(error.to_string(), "server: broken");
        let error = ConfigError { file: Some("a.toml".into()), line: Some(3), ..error };
        assert_eq!(error.to_string(), "a.toml:3: server: broken");
    }

    #[test]
    fn yaml_and_json_errors_point_at_the_function_when_the_key_is_elsewhere() {
        let yaml = "defaults:\n  max_instances: 2\nfunctions:\n  \"a b\":\n    command: [x]\n  hello:\n    command: [x]\n    min_instances: 3\n  world:\n    min_instances: 1\n";
        assert_eq!(
            errors(yaml, Format::Yaml, &[]),
            [
                "smgr.yaml:4:3: functions.\"a b\": invalid function name \"a b\": ' ' is not \
                 allowed (only ASCII letters, digits, '-' and '_')",
                "smgr.yaml:8:20: functions.hello.min_instances: min_instances (3) must not exceed \
                 max_instances (2)",
                "smgr.yaml:9:3: functions.world: missing field `command`",
            ]
        );
        let json = "{\"functions\": {\n  \"hello\": {\"command\": [\"x\"], \"max_instances\": 0},\n  \"world\": {}\n}}";
        assert_eq!(
            errors(json, Format::Json, &[]),
            [
                "smgr.json:2:48: functions.hello.max_instances: must be at least 1, got 0",
                "smgr.json:3:3: functions.world: missing field `command`",
            ]
        );
    }

    #[test]
    fn every_error_is_reported_at_once_in_every_format() {
        let toml = r#"[server]
listen = "nowhere"
max_body = "lots"

[defaults]
max_instances = 0

[functions.a]
command = []
bogus = true
concurrency = "many"

[functions.b]
command = ["x"]
idle_timeout = "5 fortnights"
"#;
        let expected_toml = [
            "smgr.toml:2:10: server.listen: invalid socket address syntax",
            "smgr.toml:3:12: server.max_body: invalid size \"lots\": expected a number of bytes, \
             optionally with a unit",
            "smgr.toml:6:17: defaults.max_instances: must be at least 1, got 0",
            "smgr.toml:9:11: functions.a.command: must name the program to run, got an empty list",
            "smgr.toml:10:1: functions.a.bogus: unknown field `bogus`, expected one of \
             `backend`, `command`, `image`, `container_port`, `pull`, \
              `limits`, `security`, `network`, `files`, `labels`, `init`, `env`, `readiness`, `working_dir`, `socket_activation`, \
             `pass_env`, `min_instances`, `max_instances`, `concurrency`, `queue_limit`, \
             `acquire_timeout`, `idle_timeout`, `startup_timeout`, `grace_period`, \
             `health_check_interval`",
            "smgr.toml:11:15: functions.a.concurrency: invalid type: string \"many\", expected \
             usize",
            "smgr.toml:15:16: functions.b.idle_timeout: invalid duration \"5 fortnights\": \
             unknown time unit \"fortnights\", supported units: ns, us/µs, ms, sec, min, hours, \
             days, weeks, months, years (and few variations)",
        ];
        assert_eq!(toml_errors(toml), expected_toml);

        let yaml = r#"server:
  listen: nowhere
  max_body: lots
defaults:
  max_instances: 0
functions:
  a:
    command: []
    bogus: true
    concurrency: many
  b:
    command: [x]
    idle_timeout: 5 fortnights
"#;
        let found = errors(yaml, Format::Yaml, &[]);
        let positions: Vec<&str> =
            found.iter().map(|line| line.split(": ").next().unwrap_or_default()).collect();
        assert_eq!(
            positions,
            [
                "smgr.yaml:2:11",
                "smgr.yaml:3:13",
                "smgr.yaml:5:18",
                "smgr.yaml:8:14",
                "smgr.yaml:9:5",
                "smgr.yaml:10:18",
                "smgr.yaml:13:19"
            ],
            "{found:#?}"
        );
        // Apart from the position, the messages are the same.
        for (yaml, toml) in found.iter().zip(expected_toml) {
            assert_eq!(yaml.split_once(": ").unwrap().1, toml.split_once(": ").unwrap().1);
        }

        let json = r#"{
  "server": { "listen": "nowhere", "max_body": "lots" },
  "defaults": { "max_instances": 0 },
  "functions": {
    "a": { "command": [], "bogus": true, "concurrency": "many" },
    "b": { "command": ["x"], "idle_timeout": "5 fortnights" }
  }
}"#;
        let found = errors(json, Format::Json, &[]);
        let positions: Vec<&str> =
            found.iter().map(|line| line.split(": ").next().unwrap_or_default()).collect();
        assert_eq!(
            positions,
            [
                "smgr.json:2:25",
                "smgr.json:2:48",
                "smgr.json:3:34",
                "smgr.json:5:23",
                "smgr.json:5:27",
                "smgr.json:5:57",
                "smgr.json:6:46"
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn environment_overrides_reach_server_defaults_and_functions() {
        let vars = [
            ("SMGR_SERVER__LISTEN", "0.0.0.0:9000"),
            ("SMGR_DEFAULTS__MAX_INSTANCES", "8"),
            ("SMGR_FUNCTIONS__HELLO__MAX_INSTANCES", "6"),
            ("SMGR_FUNCTIONS__HELLO__IDLE_TIMEOUT", "off"),
            ("SMGR_FUNCTIONS__HELLO__READINESS", "{ http = \"/ready\" }"),
            ("SMGR_FUNCTIONS__HELLO__ENV__Greeting", "hi"),
            ("SMGR_FUNCTIONS__HELLO__COMMAND", "[\"./hello\", \"--port\", \"{port}\"]"),
            ("SMGR_SERVER__ADMIN_TOKEN", "12345"),
            ("SMGR_ADMIN_TOKEN", "not an override"),
            ("OTHER__THING", "ignored"),
        ];
        let config = load(HELLO, Format::Toml, &vars).unwrap();
        assert_eq!(config.server.listen, "0.0.0.0:9000".parse().unwrap());
        // A number for a string field is taken as the variable's text.
        assert_eq!(config.server.admin_token.as_deref(), Some("12345"));
        assert_eq!(config.defaults.max_instances, 8);
        let hello = &config.functions["hello"];
        assert_eq!(hello.max_instances, Some(6));
        assert_eq!(hello.idle_timeout, Some(None));
        assert_eq!(hello.readiness, Readiness::Http("/ready".into()));
        assert_eq!(hello.env["Greeting"], "hi");
        assert_eq!(hello.command.as_deref().unwrap(), ["./hello", "--port", "{port}"]);
        // The matching is case-insensitive and overrides what the file says.
        let text = format!("[defaults]\nmax_instances = 2\n{HELLO}");
        let config = load(&text, Format::Toml, &[("SMGR_defaults__Max_Instances", "3")]).unwrap();
        assert_eq!(config.defaults.max_instances, 3);
    }

    #[test]
    fn errors_from_the_environment_name_the_variable() {
        let vars = [
            ("SMGR_FUNCTIONS__NOPE__MAX_INSTANCES", "8"),
            ("SMGR_FUNCTIONS__HELLO__MAX_INSTANCES", "lots"),
            ("SMGR_SERVER__LISTN", "0.0.0.0:1"),
            ("SMGR_DEFAULTS__CONCURRENCY", "0"),
            ("SMGR_SERVR__LISTEN", "x"),
            ("SMGR_SERVER____LISTEN", "x"),
        ];
        assert_eq!(
            errors(HELLO, Format::Toml, &vars),
            [
                "SMGR_DEFAULTS__CONCURRENCY: must be at least 1, got 0 (sets defaults.concurrency)",
                "SMGR_FUNCTIONS__HELLO__MAX_INSTANCES: invalid type: string \"lots\", expected \
                 usize (sets functions.hello.max_instances)",
                "SMGR_FUNCTIONS__NOPE__MAX_INSTANCES: no function is named `NOPE` \
                 (case-insensitively); the config has hello",
                "SMGR_SERVER__LISTN: unknown field `listn`, expected one of `listen`, \
                 `admin_token_env`, `admin_token`, `max_body`, `request_timeout`, \
                 `shutdown_timeout`, `pool`, `state_dir`, `docker_host`, \
                 `docker_max_concurrent_creates` (sets server.listn)",
                "SMGR_SERVER____LISTEN: an empty key in the name (a `__` too many)",
                "SMGR_SERVR__LISTEN: `SERVR` is not a section of the config (expected SERVER, \
                 DEFAULTS or FUNCTIONS)",
            ]
        );
        // A table created on the way to an unknown key is the variable's too.
        assert_eq!(
            errors(HELLO, Format::Toml, &[("SMGR_FUNCTIONS__HELLO__QUOTAS__CPU", "1")]),
            ["SMGR_FUNCTIONS__HELLO__QUOTAS__CPU: unknown field `quotas`, expected one of \
              `backend`, `command`, `image`, `container_port`, `pull`, \
              `limits`, `security`, `network`, `files`, `labels`, `init`, `env`, `readiness`, `working_dir`, `socket_activation`, \
              `pass_env`, `min_instances`, `max_instances`, `concurrency`, `queue_limit`, \
              `acquire_timeout`, `idle_timeout`, `startup_timeout`, `grace_period`, \
              `health_check_interval` (sets functions.hello.quotas)"]
        );
        // A value that is wrong as a TOML value and as a string reports the TOML reading.
        assert_eq!(
            errors(HELLO, Format::Toml, &[("SMGR_DEFAULTS__MAX_INSTANCES", "1.5")]),
            ["SMGR_DEFAULTS__MAX_INSTANCES: invalid type: floating point `1.5`, expected usize \
              (sets defaults.max_instances)"]
        );
        // File errors keep their place; the variables' come after them.
        let found = errors(
            &format!("{HELLO}max_instances = \"x\"\n"),
            Format::Toml,
            &[("SMGR_SERVER__POOL", "bad pool")],
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("smgr.toml:3:17: functions.hello.max_instances: "));
        assert!(found[1].starts_with("SMGR_SERVER__POOL: invalid pool name"), "{found:?}");
    }

    #[test]
    fn pool_core_fields_map_onto_overridable_keys() {
        let everything = FunctionConfig::default().filled(&FunctionDefaults::default());
        let fields = ["min", "max", "concurrency", "queue_limit", "acquire_timeout"];
        let more = ["create_timeout", "idle_timeout", "health_check_interval", "destroy_grace"];
        for field in fields.into_iter().chain(more) {
            let key = pool_field(field).unwrap_or_else(|| panic!("{field} is not mapped"));
            assert!(everything.overrides(key), "{field} maps onto {key}");
        }
        assert_eq!(pool_field("selection"), None);
    }

    #[test]
    fn sizes_read_units_and_numbers() {
        let cases = [
            ("6MiB", 6 << 20),
            ("512KiB", 512 << 10),
            ("10MB", 10_000_000),
            ("1048576", 1 << 20),
            ("1.5 kib", 1536),
            ("2gb", 2_000_000_000),
            ("7B", 7),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "MiB", "1.2.3MiB", "5 furlongs", "99999999999999999999", "20000000TiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?}");
        }
        let shown: Vec<String> =
            [0, 7, 1000, 1024, 6 << 20, 1_000_000].map(|n| ByteSize(n).to_string()).to_vec();
        assert_eq!(shown, ["0B", "7B", "1KB", "1KiB", "6MiB", "1MB"]);
        let config = load("[server]\nmax_body = 1024\n", Format::Toml, &[]).unwrap();
        assert_eq!(config.server.max_body, ByteSize::kib(1));
        assert_eq!(
            toml_errors("[server]\nmax_body = -1\n"),
            ["smgr.toml:2:12: server.max_body: invalid value: integer `-1`, expected a size like \
              \"6MiB\", \"512KiB\" or \"10MB\", or a number of bytes"]
        );
    }

    #[test]
    fn switchable_durations_turn_off() {
        let text = format!(
            "[defaults]\nidle_timeout = \"off\"\nhealth_check_interval = \"1m\"\n{HELLO}health_check_interval = \"off\"\nidle_timeout = \"90s\"\n"
        );
        let config = load(&text, Format::Toml, &[]).unwrap();
        assert_eq!(config.defaults.idle_timeout, None);
        assert_eq!(config.defaults.health_check_interval, Some(Duration::from_secs(60)));
        let settings = config.functions["hello"].settings(&config.defaults);
        assert_eq!(settings.idle_timeout, Some(Duration::from_secs(90)));
        assert_eq!(settings.health_check_interval, None);
        let json = r#"{"defaults": {"idle_timeout": null}}"#;
        assert_eq!(load(json, Format::Json, &[]).unwrap().defaults.idle_timeout, None);
    }

    #[test]
    fn docker_functions_resolve_to_a_docker_spec() {
        let text = r#"[defaults]
grace_period = "3s"

[functions.api]
backend = "docker"
image = "registry.example/api:1.4"
command = ["--verbose"]
container_port = 9000
pull = "never"
readiness = { http = "/healthz" }
limits = { memory = "128MiB", cpus = 0.5, pids = 64 }
security = { read_only_root = true, user = "1000:1000", add_capabilities = ["NET_BIND_SERVICE"] }
network = "backend"
labels = { team = "search" }
env = { LEVEL = "debug" }
"#;
        let config = load(text, Format::Toml, &[]).unwrap();
        let resolved = config.resolve(Path::new("/etc/smgr")).unwrap();
        let spec = resolved[0].spec.as_docker().expect("a docker spec");
        assert_eq!(resolved[0].backend, BackendKind::Docker);
        assert_eq!(spec.image, "registry.example/api:1.4");
        assert_eq!(spec.command.as_deref(), Some(&["--verbose".to_owned()][..]));
        assert_eq!(spec.container_port, 9000);
        assert_eq!(spec.pull, backend_docker::PullPolicy::Never);
        assert_eq!(spec.readiness, backend_docker::Readiness::Http("/healthz".into()));
        assert_eq!(spec.limits.memory_bytes, Some(128 << 20));
        assert_eq!(spec.limits.cpus, Some(0.5));
        assert_eq!(spec.limits.pids, Some(64));
        assert!(spec.security.read_only_root);
        assert!(spec.security.drop_all_capabilities && spec.security.no_new_privileges);
        assert_eq!(spec.security.user.as_deref(), Some("1000:1000"));
        assert_eq!(spec.security.add_capabilities, ["NET_BIND_SERVICE"]);
        assert_eq!(spec.network.as_deref(), Some("backend"));
        assert_eq!(spec.labels["team"], "search");
        assert_eq!(spec.env["LEVEL"], "debug");
        assert_eq!(spec.grace_period, Some(Duration::from_secs(3)));

        // Without a command the image's own runs; a file source is relative to the config.
        let text = "[functions.f]\nbackend = \"docker\"\nimage = \"x\"\n\
                    files = [{ path = \"/app/conf.toml\", source = \"conf/app.toml\", mode = 0o600 }]\n";
        let resolved =
            load(text, Format::Toml, &[]).unwrap().resolve(Path::new("/etc/smgr")).unwrap();
        let spec = resolved[0].spec.as_docker().unwrap();
        assert_eq!(spec.command, None);
        assert!(spec.init, "an init by default");
        assert_eq!(spec.files[0].source.as_deref(), Some(Path::new("/etc/smgr/conf/app.toml")));
        assert_eq!(spec.files[0].mode, 0o600);
    }

    #[test]
    fn the_docker_engine_settings_are_checked() {
        assert_eq!(
            toml_errors(
                "[server]\ndocker_host = \"ssh://box\"\ndocker_max_concurrent_creates = 0\n"
            ),
            [
                "smgr.toml:2:15: server.docker_host: must be unix:///path, tcp://host:port or \
                 http://host:port, got \"ssh://box\"",
                "smgr.toml:3:33: server.docker_max_concurrent_creates: must be at least 1, got 0",
            ]
        );
        let config = load(
            "[server]\ndocker_host = \"tcp://10.0.0.2:2375\"\ndocker_max_concurrent_creates = 2\n",
            Format::Toml,
            &[],
        )
        .unwrap();
        assert_eq!(config.server.docker_host.as_deref(), Some("tcp://10.0.0.2:2375"));
        assert_eq!(config.server.docker_max_concurrent_creates, 2);
        // What DOCKER_HOST and the backend take, the config takes too.
        let config =
            load("[server]\ndocker_host = \"http://10.0.0.2\"\n", Format::Toml, &[]).unwrap();
        assert_eq!(config.server.docker_host.as_deref(), Some("http://10.0.0.2"));
        assert_eq!(Config::default().server.docker_max_concurrent_creates, 8);
    }

    #[test]
    fn keys_of_the_other_backend_are_refused_with_where_they_belong() {
        assert_eq!(
            toml_errors("[functions.f]\nbackend = \"docker\"\ncommand = [\"x\"]\n"),
            ["smgr.toml:1:12: functions.f: a docker function needs `image`, the image to run"]
        );
        assert_eq!(
            toml_errors(
                "[functions.f]\nbackend = \"docker\"\nimage = \"x\"\nworking_dir = \"w\"\n\
                 pass_env = [\"PATH\"]\nlabels = { \"smgr.owner\" = \"me\" }\n\
                 limits = { cpus = 0 }\nfiles = [{ path = \"rel\" }]\n"
            ),
            [
                "smgr.toml:4:15: functions.f.working_dir: `working_dir` is for process functions; \
                 a container gets `env` alone",
                "smgr.toml:5:12: functions.f.pass_env: `pass_env` is for process functions; a \
                 container gets `env` alone",
                "smgr.toml:6:27: functions.f.labels.\"smgr.owner\": the smgr.* labels are smgr's own",
                "smgr.toml:7:19: functions.f.limits.cpus: must be a number of CPUs above zero, got 0",
                "smgr.toml:8:10: functions.f.files[0]: `path` must be absolute in the container, \
                 got \"rel\"",
                "smgr.toml:8:10: functions.f.files[0]: give exactly one of `source` and `contents`",
            ]
        );
        assert_eq!(
            toml_errors("[functions.f]\ncommand = [\"x\"]\nimage = \"y\"\nlimits = { pids = 3 }\n"),
            [
                "smgr.toml:3:9: functions.f.image: `image` is for docker functions: set \
                 `backend = \"docker\"`",
                "smgr.toml:4:10: functions.f.limits: `limits` is for docker functions: set \
                 `backend = \"docker\"`",
            ]
        );
    }

    #[test]
    fn resolve_builds_pools_and_specs_against_the_config_directory() {
        let text = r#"[defaults]
max_instances = 3
grace_period = "2s"

[functions.hello]
command = ["./bin/hello", "--port", "{port}"]
working_dir = "work"
socket_activation = true
pass_env = ["PATH"]
startup_timeout = "20s"
concurrency = 4

[functions.world]
command = ["python3", "world.py"]
"#;
        let config = load(text, Format::Toml, &[]).unwrap();
        let resolved = config.resolve(Path::new("/etc/smgr/./conf")).unwrap();
        let names: Vec<&str> = resolved.iter().map(|function| function.name.as_str()).collect();
        assert_eq!(names, ["hello", "world"]);

        let hello = &resolved[0];
        assert_eq!(hello.backend, BackendKind::Process);
        assert_eq!(hello.spec.as_process().unwrap().program, Path::new("/etc/smgr/conf/bin/hello"));
        assert_eq!(hello.spec.as_process().unwrap().args, ["--port", "{port}"]);
        assert_eq!(
            hello.spec.as_process().unwrap().working_dir.as_deref(),
            Some(Path::new("/etc/smgr/conf/work"))
        );
        assert!(hello.spec.as_process().unwrap().socket_activation);
        assert_eq!(hello.spec.as_process().unwrap().pass_env, ["PATH"]);
        assert_eq!(hello.spec.as_process().unwrap().startup_timeout, Duration::from_secs(20));
        assert_eq!(hello.spec.as_process().unwrap().grace_period, Some(Duration::from_secs(2)));
        assert_eq!(hello.pool.max, 3);
        assert_eq!(hello.pool.concurrency, 4);
        assert_eq!(hello.pool.destroy_grace, Duration::from_secs(2));
        assert_eq!(hello.pool.create_timeout, Duration::from_secs(25));
        hello.pool.validate().unwrap();

        let world = &resolved[1];
        // A bare program is looked up in PATH; the function runs in the config's directory.
        assert_eq!(world.spec.as_process().unwrap().program, Path::new("python3"));
        assert_eq!(
            world.spec.as_process().unwrap().working_dir.as_deref(),
            Some(Path::new("/etc/smgr/conf"))
        );
        assert_eq!(world.spec.as_process().unwrap().pass_env, ["PATH", "LANG"]);
        assert_eq!(world.pool.concurrency, 1);
        assert_eq!(world.pool.queue_limit, 64);
        assert_eq!(world.pool.acquire_timeout, Some(Duration::from_secs(10)));
        assert_eq!(world.pool.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(world.pool.health_check_interval, Some(Duration::from_secs(30)));

        // A relative base directory is made absolute.
        let resolved = config.resolve(Path::new("")).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            resolved[1].spec.as_process().unwrap().working_dir.as_deref(),
            Some(cwd.as_path())
        );
    }

    #[test]
    fn a_config_built_in_code_is_checked_too() {
        let mut config = Config::default();
        config.functions.insert(
            "a b".to_owned(),
            FunctionConfig {
                command: Some(vec!["x".into()]),
                max_instances: Some(0),
                ..Default::default()
            },
        );
        let errors = config.resolve(Path::new("/")).unwrap_err().to_string();
        assert_eq!(
            errors,
            "functions.\"a b\": invalid function name \"a b\": ' ' is not allowed (only ASCII \
             letters, digits, '-' and '_')\nfunctions.\"a b\".max_instances: must be at least 1, \
             got 0"
        );
    }

    #[test]
    fn the_admin_token_comes_from_the_config_or_the_environment() {
        let mut config = Config::default();
        assert_eq!(config.admin_token(env(&[])).unwrap(), None);
        config.server.admin_token = Some("t0ken".into());
        assert_eq!(config.admin_token(env(&[])).unwrap().as_deref(), Some("t0ken"));
        assert!(!format!("{config:?}").contains("t0ken"));

        config.server.admin_token = None;
        config.server.admin_token_env = Some("MY_TOKEN".into());
        let token = config.admin_token(env(&[("MY_TOKEN", "s3cret")])).unwrap();
        assert_eq!(token.as_deref(), Some("s3cret"));
        assert_eq!(
            config.admin_token(env(&[])).unwrap_err().to_string(),
            "server.admin_token_env: the environment variable MY_TOKEN holding the admin token \
             is not set"
        );
        assert_eq!(
            config.admin_token(env(&[("MY_TOKEN", "")])).unwrap_err().to_string(),
            "server.admin_token_env: the environment variable MY_TOKEN holding the admin token \
             is empty"
        );
    }

    #[test]
    fn rendering_fills_every_default_and_reads_back() {
        let text = format!(
            "[server]\nadmin_token_env = \"TOKEN\"\nmax_body = \"1.5MiB\"\n\n[defaults]\nidle_timeout = \"off\"\n\n{HELLO}env = {{ QUOTE = \"a \\\"b\\\"\\n\", n = 1 }}\nreadiness = {{ http = \"/h\" }}\n\n[functions.\"odd-Name_2\"]\ncommand = [\"x\"]\nworking_dir = \"w d\"\nhealth_check_interval = \"1h 30m\"\n"
        );
        let config = load(&text, Format::Toml, &[]).unwrap();
        let rendered = render_resolved(&config);
        let back = Config::parse(&rendered, Format::Toml, None, env(&[]))
            .unwrap_or_else(|errors| panic!("{errors}\n{rendered}"));
        assert_eq!(back, config.filled(), "{rendered}");
        assert_eq!(render_resolved(&back), rendered);
        assert_eq!(
            back.resolve(Path::new("/x")).unwrap(),
            config.resolve(Path::new("/x")).unwrap()
        );
        // Every setting is spelled out for each function.
        assert!(rendered.contains("[functions.hello]\n"), "{rendered}");
        assert!(rendered.contains("idle_timeout = \"off\"\n"), "{rendered}");
        assert!(rendered.contains("health_check_interval = \"1h 30m\"\n"), "{rendered}");
        assert!(rendered.contains("max_body = \"1536KiB\"\n"), "{rendered}");
        assert!(rendered.contains("readiness = { http = \"/h\" }\n"), "{rendered}");
        assert_eq!(back.functions["hello"].max_instances, Some(4));

        // The admin token is not printed.
        let mut secret = config.clone();
        secret.server.admin_token_env = None;
        secret.server.admin_token = Some("hunter2".into());
        let rendered = render_resolved(&secret);
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert!(rendered.contains("# admin_token is set (not shown)"), "{rendered}");
    }

    #[test]
    fn the_schema_describes_every_section() {
        let schema = schema();
        for section in SECTIONS {
            assert!(schema["properties"][section].is_object(), "{section}: {schema:#}");
        }
        let text = serde_json::to_string(&schema).unwrap();
        let reparsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reparsed, schema);
        assert!(text.contains("max_instances") && text.contains("readiness"));
    }

    #[test]
    fn unreadable_files_and_unknown_extensions_name_the_file() {
        let error = Config::load(Path::new("conf/smgr.ini"), env(&[])).unwrap_err().to_string();
        assert_eq!(
            error,
            "conf/smgr.ini: unknown config format: the file name must end in .toml, .yaml, .yml \
             or .json"
        );
        let error = Config::load(Path::new("/nonexistent/smgr.toml"), env(&[])).unwrap_err();
        assert!(
            error.to_string().starts_with("/nonexistent/smgr.toml: cannot read the config file: "),
            "{error}"
        );
    }
}
