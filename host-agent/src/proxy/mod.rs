//! The tenant proxy: the only way user traffic reaches a tenant's gateway,
//! which listens on this host's loopback. Gateway bridges connect over
//! mutual TLS with an identity from the control plane's CA (subject
//! `bridge:<name>`; host certificates and anything else are refused at
//! connect), name the tenant in `x-clawplane-tenant`, and the request goes
//! to that tenant's gateway with the gateway's own credential added, so
//! users never hold it. HTTP/1.1 and HTTP/2 are served; WebSocket upgrades
//! are relayed byte for byte.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clawplane_edge::connections::{self as edge, Activity, AddressCaps, ConnectionLimits, InFlight};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::runtime::RecordStore;
use clawplane_edge::shutdown::Shutdown;

mod gateways;
mod wake;
use clawplane_edge::forward::TENANT_HEADER;
use gateways::GatewayPool;
pub use wake::Wake;
use wake::{WakeError, NAVIGATION_HOLD, STARTING_PAGE};

const MAX_CONNECTIONS: usize = 4096;
/// Bridges are few and each multiplexes many users over one connection;
/// the cap stops one misbehaving bridge identity from taking every slot.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 1024;

type Body = BoxBody<Bytes, hyper::Error>;

fn reply(status: StatusCode, text: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{text}\n"))).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

struct Proxy {
    records: RecordStore,
    gateways: Arc<GatewayPool>,
    wake: Wake,
    /// Where each tenant's gateway listens and its token, re-read from the
    /// tenant records at most every RECORDS_TTL (not per request).
    targets: std::sync::RwLock<(std::time::Instant, std::collections::HashMap<String, Target>)>,
}

#[derive(Clone)]
struct Target {
    port: u16,
    /// `127.0.0.1:<port>`, the Host the gateway expects.
    host: HeaderValue,
    authorization: HeaderValue,
}

/// How stale the tenant table may be: a deleted tenant stops being reachable
/// at most this much later (its gateway is stopped first anyway).
const RECORDS_TTL: Duration = Duration::from_secs(1);

impl Proxy {
    fn target(&self, tenant_id: &str) -> Option<Target> {
        {
            let targets = self.targets.read().unwrap();
            if targets.0.elapsed() < RECORDS_TTL {
                return targets.1.get(tenant_id).cloned();
            }
        }
        let fresh: std::collections::HashMap<String, Target> = self
            .records
            .all()
            .into_iter()
            .filter(|r| r.provisioned)
            .filter_map(|r| {
                let authorization = HeaderValue::from_str(&format!("Bearer {}", r.gateway_token)).ok()?;
                let host = HeaderValue::from_str(&format!("127.0.0.1:{}", r.port)).ok()?;
                Some((r.tenant_id, Target { port: r.port, host, authorization }))
            })
            .collect();
        let found = fresh.get(tenant_id).cloned();
        *self.targets.write().unwrap() = (std::time::Instant::now(), fresh);
        found
    }
}

/// Binds the proxy listener; the address goes into the hello inventory.
pub async fn bind(listen: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("tenant proxy {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves bridged traffic on a thread of its own with a single-threaded
/// runtime: user traffic never competes with the agent's command and sync
/// work, and no request pays for wake-ups across threads (on 2 shared cores
/// this took the agent's CPU per proxied request from about 60 us to about
/// 35 us; see benches/bridge.rs). One core carries tens of thousands of
/// requests per second, far more than a host's gateways answer.
/// It stops accepting at shutdown; connections still open then are cut
/// when its thread ends.
pub fn spawn(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    records: RecordStore,
    wake: Wake,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = listener.into_std()?;
    let proxy_runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("tenant-proxy".into()).spawn(move || {
        proxy_runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, tls, records, wake, shutdown).await,
                Err(err) => tracing::error!(error = %err, "tenant proxy cannot use its listener"),
            }
        })
    })?;
    Ok(())
}

