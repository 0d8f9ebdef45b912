//! What the process backend does beyond the conformance suite: the child's environment,
//! socket activation, port retries, limits, logs, errors that name what went wrong, and
//! children that die with their host.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backend_process::{ProcessBackend, ProcessBackendConfig, ProcessSpec, Readiness, Stream};
use pool_core::testkit::http_get;
use pool_core::{Backend, BackendError, Endpoint, FunctionSpec, InstanceId, PoolName, Scope};

const FIXTURE: &str = env!("CARGO_BIN_EXE_smgr-fixture");

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A backend with a pool name of its own, so that tests never see each other's children.
fn backend(test: &str) -> ProcessBackend {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let pool =
        format!("proc-{test}-{}-{}", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed));
    let scope = Scope::current(PoolName::new(pool).expect("a valid pool name"));
    ProcessBackend::new(ProcessBackendConfig {
        scope,
        state_dir: Some(tmp().join("process-state")),
    })
    .expect("the state directory can be created")
}

fn fixture(name: &str, args: &[&str]) -> FunctionSpec<ProcessSpec> {
    FunctionSpec::new(name, ProcessSpec::new(FIXTURE).args(args.iter().copied()))
        .expect("a valid function name")
}

fn http(instance: &pool_core::Instance<backend_process::ProcessDetails>) -> std::net::SocketAddr {
    match instance.endpoint() {
        Endpoint::Http(address) => address,
        other => panic!("not an HTTP endpoint: {other}"),
    }
}

async fn stop(
    backend: &ProcessBackend,
    instance: pool_core::Instance<backend_process::ProcessDetails>,
) {
    backend.terminate(instance, Duration::from_secs(5)).await.expect("terminate works");
}

#[tokio::test]
async fn the_child_gets_a_cleared_environment_with_the_allow_list_port_and_identity() {
    let backend = backend("env");
    let mut function = fixture("env", &[]);
    function.spec.env.insert("GREETING".into(), "hi".into());
    function.spec.pass_env = vec!["PATH".into(), "HOME".into()];
    let instance = backend.launch(&function, InstanceId(7)).await.expect("launches");
    let (code, body) = http_get(http(&instance), "/env").await.expect("answers");
    assert_eq!(code, 200);
    let names: Vec<&str> =
        body.lines().filter_map(|line| line.split_once('=')).map(|(n, _)| n).collect();
    let mut expected = vec![
        "GREETING",
        "PATH",
        "PORT",
        "SMGR_FUNCTION",
        "SMGR_INSTANCE",
        "SMGR_OWNER",
        "SMGR_POOL",
    ];
    if std::env::var_os("HOME").is_some() {
        expected.push("HOME");
    }
    expected.sort_unstable();
    assert_eq!(names, expected, "the whole environment:\n{body}");
    let port = format!("PORT={}", http(&instance).port());
    assert!(body.lines().any(|line| line == port), "{body}");
    assert!(body.lines().any(|line| line == "SMGR_INSTANCE=7"), "{body}");
    assert!(body.lines().any(|line| line == "SMGR_FUNCTION=env"), "{body}");
    assert!(body.lines().any(|line| line == "GREETING=hi"), "{body}");
    stop(&backend, instance).await;
}

#[tokio::test]
async fn a_startup_timeout_and_grace_too_long_to_count_down_are_waited_out() {
    let backend = backend("forever");
    let mut function = fixture("forever", &[]);
    function.spec.startup_timeout = Duration::MAX;
    let instance = backend.launch(&function, InstanceId(0)).await.expect("launches");
    let (code, _) = http_get(http(&instance), "/env").await.expect("answers");
    assert_eq!(code, 200);
    // The fixture stops on SIGTERM, long before such a grace period would end.
    let stopped = backend.terminate(instance, Duration::MAX).await.expect("terminates");
    assert_eq!(stopped, pool_core::Termination::Graceful);
}

