//! The Docker Engine the `test` step of `cargo xtask ci` needs: checked, and when it is the
//! local default, installed (Debian's `docker.io`) and started.
//!
//! - With `DOCKER_HOST` set, nothing is installed or started: the engine there must answer.
//! - Otherwise the engine is the one at `/var/run/docker.sock`. When it does not answer,
//!   `dockerd` is installed if missing, started in its own process group with its output in
//!   `target/dockerd.log`, and waited for; it keeps running after xtask exits.
//!
//! "Answers" means `GET /_ping` returns `200` with the body `OK`.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::system::{apt_get, find_program};

/// The socket of the local engine when `DOCKER_HOST` is not set.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Where the output of a `dockerd` started here goes, relative to the workspace root.
const DOCKERD_LOG: &str = "target/dockerd.log";

/// How long one `/_ping` may take.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a freshly started `dockerd` has to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a starting `dockerd` is pinged.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How many lines of the log a failed start shows.
const LOG_TAIL_LINES: usize = 20;

/// The port of a `tcp://` `DOCKER_HOST` that names none, as the docker CLI assumes.
const DEFAULT_TCP_PORT: u16 = 2375;

/// Where an engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

/// Makes sure a Docker Engine answers: the one `DOCKER_HOST` names, or the local one, installed
/// and started when needed.
pub(crate) fn ensure_running(root: &Path) -> Result<(), String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => check_docker_host(&host),
        _ => ensure_local(root),
    }
}

/// Checks the engine `DOCKER_HOST` names answers; installs and starts nothing.
fn check_docker_host(host: &str) -> Result<(), String> {
    let endpoint = parse_docker_host(host)?;
    ping(&endpoint).map_err(|error| {
        format!(
            "no Docker Engine answers at DOCKER_HOST={host}: {error}. Start that engine, or \
             unset DOCKER_HOST to use (and start) the local one"
        )
    })?;
    note(&format!("answering at DOCKER_HOST={host}"));
    Ok(())
}

/// Makes sure the engine at the default socket answers, installing and starting `dockerd`.
fn ensure_local(root: &Path) -> Result<(), String> {
    let endpoint = Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET));
    if ping(&endpoint).is_ok() {
        note(&format!("already running at {endpoint}"));
        return Ok(());
    }
    let dockerd = match find_program("dockerd") {
        Some(path) => path,
        None => {
            install_docker_io()?;
            // The package may have started the engine itself.
            if ping(&endpoint).is_ok() {
                note(&format!("running at {endpoint} after installing docker.io"));
                return Ok(());
            }
            find_program("dockerd")
                .ok_or("dockerd is still missing after installing docker.io".to_owned())?
        }
    };
    let log = root.join(DOCKERD_LOG);
    let child = start_dockerd(&dockerd, &log)?;
    note(&format!("started dockerd (log: {DOCKERD_LOG})"));
    wait_until_answering(&endpoint, child, &log)?;
    note(&format!("running at {endpoint}"));
    Ok(())
}

/// Where `DOCKER_HOST` says the engine listens: `unix:///path`, or `tcp://host[:port]` or
/// `http://host[:port]` (the backend takes both).
fn parse_docker_host(host: &str) -> Result<Endpoint, String> {
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(format!("DOCKER_HOST={host} names no socket path"));
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = host.strip_prefix("tcp://").or(host.strip_prefix("http://")) {
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("DOCKER_HOST={host} is not of the form tcp://host:port"));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
        return Ok(Endpoint::Tcp(if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{DEFAULT_TCP_PORT}")
        }));
    }
    Err(format!(
        "DOCKER_HOST={host} is not supported here: xtask checks only unix:///path, \
         tcp://host:port and http://host:port engines"
    ))
}

