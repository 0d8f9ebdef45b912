//! `smgr-fixture`: the test function of Serverless Managers' backend tests and conformance
//! suite. It serves HTTP on `$PORT` (or on the socket of fd 3 under socket activation) and
//! misbehaves on request:
//!
//! ```text
//! smgr-fixture [--ignore-sigterm] [--never-ready] [--crash-after N] [--slow-start MS]
//!              [--echo] [--fail-start MESSAGE] [--port-taken-once FILE] [--grandchild]
//!              [--keep-alive] [--any-address]
//! ```
//!
//! `GET /healthz` answers 200; `GET /env` answers the environment, one `NAME=value` a line,
//! sorted; `/sleep/{ms}` answers as below after that many milliseconds; every other request answers 200 with the instance's identity and how it got its
//! socket (`listen=activated` or `listen=port`), or with the request body under `--echo`. Each
//! connection serves one request and is closed, unless `--keep-alive` (for benchmarks): then it
//! serves requests until the client closes it or sends `Connection: close`. It listens on
//! 127.0.0.1, or on every interface with `--any-address` (in a container, behind a published
//! port). Only std, with no crate at all, so that the Docker tests can compile it with `rustc`
//! alone into a static binary for a `FROM scratch` image.
#![allow(unsafe_code, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// The one libc function the fixture needs, declared here so that it builds without crates.
unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}
const SIGTERM: i32 = 15;
const SIG_IGN: usize = 1;

