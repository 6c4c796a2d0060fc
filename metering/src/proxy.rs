//! One model call: who is calling (credential), whether they may (route,
//! model, allowance), the call forwarded with the real key, and its answer
//! passed back chunk by chunk while its usage is read on the side; the
//! call's record is written when it ends, however it ends.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use clawplane_edge::connections::InFlight as ConnectionInFlight;
use clawplane_proto::v1::{ModelCall, ModelCallOutcome};
use http::{header, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::allowance::{Allowances, Counted, InFlight};
use crate::api::{Api, X_API_KEY};
use crate::credential::Credentials;
use crate::error::CallError;
use crate::journal::Appender;
use crate::routes::Route;
use crate::upstream::Upstream;
use crate::usage::{self, SseUsage, Usage};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A plain JSON answer is kept on the side up to this for its usage.
const MAX_SIDE_BODY: usize = 8 << 20;

pub(crate) struct Proxy {
    pub credentials: Credentials,
    pub routes: RwLock<HashMap<String, Arc<Route>>>,
    pub allowances: Arc<Allowances>,
    pub appender: Appender,
    pub upstream: Upstream,
    pub stall_timeout: Duration,
    pub max_request_bytes: usize,
}

/// The fields of a request the proxy reads; the rest is passed as is.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<serde_json::Value>,
}

impl Proxy {
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        hold: ConnectionInFlight,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let called = (request.method() == Method::POST).then(|| Api::of_path(request.uri().path())).flatten();
        let Some((api, suffix)) = called else {
            let api =
                if request.uri().path().starts_with(crate::api::ANTHROPIC_BASE) { Api::Anthropic } else { Api::Chat };
            return CallError::NotFound.response(api);
        };
        let Some(tenant) = api.presented_key(request.headers()).and_then(|key| self.credentials.verify(key)) else {
            return CallError::Unauthenticated.response(api);
        };
        let mut log = CallLog::new(&self, tenant, api, started, started_at, hold);
        match self.call(api, suffix, request, &mut log).await {
            Ok(response) => response,
            Err(err) => {
                if let Some(outcome) = err.outcome() {
                    log.finish(outcome, err.status().as_u16() as u32, Usage::default(), 0, false);
                }
                err.response(api)
            }
        }
    }

    async fn call(
        &self,
        api: Api,
        suffix: &'static str,
        request: Request<Incoming>,
        log: &mut CallLog,
    ) -> Result<Response<ProxyBody>, CallError> {
        let route = self.routes.read().unwrap().get(&log.tenant).cloned().ok_or(CallError::NoRoute)?;
        log.call.provider = route.provider.clone();
        log.call.platform_key = route.platform_key;
        if route.api != api {
            return Err(CallError::WrongApi { route: route.api.name(), called: api.name() });
        }
        let (parts, body) = request.into_parts();
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_request_bytes as u64) {
            return Err(CallError::TooLarge { limit: self.max_request_bytes });
        }
        let body = match Limited::new(body, self.max_request_bytes).collect().await {
            Ok(body) => body.to_bytes(),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                return Err(CallError::TooLarge { limit: self.max_request_bytes })
            }
            Err(_) => return Err(CallError::BadRequest("the request body could not be read")),
        };
        let probe: Probe = serde_json::from_slice(&body)
            .map_err(|_| CallError::BadRequest("the request body is not a JSON object"))?;
        let model = probe.model.ok_or(CallError::BadRequest("the request names no model"))?;
        log.call.model = model.clone();
        if !route.models.contains(&model) {
            return Err(CallError::UnknownModel { model, allowed: route.models.clone() });
        }
        let stream = probe.stream == Some(true);
        let in_flight = self
            .allowances
            .admit(&log.tenant, route.platform_key, epoch_ms(log.started_at))
            .map_err(CallError::Refused)?;
        log.in_flight = Some(in_flight);
        let body = if api == Api::Chat && stream { with_usage_asked(body, probe.stream_options)? } else { body };

        let url = api.upstream_url(&route.base, suffix, parts.uri.query());
        let mut upstream = Request::builder().method(Method::POST).uri(url);
        let headers = upstream.headers_mut().expect("a fresh builder has headers");
        *headers = parts.headers;
        clawplane_edge::forward::strip_hop_by_hop(headers);
        // The tenant's credential never leaves; the route's key goes in
        // its place. Bodies go upstream uncompressed so usage can be read.
        for name in [header::HOST, header::AUTHORIZATION, X_API_KEY, header::CONTENT_LENGTH, header::COOKIE] {
            headers.remove(name);
        }
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        if let Some((name, value)) = &route.auth {
            headers.insert(name.clone(), value.clone());
        }
        let upstream =
            upstream.body(Full::new(body)).map_err(|_| CallError::BadRequest("the request has a bad header"))?;

        let response = match tokio::time::timeout(self.stall_timeout, self.upstream.request(upstream)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                tracing::debug!(tenant = %log.tenant, provider = %route.provider, error = %err, "model upstream failed");
                return Err(CallError::Unreachable);
            }
            Err(_) => return Err(CallError::UpstreamTimeout),
        };
        let first_byte_ms = log.started.elapsed().as_millis() as i64;
        let (mut parts, body) = response.into_parts();
        clawplane_edge::forward::strip_hop_by_hop(&mut parts.headers);
        let streamed = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let side = if streamed { Side::Sse(SseUsage::new(api)) } else { Side::Json(Vec::new()) };
        let metered = MeteredBody {
            upstream: body,
            side,
            api,
            stall: self.stall_timeout,
            timer: Box::pin(tokio::time::sleep(self.stall_timeout)),
            last_byte: tokio::time::Instant::now(),
            log: Some(std::mem::replace(log, CallLog::taken(log))),
            status: parts.status.as_u16() as u32,
            first_byte_ms,
            streamed,
        };
        Ok(Response::from_parts(parts, ProxyBody::Metered(metered)))
    }
}

fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Makes a streamed chat call end with a usage chunk: OpenAI sends one
/// only when `stream_options.include_usage` is true.
fn with_usage_asked(body: Bytes, options: Option<serde_json::Value>) -> Result<Bytes, CallError> {
    match options {
        Some(serde_json::Value::Object(ref o)) if o.get("include_usage") == Some(&serde_json::Value::Bool(true)) => {
            Ok(body)
        }
        None => {
            // Cheap and exact: a member before the others (the body is an
            // object, as the probe found).
            let open = body.iter().position(|&b| b == b'{').ok_or(CallError::BadRequest("not a JSON object"))?;
            let rest = &body[open + 1..];
            let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
            let member: &[u8] = if empty {
                br#""stream_options":{"include_usage":true}"#
            } else {
                br#""stream_options":{"include_usage":true},"#
            };
            let mut out = Vec::with_capacity(body.len() + member.len());
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(member);
            out.extend_from_slice(rest);
            Ok(Bytes::from(out))
        }
        Some(_) => {
            let mut value: serde_json::Value =
                serde_json::from_slice(&body).map_err(|_| CallError::BadRequest("not a JSON object"))?;
            let options = value
                .get_mut("stream_options")
                .and_then(|o| o.as_object_mut())
                .ok_or(CallError::BadRequest("stream_options must be an object"))?;
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            Ok(Bytes::from(value.to_string()))
        }
    }
}

/// A call's record in the making; written once, by `finish`, or on drop
/// (the call's future or body dropped: the client went away).
pub(crate) struct CallLog {
    appender: Appender,
    allowances: Arc<Allowances>,
    tenant: String,
    call: ModelCall,
    started: Instant,
    started_at: SystemTime,
    done: bool,
    in_flight: Option<InFlight>,
    _hold: Option<ConnectionInFlight>,
}

impl CallLog {
    fn new(
        proxy: &Proxy,
        tenant: String,
        api: Api,
        started: Instant,
        started_at: SystemTime,
        hold: ConnectionInFlight,
    ) -> Self {
        let since = started_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let mut call = ModelCall {
            call_id: uuid::Uuid::now_v7().to_string(),
            started_at: Some(prost_types::Timestamp {
                seconds: since.as_secs() as i64,
                nanos: since.subsec_nanos() as i32,
            }),
            ..Default::default()
        };
        call.set_api(api.proto());
        CallLog {
            appender: proxy.appender.clone(),
            allowances: proxy.allowances.clone(),
            tenant,
            call,
            started,
            started_at,
            done: false,
            in_flight: None,
            _hold: Some(hold),
        }
    }

    /// An empty stand-in left behind when the log moves into the body.
    fn taken(from: &CallLog) -> Self {
        CallLog {
            appender: from.appender.clone(),
            allowances: from.allowances.clone(),
            tenant: String::new(),
            call: ModelCall::default(),
            started: from.started,
            started_at: from.started_at,
            done: true,
            in_flight: None,
            _hold: None,
        }
    }