/// `GET /_ping` at `endpoint`: `Ok` when the engine answers `200 OK`, else why not.
fn ping(endpoint: &Endpoint) -> Result<(), String> {
    let request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    let answer = match endpoint {
        Endpoint::Unix(path) => {
            let stream = UnixStream::connect(path)
                .map_err(|error| format!("cannot connect to {}: {error}", path.display()))?;
            stream
                .set_read_timeout(Some(PING_TIMEOUT))
                .and_then(|()| stream.set_write_timeout(Some(PING_TIMEOUT)))
                .map_err(|error| format!("setting timeouts on {}: {error}", path.display()))?;
            exchange(stream, request, endpoint)?
        }
        Endpoint::Tcp(address) => {
            let resolved = address
                .to_socket_addrs()
                .map_err(|error| format!("cannot resolve {address}: {error}"))?
                .next()
                .ok_or_else(|| format!("{address} resolves to no address"))?;
            let stream = TcpStream::connect_timeout(&resolved, PING_TIMEOUT)
                .map_err(|error| format!("cannot connect to {address}: {error}"))?;
            stream
                .set_read_timeout(Some(PING_TIMEOUT))
                .and_then(|()| stream.set_write_timeout(Some(PING_TIMEOUT)))
                .map_err(|error| format!("setting timeouts on {address}: {error}"))?;
            exchange(stream, request, endpoint)?
        }
    };
    check_ping_answer(&answer)
}

/// Writes `request` and reads the answer until the engine closes the connection (HTTP/1.0) or
/// the read times out, in which case what came so far is the answer.
fn exchange(
    mut stream: impl Read + Write,
    request: &[u8],
    endpoint: &Endpoint,
) -> Result<Vec<u8>, String> {
    stream
        .write_all(request)
        .map_err(|error| format!("sending GET /_ping to {endpoint}: {error}"))?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        Err(error)
            if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                && !answer.is_empty() =>
        {
            Ok(answer)
        }
        Err(error) => Err(format!("reading the answer to GET /_ping from {endpoint}: {error}")),
    }
}

/// Whether a raw HTTP answer to `GET /_ping` says the engine is up: status 200, body `OK`.
fn check_ping_answer(raw: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let version = words.next().unwrap_or_default();
    let status = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/") || status.len() != 3 {
        let start: String = text.chars().take(80).collect();
        return Err(format!("the answer to GET /_ping is not HTTP: {start:?}"));
    }
    if status != "200" {
        return Err(format!("GET /_ping answered `{status_line}`"));
    }
    if body.trim() != "OK" {
        return Err(format!("GET /_ping answered 200 with the body {:?}, not OK", body.trim()));
    }
    Ok(())
}

/// `apt-get update` and `apt-get install -y docker.io`, as root.
fn install_docker_io() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if effective_uid(&status).is_some_and(|uid| uid != 0) {
        return Err(format!(
            "no Docker Engine answers at {DEFAULT_SOCKET} and dockerd is not installed; \
             installing it needs root: install docker.io (apt-get install docker.io) or start \
             dockerd, then run again"
        ));
    }
    note("dockerd is missing; installing docker.io");
    apt_get(&["update"])?;
    apt_get(&["install", "-y", "docker.io"])
}

/// The effective user id on the `Uid:` line of `/proc/self/status` (real, effective, ...).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Starts `dockerd` in its own process group, so it outlives xtask and a Ctrl-C of it, with
/// stdin closed and its output appended to `log`.
fn start_dockerd(dockerd: &Path, log: &Path) -> Result<Child, String> {
    let open_log = || -> Result<File, String> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|error| format!("creating {}: {error}", dir.display()))?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|error| format!("opening {}: {error}", log.display()))
    };
    let stdout = open_log()?;
    let stderr = stdout.try_clone().map_err(|error| format!("{}: {error}", log.display()))?;
    println!("$ {} >>{DOCKERD_LOG} 2>&1 &", dockerd.display());
    Command::new(dockerd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|error| format!("could not start {}: {error}", dockerd.display()))
}

