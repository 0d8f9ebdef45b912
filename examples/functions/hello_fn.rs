//! `hello-fn`: an example function for Serverless Managers in Rust with the standard library
//! only — the same contract as `hello.py` beside it (see `docs/function-contract.md`).
//!
//! - It serves HTTP on `127.0.0.1:$PORT` (on `$BIND:$PORT` when `BIND` is set: `0.0.0.0` in a
//!   container, whose port the engine publishes), or on the listening socket of fd 3 when the
//!   backend hands one over (socket activation: `LISTEN_FDS=1` and `LISTEN_PID` naming this
//!   process).
//! - `GET /healthz` answers 200 `ok`; every other request answers 200 with a small JSON document:
//!   the greeting (`$GREETING`, default `hello`), the method and path, the function and instance
//!   (`$SMGR_FUNCTION`, `$SMGR_INSTANCE`) and the pid.
//! - SIGTERM ends it. The standard library cannot install signal handlers, so this relies on
//!   SIGTERM's default disposition, which terminates the process at once: requests in flight
//!   are cut off rather than finished. A function that must drain should handle the signal
//!   (with `signal-hook` or `tokio::signal`, say), stop accepting, finish and exit 0.
//!
//! Run it by hand with `PORT=8080 cargo run -p examples --bin hello-fn`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Threads answering requests: a fixed number, so that a flood of connections queues in the
/// listen backlog instead of starting a thread each.
const WORKERS: usize = 8;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head (request line and headers) read.
const MAX_HEAD: u64 = 64 * 1024;

/// What every answer says about this instance.
struct Identity {
    greeting: String,
    function: String,
    instance: String,
    pid: u32,
}

fn main() -> ExitCode {
    let (listener, place) = match listener() {
        Ok(found) => found,
        Err(error) => {
            // "Address already in use" in this line makes the process backend retry elsewhere.
            eprintln!("hello-fn: {error}");
            return ExitCode::FAILURE;
        }
    };
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let identity = Arc::new(Identity {
        greeting: std::env::var("GREETING").unwrap_or_else(|_| "hello".to_owned()),
        function: var("SMGR_FUNCTION"),
        instance: var("SMGR_INSTANCE"),
        pid: std::process::id(),
    });
    let or_dash = |text: &str| if text.is_empty() { "-".to_owned() } else { text.to_owned() };
    eprintln!(
        "hello-fn: function {} instance {} pid {} serving on {place}",
        or_dash(&identity.function),
        or_dash(&identity.instance),
        identity.pid
    );
    let listener = Arc::new(listener);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (listener, identity) = (listener.clone(), identity.clone());
            std::thread::spawn(move || {
                // A failed accept (a client that gave up) or exchange concerns one client.
                for stream in listener.incoming().flatten() {
                    let _ = serve(stream, &identity);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    ExitCode::SUCCESS
}

/// The socket handed over by socket activation, else a new one on `$BIND:$PORT` (`BIND` default
/// `127.0.0.1`); and where
/// it listens, for the start-up line.
fn listener() -> Result<(TcpListener, String), String> {
    let activated = std::env::var("LISTEN_FDS").as_deref() == Ok("1")
        && std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    if activated {
        return Ok((activated_listener(), "fd 3".to_owned()));
    }
    let port = std::env::var("PORT").map_err(|_| "PORT is not set".to_owned())?;
    let port: u16 = port.parse().map_err(|_| format!("PORT {port:?} is not a port number"))?;
    let host = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".to_owned());
    TcpListener::bind((host.as_str(), port))
        .map(|listener| (listener, format!("{host}:{port}")))
        .map_err(|error| format!("bind {host}:{port}: {error}"))
}

/// Takes the listening socket on fd 3. It stays inheritable and the `LISTEN_*` variables stay
/// set: this program starts no processes that could take them for theirs.
#[allow(unsafe_code)]
fn activated_listener() -> TcpListener {
    use std::os::fd::FromRawFd;
    // SAFETY: under socket activation (LISTEN_FDS=1 and LISTEN_PID naming this process) fd 3 is
    // a listening socket handed to this process, which nothing else in it uses; taking
    // ownership of it once here is sound.
    unsafe { TcpListener::from_raw_fd(3) }
}

/// Answers one request and closes the connection.
fn serve(stream: TcpStream, identity: &Identity) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // The request head is read with a budget, so that a client cannot make it grow unbounded.
    let mut head_budget = MAX_HEAD;
    let mut read_head_line = |line: &mut String| -> std::io::Result<usize> {
        let read = (&mut reader).take(head_budget).read_line(line)?;
        head_budget -= read as u64;
        Ok(read)
    };
    let mut request_line = String::new();
    read_head_line(&mut request_line)?;
    let mut length = 0u64;
    loop {
        let mut line = String::new();
        if read_head_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    // Read the body to its end so that closing the connection does not reset it under the
    // client's feet; its content does not matter here.
    std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));

    let path = target.split('?').next().unwrap_or(target);
    let (body, content_type) = if matches!(method, "GET" | "HEAD") && path == "/healthz" {
        ("ok\n".to_owned(), "text/plain")
    } else {
        let body = format!(
            "{{\"greeting\": {}, \"method\": {}, \"path\": {}, \"function\": {}, \"instance\": {}, \"pid\": {}}}\n",
            json_string(&identity.greeting),
            json_string(method),
            json_string(target),
            json_string(&identity.function),
            json_string(&identity.instance),
            identity.pid
        );
        (body, "application/json")
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            c if u32::from(c) < 0x20 => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}
