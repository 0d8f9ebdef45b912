//! [`DockerBackend`]: functions as containers on a Docker Engine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, EventMessage, EventMessageTypeEnum, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions,
};
use futures_util::StreamExt;
use parking_lot::Mutex;
use pool_core::{
    Backend, BackendError, Endpoint, FunctionName, FunctionSpec, Health, Instance, InstanceId,
    Liveness, OwnerId, PoolName, Reaped, Scope, Termination,
};
use tokio::sync::Semaphore;

use crate::http;
use crate::spec::{DockerSpec, PullPolicy, Readiness};
use crate::tar::TarBuilder;

/// The label with the owner id of a container.
pub const OWNER_LABEL: &str = "smgr.owner";
/// The label with the pool name of a container.
pub const POOL_LABEL: &str = "smgr.pool";
/// The label with the function of a container.
pub const FUNCTION_LABEL: &str = "smgr.function";
/// The label with the instance id of a container.
pub const INSTANCE_LABEL: &str = "smgr.instance";

/// The engine's socket when neither the config nor `DOCKER_HOST` names one.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// The engine's TCP port when a `tcp://` or `http://` address names none, as the `docker` CLI
/// has it.
pub const DEFAULT_TCP_PORT: u16 = 2375;

/// The engine's address: `configured`, else `DOCKER_HOST` when set and not empty, else
/// [`DEFAULT_HOST`]; a `tcp://` or `http://` address without a port gets
/// [`DEFAULT_TCP_PORT`].
pub(crate) fn engine_host(configured: Option<&str>) -> String {
    let host = configured
        .map(str::to_owned)
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|host| !host.is_empty()))
        .unwrap_or_else(|| DEFAULT_HOST.to_owned());
    with_default_port(host)
}

/// Whether `host` is an engine address the backend can reach: `unix:///path`,
/// `tcp://host[:port]` or `http://host[:port]`.
pub fn is_engine_address(host: &str) -> bool {
    host.starts_with("unix://") || tcp_authority(host).is_some()
}

/// The `host[:port]` of a `tcp://` or `http://` engine address (a trailing `/` dropped);
/// `None` for any other address.
pub(crate) fn tcp_authority(host: &str) -> Option<&str> {
    let rest = host.strip_prefix("tcp://").or(host.strip_prefix("http://"))?;
    Some(rest.trim_end_matches('/'))
}

/// `host` with [`DEFAULT_TCP_PORT`] added to a `tcp://` or `http://` address that has no port.
fn with_default_port(host: String) -> String {
    let Some(authority) = tcp_authority(&host) else { return host };
    // A port is digits after the last `:` (in `[::1]` the last `:` is inside the brackets).
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if authority.is_empty() || has_port {
        return host;
    }
    // The scheme and the authority: the address without its trailing `/`.
    format!("{}:{DEFAULT_TCP_PORT}", host.trim_end_matches('/'))
}

/// How long the TCP readiness check holds a connection to a published port to see that the
/// function keeps it (when the host does not reach containers at their own addresses).
const TCP_HOLD: Duration = Duration::from_millis(20);

/// How a [`DockerBackend`] reaches its engine and stamps its containers.
#[derive(Debug, Clone)]
pub struct DockerBackendConfig {
    /// The pool name and owner stamped on every container.
    pub scope: Scope,
    /// The engine: `unix:///path/to/docker.sock` or `tcp://host:port`. Unset, `DOCKER_HOST`,
    /// else [`DEFAULT_HOST`].
    pub host: Option<String>,
    /// Containers being created at once, at most; more launches wait. Default 8.
    pub max_concurrent_creates: usize,
    /// How long one call to the engine may take. Default 120 s (a pull is a stream of calls).
    pub api_timeout: Duration,
    /// Learn of dead containers from the engine's event stream. Default true; turned off (for
    /// an engine behind a proxy that refuses `/events`), probes inspect each container.
    pub follow_events: bool,
}

impl DockerBackendConfig {
    /// The defaults for `scope`.
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            host: None,
            max_concurrent_creates: 8,
            api_timeout: Duration::from_secs(120),
            follow_events: true,
        }
    }
}

/// What the backend keeps on each instance: its container.
#[derive(Debug, Clone)]
pub struct ContainerDetails {
    /// The container's id.
    pub id: String,
    /// The container's name.
    pub name: String,
    readiness: Readiness,
    grace_period: Option<Duration>,
}

/// A container of a pool, as [`DockerBackend::containers_of`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The container's id.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// Its owner label.
    pub owner: String,
    /// Its function label.
    pub function: String,
    /// Its instance label.
    pub instance: String,
    /// The engine's state: `running`, `exited`, `created`, ...
    pub state: String,
}

/// A step of an image pull, from [`DockerBackend::pull_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullEvent {
    /// The function whose launch pulls.
    pub function: String,
    /// The image.
    pub image: String,
    /// What happened.
    pub stage: PullStage,
}

/// What happened in a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullStage {
    /// The pull began.
    Started,
    /// The engine reported a new status, for a layer or for the whole image.
    Progress {
        /// The layer, when the status is about one.
        layer: Option<String>,
        /// The engine's status text (`Pulling fs layer`, `Download complete`, ...).
        status: String,
    },
    /// The image is on the engine.
    Finished,
    /// The pull failed; the launch fails with this error.
    Failed {
        /// Why.
        error: String,
    },
}

