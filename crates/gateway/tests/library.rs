//! The gateway as a library: a program embeds it with a backend of its own and serves real
//! HTTP from that backend's instances.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gateway::{Gateway, GatewayBuilder};
use pool_core::{
    Backend, BackendError, Endpoint, FunctionName, FunctionSpec, Health, Instance, InstanceId,
    PoolConfig, PoolName, Reaped, Scope, Termination,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

/// Instances are tasks of the test, each an HTTP server on a port of its own that answers
/// every request with its greeting, the instance id and the path.
#[derive(Debug)]
struct InlineBackend {
    scope: Scope,
    reaps: AtomicU32,
    launched: AtomicU32,
    terminated: AtomicU32,
    /// When set, each terminate first waits, up to [`TOGETHER_WAIT`], until this many have
    /// begun; one that waited in vain counts in `terminated_alone`.
    together: Option<Barrier>,
    terminated_alone: AtomicU32,
}

/// How long a terminate waits for the others in [`InlineBackend::together`]: far longer than
/// terminates started side by side can be apart.
const TOGETHER_WAIT: Duration = Duration::from_secs(10);

impl InlineBackend {
    /// A backend for a pool name of this test process's own, beginning with `prefix`, and a
    /// gateway builder for that pool name (and a state directory of its own).
    fn new(prefix: &str) -> (GatewayBuilder, Arc<Self>) {
        Self::terminating_together(prefix, None)
    }

    /// [`InlineBackend::new`], whose terminates wait for `together` of them to have begun.
    fn terminating_together(prefix: &str, together: Option<usize>) -> (GatewayBuilder, Arc<Self>) {
        let pool_name = PoolName::new(format!("{prefix}-{}", std::process::id())).unwrap();
        let builder = Gateway::builder()
            .pool_name(pool_name.as_str())
            .state_dir(Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join(pool_name.as_str())));
        let backend = Arc::new(Self {
            scope: Scope::current(pool_name),
            reaps: AtomicU32::new(0),
            launched: AtomicU32::new(0),
            terminated: AtomicU32::new(0),
            together: together.map(Barrier::new),
            terminated_alone: AtomicU32::new(0),
        });
        (builder, backend)
    }
}

#[async_trait]
impl Backend for InlineBackend {
    /// The greeting.
    type Spec = String;
    /// The server task.
    type Details = JoinHandle<()>;

    fn kind(&self) -> &'static str {
        "inline"
    }

    fn scope(&self) -> &Scope {
        &self.scope
    }

    fn validate(&self, function: &FunctionSpec<String>) -> Result<(), BackendError> {
        if function.spec.is_empty() {
            return Err(BackendError::invalid_spec(&function.name, "the greeting is empty"));
        }
        Ok(())
    }

    async fn launch(
        &self,
        function: &FunctionSpec<String>,
        id: InstanceId,
    ) -> Result<Instance<JoinHandle<()>>, BackendError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("its address");
        let greeting = function.spec.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(answer(stream, format!("{greeting} from {id}")));
            }
        });
        self.launched.fetch_add(1, Ordering::SeqCst);
        Ok(Instance::new(id, function.name.clone(), Endpoint::Http(address), server))
    }

    async fn probe(&self, instance: &Instance<JoinHandle<()>>) -> Result<Health, BackendError> {
        Ok(if instance.details().is_finished() {
            Health::Dead("the server task ended".into())
        } else {
            Health::Alive
        })
    }

    async fn terminate(
        &self,
        instance: Instance<JoinHandle<()>>,
        _grace: Duration,
    ) -> Result<Termination, BackendError> {
        if let Some(together) = &self.together
            && tokio::time::timeout(TOGETHER_WAIT, together.wait()).await.is_err()
        {
            self.terminated_alone.fetch_add(1, Ordering::SeqCst);
        }
        instance.details().abort();
        self.terminated.fetch_add(1, Ordering::SeqCst);
        Ok(Termination::Graceful)
    }

    async fn reap_orphans(&self) -> Result<Reaped, BackendError> {
        self.reaps.fetch_add(1, Ordering::SeqCst);
        Ok(Reaped::default())
    }
}

/// Answers each request on `stream` with `text` and the request's path, keeping the connection.
async fn answer(mut stream: TcpStream, text: String) {
    let mut buffer = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let Ok(read) = stream.read(&mut chunk).await else { return };
        if read == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..read]);
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
            let body = format!("{text} at {path}");
            let response =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// One request on a connection of its own: the status, the head and the body.
async fn get(address: SocketAddr, path: &str) -> (u16, String, String) {
    get_as(address, path, "HTTP/1.1").await
}

