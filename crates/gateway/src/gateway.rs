//! [`Gateway`]: the functions' pools, the HTTP server in front of them, and its lifecycle.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use backend_docker::{DockerBackend, DockerBackendConfig};
use backend_process::{ProcessBackend, ProcessBackendConfig};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use perf_monitor::{
    Counter, EndpointTracker, Format, Gauge, Histogram, Monitor, MonitorConfig, Registry, Unit,
};
use pool_core::{
    Backend, Endpoint, Error as PoolError, FunctionManager, FunctionName, InstanceId, Lease, Pool,
    PoolConfig, PoolEvent, PoolName, Scope,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Errors of bodies on their way through.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the gateway sends.
pub type Body = BoxBody<Bytes, BoxError>;

use crate::any::{AnyManager as Manager, Reapable};
use crate::config::BackendSpec;

/// One function to serve: its name, its pool's limits and how to run it.
#[derive(Debug, Clone)]
pub struct FunctionSetup {
    /// The function's name: `/fn/{name}/...`.
    pub name: FunctionName,
    /// Its pool's limits.
    pub pool: PoolConfig,
    /// How to run an instance, and on which backend.
    pub spec: BackendSpec,
}

/// What went wrong starting a gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The pool name, a function or the backend was refused.
    #[error(transparent)]
    Backend(#[from] pool_core::BackendError),
    /// A pool's limits were refused.
    #[error("function `{function}`: {source}")]
    Pool {
        /// The function.
        function: String,
        /// The pool's error.
        #[source]
        source: PoolError,
    },
    /// The monitor's settings were refused.
    #[error(transparent)]
    Monitor(#[from] perf_monitor::Error),
    /// Two functions have one name.
    #[error("function `{0}` is defined twice")]
    Duplicate(String),
}

/// A function on a backend the program brings (see [`GatewayBuilder::custom_function`]).
struct CustomSetup {
    name: FunctionName,
    pool: PoolConfig,
    backend: Box<dyn Reapable>,
    /// Makes the function's manager once its backend's orphans are reaped.
    manager: Box<dyn FnOnce() -> Result<Manager, pool_core::BackendError> + Send>,
}

impl std::fmt::Debug for CustomSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomSetup")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Gateway`]: functions, limits, the admin token.
#[derive(Debug)]
pub struct GatewayBuilder {
    functions: Vec<FunctionSetup>,
    custom: Vec<CustomSetup>,
    pool: String,
    state_dir: Option<PathBuf>,
    admin_token: Option<String>,
    max_body: u64,
    request_timeout: Duration,
    shutdown_timeout: Duration,
    monitor: MonitorConfig,
    docker_host: Option<String>,
    docker_max_concurrent_creates: usize,
}

impl Default for GatewayBuilder {
    /// The defaults of a config file's `[server]` section.
    fn default() -> Self {
        let server = crate::config::ServerConfig::default();
        Self {
            functions: Vec::new(),
            custom: Vec::new(),
            pool: server.pool,
            state_dir: server.state_dir,
            admin_token: server.admin_token,
            max_body: server.max_body.bytes(),
            request_timeout: server.request_timeout,
            shutdown_timeout: server.shutdown_timeout,
            monitor: MonitorConfig::default(),
            docker_host: server.docker_host,
            docker_max_concurrent_creates: server.docker_max_concurrent_creates,
        }
    }
}

impl GatewayBuilder {
    /// Serves `function`.
    pub fn function(mut self, function: FunctionSetup) -> Self {
        self.functions.push(function);
        self
    }

    /// Serves `name` from instances of a backend the program brings: any
    /// [`pool_core::Backend`] whose instances take HTTP at an [`Endpoint::Http`] address.
    /// At start the gateway reaps what dead owners left on the backend (once per backend,
    /// however many functions it runs), has it validate `spec`, and pools its instances like
    /// those of the built-in backends; `/admin/pools` names the backend by its
    /// [`kind`](pool_core::Backend::kind). The backend should stamp its instances with the
    /// same [`Scope`] the gateway uses ([`Scope::current`] of the [`pool_name`]).
    ///
    /// [`pool_name`]: Self::pool_name
    pub fn custom_function<B: Backend>(
        mut self,
        name: FunctionName,
        pool: PoolConfig,
        backend: Arc<B>,
        spec: B::Spec,
    ) -> Self {
        let function = pool_core::FunctionSpec { name: name.clone(), spec };
        let manager_backend = backend.clone();
        self.custom.push(CustomSetup {
            name,
            pool,
            backend: Box::new(backend),
            manager: Box::new(move || {
                FunctionManager::new(manager_backend, function).map(Manager::new)
            }),
        });
        self
    }

    /// The pool name whose orphans a restart reaps (default `smgr`).
    pub fn pool_name(mut self, pool: impl Into<String>) -> Self {
        self.pool = pool.into();
        self
    }

    /// The process backend's state directory (default: its own default).
    pub fn state_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.state_dir = dir;
        self
    }

    /// The Docker Engine of docker functions (default: `DOCKER_HOST`, else the local socket),
    /// and how many containers it may create at once (default 8).
    pub fn docker(mut self, host: Option<String>, max_concurrent_creates: usize) -> Self {
        self.docker_host = host;
        self.docker_max_concurrent_creates = max_concurrent_creates;
        self
    }

    /// Requires `Authorization: Bearer <token>` on the admin routes.
    pub fn admin_token(mut self, token: Option<String>) -> Self {
        self.admin_token = token;
        self
    }

    /// The largest request body forwarded (default 6 MiB).
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// How long a request may take until its response starts (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a shutdown waits for requests in flight (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Starts the gateway: reaps what a dead predecessor of the same pool name left behind,
    /// then starts every function's pool, which warms its minimum in the background. Must be
    /// called inside a Tokio runtime.
    pub async fn start(self) -> Result<Gateway, GatewayError> {
        let scope = Scope::current(PoolName::new(&self.pool)?);
        let backend = Arc::new(ProcessBackend::new(ProcessBackendConfig {
            scope: scope.clone(),
            state_dir: self.state_dir.clone(),
        })?);
        // The engine is reached only when a function runs on it.
        let docker = if self.functions.iter().any(|f| matches!(f.spec, BackendSpec::Docker(_))) {
            let config = DockerBackendConfig {
                host: self.docker_host.clone(),
                max_concurrent_creates: self.docker_max_concurrent_creates,
                ..DockerBackendConfig::new(scope)
            };
            Some(Arc::new(DockerBackend::connect(config).await?))
        } else {
            None
        };
        // What dead predecessors of the same pool name left, on each backend once (functions
        // of a program's own may share one).
        let mut backends: Vec<&dyn Reapable> = vec![&backend];
        backends.extend(docker.as_ref().map(|docker| docker as &dyn Reapable));
        backends.extend(self.custom.iter().map(|setup| setup.backend.as_ref()));
        let mut reaped_backends = Vec::new();
        for reapable in backends {
            if reaped_backends.contains(&reapable.identity()) {
                continue;
            }
            reaped_backends.push(reapable.identity());
            let reaped = reapable.reap_orphans().await?;
            if reaped.instances > 0 {
                tracing::info!(
                    pool = %self.pool, backend = reapable.kind(), owners = reaped.owners,
                    instances = reaped.instances,
                    "reaped the instances a previous gateway left behind"
                );
            }
        }
        let monitor = Monitor::start(self.monitor.clone())?;
        let registry = monitor.registry().clone();
        let mut managers = Vec::new();
        for setup in self.functions {
            let manager = match (setup.spec, &docker) {
                (BackendSpec::Process(spec), _) => Manager::new(FunctionManager::new(
                    backend.clone(),
                    pool_core::FunctionSpec { name: setup.name.clone(), spec },
                )?),
                (BackendSpec::Docker(spec), Some(docker)) => Manager::new(FunctionManager::new(
                    docker.clone(),
                    pool_core::FunctionSpec { name: setup.name.clone(), spec },
                )?),
                (BackendSpec::Docker(_), None) => {
                    unreachable!("connected when a function needs it")
                }
            };
            managers.push((setup.name, setup.pool, manager));
        }
        for setup in self.custom {
            managers.push((setup.name, setup.pool, (setup.manager)()?));
        }
        let mut functions = BTreeMap::new();
        for (name, pool, manager) in managers {
            let name = name.to_string();
            if functions.contains_key(&name) {
                return Err(GatewayError::Duplicate(name));
            }
            let pool = Pool::new(manager, pool)
                .map_err(|source| GatewayError::Pool { function: name.clone(), source })?;
            tokio::spawn(log_events(name.clone(), pool.subscribe()));
            let labels = [("function", name.as_str())];
            let metrics = FunctionMetrics {
                duration: registry.histogram(
                    "smgr_request_duration_seconds",
                    "Time from a request's arrival to its response's headers",
                    Unit::Seconds,
                    &labels,
                )?,
                cold_starts: registry.counter(
                    "smgr_cold_starts",
                    "Requests served by an instance's first lease",
                    &labels,
                )?,
                launch_failures: registry.counter(
                    "smgr_launch_failures",
                    "Requests that failed because an instance could not be launched",
                    &labels,
                )?,
                waiting: registry.gauge(
                    "smgr_pool_waiting",
                    "Requests waiting for an instance",
                    &labels,
                )?,
                requests: (STATUS_CODES).map(|_| OnceLock::new()).collect(),
                endpoint: monitor.tracker().endpoint(&name)?,
            };
            let served = FunctionPool {
                name: name.clone(),
                pool,
                metrics,
                connections: Connections::default(),
            };
            functions.insert(name, served);
        }
        Ok(Gateway {
            shared: Arc::new(Shared {
                functions,
                monitor,
                admin_token: self.admin_token,
                max_body: self.max_body,
                request_timeout: self.request_timeout,
                shutdown_timeout: self.shutdown_timeout,
                next_request: AtomicU64::new(0),
                request_prefix: format!(
                    "smgr-{:x}-",
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |elapsed| elapsed.as_nanos())
                ),
                docker,
            }),
        })
    }
}

