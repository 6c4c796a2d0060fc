//! The bridge's HTTP front: limits -> edge authentication -> Host header
//! -> route -> the tenant's host agent. Answers without forwarding: too many
//! requests 429, oversized headers 431, no or bad credentials 401 on every
//! host name, an unknown tenant and someone else's tenant the same 404,
//! the owner's suspended tenant 403 and unavailable tenant 503 (with
//! Retry-After); none of these name any tenant.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use clawplane_edge::connections::{ConnectionLimits, InFlight};
use clawplane_edge::forward::{TENANT_HEADER, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use clawplane_edge::rate::{retry_after_secs, KeyedRate};
use clawplane_identity::{JwtVerifier, Owner};
use clawplane_proto::v1::{Route, RouteStatus};
use clawplane_tls::secrets::SecretBox;
use http::header::HeaderName;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::metrics::Metrics;
use crate::routes::RouteTable;
use clawplane_edge::agents::{authority, AgentConnector, AgentPool};

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Cookie that carries the browser's session (browsers cannot set headers
/// on navigations or WebSocket handshakes). Its value is the SSO token
/// sealed for one host: it opens nowhere else, and the API does not take it.
pub const SESSION_COOKIE: &str = "clawplane_session";
/// Where a browser trades an SSO token for the session cookie.
pub const SESSION_PATH: &str = "/_clawplane/session";
/// Identity headers a client must never be able to set.
static CLIENT_IDENTITY_HEADERS: [HeaderName; 7] = [
    TENANT_HEADER,
    HeaderName::from_static("x-forwarded-user"),
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

pub struct Bridge {
    pub table: Arc<RouteTable>,
    pub base_domain: String,
    pub jwt: Option<JwtVerifier>,
    pub agents: AgentPool,
    /// HTTP/1.1 connections for upgrades.
    pub upgrades: AgentConnector,
    pub max_body_bytes: usize,
    pub response_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Front proxies (load balancers) whose X-Forwarded-For is believed;
    /// from anyone else it is replaced by the peer address.
    pub trusted_fronts: Vec<IpAddr>,
    /// Users reach the bridge over https even when neither its own TLS nor
    /// a trusted front's X-Forwarded-Proto says so.
    pub public_https: bool,
    /// Seals session cookies (`session.key` in the identity folder; bridges
    /// behind one name share it).
    pub sessions: SecretBox,
    pub limits: ConnectionLimits,
    pub address_rate: Arc<KeyedRate<IpAddr>>,
    pub tenant_rate: Arc<KeyedRate<String>>,
}

/// Where a request comes from, as the nearest trusted hop saw it.
struct Client {
    ip: IpAddr,
    https: bool,
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{message}\n"))).map_err(|never| match never {}).boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn too_many(wait: Duration) -> Response<Body> {
    let mut response = text(StatusCode::TOO_MANY_REQUESTS, "too many requests; slow down");
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    response
}

fn unauthorized(message: &str) -> Response<Body> {
    let mut response = text(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The Cookie header without our session cookie (the gateway never sees
/// the user's SSO token).
fn strip_session_cookie(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map(|(n, _)| n) != Some(SESSION_COOKIE))
        .map(String::from)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, value);
        }
    }
}

fn strip_session_set_cookie(headers: &mut HeaderMap) {
    let ours = |value: &HeaderValue| {
        value.as_bytes().split(|b| *b == b'=').next().is_some_and(|name| name.trim_ascii() == SESSION_COOKIE.as_bytes())
    };
    if headers.get_all(header::SET_COOKIE).iter().any(ours) {
        let kept: Vec<HeaderValue> = headers.get_all(header::SET_COOKIE).iter().filter(|v| !ours(v)).cloned().collect();
        headers.remove(header::SET_COOKIE);
        for value in kept {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

/// What a session cookie is sealed for: one host name.
fn session_context(host: &str) -> String {
    format!("bridge-session:{}", clawplane_identity::host::host_name(host))
}

/// Who owns a route's tenant: its user, else its team (a route names one).
fn owner(route: &Route) -> Option<Owner> {
    match (route.owner_user_id.as_str(), route.owner_team_id.as_str()) {
        ("", "") => None,
        ("", team) => Some(Owner::Team(team.to_string())),
        (user, _) => Some(Owner::User(user.to_string())),
    }
}

impl Bridge {
    /// The SSO token of a request: `Authorization: Bearer`, or the session
    /// cookie sealed for this host. None without either.
    fn credential(&self, headers: &HeaderMap, host: &str) -> Option<Result<String, &'static str>> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim().to_string());
            return Some(token.ok_or("the Authorization header is not a bearer token"));
        }
        // Every cookie of that name: a sibling host may have planted one for
        // the whole base domain, which the browser sends first.
        let mut cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == SESSION_COOKIE)
            .take(8)
            .peekable();
        cookies.peek()?;
        let context = session_context(host);
        let opened = cookies.find_map(|(_, cookie)| {
            let sealed = URL_SAFE_NO_PAD.decode(cookie).ok()?;
            String::from_utf8(self.sessions.open(&context, &sealed).ok()?).ok()
        });
        Some(opened.ok_or("the session cookie is not valid here; sign in again"))
    }

    /// The route a request may use, or the answer that refuses it. The
    /// caller is authenticated before anything is looked up: no or bad
    /// credentials 401 on every host; an unknown tenant and another
    /// owner's the same 404; the owner's suspended tenant 403, unavailable
    /// 503.
    pub fn authorize(&self, headers: &HeaderMap, host: &str) -> Result<Arc<Route>, Response<Body>> {
        let Some(jwt) = &self.jwt else {
            return Err(text(StatusCode::SERVICE_UNAVAILABLE, "the bridge has no SSO configuration"));
        };
        let principal = match self.credential(headers, host) {
            None => return Err(unauthorized("sign in required")),
            Some(Err(problem)) => return Err(unauthorized(problem)),
            Some(Ok(token)) => {
                jwt.verify(&token).map_err(|err| unauthorized(&format!("invalid credentials: {err}")))?
            }
        };
        let slug = clawplane_identity::host::slug_of(host, &self.base_domain).ok().flatten();
        let route = slug
            .and_then(|slug| self.table.get(&format!("{slug}.{}", self.base_domain)))
            .filter(|route| owner(route).is_some_and(|owner| principal.owns(&owner)));
        let Some(route) = route else { return Err(text(StatusCode::NOT_FOUND, "no such tenant")) };
        match RouteStatus::try_from(route.status) {
            Ok(RouteStatus::Active) => Ok(route),
            Ok(RouteStatus::Suspended) => Err(text(StatusCode::FORBIDDEN, "this tenant is suspended")),
            _ => {
                let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "this tenant is not available right now");
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                Err(response)
            }
        }
    }

    fn client(&self, headers: &HeaderMap, peer: SocketAddr, tls: bool) -> Client {
        let front = self.trusted_fronts.contains(&peer.ip());
        // The front appends the address it saw: the last entry of the last
        // header line (an address with a port is taken without it).
        let forwarded_ip = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim)
            .and_then(|ip| ip.parse::<IpAddr>().ok().or_else(|| ip.parse::<SocketAddr>().ok().map(|addr| addr.ip())));
        let forwarded_proto = headers.get(&X_FORWARDED_PROTO).and_then(|v| v.to_str().ok());
        Client {
            ip: forwarded_ip.filter(|_| front).unwrap_or(peer.ip()),
            https: tls || self.public_https || (front && forwarded_proto == Some("https")),
        }
    }

    /// Answers one request. `in_flight` stays with the response body, so a
    /// connection streaming an answer is not idle.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
        in_flight: InFlight,
    ) -> Response<Body> {
        let started = Instant::now();
        let client = self.client(request.headers(), peer, tls);
        if let Err(wait) = self.address_rate.check(&clawplane_edge::connections::client_key(client.ip)) {
            self.metrics.refused(StatusCode::TOO_MANY_REQUESTS.as_u16());
            return too_many(wait);
        }
        let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if let Err(problem) = clawplane_edge::connections::check_head(&self.limits, request.headers(), path) {
            self.metrics.refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE.as_u16());
            return text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!("request header fields too large: {problem}"),
            );
        }
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        if request.uri().path() == SESSION_PATH {
            return self.start_session(request.uri().query().unwrap_or_default(), &host, client.https);
        }
        let route = match self.authorize(request.headers(), &host) {
            Ok(route) => route,
            // Load balancers' checks carry no credentials; the answer says
            // nothing about tenants.
            Err(_) if request.uri().path() == "/api/health" => return text(StatusCode::OK, "ok"),
            Err(response) => {
                self.metrics.refused(response.status().as_u16());
                return response;
            }
        };
        if let Err(wait) = self.tenant_rate.check(&route.tenant_id) {
            self.metrics.refused(StatusCode::TOO_MANY_REQUESTS.as_u16());
            return too_many(wait);
        }
        let counters = self.metrics.tenant(&route.tenant_id);
        if let Some(length) = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) {
            match length.parse::<u64>() {
                Ok(n) if n <= self.max_body_bytes as u64 => counters.bytes(n, 0),
                _ => return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            }
        }
        // A switched connection's relay takes the request's place in the
        // limits with it; otherwise the response body holds it.
        let mut in_flight = Some(in_flight);
        let response = self.forward(request, &route, &host, &client, &mut in_flight).await;
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            counters.upgraded();
        }
        let failed = status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::GATEWAY_TIMEOUT;
        counters.request(started.elapsed(), failed);
        tracing::debug!(tenant = %route.tenant_id, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "bridged");
        // Count response bytes as they stream; the request is in flight
        // until its body is done.
        response.map(move |body| {
            body.map_frame(move |frame| {
                let _in_flight = &in_flight;
                if let Some(data) = frame.data_ref() {
                    counters.bytes(0, data.len() as u64);
                }
                frame
            })
            .boxed()
        })
    }

    /// The browser hand-off: the web product links the user to
    /// `https://<slug>.<domain>/_clawplane/session?token=<SSO JWT>&next=/`;
    /// an owner's valid token becomes a session cookie for this host only
    /// (HttpOnly, SameSite=Lax, Secure whenever users come over https),
    /// then the browser goes on to `next` (a local path only).
    fn start_session(&self, query: &str, host: &str, https: bool) -> Response<Body> {
        let param = |name: &str| {
            query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
        };
        let Some(token) = param("token").filter(|t| !t.is_empty()) else {
            return text(StatusCode::BAD_REQUEST, "token is required");
        };
        let next = param("next").unwrap_or("/").replace("%2F", "/").replace("%2f", "/");
        let local = next.starts_with('/')
            && !next.starts_with("//")
            && next.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~?=&%".contains(&b));
        if !local {
            return text(StatusCode::BAD_REQUEST, "next must be a path on this host");
        }
        let mut headers = HeaderMap::new();
        let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            return text(StatusCode::BAD_REQUEST, "token is not a token");
        };
        headers.insert(header::AUTHORIZATION, value);
        if let Err(refused) = self.authorize(&headers, host) {
            return refused;
        }
        let Ok(sealed) = self.sessions.seal(&session_context(host), token.as_bytes()) else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot start a session");
        };
        let secure = if https { "; Secure" } else { "" };
        let cookie =
            format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax{secure}", URL_SAFE_NO_PAD.encode(sealed));
        let mut response = text(StatusCode::SEE_OTHER, "signed in");
        if let (Ok(location), Ok(cookie)) = (HeaderValue::from_str(&next), HeaderValue::from_str(&cookie)) {
            response.headers_mut().insert(header::LOCATION, location);
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response
    }

    /// nginx `auth_request`: 200 with where to send the request, or the
    /// refusal (the original Host comes in `X-Original-Host`). nginx passes
    /// only 401 and 403 on (anything else becomes its own 500), so other
    /// refusals answer 403 and carry the real status in `X-Clawplane-Status`
    /// for deploy/nginx to answer with (404, 503).
    pub fn internal_route(&self, headers: &HeaderMap) -> Response<Body> {
        let host = headers
            .get("x-original-host")
            .or_else(|| headers.get(header::HOST))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        match self.authorize(headers, &host) {
            Ok(route) => {
                let mut response = text(StatusCode::OK, "ok");
                let set = |response: &mut Response<Body>, name: &'static str, value: &str| {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        response.headers_mut().insert(name, value);
                    }
                };
                set(&mut response, "x-clawplane-upstream", &route.agent_endpoint);
                set(&mut response, "x-clawplane-server-name", &authority(&route.host_id));
                set(&mut response, "x-clawplane-tenant", &route.tenant_id);
                response
            }
            Err(mut response) => {
                let status = response.status();
                response.headers_mut().insert("x-clawplane-status", HeaderValue::from(status.as_u16()));
                if status != StatusCode::UNAUTHORIZED {
                    *response.status_mut() = StatusCode::FORBIDDEN;
                }
                response
            }
        }
    }

    /// The admin listener: health, metrics and nginx's route lookups.
    pub async fn admin(&self, request: Request<Incoming>) -> Response<Body> {
        match request.uri().path() {
            "/api/health" => text(StatusCode::OK, &format!("ok: {} routes", self.table.len())),
            "/metrics" => {
                let mut response = text(StatusCode::OK, "");
                *response.body_mut() =
                    Full::new(Bytes::from(self.metrics.render())).map_err(|never| match never {}).boxed();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                response
            }
            "/api/internal/route" => self.internal_route(request.headers()),
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        route: &Route,
        host: &str,
        client: &Client,
        in_flight: &mut Option<InFlight>,
    ) -> Response<Body> {
        let upgrade = clawplane_edge::forward::is_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let path = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let Ok(uri) = format!("https://{}{path}", authority(&route.host_id)).parse::<http::Uri>() else {
            return text(StatusCode::BAD_REQUEST, "invalid request path");
        };
        let (mut parts, body) = request.into_parts();
        parts.uri = uri;
        let headers = &mut parts.headers;
        clawplane_edge::forward::remove_all(headers, &CLIENT_IDENTITY_HEADERS);
        if !upgrade {
            clawplane_edge::forward::strip_hop_by_hop(headers);
        }
        headers.remove(header::AUTHORIZATION);
        strip_session_cookie(headers);
        headers.remove(header::HOST);
        let set = |headers: &mut HeaderMap, name: HeaderName, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        set(headers, TENANT_HEADER, &route.tenant_id);
        set(headers, X_FORWARDED_FOR, &client.ip.to_string());
        set(headers, X_FORWARDED_PROTO, if client.https { "https" } else { "http" });
        set(headers, X_FORWARDED_HOST, host);
        if let Some(client_upgrade) = client_upgrade {
            parts.version = http::Version::HTTP_11;
            // Boxed: every request's future would otherwise be as large as
            // the upgrade path's (a TLS handshake), and be copied that large.
            let upstream = Request::from_parts(parts, body);
            return Box::pin(self.relay_upgrade(upstream, client_upgrade, &route.host_id, in_flight.take())).await;
        }
        parts.version = http::Version::HTTP_2;
        let upstream = Request::from_parts(parts, Limited::new(body, self.max_body_bytes).boxed());
        match tokio::time::timeout(self.response_timeout, self.agents.request(&route.host_id, upstream)).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                clawplane_edge::forward::strip_hop_by_hop(&mut parts.headers);
                // The session cookie is the bridge's: a gateway cannot set
                // (or overwrite) it.
                strip_session_set_cookie(&mut parts.headers);
                Response::from_parts(parts, body.map_err(Into::into).boxed())
            }
            Ok(Err(err)) => {
                tracing::info!(tenant = %route.tenant_id, host = %route.host_id, error = %err, "upstream failed");
                let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "this tenant is not reachable right now");
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
            Err(_) => text(StatusCode::GATEWAY_TIMEOUT, "the tenant's gateway did not answer in time"),
        }
    }

    async fn relay_upgrade(
        &self,
        request: Request<Incoming>,
        client_upgrade: hyper::upgrade::OnUpgrade,
        host_id: &str,
        in_flight: Option<InFlight>,
    ) -> Response<Body> {
        let unavailable = || {
            let mut response = text(StatusCode::SERVICE_UNAVAILABLE, "this tenant is not reachable right now");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        };
        let Ok(stream) = self.upgrades.connect(host_id).await else { return unavailable() };
        let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            return unavailable();
        };
        tokio::spawn(connection.with_upgrades());
        let mut response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(_) => return unavailable(),
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = response.into_parts();
            return Response::from_parts(parts, body.map_err(Into::into).boxed());
        }
        clawplane_edge::forward::splice(
            client_upgrade,
            hyper::upgrade::on(&mut response),
            self.limits.upgraded_idle_timeout,
            in_flight,
        );
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, Full::new(Bytes::new()).map_err(|never| match never {}).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_cannot_set_the_session_cookie() {
        let mut headers = HeaderMap::new();
        for value in ["theme=dark; Path=/", "clawplane_session=forged; Path=/", " clawplane_session =x", "a=b"] {
            headers.append(header::SET_COOKIE, HeaderValue::from_static(value));
        }
        strip_session_set_cookie(&mut headers);
        let kept: Vec<&str> = headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(kept, ["theme=dark; Path=/", "a=b"]);
    }
}