/// Containers that the event stream says are dead, with why.
type Deaths = Arc<Mutex<HashMap<String, String>>>;

/// Runs functions as containers on a Docker Engine. See the crate docs.
#[derive(Debug)]
pub struct DockerBackend {
    docker: Docker,
    host: String,
    scope: Scope,
    creates: Semaphore,
    deaths: Deaths,
    /// Whether the event stream is connected; when not, probes inspect.
    watching: Arc<AtomicBool>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Images known to be on the engine, or pulled once under `always`.
    images: Mutex<HashSet<String>>,
    /// Per image not known yet, the attempts to make it present, one at a time.
    image_turns: Mutex<HashMap<String, Arc<ImageTurn>>>,
    pulls: tokio::sync::broadcast::Sender<PullEvent>,
    /// A TCP readiness check found that this host does not reach containers at their own
    /// addresses; later checks go through the published port alone.
    container_addresses_unreachable: AtomicBool,
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

impl DockerBackend {
    /// Connects to the engine, checks that it answers (agreeing on the API version), and
    /// starts following its container events. Must be called inside a Tokio runtime.
    ///
    /// An engine that does not answer gives [`BackendError::Unavailable`] naming the address
    /// tried.
    pub async fn connect(config: DockerBackendConfig) -> Result<Self, BackendError> {
        let host = engine_host(config.host.as_deref());
        let unavailable = |reason: String, source: Option<DockerError>| BackendError::Unavailable {
            backend: "docker".to_owned(),
            reason,
            source: source.map(|error| Box::new(error) as _),
        };
        let timeout = config.api_timeout.as_secs().max(1);
        let docker = if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
        } else if tcp_authority(&host).is_some() {
            Docker::connect_with_http(&host, timeout, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(unavailable(
                format!(
                    "engine address {host:?}: only unix:///path, tcp://host:port and \
                     http://host:port are supported"
                ),
                None,
            ));
        };
        let docker = docker.map_err(|error| {
            unavailable(format!("engine address {host:?}: {error}"), Some(error))
        })?;
        let docker =
            match tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version()).await {
                Ok(Ok(docker)) => docker,
                Ok(Err(error)) => {
                    return Err(unavailable(
                        format!("no Docker Engine answers at {host}: {error}"),
                        Some(error),
                    ));
                }
                Err(_) => {
                    return Err(unavailable(
                        format!("no Docker Engine answered at {host} within 10s"),
                        None,
                    ));
                }
            };
        let deaths = Deaths::default();
        let watching = Arc::new(AtomicBool::new(false));
        let watcher = config.follow_events.then(|| {
            // This backend's own containers only: deaths of other owners' containers in the
            // pool would be recorded and never forgotten.
            let labels = scope_labels(&config.scope.pool, Some(&config.scope.owner));
            tokio::spawn(watch_events(docker.clone(), labels, deaths.clone(), watching.clone()))
        });
        Ok(Self {
            docker,
            host,
            scope: config.scope,
            creates: Semaphore::new(config.max_concurrent_creates.max(1)),
            deaths,
            watching,
            watcher,
            images: Mutex::new(HashSet::new()),
            image_turns: Mutex::new(HashMap::new()),
            pulls: tokio::sync::broadcast::channel(256).0,
            container_addresses_unreachable: AtomicBool::new(false),
        })
    }