/// Logs what happens in a function's pool: failures as warnings (a function that cannot
/// start says so at once, not at its first request), the rest at debug level. Ends with the
/// pool.
async fn log_events(function: String, mut events: tokio::sync::broadcast::Receiver<PoolEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(PoolEvent::CreateFailed { error, consecutive_failures, backoff }) => {
                tracing::warn!(
                    %function, failures_in_a_row = consecutive_failures, retry_in = ?backoff,
                    "could not start an instance: {error}"
                );
            }
            Ok(PoolEvent::HealthCheckFailed { instance, error }) => {
                tracing::warn!(%function, %instance, "an instance failed its health check: {error}");
            }
            Ok(PoolEvent::LeakSuspected { instance, held }) => {
                tracing::warn!(%function, %instance, ?held, "a lease is held suspiciously long");
            }
            Ok(PoolEvent::Created { instance }) => {
                tracing::debug!(%function, %instance, "instance ready");
            }
            Ok(PoolEvent::Destroyed { instance, reason }) => {
                tracing::debug!(%function, %instance, ?reason, "instance destroyed");
            }
            Ok(event) => tracing::debug!(%function, ?event, "pool event"),
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(%function, missed, "pool events missed");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// A function's pool and what the gateway keeps beside it.
pub(crate) struct FunctionPool {
    pub(crate) name: String,
    pub(crate) pool: Pool<Manager>,
    pub(crate) metrics: FunctionMetrics,
    /// Idle keep-alive connections to each instance.
    connections: Connections,
}

pub(crate) struct FunctionMetrics {
    pub(crate) duration: Histogram,
    pub(crate) cold_starts: Counter,
    launch_failures: Counter,
    waiting: Gauge,
    /// `smgr_requests{function, status}` by status code (100 to 599), registered on first use
    /// so that no request looks its counter up by labels.
    requests: Box<[OnceLock<Counter>]>,
    /// The function's handles in the monitor's request tracker.
    pub(crate) endpoint: EndpointTracker,
}

/// The status codes a response may have.
const STATUS_CODES: std::ops::Range<u16> = 100..600;

impl FunctionMetrics {
    /// Counts one response of `function` with `status`.
    pub(crate) fn count_response(&self, registry: &Registry, function: &str, status: StatusCode) {
        let slot = usize::from(status.as_u16().saturating_sub(STATUS_CODES.start));
        let Some(slot) = self.requests.get(slot) else { return };
        let counter = match slot.get() {
            Some(counter) => counter,
            None => {
                let labels = [("function", function), ("status", status.as_str())];
                let Ok(counter) =
                    registry.counter("smgr_requests", "Requests by function and status", &labels)
                else {
                    return;
                };
                slot.get_or_init(|| counter)
            }
        };
        counter.inc();
    }
}

pub(crate) struct Shared {
    pub(crate) functions: BTreeMap<String, FunctionPool>,
    pub(crate) monitor: Monitor,
    admin_token: Option<String>,
    pub(crate) max_body: u64,
    pub(crate) request_timeout: Duration,
    shutdown_timeout: Duration,
    next_request: AtomicU64,
    /// `smgr-<start time in hex>-`: request ids are this and a counter.
    request_prefix: String,
    /// The Docker backend, when a function runs on it.
    docker: Option<Arc<DockerBackend>>,
}

impl Shared {
    /// Appends a new request id to `out`: the prefix and the next number.
    pub(crate) fn new_request_id(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.request_prefix.as_bytes());
        let number = self.next_request.fetch_add(1, Ordering::Relaxed);
        out.extend_from_slice(crate::fast_path::itoa(number, &mut [0; 20]));
    }
}

