//! `smgr-fixture`: the test function of Serverless Managers' backend tests and conformance
//! suite. It serves HTTP on `$PORT` (or on the socket of fd 3 under socket activation) and
//! misbehaves on request:
//!
//! ```text
//! smgr-fixture [--ignore-sigterm] [--never-ready] [--crash-after N] [--slow-start MS]
//!              [--echo] [--fail-start MESSAGE] [--port-taken-once FILE] [--grandchild]
//! ```
//!
//! `GET /healthz` answers 200; `GET /env` answers the environment, one `NAME=value` a line,
//! sorted; every other request answers 200 with the instance's identity and how it got its
//! socket (`listen=activated` or `listen=port`), or with the request body under `--echo`. Only std and libc, so that it links statically
//! into a `FROM scratch` image.
#![allow(unsafe_code, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
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
    let listener = match listener() {
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
        std::thread::spawn(move || {
            if let Ok(true) = serve(stream, echo, &served)
                && crash_after.is_some_and(|limit| served.load(Ordering::SeqCst) >= limit)
            {
                eprintln!(
                    "smgr-fixture: crashing after {} requests",
                    served.load(Ordering::SeqCst)
                );
                std::process::exit(70);
            }
        });
    }
    ExitCode::SUCCESS
}

/// Whether the socket came from socket activation.
static LISTEN_MODE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The socket handed over by socket activation, else a new one on `$PORT`; and which.
fn listener() -> Result<(TcpListener, bool), String> {
    let activated = std::env::var("LISTEN_FDS").ok().as_deref() == Some("1")
        && std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    if activated {
        use std::os::fd::FromRawFd;
        // SAFETY: under socket activation fd 3 is a listening socket handed to this process
        // alone, and nothing else in it uses fd 3.
        return Ok((unsafe { TcpListener::from_raw_fd(3) }, true));
    }
    let port = std::env::var("PORT").map_err(|_| "PORT is not set".to_owned())?;
    TcpListener::bind(("127.0.0.1", port.parse::<u16>().map_err(|_| format!("PORT {port:?}"))?))
        .map(|listener| (listener, false))
        .map_err(|error| format!("bind: {error}"))
}

/// Answers one request; `Ok(true)` when it counted (anything but the health check).
fn serve(stream: TcpStream, echo: bool, served: &AtomicU64) -> std::io::Result<bool> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/").to_owned());
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(16 << 20)];
    reader.read_exact(&mut body)?;
    let counted = path != "/healthz";
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
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.len()
    )?;
    stream.write_all(&answer)?;
    stream.flush()?;
    Ok(counted)
}
