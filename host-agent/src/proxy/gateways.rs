//! Keep-alive HTTP/1.1 connections to the tenants' loopback gateways, pooled
//! per port. A connection goes back to the pool when its response body has
//! ended; one whose body is dropped early is closed instead.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per gateway; beyond this many, connections are
/// closed when their responses end. Well above the requests a gateway has
/// in flight: a pool smaller than that opens and closes connections all the
/// time, and the gateway pays for a new connection per request (64 cost the
/// gateway a fifth more CPU per request at 128 connections; benches/bridge.rs).
/// Gateways close idle connections themselves (Node: after 5 s).
const MAX_IDLE: usize = 1024;

/// How long a connection may idle when the gateway does not say (Node's
/// default `Keep-Alive: timeout=5`, less a second).
const DEFAULT_IDLE: Duration = Duration::from_secs(4);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections by gateway port, each with when it stops being reused.
#[derive(Default)]
pub struct GatewayPool {
    idle: Mutex<HashMap<u16, Vec<(SendRequest<Incoming>, Instant)>>>,
}

/// How long the gateway keeps an idle connection, less a second: reusing
/// one the gateway is closing at that moment would fail the request after
/// it was sent, when it can no longer be retried. Zero when it says it
/// closes this one.
fn idle_limit(headers: &http::HeaderMap) -> Duration {
    if clawplane_edge::forward::connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("close")) {
        return Duration::ZERO;
    }
    headers
        .get("keep-alive")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').find_map(|p| p.trim().strip_prefix("timeout=")?.trim().parse::<u64>().ok()))
        .map(|secs| Duration::from_secs(secs.saturating_sub(1)))
        .unwrap_or(DEFAULT_IDLE)
}

impl GatewayPool {
    /// Sends `request` to the gateway on 127.0.0.1:`port`. A request that an
    /// idle connection closed under before it was sent goes once more, on a
    /// new connection.
    pub async fn request(
        self: &Arc<Self>,
        port: u16,
        request: Request<Incoming>,
    ) -> Result<Response<PooledBody>, BoxError> {
        let (mut sender, reused) = match self.take_idle(port) {
            Some(sender) => (sender, true),
            None => (Box::pin(connect(port)).await?, false),
        };
        if sender.ready().await.is_err() {
            sender = Box::pin(connect(port)).await?;
        }
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut failed) => match failed.take_message() {
                Some(request) if reused => {
                    sender = Box::pin(connect(port)).await?;
                    sender.send_request(request).await?
                }
                _ => return Err(failed.into_error().into()),
            },
        };
        let (parts, inner) = response.into_parts();
        let keep = idle_limit(&parts.headers);
        let mut body = PooledBody { inner, back: Some((self.clone(), port, sender, keep)) };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        Ok(Response::from_parts(parts, body))
    }

    fn take_idle(&self, port: u16) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap();
        let senders = idle.get_mut(&port)?;
        let now = Instant::now();
        while let Some((sender, until)) = senders.pop() {
            if until > now && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, port: u16, sender: SendRequest<Incoming>, keep: Duration) {
        let mut idle = self.idle.lock().unwrap();
        let senders = idle.entry(port).or_default();
        let now = Instant::now();
        senders.retain(|(s, until)| *until > now && !s.is_closed());
        if senders.len() < MAX_IDLE && !keep.is_zero() {
            senders.push((sender, now + keep));
        }
    }
}

async fn connect(port: u16) -> Result<SendRequest<Incoming>, BoxError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| format!("connecting to the gateway on port {port} timed out"))??;
    tcp.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(port, error = %err, "gateway connection ended");
        }
    });
    Ok(sender)
}

/// A gateway's response body; its connection returns to the pool at the end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Arc<GatewayPool>, u16, SendRequest<Incoming>, Duration)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((pool, port, sender, keep)) = self.back.take() {
            pool.put_idle(port, sender, keep);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // Whoever reads the body may stop at is_end_stream() and never
        // poll for the end.
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_are_dropped_a_second_before_the_gateway_closes_them() {
        // The Keep-Alive header's value, or "close" for `Connection: close`.
        let cases = [
            (Some("timeout=5"), Duration::from_secs(4)),
            (Some("close"), Duration::ZERO),
            (Some("timeout=5, max=1000"), Duration::from_secs(4)),
            (Some("max=100,timeout=30"), Duration::from_secs(29)),
            // One second or less: not worth the race, never reused.
            (Some("timeout=1"), Duration::ZERO),
            (Some("timeout=0"), Duration::ZERO),
            (Some("timeout=soon"), DEFAULT_IDLE),
            (None, DEFAULT_IDLE),
        ];
        for (value, expected) in cases {
            let mut headers = http::HeaderMap::new();
            match value {
                Some("close") => headers.insert(http::header::CONNECTION, "keep-alive, close".parse().unwrap()),
                Some(value) => headers.insert("keep-alive", value.parse().unwrap()),
                None => None,
            };
            assert_eq!(idle_limit(&headers), expected, "Keep-Alive: {value:?}");
        }
    }
}
