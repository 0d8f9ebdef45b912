//! The TCP readiness check of a container, which sees past the engine's port proxy (the HTTP
//! check is pool-core's `probe::http_ok`).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a connection to a container's own address may take before the host is taken not
/// to reach it. The container is on this host: its kernel answers at once either way.
const DIRECT_CONNECT: Duration = Duration::from_millis(250);

/// Whether the function in a container listens on its port.
///
/// The container's own address on its network (`direct`) is asked first: there the function's
/// socket accepts or the container's kernel refuses, with no proxy between, so the answer is
/// sure. When the host cannot reach that address — the engine runs elsewhere, rootless, or in
/// a VM — `unreachable` is set, and this and later checks ask the published port (`published`)
/// instead. The engine's port proxy there accepts a connection whether or not the function
/// listens, and closes it when the function refuses it; so a connection counts only when it
/// stays open for `hold`. A host busy enough to delay the proxy longer than that makes this
/// fallback say yes too early.
pub(crate) async fn tcp_ready(
    direct: Option<SocketAddr>,
    unreachable: &AtomicBool,
    published: SocketAddr,
    hold: Duration,
) -> Result<(), String> {
    if let Some(direct) = direct.filter(|_| !unreachable.load(Ordering::Relaxed)) {
        match tokio::time::timeout(DIRECT_CONNECT, TcpStream::connect(direct)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) if error.kind() == ErrorKind::ConnectionRefused => {
                return Err(format!("connect to {direct}: {error}"));
            }
            // No route, filtered, or no answer: this host does not reach container addresses.
            Ok(Err(_)) | Err(_) => unreachable.store(true, Ordering::Relaxed),
        }
    }
    tcp_open(published, hold).await
}

/// Whether something listens behind `address`, a port published through the engine's port
/// proxy: a connection counts only when it stays open for `hold`.
async fn tcp_open(address: SocketAddr, hold: Duration) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A port where nothing listens: bound, then released.
    async fn refusing() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// A port proxy that accepts every connection and keeps it open, as a slowed one does for
    /// a function that does not listen, or closes it at once, as a prompt one does.
    async fn proxy(keep: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                if keep {
                    kept.push(stream);
                }
            }
        });
        (address, task)
    }

    const HOLD: Duration = Duration::from_millis(20);

    #[tokio::test]
    async fn a_refusing_container_is_not_ready_whatever_the_proxy_does() {
        let (proxy, _task) = proxy(true).await;
        let direct = refusing().await;
        let unreachable = AtomicBool::new(false);
        let error = tcp_ready(Some(direct), &unreachable, proxy, HOLD).await.unwrap_err();
        assert!(error.contains(&direct.to_string()) && error.contains("refused"), "{error}");
        assert!(!unreachable.load(Ordering::Relaxed), "a refusal is an answer");
    }

    #[tokio::test]
    async fn a_listening_container_is_ready_without_the_proxy() {
        let function = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = refusing().await;
        let unreachable = AtomicBool::new(false);
        let direct = Some(function.local_addr().unwrap());
        tcp_ready(direct, &unreachable, proxy, HOLD).await.expect("the function accepts");
    }

    #[tokio::test]
    async fn an_unreachable_container_address_leaves_the_published_port_to_decide() {
        // TCP cannot connect to a multicast address: the kernel says the network is
        // unreachable, an error that is not a refusal.
        let direct = Some(SocketAddr::from(([224, 0, 0, 1], 8080)));
        let unreachable = AtomicBool::new(false);
        let (proxy, _task) = proxy(true).await;
        tcp_ready(direct, &unreachable, proxy, HOLD).await.expect("the proxy kept it open");
        assert!(unreachable.load(Ordering::Relaxed), "remembered for the next checks");

        // From then on only the published port is asked, which here refuses.
        let function = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let direct = Some(function.local_addr().unwrap());
        let error = tcp_ready(direct, &unreachable, refusing().await, HOLD).await.unwrap_err();
        assert!(error.contains("refused"), "{error}");
    }

    #[tokio::test]
    async fn through_the_proxy_a_connection_closed_at_once_is_not_ready() {
        let (proxy, _task) = proxy(false).await;
        let unreachable = AtomicBool::new(false);
        let error = tcp_ready(None, &unreachable, proxy, HOLD).await.unwrap_err();
        assert!(error.contains("closed at once"), "{error}");
    }
}