/// The gateway: serves its functions over HTTP. See the crate docs.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("functions", &self.shared.functions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What [`Gateway::serve`] did when it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeReport {
    /// Whether every request in flight finished within the shutdown timeout.
    pub drained: bool,
    /// Instances destroyed when the pools shut down.
    pub instances_destroyed: u64,
}

impl Gateway {
    /// A builder.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// The performance monitor of the gateway.
    pub fn monitor(&self) -> &Monitor {
        &self.shared.monitor
    }

    /// Serves HTTP on `listener` until `shutdown` completes; then stops accepting, lets the
    /// requests in flight finish (up to the shutdown timeout), and shuts the pools down.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> ServeReport {
        // Every connection holds a receiver: set to `true`, it asks them to finish the request
        // in flight and close; the sender is closed once all of them are gone.
        let (stopping, _) = tokio::sync::watch::channel(false);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, remote)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let client = Arc::new(Client::new(remote));
                    tokio::spawn(crate::fast_path::serve(
                        self.shared.clone(),
                        stream,
                        client,
                        stopping.subscribe(),
                    ));
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: no new connections; waiting for requests in flight");
        let _ = stopping.send(true);
        let drained =
            tokio::time::timeout(self.shared.shutdown_timeout, stopping.closed()).await.is_ok();
        let instances_destroyed = self.shutdown_pools(Duration::from_secs(5)).await;
        ServeReport { drained, instances_destroyed }
    }

    /// Shuts every pool down at once, each waiting up to `deadline` for its leases and then
    /// for its instances to stop, each with its grace period; returns the instances destroyed.
    /// The pools stop side by side, so the whole takes as long as the slowest, not the sum.
    pub async fn shutdown_pools(&self, deadline: Duration) -> u64 {
        let mut shutdowns = tokio::task::JoinSet::new();
        for function in self.shared.functions.values() {
            function.connections.lock().clear();
            let pool = function.pool.clone();
            shutdowns.spawn(async move { pool.shutdown(deadline).await.destroyed });
        }
        let mut destroyed = 0;
        while let Some(done) = shutdowns.join_next().await {
            // A pool's shutdown does not panic; should one, the others still count.
            destroyed += done.unwrap_or(0);
        }
        destroyed
    }

    /// Stops the instances that would outlive the program at once, without waiting for
    /// leases or a grace period: closes every pool, so that none starts another instance, and
    /// removes every container of this gateway until the engine lists none (a launch under way
    /// may still create one) or `deadline` has passed; an engine that does not answer by then
    /// is an error. Child processes need nothing: they are killed when the program exits (a
    /// parent-death signal). The instances of a
    /// [`custom_function`](GatewayBuilder::custom_function) backend only get their pool's
    /// shutdown started, which the program's exit cuts short: such a backend should make its
    /// instances die with the program, or be reaped at the next start. For a program about to
    /// exit that cannot wait for [`shutdown_pools`](Self::shutdown_pools); returns how many
    /// containers it removed.
    pub async fn stop_instances_now(
        &self,
        deadline: Duration,
    ) -> Result<usize, pool_core::BackendError> {
        for function in self.shared.functions.values() {
            let pool = function.pool.clone();
            tokio::spawn(async move { pool.shutdown(Duration::ZERO).await });
        }
        const ROUNDS_APART: Duration = Duration::from_millis(100);
        let Some(docker) = &self.shared.docker else { return Ok(0) };
        let end = pool_core::deadline_after(Instant::now(), deadline);
        let mut removed = std::collections::HashSet::new();
        loop {
            let listed = tokio::time::timeout_at(end, docker.remove_own_containers())
                .await
                .map_err(|_| pool_core::BackendError::Operation {
                    operation: "removing the gateway's containers".to_owned(),
                    reason: format!("the Docker Engine did not answer within {deadline:?}"),
                    source: None,
                })??;
            let done = listed.is_empty();
            removed.extend(listed);
            if done || Instant::now() + ROUNDS_APART >= end {
                return Ok(removed.len());
            }
            tokio::time::sleep(ROUNDS_APART).await;
        }
    }
}

