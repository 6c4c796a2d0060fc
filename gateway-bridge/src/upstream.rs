//! Connections to host agents' tenant proxies: mutual TLS with the bridge's
//! identity, the agent verified as the host the route names (its
//! certificate carries `<host id>.hosts.clawplane.internal`). Requests are
//! multiplexed over pooled HTTP/2 connections, one per host, not one
//! handshake per request; WebSocket upgrades get an HTTP/1.1 connection of
//! their own.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::routes::RouteTable;

const HOST_SUFFIX: &str = ".hosts.clawplane.internal";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TLS stream to an agent, usable by hyper's pooled client.
pub struct AgentStream {
    inner: TlsStream<TcpStream>,
    h2: bool,
}

impl Connection for AgentStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for AgentStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves `https://<host id>.hosts.clawplane.internal` to the endpoint the
/// route table holds for that host.
#[derive(Clone)]
pub struct AgentConnector {
    tls: TlsConnector,
    table: Arc<RouteTable>,
}

impl AgentConnector {
    pub fn new(tls: rustls::ClientConfig, table: Arc<RouteTable>) -> Self {
        AgentConnector { tls: TlsConnector::from(Arc::new(tls)), table }
    }

    /// A fresh connection to a host's proxy.
    pub async fn connect(&self, host_id: &str) -> Result<AgentStream, BoxError> {
        let endpoint = self.table.endpoint_of(host_id).ok_or_else(|| format!("host {host_id} has no endpoint"))?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&endpoint))
            .await
            .map_err(|_| format!("connecting to {endpoint} timed out"))??;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(clawplane_tls::host_server_name(host_id))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS with {endpoint} timed out"))??;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(AgentStream { inner: tls, h2 })
    }
}

/// The URI authority that stands for a host.
pub fn authority(host_id: &str) -> String {
    clawplane_tls::host_server_name(host_id)
}

impl tower_service::Service<http::Uri> for AgentConnector {
    type Response = TokioIo<AgentStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let host_id = host.strip_suffix(HOST_SUFFIX).ok_or_else(|| format!("{host} is not a host name"))?;
            Ok(TokioIo::new(connector.connect(host_id).await?))
        })
    }
}

/// TLS to agents: the CA as the only root, the bridge identity as client
/// certificate, the given ALPN protocols.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ClientConfig> {
    let identity = clawplane_tls::ReloadableIdentity::from_pem(cert_pem, key_pem)?;
    let mut config = clawplane_tls::mtls_client_config(ca_pem, identity)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