    /// The engine's address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The engine client, for what the backend does not cover.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The containers of `pool`, of every owner or of `owner` alone, running or not.
    pub async fn containers_of(
        &self,
        pool: &PoolName,
        owner: Option<&OwnerId>,
    ) -> Result<Vec<ContainerInfo>, BackendError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), scope_labels(pool, owner))])),
            ..Default::default()
        };
        let listed = self.docker.list_containers(Some(options)).await.map_err(|error| {
            operation(format!("listing the containers of pool `{pool}`"), error)
        })?;
        Ok(listed
            .into_iter()
            .map(|summary| {
                let labels = summary.labels.unwrap_or_default();
                let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
                ContainerInfo {
                    id: summary.id.unwrap_or_default(),
                    name: summary
                        .names
                        .and_then(|names| names.into_iter().next())
                        .map(|name| name.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    owner: label(OWNER_LABEL),
                    function: label(FUNCTION_LABEL),
                    instance: label(INSTANCE_LABEL),
                    state: summary.state.map(|state| state.to_string()).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// Removes every container of this backend's own scope at once, running or not, without a
    /// grace period; returns the ids of those it listed and removed (or found being removed
    /// already). For a program that must stop now (a second signal) and cannot wait for its
    /// pools to stop their instances one by one: unlike child processes, containers do not die
    /// with the program that started them.
    pub async fn remove_own_containers(&self) -> Result<Vec<String>, BackendError> {
        let containers = self.containers_of(&self.scope.pool, Some(&self.scope.owner)).await?;
        let removals = containers.iter().map(|container| self.remove(&container.id));
        let results = futures_util::future::join_all(removals).await;
        let mut removed = Vec::new();
        for (container, result) in containers.into_iter().zip(results) {
            result?;
            removed.push(container.id);
        }
        Ok(removed)
    }

    /// Makes sure the image is on the engine, as the pull policy says. Launches that need an
    /// image at once make one attempt: the others wait for it and share its outcome, rather
    /// than each inspecting and pulling.
    async fn ensure_image(&self, function: &FunctionSpec<DockerSpec>) -> Result<(), BackendError> {
        let spec = &function.spec;
        if self.images.lock().contains(&spec.image) {
            return Ok(());
        }
        let turn = self.image_turns.lock().entry(spec.image.clone()).or_default().clone();
        let mut last_error = turn.lock().await;
        // A turn leaves the map when its attempt ends: one that ended before this launch took
        // the turn was made while it waited, and its outcome is this one's.
        if self.images.lock().contains(&spec.image) {
            return Ok(());
        }
        if let Some(reason) = &*last_error {
            return Err(BackendError::launch(&function.name, reason.clone()));
        }
        let made = self.make_image_present(function).await;
        *last_error = made.as_ref().err().map(|error| match error {
            BackendError::Launch { reason, .. } => reason.clone(),
            other => other.to_string(),
        });
        // Later launches make an attempt of their own (removed before the turn is released,
        // so that no launch takes it after its outcome is known). The map still holds this
        // turn: it leaves only here, and once an attempt on it has ended nobody makes another.
        self.image_turns.lock().remove(&spec.image);
        made
    }

    /// Inspects the image and pulls it as the pull policy says; one attempt of
    /// [`ensure_image`](Self::ensure_image).
    async fn make_image_present(
        &self,
        function: &FunctionSpec<DockerSpec>,
    ) -> Result<(), BackendError> {
        let spec = &function.spec;
        let present = match self.docker.inspect_image(&spec.image).await {
            Ok(_) => true,
            Err(error) if status_of(&error) == Some(404) => false,
            Err(error) => {
                return Err(operation(
                    format!("function `{}`: inspecting image {}", function.name, spec.image),
                    error,
                ));
            }
        };
        match (spec.pull, present) {
            (PullPolicy::Never, false) => {
                return Err(BackendError::launch(
                    &function.name,
                    format!(
                        "image {} is not on the engine at {}, and the pull policy is `never`",
                        spec.image, self.host
                    ),
                ));
            }
            (PullPolicy::Never, true) | (PullPolicy::IfMissing, true) => {}
            (PullPolicy::IfMissing, false) | (PullPolicy::Always, _) => {
                self.pull(function).await?;
            }
        }
        self.images.lock().insert(spec.image.clone());
        Ok(())
    }

    /// Pulls the function's image, reporting its progress as [`PullEvent`]s and logs.
    async fn pull(&self, function: &FunctionSpec<DockerSpec>) -> Result<(), BackendError> {
        let image = &function.spec.image;
        let event = |kind: PullStage| {
            let _ = self.pulls.send(PullEvent {
                function: function.name.to_string(),
                image: image.clone(),
                stage: kind,
            });
        };
        tracing::info!(target: "smgr::docker", function = %function.name, image, "pulling image");
        event(PullStage::Started);
        let failed = |reason: String, source: Option<DockerError>| {
            tracing::warn!(target: "smgr::docker", function = %function.name, image, "pull failed: {reason}");
            event(PullStage::Failed { error: reason.clone() });
            let reason = format!("pulling image {image}: {reason}");
            match source {
                Some(error) => BackendError::launch_because(&function.name, reason, error),
                None => BackendError::launch(&function.name, reason),
            }
        };
        let options = CreateImageOptions { from_image: Some(image.clone()), ..Default::default() };
        let mut progress = self.docker.create_image(Some(options), None, None);
        let mut last = (String::new(), String::new());
        while let Some(step) = progress.next().await {
            let step = step.map_err(|error| failed(error.to_string(), Some(error)))?;
            if let Some(detail) = step.error_detail {
                return Err(failed(detail.message.unwrap_or_default(), None));
            }
            let layer = step.id.unwrap_or_default();
            let status = step.status.unwrap_or_default();
            // Each layer's status once per change, not every progress tick.
            if (&layer, &status) != (&last.0, &last.1) {
                tracing::info!(target: "smgr::docker", function = %function.name, image, %layer, "{status}");
                event(PullStage::Progress {
                    layer: (!layer.is_empty()).then(|| layer.clone()),
                    status: status.clone(),
                });
                last = (layer, status);
            }
        }
        tracing::info!(target: "smgr::docker", function = %function.name, image, "pulled image");
        event(PullStage::Finished);
        Ok(())
    }

    /// The progress of the image pulls this backend makes from now on.
    pub fn pull_events(&self) -> tokio::sync::broadcast::Receiver<PullEvent> {
        self.pulls.subscribe()
    }

    /// The last `lines` lines of the container's stdout and stderr.
    async fn log_tail(&self, id: &str, lines: usize) -> Vec<String> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut logs = self.docker.logs(id, Some(options));
        let mut tail = Vec::new();
        while let Some(Ok(chunk)) = logs.next().await {
            let text = String::from_utf8_lossy(&chunk.into_bytes()).into_owned();
            tail.extend(text.lines().map(str::to_owned));
        }
        let skip = tail.len().saturating_sub(lines);
        tail.drain(..skip);
        tail
    }

    /// Removes a container and its anonymous volumes, running or not; gone already is fine.
    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        match self.docker.remove_container(id, Some(remove_options())).await {
            Ok(()) => Ok(()),
            Err(error) if status_of(&error) == Some(404) => Ok(()),
            // Removal already under way (the engine removes it): not ours to finish.
            Err(error) if status_of(&error) == Some(409) => Ok(()),
            Err(error) => Err(operation(format!("removing container {id}"), error)),
        }
    }

    /// Why the container is dead, if it is: from the event stream, or by inspecting it when
    /// the stream is not connected.
    async fn death(&self, id: &str) -> Option<String> {
        if let Some(reason) = self.deaths.lock().get(id) {
            return Some(reason.clone());
        }
        if self.watching.load(Ordering::Acquire) {
            return None;
        }
        match self.docker.inspect_container(id, None).await {
            Ok(inspected) => {
                let state = inspected.state.unwrap_or_default();
                if state.running == Some(true) {
                    None
                } else {
                    Some(exit_reason(state.exit_code, state.oom_killed == Some(true)))
                }
            }
            Err(error) if status_of(&error) == Some(404) => Some("the container is gone".into()),
            // The engine did not answer: say nothing rather than kill a live instance.
            Err(_) => None,
        }
    }

    /// Creates the container of `function` and uploads its files; the container, removed if it
    /// is dropped before the launch settles it.
    async fn create(
        &self,
        function: &FunctionSpec<DockerSpec>,
        id: InstanceId,
        name: &str,
    ) -> Result<Launching, BackendError> {
        let spec = &function.spec;
        let port = format!("{}/tcp", spec.container_port);
        let mut env: Vec<String> = vec![
            format!("PORT={}", spec.container_port),
            format!("SMGR_POOL={}", self.scope.pool),
            format!("SMGR_OWNER={}", self.scope.owner),
            format!("SMGR_FUNCTION={}", function.name),
            format!("SMGR_INSTANCE={}", id.0),
        ];
        env.extend(spec.env.iter().map(|(name, value)| format!("{name}={value}")));
        let mut labels: HashMap<String, String> =
            spec.labels.iter().map(|(name, value)| (name.clone(), value.clone())).collect();
        labels.insert(OWNER_LABEL.to_owned(), self.scope.owner.to_string());
        labels.insert(POOL_LABEL.to_owned(), self.scope.pool.to_string());
        labels.insert(FUNCTION_LABEL.to_owned(), function.name.to_string());
        labels.insert(INSTANCE_LABEL.to_owned(), id.0.to_string());
        let security = &spec.security;
        let host_config = HostConfig {
            port_bindings: Some(HashMap::from([(
                port.clone(),
                Some(vec![PortBinding {
                    host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
                    host_port: Some(String::new()),
                }]),
            )])),
            memory: spec.limits.memory_bytes.map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
            nano_cpus: spec.limits.cpus.map(|cpus| (cpus * 1e9) as i64),
            pids_limit: spec.limits.pids.map(|pids| i64::try_from(pids).unwrap_or(i64::MAX)),
            cap_drop: security.drop_all_capabilities.then(|| vec!["ALL".to_owned()]),
            cap_add: (!security.add_capabilities.is_empty())
                .then(|| security.add_capabilities.clone()),
            security_opt: security.no_new_privileges.then(|| vec!["no-new-privileges".to_owned()]),
            readonly_rootfs: Some(security.read_only_root),
            tmpfs: security
                .read_only_root
                .then(|| HashMap::from([("/tmp".to_owned(), "rw,nosuid,nodev".to_owned())])),
            network_mode: spec.network.clone(),
            init: Some(spec.init),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.command.clone(),
            entrypoint: spec.entrypoint.clone(),
            env: Some(env),
            user: security.user.clone(),
            labels: Some(labels),
            exposed_ports: Some(vec![port]),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.to_owned()), ..Default::default() };
        // The call runs in a task of its own, which wraps what it creates in a `Launching`:
        // a launch cancelled while the engine creates the container drops the task's handle,
        // not the call, and the container is removed when the call returns.
        let docker = self.docker.clone();
        let container_name = name.to_owned();
        let creating = tokio::spawn(async move {
            let created = docker.create_container(Some(options), body).await?;
            Ok::<_, DockerError>(Launching { docker, id: created.id, name: container_name })
        });
        let created = creating.await.map_err(|error| {
            BackendError::launch(&function.name, format!("creating a container: {error}"))
        })?;
        let container = created.map_err(|error| {
            BackendError::launch_because(
                &function.name,
                format!("creating a container of image {}: {error}", spec.image),
                error,
            )
        })?;
        if !spec.files.is_empty()
            && let Err(error) = self.upload_files(function, &container.id).await
        {
            self.discard(container).await;
            return Err(error);
        }
        Ok(container)
    }

    /// Removes the container of a failed launch before its error returns.
    async fn discard(&self, container: Launching) {
        if let Err(removal) = self.remove(&container.id).await {
            tracing::warn!(target: "smgr::docker", container = %container.name, %removal, "removing a container that failed to start");
        }
        container.settle();
    }

    async fn upload_files(
        &self,
        function: &FunctionSpec<DockerSpec>,
        id: &str,
    ) -> Result<(), BackendError> {
        let launch = |reason: String| BackendError::launch(&function.name, reason);
        let mut tar = TarBuilder::new();
        for file in &function.spec.files {
            let contents = match (&file.source, &file.contents) {
                (Some(source), None) => std::fs::read(source).map_err(|error| {
                    launch(format!("file {}: reading {}: {error}", file.path, source.display()))
                })?,
                (None, Some(contents)) => contents.clone().into_bytes(),
                _ => unreachable!("check_spec requires exactly one of source and contents"),
            };
            tar.file(&file.path, file.mode, &contents)
                .map_err(|error| launch(format!("file {}: {error}", file.path)))?;
        }
        let options = UploadToContainerOptions { path: "/".to_owned(), ..Default::default() };
        self.docker
            .upload_to_container(id, Some(options), bollard::body_full(tar.finish().into()))
            .await
            .map_err(|error| {
                let reason = format!("copying files into the container: {error}");
                BackendError::launch_because(&function.name, reason, error)
            })
    }

    /// Starts the created container and waits until it is ready; its endpoint.
    async fn start_and_wait(
        &self,
        function: &FunctionSpec<DockerSpec>,
        id: &str,
        deadline: Instant,
    ) -> Result<SocketAddr, BackendError> {
        let spec = &function.spec;
        self.docker.start_container(id, None).await.map_err(|error| {
            let reason = format!("starting the container: {error}");
            BackendError::launch_because(&function.name, reason, error)
        })?;
        let inspected = self.docker.inspect_container(id, None).await.map_err(|error| {
            operation(format!("function `{}`: inspecting container {id}", function.name), error)
        })?;
        let state = inspected.state.clone().unwrap_or_default();
        if state.running != Some(true) {
            // It exited already (its port mapping went with it).
            return Err(BackendError::ExitedBeforeReady {
                function: function.name.to_string(),
                status: exit_reason(state.exit_code, state.oom_killed == Some(true)),
                stderr_tail: self.log_tail(id, 10).await,
            });
        }
        let key = format!("{}/tcp", spec.container_port);
        let settings = inspected.network_settings.unwrap_or_default();
        // The function's own address, past the port proxy, for the TCP readiness check.
        let direct = settings
            .networks
            .iter()
            .flat_map(HashMap::values)
            .find_map(|endpoint| endpoint.ip_address.as_deref()?.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, spec.container_port));
        let host_port = settings
            .ports
            .and_then(|mut ports| ports.remove(&key))
            .flatten()
            .and_then(|bindings| bindings.into_iter().find_map(|binding| binding.host_port))
            .and_then(|port| port.parse::<u16>().ok());
        let Some(host_port) = host_port else {
            return Err(BackendError::launch(
                &function.name,
                format!("the engine published no host port for {key}"),
            ));
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, host_port));
        let mut pause = Duration::from_millis(2);
        let mut last;
        loop {
            let checked = match &spec.readiness {
                Readiness::Tcp => {
                    let unreachable = &self.container_addresses_unreachable;
                    http::tcp_ready(direct, unreachable, address, TCP_HOLD).await
                }
                Readiness::Http(path) => {
                    pool_core::probe::http_ok(address, path, Duration::from_secs(1)).await
                }
            };
            match checked {
                Ok(()) => return Ok(address),
                Err(error) => last = error,
            }
            // Only a failed attempt asks whether the container is still there: one that
            // answered is.
            if let Some(reason) = self.death(id).await {
                return Err(BackendError::ExitedBeforeReady {
                    function: function.name.to_string(),
                    status: reason,
                    stderr_tail: self.log_tail(id, 10).await,
                });
            }
            if Instant::now() + pause >= deadline {
                return Err(BackendError::NotReady {
                    function: function.name.to_string(),
                    timeout: spec.startup_timeout,
                    detail: last,
                    stderr_tail: self.log_tail(id, 10).await,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(50));
        }
    }
}

/// The engine's label filter for the containers of `pool`, of every owner or of `owner` alone
/// (every label of a filter must match).
fn scope_labels(pool: &PoolName, owner: Option<&OwnerId>) -> Vec<String> {
    let mut labels = vec![format!("{POOL_LABEL}={}", pool.as_str())];
    if let Some(owner) = owner {
        labels.push(format!("{OWNER_LABEL}={owner}"));
    }
    labels
}

/// Follows the engine's events about the containers with `labels` and records deaths;
/// reconnects after a second when the stream breaks, asking again for what happened meanwhile.
async fn watch_events(
    docker: Docker,
    labels: Vec<String>,
    deaths: Deaths,
    watching: Arc<AtomicBool>,
) {
    let mut since = unix_seconds().saturating_sub(1);
    loop {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), labels.clone()),
            ("event".to_owned(), ["die", "oom", "kill", "destroy"].map(str::to_owned).to_vec()),
        ]);
        let options =
            EventsOptions { since: Some(since.to_string()), until: None, filters: Some(filters) };
        let mut events = docker.events(Some(options));
        watching.store(true, Ordering::Release);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => record_death(&deaths, &event),
                Err(error) => {
                    tracing::warn!(target: "smgr::docker", %error, "the engine's event stream broke; probes inspect until it is back");
                    break;
                }
            }
        }
        watching.store(false, Ordering::Release);
        since = unix_seconds().saturating_sub(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Records the container of `event` as dead when the event says it died, and forgets it when
/// it is removed (its last event).
fn record_death(deaths: &Deaths, event: &EventMessage) {
    if event.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return;
    }
    let Some(actor) = &event.actor else { return };
    let Some(id) = &actor.id else { return };
    let no_attributes = HashMap::new();
    let attributes = actor.attributes.as_ref().unwrap_or(&no_attributes);
    let reason = match event.action.as_deref() {
        Some("die") => {
            let code = attributes.get("exitCode").and_then(|code| code.parse().ok());
            exit_reason(code, false)
        }
        Some("oom") => "killed: out of memory".to_owned(),
        // A kill event is a signal sent; only SIGKILL is sure to end the container.
        Some("kill") if attributes.get("signal").map(String::as_str) == Some("9") => {
            "killed with SIGKILL".to_owned()
        }
        Some("destroy") => {
            deaths.lock().remove(id);
            return;
        }
        _ => return,
    };
    let mut deaths = deaths.lock();
    let known = deaths.entry(id.clone()).or_insert_with(|| reason.clone());
    // The first cause is kept (a SIGKILL or out of memory says more than the exit code that
    // follows it), except that out of memory says more than anything.
    if reason.contains("out of memory") {
        *known = reason;
    }
}