/// Serves the rest of a connection with hyper: every route, and the requests the fast path
/// leaves (see [`crate::fast_path`]). Finishes the request in flight and closes once `shutdown`
/// turns `true`.
pub(crate) async fn serve_hyper(
    shared: Arc<Shared>,
    stream: crate::fast_path::Rewind,
    client: Arc<Client>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let shared = shared.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(handle(&shared, request, &client).await) }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let stop = async move {
        let _ = shutdown.wait_for(|&stop| stop).await;
        shutdown
    };
    tokio::select! {
        _ = connection.as_mut() => {}
        shutdown = stop => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
            // Held until the connection ends: the gateway waits for every receiver to go.
            drop(shutdown);
        }
    }
}

/// The client at the other end of a connection.
pub(crate) struct Client {
    /// Its IP address, as `X-Forwarded-For` carries it.
    pub(crate) ip: String,
    /// The same as a header value.
    ip_header: Option<HeaderValue>,
}

impl Client {
    fn new(remote: SocketAddr) -> Self {
        let ip = remote.ip().to_string();
        let ip_header = HeaderValue::from_str(&ip).ok();
        Self { ip, ip_header }
    }
}

/// Routes one request.
async fn handle(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    client: &Client,
) -> Response<Body> {
    let route = request.uri().path_and_query().and_then(|whole| function_route(whole.as_str()));
    if let Some((name, target)) = route {
        let Some(function) = shared.functions.get(name) else {
            return error(
                StatusCode::NOT_FOUND,
                "function_not_found",
                format!("no function named `{name}`"),
            );
        };
        let target = if target.starts_with('/') {
            http::Uri::try_from(target)
        } else {
            http::Uri::try_from(format!("/{target}"))
        };
        let Ok(target) = target else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request path is not valid".to_owned(),
            );
        };
        return forward(shared, function, request, client, target).await;
    }
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(shared),
        _ if is_admin(&path) => {
            if let Some(denied) = authorize(shared, request.headers()) {
                return denied;
            }
            admin(shared, request, &path).await
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", format!("no route for {path}")),
    }
}

