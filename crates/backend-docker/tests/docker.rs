//! The docker backend against a real Docker Engine, beyond the conformance suite: what the
//! containers get, event-driven liveness, failed launches, a SIGKILLed owner, a dead engine.
//! Without an engine the tests that need one skip loudly, unless `SMGR_REQUIRE_DOCKER=1`.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backend_docker::{
    DockerBackend, DockerBackendConfig, DockerSpec, InjectedFile, Limits, OWNER_LABEL, POOL_LABEL,
    PullPolicy, testkit,
};
use futures_util::StreamExt;
use pool_core::{
    Backend, BackendError, Endpoint, FunctionSpec, Health, InstanceId, OwnerId, PoolName, Scope,
};

/// A pool name of its own for each test run.
fn scope(test: &str) -> Scope {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let pool = format!("dk-{test}-{}-{}", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed));
    Scope::current(PoolName::new(pool).unwrap())
}

async fn connect(scope: Scope) -> DockerBackend {
    DockerBackend::connect(DockerBackendConfig::new(scope)).await.expect("the engine answers")
}

async fn image(backend: &DockerBackend) -> String {
    testkit::fixture_image(backend.docker(), Path::new(env!("CARGO_TARGET_TMPDIR")))
        .await
        .expect("the fixture image builds")
}

fn fixture(image: &str, args: &[&str]) -> DockerSpec {
    let mut command = vec!["--any-address"];
    command.extend_from_slice(args);
    DockerSpec::new(image).command(command).pull(PullPolicy::Never)
}

/// The fixture as function `name`, never ready, given `startup_timeout` to get ready.
async fn never_ready(
    backend: &DockerBackend,
    name: &str,
    startup_timeout: Duration,
) -> FunctionSpec<DockerSpec> {
    let mut spec = fixture(&image(backend).await, &["--never-ready"]);
    spec.startup_timeout = startup_timeout;
    FunctionSpec::new(name, spec).unwrap()
}

/// Kills a container behind the backend's back.
async fn sigkill(backend: &DockerBackend, container: &str) {
    let options = bollard::query_parameters::KillContainerOptions { signal: "SIGKILL".to_owned() };
    backend.docker().kill_container(container, Some(options)).await.unwrap();
}

async fn leftovers(backend: &DockerBackend, scope: &Scope) -> usize {
    backend.containers_of(&scope.pool, None).await.expect("listing works").len()
}