fn exit_reason(code: Option<i64>, oom: bool) -> String {
    match (oom, code) {
        (true, _) => "killed: out of memory".to_owned(),
        (false, Some(code)) => format!("the container exited with code {code}"),
        (false, None) => "the container stopped".to_owned(),
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// The HTTP status of an engine error, if the engine answered.
fn status_of(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn operation(operation: String, error: DockerError) -> BackendError {
    BackendError::Operation { reason: error.to_string(), operation, source: Some(Box::new(error)) }
}

/// Checks what can be checked of a spec before launching: what
/// [`DockerBackend`]'s `validate` checks, without a backend (no engine is asked). A config
/// checker can tell with it whether the backend will take a spec.
pub fn check_spec(function: &FunctionSpec<DockerSpec>) -> Result<(), BackendError> {
    let spec = &function.spec;
    let invalid = |reason: String| BackendError::invalid_spec(&function.name, reason);
    if spec.image.trim().is_empty() {
        return Err(invalid("image is empty".to_owned()));
    }
    if spec.image.starts_with('-')
        || spec.image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!("image {:?} is not an image reference", spec.image)));
    }
    if spec.container_port == 0 {
        return Err(invalid("container_port must be 1 to 65535".to_owned()));
    }
    pool_core::check_launch_rules(spec.startup_timeout, &spec.readiness, spec.env.keys())
        .map_err(invalid)?;
    if let Some(cpus) = spec.limits.cpus
        && !(cpus.is_finite() && cpus > 0.0)
    {
        return Err(invalid(format!("limits.cpus {cpus} must be a number above zero")));
    }
    for name in spec.env.keys() {
        if name == "PORT" || name.starts_with("SMGR_") {
            return Err(invalid(format!(
                "environment variable {name} is set by the backend (PORT is container_port; \
                 SMGR_* name the instance)"
            )));
        }
    }
    if let Some(label) = spec.labels.keys().find(|label| label.starts_with("smgr.")) {
        return Err(invalid(format!("label {label}: the smgr.* labels are the backend's own")));
    }
    for file in &spec.files {
        if !file.path.starts_with('/') {
            return Err(invalid(format!("file {:?}: the path must be absolute", file.path)));
        }
        match (&file.source, &file.contents) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(invalid(format!(
                    "file {}: give exactly one of `source` and `contents`",
                    file.path
                )));
            }
        }
        if let Some(source) = &file.source
            && !source.is_file()
        {
            return Err(invalid(format!(
                "file {}: source {} is not a readable file",
                file.path,
                source.display()
            )));
        }
    }
    if !spec.files.is_empty() && spec.security.read_only_root {
        return Err(invalid(
            "files cannot be copied into a read-only root (security.read_only_root)".to_owned(),
        ));
    }
    Ok(())
}

