//! The serverless layer: [`FunctionSpec`], [`Instance`], [`Endpoint`], the [`Backend`] trait
//! that every execution environment implements, and [`FunctionManager`], which turns a backend
//! and a function into a pool [`Manager`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::manager::Manager;
use crate::owner::{Scope, check_name};
use crate::status::InstanceId;

/// The name of a function: 1 to 63 ASCII letters, digits, `-` and `_`, starting with a letter
/// or digit, so that it fits a URL segment, a file name and a container or pod label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionName(Arc<str>);

impl FunctionName {
    /// Checks `name`.
    pub fn new(name: impl AsRef<str>) -> Result<Self, BackendError> {
        let name = name.as_ref();
        check_name("function", name)?;
        Ok(Self(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FunctionName {
    type Error = BackendError;

    fn try_from(name: String) -> Result<Self, BackendError> {
        Self::new(name)
    }
}

impl From<FunctionName> for String {
    fn from(name: FunctionName) -> String {
        name.0.to_string()
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A function to run: its name and what its backend needs to launch it (a program, an image,
/// a pod template, a handler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec<S> {
    /// The function's name, in errors, logs and labels.
    pub name: FunctionName,
    /// The backend-specific part.
    pub spec: S,
}

impl<S> FunctionSpec<S> {
    /// A function named `name`.
    pub fn new(name: impl AsRef<str>, spec: S) -> Result<Self, BackendError> {
        Ok(Self { name: FunctionName::new(name)?, spec })
    }
}

/// Where an instance takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Endpoint {
    /// HTTP at this address (a child process, a published container port, a pod).
    Http(SocketAddr),
    /// In this process (a worker thread): the backend's instance details say how to call it.
    InProcess,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Http(address) => write!(f, "http://{address}"),
            Endpoint::InProcess => f.write_str("in-process"),
        }
    }
}

/// One running instance of a function, as a backend launched it.
///
/// `D` holds what the backend needs to probe and terminate it: a child process, a container
/// id, a pod name.
#[derive(Debug)]
pub struct Instance<D> {
    id: InstanceId,
    function: FunctionName,
    endpoint: Endpoint,
    created_at: SystemTime,
    usage: Arc<Usage>,
    details: D,
}

/// How much an instance is used; shared with [`FunctionManager`]'s list of instances.
#[derive(Debug)]
struct Usage {
    started: Instant,
    uses: AtomicU64,
    /// Milliseconds from `started` to the latest lease, plus one; 0 before the first.
    last_used: AtomicU64,
}

impl Usage {
    fn uses(&self) -> u64 {
        self.uses.load(Ordering::Relaxed)
    }

    fn last_used(&self, created_at: SystemTime) -> Option<SystemTime> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            millis => Some(created_at + Duration::from_millis(millis - 1)),
        }
    }
}

impl<D> Instance<D> {
    /// An instance that has just become ready.
    pub fn new(id: InstanceId, function: FunctionName, endpoint: Endpoint, details: D) -> Self {
        Self {
            id,
            function,
            endpoint,
            created_at: SystemTime::now(),
            usage: Arc::new(Usage {
                started: Instant::now(),
                uses: AtomicU64::new(0),
                last_used: AtomicU64::new(0),
            }),
            details,
        }
    }

    /// The id the pool knows it by.
    pub fn id(&self) -> InstanceId {
        self.id
    }

    /// The function it runs.
    pub fn function(&self) -> &FunctionName {
        &self.function
    }

    /// Where it takes requests.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// When it became ready.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// When it was last leased, if ever.
    pub fn last_used(&self) -> Option<SystemTime> {
        self.usage.last_used(self.created_at)
    }

    /// How many leases it has been given.
    pub fn uses(&self) -> u64 {
        self.usage.uses()
    }

    /// What the backend knows of it.
    pub fn details(&self) -> &D {
        &self.details
    }

    /// What the backend knows of it, to change.
    pub fn details_mut(&mut self) -> &mut D {
        &mut self.details
    }