#[tokio::test]
async fn port_placeholders_in_arguments_become_the_port() {
    let backend = backend("args");
    // `--slow-start {port}` would sleep `port` ms; instead check the substitution through the
    // fixture's refusal of an unknown argument, which quotes it.
    let function = fixture("args", &["--bogus-{port}"]);
    let error = backend.launch(&function, InstanceId(0)).await.expect_err("the fixture refuses");
    let message = error.to_string();
    assert!(matches!(error, BackendError::ExitedBeforeReady { .. }), "{message}");
    assert!(!message.contains("{port}") && message.contains("--bogus-"), "{message}");
    let digits: String = message
        .split("--bogus-")
        .nth(1)
        .unwrap_or("")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(digits.parse::<u16>().is_ok_and(|port| port > 0), "{message}");
}

#[tokio::test]
async fn socket_activation_hands_over_a_listening_socket() {
    let backend = backend("activation");
    let mut function = fixture("activated", &[]);
    function.spec.socket_activation = true;
    let instance = backend.launch(&function, InstanceId(0)).await.expect("launches");
    let (code, body) = http_get(http(&instance), "/").await.expect("answers");
    assert_eq!(code, 200);
    assert!(body.contains("listen=activated"), "{body}");
    let (_, env) = http_get(http(&instance), "/env").await.expect("answers");
    let pid = format!("LISTEN_PID={}", instance.details().pid());
    assert!(env.lines().any(|line| line == pid), "LISTEN_PID is the program's own pid:\n{env}");
    stop(&backend, instance).await;

    let plain = backend.launch(&fixture("plain", &[]), InstanceId(1)).await.expect("launches");
    let (_, body) = http_get(http(&plain), "/").await.expect("answers");
    assert!(body.contains("listen=port"), "{body}");
    stop(&backend, plain).await;
}

