//! Keep-alive HTTP/1.1 connections to the tenants' loopback gateways, pooled
//! per port. A connection goes back to the pool when its response body has
//! ended; one whose body is dropped early is closed instead.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per gateway; more than this many at once are
/// closed when their responses end.
const MAX_IDLE: usize = 64;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
pub struct GatewayPool {
    idle: Mutex<HashMap<u16, Vec<SendRequest<Incoming>>>>,
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
        let mut body = PooledBody { inner, back: Some((self.clone(), port, sender)) };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        Ok(Response::from_parts(parts, body))
    }

    fn take_idle(&self, port: u16) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap();
        let senders = idle.get_mut(&port)?;
        while let Some(sender) = senders.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, port: u16, sender: SendRequest<Incoming>) {
        let mut idle = self.idle.lock().unwrap();
        let senders = idle.entry(port).or_default();
        senders.retain(|s| !s.is_closed());
        if senders.len() < MAX_IDLE {
            senders.push(sender);
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
    back: Option<(Arc<GatewayPool>, u16, SendRequest<Incoming>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((pool, port, sender)) = self.back.take() {
            pool.put_idle(port, sender);
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