/// Pings `endpoint` until it answers, `dockerd` exits, or [`START_TIMEOUT`] passes; the error
/// shows the end of `log`.
fn wait_until_answering(endpoint: &Endpoint, mut dockerd: Child, log: &Path) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let last_error = match ping(endpoint) {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let failure = if let Ok(Some(status)) = dockerd.try_wait() {
            Some(format!("dockerd exited with {status}"))
        } else if started.elapsed() >= START_TIMEOUT {
            Some(format!(
                "dockerd did not answer at {endpoint} within {}s ({last_error})",
                START_TIMEOUT.as_secs()
            ))
        } else {
            None
        };
        if let Some(failure) = failure {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "{failure}; the last lines of {DOCKERD_LOG}:\n{}",
                last_lines(&text, LOG_TAIL_LINES)
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The last `count` lines of `text`.
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Prints what the docker step did, like the other `xtask ci` lines.
fn note(message: &str) {
    println!("xtask ci: docker engine: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_names_a_unix_socket_or_a_tcp_address() {
        assert_eq!(
            parse_docker_host("unix:///run/user/1000/docker.sock"),
            Ok(Endpoint::Unix(PathBuf::from("/run/user/1000/docker.sock")))
        );
        assert_eq!(
            parse_docker_host("tcp://127.0.0.1:2376"),
            Ok(Endpoint::Tcp("127.0.0.1:2376".to_owned()))
        );
        assert_eq!(
            parse_docker_host("tcp://docker.example:2375/"),
            Ok(Endpoint::Tcp("docker.example:2375".to_owned()))
        );
        assert_eq!(parse_docker_host("tcp://dind"), Ok(Endpoint::Tcp("dind:2375".to_owned())));
        assert_eq!(parse_docker_host("http://dind"), Ok(Endpoint::Tcp("dind:2375".to_owned())));
        assert_eq!(parse_docker_host("tcp://[::1]"), Ok(Endpoint::Tcp("[::1]:2375".to_owned())));
    }

    #[test]
    fn other_docker_hosts_are_refused_with_their_value() {
        for host in ["ssh://me@builder", "npipe:////./pipe/docker_engine", "/var/run/docker.sock"] {
            let error = parse_docker_host(host).expect_err(host);
            assert!(error.contains(host), "{error}");
        }
        assert!(parse_docker_host("unix://").is_err());
        assert!(parse_docker_host("tcp://").is_err());
        assert!(parse_docker_host("tcp://host:2375/path").is_err());
    }

    #[test]
    fn a_200_ok_answer_means_the_engine_is_up() {
        let answer = b"HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\
                       Content-Type: text/plain; charset=utf-8\r\n\r\nOK";
        assert_eq!(check_ping_answer(answer), Ok(()));
        assert_eq!(check_ping_answer(b"HTTP/1.1 200 OK\r\n\r\nOK\n"), Ok(()));
    }

    #[test]
    fn a_bad_status_or_body_is_not_up() {
        let error =
            check_ping_answer(b"HTTP/1.0 500 Internal Server Error\r\n\r\nOK").expect_err("a 500");
        assert!(error.contains("500 Internal Server Error"), "{error}");
        let error =
            check_ping_answer(b"HTTP/1.0 200 OK\r\n\r\nstarting").expect_err("a body not OK");
        assert!(error.contains("starting"), "{error}");
        assert!(check_ping_answer(b"HTTP/1.0 200 OK\r\n").is_err());
    }

    #[test]
    fn garbage_is_not_up() {
        for raw in [&b""[..], b"\xff\xfe\x00garbage", b"OK", b"SSH-2.0-OpenSSH_9.2\r\n"] {
            let error = check_ping_answer(raw).expect_err("garbage");
            assert!(error.contains("not HTTP"), "{error}");
        }
    }

    #[test]
    fn the_effective_uid_is_the_second_on_the_uid_line() {
        let status = "Name:\tcargo\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tcargo\n"), None);
    }

    #[test]
    fn the_log_tail_is_the_last_lines() {
        let text: String = (1..=30).map(|n| format!("line {n}\n")).collect();
        let tail = last_lines(&text, LOG_TAIL_LINES);
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30"), "{tail}");
        assert_eq!(last_lines("only\n", LOG_TAIL_LINES), "only");
    }

    /// Needs the local engine running: `cargo test -p xtask -- --ignored docker_engine`.
    #[test]
    #[ignore = "needs a Docker Engine at /var/run/docker.sock"]
    fn the_local_engine_answers() {
        assert_eq!(ping(&Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))), Ok(()));
    }
}