#[tokio::test]
async fn an_engine_that_does_not_answer_is_a_clear_unavailable_error() {
    let socket = "/nonexistent/smgr-test/docker.sock";
    let mut config = DockerBackendConfig::new(scope("dead"));
    config.host = Some(format!("unix://{socket}"));
    let error = DockerBackend::connect(config).await.expect_err("nothing answers there");
    assert!(matches!(error, BackendError::Unavailable { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("docker backend is unavailable"), "{message}");
    assert!(message.contains(socket), "the socket tried is named: {message}");

    let mut config = DockerBackendConfig::new(scope("dead"));
    config.host = Some("ssh://somewhere".to_owned());
    let error = DockerBackend::connect(config).await.expect_err("not a supported address");
    assert!(error.to_string().contains("ssh://somewhere"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_labels_limits_locked_down_privileges_and_their_files() {
    if testkit::skip_without_engine("containers_get_labels_limits...") {
        return;
    }
    let scope = scope("settings");
    let backend = connect(scope.clone()).await;
    let mut spec = fixture(&image(&backend).await, &[]);
    spec.limits = Limits { memory_bytes: Some(64 << 20), cpus: Some(0.5), pids: Some(32) };
    spec.labels.insert("team".to_owned(), "search".to_owned());
    spec.env.insert("GREETING".to_owned(), "hi".to_owned());
    spec.files = vec![InjectedFile {
        path: "/etc/smgr/config.txt".to_owned(),
        source: None,
        contents: Some("answer = 42\n".to_owned()),
        mode: 0o600,
    }];
    let function = FunctionSpec::new("settings", spec).unwrap();
    let instance = backend.launch(&function, InstanceId(7)).await.expect("launches");
    let Endpoint::Http(address) = instance.endpoint() else { panic!("an HTTP endpoint") };
    assert!(address.ip().is_loopback(), "published on 127.0.0.1 only: {address}");

    let id = instance.details().id.clone();
    let inspected = backend.docker().inspect_container(&id, None).await.unwrap();
    let config = inspected.config.unwrap();
    let labels = config.labels.unwrap();
    assert_eq!(labels[OWNER_LABEL], scope.owner.as_str());
    assert_eq!(labels[POOL_LABEL], scope.pool.as_str());
    assert_eq!(labels["smgr.function"], "settings");
    assert_eq!(labels["smgr.instance"], "7");
    assert_eq!(labels["team"], "search");
    let env = config.env.unwrap();
    for expected in ["PORT=8080", "SMGR_FUNCTION=settings", "SMGR_INSTANCE=7", "GREETING=hi"] {
        assert!(env.iter().any(|e| e == expected), "{expected} in {env:?}");
    }
    let host = inspected.host_config.unwrap();
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_owned()]));
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.pids_limit, Some(32));
    assert_eq!(host.init, Some(true));

    // The file was copied in, with its mode.
    let options = bollard::query_parameters::DownloadFromContainerOptions {
        path: "/etc/smgr/config.txt".to_owned(),
    };
    let mut archive = Vec::new();
    let mut download = backend.docker().download_from_container(&id, Some(options));
    while let Some(chunk) = download.next().await {
        archive.extend_from_slice(&chunk.unwrap());
    }
    let size = usize::from_str_radix(
        String::from_utf8_lossy(&archive[124..135]).trim_end_matches('\0'),
        8,
    )
    .unwrap();
    assert_eq!(&archive[512..512 + size], b"answer = 42\n");
    let mode = String::from_utf8_lossy(&archive[100..107]).trim_end_matches('\0').to_owned();
    assert!(mode.ends_with("600"), "mode {mode}");

    // The function sees its environment.
    let (code, body) = pool_core::testkit::http_get(address, "/env").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("GREETING=hi"), "{body}");

    backend.terminate(instance, Duration::from_secs(5)).await.unwrap();
    assert_eq!(leftovers(&backend, &scope).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_is_dead_from_the_event_stream() {
    if testkit::skip_without_engine("a_killed_container_is_dead_from_the_event_stream") {
        return;
    }
    let scope = scope("events");
    let backend = connect(scope.clone()).await;
    let function = FunctionSpec::new("victim", fixture(&image(&backend).await, &[])).unwrap();
    let instance = backend.launch(&function, InstanceId(0)).await.expect("launches");
    assert_eq!(backend.probe(&instance).await.unwrap(), Health::Alive);
    sigkill(&backend, &instance.details().id).await;
    let health = pool_core::testkit::wait_for_death(&backend, &instance).await;
    // Only the event stream knows the cause; inspecting would only see exit code 137.
    assert_eq!(health, Health::Dead("killed with SIGKILL".to_owned()));
    let ended = backend.terminate(instance, Duration::from_secs(1)).await.unwrap();
    assert_eq!(ended, pool_core::Termination::AlreadyGone);
    assert_eq!(leftovers(&backend, &scope).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_event_stream_a_dead_container_is_found_by_inspecting() {
    if testkit::skip_without_engine("without_the_event_stream...") {
        return;
    }
    let scope = scope("inspect");
    let config =
        DockerBackendConfig { follow_events: false, ..DockerBackendConfig::new(scope.clone()) };
    let backend = DockerBackend::connect(config).await.expect("the engine answers");
    let function = FunctionSpec::new("victim", fixture(&image(&backend).await, &[])).unwrap();
    let instance = backend.launch(&function, InstanceId(0)).await.expect("launches");
    assert_eq!(backend.probe(&instance).await.unwrap(), Health::Alive);
    sigkill(&backend, &instance.details().id).await;
    // No events: a probe inspects, and sees the exit once the engine has recorded it.
    let health = pool_core::testkit::wait_for_death(&backend, &instance).await;
    assert_eq!(health, Health::Dead("the container exited with code 137".to_owned()));
    let ended = backend.terminate(instance, Duration::from_secs(1)).await.unwrap();
    assert_eq!(ended, pool_core::Termination::AlreadyGone, "not counted as a forced stop");
    assert_eq!(leftovers(&backend, &scope).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_launch_says_why_with_the_logs_and_leaves_no_container() {
    if testkit::skip_without_engine("a_failed_launch_says_why...") {
        return;
    }
    let scope = scope("failed");
    let backend = connect(scope.clone()).await;
    let image = image(&backend).await;
    let failing = FunctionSpec::new(
        "failing",
        fixture(&image, &["--fail-start", "config file /etc/app.toml is missing"]),
    )
    .unwrap();
    let error = backend.launch(&failing, InstanceId(0)).await.expect_err("it exits at once");
    assert!(matches!(error, BackendError::ExitedBeforeReady { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(message.contains("config file /etc/app.toml is missing"), "the log tail: {message}");
    assert_eq!(leftovers(&backend, &scope).await, 0);

    let missing = FunctionSpec::new(
        "missing",
        DockerSpec::new("smgr-no-such-image:never").pull(PullPolicy::Never),
    )
    .unwrap();
    let error = backend.launch(&missing, InstanceId(1)).await.expect_err("no such image");
    let message = error.to_string();
    assert!(message.contains("smgr-no-such-image:never"), "names the image: {message}");
    assert!(message.contains("`never`"), "says why it was not pulled: {message}");
    assert_eq!(leftovers(&backend, &scope).await, 0);
}

/// Not a test of its own: the owner process that
/// `containers_of_a_sigkilled_owner_are_removed_by_the_next_one` starts and kills. It launches
/// two containers for the pool in `SMGR_TEST_POOL`, says `ready`, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of another test"]
async fn helper_owner_launches_and_waits() {
    let Ok(pool) = std::env::var("SMGR_TEST_POOL") else { return };
    let scope = Scope::current(PoolName::new(pool).unwrap());
    let backend = connect(scope).await;
    let function = FunctionSpec::new("orphan", fixture(&image(&backend).await, &[])).unwrap();
    let mut instances = Vec::new();
    for id in 0..2 {
        instances.push(backend.launch(&function, InstanceId(id)).await.expect("launches"));
    }
    #[allow(clippy::print_stdout, reason = "the parent test reads this line")]
    {
        println!("ready");
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_sigkilled_owner_are_removed_by_the_next_one() {
    if testkit::skip_without_engine("containers_of_a_sigkilled_owner...") {
        return;
    }
    let scope = scope("sigkill");
    // Build the image first, so the helper finds it.
    let backend = connect(scope.clone()).await;
    image(&backend).await;
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "helper_owner_launches_and_waits", "--nocapture"])
        .env("SMGR_TEST_POOL", scope.pool.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let helper_owner = OwnerId::of_process(helper.id()).unwrap();
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let ready = tokio::task::spawn_blocking(move || {
        lines.any(|line| line.is_ok_and(|line| line.trim() == "ready"))
    });
    assert!(ready.await.unwrap(), "the helper launched its containers");
    helper.kill().unwrap(); // SIGKILL: nothing of the helper's own runs after this
    helper.wait().unwrap();

    let left = backend.containers_of(&scope.pool, Some(&helper_owner)).await.unwrap();
    assert_eq!(left.len(), 2, "the killed owner's containers still run: {left:?}");
    assert!(left.iter().all(|container| container.state == "running"), "{left:?}");

    // A new owner of the same pool starts: the dead owner's containers are removed.
    let successor = connect(scope.clone()).await;
    let reaped = successor.reap_orphans().await.unwrap();
    assert_eq!((reaped.owners, reaped.instances), (1, 2), "{reaped:?}");
    assert_eq!(leftovers(&backend, &scope).await, 0);
}

/// A socket at `path` in front of the engine at `engine` whose answers arrive `delay` late:
/// every chunk the engine sends waits that long before it is passed on. Requests pass at once.
async fn slow_engine(engine: &str, path: &Path, delay: Duration) -> String {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let engine = engine.to_owned();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = tokio::net::UnixStream::connect(&engine).await else { return };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut engine_read, mut engine_write) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut engine_write).await;
            });
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut chunk = vec![0; 64 * 1024];
                while let Ok(read @ 1..) = engine_read.read(&mut chunk).await {
                    tokio::time::sleep(delay).await;
                    if client_write.write_all(&chunk[..read]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("unix://{}", path.display())
}

/// A launch dropped after the engine has made its container, but before the engine's answer
/// came back, still leaves nothing: the container is removed once the answer arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_cancelled_while_the_engine_creates_leaves_no_container() {
    if testkit::skip_without_engine("a_launch_cancelled_while_the_engine_creates...") {
        return;
    }
    let scope = scope("cancelled-create");
    let engine = connect(scope.clone()).await;
    let image = image(&engine).await;
    let Some(socket) = engine.host().strip_prefix("unix://") else {
        panic!("this test puts itself in front of a unix socket, not {}", engine.host());
    };
    let path = std::env::temp_dir().join(format!("smgr-{}.sock", scope.pool));
    let mut config = DockerBackendConfig::new(scope.clone());
    config.host = Some(slow_engine(socket, &path, Duration::from_secs(1)).await);
    config.follow_events = false;
    let slow = DockerBackend::connect(config).await.expect("the engine answers, late");
    let function = FunctionSpec::new("cancelled", fixture(&image, &[])).unwrap();
    // The engine is asked directly, without the delay: the container is there well before the
    // slow socket passes on the engine's answer.
    drop_once_created(slow.launch(&function, InstanceId(0)), &engine, &scope).await;
    let _ = std::fs::remove_file(path);
}

/// TCP readiness asks the container at its own address, where a function that does not listen
/// is refused by the container's kernel. Through the published port, the engine's port proxy
/// accepts the connection and closes it only once it fails to reach the function, which a busy
/// host can delay past the check's hold. The engine the tests use runs on this host, on a
/// bridge network the host reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_readiness_asks_the_container_past_the_port_proxy() {
    if testkit::skip_without_engine("tcp_readiness_asks_the_container_past_the_port_proxy") {
        return;
    }
    let scope = scope("past-proxy");
    let backend = connect(scope.clone()).await;
    let function = never_ready(&backend, "unready", Duration::from_millis(800)).await;
    let port = function.spec.container_port;
    let error = backend.launch(&function, InstanceId(0)).await.expect_err("never ready");
    assert!(matches!(error, BackendError::NotReady { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&format!(":{port}: ")), "not the container's port: {message}");
    assert!(message.contains("refused") && !message.contains("127.0.0.1"), "{message}");
    assert_eq!(leftovers(&backend, &scope).await, 0);
}

#[tokio::test]
async fn a_startup_timeout_and_grace_too_long_to_count_down_are_waited_out() {
    if testkit::skip_without_engine(
        "a_startup_timeout_and_grace_too_long_to_count_down_are_waited_out",
    ) {
        return;
    }
    let scope = scope("forever");
    let backend = connect(scope.clone()).await;
    let mut spec = fixture(&image(&backend).await, &[]);
    spec.startup_timeout = Duration::MAX;
    let function = FunctionSpec::new("forever", spec).unwrap();
    let instance = backend.launch(&function, InstanceId(0)).await.expect("launches");
    // A grace period that long is the engine's longest; the fixture stops on SIGTERM.
    backend.terminate(instance, Duration::MAX).await.expect("terminates");
    assert_eq!(leftovers(&backend, &scope).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_launch_leaves_no_container() {
    if testkit::skip_without_engine("a_cancelled_launch_leaves_no_container") {
        return;
    }
    let scope = scope("cancelled");
    let backend = connect(scope.clone()).await;
    let function = never_ready(&backend, "cancelled", Duration::from_secs(120)).await;
    drop_once_created(backend.launch(&function, InstanceId(0)), &backend, &scope).await;
}

/// Drops `launch` as soon as `engine` lists its container, as the pool's create timeout or its
/// shutdown drops a launch, and waits until the container is gone.
async fn drop_once_created<T: std::fmt::Debug>(
    launch: impl Future<Output = T>,
    engine: &DockerBackend,
    scope: &Scope,
) {
    let mut launch = Box::pin(launch);
    let start = std::time::Instant::now();
    while leftovers(engine, scope).await == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the launch made no container");
        tokio::select! {
            done = &mut launch => panic!("the launch ended before its container was seen: {done:?}"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    drop(launch);
    let start = std::time::Instant::now();
    while leftovers(engine, scope).await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the container of the cancelled launch is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_is_reported_as_events_and_a_failed_one_names_the_image() {
    if testkit::skip_without_engine("a_pull_is_reported_as_events...") {
        return;
    }
    let scope = scope("pull");
    let backend = connect(scope.clone()).await;
    let mut events = backend.pull_events();
    // Never published anywhere: the pull fails, whether a registry is reachable or not.
    let image = "smgr-test.invalid/never-published:1";
    let function =
        FunctionSpec::new("pulled", DockerSpec::new(image).pull(PullPolicy::Always)).unwrap();
    let error = backend.launch(&function, InstanceId(0)).await.expect_err("nothing to pull");
    let message = error.to_string();
    assert!(message.contains(&format!("pulling image {image}")), "{message}");

    let first = events.recv().await.unwrap();
    assert_eq!((first.function.as_str(), first.image.as_str()), ("pulled", image));
    assert_eq!(first.stage, backend_docker::PullStage::Started);
    let mut last = first;
    while let Ok(event) = events.try_recv() {
        last = event;
    }
    let backend_docker::PullStage::Failed { error } = &last.stage else {
        panic!("the last event is the failure: {last:?}")
    };
    assert!(message.contains(error.as_str()), "{error} in {message}");
    assert_eq!(leftovers(&backend, &scope).await, 0);
}

/// The pulls started among the events received so far.
fn pulls_started(
    events: &mut tokio::sync::broadcast::Receiver<backend_docker::PullEvent>,
) -> usize {
    std::iter::from_fn(|| events.try_recv().ok())
        .filter(|event| event.stage == backend_docker::PullStage::Started)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_that_need_an_image_at_once_share_one_pull() {
    if testkit::skip_without_engine("launches_that_need_an_image_at_once_share_one_pull") {
        return;
    }
    let scope = scope("one-pull");
    let backend = connect(scope.clone()).await;
    let mut events = backend.pull_events();
    let image = "smgr-test.invalid/never-published:2";
    let function =
        FunctionSpec::new("pulled", DockerSpec::new(image).pull(PullPolicy::IfMissing)).unwrap();
    let (a, b, c, d) = tokio::join!(
        backend.launch(&function, InstanceId(0)),
        backend.launch(&function, InstanceId(1)),
        backend.launch(&function, InstanceId(2)),
        backend.launch(&function, InstanceId(3)),
    );
    for launched in [a, b, c, d] {
        let message = launched.expect_err("nothing to pull").to_string();
        assert!(message.contains(&format!("pulling image {image}")), "{message}");
    }
    assert_eq!(pulls_started(&mut events), 1, "the four launches made one pull");

    // A failed attempt is not remembered: the next launch tries again.
    backend.launch(&function, InstanceId(4)).await.expect_err("nothing to pull");
    assert_eq!(pulls_started(&mut events), 1, "a later launch pulls again");
    assert_eq!(leftovers(&backend, &scope).await, 0);
}
