//! Just enough HTTP/1.1 to ask an instance whether a path answers 2xx, for the readiness and
//! liveness checks of every backend whose instances serve HTTP (feature `probe`): no client
//! library, and one copy for all backends.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` on `address` answers 2xx; otherwise what went wrong, or the status it answered.
pub async fn http_ok(address: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let code = tokio::time::timeout(timeout, exchange(address, path))
        .await
        .map_err(|_| format!("GET {path} got no answer within {timeout:?}"))??;
    if (200..300).contains(&code) { Ok(()) } else { Err(format!("GET {path} answered {code}")) }
}

async fn exchange(address: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|error| format!("connect to {address}: {error}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: smgr-probe\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|error| format!("GET {path}: {error}"))?;
    // The status line is all we need; it is short.
    let mut head = Vec::with_capacity(64);
    let mut byte = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let read = stream.read(&mut byte).await.map_err(|error| format!("GET {path}: {error}"))?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&byte[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().and_then(|code| code.parse().ok())) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => Ok(code),
        _ if line.is_empty() => Err(format!("GET {path}: the connection closed without an answer")),
        _ => Err(format!("GET {path}: not an HTTP answer: {line:?}")),
    }
}