    fn finish(&mut self, outcome: ModelCallOutcome, status: u32, usage: Usage, first_byte_ms: i64, streamed: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut call = std::mem::take(&mut self.call);
        call.set_outcome(outcome);
        call.http_status = status;
        call.input_tokens = usage.input;
        call.output_tokens = usage.output;
        call.cache_read_tokens = usage.cache_read;
        call.cache_write_tokens = usage.cache_write;
        call.first_byte_ms = first_byte_ms;
        call.total_ms = self.started.elapsed().as_millis() as i64;
        call.streamed = streamed;
        let counted = Counted {
            tokens: usage.tokens(),
            message: outcome == ModelCallOutcome::Completed,
            platform_key: call.platform_key,
            started_ms: epoch_ms(self.started_at),
        };
        self.allowances.ended(&self.tenant, &call.call_id, counted);
        self.appender.append(&self.tenant, call);
        self.in_flight = None;
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        self.finish(ModelCallOutcome::ClientGone, 0, Usage::default(), 0, false);
    }
}

enum Side {
    Sse(SseUsage),
    /// The answer so far, for its usage at the end; None once too large.
    Json(Vec<u8>),
}

/// The upstream's answer on its way to the client, unchanged and
/// unbuffered, with a stall timer and the usage read on the side.
pub(crate) struct MeteredBody {
    upstream: Incoming,
    side: Side,
    api: Api,
    stall: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    last_byte: tokio::time::Instant,
    log: Option<CallLog>,
    status: u32,
    first_byte_ms: i64,
    streamed: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the model provider sent nothing for {0:?}; the answer was cut")]
struct Stalled(Duration);

impl MeteredBody {
    fn usage(&self) -> Usage {
        match &self.side {
            Side::Sse(parser) => parser.usage(),
            Side::Json(body) => usage::from_body(self.api, body).unwrap_or_default(),
        }
    }

    fn finish(&mut self, outcome: ModelCallOutcome) {
        let usage = self.usage();
        if let Some(mut log) = self.log.take() {
            log.finish(outcome, self.status, usage, self.first_byte_ms, self.streamed);
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        if self.log.is_some() {
            self.finish(ModelCallOutcome::ClientGone);
        }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.log.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.upstream).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.last_byte = tokio::time::Instant::now();
                    match &mut this.side {
                        Side::Sse(parser) => parser.feed(data),
                        Side::Json(body) if body.len() + data.len() <= MAX_SIDE_BODY => body.extend_from_slice(data),
                        Side::Json(_) => {}
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish(ModelCallOutcome::UpstreamFailed);
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                this.finish(ModelCallOutcome::Completed);
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                // The timer is re-armed only when it fires: a byte moves
                // `last_byte`, not the timer.
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let deadline = this.last_byte + this.stall;
                if deadline > tokio::time::Instant::now() {
                    this.timer.as_mut().reset(deadline);
                    continue;
                }
                this.finish(ModelCallOutcome::Stalled);
                return Poll::Ready(Some(Err(Box::new(Stalled(this.stall)))));
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.log.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.upstream.size_hint()
    }
}

/// What the proxy answers with: its own short answers, or an upstream's.
/// Not boxed: a call's body is moved once, and a box would cost every call
/// an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ProxyBody {
    Full(Full<Bytes>),
    Metered(MeteredBody),
}

impl From<Full<Bytes>> for ProxyBody {
    fn from(body: Full<Bytes>) -> Self {
        ProxyBody::Full(body)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(body) => Pin::new(body).poll_frame(cx).map_err(|never| match never {}),
            ProxyBody::Metered(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(body) => body.is_end_stream(),
            ProxyBody::Metered(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(body) => body.size_hint(),
            ProxyBody::Metered(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_usage_is_asked_for_without_touching_the_rest() {
        let asked = |body: &str, options| {
            String::from_utf8(with_usage_asked(Bytes::from(body.to_string()), options).unwrap().to_vec()).unwrap()
        };
        assert_eq!(
            asked(r#" {"model":"m","stream":true}"#, None),
            r#" {"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        assert_eq!(asked("{ }", None), r#"{"stream_options":{"include_usage":true} }"#);
        let already = r#"{"stream_options":{"include_usage":true}}"#;
        assert_eq!(asked(already, Some(serde_json::json!({"include_usage": true}))), already);
        let off: serde_json::Value = serde_json::from_str(&asked(
            r#"{"stream_options":{"include_usage":false,"x":1}}"#,
            Some(serde_json::json!({"include_usage": false})),
        ))
        .unwrap();
        assert_eq!(off["stream_options"], serde_json::json!({"include_usage": true, "x": 1}));
    }
}