/// Splits `/fn/{name}...` (a path and its query) into the function's name and what its
/// instance sees: the rest of the path and the query, which may lack its leading `/`. `None` for
/// every other path.
pub(crate) fn function_route(path_and_query: &str) -> Option<(&str, &str)> {
    let rest = path_and_query.strip_prefix("/fn/")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(rest.split_at(end))
}

fn is_admin(path: &str) -> bool {
    path.starts_with("/admin/") || path == "/metrics" || path == "/performance/metrics"
}

/// `None` when the request may use the admin routes.
fn authorize(shared: &Shared, headers: &HeaderMap) -> Option<Response<Body>> {
    let token = shared.admin_token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if given.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "admin routes need `Authorization: Bearer <token>`".to_owned(),
    );
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn readyz(shared: &Shared) -> Response<Body> {
    let not_ready: Vec<String> = shared
        .functions
        .values()
        .filter_map(|function| {
            let status = function.pool.status();
            let ready = status.size.saturating_sub(status.retiring);
            (ready < status.min)
                .then(|| format!("{} ({ready} of {} ready)", function.name, status.min))
        })
        .collect();
    if not_ready.is_empty() {
        json(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else {
        let mut body = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("below their minimum: {}", not_ready.join(", ")),
        );
        body.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        body
    }
}

async fn admin(shared: &Shared, request: Request<Incoming>, path: &str) -> Response<Body> {
    let method = request.method().clone();
    if method == Method::GET && path == "/metrics" {
        update_pool_gauges(shared);
        let format = Format::from_accept(
            request.headers().get(header::ACCEPT).and_then(|value| value.to_str().ok()),
        );
        let text = shared.monitor.render(format);
        return Response::builder()
            .header(header::CONTENT_TYPE, format.content_type())
            .body(full(text))
            .unwrap_or_else(|_| internal());
    }
    if method == Method::GET && path == "/performance/metrics" {
        return json(StatusCode::OK, &shared.monitor.snapshot());
    }
    if method == Method::GET && path == "/admin/pools" {
        let pools: Vec<serde_json::Value> = shared.functions.values().map(pool_json).collect();
        return json(StatusCode::OK, &serde_json::json!({ "pools": pools }));
    }
    if let Some(name) =
        path.strip_prefix("/admin/pools/").and_then(|rest| rest.strip_suffix("/scale"))
    {
        if method != Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} takes POST"),
            );
        }
        let Some(function) = shared.functions.get(name) else {
            return error(
                StatusCode::NOT_FOUND,
                "function_not_found",
                format!("no function named `{name}`"),
            );
        };
        return scale(function, request).await;
    }
    error(StatusCode::NOT_FOUND, "not_found", format!("no route for {method} {path}"))
}

async fn scale(function: &FunctionPool, request: Request<Incoming>) -> Response<Body> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Scale {
        min: usize,
        max: usize,
    }
    let body = match Limited::new(request.into_body(), 64 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(cause) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the body: {cause}"),
            );
        }
    };
    let wanted: Scale = match serde_json::from_slice(&body) {
        Ok(wanted) => wanted,
        Err(cause) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body must be {{\"min\": N, \"max\": N}}: {cause}"),
            );
        }
    };
    match function.pool.resize(wanted.min, wanted.max) {
        Ok(()) => json(StatusCode::OK, &pool_json(function)),
        Err(cause) => error(StatusCode::BAD_REQUEST, "bad_request", cause.to_string()),
    }
}

fn pool_json(function: &FunctionPool) -> serde_json::Value {
    let status = function.pool.status();
    let records = function.pool.manager().instances();
    let instances: Vec<serde_json::Value> = function
        .pool
        .instances()
        .into_iter()
        .map(|instance| {
            let record = records.iter().find(|record| record.id == instance.id);
            let time = |at: Option<SystemTime>| {
                at.map(|at| humantime::format_rfc3339_millis(at).to_string())
            };
            serde_json::json!({
                "id": instance.id.0,
                "endpoint": record.map(|record| record.endpoint.to_string()),
                "state": instance.state,
                "uses": instance.uses,
                "created_at": time(record.map(|record| record.created_at)),
                "last_used": time(record.and_then(|record| record.last_used)),
                "pid": record.and_then(|record| record.pid),
            })
        })
        .collect();
    serde_json::json!({
        "function": function.name,
        "backend": function.pool.manager().backend_kind(),
        "min": status.min,
        "max": status.max,
        "size": status.size,
        "idle": status.idle,
        "busy": status.busy,
        "creating": status.creating,
        "waiting": status.waiting,
        "instances": instances,
    })
}

fn update_pool_gauges(shared: &Shared) {
    let registry = shared.monitor.registry();
    for function in shared.functions.values() {
        let status = function.pool.status();
        function.metrics.waiting.set(status.waiting as f64);
        for (state, count) in [
            ("idle", status.idle),
            ("busy", status.busy),
            ("creating", status.creating),
            ("retiring", status.retiring),
        ] {
            let labels = [("function", function.name.as_str()), ("state", state)];
            if let Ok(gauge) = registry.gauge("smgr_pool_instances", "Instances by state", &labels)
            {
                gauge.set(count as f64);
            }
        }
    }
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(',').map(|name| name.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        headers.remove(name);
    }
}

