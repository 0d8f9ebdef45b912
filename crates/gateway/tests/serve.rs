//! `smgr serve` end to end: the real binary, real child processes (smgr's own demo functions)
//! and real containers on a Docker Engine (skipped loudly without one, unless
//! `SMGR_REQUIRE_DOCKER=1`),
//! real HTTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pool_core::testkit::has_ended;

const SMGR: &str = env!("CARGO_BIN_EXE_smgr");

/// A running `smgr serve`, killed when dropped.
struct Server {
    child: Child,
    address: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The `server.pool` of the gateway a test starts as `name`: its own, per test run.
fn pool_name(name: &str) -> String {
    format!("t{}-{name}", std::process::id())
}

fn scratch(name: &str) -> PathBuf {
    static RUN: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "serve-{name}-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `smgr serve` with `config` (TOML, `{smgr}` replaced by the binary's path, `{state}` by a
/// state directory of its own) and waits until it listens and `ready` functions are ready.
fn start(name: &str, config: &str, env: &[(&str, &str)]) -> Server {
    let server = spawn(name, config, env);
    wait_until(Duration::from_secs(30), || get(&server, "/readyz").0 == 200);
    server
}

/// Sends `signal` (`TERM`, `INT`, `KILL`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
}

/// Starts `smgr serve` as [`start`] does, without waiting for anything.
fn spawn(name: &str, config: &str, env: &[(&str, &str)]) -> Server {
    let dir = scratch(name);
    let port = free_port();
    let config = config
        .replace("{smgr}", SMGR)
        .replace("{state}", dir.join("state").to_str().unwrap())
        .replace("{pool}", &pool_name(name));
    let path = dir.join("smgr.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(SMGR);
    command
        .args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("smgr starts");
    Server { child, address: ([127, 0, 0, 1], port).into() }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not done within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An answer: its status, its headers (lower-case names) and its body.
type Exchanged = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 exchange on a connection of its own, read until the server closes it; status
/// 0 when the connection fails.
fn exchange(address: SocketAddr, request: &[u8]) -> Exchanged {
    let Ok(mut stream) = TcpStream::connect(address) else { return (0, Vec::new(), Vec::new()) };
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    if stream.write_all(request).is_err() {
        return (0, Vec::new(), Vec::new());
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, Vec::new(), answer);
    };
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let mut lines = head.lines();
    let code =
        lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = answer[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    (code, headers, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else { return out };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 2 + size + 2..];
    }
}

fn get(server: &Server, path: &str) -> (u16, String) {
    let (code, _, body) = exchange(server.address, get_request(path).as_bytes());
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// `GET path` on a connection of its own, closed after the answer.
fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

/// Sends `GET path` to `address` from a thread of its own; the answer, once joined.
fn get_in_background(address: SocketAddr, path: &str) -> std::thread::JoinHandle<Exchanged> {
    let request = get_request(path);
    std::thread::spawn(move || exchange(address, request.as_bytes()))
}

/// The instance that serves a `GET /fn/echo/`, as `x-smgr-instance` names it; the answer must
/// be a 200.
fn serving_instance(server: &Server) -> String {
    let (code, headers, _) =
        exchange(server.address, b"GET /fn/echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 200);
    header(&headers, "x-smgr-instance").unwrap().to_owned()
}

/// Where the first pool's first instance listens, as `/admin/pools` says.
fn instance_address(server: &Server) -> SocketAddr {
    let pool = first_pool(server);
    let endpoint = pool["instances"][0]["endpoint"].as_str().unwrap();
    endpoint.trim_start_matches("http://").parse().unwrap()
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn error_code(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    value["error"]["code"].as_str().unwrap_or("").to_owned()
}

/// A config serving smgr's demo function `echo`: `server` is added to `[server]` (after the
/// pool and the state directory), `echo` to the function's table (after its command).
fn echo_config(server: &str, echo: &str) -> String {
    format!(
        "[server]\npool = \"{{pool}}\"\nstate_dir = \"{{state}}\"\n{server}\n\n\
         [functions.echo]\ncommand = [\"{{smgr}}\", \"demo-function\", \"echo\"]\n{echo}\n"
    )
}

/// [`echo_config`] with one instance: `server` is added to `[server]`, `echo` to the
/// function's table.
fn one_echo(server: &str, echo: &str) -> String {
    echo_config(server, &format!("min_instances = 1\nmax_instances = 1\n{echo}"))
}

const ECHO: &str = r#"
[server]
pool = "{pool}"
state_dir = "{state}"
max_body = "16MiB"

[functions.echo]
command = ["{smgr}", "demo-function", "echo"]
readiness = { http = "/healthz" }
min_instances = 1
max_instances = 2
"#;

#[test]
fn requests_are_forwarded_with_method_path_query_headers_and_body() {
    let server = start("proxy", ECHO, &[]);
    let request = b"POST /fn/echo/some/path?x=1&y=two HTTP/1.1\r\nHost: x\r\nX-Custom: kept\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello";
    let (code, headers, body) = exchange(server.address, request);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("POST /some/path?x=1&y=two\n"), "{body}");
    assert!(body.contains("x-custom: kept"), "{body}");
    assert!(body.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(body.contains("x-request-id: smgr-"), "{body}");
    assert!(
        !body.to_lowercase().contains("connection: close"),
        "hop-by-hop headers are dropped: {body}"
    );
    assert!(body.ends_with("\n\nhello"), "{body}");
    assert!(header(&headers, "x-smgr-instance").is_some(), "{headers:?}");
    assert!(matches!(header(&headers, "x-smgr-cold-start"), Some("true" | "false")), "{headers:?}");

    let request = b"DELETE /fn/echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: given-42\r\nConnection: close\r\n\r\n";
    let (code, headers, body) = exchange(server.address, request);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 200);
    assert!(body.starts_with("DELETE /\n"), "{body}");
    assert!(body.contains("x-request-id: given-42"), "{body}");
    assert_eq!(header(&headers, "x-request-id"), Some("given-42"));
}

#[test]
fn a_large_body_is_streamed_through_not_held() {
    let config = ECHO.replace("max_body = \"16MiB\"", "max_body = \"128MiB\"");
    // Two workers, as on the machine the bound was measured on: the allocator's slack grows
    // with the threads.
    let server = start("stream", &config, &[("TOKIO_WORKER_THREADS", "2")]);
    let size = 64 << 20;
    let mut request = format!(
        "PUT /fn/echo/upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {size}\r\n\r\n"
    )
    .into_bytes();
    request.resize(request.len() + size, b'z');
    let before = peak_memory_kib(server.child.id());
    let (code, _, body) = exchange(server.address, &request);
    assert_eq!((code, body.len() > size), (200, true));
    let grown = peak_memory_kib(server.child.id()) - before;
    // Holding the body (either way) would take 64 MiB at least; the buffers of the two
    // connections and the allocator's slack took 14-23 MiB in runs on this machine.
    assert!(grown < 48 << 10, "smgr's peak memory grew by {grown} KiB for a 64 MiB body");
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in KiB.
fn peak_memory_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

#[test]
fn a_ten_mebibyte_body_goes_up_and_comes_back() {
    let server = start("big", ECHO, &[]);
    let payload: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut request = format!(
        "PUT /fn/echo/upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    request.extend_from_slice(&payload);
    let (code, _, body) = exchange(server.address, &request);
    assert_eq!(code, 200);
    assert!(body.ends_with(&payload), "the whole body came back ({} bytes)", body.len());
}

#[test]
fn errors_are_json_with_stable_codes() {
    let config = &(one_echo(
        r#"
max_body = "1KiB"
request_timeout = "2s"
"#,
        r#"
queue_limit = 1
acquire_timeout = "1s"
"#,
    ) + r#"
[functions.broken]
command = ["{smgr}", "demo-function", "no-such-function"]
startup_timeout = "2s"
"#);
    let server = start("errors", config, &[]);
    let (code, _, body) =
        exchange(server.address, b"GET /fn/nope/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((code, error_code(&body)), (404, "function_not_found".to_owned()));

    let big = format!(
        "POST /fn/echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2048\r\n\r\n{}",
        "x".repeat(2048)
    );
    let (code, _, body) = exchange(server.address, big.as_bytes());
    assert_eq!((code, error_code(&body)), (413, "body_too_large".to_owned()));
    // A chunked body announces no length: it is counted as it streams.
    let chunked = format!(
        "POST /fn/echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         400\r\n{0}\r\n400\r\n{0}\r\n0\r\n\r\n",
        "y".repeat(1024)
    );
    let (code, _, body) = exchange(server.address, chunked.as_bytes());
    assert_eq!((code, error_code(&body)), (413, "body_too_large".to_owned()));

    let (code, _, body) = exchange(
        server.address,
        b"GET /fn/broken/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (code, error_code(&body)),
        (502, "launch_failed".to_owned()),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        String::from_utf8_lossy(&body).contains("no demo function named"),
        "the backend's message"
    );
    let (_, metrics) = get(&server, "/metrics");
    assert!(metrics.contains("smgr_launch_failures_total{function=\"broken\"} 1"), "{metrics}");
    assert!(metrics.contains("smgr_launch_failures_total{function=\"echo\"} 0"), "{metrics}");

    // One instance, held 5 s by a slow request that the 2 s request timeout ends: a second
    // request waits in the queue (limit 1) and gives up after its 1 s acquire timeout; a third,
    // sent while the second waits, finds the queue full.
    let address = server.address;
    let slow = get_in_background(address, "/fn/echo/sleep/5000");
    std::thread::sleep(Duration::from_millis(300));
    let waiting = get_in_background(address, "/fn/echo/");
    std::thread::sleep(Duration::from_millis(300));
    let (code, headers, body) =
        exchange(address, b"GET /fn/echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((code, error_code(&body)), (429, "queue_full".to_owned()));
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    let (code, headers, body) = waiting.join().unwrap();
    assert_eq!((code, error_code(&body)), (503, "no_capacity".to_owned()));
    assert!(header(&headers, "retry-after").is_some());
    let (code, _, body) = slow.join().unwrap();
    assert_eq!((code, error_code(&body)), (504, "timeout".to_owned()), "the 2 s request timeout");
}

#[test]
fn admin_routes_need_the_token_and_report_pools_and_metrics() {
    let config = &echo_config(
        r#"admin_token_env = "TEST_ADMIN_TOKEN""#,
        r#"
min_instances = 2
max_instances = 3
"#,
    );
    let server = start("admin", config, &[("TEST_ADMIN_TOKEN", "s3cret")]);
    assert_eq!(get(&server, "/healthz").0, 200);
    let (code, _, body) = exchange(
        server.address,
        b"GET /admin/pools HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((code, error_code(&body)), (401, "unauthorized".to_owned()));
    let wrong = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n";
    let (code, headers, _) = exchange(server.address, wrong);
    assert_eq!(code, 401);
    assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));

    assert_eq!(get(&server, "/fn/echo/x").0, 200);
    let pools = b"GET /admin/pools HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n";
    let mut value = serde_json::Value::Null;
    // The request's lease is returned just after its answer went out.
    wait_until(Duration::from_secs(10), || {
        let (code, _, body) = exchange(server.address, pools);
        assert_eq!(code, 200);
        value = serde_json::from_slice(&body).unwrap();
        value["pools"][0]["busy"] == 0
    });
    let pool = &value["pools"][0];
    assert_eq!(
        (pool["function"].as_str(), pool["min"].as_u64(), pool["max"].as_u64()),
        (Some("echo"), Some(2), Some(3))
    );
    assert_eq!(pool["backend"], "process", "{value:#}");
    let counts = ["size", "idle", "busy", "waiting"].map(|key| pool[key].as_u64());
    assert_eq!(counts, [Some(2), Some(2), Some(0), Some(0)], "{value:#}");
    let instances = pool["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "{value:#}");
    assert!(
        instances.iter().all(|i| i["pid"].as_u64().is_some()
            && i["id"].as_u64().is_some()
            && i["state"] == "idle"
            && i["created_at"].as_str().is_some_and(|at| at.ends_with('Z'))
            && i["endpoint"].as_str().is_some_and(|e| e.starts_with("http://127.0.0.1:"))),
        "{value:#}"
    );
    // The one request used one instance once.
    let uses: Vec<_> = instances.iter().map(|i| i["uses"].as_u64().unwrap()).collect();
    assert_eq!(uses.iter().sum::<u64>(), 1, "{value:#}");
    let used = instances.iter().filter(|i| i["last_used"].as_str().is_some()).count();
    assert_eq!(used, 1, "{value:#}");

    // Admin routes answer their own errors.
    let cases: [(&[u8], u16, &str); 4] = [
        (b"GET /admin/pools/echo/scale HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n", 405, "method_not_allowed"),
        (b"POST /admin/pools/echo/scale HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\nContent-Length: 9\r\n\r\n{\"min\":1}", 400, "bad_request"),
        (b"POST /admin/pools/nope/scale HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", 404, "function_not_found"),
        (b"GET /no/such/route HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
    ];
    for (request, status, code) in cases {
        let (got, _, body) = exchange(server.address, request);
        assert_eq!(
            (got, error_code(&body)),
            (status, code.to_owned()),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }

    let scale = format!(
        "POST /admin/pools/echo/scale HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
        r#"{"min":3,"max":3}"#.len(),
        r#"{"min":3,"max":3}"#
    );
    let (code2, _, body2) = exchange(server.address, scale.as_bytes());
    assert_eq!(code2, 200, "{}", String::from_utf8_lossy(&body2));
    wait_until(Duration::from_secs(30), || {
        let (_, _, body) = exchange(server.address, pools);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        value["pools"][0]["size"].as_u64() == Some(3)
    });

    let metrics = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n";
    let (code, _, body) = exchange(server.address, metrics);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 200);
    assert!(!text.contains("# EOF"), "the Prometheus text format has no EOF line");
    for needle in [
        "smgr_requests_total{function=\"echo\",status=\"200\"} 1",
        "smgr_request_duration_seconds_bucket{function=\"echo\",le=",
        "smgr_pool_instances{function=\"echo\",state=\"idle\"}",
        "smgr_pool_waiting{function=\"echo\"} 0",
        "smgr_cold_starts_total{function=\"echo\"}",
        "smgr_launch_failures_total{function=\"echo\"} 0",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    // A scraper that asks for OpenMetrics gets it.
    let open_metrics = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nAccept: application/openmetrics-text; version=1.0.0\r\nConnection: close\r\n\r\n";
    let (code, headers, body) = exchange(server.address, open_metrics);
    assert_eq!(code, 200);
    let content_type = header(&headers, "content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    assert!(String::from_utf8_lossy(&body).ends_with("# EOF\n"));
    let performance = b"GET /performance/metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n";
    let (code, _, body) = exchange(server.address, performance);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(value["requests"]["total"], 1, "{value:#}");
}

#[test]
fn a_non_loopback_address_without_a_token_is_refused() {
    let dir = scratch("refuse");
    let output = Command::new(SMGR)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("SMGR_ADMIN_TOKEN")
        .env("SMGR_TEST_DIR", &dir)
        .output()
        .expect("smgr runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("refusing to listen on 0.0.0.0:0 without an admin token"), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");

    // From a config, the message says where the token goes.
    let config = dir.join("smgr.toml");
    std::fs::write(&config, "[server]\nlisten = \"0.0.0.0:0\"\n").unwrap();
    let output = Command::new(SMGR)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env_remove("SMGR_ADMIN_TOKEN")
        .output()
        .expect("smgr runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("set server.admin_token_env or server.admin_token in the config"),
        "{stderr}"
    );
}

#[test]
fn insecure_no_auth_serves_a_non_loopback_address_with_open_admin_routes() {
    let port = free_port();
    let child = Command::new(SMGR)
        .args(["serve", "--listen", &format!("0.0.0.0:{port}"), "--insecure-no-auth"])
        .env_remove("SMGR_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, address: ([127, 0, 0, 1], port).into() };
    wait_until(Duration::from_secs(30), || get(&server, "/readyz").0 == 200);
    let (code, body) = get(&server, "/admin/pools");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""function":"hello""#), "{body}");
    assert_eq!(get(&server, "/fn/hello/").0, 200);
}

#[test]
fn many_concurrent_requests_all_succeed_through_the_queue() {
    let config = &echo_config(
        "",
        r#"
min_instances = 1
max_instances = 4
concurrency = 1
queue_limit = 256
acquire_timeout = "30s"
"#,
    );
    let server = start("concurrent", config, &[]);
    let address = server.address;
    let threads: Vec<_> =
        (0..200).map(|i| get_in_background(address, &format!("/fn/echo/{i}"))).collect();
    let mut codes = std::collections::BTreeMap::new();
    let mut instances = std::collections::BTreeSet::new();
    for (i, thread) in threads.into_iter().enumerate() {
        let (code, headers, body) = thread.join().unwrap();
        if code == 200 {
            assert!(String::from_utf8_lossy(&body).starts_with(&format!("GET /{i}\n")));
            instances.insert(header(&headers, "x-smgr-instance").unwrap().to_owned());
        }
        *codes.entry(code).or_insert(0) += 1;
    }
    assert_eq!(codes.get(&200), Some(&200), "{codes:?}");
    // Served by at most `max_instances` instances, never more.
    assert!((1..=4).contains(&instances.len()), "{instances:?}");
}

#[test]
fn an_instance_killed_mid_run_is_replaced() {
    let config = &one_echo("", "health_check_interval = \"200ms\"");
    let server = start("kill", config, &[]);
    let first = serving_instance(&server);
    let pid = instance_pids(&server)[0];
    signal(pid, "KILL");
    // The next requests succeed: a GET found dead is retried on another instance, and the
    // health check replaces the dead one.
    let mut instances = Vec::new();
    for _ in 0..5 {
        let (code, headers, body) = exchange(
            server.address,
            b"GET /fn/echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        instances.push(header(&headers, "x-smgr-instance").unwrap().to_owned());
    }
    assert!(instances.iter().all(|instance| *instance != first), "{first} {instances:?}");
}

#[test]
fn a_request_that_finds_its_instance_dead_before_sending_is_retried_on_a_new_one() {
    // No health checks: the pool learns of the death only when a request finds it.
    let config = &one_echo("", "health_check_interval = \"off\"");
    let server = start("retry", config, &[]);
    let requests: [&[u8]; 2] = [
        b"GET /fn/echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        // Not safe to repeat, but its body was not sent yet when the connection failed.
        b"POST /fn/echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    ];
    for (round, request) in requests.into_iter().enumerate() {
        let before = serving_instance(&server);
        let [pid] = instance_pids(&server)[..] else { panic!("one instance") };
        let address = instance_address(&server);
        signal(pid, "KILL");
        // Dead, sockets and all: a zombie's other threads may still hold them for a moment.
        wait_until(Duration::from_secs(10), || {
            has_ended(pid) && std::net::TcpStream::connect(address).is_err()
        });

        let (code, headers, body) = exchange(server.address, request);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 200, "round {round}: {body}");
        if round == 1 {
            assert!(body.ends_with("\n\nhello"), "the body reached the new instance: {body}");
        }
        assert_ne!(header(&headers, "x-smgr-instance").unwrap(), before, "round {round}");
        assert_eq!(header(&headers, "x-smgr-cold-start"), Some("true"), "round {round}");
    }
    let (_, metrics) = get(&server, "/metrics");
    assert!(metrics.contains("smgr_cold_starts_total{function=\"echo\"} 2"), "{metrics}");
}

/// The first pool, as `/admin/pools` (without a token) shows it; `null` when it does not answer.
fn first_pool(server: &Server) -> serde_json::Value {
    let (_, body) = get(server, "/admin/pools");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    value["pools"][0].clone()
}

fn instance_pids(server: &Server) -> Vec<u32> {
    first_pool(server)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_leaves_no_child() {
    let config = &echo_config(
        r#"shutdown_timeout = "20s""#,
        r#"
min_instances = 4
max_instances = 8
concurrency = 8
queue_limit = 100
"#,
    );
    let mut server = start("sigterm", config, &[]);
    wait_until(Duration::from_secs(30), || instance_pids(&server).len() == 4);
    let address = server.address;
    let threads: Vec<_> =
        (0..50).map(|_| get_in_background(address, "/fn/echo/sleep/1500")).collect();
    std::thread::sleep(Duration::from_millis(500));
    let pool = pool_name("sigterm");
    let pids = processes_of_pool(&pool);
    assert!(pids.len() >= 4, "{pids:?}");
    signal(server.child.id(), "TERM");
    // It stops accepting, while the requests in flight go on.
    wait_until(Duration::from_secs(5), || TcpStream::connect(address).is_err());
    let codes: Vec<u16> = threads.into_iter().map(|thread| thread.join().unwrap().0).collect();
    assert!(codes.iter().all(|code| *code == 200), "{codes:?}");
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_gone(&pids);
    // Nothing of the pool runs, instances started after the first look included.
    assert_eq!(processes_of_pool(&pool), [] as [u32; 0], "processes of the pool remain");
}

#[test]
fn a_sigkilled_gateways_leftover_processes_are_reaped_at_the_next_start_and_sigint_stops() {
    // Each instance starts a helper that outlives it; both runs share one state directory.
    let state = scratch("reap-state");
    let config = format!(
        r#"
[server]
pool = "{{pool}}"
state_dir = "{}"

[functions.echo]
command = ["sh", "-c", "sleep 600 & exec \"$0\" demo-function echo", "{{smgr}}"]
min_instances = 1
max_instances = 1
"#,
        state.display()
    );
    let pool = pool_name("reap");
    let mut first = start("reap", &config, &[]);
    wait_until(Duration::from_secs(30), || processes_of_pool(&pool).len() == 2);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // The instance dies with the gateway (its parent-death signal); its helper does not.
    wait_until(Duration::from_secs(10), || processes_of_pool(&pool).len() == 1);
    let left = processes_of_pool(&pool);

    let mut second = start("reap", &config, &[]);
    assert!(left.iter().all(|&pid| has_ended(pid)), "the next start left {left:?} running");
    wait_until(Duration::from_secs(30), || processes_of_pool(&pool).len() == 2);
    assert_eq!(get(&second, "/fn/echo/").0, 200);

    // SIGINT (Ctrl-C) stops it as SIGTERM does: exit 0, and nothing of the pool left.
    signal(second.child.id(), "INT");
    let status = second.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(processes_of_pool(&pool), [] as [u32; 0], "processes of the pool remain");
}

/// The running processes (zombies aside) whose environment names `pool` as theirs: every
/// instance the process backend started for it, and whatever those started.
fn processes_of_pool(pool: &str) -> Vec<u32> {
    let entry = format!("SMGR_POOL={pool}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| !has_ended(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|&b| b == 0).any(|var| var == entry.as_bytes()))
        })
        .collect()
}

#[test]
fn a_drain_cut_short_by_the_shutdown_timeout_exits_1_and_leaves_no_child() {
    let config = &one_echo(r#"shutdown_timeout = "1s""#, "");
    let mut server = start("drain-timeout", config, &[]);
    let pids = instance_pids(&server);
    let address = server.address;
    let request = get_in_background(address, "/fn/echo/sleep/30000");
    wait_until_busy(&server);
    signal(server.child.id(), "TERM");
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "the slow request was cut off");
    assert_ne!(request.join().unwrap().0, 200);
    assert_gone(&pids);
}

/// Fails naming the first of `pids` still running.
fn assert_gone(pids: &[u32]) {
    for &pid in pids {
        assert!(has_ended(pid), "instance {pid} still runs");
    }
}

#[test]
fn environment_overrides_reach_the_pools() {
    let server = start("env", ECHO, &[("SMGR_FUNCTIONS__ECHO__MAX_INSTANCES", "3")]);
    let pool = first_pool(&server);
    assert_eq!(pool["max"], 3, "{pool:#}");
}

#[test]
fn readyz_names_the_functions_below_their_minimum() {
    let config = &(echo_config("", r#"min_instances = 1"#)
        + r#"
[functions.sleepy]
command = ["sleep", "600"]
min_instances = 1
startup_timeout = "60s"
"#);
    let server = spawn("readyz", config, &[]);
    wait_until(Duration::from_secs(30), || get(&server, "/healthz").0 == 200);
    wait_until(Duration::from_secs(30), || get(&server, "/fn/echo/").0 == 200);
    let (code, headers, body) =
        exchange(server.address, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("sleepy (0 of 1 ready)") && !body.contains("echo"), "{body}");
    assert!(header(&headers, "retry-after").is_some(), "{headers:?}");
}

#[test]
fn logs_are_pretty_when_asked_and_rust_log_filters_them() {
    let logs = |format: &str, filter: &str| {
        let port = free_port();
        let child = Command::new(SMGR)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log-format", format])
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut server = Server { child, address: ([127, 0, 0, 1], port).into() };
        let mut pipe = server.child.stderr.take().unwrap();
        wait_until(Duration::from_secs(30), || get(&server, "/readyz").0 == 200);
        signal(server.child.id(), "TERM");
        let mut stderr = String::new();
        pipe.read_to_string(&mut stderr).unwrap();
        assert!(server.child.wait().unwrap().success(), "{stderr}");
        stderr
    };
    let pretty = logs("pretty", "info");
    let line = pretty.lines().find(|line| line.contains("smgr listening")).unwrap_or_default();
    assert!(line.contains("INFO") && !line.starts_with('{'), "{pretty}");
    let quiet = logs("pretty", "warn");
    assert!(!quiet.contains("INFO"), "RUST_LOG=warn let info lines through: {quiet}");
}

#[test]
fn status_prints_the_pools_of_a_running_gateway() {
    let server = start("status", ECHO, &[]);
    let output = Command::new(SMGR)
        .args(["status", "--url", &format!("http://{}", server.address)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("FUNCTION"), "{stdout}");
    let row = stdout.lines().find(|line| line.starts_with("echo")).expect("a row for echo");
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&columns[..3], ["echo", "1", "2"], "{row}");
}

#[test]
fn check_reports_every_error_with_its_location_and_exits_2() {
    let dir = scratch("check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[functions.a]\ncommand = [\"x\"]\nmax_instances = \"many\"\n\n[functions.b]\ncommand = [\"y\"]\nmin_instances = 5\nmax_instances = 2\ncolour = \"red\"\nenv = { PORT = \"1\" }\n",
    )
    .unwrap();
    let output =
        Command::new(SMGR).args(["check", "--config", path.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:6:17: functions.a.max_instances: invalid type")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:12:1: functions.b.colour: unknown field")),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "functions.b.min_instances: min_instances (5) must not exceed max_instances (2)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("functions.b.env.PORT: PORT is set by smgr itself"), "{stderr}");

    let output = Command::new(SMGR)
        .args(["check", "--config", path.to_str().unwrap()])
        .env("SMGR_SERVER__LISTEN", "nowhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SMGR_SERVER__LISTEN: "), "{stderr}");

    let good = dir.join("good.toml");
    std::fs::write(&good, "[functions.a]\ncommand = [\"true\"]\n").unwrap();
    let output =
        Command::new(SMGR).args(["check", "--config", good.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("[functions.a]") && stdout.contains("max_instances = 4"), "{stdout}");

    // What only the backends' own checks see is refused too, as `serve` would refuse it at
    // start: a program not found, a working directory or a file source missing, an image that
    // is not an image reference. Each at its function's table.
    let refused = dir.join("refused.toml");
    std::fs::write(
        &refused,
        "[functions.a]\ncommand = [\"no-such-program-here\"]\n\n\
         [functions.b]\ncommand = [\"true\"]\nworking_dir = \"missing\"\n\n\
         [functions.c]\nbackend = \"docker\"\nimage = \"-x\"\n\n\
         [functions.d]\nbackend = \"docker\"\nimage = \"app\"\nfiles = [{ path = \"/etc/app.toml\", source = \"app.toml\" }]\n",
    )
    .unwrap();
    let output =
        Command::new(SMGR).args(["check", "--config", refused.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let file = refused.display().to_string();
    let dir = dir.display().to_string();
    for expected in [
        format!(
            "{file}:1:12: functions.a: the process backend refuses this function: program `no-such-program-here` was not found in the child's PATH"
        ),
        format!(
            "{file}:4:12: functions.b: the process backend refuses this function: working_dir {dir}/missing: no such directory"
        ),
        format!(
            "{file}:8:12: functions.c: the docker backend refuses this function: image \"-x\" is not an image reference"
        ),
        format!(
            "{file}:12:12: functions.d: the docker backend refuses this function: file /etc/app.toml: source {dir}/app.toml is not a readable file"
        ),
    ] {
        assert!(stderr.lines().any(|line| line == expected), "no {expected:?} in:\n{stderr}");
    }
}

#[test]
fn config_schema_prints_the_json_schema() {
    let output = Command::new(SMGR).args(["config", "schema"]).output().unwrap();
    assert!(output.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(schema["properties"]["functions"].is_object(), "{schema:#}");
    assert!(schema["properties"]["server"].is_object(), "{schema:#}");
}

#[test]
fn an_instance_dying_under_a_request_fails_a_post_and_retries_a_get() {
    let config = &one_echo("", "");
    let server = start("instance-failed", config, &[]);
    const POST: &[u8] = b"POST /fn/echo/sleep/3000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbody";
    // A POST with a body is not safe to repeat: once sent, a failure is the client's to see.
    let (pid, (code, _, body)) = killed_under(&server, POST);
    assert_eq!(
        (code, error_code(&body)),
        (502, "instance_failed".to_owned()),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // The broken instance is replaced (the minimum is 1).
    wait_until(
        Duration::from_secs(10),
        || matches!(instance_pids(&server)[..], [new] if new != pid),
    );

    // A GET is safe to repeat: sent (on a new connection, the instance's first), and its
    // instance dying under it, it goes to a new one.
    let (pid, (code, headers, body)) = killed_under(
        &server,
        b"GET /fn/echo/sleep/2000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&headers, "x-smgr-cold-start"), Some("true"), "served by a new instance");
    assert!(!instance_pids(&server).contains(&pid));

    // The GET left a kept connection to the new instance. A POST sent on it, whose instance
    // dies under it, is not sent again either.
    let (_, (code, _, body)) = killed_under(&server, POST);
    assert_eq!(
        (code, error_code(&body)),
        (502, "instance_failed".to_owned()),
        "the instance saw the POST: it must not go to another: {}",
        String::from_utf8_lossy(&body)
    );
}

/// Sends `request` and kills the function's one instance once the request holds it (and
/// 300 ms more, for it to be sent); its pid and the answer.
fn killed_under(server: &Server, request: &'static [u8]) -> (u32, Exchanged) {
    let [pid] = instance_pids(server)[..] else { panic!("one instance") };
    let address = server.address;
    let sent = std::thread::spawn(move || exchange(address, request));
    wait_until_busy(server);
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, "KILL");
    (pid, sent.join().unwrap())
}

/// Waits until an instance of the (first) function is leased to a request.
fn wait_until_busy(server: &Server) {
    wait_until(Duration::from_secs(30), || {
        first_pool(server)["busy"].as_u64().is_some_and(|busy| busy > 0)
    });
}

/// A request still queued for an instance when the drain is cut short gets 503
/// `shutting_down` as the pools close, not a dropped connection.
#[test]
fn a_request_queued_when_the_drain_is_cut_gets_503_shutting_down() {
    let config = &one_echo(r#"shutdown_timeout = "1s""#, r#"acquire_timeout = "60s""#);
    let mut server = start("queued-at-shutdown", config, &[]);
    let address = server.address;
    // Holds the only instance past the drain, and past the pools' 5 s wait for leases.
    let slow = get_in_background(address, "/fn/echo/sleep/20000");
    wait_until_busy(&server);
    let queued = get_in_background(address, "/fn/echo/");
    wait_until(Duration::from_secs(30), || first_pool(&server)["waiting"].as_u64() == Some(1));
    signal(server.child.id(), "TERM");
    let (code, headers, body) = queued.join().unwrap();
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(error_code(&body), "shutting_down");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(header(&headers, "x-smgr-instance").is_none());
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "a cut drain exits non-zero");
    let _ = slow.join();
}

#[test]
fn a_second_signal_stops_at_once_and_the_instances_die_with_smgr() {
    let config = &echo_config(
        r#"shutdown_timeout = "60s""#,
        r#"
min_instances = 2
max_instances = 2
"#,
    );
    let mut server = start("second-signal", config, &[]);
    wait_until(Duration::from_secs(30), || instance_pids(&server).len() == 2);
    let pids = instance_pids(&server);
    two_signals_during_a_slow_request(&mut server, "echo");
    wait_until(Duration::from_secs(10), || pids.iter().all(|&pid| has_ended(pid)));
}

/// Sends smgr two SIGTERMs while a 20 s request to `function` keeps the first one's drain
/// waiting; checks that it exits at once with status 130.
fn two_signals_during_a_slow_request(server: &mut Server, function: &str) {
    let slow = get_in_background(server.address, &format!("/fn/{function}/sleep/20000"));
    wait_until_busy(server);
    let smgr = server.child.id();
    signal(smgr, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    signal(smgr, "TERM");
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "a second signal exits non-zero at once");
    let _ = slow.join();
}

#[test]
fn without_a_config_the_demo_functions_are_served_and_logs_can_be_json() {
    use std::io::BufRead;
    let port = free_port();
    let mut child = Command::new(SMGR)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take_while(|line| !line.contains("smgr listening"))
            .collect::<Vec<_>>()
    });
    let server = Server { child, address: ([127, 0, 0, 1], port).into() };
    wait_until(Duration::from_secs(30), || get(&server, "/readyz").0 == 200);
    let (code, body) = get(&server, "/fn/hello/world");
    assert_eq!(code, 200);
    assert!(body.starts_with("hello from smgr: GET /world"), "{body}");
    let lines = lines.join().unwrap();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(value["level"].is_string(), "{line}");
    }
}

#[test]
fn connections_to_instances_are_kept_alive_between_requests() {
    let config = &one_echo("", "");
    let server = start("keepalive", config, &[]);
    assert_eq!(get(&server, "/fn/echo/").0, 200);
    let port = instance_address(&server).port();
    let before = time_wait(port);
    for _ in 0..20 {
        assert_eq!(get(&server, "/fn/echo/").0, 200);
    }
    // One request per connection would leave a new TIME_WAIT socket each. Old ones (from the
    // readiness checks, or from an earlier user of the port) may expire meanwhile: only new
    // ones count.
    let after = time_wait(port);
    let new: Vec<_> = after.difference(&before).collect();
    assert!(new.is_empty(), "closed after requests: {new:?}");
}

/// The sockets of `port` in TIME_WAIT, from /proc/net/tcp: their local and remote addresses.
fn time_wait(port: u16) -> std::collections::BTreeSet<(String, String)> {
    const TIME_WAIT: &str = "06";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let hex = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| {
            fields.len() > 3
                && fields[3] == TIME_WAIT
                && (fields[1].ends_with(&hex) || fields[2].ends_with(&hex))
        })
        .map(|fields| (fields[1].to_owned(), fields[2].to_owned()))
        .collect()
}

#[test]
fn a_client_that_goes_away_keeps_the_instance_and_a_timed_out_request_replaces_it() {
    let config = &one_echo(r#"request_timeout = "1s""#, "");
    let server = start("abandoned", config, &[]);
    let first = serving_instance(&server);

    // The client hangs up while the instance works on its request: the instance is fine.
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream.write_all(b"GET /fn/echo/sleep/600 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(stream);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(serving_instance(&server), first, "a client going away is no fault of the instance");

    // The instance does not answer within the request timeout: it is stuck, and replaced.
    let (code, _, body) = exchange(
        server.address,
        b"GET /fn/echo/sleep/3000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((code, error_code(&body)), (504, "timeout".to_owned()));
    assert_ne!(serving_instance(&server), first, "the instance stuck on a request is replaced");
}

/// The engine's view of the backend's pool: its containers, of every owner, as
/// `(owner, state)`.
fn containers_of(
    runtime: &tokio::runtime::Runtime,
    backend: &backend_docker::DockerBackend,
) -> Vec<(String, String)> {
    let pool = &pool_core::Backend::scope(backend).pool;
    runtime.block_on(async {
        let containers = backend.containers_of(pool, None).await.unwrap();
        containers.into_iter().map(|container| (container.owner, container.state)).collect()
    })
}

/// For the Docker tests of gateway `name`: a runtime, a backend of its pool to look at the
/// engine with, and a config serving the fixture image as function `boxed` (two instances).
fn docker_gateway(name: &str) -> (tokio::runtime::Runtime, backend_docker::DockerBackend, String) {
    let pool = pool_name(name);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let scope = pool_core::Scope::current(pool_core::PoolName::new(&pool).unwrap());
    let (backend, image) = runtime.block_on(async {
        let config = backend_docker::DockerBackendConfig::new(scope);
        let backend = backend_docker::DockerBackend::connect(config).await.unwrap();
        let work_dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let image = backend_docker::testkit::fixture_image(backend.docker(), work_dir).await;
        (backend, image.unwrap())
    });
    let config = r#"
[server]
pool = "{pool}"
state_dir = "{state}"
shutdown_timeout = "60s"

[functions.boxed]
backend = "docker"
image = "{image}"
command = ["--any-address"]
pull = "never"
min_instances = 2
max_instances = 2
"#
    .replace("{image}", &image);
    (runtime, backend, config)
}

#[test]
fn docker_functions_are_served_and_a_sigkilled_gateway_leaves_nothing_after_a_restart() {
    if backend_docker::testkit::skip_without_engine("docker_functions_are_served...") {
        return;
    }
    let (runtime, backend, config) = docker_gateway("docker");
    let mut first = start("docker", &config, &[]);
    let (code, headers, body) = exchange(
        first.address,
        b"GET /fn/boxed/hello?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("function=boxed") && body.contains("path=/hello"), "{body}");
    assert!(header(&headers, "x-smgr-instance").is_some());
    let (_, pools) = get(&first, "/admin/pools");
    assert!(pools.contains(r#""backend":"docker""#), "{pools}");
    let first_owner = pool_core::OwnerId::of_process(first.child.id()).unwrap().to_string();
    let running = containers_of(&runtime, &backend);
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running.iter().all(|(owner, state)| *owner == first_owner && state == "running"));

    // SIGKILL: the gateway cannot clean up; its containers keep running.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let left = containers_of(&runtime, &backend);
    assert_eq!(left.len(), 2, "the killed gateway's containers are still there: {left:?}");

    // The next gateway of the same pool removes them at start and runs its own.
    let second = start("docker", &config, &[]);
    let second_owner = pool_core::OwnerId::of_process(second.child.id()).unwrap().to_string();
    wait_until(Duration::from_secs(30), || {
        let now = containers_of(&runtime, &backend);
        now.len() == 2 && now.iter().all(|(owner, _)| *owner == second_owner)
    });
    assert_eq!(get(&second, "/fn/boxed/").0, 200);

    // A graceful stop removes its containers too.
    signal(second.child.id(), "TERM");
    let mut second = second;
    let status = second.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let after = containers_of(&runtime, &backend);
    assert!(after.is_empty(), "nothing is left: {after:?}");
}

#[test]
fn a_second_signal_removes_a_docker_gateways_containers_before_it_exits() {
    if backend_docker::testkit::skip_without_engine("a_second_signal_removes...") {
        return;
    }
    let (runtime, backend, config) = docker_gateway("docker-second-signal");
    let mut server = start("docker-second-signal", &config, &[]);
    wait_until(Duration::from_secs(30), || containers_of(&runtime, &backend).len() == 2);
    two_signals_during_a_slow_request(&mut server, "boxed");
    // Containers do not die with smgr: it removed them before it exited.
    let left = containers_of(&runtime, &backend);
    assert!(left.is_empty(), "containers outlived the second signal: {left:?}");
}

#[test]
fn an_unreachable_docker_engine_stops_the_start_with_the_address_tried() {
    let dir = scratch("no-engine");
    let config = dir.join("smgr.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\npool = \"{}\"\nstate_dir = \"{}\"\n\
             docker_host = \"unix:///nonexistent/smgr/docker.sock\"\n\n\
             [functions.boxed]\nbackend = \"docker\"\nimage = \"x\"\n",
            pool_name("no-engine"),
            dir.join("state").display()
        ),
    )
    .unwrap();
    let output = Command::new(SMGR)
        .args(["serve", "--config", config.to_str().unwrap(), "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the docker backend is unavailable")
            && stderr.contains("unix:///nonexistent/smgr/docker.sock"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// The HTTP/1.1 fast path: kept client connections, pipelining, every answer framing, and the
// hand-over to hyper for what it does not take.

/// Reads one answer from a kept connection: status, headers and trailers (lower-case names),
/// body (dechunked). A 1xx answer is returned alone; the final one follows.
fn read_answer(
    reader: &mut std::io::BufReader<TcpStream>,
    head_request: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use std::io::BufRead;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let code: u16 = line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let mut headers = Vec::new();
    let read_fields = |reader: &mut std::io::BufReader<TcpStream>, into: &mut Vec<_>| loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let Some((name, value)) = line.split_once(':') else { return };
        into.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    };
    read_fields(reader, &mut headers);
    let mut body = Vec::new();
    if (100..200).contains(&code) || head_request || code == 204 || code == 304 {
        return (code, headers, body);
    }
    if header(&headers, "transfer-encoding").is_some_and(|value| value.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
            if size == 0 {
                read_fields(reader, &mut headers);
                return (code, headers, body);
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
    }
    match header(&headers, "content-length") {
        Some(length) => {
            body.resize(length.parse().unwrap(), 0);
            reader.read_exact(&mut body).unwrap();
        }
        None => {
            reader.read_to_end(&mut body).unwrap();
        }
    }
    (code, headers, body)
}

/// A kept connection to `server`: the stream to write, a reader of its answers.
fn kept_connection(server: &Server) -> (TcpStream, std::io::BufReader<TcpStream>) {
    let stream = TcpStream::connect(server.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let reader = std::io::BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

/// Whether the server closed `reader`'s connection (rather than leaving it open).
fn closed(reader: &mut std::io::BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    matches!(reader.read_to_end(&mut rest), Ok(0))
}

/// Not a test: the function behind `answers_keep_their_framing_through_the_fast_path`, run by
/// smgr as `<this test binary> --exact raw_answers --ignored`. A raw HTTP/1.1 server on
/// `$PORT` whose answers take every framing a proxy must pass on.
#[test]
#[ignore = "a function run by smgr in another test, not a test itself"]
fn raw_answers() {
    let Ok(port) = std::env::var("PORT") else { return };
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || raw_answers_connection(stream));
    }
}

fn raw_answers_connection(stream: TcpStream) -> std::io::Result<()> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let pause = || std::thread::sleep(Duration::from_millis(20));
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        loop {
            let mut field = String::new();
            if reader.read_line(&mut field)? == 0 || field.trim().is_empty() {
                break;
            }
        }
        match path.as_str() {
            "/healthz" => writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")?,
            "/chunked" => {
                writer.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5;note=first\r\nhello\r\n",
                )?;
                pause();
                writer.write_all(b"7\r\n, world\r\n")?;
                pause();
                writer.write_all(b"0\r\nx-checksum: 42\r\n\r\n")?;
            }
            "/head" => writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")?,
            "/no-content" => writer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?,
            "/early-hints" => writer.write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhints",
            )?,
            "/until-close" => {
                writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this, ")?;
                pause();
                writer.write_all(b"until the end")?;
                return Ok(());
            }
            "/garbage" => {
                writer.write_all(b"HELLO THERE\r\n\r\n")?;
                return Ok(());
            }
            "/bad-chunks" => {
                writer.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")?;
                return Ok(());
            }
            _ => writer.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
        }
    }
}

#[test]
fn answers_keep_their_framing_through_the_fast_path() {
    let me = std::env::current_exe().unwrap();
    let config = r#"
[server]
pool = "{pool}"
state_dir = "{state}"

[functions.raw]
command = ["{me}", "--exact", "raw_answers", "--ignored"]
readiness = { http = "/healthz" }
min_instances = 1
max_instances = 1
"#
    .replace("{me}", me.to_str().unwrap());
    let server = start("framing", &config, &[]);
    let (mut stream, mut reader) = kept_connection(&server);
    let mut ask = |request: &str| stream.write_all(request.as_bytes()).unwrap();

    for _ in 0..2 {
        ask("GET /fn/raw/chunked HTTP/1.1\r\nHost: x\r\n\r\n");
        let (code, headers, body) = read_answer(&mut reader, false);
        assert_eq!((code, body.as_slice()), (200, &b"hello, world"[..]), "{headers:?}");
        assert_eq!(header(&headers, "x-checksum"), Some("42"), "the trailer: {headers:?}");
        assert_eq!(header(&headers, "x-smgr-cold-start"), Some("false"), "{headers:?}");
        assert!(header(&headers, "x-request-id").is_some_and(|id| id.starts_with("smgr-")));
    }

    ask("HEAD /fn/raw/head HTTP/1.1\r\nHost: x\r\n\r\n");
    let (code, headers, _) = read_answer(&mut reader, true);
    assert_eq!((code, header(&headers, "content-length")), (200, Some("100")));

    ask("GET /fn/raw/no-content HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(read_answer(&mut reader, false).0, 204);

    ask("GET /fn/raw/early-hints HTTP/1.1\r\nHost: x\r\n\r\n");
    let (code, headers, _) = read_answer(&mut reader, false);
    assert_eq!(code, 103);
    assert_eq!(header(&headers, "link"), Some("</style.css>; rel=preload"));
    let (code, _, body) = read_answer(&mut reader, false);
    assert_eq!((code, body.as_slice()), (200, &b"hints"[..]));

    // No length, no chunks: the answer ends when the instance closes, and so does the client's
    // connection.
    ask("GET /fn/raw/until-close HTTP/1.1\r\nHost: x\r\n\r\n");
    let (code, headers, body) = read_answer(&mut reader, false);
    assert_eq!((code, body.as_slice()), (200, &b"all of this, until the end"[..]));
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert!(closed(&mut reader));

    // Not HTTP: the instance failed (and is replaced).
    let (code, _, body) = exchange(
        server.address,
        b"GET /fn/raw/garbage HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((code, error_code(&body).as_str()), (502, "instance_failed"));
    let (code, _, body) = exchange(
        server.address,
        b"GET /fn/raw/bad-chunks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((code, error_code(&body).as_str()), (502, "instance_failed"));

    // Each answer is counted with the status the client got: the bad chunks' 502, not the
    // instance's 200 that came before them.
    let (code, text) = get(&server, "/metrics");
    assert_eq!(code, 200);
    for line in [
        "smgr_requests_total{function=\"raw\",status=\"200\"} 5",
        "smgr_requests_total{function=\"raw\",status=\"204\"} 1",
        "smgr_requests_total{function=\"raw\",status=\"502\"} 2",
    ] {
        assert!(text.lines().any(|found| found == line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_and_hyper_takes_the_rest_of_the_connection() {
    let server = start("pipeline", ECHO, &[]);
    let (mut stream, mut reader) = kept_connection(&server);
    stream
        .write_all(
            b"GET /fn/echo/one HTTP/1.1\r\nHost: x\r\n\r\nPOST /fn/echo/two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    let (code, _, body) = read_answer(&mut reader, false);
    assert_eq!(code, 200);
    assert!(body.starts_with(b"GET /one\n"), "{}", String::from_utf8_lossy(&body));
    let (code, _, body) = read_answer(&mut reader, false);
    assert_eq!(code, 200);
    assert!(body.starts_with(b"POST /two\n") && body.ends_with(b"\n\nabc"));
    // Not a function's route: hyper serves it, and the rest of the connection.
    let (code, _, body) = read_answer(&mut reader, false);
    assert_eq!((code, body.as_slice()), (200, &br#"{"status":"ok"}"#[..]));
    stream
        .write_all(b"POST /fn/echo/three HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n")
        .unwrap();
    let (code, _, body) = read_answer(&mut reader, false);
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(body.starts_with(b"POST /three\n") && body.ends_with(b"\n\nxyz"), "{text}");
    stream
        .write_all(b"GET /fn/echo/four HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (code, headers, _) = read_answer(&mut reader, false);
    assert_eq!((code, header(&headers, "connection")), (200, Some("close")));
    assert!(closed(&mut reader));

    // A chunked request body and HTTP/1.0 go to hyper from the first request on.
    let (code, _, body) = exchange(
        server.address,
        b"PUT /fn/echo/five HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    );
    assert_eq!(code, 200);
    assert!(body.starts_with(b"PUT /five\n") && body.ends_with(b"\n\nhi"));
    let (code, _, body) = exchange(server.address, b"GET /fn/echo/six HTTP/1.0\r\n\r\n");
    assert_eq!(code, 200);
    assert!(body.starts_with(b"GET /six\n"), "{}", String::from_utf8_lossy(&body));
}

#[test]
fn a_head_sent_byte_by_byte_is_forwarded_without_its_hop_by_hop_headers() {
    let server = start("bytes", ECHO, &[]);
    let (mut stream, mut reader) = kept_connection(&server);
    stream.set_nodelay(true).unwrap();
    let request = b"GET /fn/echo/slow?q=1 HTTP/1.1\r\nHost: client.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\nUpgrade-Insecure-Requests: 1\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n";
    for byte in request {
        stream.write_all(&[*byte]).unwrap();
    }
    let (code, _, body) = read_answer(&mut reader, false);
    let body = String::from_utf8(body).unwrap();
    assert_eq!(code, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "GET /slow?q=1");
    for gone in ["x-secret:", "keep-alive:", "te:", "proxy-authorization:", "connection:"] {
        assert!(!lines.iter().any(|line| line.starts_with(gone)), "{gone} forwarded: {body}");
    }
    assert!(lines.contains(&"upgrade-insecure-requests: 1"), "{body}");
    assert!(lines.contains(&"x-forwarded-for: 10.0.0.1, 127.0.0.1"), "{body}");
    assert!(
        lines.iter().any(|line| line.starts_with("host: 127.0.0.1:")),
        "the instance's address is the host: {body}"
    );
    // The connection is still there for another request.
    stream.write_all(b"GET /fn/echo/again HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut reader, false).0, 200);
}

#[test]
fn an_idle_kept_connection_is_closed_at_shutdown_and_smgr_drains() {
    let config = &one_echo(r#"shutdown_timeout = "1h""#, "");
    let mut server = start("idle-close", config, &[]);
    let (mut stream, mut reader) = kept_connection(&server);
    stream.write_all(b"GET /fn/echo/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut reader, false).0, 200);
    signal(server.child.id(), "TERM");
    assert!(closed(&mut reader), "the idle connection is closed");
    // With an hour to drain, an exit now means every connection was accounted for.
    wait_until(Duration::from_secs(30), || server.child.try_wait().unwrap().is_some());
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
}