/// Removal by force, anonymous volumes included.
fn remove_options() -> RemoveContainerOptions {
    RemoveContainerOptions { v: true, force: true, ..Default::default() }
}

/// The container of a launch under way. Dropped unsettled — the launch was cancelled, by the
/// pool's create timeout or its shutdown — it is removed in the background, so that a
/// cancelled launch leaves no container running.
struct Launching {
    docker: Docker,
    /// Empty once settled.
    id: String,
    name: String,
}

impl Launching {
    /// The container is the instance's now, or removed already: nothing is left to do.
    fn settle(mut self) -> String {
        std::mem::take(&mut self.id)
    }
}

impl Drop for Launching {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (docker, id) = (self.docker.clone(), std::mem::take(&mut self.id));
        runtime.spawn(async move {
            let _ = docker.remove_container(&id, Some(remove_options())).await;
        });
    }
}

/// The attempt to make one image present (see [`DockerBackend::ensure_image`]): held while it
/// runs; how it failed, if it did.
type ImageTurn = tokio::sync::Mutex<Option<String>>;

/// A name for a new container: pool, function, instance, and what makes it unique.
fn container_name(scope: &Scope, function: &FunctionName, id: InstanceId) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "smgr-{}-{}-{}-{}-{}",
        scope.pool,
        function,
        id.0,
        scope.owner.pid(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[async_trait]
impl Backend for DockerBackend {
    type Spec = DockerSpec;
    type Details = ContainerDetails;

    fn kind(&self) -> &'static str {
        "docker"
    }

    fn scope(&self) -> &Scope {
        &self.scope
    }

    fn validate(&self, function: &FunctionSpec<DockerSpec>) -> Result<(), BackendError> {
        check_spec(function)
    }

    async fn launch(
        &self,
        function: &FunctionSpec<DockerSpec>,
        id: InstanceId,
    ) -> Result<Instance<ContainerDetails>, BackendError> {
        check_spec(function)?;
        self.ensure_image(function).await?;
        let _permit = self.creates.acquire().await.map_err(|_| BackendError::Unavailable {
            backend: "docker".to_owned(),
            reason: "the backend is shutting down".to_owned(),
            source: None,
        })?;
        let now = tokio::time::Instant::now();
        let deadline = pool_core::deadline_after(now, function.spec.startup_timeout).into_std();
        let name = container_name(&self.scope, &function.name, id);
        let container = self.create(function, id, &name).await?;
        match self.start_and_wait(function, &container.id, deadline).await {
            Ok(address) => {
                tracing::debug!(
                    target: "smgr::docker", function = %function.name, instance = id.0,
                    container = %name, %address, "container ready"
                );
                let details = ContainerDetails {
                    id: container.settle(),
                    name,
                    readiness: function.spec.readiness.clone(),
                    grace_period: function.spec.grace_period,
                };
                Ok(Instance::new(id, function.name.clone(), Endpoint::Http(address), details))
            }
            Err(error) => {
                self.discard(container).await;
                Err(error)
            }
        }
    }

    async fn probe(&self, instance: &Instance<ContainerDetails>) -> Result<Health, BackendError> {
        let details = instance.details();
        if let Some(reason) = self.death(&details.id).await {
            return Ok(Health::Dead(reason));
        }
        if let (Readiness::Http(path), Endpoint::Http(address)) =
            (&details.readiness, instance.endpoint())
        {
            return Ok(
                match pool_core::probe::http_ok(address, path, Duration::from_secs(2)).await {
                    Ok(()) => Health::Alive,
                    Err(error) => Health::Dead(error),
                },
            );
        }
        Ok(Health::Alive)
    }

    async fn terminate(
        &self,
        instance: Instance<ContainerDetails>,
        grace: Duration,
    ) -> Result<Termination, BackendError> {
        let details = instance.into_details();
        let grace = details.grace_period.unwrap_or(grace);
        // The engine counts whole seconds; round up so the function gets at least its grace.
        let seconds = grace.as_secs().saturating_add(u64::from(grace.subsec_nanos() > 0));
        let seconds = i32::try_from(seconds).unwrap_or(i32::MAX);
        let options = StopContainerOptions { t: Some(seconds), signal: None };
        let outcome = if self.death(&details.id).await.is_some() {
            // It exited on its own (the events said so, or inspecting did): nothing to stop.
            // Some engines answer a stop of a stopped container with success, and its exit
            // code would then read as a forced stop.
            Termination::AlreadyGone
        } else {
            match self.docker.stop_container(&details.id, Some(options)).await {
                Ok(()) => match self.docker.inspect_container(&details.id, None).await {
                    // 137 is 128 + SIGKILL: the engine had to kill it after the grace period.
                    Ok(inspected) => match inspected.state.unwrap_or_default() {
                        state if state.exit_code == Some(137) && state.oom_killed != Some(true) => {
                            Termination::Forced
                        }
                        _ => Termination::Graceful,
                    },
                    Err(_) => Termination::Graceful,
                },
                // 304: it had stopped already.
                Err(error) if status_of(&error) == Some(304) => Termination::AlreadyGone,
                Err(error) if status_of(&error) == Some(404) => {
                    return Ok(Termination::AlreadyGone);
                }
                Err(error) => {
                    tracing::warn!(target: "smgr::docker", container = %details.name, %error, "stopping failed; removing by force");
                    Termination::Forced
                }
            }
        };
        self.remove(&details.id).await.map(|()| outcome)
    }

    async fn reap_orphans(&self) -> Result<Reaped, BackendError> {
        let containers = self.containers_of(&self.scope.pool, None).await?;
        let mut by_owner: BTreeMap<String, Vec<ContainerInfo>> = BTreeMap::new();
        for container in containers {
            by_owner.entry(container.owner.clone()).or_default().push(container);
        }
        let mut reaped = Reaped::default();
        for (owner, containers) in by_owner {
            if owner == self.scope.owner.as_str() {
                continue;
            }
            let liveness = owner.parse::<OwnerId>().map_or(Liveness::Unknown, |id| id.liveness());
            if liveness != Liveness::Dead {
                reaped.skipped_owners += 1;
                continue;
            }
            reaped.owners += 1;
            for container in containers {
                self.remove(&container.id).await?;
                reaped.instances += 1;
            }
        }
        if reaped.instances > 0 {
            tracing::info!(
                target: "smgr::docker",
                pool = self.scope.pool.as_str(), owners = reaped.owners, instances = reaped.instances,
                "removed the containers of dead owners"
            );
        }
        Ok(reaped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    #[test]
    fn a_tcp_engine_address_without_a_port_gets_the_docker_default() {
        let cases = [
            ("tcp://engine", "tcp://engine:2375"),
            ("http://10.0.0.5/", "http://10.0.0.5:2375"),
            ("tcp://[::1]", "tcp://[::1]:2375"),
            ("tcp://engine:2376", "tcp://engine:2376"),
            ("tcp://[::1]:2376", "tcp://[::1]:2376"),
            ("unix:///var/run/docker.sock", "unix:///var/run/docker.sock"),
        ];
        for (given, used) in cases {
            assert_eq!(engine_host(Some(given)), used, "{given}");
        }
    }

    fn function(spec: DockerSpec) -> FunctionSpec<DockerSpec> {
        FunctionSpec::new("f", spec).unwrap()
    }

    #[test]
    fn specs_that_cannot_work_are_refused_with_what_is_wrong() {
        let cases: Vec<(DockerSpec, &str)> = vec![
            (DockerSpec::new(" "), "image is empty"),
            (DockerSpec { container_port: 0, ..DockerSpec::new("x") }, "container_port"),
            (DockerSpec::new("x").env("PORT", "1"), "PORT is container_port"),
            (DockerSpec::new("x").env("SMGR_POOL", "1"), "SMGR_POOL"),
            (DockerSpec::new("x").readiness(Readiness::Http("healthz".into())), "\"healthz\""),
            (
                DockerSpec {
                    labels: BTreeMap::from([("smgr.owner".into(), "me".into())]),
                    ..DockerSpec::new("x")
                },
                "label smgr.owner",
            ),
            (
                DockerSpec {
                    limits: crate::Limits { cpus: Some(0.0), ..Default::default() },
                    ..DockerSpec::new("x")
                },
                "limits.cpus",
            ),
            (
                DockerSpec {
                    files: vec![crate::InjectedFile {
                        path: "relative".into(),
                        source: None,
                        contents: Some(String::new()),
                        mode: 0o644,
                    }],
                    ..DockerSpec::new("x")
                },
                "\"relative\": the path must be absolute",
            ),
            (
                DockerSpec {
                    files: vec![crate::InjectedFile {
                        path: "/a".into(),
                        source: Some("/nonexistent/smgr-file".into()),
                        contents: None,
                        mode: 0o644,
                    }],
                    ..DockerSpec::new("x")
                },
                "/nonexistent/smgr-file is not a readable file",
            ),
            (
                DockerSpec {
                    files: vec![crate::InjectedFile {
                        path: "/a".into(),
                        source: None,
                        contents: None,
                        mode: 0o644,
                    }],
                    ..DockerSpec::new("x")
                },
                "exactly one of",
            ),
        ];
        for (spec, expected) in cases {
            let error = check_spec(&function(spec.clone())).unwrap_err().to_string();
            assert!(error.contains(expected), "{spec:?}: {error}");
            assert!(error.contains("function `f`"), "{error}");
        }
        check_spec(&function(DockerSpec::new("x"))).unwrap();
    }

    fn event(action: &str, attributes: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.to_owned()),
            actor: Some(EventActor {
                id: Some("c1".to_owned()),
                attributes: Some(
                    attributes.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn die_oom_and_sigkill_events_mark_a_container_dead() {
        let deaths = Deaths::default();
        record_death(&deaths, &event("kill", &[("signal", "15")]));
        assert!(deaths.lock().is_empty(), "SIGTERM may be survived");
        record_death(&deaths, &event("start", &[]));
        assert!(deaths.lock().is_empty());
        record_death(&deaths, &event("die", &[("exitCode", "3")]));
        assert_eq!(deaths.lock()["c1"], "the container exited with code 3");

        let deaths = Deaths::default();
        record_death(&deaths, &event("oom", &[]));
        record_death(&deaths, &event("die", &[("exitCode", "137")]));
        assert_eq!(deaths.lock()["c1"], "killed: out of memory", "oom is kept over the exit");

        let deaths = Deaths::default();
        record_death(&deaths, &event("kill", &[("signal", "9")]));
        record_death(&deaths, &event("die", &[("exitCode", "137")]));
        assert_eq!(deaths.lock()["c1"], "killed with SIGKILL", "the cause is kept");
        record_death(&deaths, &event("destroy", &[]));
        assert!(deaths.lock().is_empty(), "a removed container is forgotten");
    }
}
