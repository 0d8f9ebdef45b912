//! [`ProcessBackend`]: launch, probe, terminate and reap child processes.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pool_core::{
    Backend, BackendError, Endpoint, FunctionSpec, Health, Instance, InstanceId, Reaped, Scope,
    Termination, process_start,
};
use tokio::process::Child;
use tokio::time::Instant;

use crate::logs::{LogBuffer, Origin, Stream, forward};
use crate::spec::{ProcessSpec, Readiness};
use crate::state_dir::{StateDir, default_state_dir, processes_of};
use crate::{spawner, sys};

/// How many ports a launch tries when the child reports its port already in use.
const PORT_ATTEMPTS: usize = 3;
/// The longest pause between two readiness attempts.
const MAX_READINESS_PAUSE: Duration = Duration::from_millis(10);
/// For this long after the spawn, the port is polled every [`FAST_POLL`] from a blocking
/// thread: most functions open their port within it, and tokio's timer (1 ms ticks) would add
/// up to a tick to each of them.
const FAST_PHASE: Duration = Duration::from_millis(25);
const FAST_POLL: Duration = Duration::from_micros(200);
/// How long a probe's HTTP check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the backend keeps its records, and which pool and owner it launches for.
#[derive(Debug, Clone)]
pub struct ProcessBackendConfig {
    /// The pool name and owner stamped on every child.
    pub scope: Scope,
    /// The base of the state directory; [`default_state_dir`] when unset.
    pub state_dir: Option<PathBuf>,
}

impl ProcessBackendConfig {
    /// The config for `scope` with the default state directory.
    pub fn new(scope: Scope) -> Self {
        Self { scope, state_dir: None }
    }
}

/// Runs functions as child processes of this one (see the crate docs).
#[derive(Debug)]
pub struct ProcessBackend {
    scope: Scope,
    state: Arc<StateDir>,
}

/// What the backend keeps on an [`Instance`] of its own.
#[derive(Debug)]
pub struct ProcessDetails {
    pid: u32,
    port: u16,
    child: Mutex<Child>,
    tracked: Tracked,
    logs: LogBuffer,
    readiness: Readiness,
    grace_period: Option<Duration>,
}

impl ProcessDetails {
    /// The child's pid, which is also its process group.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The port it serves on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The latest lines it wrote to stdout and stderr.
    pub fn logs(&self) -> &LogBuffer {
        &self.logs
    }
}

/// A launch that did not give a ready instance.
enum Failed {
    /// The child exited saying its port was taken: worth another port.
    PortTaken(BackendError),
    Other(BackendError),
}

impl ProcessBackend {
    /// A backend for `config.scope`; creates its state directory.
    pub fn new(config: ProcessBackendConfig) -> Result<Self, BackendError> {
        let base = config.state_dir.unwrap_or_else(default_state_dir);
        let state =
            StateDir::open(&base, &config.scope).map_err(|error| BackendError::Operation {
                operation: format!("creating the state directory under {}", base.display()),
                reason: error.to_string(),
                source: Some(Box::new(error)),
            })?;
        Ok(Self { scope: config.scope, state: Arc::new(state) })
    }

    /// This owner's directory of records.
    pub fn state_dir(&self) -> &Path {
        self.state.own_dir()
    }

