//! The seed's REST endpoints on the API port, for web backends that would
//! rather `fetch` than speak gRPC. Each is the gRPC call of the same name:
//! the API's layers (auth, rates, deadline, CORS) run first, the handler
//! calls the service itself, and the answer is the proto message as
//! proto3 JSON, made through the contract's descriptor set so it cannot
//! drift from the proto. Errors are `{"code", "message"}` with the HTTP
//! status of the same class ([`ServiceErrorCode::from_grpc`]). Streams
//! (`/logs?follow=true`, `/messages`) are Server-Sent Events. The
//! document for all of it is `openapi.json` beside this file, served at
//! `/api/openapi.json`.
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::routing::{any, get, post};
use bytes::Bytes;
use clawplane_proto::v1::host_service_server::HostService;
use clawplane_proto::v1::session_service_server::SessionService;
use clawplane_proto::v1::tenant_service_server::TenantService;
use clawplane_proto::v1::usage_service_server::UsageService;
use clawplane_proto::v1::{
    ChangePlanRequest, CreateTenantRequest, DeleteTenantRequest, GetMyTenantRequest, GetSubscriptionRequest,
    ListHostsRequest, RestartTenantRequest, SendMessageRequest, StreamTenantLogsRequest, StreamTenantLogsResponse,
};
use futures::{Stream, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};
use tonic::Status;

use super::hosts::HostApi;
use super::sessions::SessionApi;
use super::tenants::TenantApi;
use super::usage::UsageApi;
use crate::service_error::ServiceErrorCode;
use crate::store::Store;

/// The OpenAPI document of these endpoints (committed; a test checks it
/// names every route).
pub const OPENAPI: &str = include_str!("openapi.json");
/// The largest request body a REST call reads.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct RestApi {
    store: Store,
    tenants: Arc<TenantApi>,
    hosts: Arc<HostApi>,
    sessions: Arc<SessionApi>,
    usage: Arc<UsageApi>,
    json: ProtoJson,
}

impl RestApi {
    pub fn new(
        store: Store,
        tenants: Arc<TenantApi>,
        hosts: Arc<HostApi>,
        sessions: Arc<SessionApi>,
        usage: Arc<UsageApi>,
    ) -> Self {
        RestApi { store, tenants, hosts, sessions, usage, json: ProtoJson::new() }
    }

    /// The routes, to merge with the gRPC services' router.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/api/health", get(health))
            .route("/api/openapi.json", get(openapi))
            .route("/api/tenants", post(create_tenant))
            .route("/api/tenants/me", get(get_my_tenant).delete(delete_my_tenant).post(restart_my_tenant))
            .route("/api/tenants/me/restart", post(restart_my_tenant))
            .route("/api/tenants/me/logs", get(my_tenant_logs))
            .route("/api/tenants/me/messages", post(send_message))
            .route("/api/tenants/me/subscription", get(my_subscription))
            .route("/api/tenants/me/plan", post(change_my_plan))
            .route("/api/hosts", get(list_hosts))
            .route("/api", any(no_such_route))
            .route("/api/{*rest}", any(no_such_route))
            .with_state(self)
    }
}

/// grpc-web for everything but the REST paths: tonic-web answers every
/// HTTP/1.1 request that is not grpc-web with an empty 400, which is what
/// the seed's `fetch` calls got before these routes existed.
#[derive(Clone, Default)]
pub struct GrpcWebBesideRestLayer;

impl<S: Clone> tower::Layer<S> for GrpcWebBesideRestLayer {
    type Service = GrpcWebBesideRest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcWebBesideRest { web: tower::Layer::layer(&tonic_web::GrpcWebLayer::new(), inner.clone()), plain: inner }
    }
}

#[derive(Clone)]
pub struct GrpcWebBesideRest<S> {
    web: tonic_web::GrpcWebService<S>,
    plain: S,
}

impl<S, B, R> tower::Service<Request<B>> for GrpcWebBesideRest<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + std::fmt::Display,
    R: hyper::body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError> + std::fmt::Display,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        <tonic_web::GrpcWebService<S> as tower::Service<Request<B>>>::poll_ready(&mut self.web, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.uri().path().starts_with("/api/") || request.uri().path() == "/api" {
            // The ready service is the grpc-web one; the plain clone is
            // called the way tower's `oneshot` would.
            let mut plain = self.plain.clone();
            return Box::pin(async move {
                futures::future::poll_fn(|cx| plain.poll_ready(cx)).await?;
                let response = plain.call(request.map(tonic::body::Body::new)).await?;
                Ok(response.map(tonic::body::Body::new))
            });
        }
        Box::pin(self.web.call(request))
    }
}

