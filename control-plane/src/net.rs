//! Accepted connections for tonic's `serve_with_incoming`: any stream plus
//! the facts tonic hands to every request on it (`ConnectInfo`), holding
//! connection-limit permits until the connection closes.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

pub struct Connection<S, I> {
    stream: S,
    info: I,
    /// Until the peer's first bytes arrive: when it is too late for them.
    first_bytes: Option<Pin<Box<Sleep>>>,
    _permits: (OwnedSemaphorePermit, Option<Box<dyn Send + Sync>>),
}

impl<S, I> Connection<S, I> {
    pub fn new(stream: S, info: I, permit: OwnedSemaphorePermit) -> Self {
        Connection { stream, info, first_bytes: None, _permits: (permit, None) }
    }

    /// A connection whose peer must send something within `within`
    /// (hyper reads the protocol preface with no timer of its own), and
    /// that holds `permit` too (its client's share of connections).
    pub fn with_limits(mut self, within: Duration, permit: impl Send + Sync + 'static) -> Self {
        self.first_bytes = Some(Box::pin(tokio::time::sleep(within)));
        self._permits.1 = Some(Box::new(permit));
        self
    }
}

impl<S, I> Connected for Connection<S, I>
where
    I: Clone + Send + Sync + 'static,
{
    type ConnectInfo = I;

    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin, I: Unpin> AsyncRead for Connection<S, I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Some(deadline) = self.first_bytes.as_mut() {
            match &read {
                Poll::Ready(_) if buf.filled().len() > before => self.first_bytes = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no bytes from the client in time",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin, I: Unpin> AsyncWrite for Connection<S, I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