    async fn launch_once(
        &self,
        function: &FunctionSpec<ProcessSpec>,
        program: &Path,
        id: InstanceId,
    ) -> Result<Instance<ProcessDetails>, Failed> {
        let spec = &function.spec;
        let name = function.name.as_str();
        let launch_error = |reason: String, source: std::io::Error| {
            BackendError::launch_because(&function.name, reason, source)
        };
        let listener = free_port().map_err(|e| {
            Failed::Other(launch_error(format!("binding a port on 127.0.0.1: {e}"), e))
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| Failed::Other(launch_error(e.to_string(), e)))?
            .port();
        // With socket activation the child inherits the bound socket; otherwise the port is
        // freed for the child to bind (and retried should another process take it first).
        let listener: Option<OwnedFd> = if spec.socket_activation {
            Some(listener.into())
        } else {
            drop(listener);
            None
        };

        let mut command = self.command(function, program, id, port);
        sys::prepare_child(&mut command, &spec.limits, listener.as_ref());
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(false);
        let spawned = spawner::spawn(command).await;
        drop(listener);
        let mut child =
            spawned.map_err(|error| Failed::Other(spawn_error(function, program, error)))?;
        let pid = child.id().unwrap_or(0);
        let start = process_start(pid).unwrap_or(0);
        // From here on, every way out but a ready instance stops the child: an error, a
        // timeout, or the launch being cancelled (the pool's create_timeout).
        let tracked = Tracked { state: self.state.clone(), id, pid, live: true };
        if let Err(error) = self.state.record(id, pid, start) {
            return Err(Failed::Other(BackendError::Operation {
                operation: format!(
                    "recording instance {id} of `{name}` in {}",
                    self.state_dir().display()
                ),
                reason: error.to_string(),
                source: Some(Box::new(error)),
            }));
        }

        let logs = LogBuffer::new(spec.log_lines);
        let origin = Origin { function: name.to_owned(), instance: id.0, pid };
        let stdout = child
            .stdout
            .take()
            .map(|out| forward(out, Stream::Stdout, logs.clone(), origin.clone()));
        let stderr =
            child.stderr.take().map(|err| forward(err, Stream::Stderr, logs.clone(), origin));
        drop(stdout);

        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let started = Instant::now();
        let deadline = pool_core::deadline_after(started, spec.startup_timeout);
        let fast_until = std::time::Instant::now() + FAST_PHASE.min(spec.startup_timeout);
        let _ = tokio::task::spawn_blocking(move || poll_port(address, fast_until)).await;
        let mut detail;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the stderr reader take the child's last words.
                if let Some(stderr) = stderr {
                    let _ = tokio::time::timeout(Duration::from_millis(200), stderr).await;
                }
                drop(tracked);
                let stderr_tail = logs.stderr_tail();
                let error = BackendError::ExitedBeforeReady {
                    function: name.to_owned(),
                    status: format!("program {}, {status}", program.display()),
                    stderr_tail,
                };
                let port_taken = !spec.socket_activation
                    && logs.stderr_tail().iter().any(|line| mentions_port_taken(line));
                return Err(if port_taken {
                    Failed::PortTaken(error)
                } else {
                    Failed::Other(error)
                });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match ready(address, &spec.readiness, remaining.max(Duration::from_millis(1))).await {
                Ok(()) => break,
                Err(seen) => detail = seen,
            }
            if Instant::now() >= deadline {
                drop(tracked);
                let _ = child.wait().await;
                return Err(Failed::Other(BackendError::NotReady {
                    function: name.to_owned(),
                    timeout: spec.startup_timeout,
                    detail: format!("program {}, port {port}: {detail}", program.display()),
                    stderr_tail: logs.stderr_tail(),
                }));
            }
            // Pauses grow with the time waited, so that detecting readiness lags it by about
            // 5%, up to the cap.
            let pause =
                (started.elapsed() / 20).clamp(Duration::from_millis(1), MAX_READINESS_PAUSE);
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        tracing::debug!(
            target: "smgr::process",
            function = name, instance = id.0, pid, port,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "instance ready"
        );
        let details = ProcessDetails {
            pid,
            port,
            child: Mutex::new(child),
            tracked,
            logs,
            readiness: spec.readiness.clone(),
            grace_period: spec.grace_period,
        };
        Ok(Instance::new(id, function.name.clone(), Endpoint::Http(address), details))
    }

    /// The child's command line, environment and process settings.
    fn command(
        &self,
        function: &FunctionSpec<ProcessSpec>,
        program: &Path,
        id: InstanceId,
        port: u16,
    ) -> std::process::Command {
        let spec = &function.spec;
        let port_text = port.to_string();
        let args = spec.args.iter().map(|arg| arg.replace("{port}", &port_text));
        let mut command = if spec.socket_activation {
            // LISTEN_PID must be the program's own pid, known only in the child: a shell sets
            // it and then becomes the program (exec keeps the pid).
            let mut shell = std::process::Command::new("/bin/sh");
            shell
                .arg("-c")
                .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
                .arg(program)
                .args(args);
            shell
        } else {
            let mut direct = std::process::Command::new(program);
            direct.args(args);
            direct
        };
        command.env_clear();
        for name in &spec.pass_env {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .env("PORT", &port_text)
            .env("SMGR_POOL", self.scope.pool.as_str())
            .env("SMGR_OWNER", self.scope.owner.as_str())
            .env("SMGR_FUNCTION", function.name.as_str())
            .env("SMGR_INSTANCE", id.0.to_string());
        if spec.socket_activation {
            command.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "http");
        }
        command.envs(&spec.env);
        if let Some(dir) = &spec.working_dir {
            command.current_dir(dir);
        }
        command.process_group(0);
        if let Some(uid) = spec.uid {
            command.uid(uid);
        }
        if let Some(gid) = spec.gid {
            command.gid(gid);
        }
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    type Spec = ProcessSpec;
    type Details = ProcessDetails;

    fn kind(&self) -> &'static str {
        "process"
    }

    fn scope(&self) -> &Scope {
        &self.scope
    }

    fn validate(&self, function: &FunctionSpec<ProcessSpec>) -> Result<(), BackendError> {
        check_spec(function)
    }

    async fn launch(
        &self,
        function: &FunctionSpec<ProcessSpec>,
        id: InstanceId,
    ) -> Result<Instance<ProcessDetails>, BackendError> {
        let program = resolved_program(function)?;
        let mut attempt = 1;
        loop {
            match self.launch_once(function, &program, id).await {
                Ok(instance) => return Ok(instance),
                Err(Failed::PortTaken(error)) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(
                        target: "smgr::process",
                        function = function.name.as_str(), attempt, %error,
                        "the port was taken; trying another"
                    );
                    attempt += 1;
                }
                Err(Failed::PortTaken(error) | Failed::Other(error)) => return Err(error),
            }
        }
    }

