//! Connections to host agents' tenant proxies: mutual TLS with the bridge's
//! identity, the agent verified as the host the route names (its
//! certificate carries `<host id>.hosts.clawplane.internal`). Requests are
//! multiplexed over one HTTP/2 connection per host ([`AgentPool`]), not one
//! handshake per request; WebSocket upgrades get an HTTP/1.1 connection of
//! their own.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::routes::RouteTable;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connect, requests to that host fail at once for this long
/// instead of each waiting out a handshake of its own.
const FAILURE_MEMORY: Duration = Duration::from_millis(500);
const KEEP_ALIVE: Duration = Duration::from_secs(20);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What the bridge sends upstream: the client's body, capped, or nothing
/// (a request sent again).
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Opens mutual-TLS connections to agents, at the endpoint the route table
/// holds for the host.
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
    pub async fn connect(&self, host_id: &str) -> Result<TlsStream<TcpStream>, BoxError> {
        let endpoint = self.table.endpoint_of(host_id).ok_or_else(|| format!("host {host_id} has no endpoint"))?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&endpoint))
            .await
            .map_err(|_| format!("connecting to {endpoint} timed out"))??;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(clawplane_tls::host_server_name(host_id))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS with {endpoint} timed out"))??;
        Ok(tls)
    }
}

/// One multiplexed HTTP/2 connection per host, opened on first use and
/// again once it closes. Requests that arrive while it is being opened wait
/// for that one handshake.
pub struct AgentPool {
    connector: AgentConnector,
    hosts: RwLock<HashMap<String, Arc<Slot>>>,
}

#[derive(Default)]
struct Slot {
    sender: Mutex<Option<SendRequest<UpstreamBody>>>,
    /// Held while connecting; when the last attempt failed.
    connecting: tokio::sync::Mutex<Option<Instant>>,
}

impl Slot {
    fn open(&self) -> Option<SendRequest<UpstreamBody>> {
        self.sender.lock().unwrap().as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

impl AgentPool {
    /// `connector` must offer ALPN `h2` only.
    pub fn new(connector: AgentConnector) -> Self {
        AgentPool { connector, hosts: RwLock::default() }
    }

    /// Sends `request` to the host's proxy. A request the connection closed
    /// under before it was sent goes once more, on a new connection; so
    /// does a bodiless GET, HEAD or OPTIONS that was in flight when the
    /// connection closed (one tenant's failure must not fail the others'
    /// requests sharing it).
    pub async fn request(&self, host_id: &str, request: Request<UpstreamBody>) -> Result<Response<Incoming>, BoxError> {
        let again = replayable(&request).then(|| {
            let mut copy = Request::new(Empty::new().map_err(|never| match never {}).boxed());
            *copy.method_mut() = request.method().clone();
            *copy.uri_mut() = request.uri().clone();
            *copy.version_mut() = request.version();
            *copy.headers_mut() = request.headers().clone();
            copy
        });
        let mut sender = self.sender(host_id).await?;
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response),
            Err(mut failed) => match (failed.take_message(), again) {
                (Some(request), _) => Ok(self.sender(host_id).await?.send_request(request).await?),
                (None, Some(copy)) if sender.is_closed() => {
                    tracing::debug!(host = %host_id, error = %failed.error(), "connection closed under a request; sending it again");
                    Ok(self.sender(host_id).await?.send_request(copy).await?)
                }
                (None, _) => Err(failed.into_error().into()),
            },
        }
    }

    async fn sender(&self, host_id: &str) -> Result<SendRequest<UpstreamBody>, BoxError> {
        let known = self.hosts.read().unwrap().get(host_id).cloned();
        let slot = match known {
            Some(slot) => slot,
            None => self.hosts.write().unwrap().entry(host_id.to_string()).or_default().clone(),
        };
        if let Some(sender) = slot.open() {
            return Ok(sender);
        }
        // Boxed: the handshake's future is large and rare; every request's
        // future stays small.
        Box::pin(self.connect(host_id, &slot)).await
    }

    async fn connect(&self, host_id: &str, slot: &Slot) -> Result<SendRequest<UpstreamBody>, BoxError> {
        let mut failed_at = slot.connecting.lock().await;
        // Whoever held the lock before may have connected.
        if let Some(sender) = slot.open() {
            return Ok(sender);
        }
        if failed_at.is_some_and(|at| at.elapsed() < FAILURE_MEMORY) {
            return Err(format!("host {host_id} was unreachable just now").into());
        }
        let connected = async {
            let stream = self.connector.connect(host_id).await?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(BoxError::from(format!("host {host_id} did not agree to HTTP/2")));
            }
            let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEP_ALIVE)
                // What the agent lets through from gateways.
                .max_header_list_size((clawplane_tls::edge::AGENT_MAX_HEADER_BYTES + 8 * 1024) as u32)
                .handshake(TokioIo::new(stream))
                .await?;
            let host = host_id.to_string();
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(%host, error = %err, "agent connection ended");
                }
            });
            Ok(sender)
        };
        match connected.await {
            Ok(sender) => {
                *failed_at = None;
                *slot.sender.lock().unwrap() = Some(sender.clone());
                Ok(sender)
            }
            Err(err) => {
                *failed_at = Some(Instant::now());
                Err(err)
            }
        }
    }
}

/// Whether a request may be sent twice: idempotent and without a body.
fn replayable(request: &Request<UpstreamBody>) -> bool {
    use hyper::body::Body as _;
    matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) && request.body().is_end_stream()
}

/// The URI authority that stands for a host.
pub fn authority(host_id: &str) -> String {
    clawplane_tls::host_server_name(host_id)
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