/// Forwards a request to an instance of `function` and streams the answer back.
async fn forward(
    shared: &Arc<Shared>,
    function: &FunctionPool,
    request: Request<Incoming>,
    client: &Client,
    target: http::Uri,
) -> Response<Body> {
    let (started, arrived) = (Instant::now(), SystemTime::now());
    let deadline = pool_core::deadline_after(started, shared.request_timeout);
    let response = match tokio::time::timeout_at(
        deadline,
        forward_inner(shared, function, request, client, target, arrived, deadline),
    )
    .await
    {
        Ok(response) => response,
        Err(_) => timeout(shared),
    };
    record_response(shared, function, response.status(), started);
    response
}

/// Counts a response of `function`, with its status and the time since the request `started`.
pub(crate) fn record_response(
    shared: &Shared,
    function: &FunctionPool,
    status: StatusCode,
    started: Instant,
) {
    let elapsed = started.elapsed();
    function.metrics.duration.record_duration(elapsed);
    function.metrics.count_response(shared.monitor.registry(), &function.name, status);
    shared.monitor.tracker().track_with(
        &function.metrics.endpoint,
        elapsed,
        !status.is_server_error(),
    );
}

/// A lease held while a request is on its way to the instance. Dropped unreleased after the
/// request's deadline (the request timed out waiting for the instance's answer), the instance
/// is stuck on the request and is replaced; dropped before (the client went away, or the
/// request failed), it goes back to the pool unless it was marked broken.
pub(crate) struct Sending {
    lease: Option<Lease<Manager>>,
    deadline: Instant,
}

impl Sending {
    /// The lease, to give back normally.
    pub(crate) fn release(mut self) -> Lease<Manager> {
        self.lease.take().expect("a lease is held until released")
    }

    pub(crate) fn instance(&self) -> InstanceId {
        self.lease.as_ref().expect("a lease is held until released").id()
    }

    fn mark_broken(&mut self) {
        if let Some(lease) = self.lease.as_mut() {
            lease.mark_broken();
        }
    }

    /// The instance did not accept a connection: it is replaced. Returns the answer for the
    /// client when the request goes to no other instance.
    pub(crate) fn unreachable(
        &mut self,
        function: &FunctionPool,
        cause: &dyn std::fmt::Display,
    ) -> Response<Body> {
        let message = format!("the instance did not accept a connection: {cause}");
        self.broken(function, cause, "instance unreachable", message)
    }

    /// The instance failed the request: it is replaced. Returns the answer for the client when
    /// the request is not retried.
    pub(crate) fn failed(
        &mut self,
        function: &FunctionPool,
        cause: &dyn std::fmt::Display,
    ) -> Response<Body> {
        self.broken(function, cause, "instance failed", format!("the instance failed: {cause}"))
    }

    /// Logs `what` happened, marks the instance broken, and makes the client's 502.
    fn broken(
        &mut self,
        function: &FunctionPool,
        cause: &dyn std::fmt::Display,
        what: &str,
        message: String,
    ) -> Response<Body> {
        let instance = self.instance();
        tracing::warn!(function = %function.name, %instance, %cause, "{what}");
        self.mark_broken();
        error(StatusCode::BAD_GATEWAY, "instance_failed", message)
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        // Released (the usual case): no clock to read.
        if self.lease.is_some() && Instant::now() >= self.deadline {
            self.mark_broken();
        }
    }
}