    /// Counts a lease.
    pub fn record_use(&self) {
        let usage = &self.usage;
        usage.uses.fetch_add(1, Ordering::Relaxed);
        let millis = u64::try_from(usage.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        usage.last_used.fetch_max(millis + 1, Ordering::Relaxed);
    }

    /// Splits it into its parts, for a backend that terminates it.
    pub fn into_details(self) -> D {
        self.details
    }
}

/// What [`Backend::probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The instance runs and, where the spec asks for a check, answers it.
    Alive,
    /// The instance is gone or failing, and why (an exit status, a failed check).
    Dead(String),
}

/// When a new instance of an HTTP backend counts as ready for requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Its port takes a TCP connection (for a container, one that the function keeps open:
    /// the engine's port proxy accepts connections before the function listens).
    #[default]
    Tcp,
    /// `GET` of this path answers 2xx.
    Http(String),
}

/// Whether `name` can name an environment variable: not empty, and no `=` or NUL in it.
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// The spec rules every backend that launches programs shares: a startup timeout above zero,
/// an HTTP readiness path that starts with `/`, and environment variable names that are not
/// empty and hold no `=` or NUL. The reason of the first rule broken, for the backend's
/// [`BackendError::InvalidSpec`].
pub fn check_launch_rules<'a>(
    startup_timeout: Duration,
    readiness: &Readiness,
    env_names: impl IntoIterator<Item = &'a String>,
) -> Result<(), String> {
    if startup_timeout.is_zero() {
        return Err("startup_timeout must be above zero".to_owned());
    }
    if let Readiness::Http(path) = readiness
        && !path.starts_with('/')
    {
        return Err(format!("readiness http path {path:?} must start with '/'"));
    }
    match env_names.into_iter().find(|name| !is_env_name(name)) {
        Some(name) => Err(format!("environment variable name {name:?} is not valid")),
        None => Ok(()),
    }
}

/// How [`Backend::terminate`] ended an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Termination {
    /// It stopped within the grace period after being asked to.
    Graceful,
    /// It was still running when the grace period ended and was killed.
    Forced,
    /// It had already exited (or been removed) before being asked.
    AlreadyGone,
}

/// What [`Backend::reap_orphans`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reaped {
    /// Dead owners of this pool whose leftovers were examined.
    pub owners: usize,
    /// Instances (processes, containers, pods) killed or removed.
    pub instances: usize,
    /// Owners skipped because they still run or belong to another host.
    pub skipped_owners: usize,
}