/// Serves bridged traffic until shutdown.
async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    records: RecordStore,
    wake: Wake,
    mut shutdown: Shutdown,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let stale = std::time::Instant::now() - RECORDS_TTL * 2;
    let proxy = Arc::new(Proxy {
        records,
        gateways: Arc::default(),
        wake,
        targets: std::sync::RwLock::new((stale, Default::default())),
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = AddressCaps::new(MAX_CONNECTIONS_PER_ADDRESS);
    let limits = ConnectionLimits::agent();
    while let Some((tcp, peer, permit)) =
        edge::next_connection(&listener, &permits, &mut shutdown, "tenant proxy").await
    {
        let Some(address_permit) = per_address.try_acquire(peer.ip()) else {
            tracing::debug!(%peer, "tenant proxy: refused a connection, the address holds its share");
            continue;
        };
        let (acceptor, proxy) = (acceptor.clone(), proxy.clone());
        tokio::spawn(async move {
            let permits = Activity::holding((permit, address_permit));
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "tenant proxy handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let bridge = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| clawplane_tls::common_name(cert))
                .filter(|cn| cn.starts_with(clawplane_tls::BRIDGE_CN_PREFIX));
            let Some(bridge) = bridge else {
                tracing::warn!(%peer, "tenant proxy: refused a client certificate that is not a bridge identity");
                return;
            };
            let activity = Arc::new(permits);
            let requests = activity.clone();
            let service = hyper::service::service_fn(move |request| {
                let (proxy, in_flight) = (proxy.clone(), requests.begin());
                async move { Ok::<_, std::convert::Infallible>(proxy.forward(request, in_flight).await) }
            });
            if let Err(err) = edge::serve(&limits, TokioIo::new(tls), &activity, std::future::pending(), service).await
            {
                tracing::debug!(%peer, %bridge, error = %err, "tenant proxy connection ended");
            }
        });
    }
    tracing::info!("tenant proxy stopped accepting");
}

impl Proxy {
    /// `in_flight` stays with the response body (see edge::Activity).
    async fn forward(&self, mut request: Request<Incoming>, in_flight: InFlight) -> Response<Body> {
        let Some(tenant_id) = request.headers().get(&TENANT_HEADER).and_then(|v| v.to_str().ok()).map(String::from)
        else {
            return reply(StatusCode::BAD_REQUEST, "missing x-clawplane-tenant");
        };
        let Some(target) = self.target(&tenant_id) else {
            return reply(StatusCode::NOT_FOUND, "tenant is not on this host");
        };
        // Traffic from now until the response ends: the tenant stays awake.
        let active = self.wake.begin(&tenant_id);
        if active.as_ref().is_some_and(|active| active.found_asleep) {
            if let Some(refused) = self.wake_for(&tenant_id, &request).await {
                return refused;
            }
        }
        let hold = (in_flight, active);
        // Origin form ("/path?query"): the gateway is an origin server.
        let uri = request.uri().path_and_query().cloned().map(http::Uri::from).unwrap_or_else(|| "/".parse().unwrap());
        let upgrade = clawplane_edge::forward::is_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        let headers = &mut parts.headers;
        headers.remove(&TENANT_HEADER);
        if !upgrade {
            clawplane_edge::forward::strip_hop_by_hop(headers);
        }
        headers.insert(header::HOST, target.host.clone());
        // The gateway's own credential: users never see it.
        headers.insert(header::AUTHORIZATION, target.authorization.clone());
        let upstream = Request::from_parts(parts, body);
        if let Some(client_upgrade) = client_upgrade {
            // Boxed: every request's future would otherwise be as large as
            // the upgrade path's, and be copied that large.
            return Box::pin(self.relay_upgrade(upstream, client_upgrade, target.port, hold)).await;
        }
        match self.gateways.request(target.port, upstream).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                clawplane_edge::forward::strip_hop_by_hop(&mut parts.headers);
                // An answer the bridge's HTTP/2 client would refuse fails
                // this one stream, not the connection every tenant shares.
                if let Err(problem) = edge::check_head(&ConnectionLimits::agent(), &parts.headers, "") {
                    tracing::info!(tenant = %tenant_id, %problem, "tenant gateway answered with oversized headers");
                    return reply(StatusCode::BAD_GATEWAY, "the tenant's gateway answered with oversized headers");
                }
                let body = body.map_frame(move |frame| {
                    let _hold = &hold;
                    frame
                });
                Response::from_parts(parts, body.boxed())
            }
            Err(err) => {
                tracing::debug!(tenant = %tenant_id, error = %err, "tenant gateway unreachable");
                reply(StatusCode::BAD_GATEWAY, "the tenant's gateway is not answering")
            }
        }
    }

    /// Wakes a hibernated tenant for `request`; the answer to send instead
    /// when it is not awake in time (or cannot start).
    async fn wake_for(&self, tenant_id: &str, request: &Request<Incoming>) -> Option<Response<Body>> {
        let navigation = request.method() == http::Method::GET
            && !clawplane_edge::forward::is_upgrade(request.headers())
            && request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.contains("text/html"));
        let hold = if navigation { NAVIGATION_HOLD.min(self.wake.timeout) } else { self.wake.timeout };
        let (mut response, retry_after) = match self.wake.wake(tenant_id, hold).await {
            Ok(()) => return None,
            Err(WakeError::StillStarting) if navigation => {
                let body = Full::new(Bytes::from_static(STARTING_PAGE.as_bytes())).map_err(|never| match never {});
                let mut page = Response::new(body.boxed());
                *page.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                page.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
                (page, "2")
            }
            Err(WakeError::StillStarting) => (
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the tenant's OpenClaw is starting after hibernation; retry shortly",
                ),
                "5",
            ),
            Err(WakeError::Failed(err)) => {
                tracing::warn!(tenant = %tenant_id, error = %err, "waking a hibernated tenant failed");
                (reply(StatusCode::SERVICE_UNAVAILABLE, "the tenant's OpenClaw could not start; retry later"), "30")
            }
        };
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Some(response)
    }

    /// A WebSocket (or other) upgrade: its own upstream connection, then
    /// bytes relayed both ways until either side closes or it goes idle;
    /// the relay holds `hold` (the request in flight, and with it its
    /// connection's permits and the tenant's activity).
    async fn relay_upgrade(
        &self,
        request: Request<Incoming>,
        client_upgrade: hyper::upgrade::OnUpgrade,
        port: u16,
        hold: impl Send + 'static,
    ) -> Response<Body> {
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return reply(StatusCode::BAD_GATEWAY, "the tenant's gateway is not answering");
        };
        let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await else {
            return reply(StatusCode::BAD_GATEWAY, "the tenant's gateway is not answering");
        };
        tokio::spawn(connection.with_upgrades());
        let mut response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(_) => return reply(StatusCode::BAD_GATEWAY, "the tenant's gateway is not answering"),
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = response.into_parts();
            return Response::from_parts(parts, body.boxed());
        }
        let idle = ConnectionLimits::agent().upgraded_idle_timeout;
        clawplane_edge::forward::splice(client_upgrade, hyper::upgrade::on(&mut response), idle, hold);
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, Full::new(Bytes::new()).map_err(|never| match never {}).boxed())
    }
}