/// proto3 JSON from and to the generated messages, by the descriptor set.
struct ProtoJson {
    pool: DescriptorPool,
}

impl ProtoJson {
    fn new() -> Self {
        let pool = DescriptorPool::decode(clawplane_proto::FILE_DESCRIPTOR_SET)
            .expect("the contract's own descriptor set decodes");
        ProtoJson { pool }
    }

    fn to_json<M: prost::Message>(&self, name: &str, message: &M) -> serde_json::Value {
        let descriptor = self.pool.get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in the contract"));
        let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .unwrap_or_else(|err| panic!("{name} re-decodes: {err}"));
        let options = SerializeOptions::new().skip_default_fields(false);
        dynamic
            .serialize_with_options(serde_json::value::Serializer, &options)
            .unwrap_or_else(|err| panic!("{name} serialises: {err}"))
    }

    /// A request message from JSON; an unknown field or a wrong type is a
    /// 400 naming it.
    fn from_json<M: prost::Message + Default>(&self, name: &str, json: serde_json::Value) -> Result<M, Status> {
        let descriptor = self.pool.get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in the contract"));
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        let dynamic = DynamicMessage::deserialize_with_options(descriptor, json, &options)
            .map_err(|err| Status::invalid_argument(format!("request body: {err}")))?;
        dynamic.transcode_to::<M>().map_err(|err| Status::invalid_argument(format!("request body: {err}")))
    }
}

type Reply = Response<Body>;

fn json_reply(status: StatusCode, value: &serde_json::Value) -> Reply {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The one error shape: `{"code": "NOT_FOUND", "message": "..."}`.
fn error_reply(status: &Status) -> Reply {
    let code = ServiceErrorCode::from_grpc(status.code());
    let mut response =
        json_reply(code.http(), &serde_json::json!({"code": code.as_str(), "message": status.message()}));
    if let Some(wait) = status.metadata().get("retry-after").and_then(|v| v.to_str().ok()) {
        if let Ok(value) = HeaderValue::from_str(wait) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

fn reply_with(result: Result<serde_json::Value, Status>) -> Reply {
    match result {
        Ok(value) => json_reply(StatusCode::OK, &value),
        Err(status) => error_reply(&status),
    }
}

/// A gRPC request carrying what the API's layers put on the HTTP one
/// (the caller's identity, the deadline).
fn grpc_request<T>(parts: &http::request::Parts, message: T) -> tonic::Request<T> {
    tonic::Request::from_parts(
        tonic::metadata::MetadataMap::from_headers(parts.headers.clone()),
        parts.extensions.clone(),
        message,
    )
}

/// The query's parameters; a name not in `known` is a 400 naming it.
fn query(parts: &http::request::Parts, known: &[&str]) -> Result<Vec<(String, String)>, Status> {
    let pairs: Vec<(String, String)> =
        parts.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    if let Some((name, _)) = pairs.iter().find(|(name, _)| !known.contains(&name.as_str())) {
        let known = known.join(", ");
        return Err(Status::invalid_argument(format!(
            "unknown query parameter {name:?} (known: {})",
            if known.is_empty() { "none" } else { &known }
        )));
    }
    Ok(pairs)
}

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn number_param(pairs: &[(String, String)], name: &str) -> Result<i32, Status> {
    match param(pairs, name) {
        None | Some("") => Ok(0),
        Some(text) => {
            text.parse().map_err(|_| Status::invalid_argument(format!("{name} must be a whole number, not {text:?}")))
        }
    }
}

fn bool_param(pairs: &[(String, String)], name: &str) -> Result<bool, Status> {
    match param(pairs, name) {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(text) => Err(Status::invalid_argument(format!("{name} must be true or false, not {text:?}"))),
    }
}

/// The body as a JSON object (empty: `{}`), at most [`MAX_BODY_BYTES`].
async fn json_body(body: Body) -> Result<serde_json::Map<String, serde_json::Value>, Status> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| Status::invalid_argument(format!("the request body must be at most {MAX_BODY_BYTES} bytes")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(_) => Err(Status::invalid_argument("the request body must be a JSON object")),
        Err(err) => Err(Status::invalid_argument(format!("the request body is not JSON: {err}"))),
    }
}

/// The caller's own tenant id (of `team_id` when given), as GetMyTenant
/// finds it.
async fn my_tenant_id(api: &RestApi, parts: &http::request::Parts, team_id: &str) -> Result<String, Status> {
    let request = grpc_request(parts, GetMyTenantRequest { team_id: team_id.to_string() });
    let tenant = api.tenants.get_my_tenant(request).await?.into_inner().tenant;
    Ok(tenant.map(|t| t.id).unwrap_or_default())
}

async fn health(State(api): State<Arc<RestApi>>) -> Reply {
    match api.store.ping().await {
        Ok(()) => json_reply(StatusCode::OK, &serde_json::json!({"status": "SERVING"})),
        Err(_) => json_reply(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"status": "NOT_SERVING"})),
    }
}

