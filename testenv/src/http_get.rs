//! A minimal HTTP/1.0 client for the operator's admin endpoints (`/readyz`, `/metrics`) on
//! loopback, with no HTTP library: tests see exactly the status line and body served.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on `addr` (`ip:port`, loopback only): the status code (0 when the status line
/// cannot be parsed) and the body. Connecting is bounded by 2 s, reading the answer by 5 s.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let socket: SocketAddr = addr
        .parse()
        .with_context(|| format!("{addr:?} is not an ip:port"))?;
    anyhow::ensure!(
        socket.ip().is_loopback(),
        "test HTTP requests go to loopback only, not {addr}"
    );
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(socket),
    )
    .await
    .with_context(|| format!("connecting to {addr}: timed out"))??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .with_context(|| format!("reading GET {path} from {addr}: timed out"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