    async fn probe(&self, instance: &Instance<ProcessDetails>) -> Result<Health, BackendError> {
        let details = instance.details();
        let exited = details.child.lock().try_wait();
        match exited {
            Ok(Some(status)) => return Ok(Health::Dead(format!("the process {status}"))),
            Ok(None) => {}
            Err(error) => {
                return Err(BackendError::Operation {
                    operation: format!(
                        "probing instance {} of `{}`",
                        instance.id(),
                        instance.function()
                    ),
                    reason: error.to_string(),
                    source: Some(Box::new(error)),
                });
            }
        }
        let Endpoint::Http(address) = instance.endpoint() else { return Ok(Health::Alive) };
        // The process runs; its port (or its readiness path) must still answer.
        Ok(match ready(address, &details.readiness, PROBE_TIMEOUT).await {
            Ok(()) => Health::Alive,
            Err(seen) => Health::Dead(seen),
        })
    }

    async fn terminate(
        &self,
        instance: Instance<ProcessDetails>,
        grace: Duration,
    ) -> Result<Termination, BackendError> {
        let id = instance.id();
        let function = instance.function().clone();
        let details = instance.into_details();
        let grace = details.grace_period.unwrap_or(grace);
        let pid = details.pid;
        let mut tracked = details.tracked;
        let mut child = details.child.into_inner();
        let signal_error = |error: std::io::Error| BackendError::Operation {
            operation: format!("stopping instance {id} of `{function}` (pid {pid})"),
            reason: error.to_string(),
            source: Some(Box::new(error)),
        };
        let outcome = if let Ok(Some(_)) = child.try_wait() {
            Termination::AlreadyGone
        } else {
            sys::signal_group(pid, libc::SIGTERM).map_err(signal_error)?;
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(_) => Termination::Graceful,
                Err(_) => {
                    sys::signal_group(pid, libc::SIGKILL).map_err(signal_error)?;
                    let _ = child.wait().await;
                    Termination::Forced
                }
            }
        };
        // Whatever else it started goes with it: its group, and processes that left the group
        // but still carry its identity.
        let _ = sys::signal_group(pid, libc::SIGKILL);
        let (pool, owner) = (self.scope.pool.clone(), self.scope.owner.clone());
        let stragglers =
            tokio::task::spawn_blocking(move || processes_of(&pool, &owner, Some(id))).await;
        for straggler in stragglers.unwrap_or_default() {
            let _ = sys::signal_process(straggler, libc::SIGKILL);
        }
        tracked.live = false;
        self.state.forget(id);
        tracing::debug!(
            target: "smgr::process",
            function = function.as_str(), instance = id.0, pid, ?outcome,
            "instance stopped"
        );
        Ok(outcome)
    }

    fn pid(&self, details: &ProcessDetails) -> Option<u32> {
        Some(details.pid)
    }

    async fn reap_orphans(&self) -> Result<Reaped, BackendError> {
        let reaped = self.state.reap().map_err(|error| BackendError::Operation {
            operation: format!("reaping orphans of pool `{}`", self.scope.pool),
            reason: error.to_string(),
            source: Some(Box::new(error)),
        })?;
        if reaped.instances > 0 {
            tracing::info!(
                target: "smgr::process",
                pool = self.scope.pool.as_str(), owners = reaped.owners, instances = reaped.instances,
                "reaped orphans of dead owners"
            );
        }
        Ok(reaped)
    }
}