async fn openapi() -> Reply {
    let mut response = Response::new(Body::from(OPENAPI));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn no_such_route(request: Request<Body>) -> Reply {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let shown: String = path.chars().take(100).collect();
    let status = if method == Method::OPTIONS {
        Status::invalid_argument("a CORS preflight needs an allowed Origin")
    } else {
        Status::not_found(format!("no REST route {method} {shown}; see /api/openapi.json"))
    };
    error_reply(&status)
}

/// `POST /api/tenants`: CreateTenant. The seed's body `{email, plan}` is
/// taken as is: `email`, when given, must be the caller's own.
async fn create_tenant(State(api): State<Arc<RestApi>>, request: Request<Body>) -> Reply {
    let (parts, body) = request.into_parts();
    let result = async {
        query(&parts, &[])?;
        let mut body = json_body(body).await?;
        if let Some(email) = body.remove("email") {
            let principal = super::request::caller(&grpc_request(&parts, ()))?;
            let own = principal.email.unwrap_or_default();
            if !email.as_str().is_some_and(|email| !own.is_empty() && email.eq_ignore_ascii_case(&own)) {
                return Err(Status::invalid_argument(
                    "email must be the caller's own (X-User-Email or the token's email), or left out",
                ));
            }
        }
        let message: CreateTenantRequest =
            api.json.from_json("clawplane.v1.CreateTenantRequest", serde_json::Value::Object(body))?;
        let response = api.tenants.create_tenant(grpc_request(&parts, message)).await?.into_inner();
        Ok(api.json.to_json("clawplane.v1.CreateTenantResponse", &response))
    }
    .await;
    reply_with(result)
}

/// `GET /api/tenants/me`: GetMyTenant.
async fn get_my_tenant(State(api): State<Arc<RestApi>>, request: Request<Body>) -> Reply {
    let (parts, _) = request.into_parts();
    let result = async {
        let pairs = query(&parts, &["team_id"])?;
        let message = GetMyTenantRequest { team_id: param(&pairs, "team_id").unwrap_or_default().to_string() };
        let response = api.tenants.get_my_tenant(grpc_request(&parts, message)).await?.into_inner();
        Ok(api.json.to_json("clawplane.v1.GetMyTenantResponse", &response))
    }
    .await;
    reply_with(result)
}

/// `DELETE /api/tenants/me`: DeleteTenant of the caller's tenant.
async fn delete_my_tenant(State(api): State<Arc<RestApi>>, request: Request<Body>) -> Reply {
    let (parts, _) = request.into_parts();
    let result = async {
        let pairs = query(&parts, &["team_id"])?;
        let tenant_id = my_tenant_id(&api, &parts, param(&pairs, "team_id").unwrap_or_default()).await?;
        let response =
            api.tenants.delete_tenant(grpc_request(&parts, DeleteTenantRequest { tenant_id })).await?.into_inner();
        Ok(api.json.to_json("clawplane.v1.DeleteTenantResponse", &response))
    }
    .await;
    reply_with(result)
}

/// `POST /api/tenants/me/restart` (and `POST /api/tenants/me`, as the
/// seed's table has it): RestartTenant, answered once the gateway is ready.
async fn restart_my_tenant(State(api): State<Arc<RestApi>>, request: Request<Body>) -> Reply {
    let (parts, body) = request.into_parts();
    let result = async {
        let pairs = query(&parts, &["team_id"])?;
        if !json_body(body).await?.is_empty() {
            return Err(Status::invalid_argument("restart takes no request body"));
        }
        let tenant_id = my_tenant_id(&api, &parts, param(&pairs, "team_id").unwrap_or_default()).await?;
        let response =
            api.tenants.restart_tenant(grpc_request(&parts, RestartTenantRequest { tenant_id })).await?.into_inner();
        Ok(api.json.to_json("clawplane.v1.RestartTenantResponse", &response))
    }
    .await;
    reply_with(result)
}

/// `GET /api/tenants/me/subscription`: GetSubscription of the caller's tenant.
async fn my_subscription(State(api): State<Arc<RestApi>>, request: Request<Body>) -> Reply {
    let (parts, _) = request.into_parts();
    let result = async {
        let pairs = query(&parts, &["team_id"])?;
        let tenant_id = my_tenant_id(&api, &parts, param(&pairs, "team_id").unwrap_or_default()).await?;
        let request = grpc_request(&parts, GetSubscriptionRequest { tenant_id });
        let response = api.usage.get_subscription(request).await?.into_inner();
        Ok(api.json.to_json("clawplane.v1.GetSubscriptionResponse", &response))
    }
    .await;
    reply_with(result)
}

/// `POST /api/tenants/me/plan` with `{"plan": "pro"}`: ChangePlan of the
/// caller's tenant.
async fn change_my_plan(State(api): State<Arc<RestApi>>, request: Request<Body>) -> Reply {
    let (parts, body) = request.into_parts();
    let result = async {
        let pairs = query(&parts, &["team_id"])?;
        let mut body = json_body(body).await?;
        let plan = match body.remove("plan") {
            Some(serde_json::Value::String(plan)) => plan,
            _ => return Err(Status::invalid_argument("the request body must be {\"plan\": \"<plan name>\"}")),
        };
        if let Some(other) = body.keys().next() {
            return Err(Status::invalid_argument(format!("unknown field {other:?} in the request body")));
        }
        let tenant_id = my_tenant_id(&api, &parts, param(&pairs, "team_id").unwrap_or_default()).await?;
        let response =
            api.usage.change_plan(grpc_request(&parts, ChangePlanRequest { tenant_id, plan })).await?.into_inner();
        Ok(api.json.to_json("clawplane.v1.ChangePlanResponse", &response))
    }
    .await;
    reply_with(result)
}

/// A stream as Server-Sent Events: each message is a `data:` event named
/// `event`; a failure is an `error` event with `{code, message}`, then
/// the end.
fn sse<S>(events: S) -> Reply
where
    S: Stream<Item = Result<(&'static str, serde_json::Value), Status>> + Send + 'static,
{
    let frames = events.scan(false, |ended, item| {
        if *ended {
            return std::future::ready(None);
        }
        let frame = match item {
            Ok((event, value)) => format!("event: {event}\ndata: {value}\n\n"),
            Err(status) => {
                *ended = true;
                let code = ServiceErrorCode::from_grpc(status.code());
                let value = serde_json::json!({"code": code.as_str(), "message": status.message()});
                format!("event: error\ndata: {value}\n\n")
            }
        };
        std::future::ready(Some(Ok::<Bytes, std::convert::Infallible>(Bytes::from(frame))))
    });
    let mut response = Response::new(Body::from_stream(frames));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /api/tenants/me/logs`: StreamTenantLogs of the caller's tenant:
/// the tail as `{"lines": [...]}`, or with `follow=true` the tail and then
/// new lines as `lines` events.
async fn my_tenant_logs(State(api): State<Arc<RestApi>>, request: Request<Body>) -> Reply {
    let (parts, _) = request.into_parts();
    let opened = async {
        let pairs = query(&parts, &["team_id", "tail_lines", "follow"])?;
        let (tail_lines, follow) = (number_param(&pairs, "tail_lines")?, bool_param(&pairs, "follow")?);
        let tenant_id = my_tenant_id(&api, &parts, param(&pairs, "team_id").unwrap_or_default()).await?;
        let message = StreamTenantLogsRequest { tenant_id, tail_lines, follow };
        let stream = api.tenants.stream_tenant_logs(grpc_request(&parts, message)).await?.into_inner();
        Ok::<_, Status>((stream, follow))
    }
    .await;
    let (mut stream, follow) = match opened {
        Ok(opened) => opened,
        Err(status) => return error_reply(&status),
    };
    if follow {
        let api = api.clone();
        return sse(stream.map(move |item| {
            item.map(|chunk| ("lines", api.json.to_json("clawplane.v1.StreamTenantLogsResponse", &chunk)))
        }));
    }
    let mut all = StreamTenantLogsResponse::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => all.lines.extend(chunk.lines),
            Err(status) => return error_reply(&status),
        }
    }
    json_reply(StatusCode::OK, &api.json.to_json("clawplane.v1.StreamTenantLogsResponse", &all))
}

/// `POST /api/tenants/me/messages`: SendMessage to the caller's tenant,
/// `{text, sessionKey?, agentId?}`, answered as `delta` events and a
/// `done` event.
async fn send_message(State(api): State<Arc<RestApi>>, request: Request<Body>) -> Reply {
    let (parts, body) = request.into_parts();
    let opened = async {
        let pairs = query(&parts, &["team_id"])?;
        let mut body = json_body(body).await?;
        if body.contains_key("tenantId") || body.contains_key("tenant_id") {
            return Err(Status::invalid_argument("the tenant is the caller's own; leave tenantId out"));
        }
        let tenant_id = my_tenant_id(&api, &parts, param(&pairs, "team_id").unwrap_or_default()).await?;
        body.insert("tenantId".into(), serde_json::Value::String(tenant_id));
        let message: SendMessageRequest =
            api.json.from_json("clawplane.v1.SendMessageRequest", serde_json::Value::Object(body))?;
        Ok::<_, Status>(api.sessions.send_message(grpc_request(&parts, message)).await?.into_inner())
    }
    .await;
    let stream = match opened {
        Ok(stream) => stream,
        Err(status) => return error_reply(&status),
    };
    sse(stream.map(move |item| {
        use clawplane_proto::v1::send_message_response::Event;
        item.map(|message| match message.event {
            Some(Event::Delta(delta)) => ("delta", api.json.to_json("clawplane.v1.TextDelta", &delta)),
            Some(Event::Done(done)) => ("done", api.json.to_json("clawplane.v1.TurnDone", &done)),
            None => ("empty", serde_json::json!({})),
        })
    }))
}

/// `GET /api/hosts`: ListHosts (operators).
async fn list_hosts(State(api): State<Arc<RestApi>>, request: Request<Body>) -> Reply {
    let (parts, _) = request.into_parts();
    let result = async {
        let pairs = query(&parts, &["page_size", "page_token"])?;
        let message = ListHostsRequest {
            page_size: number_param(&pairs, "page_size")?,
            page_token: param(&pairs, "page_token").unwrap_or_default().to_string(),
            ..Default::default()
        };
        let response = api.hosts.list_hosts(grpc_request(&parts, message)).await?.into_inner();
        Ok(api.json.to_json("clawplane.v1.ListHostsResponse", &response))
    }
    .await;
    reply_with(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_the_contracts_proto3_json_both_ways() {
        let json = ProtoJson::new();
        let request: CreateTenantRequest = json
            .from_json("clawplane.v1.CreateTenantRequest", serde_json::json!({"plan": "pro", "displayName": "Ann"}))
            .unwrap();
        assert_eq!((request.plan.as_str(), request.display_name.as_str()), ("pro", "Ann"));
        let err = json
            .from_json::<CreateTenantRequest>("clawplane.v1.CreateTenantRequest", serde_json::json!({"plna": "pro"}))
            .unwrap_err();
        assert!(err.message().contains("plna"), "{}", err.message());
        let logs = StreamTenantLogsResponse {
            lines: vec![clawplane_proto::v1::TenantLogLine {
                observed_at: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
                text: "ready".into(),
            }],
        };
        assert_eq!(
            json.to_json("clawplane.v1.StreamTenantLogsResponse", &logs),
            serde_json::json!({"lines": [{"observedAt": "1970-01-01T00:00:00Z", "text": "ready"}]})
        );
    }

    #[test]
    fn the_openapi_document_names_every_route() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let paths = document["paths"].as_object().expect("paths");
        let routes = [
            ("/api/health", "get"),
            ("/api/openapi.json", "get"),
            ("/api/tenants", "post"),
            ("/api/tenants/me", "get"),
            ("/api/tenants/me", "delete"),
            ("/api/tenants/me", "post"),
            ("/api/tenants/me/restart", "post"),
            ("/api/tenants/me/logs", "get"),
            ("/api/tenants/me/messages", "post"),
            ("/api/hosts", "get"),
            ("/api/tenants/me/subscription", "get"),
            ("/api/tenants/me/plan", "post"),
        ];
        for (path, method) in routes {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not documented");
        }
        assert_eq!(paths.len(), 10, "a documented path that is not routed: {:?}", paths.keys());
    }
}