/// The one error type of the serverless layer, shared by every backend so that callers (the
/// gateway) can tell a bad spec from a failed launch from an unreachable backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A pool, function or owner name breaks the naming rules.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What was being named: `pool`, `function`, `owner`.
        kind: String,
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The function's spec cannot work as written (a missing program, a bad directory).
    #[error("function `{function}`: {reason}")]
    InvalidSpec {
        /// The function.
        function: String,
        /// What is wrong, naming the offending part of the spec.
        reason: String,
    },
    /// Launching an instance failed.
    #[error("function `{function}`: launching an instance failed: {reason}")]
    Launch {
        /// The function.
        function: String,
        /// What failed, with the program, image or pod involved.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The instance started but did not become ready within its startup timeout; it was
    /// terminated.
    #[error(
        "function `{function}`: the instance was not ready within {timeout:?} ({detail}); it was stopped{}",
        tail(stderr_tail)
    )]
    NotReady {
        /// The function.
        function: String,
        /// The startup timeout.
        timeout: Duration,
        /// What the last readiness attempt saw.
        detail: String,
        /// The last lines the instance wrote to stderr.
        stderr_tail: Vec<String>,
    },
    /// The instance exited before it became ready.
    #[error(
        "function `{function}`: the instance exited before it was ready ({status}){}",
        tail(stderr_tail)
    )]
    ExitedBeforeReady {
        /// The function.
        function: String,
        /// How it exited.
        status: String,
        /// The last lines the instance wrote to stderr.
        stderr_tail: Vec<String>,
    },
    /// The backend itself cannot be reached (a Docker daemon, a cluster).
    #[error("the {backend} backend is unavailable: {reason}")]
    Unavailable {
        /// `docker`, `k8s`...
        backend: String,
        /// What was tried and what failed.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Another operation of the backend failed.
    #[error("{operation} failed: {reason}")]
    Operation {
        /// What was being done, with its target (`terminating instance #3 of hello`).
        operation: String,
        /// What failed.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl BackendError {
    /// `function`'s spec cannot work, for `reason`.
    pub fn invalid_spec(function: &FunctionName, reason: impl Into<String>) -> Self {
        Self::InvalidSpec { function: function.to_string(), reason: reason.into() }
    }

    /// A launch of `function` failed for `reason`.
    pub fn launch(function: &FunctionName, reason: impl Into<String>) -> Self {
        Self::Launch { function: function.to_string(), reason: reason.into(), source: None }
    }

    /// A launch of `function` failed for `reason`, because of `source`.
    pub fn launch_because(
        function: &FunctionName,
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Launch {
            function: function.to_string(),
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last lines of stderr:\n  {}", lines.join("\n  "))
    }
}

/// An execution environment for functions: child processes, containers, pods, worker threads.
///
/// A backend is built for one [`Scope`] (its pool name and owner) and stamps it on everything
/// it launches, so that [`Backend::reap_orphans`] of a later owner finds what a dead one left
/// behind. Every backend passes the same conformance suite (`testkit` feature).
#[async_trait]
pub trait Backend: fmt::Debug + Send + Sync + 'static {
    /// The backend-specific part of a [`FunctionSpec`].
    type Spec: fmt::Debug + Send + Sync + 'static;
    /// What the backend keeps on each [`Instance`] to probe and terminate it.
    type Details: fmt::Debug + Send + Sync + 'static;

    /// The backend's name in errors and logs: `process`, `docker`, `k8s`, `worker`.
    fn kind(&self) -> &'static str;

    /// The scope this backend stamps on its instances.
    fn scope(&self) -> &Scope;

    /// Checks a function's spec without launching it, so that a bad one is refused when it is
    /// configured rather than at its first request. The default accepts every spec.
    fn validate(&self, function: &FunctionSpec<Self::Spec>) -> Result<(), BackendError> {
        let _ = function;
        Ok(())
    }

    /// Starts an instance of `function` and returns once it is ready for requests; an
    /// instance that fails to get ready is stopped before the error returns.
    async fn launch(
        &self,
        function: &FunctionSpec<Self::Spec>,
        id: InstanceId,
    ) -> Result<Instance<Self::Details>, BackendError>;

    /// Whether the instance still runs (and answers its check, when the spec has one).
    async fn probe(&self, instance: &Instance<Self::Details>) -> Result<Health, BackendError>;

    /// Stops the instance: asks it to stop, waits up to `grace`, then forces it; says which.
    /// An instance that is already gone is not an error.
    async fn terminate(
        &self,
        instance: Instance<Self::Details>,
        grace: Duration,
    ) -> Result<Termination, BackendError>;

    /// Kills or removes the instances that dead owners of the same pool name left behind.
    async fn reap_orphans(&self) -> Result<Reaped, BackendError>;

    /// The operating-system process of an instance, for backends that have one.
    fn pid(&self, details: &Self::Details) -> Option<u32> {
        let _ = details;
        None
    }
}

/// What [`FunctionManager::instances`] knows of a live instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceRecord {
    /// Its id.
    pub id: InstanceId,
    /// Where it takes requests.
    pub endpoint: Endpoint,
    /// When it became ready.
    pub created_at: SystemTime,
    /// When it was last leased, if ever.
    pub last_used: Option<SystemTime>,
    /// Leases it has been given.
    pub uses: u64,
    /// Its process, for backends that run one.
    pub pid: Option<u32>,
}

/// The manager's view of one live instance: the fixed facts and the shared usage.
#[derive(Debug)]
struct Record {
    endpoint: Endpoint,
    created_at: SystemTime,
    pid: Option<u32>,
    usage: std::sync::Weak<Usage>,
}

/// Counts of how [`FunctionManager`] ended its instances.
#[derive(Debug, Default)]
pub struct Terminations {
    graceful: AtomicU64,
    forced: AtomicU64,
    already_gone: AtomicU64,
    failed: AtomicU64,
}

impl Terminations {
    /// Instances that stopped within their grace period.
    pub fn graceful(&self) -> u64 {
        self.graceful.load(Ordering::Relaxed)
    }

    /// Instances killed after their grace period.
    pub fn forced(&self) -> u64 {
        self.forced.load(Ordering::Relaxed)
    }

    /// Instances that had exited before they were stopped.
    pub fn already_gone(&self) -> u64 {
        self.already_gone.load(Ordering::Relaxed)
    }