#[tokio::test]
async fn a_port_taken_by_another_process_is_retried_with_another() {
    let backend = backend("port-retry");
    let marker = tmp().join(format!("port-taken-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let function = fixture("retry", &["--port-taken-once", marker.to_str().expect("a UTF-8 path")]);
    let instance = backend.launch(&function, InstanceId(0)).await.expect("the second port works");
    assert!(marker.exists(), "the first attempt reported its port taken");
    let (code, _) = http_get(http(&instance), "/").await.expect("answers");
    assert_eq!(code, 200);
    stop(&backend, instance).await;
}

#[tokio::test]
async fn a_child_that_exits_before_it_is_ready_reports_its_status_and_stderr() {
    let backend = backend("early-exit");
    let function = fixture("doomed", &["--fail-start", "config file missing: /etc/doomed.toml"]);
    let error = backend.launch(&function, InstanceId(0)).await.expect_err("exits at once");
    let message = error.to_string();
    assert!(matches!(error, BackendError::ExitedBeforeReady { .. }), "{message}");
    for part in
        ["`doomed`", "smgr-fixture", "exit status: 3", "config file missing: /etc/doomed.toml"]
    {
        assert!(message.contains(part), "missing {part:?} in: {message}");
    }
}

#[tokio::test]
async fn bad_specs_name_the_function_the_program_and_the_cause() {
    let backend = backend("bad-specs");
    let not_executable = tmp().join("not-executable.sh");
    std::fs::write(&not_executable, "#!/bin/sh\n").expect("writes");
    let cases: Vec<(ProcessSpec, &str)> = vec![
        (ProcessSpec::new("smgr-no-such-program-anywhere"), "was not found in the child's PATH"),
        (ProcessSpec::new("/nonexistent/dir/prog"), "does not exist"),
        (ProcessSpec::new(&not_executable), "is not executable"),
        (
            ProcessSpec {
                working_dir: Some("/nonexistent-dir".into()),
                ..ProcessSpec::new(FIXTURE)
            },
            "working_dir /nonexistent-dir: no such directory",
        ),
        (
            ProcessSpec {
                readiness: Readiness::Http("healthz".into()),
                ..ProcessSpec::new(FIXTURE)
            },
            "must start with '/'",
        ),
        (ProcessSpec { pass_env: Vec::new(), ..ProcessSpec::new("sh") }, "gets no PATH"),
        (
            ProcessSpec {
                env: [("SMGR_POOL".to_owned(), "other".to_owned())].into(),
                ..ProcessSpec::new(FIXTURE)
            },
            "env sets SMGR_POOL, which the backend sets itself",
        ),
    ];
    for (spec, cause) in cases {
        let program = spec.program.display().to_string();
        let function = FunctionSpec::new("misconfigured", spec).expect("a valid name");
        let message = backend.validate(&function).expect_err(cause).to_string();
        assert!(message.contains("`misconfigured`"), "no function in: {message}");
        assert!(message.contains(cause), "no cause {cause:?} in: {message}");
        if !cause.starts_with("working_dir") && !cause.contains("'/'") && !cause.starts_with("env")
        {
            let shown =
                Path::new(&program).file_name().and_then(|n| n.to_str()).unwrap_or(&program);
            assert!(message.contains(shown), "no program in: {message}");
        }
        let launched = backend.launch(&function, InstanceId(0)).await.expect_err(cause);
        assert_eq!(launched.to_string(), message, "launch refuses it the same way");
    }
}

#[tokio::test]
async fn a_port_that_never_opens_fails_the_launch_and_stops_the_child() {
    let backend = backend("never-opens");
    let mut function = fixture("silent", &["--never-ready"]);
    function.spec.startup_timeout = Duration::from_millis(300);
    let error = backend.launch(&function, InstanceId(0)).await.expect_err("never ready");
    let message = error.to_string();
    assert!(
        message.contains("`silent`")
            && message.contains("smgr-fixture")
            && message.contains("port"),
        "{message}"
    );
    let scope = backend.scope();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(backend_process::processes_of(&scope.pool, &scope.owner, None).is_empty());
}

#[tokio::test]
async fn http_readiness_waits_for_the_path_and_probes_check_it() {
    let backend = backend("http-ready");
    let mut function = fixture("slow", &["--slow-start", "200"]);
    function.spec.readiness = Readiness::Http("/healthz".into());
    let instance = backend.launch(&function, InstanceId(0)).await.expect("gets ready");
    assert_eq!(backend.probe(&instance).await.expect("probes"), pool_core::Health::Alive);
    stop(&backend, instance).await;
}

#[tokio::test]
async fn output_lines_are_kept_on_the_instance() {
    let backend = backend("logs");
    let instance = backend.launch(&fixture("chatty", &[]), InstanceId(0)).await.expect("launches");
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = instance.details().logs().tail(Stream::Stdout, 10);
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(lines.iter().any(|line| line.starts_with("smgr-fixture: serving on")), "{lines:?}");
    stop(&backend, instance).await;
}

#[tokio::test]
async fn limits_apply_to_the_child() {
    let backend = backend("limits");
    let mut function = fixture("limited", &[]);
    function.spec.limits.open_files = Some(64);
    function.spec.limits.cpu_seconds = Some(3600);
    let instance = backend.launch(&function, InstanceId(0)).await.expect("launches");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", instance.details().pid()))
        .expect("reads the child's limits");
    let line =
        |name: &str| limits.lines().find(|line| line.starts_with(name)).unwrap_or("").to_owned();
    let files = line("Max open files");
    assert_eq!(
        files.split_whitespace().skip(3).take(2).collect::<Vec<_>>(),
        ["64", "64"],
        "{files}"
    );
    let cpu = line("Max cpu time");
    assert_eq!(
        cpu.split_whitespace().skip(3).take(2).collect::<Vec<_>>(),
        ["3600", "3600"],
        "{cpu}"
    );
    stop(&backend, instance).await;
}

#[tokio::test]
async fn the_child_runs_in_its_own_process_group() {
    let backend = backend("group");
    let instance = backend.launch(&fixture("grouped", &[]), InstanceId(0)).await.expect("launches");
    let pid = instance.details().pid();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reads its stat");
    let group: u32 = stat[stat.rfind(')').expect("a stat line") + 1..]
        .split_whitespace()
        .nth(2)
        .and_then(|group| group.parse().ok())
        .expect("a process group");
    assert_eq!(group, pid, "the child leads its own group");
    stop(&backend, instance).await;
}

#[tokio::test]
async fn terminate_also_stops_what_the_child_started_outside_its_group() {
    let backend = backend("grandchild");
    let instance = backend
        .launch(&fixture("parent", &["--grandchild"]), InstanceId(3))
        .await
        .expect("launches");
    let scope = backend.scope().clone();
    let mut running = Vec::new();
    for _ in 0..100 {
        running = backend_process::processes_of(&scope.pool, &scope.owner, Some(InstanceId(3)));
        if running.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running.len(), 2, "the fixture and its grandchild run: {running:?}");
    stop(&backend, instance).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = backend_process::processes_of(&scope.pool, &scope.owner, None);
    assert!(left.is_empty(), "still running: {left:?}");
}

#[tokio::test]
async fn as_root_a_uid_and_gid_are_applied() {
    let backend = backend("uid");
    let mut function = fixture("nobody", &[]);
    function.spec.uid = Some(65534);
    function.spec.gid = Some(65534);
    let running_as_root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| status.lines().any(|line| line.starts_with("Uid:\t0\t")));
    match backend.launch(&function, InstanceId(0)).await {
        Ok(instance) => {
            assert!(running_as_root, "only root may switch users");
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", instance.details().pid()))
                    .expect("reads its status");
            assert!(status.lines().any(|line| line.starts_with("Uid:\t65534\t")), "{status}");
            assert!(status.lines().any(|line| line.starts_with("Gid:\t65534\t")), "{status}");
            stop(&backend, instance).await;
        }
        Err(error) => {
            // Without root (or when the fixture is not readable by that user) the launch
            // fails, and says so with the function's name.
            assert!(!running_as_root || error.to_string().contains("ermission"), "{error}");
            assert!(error.to_string().contains("`nobody`"), "{error}");
        }
    }
}

/// Not a test: the host process of `children_die_with_their_host`, which runs this binary
/// with `--ignored` to launch an instance, write its pid and wait to be killed.
#[tokio::test]
#[ignore = "the host process of children_die_with_their_host, which runs it"]
async fn host_for_the_parent_death_test() {
    let pid_file =
        std::env::var("SMGR_TEST_HOST_PID_FILE").expect("started by the parent-death test");
    let backend = backend("host");
    let instance = backend.launch(&fixture("orphan", &[]), InstanceId(0)).await.expect("launches");
    std::fs::write(&pid_file, instance.details().pid().to_string()).expect("writes the pid");
    std::mem::forget(instance);
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[cfg(target_os = "linux")]
#[test]
fn children_die_with_their_host() {
    let pid_file = tmp().join(format!("host-pid-{}", std::process::id()));
    let _ = std::fs::remove_file(&pid_file);
    let mut host = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "host_for_the_parent_death_test", "--ignored", "--nocapture"])
        .env("SMGR_TEST_HOST_PID_FILE", &pid_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the host starts");
    let mut child_pid = None;
    for _ in 0..500 {
        if let Some(pid) =
            std::fs::read_to_string(&pid_file).ok().and_then(|pid| pid.trim().parse::<u32>().ok())
        {
            child_pid = Some(pid);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let child_pid = child_pid.expect("the host launched an instance");
    let child_start = pool_core::process_start(child_pid).expect("the instance runs");
    host.kill().expect("SIGKILL to the host");
    host.wait().expect("the host is reaped");
    let mut alive = true;
    for _ in 0..250 {
        // Gone, or a zombie of the dead host waiting for init.
        alive = pool_core::process_start(child_pid) == Some(child_start)
            && !pool_core::testkit::has_ended(child_pid);
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive, "instance {child_pid} outlived its SIGKILLed host");
}