/// [`forward`] within the request timeout.
async fn forward_inner(
    shared: &Arc<Shared>,
    function: &FunctionPool,
    request: Request<Incoming>,
    client: &Client,
    target: http::Uri,
    arrived: SystemTime,
    deadline: Instant,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > shared.max_body) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than the limit of {} bytes", shared.max_body),
        );
    }
    let request_id = match parts.headers.get("x-request-id").cloned() {
        Some(id) => id,
        None => {
            let mut id = Vec::with_capacity(shared.request_prefix.len() + 20);
            shared.new_request_id(&mut id);
            HeaderValue::from_maybe_shared(Bytes::from(id))
                .unwrap_or_else(|_| HeaderValue::from_static("smgr"))
        }
    };
    let has_body = declared.is_some_and(|length| length > 0)
        || parts.headers.contains_key(header::TRANSFER_ENCODING)
        || !body.is_end_stream();
    let repeatable =
        !has_body && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    strip_hop_by_hop(&mut parts.headers);
    let forwarded_for = match parts.headers.get("x-forwarded-for").map(HeaderValue::to_str) {
        Some(Ok(earlier)) => HeaderValue::from_str(&format!("{earlier}, {}", client.ip)).ok(),
        _ => client.ip_header.clone(),
    };
    if let Some(value) = forwarded_for {
        parts.headers.insert("x-forwarded-for", value);
    }
    parts.headers.insert("x-request-id", request_id.clone());
    let max_body = usize::try_from(shared.max_body).unwrap_or(usize::MAX);
    let mut body = Some(Limited::new(body, max_body).map_err(BoxError::from).boxed());

    // One more attempt on another instance when the first failed before anything was sent,
    // or failed a request that is safe to repeat.
    let mut retried = false;
    loop {
        let (mut lease, address, cold) = match function.lease(arrived, deadline).await {
            Ok(leased) => leased,
            Err(response) => return *response,
        };
        let instance = lease.instance();
        let (mut sender, upstream) = match function.connection(instance, address).await {
            Ok(connection) => connection,
            Err(cause) => {
                let response = lease.unreachable(function, &cause);
                // Nothing was sent: any request may go to another instance.
                if !retried {
                    retried = true;
                    continue;
                }
                return response;
            }
        };
        let mut request = Request::new(if repeatable {
            Full::new(Bytes::new()).map_err(BoxError::from).boxed()
        } else {
            body.take().unwrap_or_else(|| Full::new(Bytes::new()).map_err(BoxError::from).boxed())
        });
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = target.clone();
        // Only a repeatable request is sent twice: any other takes the headers along.
        *request.headers_mut() =
            if repeatable { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
        request.headers_mut().insert(header::HOST, upstream.host.clone());
        match sender.send_request(request).await {
            Ok(response) => {
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.headers.insert("x-request-id", request_id);
                head.headers.insert("x-smgr-instance", upstream.instance.clone());
                head.headers.insert(
                    "x-smgr-cold-start",
                    HeaderValue::from_static(if cold { "true" } else { "false" }),
                );
                let body = Relay {
                    inner: incoming,
                    lease: Some(lease.release()),
                    sender: Some(sender),
                    headers: upstream,
                    returns: function.connections_handle(),
                    done: false,
                };
                return Response::from_parts(head, body.boxed());
            }
            Err(cause) => {
                if body_too_large(&cause) || cause.to_string().contains("length limit exceeded") {
                    // The client's body was refused, not the instance's answer: the instance
                    // is fine.
                    drop(lease.release());
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("the body is larger than the limit of {} bytes", shared.max_body),
                    );
                }
                let response = lease.failed(function, &cause);
                if repeatable && !retried {
                    retried = true;
                    continue;
                }
                return response;
            }
        }
    }
}

fn body_too_large(cause: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(cause);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn pool_error(function: &FunctionPool, cause: PoolError) -> Response<Body> {
    let (status, code, retry) = match &cause {
        PoolError::QueueFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "queue_full", true),
        PoolError::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_capacity", true),
        PoolError::Create(_) | PoolError::CreateTimeout { .. } => {
            function.metrics.launch_failures.inc();
            (StatusCode::BAD_GATEWAY, "launch_failed", false)
        }
        PoolError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", true),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal", false),
    };
    let mut message = cause.to_string();
    let mut source = std::error::Error::source(&cause);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    let mut response = error(status, code, format!("function `{}`: {message}", function.name));
    if retry {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

pub(crate) fn timeout(shared: &Shared) -> Response<Body> {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!("no response within the request timeout of {:?}", shared.request_timeout),
    )
}

/// What the gateway keeps per instance: its idle keep-alive connections, and the header values
/// every request to it carries.
struct Upstream {
    headers: UpstreamHeaders,
    idle: Vec<SendRequest<Body>>,
    /// Idle connections of the fast path.
    raw: Vec<TcpStream>,
}

/// The header values of an instance, made once and handed out with each connection to it.
#[derive(Clone)]
pub(crate) struct UpstreamHeaders {
    /// `Host` on requests to the instance.
    pub(crate) host: HeaderValue,
    /// `X-Smgr-Instance` on its responses.
    pub(crate) instance: HeaderValue,
}

type Connections = Arc<Mutex<HashMap<InstanceId, Upstream>>>;

impl Upstream {
    fn new(headers: UpstreamHeaders) -> Self {
        Self { headers, idle: Vec::new(), raw: Vec::new() }
    }
}

impl FunctionPool {
    fn connections_handle(&self) -> Connections {
        self.connections.clone()
    }

    /// A lease on an instance for a request that `arrived` then, held until `deadline` (see
    /// [`Sending`]); with the instance's address, and whether it was launched for this request
    /// (a cold start, counted). The error is the answer for the client.
    pub(crate) async fn lease(
        &self,
        arrived: SystemTime,
        deadline: Instant,
    ) -> Result<(Sending, SocketAddr, bool), Box<Response<Body>>> {
        let lease = self.pool.acquire().await.map_err(|cause| Box::new(pool_error(self, cause)))?;
        let cold = lease.created_at() >= arrived;
        if cold {
            self.metrics.cold_starts.inc();
        }
        let Endpoint::Http(address) = lease.endpoint() else {
            return Err(Box::new(error(
                StatusCode::BAD_GATEWAY,
                "instance_failed",
                "the instance has no HTTP endpoint".to_owned(),
            )));
        };
        Ok((Sending { lease: Some(lease), deadline }, address, cold))
    }