    /// Terminations that failed (the backend's error was lost with the instance).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn count(&self, outcome: &Result<Termination, BackendError>) {
        let counter = match outcome {
            Ok(Termination::Graceful) => &self.graceful,
            Ok(Termination::Forced) => &self.forced,
            Ok(Termination::AlreadyGone) => &self.already_gone,
            Err(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Turns a [`Backend`] and one function into a pool [`Manager`]: a pool of function instances
/// is `Pool::new(FunctionManager::new(backend, spec)?, config)`.
///
/// Creating launches an instance, checking probes it (an instance found dead is destroyed and
/// replaced by the pool), destroying terminates it with the pool's grace period. Each lease
/// counts as a use of its instance.
#[derive(Debug)]
pub struct FunctionManager<B: Backend> {
    backend: Arc<B>,
    function: FunctionSpec<B::Spec>,
    terminations: Arc<Terminations>,
    /// The instances it created and has not destroyed; an instance detached from the pool
    /// leaves once it is dropped.
    records: parking_lot::Mutex<std::collections::BTreeMap<InstanceId, Record>>,
}

impl<B: Backend> FunctionManager<B> {
    /// A manager of `function` on `backend`, after [`Backend::validate`] accepts its spec.
    pub fn new(backend: Arc<B>, function: FunctionSpec<B::Spec>) -> Result<Self, BackendError> {
        backend.validate(&function)?;
        Ok(Self { backend, function, terminations: Arc::default(), records: Default::default() })
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// The function.
    pub fn function(&self) -> &FunctionSpec<B::Spec> {
        &self.function
    }

    /// The live instances it launched, by id.
    pub fn instances(&self) -> Vec<InstanceRecord> {
        let mut records = self.records.lock();
        records.retain(|_, record| record.usage.strong_count() > 0);
        records
            .iter()
            .filter_map(|(id, record)| {
                let usage = record.usage.upgrade()?;
                Some(InstanceRecord {
                    id: *id,
                    endpoint: record.endpoint,
                    created_at: record.created_at,
                    last_used: usage.last_used(record.created_at),
                    uses: usage.uses(),
                    pid: record.pid,
                })
            })
            .collect()
    }

    /// How the instances destroyed so far ended.
    pub fn terminations(&self) -> &Arc<Terminations> {
        &self.terminations
    }
}

#[async_trait]
impl<B: Backend> Manager for FunctionManager<B> {
    type Instance = Instance<B::Details>;
    type Error = BackendError;

    async fn create(&self, id: InstanceId) -> Result<Self::Instance, BackendError> {
        let instance = self.backend.launch(&self.function, id).await?;
        let record = Record {
            endpoint: instance.endpoint(),
            created_at: instance.created_at(),
            pid: self.backend.pid(instance.details()),
            usage: Arc::downgrade(&instance.usage),
        };
        self.records.lock().insert(id, record);
        Ok(instance)
    }

    async fn check(&self, instance: &Self::Instance) -> Result<(), BackendError> {
        match self.backend.probe(instance).await? {
            Health::Alive => Ok(()),
            Health::Dead(reason) => Err(BackendError::Operation {
                operation: format!(
                    "probing instance {} of `{}`",
                    instance.id(),
                    self.function.name
                ),
                reason,
                source: None,
            }),
        }
    }

    async fn destroy(&self, instance: Self::Instance, grace: Duration) {
        self.records.lock().remove(&instance.id());
        let outcome = self.backend.terminate(instance, grace).await;
        self.terminations.count(&outcome);
    }

    fn leased(&self, instance: &Self::Instance) {
        instance.record_use();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_counts_its_uses_and_remembers_the_last() {
        let name = FunctionName::new("f").expect("a valid name");
        let instance = Instance::new(InstanceId(1), name, Endpoint::InProcess, ());
        assert_eq!((instance.uses(), instance.last_used()), (0, None));
        instance.record_use();
        instance.record_use();
        assert_eq!(instance.uses(), 2);
        let last = instance.last_used().expect("used");
        assert!(last >= instance.created_at() && last <= SystemTime::now());
    }

    #[test]
    fn errors_name_the_function_and_quote_the_stderr_tail() {
        let error = BackendError::ExitedBeforeReady {
            function: "hello".into(),
            status: "exit status: 3".into(),
            stderr_tail: vec!["first".into(), "second".into()],
        };
        assert_eq!(
            error.to_string(),
            "function `hello`: the instance exited before it was ready (exit status: 3); \
             last lines of stderr:\n  first\n  second"
        );
        let bad = FunctionName::new("has space").expect_err("invalid").to_string();
        assert!(bad.starts_with("invalid function name \"has space\""), "{bad}");
    }
}