/// [`get`] in HTTP `version`: the gateway serves HTTP/1.1 on its own path, HTTP/1.0 with hyper.
async fn get_as(address: SocketAddr, path: &str, version: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).await.expect("the gateway accepts");
    let request = format!("GET {path} {version}\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("the request is sent");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("the response is read");
    let response = String::from_utf8(response).expect("a text response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_serves_functions_of_its_own_backend() {
    let (builder, backend) = InlineBackend::new("library");
    let warm = PoolConfig { min: 1, max: 2, ..PoolConfig::default() };
    let gateway = builder
        .custom_function(
            FunctionName::new("hello").unwrap(),
            warm.clone(),
            backend.clone(),
            "hello".to_owned(),
        )
        .custom_function(
            FunctionName::new("bonjour").unwrap(),
            warm,
            backend.clone(),
            "bonjour".to_owned(),
        )
        .start()
        .await
        .expect("the gateway starts");
    assert_eq!(backend.reaps.load(Ordering::SeqCst), 1, "one reap for one backend");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        })
    };

    let (status, head, body) = get(address, "/fn/hello/some/path?x=1").await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(body.starts_with("hello from "), "{body}");
    assert!(body.ends_with(" at /some/path?x=1"), "{body}");
    assert!(head.to_ascii_lowercase().contains("x-smgr-instance: "), "{head}");
    let (status, _, body) = get(address, "/fn/bonjour/").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("bonjour from "), "{body}");

    let (status, _, body) = get(address, "/admin/pools").await;
    assert_eq!(status, 200);
    let pools: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pools = pools["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2);
    for pool in pools {
        assert_eq!(pool["backend"], "inline", "{pool}");
        let instances = pool["instances"].as_array().unwrap();
        assert!(!instances.is_empty(), "{pool}");
        assert!(instances[0]["endpoint"].as_str().unwrap().starts_with("http://127.0.0.1:"));
    }

    stop.send(()).unwrap();
    let report = serving.await.unwrap();
    assert!(report.drained);
    let launched = backend.launched.load(Ordering::SeqCst);
    assert!(launched >= 2, "each function warmed its minimum: {launched}");
    assert_eq!(report.instances_destroyed, u64::from(launched));
    assert_eq!(backend.terminated.load(Ordering::SeqCst), launched, "every instance was stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_too_long_to_count_down_is_no_timeout() {
    let (builder, backend) = InlineBackend::new("library-forever");
    let gateway = builder
        .request_timeout(Duration::MAX)
        .custom_function(
            FunctionName::new("hello").unwrap(),
            PoolConfig { max: 1, ..PoolConfig::default() },
            backend.clone(),
            "hello".to_owned(),
        )
        .start()
        .await
        .expect("the gateway starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        gateway
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let (status, head, body) = get_as(address, "/fn/hello/long", version).await;
        assert_eq!(status, 200, "{version}: {head}\n{body}");
        assert!(body.ends_with(" at /long"), "{version}: {body}");
    }
    stop.send(()).unwrap();
    assert!(serving.await.unwrap().drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_of_all_functions_shut_down_side_by_side() {
    // Each function's one instance can only finish stopping while the other's stops too: a
    // gateway that shut its pools down one after the other would stop each alone.
    let (builder, backend) = InlineBackend::terminating_together("library-together", Some(2));
    let one = PoolConfig { min: 1, max: 1, ..PoolConfig::default() };
    let gateway = ["hello", "bonjour"]
        .into_iter()
        .fold(builder, |builder, name| {
            let name = FunctionName::new(name).unwrap();
            builder.custom_function(name, one.clone(), backend.clone(), "hi".to_owned())
        })
        .start()
        .await
        .expect("the gateway starts");
    while backend.launched.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let destroyed = gateway.shutdown_pools(Duration::from_secs(5)).await;
    assert_eq!(destroyed, 2);
    assert_eq!(backend.terminated.load(Ordering::SeqCst), 2);
    assert_eq!(
        backend.terminated_alone.load(Ordering::SeqCst),
        0,
        "a pool's instance stopped while the other pool's waited its turn"
    );
}

#[tokio::test]
async fn a_spec_the_backend_refuses_stops_the_start_with_its_reason() {
    let (builder, backend) = InlineBackend::new("library-refused");
    let error = builder
        .custom_function(
            FunctionName::new("mute").unwrap(),
            PoolConfig::default(),
            backend.clone(),
            String::new(),
        )
        .start()
        .await
        .expect_err("an empty greeting is refused");
    assert!(error.to_string().contains("the greeting is empty"), "{error}");
    assert!(error.to_string().contains("mute"), "{error}");
    assert_eq!(backend.launched.load(Ordering::SeqCst), 0);
}