#[derive(Default)]
struct Flags {
    ignore_sigterm: bool,
    never_ready: bool,
    crash_after: Option<u64>,
    slow_start: Option<u64>,
    echo: bool,
    fail_start: Option<String>,
    port_taken_once: Option<String>,
    grandchild: bool,
    keep_alive: bool,
    any_address: bool,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Flags, String> {
    let mut flags = Flags::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--ignore-sigterm" => flags.ignore_sigterm = true,
            "--never-ready" => flags.never_ready = true,
            "--echo" => flags.echo = true,
            "--grandchild" => flags.grandchild = true,
            "--keep-alive" => flags.keep_alive = true,
            "--any-address" => flags.any_address = true,
            "--crash-after" => {
                let n = value(&arg)?;
                flags.crash_after =
                    Some(n.parse().map_err(|_| format!("--crash-after {n:?}: not a count"))?);
            }
            "--slow-start" => {
                let ms = value(&arg)?;
                flags.slow_start =
                    Some(ms.parse().map_err(|_| format!("--slow-start {ms:?}: not milliseconds"))?);
            }
            "--fail-start" => flags.fail_start = Some(value(&arg)?),
            "--port-taken-once" => flags.port_taken_once = Some(value(&arg)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(flags)
}

fn main() -> ExitCode {
    let flags = match parse(std::env::args().skip(1)) {
        Ok(flags) => flags,
        Err(error) => {
            eprintln!("smgr-fixture: {error}");
            return ExitCode::from(2);
        }
    };
    if flags.ignore_sigterm {
        // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
        unsafe { signal(SIGTERM, SIG_IGN) };
    }
    if let Some(message) = &flags.fail_start {
        eprintln!("{message}");
        return ExitCode::from(3);
    }
    if let Some(marker) = &flags.port_taken_once
        && std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok()
    {
        eprintln!("smgr-fixture: bind: Address already in use (os error 98)");
        return ExitCode::from(1);
    }
    if flags.grandchild {
        // A process of its own group, as a function's helper might be: it outlives a kill of
        // the function's group and must be found by its environment.
        use std::os::unix::process::CommandExt;
        let _ = std::process::Command::new("sleep").arg("600").process_group(0).spawn();
    }
    if let Some(ms) = flags.slow_start {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if flags.never_ready {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let listener = match listener(flags.any_address) {
        Ok((listener, activated)) => {
            LISTEN_MODE.store(activated, Ordering::SeqCst);
            listener
        }
        Err(error) => {
            eprintln!("smgr-fixture: {error}");
            return ExitCode::from(1);
        }
    };
    println!("smgr-fixture: serving on {:?}", listener.local_addr().ok());
    let served = std::sync::Arc::new(AtomicU64::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let served = served.clone();
        let echo = flags.echo;
        let crash_after = flags.crash_after;
        let keep_alive = flags.keep_alive;
        std::thread::spawn(move || {
            let Ok(mut reader) = stream.try_clone().map(BufReader::new) else { return };
            let mut stream = stream;
            loop {
                let Ok(Some(answered)) = serve(&mut reader, &mut stream, echo, keep_alive, &served)
                else {
                    return;
                };
                if answered.counted
                    && crash_after.is_some_and(|limit| served.load(Ordering::SeqCst) >= limit)
                {
                    eprintln!(
                        "smgr-fixture: crashing after {} requests",
                        served.load(Ordering::SeqCst)
                    );
                    std::process::exit(70);
                }
                if !answered.keep_open {
                    return;
                }
            }
        });
    }
    ExitCode::SUCCESS
}

/// Whether the socket came from socket activation.
static LISTEN_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The socket handed over by socket activation, else a new one on `$PORT`; and which.
fn listener(any_address: bool) -> Result<(TcpListener, bool), String> {
    let activated = std::env::var("LISTEN_FDS").ok().as_deref() == Some("1")
        && std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    if activated {
        use std::os::fd::FromRawFd;
        // SAFETY: under socket activation fd 3 is a listening socket handed to this process
        // alone, and nothing else in it uses fd 3.
        return Ok((unsafe { TcpListener::from_raw_fd(3) }, true));
    }
    let port = std::env::var("PORT").map_err(|_| "PORT is not set".to_owned())?;
    let host = if any_address { "0.0.0.0" } else { "127.0.0.1" };
    TcpListener::bind((host, port.parse::<u16>().map_err(|_| format!("PORT {port:?}"))?))
        .map(|listener| (listener, false))
        .map_err(|error| format!("bind: {error}"))
}

/// What answering one request did.
struct Answered {
    /// Anything but the health check.
    counted: bool,
    /// The connection stays open for another request (only under `--keep-alive`).
    keep_open: bool,
}

/// Answers one request read from `reader` on `stream`; `Ok(None)` when, under `keep_alive`,
/// the client closed the connection before sending another request.
fn serve(
    reader: &mut BufReader<TcpStream>,
    stream: &mut TcpStream,
    echo: bool,
    keep_alive: bool,
    served: &AtomicU64,
) -> std::io::Result<Option<Answered>> {
    let mut request_line = String::new();
    // A connection closed without a request (a TCP readiness check) is not a request.
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(None);
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/").to_owned());
    // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only when asked.
    let mut keep_open = keep_alive && parts.next() == Some("HTTP/1.1");
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if keep_alive && name.eq_ignore_ascii_case("connection") {
                let tokens = value.split(',').map(str::trim);
                for token in tokens {
                    if token.eq_ignore_ascii_case("close") {
                        keep_open = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_open = true;
                    }
                }
            }
        }
    }
    let mut body = vec![0; length.min(16 << 20)];
    reader.read_exact(&mut body)?;
    let counted = path != "/healthz";
    if let Some(ms) = path.strip_prefix("/sleep/").and_then(|ms| ms.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let answer = if !counted {
        b"ok\n".to_vec()
    } else if path == "/env" {
        let mut variables: Vec<String> =
            std::env::vars().map(|(name, value)| format!("{name}={value}\n")).collect();
        variables.sort();
        variables.concat().into_bytes()
    } else if echo {
        body
    } else {
        let instance = std::env::var("SMGR_INSTANCE").unwrap_or_default();
        let function = std::env::var("SMGR_FUNCTION").unwrap_or_default();
        let listen = if LISTEN_MODE.load(Ordering::SeqCst) { "activated" } else { "port" };
        format!(
            "function={function} instance={instance} pid={} listen={listen} method={method} path={path}\n",
            std::process::id()
        )
            .into_bytes()
    };
    if counted {
        served.fetch_add(1, Ordering::SeqCst);
    }
    let connection = if keep_open { "keep-alive" } else { "close" };
    // One write for head and body, so that a kept connection sends one segment per answer.
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n",
        answer.len()
    )
    .into_bytes();
    response.extend_from_slice(&answer);
    stream.write_all(&response)?;
    stream.flush()?;
    Ok(Some(Answered { counted, keep_open }))
}
