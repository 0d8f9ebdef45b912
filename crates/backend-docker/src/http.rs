//! The TCP readiness check on a container's published port, which sees through the engine's
//! port proxy (the HTTP check is pool-core's `probe::http_ok`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Whether something listens behind `address`. The engine's port proxy accepts a connection
/// on the published port whether or not the function listens, and closes it at once when the
/// function refuses it; so a connection counts only when it stays open for `hold`.
pub(crate) async fn tcp_open(address: SocketAddr, hold: Duration) -> Result<(), String> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|error| format!("connect to {address}: {error}"))?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(hold, stream.read(&mut byte)).await {
        // Still open and silent: something accepted the connection behind the proxy.
        Err(_) => Ok(()),
        // The function spoke first: it listens.
        Ok(Ok(read)) if read > 0 => Ok(()),
        Ok(Ok(_)) => Err(format!("{address}: the connection was closed at once")),
        Ok(Err(error)) => Err(format!("{address}: {error}")),
    }
}