/// Checks what can be checked of a spec before launching: what [`ProcessBackend`]'s
/// `validate` checks, without a backend. The program must be found as the child would find it
/// (see [`ProcessSpec::program`]) and the working directory must exist, so the answer holds on
/// this machine. A config checker can tell with it whether the backend will take a spec.
pub fn check_spec(function: &FunctionSpec<ProcessSpec>) -> Result<(), BackendError> {
    resolved_program(function).map(drop)
}

/// Checks the spec as [`check_spec`] does; the program's path.
fn resolved_program(function: &FunctionSpec<ProcessSpec>) -> Result<PathBuf, BackendError> {
    let spec = &function.spec;
    let invalid = |reason: String| BackendError::invalid_spec(&function.name, reason);
    if let Some(dir) = &spec.working_dir
        && !dir.is_dir()
    {
        return Err(invalid(format!(
            "working_dir {}: {}",
            dir.display(),
            if dir.exists() { "not a directory" } else { "no such directory" }
        )));
    }
    pool_core::check_launch_rules(
        spec.startup_timeout,
        &spec.readiness,
        spec.env.keys().chain(&spec.pass_env),
    )
    .map_err(invalid)?;
    // The backend sets these itself: a spec that changed them would lose its port or its
    // identity, by which terminate and the reaper find the processes it started.
    if let Some(name) = spec.env.keys().find(|name| is_reserved(name)) {
        return Err(invalid(format!(
            "env sets {name}, which the backend sets itself (PORT, SMGR_*, LISTEN_*)"
        )));
    }
    resolve_program(spec).map_err(invalid)
}

/// Whether the backend sets this variable itself.
fn is_reserved(name: &str) -> bool {
    name == "PORT" || name.starts_with("SMGR_") || name.starts_with("LISTEN_")
}

/// Finds the program as the child would: a path relative to its working directory, or a bare
/// name in the `PATH` it gets; it must be an executable file.
fn resolve_program(spec: &ProcessSpec) -> Result<PathBuf, String> {
    let program = &spec.program;
    let shown = program.display();
    if program.as_os_str().is_empty() {
        return Err("program is empty".to_owned());
    }
    let candidates: Vec<PathBuf> = if program.components().count() > 1 || program.is_absolute() {
        let base = spec.working_dir.clone().unwrap_or_default();
        vec![base.join(program)]
    } else {
        let path: Option<OsString> = spec.env.get("PATH").map(OsString::from).or_else(|| {
            spec.pass_env.iter().any(|n| n == "PATH").then(|| std::env::var_os("PATH")).flatten()
        });
        let Some(path) = path else {
            return Err(format!(
                "program `{shown}` has no directory and the child gets no PATH to find it in"
            ));
        };
        std::env::split_paths(&path).map(|dir| dir.join(program)).collect()
    };
    let mut seen_not_executable = None;
    for candidate in &candidates {
        match std::fs::metadata(candidate) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                return Ok(std::path::absolute(candidate).unwrap_or_else(|_| candidate.clone()));
            }
            Ok(meta) if meta.is_file() => seen_not_executable = Some(candidate.clone()),
            _ => {}
        }
    }
    Err(match (seen_not_executable, candidates.len()) {
        (Some(path), _) => format!("program `{shown}`: {} is not executable", path.display()),
        (None, 1) => format!("program `{shown}`: {} does not exist", candidates[0].display()),
        (None, _) => format!("program `{shown}` was not found in the child's PATH"),
    })
}

