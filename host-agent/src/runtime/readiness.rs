//! Whether a tenant's gateway answers on its loopback port.
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::RuntimeError;

/// Polls `/readyz` until it answers 200; false once `timeout` passed.
pub async fn wait_ready(port: u16, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        if http_status(port, "/readyz").await == Some(200) {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The error of a gateway that did not become ready; `detail` is what its
/// supervisor saw, if anything.
pub fn not_ready(slug: &str, timeout: Duration, detail: &str) -> RuntimeError {
    RuntimeError::OpenClaw(format!(
        "gateway of {slug} was not ready within {timeout:?}{}",
        if detail.is_empty() { String::new() } else { format!(": {detail}") }
    ))
}

/// Status code of `GET path` on the loopback port, if it answers at all.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let mut stream = tokio::time::timeout(Duration::from_secs(2), connect).await.ok()?.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head)).await.ok()?.ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}
