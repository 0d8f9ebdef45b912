//! The bundled demo functions: `smgr` serves them with no config, running itself as each
//! function through the hidden `demo-function` command, so that a fresh machine needs nothing
//! but the built binary.
//!
//! - `hello` answers every request with a greeting naming the path;
//! - `echo` answers with the request's method, path, headers and body.
//!
//! `/sleep/{ms}` on either answers after that many milliseconds (at most a minute).
//!
//! Both answer `GET /healthz` with 200 and exit on SIGTERM (the default disposition).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use backend_process::{ProcessSpec, Readiness};
use pool_core::{FunctionName, PoolConfig};

use crate::gateway::FunctionSetup;

/// The demo functions' names.
pub const DEMO_FUNCTIONS: [&str; 2] = ["hello", "echo"];

/// The demo functions, served by `smgr` at `program` (the running binary).
pub fn demo_functions(program: &Path) -> Vec<FunctionSetup> {
    DEMO_FUNCTIONS
        .iter()
        .map(|name| {
            let mut spec = ProcessSpec::new(program).args(["demo-function", name]);
            spec.readiness = Readiness::Http("/healthz".to_owned());
            spec.grace_period = Some(Duration::from_secs(5));
            FunctionSetup {
                name: FunctionName::new(name).expect("the demo names are valid"),
                pool: PoolConfig {
                    min: 1,
                    max: 4,
                    idle_timeout: Some(Duration::from_secs(300)),
                    acquire_timeout: Some(Duration::from_secs(10)),
                    ..PoolConfig::default()
                },
                spec: crate::config::BackendSpec::Process(spec),
            }
        })
        .collect()
}

/// Runs demo function `name` on `$PORT` until killed; the exit status on failure.
pub fn run_demo_function(name: &str) -> Result<(), String> {
    if !DEMO_FUNCTIONS.contains(&name) {
        return Err(format!("no demo function named {name:?} (there are: hello, echo)"));
    }
    let port: u16 = std::env::var("PORT")
        .map_err(|_| "PORT is not set".to_owned())?
        .parse()
        .map_err(|_| "PORT is not a port number".to_owned())?;
    let listener =
        TcpListener::bind(("127.0.0.1", port)).map_err(|error| format!("bind: {error}"))?;
    eprintln!("smgr demo function {name} serving on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        let echo = name == "echo";
        std::thread::spawn(move || {
            let _ = serve(stream, echo);
        });
    }
    Ok(())
}

/// Answers the requests of one connection (keep-alive).
fn serve(stream: TcpStream, echo: bool) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        let mut close = false;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
                match name.as_str() {
                    "content-length" => length = value.parse().unwrap_or(0),
                    "transfer-encoding" => {
                        chunked = value.to_ascii_lowercase().ends_with("chunked")
                    }
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    _ => {}
                }
                headers.push((name, value));
            }
        }
        let body = if chunked {
            read_chunked(&mut reader)?
        } else {
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            body
        };
        // `/sleep/{ms}` answers after that many milliseconds, for tests of slow requests.
        if let Some(ms) = target.strip_prefix("/sleep/").and_then(|ms| ms.parse::<u64>().ok()) {
            std::thread::sleep(Duration::from_millis(ms.min(60_000)));
        }
        let answer: Vec<u8> = if target == "/healthz" {
            b"ok\n".to_vec()
        } else if echo {
            let mut text = format!("{method} {target}\n");
            for (name, value) in &headers {
                text.push_str(&format!("{name}: {value}\n"));
            }
            text.push('\n');
            let mut answer = text.into_bytes();
            answer.extend_from_slice(&body);
            answer
        } else {
            let instance = std::env::var("SMGR_INSTANCE").unwrap_or_default();
            format!("hello from smgr: {method} {target} (instance {instance})\n").into_bytes()
        };
        write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        )?;
        writer.write_all(&answer)?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// A chunked request body, decoded; its trailers are read and dropped.
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunked body");
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid())?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut end = [0; 2];
        reader.read_exact(&mut end)?;
        if &end != b"\r\n" {
            return Err(invalid());
        }
    }
}