    /// A ready connection to `instance`, a kept one or a new one, and the instance's header
    /// values.
    async fn connection(
        &self,
        instance: InstanceId,
        address: SocketAddr,
    ) -> Result<(SendRequest<Body>, UpstreamHeaders), BoxError> {
        loop {
            let kept = self.connections.lock().get_mut(&instance).and_then(|upstream| {
                upstream.idle.pop().map(|sender| (sender, upstream.headers.clone()))
            });
            let Some((mut sender, headers)) = kept else { break };
            if sender.ready().await.is_ok() {
                return Ok((sender, headers));
            }
        }
        let (stream, headers) = self.connect_raw(instance, address).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((sender, headers))
    }

    /// A new connection to `instance`, and its header values.
    pub(crate) async fn connect_raw(
        &self,
        instance: InstanceId,
        address: SocketAddr,
    ) -> Result<(TcpStream, UpstreamHeaders), BoxError> {
        // A new connection is rare (up to `concurrency` per instance): forget the instances
        // that are gone meanwhile.
        let live: std::collections::HashSet<InstanceId> =
            self.pool.instances().into_iter().map(|status| status.id).collect();
        let known = {
            let mut connections = self.connections.lock();
            connections.retain(|id, _| live.contains(id));
            connections.get(&instance).map(|upstream| upstream.headers.clone())
        };
        let stream = TcpStream::connect(address).await?;
        let _ = stream.set_nodelay(true);
        let headers = match known {
            Some(headers) => headers,
            None => UpstreamHeaders {
                host: HeaderValue::from_str(&address.to_string())?,
                instance: HeaderValue::from_str(&instance.0.to_string())?,
            },
        };
        Ok((stream, headers))
    }

    /// A kept connection of the fast path to `instance`. With `check`, one the instance has
    /// closed meanwhile is skipped (it costs a system call).
    pub(crate) fn take_raw(
        &self,
        instance: InstanceId,
        check: bool,
    ) -> Option<(TcpStream, UpstreamHeaders)> {
        loop {
            let (stream, headers) = {
                let mut connections = self.connections.lock();
                let upstream = connections.get_mut(&instance)?;
                (upstream.raw.pop()?, upstream.headers.clone())
            };
            // A peek at the socket itself (outside the lock: it is a system call): tokio's
            // `try_read` answers from the readiness its driver last saw, and may not have seen
            // the instance's close yet.
            let open = !check
                || matches!(
                    socket2::SockRef::from(&stream).peek(&mut [std::mem::MaybeUninit::uninit()]),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock
                );
            if open {
                return Some((stream, headers));
            }
        }
    }

    /// Keeps a connection of the fast path to `instance` for the next request.
    pub(crate) fn give_back_raw(
        &self,
        instance: InstanceId,
        stream: TcpStream,
        headers: UpstreamHeaders,
    ) {
        self.connections
            .lock()
            .entry(instance)
            .or_insert_with(|| Upstream::new(headers))
            .raw
            .push(stream);
    }
}

/// A response body on its way back: holds the lease until the body ends, then gives the
/// connection back for reuse.
struct Relay {
    inner: Incoming,
    lease: Option<Lease<Manager>>,
    sender: Option<SendRequest<Body>>,
    headers: UpstreamHeaders,
    returns: Connections,
    done: bool,
}

impl hyper::body::Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            // hyper stops polling a body once it says it has ended, so the last data frame may
            // be the last poll: the connection is free as soon as the body is complete.
            std::task::Poll::Ready(None) => {
                self.done = true;
                self.finish();
            }
            std::task::Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => {
                self.done = true;
                self.finish();
            }
            std::task::Poll::Ready(Some(Err(_))) => {
                if let Some(lease) = self.lease.as_mut() {
                    lease.mark_broken();
                }
                self.finish();
            }
            _ => {}
        }
        polled.map(|frame| frame.map(|frame| frame.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Relay {
    fn finish(&mut self) {
        if let (true, Some(sender), Some(lease)) =
            (self.done, self.sender.take(), self.lease.as_ref())
        {
            let headers = &self.headers;
            self.returns
                .lock()
                .entry(lease.id())
                .or_insert_with(|| Upstream::new(headers.clone()))
                .idle
                .push(sender);
        }
        self.lease = None;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // An empty body is never polled: it ended as soon as it was made.
        if self.inner.is_end_stream() {
            self.done = true;
        }
        self.finish();
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(BoxError::from).boxed()
}

fn internal() -> Response<Body> {
    let mut response = Response::new(full("internal error"));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .unwrap_or_else(|_| internal())
}

/// The JSON error every failure answers with.
pub(crate) fn error(status: StatusCode, code: &str, message: String) -> Response<Body> {
    json(status, &serde_json::json!({ "error": { "code": code, "message": message } }))
}