fn spawn_error(
    function: &FunctionSpec<ProcessSpec>,
    program: &Path,
    error: std::io::Error,
) -> BackendError {
    let reason = match error.kind() {
        std::io::ErrorKind::NotFound => format!("program {} not found", program.display()),
        std::io::ErrorKind::PermissionDenied => {
            format!("program {}: permission denied", program.display())
        }
        _ => format!("starting program {}: {error}", program.display()),
    };
    BackendError::launch_because(&function.name, reason, error)
}

/// A listener on a free port of 127.0.0.1, chosen below the kernel's ephemeral range where it
/// can: ports in that range are also handed to outgoing connections (the readiness checks
/// among them), which can take the port between our check and the child's bind.
fn free_port() -> std::io::Result<TcpListener> {
    static EPHEMERAL_LOW: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    let ephemeral_low = *EPHEMERAL_LOW.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768)
    });
    const LOW: u16 = 10_000;
    if ephemeral_low > LOW + 1_000 {
        let span = u64::from(ephemeral_low - LOW);
        let mut seed = next_seed();
        for _ in 0..64 {
            // xorshift: cheap spreading of the candidates, no need for a random crate.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let port = LOW + (seed % span) as u16;
            if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                return Ok(listener);
            }
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
}

/// A seed that differs between launches and between processes.
fn next_seed() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    (u64::from(std::process::id()) << 32
        ^ u64::from(nanos)
        ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        | 1
}

/// Whether a line of stderr says the port was already taken.
fn mentions_port_taken(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    line.contains("address already in use")
        || line.contains("eaddrinuse")
        || line.contains("address in use")
}

/// Tries to connect to `address` every [`FAST_POLL`] until it accepts or `until` passes;
/// whether it accepted. Blocking: run it on a blocking thread.
fn poll_port(address: SocketAddr, until: std::time::Instant) -> bool {
    loop {
        if let Ok(stream) = std::net::TcpStream::connect_timeout(&address, FAST_POLL * 5)
            && stream.local_addr().ok() != Some(address)
        {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(FAST_POLL);
    }
}

/// One readiness attempt.
async fn ready(
    address: SocketAddr,
    readiness: &Readiness,
    timeout: Duration,
) -> Result<(), String> {
    match readiness {
        Readiness::Tcp => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                // A connect to a port nobody listens on can connect to itself, when the kernel
                // picks the same port as its source (TCP simultaneous open).
                Ok(Ok(stream)) if stream.local_addr().ok() == Some(address) => {
                    Err("connect: reached itself, nobody listens yet".to_owned())
                }
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("connect: {error}")),
                Err(_) => Err(format!("connect took longer than {timeout:?}")),
            }
        }
        Readiness::Http(path) => pool_core::probe::http_ok(address, path, timeout).await,
    }
}

/// A running child recorded in the state directory. Dropped while `live` — a failed or
/// cancelled launch, an instance dropped without [`Backend::terminate`] — it kills the child's
/// group and forgets the record; tokio reaps the child.
#[derive(Debug)]
struct Tracked {
    state: Arc<StateDir>,
    id: InstanceId,
    pid: u32,
    live: bool,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.live {
            let _ = sys::signal_group(self.pid, libc::SIGKILL);
            self.state.forget(self.id);
        }
    }
}
