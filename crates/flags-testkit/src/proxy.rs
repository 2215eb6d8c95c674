//! A TCP proxy a test or the fault suite controls, placed between the service and a server: it
//! can cut every connection (and refuse new ones) or delay every response, without touching the
//! server itself. This is how the suite cuts PostgreSQL off without stopping the shared server,
//! and how a test cuts one process off Redis while another keeps it.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Bytes flow both ways unchanged.
    Pass,
    /// Open connections are closed and new ones are closed as soon as they are accepted.
    Cut,
    /// Every chunk from the server reaches the client this much later.
    Delay(Duration),
}

#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    mode: watch::Sender<ProxyMode>,
}

impl TcpProxy {
    /// Listens on a spare local port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, watcher) = watch::channel(ProxyMode::Pass);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, watcher.clone()));
            }
        });
        Ok(Self { port, mode })
    }

    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<ProxyMode>) {
    if *mode.borrow_and_update() == ProxyMode::Cut {
        return; // dropping the socket closes it
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let requests = pump(client_read, server_write, mode.clone(), false);
    let responses = pump(server_read, client_write, mode.clone(), true);
    let cut = async move {
        while mode.changed().await.is_ok() {
            if *mode.borrow_and_update() == ProxyMode::Cut {
                return;
            }
        }
    };
    // Returning drops all four halves, which closes both connections.
    tokio::select! {
        _ = async { tokio::join!(requests, responses) } => {}
        () = cut => {}
    }
}

/// Copies one direction; chunks are queued with the time they are due so a delay adds latency
/// without limiting throughput.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mode: watch::Receiver<ProxyMode>,
    delayed: bool,
) {
    let (queue, mut due) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let reader = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = match *mode.borrow() {
                ProxyMode::Delay(delay) if delayed => delay,
                _ => Duration::ZERO,
            };
            let chunk = Bytes::copy_from_slice(&buffer[..n]);
            if queue.send((Instant::now() + delay, chunk)).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(socket: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        socket.write_all(b"ping").await?;
        let mut reply = vec![0u8; 4];
        socket.read_exact(&mut reply).await?;
        Ok(reply)
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn passes_cuts_and_delays() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();
        let mut socket = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert_eq!(round_trip(&mut socket).await.unwrap(), b"ping");

        proxy.set(ProxyMode::Cut);
        assert!(
            round_trip(&mut socket).await.is_err(),
            "open connection cut"
        );
        let mut fresh = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        assert!(
            round_trip(&mut fresh).await.is_err(),
            "new connection refused"
        );

        proxy.set(ProxyMode::Delay(Duration::from_millis(200)));
        let mut slow = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut slow).await.unwrap(), b"ping");
        // Ordering, not speed: the reply cannot arrive before the delay it was given.
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
