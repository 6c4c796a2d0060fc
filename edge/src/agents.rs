//! Connections to host agents' tenant proxies, for the gateway bridge and
//! the control plane alike: mutual TLS with a `bridge:<name>` identity, the
//! agent verified as the host asked for (its certificate carries
//! `<host id>.hosts.clawplane.internal`). Requests are multiplexed over one
//! HTTP/2 connection per host ([`AgentPool`]), not one handshake per
//! request; WebSocket upgrades get an HTTP/1.1 connection of their own.
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

/// Where each host's tenant proxy listens (`ip:port`), as the caller knows
/// it (the bridge from its route table, the control plane from the hosts'
/// hellos).
pub trait Endpoints: Send + Sync {
    fn endpoint_of(&self, host_id: &str) -> Option<String>;
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connect, requests to that host fail at once for this long
/// instead of each waiting out a handshake of its own.
const FAILURE_MEMORY: Duration = Duration::from_millis(500);
const KEEP_ALIVE: Duration = Duration::from_secs(20);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What the bridge sends upstream: the client's body, capped, or nothing
/// (a request sent again).
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

/// Opens mutual-TLS connections to agents, at the endpoint `endpoints`
/// holds for the host.
#[derive(Clone)]
pub struct AgentConnector {
    tls: TlsConnector,
    endpoints: Arc<dyn Endpoints>,
}

impl AgentConnector {
    pub fn new(tls: rustls::ClientConfig, endpoints: Arc<dyn Endpoints>) -> Self {
        AgentConnector { tls: TlsConnector::from(Arc::new(tls)), endpoints }
    }

    /// A fresh connection to a host's proxy.
    pub async fn connect(&self, host_id: &str) -> Result<TlsStream<TcpStream>, BoxError> {
        let endpoint = self.endpoints.endpoint_of(host_id).ok_or_else(|| format!("host {host_id} has no endpoint"))?;
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
                (None, Some(copy)) if closing(&sender).await => {
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
                .max_header_list_size((crate::connections::AGENT_MAX_HEADER_BYTES + 8 * 1024) as u32)
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

/// Whether a connection whose stream just failed is going away. It fails
/// its streams first and closes just after, so this waits a moment (only
/// on this rare path) rather than judging by the first instant.
async fn closing(sender: &SendRequest<UpstreamBody>) -> bool {
    for _ in 0..20 {
        if sender.is_closed() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
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

/// TLS to agents: the CA as the only root, a `bridge:<name>` identity as
/// client certificate (replaceable while connections use it), the given
/// ALPN protocols.
pub fn client_config(
    ca_pem: &str,
    identity: Arc<clawplane_tls::ReloadableIdentity>,
    alpn: &[&[u8]],
) -> anyhow::Result<rustls::ClientConfig> {
    let mut config = clawplane_tls::mtls_client_config(ca_pem, identity)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;
    use http_body_util::Full;
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    use super::*;

    /// A CA that issues what the control plane's would: a host's
    /// certificate (client and server, named by the host's server name) and
    /// a bridge's (client, subject `bridge:<name>`).
    struct TestCa {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        fn new() -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, "Test CA");
            params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).unwrap().pem();
            TestCa { issuer: Issuer::from_ca_cert_pem(&pem, key).unwrap(), pem }
        }

        /// (certificate PEM, key PEM).
        fn issue(&self, name: &str, dns: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(dns).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = usages;
            (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
        }
    }

    /// An agent's tenant proxy stand-in on 127.0.0.1: mutual TLS with a
    /// host certificate from a test CA, HTTP/2. On its first connection it
    /// drops the connection while a request is in flight; later ones answer.
    async fn flaky_agent(ca: &TestCa, host_id: &str) -> (String, Arc<AtomicUsize>) {
        let usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        let (cert, key) = ca.issue(host_id, vec![clawplane_tls::host_server_name(host_id)], usages);
        let identity = clawplane_tls::ReloadableIdentity::from_pem(&cert, &key).unwrap();
        let mut tls = clawplane_tls::mtls_server_config(&ca.pem, identity).unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else { return };
                    let (dropped, drop_now) = (Arc::new(tokio::sync::Notify::new()), first);
                    let notify = dropped.clone();
                    let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
                        let notify = notify.clone();
                        async move {
                            if drop_now {
                                notify.notify_one();
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        // The connection goes away under the request.
                        _ = dropped.notified() => {}
                    }
                });
            }
        });
        (endpoint, connections)
    }

    struct OneHost(String, String);

    impl Endpoints for OneHost {
        fn endpoint_of(&self, host_id: &str) -> Option<String> {
            (host_id == self.0).then(|| self.1.clone())
        }
    }

    fn pool(ca: &TestCa, host_id: &str, endpoint: &str) -> AgentPool {
        let name = format!("{}test", clawplane_tls::BRIDGE_CN_PREFIX);
        let (cert, key) = ca.issue(&name, vec![], vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let endpoints = Arc::new(OneHost(host_id.to_string(), endpoint.to_string()));
        AgentPool::new(AgentConnector::new(
            client_config(&ca.pem, clawplane_tls::ReloadableIdentity::from_pem(&cert, &key).unwrap(), &[b"h2"])
                .unwrap(),
            endpoints,
        ))
    }

    fn request(method: Method, host_id: &str) -> Request<UpstreamBody> {
        let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed());
        *request.method_mut() = method;
        *request.uri_mut() = format!("https://{}/p", authority(host_id)).parse().unwrap();
        *request.version_mut() = http::Version::HTTP_2;
        request
    }

    #[tokio::test]
    async fn a_get_in_flight_when_the_connection_closes_is_sent_again_on_a_new_one() {
        let ca = TestCa::new();
        for (method, retried) in [(Method::GET, true), (Method::POST, false)] {
            let host_id = format!("host-{}", method.as_str().to_ascii_lowercase());
            let (endpoint, connections) = flaky_agent(&ca, &host_id).await;
            let pool = pool(&ca, &host_id, &endpoint);
            let answer = tokio::time::timeout(
                Duration::from_secs(20),
                pool.request(&host_id, request(method.clone(), &host_id)),
            )
            .await
            .expect("an answer or an error, not a hang");
            match answer {
                Ok(response) if retried => {
                    assert_eq!(response.status(), StatusCode::OK);
                    assert_eq!(connections.load(Ordering::SeqCst), 2, "sent again on a new connection");
                }
                Err(err) if !retried => {
                    assert_eq!(connections.load(Ordering::SeqCst), 1, "{method} is not sent twice: {err}");
                }
                other => panic!("{method}: {:?}", other.map(|r| r.status())),
            }
        }
    }
}
