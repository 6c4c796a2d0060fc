//! One conversation turn, relayed to a tenant's gateway: the control plane
//! reaches the host agent's tenant proxy as a bridge does (mutual TLS, a
//! `bridge:control-plane` identity it issues itself, one HTTP/2 connection
//! per host), the proxy adds the gateway's own token, and the gateway's
//! OpenAI-compatible `/v1/chat/completions` runs the turn and streams it as
//! server-sent events. One direction: request -> SSE -> [`TurnEvent`]s.
//! Dropping a [`Turn`] resets its HTTP/2 stream; the agent drops its
//! request to the gateway, which aborts the run.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clawplane_edge::agents::{authority, client_config, AgentConnector, AgentPool, Endpoints, UpstreamBody};
use clawplane_edge::forward::TENANT_HEADER;
use clawplane_tls::ReloadableIdentity;
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use super::streams::Fleet;
use crate::pki::Pki;
use crate::service_error::{into_status, ServiceError, ServiceErrorCode};

/// The name in the control plane's own tenant-proxy identity.
const IDENTITY_NAME: &str = "control-plane";
/// The identity lives only in memory; it is issued for this long and
/// replaced when half of it has passed.
const IDENTITY_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest answer relayed (every delta together), and the largest
/// stream read to get it: a gateway cannot make the control plane hold more.
const MAX_ANSWER_BYTES: usize = 4 << 20;
const MAX_STREAM_BYTES: usize = 16 << 20;
/// The most read of a refusal's body, for its message.
const MAX_ERROR_BODY: usize = 64 << 10;

/// What a tenant may have in flight and how long a silent gateway is
/// waited for.
#[derive(Debug, Clone, Copy)]
pub struct TurnLimits {
    pub per_tenant: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error("the tenant already has {0} turns in flight; wait for one to finish")]
    Busy(usize),
    /// The host, its proxy or the gateway is away, or the answer broke off.
    #[error("{0}")]
    Unavailable(String),
    /// The gateway refused the request as malformed (e.g. an agent it does
    /// not have).
    #[error("the tenant's gateway refused the turn: {0}")]
    Refused(String),
    #[error("the tenant's gateway is rate limiting: {0}")]
    RateLimited(String),
    /// The plan's allowance for the platform's model is used up (or the
    /// subscription ended): the turn would only be refused by the model.
    #[error("the tenant's model allowance is used up: {0}")]
    AllowanceUsedUp(String),
    #[error("the tenant's gateway sent nothing for {}s", .0.as_secs())]
    Idle(Duration),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError for TurnError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            TurnError::Busy(_) | TurnError::RateLimited(_) | TurnError::AllowanceUsedUp(_) => {
                ServiceErrorCode::ResourceExhausted
            }
            TurnError::Unavailable(_) => ServiceErrorCode::Unavailable,
            TurnError::Refused(_) => ServiceErrorCode::InvalidArgument,
            TurnError::Idle(_) => ServiceErrorCode::DeadlineExceeded,
            TurnError::Internal(_) => ServiceErrorCode::Internal,
        }
    }
}

into_status!(TurnError);

/// Tokens of one turn, as the gateway counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnTokens {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub total: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// The next piece of the answer.
    Delta(String),
    /// The answer is complete.
    Done { text: String, finish_reason: String, usage: Option<TurnTokens> },
}

/// What to ask, and of which gateway.
pub struct TurnRequest<'a> {
    pub tenant_id: &'a str,
    pub host_id: &'a str,
    pub agent_id: &'a str,
    pub session_key: &'a str,
    pub text: &'a str,
}

/// Connected hosts' proxy endpoints, from their hellos.
impl Endpoints for Fleet {
    fn endpoint_of(&self, host_id: &str) -> Option<String> {
        self.proxy_endpoint_of(host_id)
    }
}

pub struct TurnRelay {
    fleet: Arc<Fleet>,
    pki: Arc<Pki>,
    pool: AgentPool,
    identity: Arc<ReloadableIdentity>,
    issued: Mutex<Instant>,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    limits: TurnLimits,
}

impl TurnRelay {
    pub fn new(fleet: Arc<Fleet>, pki: Arc<Pki>, limits: TurnLimits) -> anyhow::Result<TurnRelay> {
        let (key, cert) = pki.issue_bridge_identity(IDENTITY_NAME, IDENTITY_TTL)?;
        let identity = ReloadableIdentity::from_pem(&cert, &key)?;
        let tls = client_config(pki.ca_pem(), identity.clone(), &[b"h2"])?;
        let pool = AgentPool::new(AgentConnector::new(tls, fleet.clone()));
        Ok(TurnRelay {
            fleet,
            pki,
            pool,
            identity,
            issued: Mutex::new(Instant::now()),
            in_flight: Arc::default(),
            limits,
        })
    }

    /// Sends the turn and waits for the gateway to accept it (the answer's
    /// head); the answer itself streams from the returned [`Turn`].
    pub async fn start(&self, turn: TurnRequest<'_>) -> Result<Turn, TurnError> {
        let slot = self.reserve(turn.tenant_id)?;
        let refused = self.fleet.model_calls_refused(turn.tenant_id).await;
        if let Some(reason) = refused.map_err(|err| TurnError::Internal(format!("{err:#}")))? {
            return Err(TurnError::AllowanceUsedUp(reason));
        }
        let proxy = self.fleet.connected_proxy(turn.host_id).await;
        let Some(proxy) = proxy.map_err(|err| TurnError::Internal(format!("{err:#}")))? else {
            return Err(TurnError::Unavailable("the tenant's host is not connected".into()));
        };
        if proxy.is_none() {
            return Err(TurnError::Unavailable(
                "the tenant's host serves no tenant proxy (its agent runs without one)".into(),
            ));
        }
        self.renew_identity();

        let response = self.pool.request(turn.host_id, chat_request(&turn)?).await.map_err(|err| {
            tracing::info!(tenant = %turn.tenant_id, host = %turn.host_id, error = %err, "turn: host unreachable");
            TurnError::Unavailable(format!("cannot reach the tenant's host: {err}"))
        })?;
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            let text = Limited::new(body, MAX_ERROR_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(refusal(parts.status, &text));
        }
        let mut seen = 0usize;
        let chunks = body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(|err| format!("the answer stream broke: {err}"))?;
            seen += chunk.len();
            if seen > MAX_STREAM_BYTES {
                return Err(format!("the answer stream passed {} MiB", MAX_STREAM_BYTES >> 20));
            }
            Ok::<Bytes, String>(chunk)
        });
        let state = Answer {
            events: Box::pin(chunks.eventsource()),
            text: String::new(),
            finish_reason: String::new(),
            usage: None,
            idle_timeout: self.limits.idle_timeout,
            finished: false,
        };
        Ok(Turn { events: Box::pin(futures::stream::unfold(state, Answer::next)), _slot: slot })
    }

    fn reserve(&self, tenant_id: &str) -> Result<TurnSlot, TurnError> {
        let mut in_flight = self.in_flight.lock().unwrap();
        let count = in_flight.entry(tenant_id.to_string()).or_default();
        if *count >= self.limits.per_tenant {
            return Err(TurnError::Busy(*count));
        }
        *count += 1;
        Ok(TurnSlot { in_flight: self.in_flight.clone(), tenant_id: tenant_id.to_string() })
    }

    /// A new certificate once half the old one's life has passed; open
    /// connections keep the one they were made with.
    fn renew_identity(&self) {
        let mut issued = self.issued.lock().unwrap();
        if issued.elapsed() < IDENTITY_TTL / 2 {
            return;
        }
        let renewed = self
            .pki
            .issue_bridge_identity(IDENTITY_NAME, IDENTITY_TTL)
            .and_then(|(key, cert)| self.identity.replace(&cert, &key));
        match renewed {
            Ok(()) => *issued = Instant::now(),
            Err(err) => tracing::error!(error = %err, "cannot renew the control plane's tenant-proxy identity"),
        }
    }
}

/// A streamed turn. It holds its tenant's in-flight slot until dropped.
pub struct Turn {
    events: Pin<Box<dyn Stream<Item = Result<TurnEvent, TurnError>> + Send>>,
    _slot: TurnSlot,
}

impl Stream for Turn {
    type Item = Result<TurnEvent, TurnError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

struct TurnSlot {
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    tenant_id: String,
}

impl Drop for TurnSlot {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap();
        if let Some(count) = in_flight.get_mut(&self.tenant_id) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.tenant_id);
            }
        }
    }
}

/// The streaming chat-completions request: one user message (the session
/// key carries the history), usage asked for, the agent named both ways
/// OpenClaw reads it.
fn chat_request(turn: &TurnRequest<'_>) -> Result<Request<UpstreamBody>, TurnError> {
    let body = serde_json::json!({
        "model": format!("openclaw/{}", turn.agent_id),
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": turn.text}],
    });
    let header = |value: &str| {
        HeaderValue::from_str(value).map_err(|_| TurnError::Internal(format!("{value:?} is not a header value")))
    };
    let body = Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}).boxed();
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    *request.uri_mut() = format!("https://{}/v1/chat/completions", authority(turn.host_id))
        .parse()
        .map_err(|err| TurnError::Internal(format!("host id {:?} makes no URI: {err}", turn.host_id)))?;
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
    headers.insert(TENANT_HEADER, header(turn.tenant_id)?);
    headers.insert("x-openclaw-session-key", header(turn.session_key)?);
    headers.insert("x-openclaw-agent-id", header(turn.agent_id)?);
    Ok(request)
}

/// What a refusal before the stream means. The gateway answers
/// `{"error": {"message"}}`; the agent's proxy plain text.
fn refusal(status: StatusCode, body: &[u8]) -> TurnError {
    #[derive(Deserialize)]
    struct Refusal {
        error: ErrorBody,
    }
    let message = serde_json::from_slice::<Refusal>(body)
        .map(|r| r.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string());
    let message: String = message.chars().take(500).collect();
    match status {
        StatusCode::BAD_REQUEST => TurnError::Refused(message),
        StatusCode::TOO_MANY_REQUESTS => TurnError::RateLimited(message),
        // Our token is the gateway's own: a refusal of it is our fault.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            TurnError::Internal(format!("the gateway refused its own token ({status}): {message}"))
        }
        _ => TurnError::Unavailable(format!("the tenant's gateway answered {status}: {message}")),
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

/// One `data:` event of the stream (OpenAI's `chat.completion.chunk`, or
/// OpenClaw's `{"error": ...}` when the run fails mid-stream).
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: i64,
    #[serde(default)]
    completion_tokens: i64,
    #[serde(default)]
    total_tokens: i64,
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: i64,
}

type SseEvents =
    Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, eventsource_stream::EventStreamError<String>>> + Send>>;

/// The answer as it streams: deltas out, the whole text kept for `Done`.
struct Answer {
    events: SseEvents,
    text: String,
    finish_reason: String,
    usage: Option<TurnTokens>,
    idle_timeout: Duration,
    finished: bool,
}

impl Answer {
    async fn next(mut self) -> Option<(Result<TurnEvent, TurnError>, Answer)> {
        if self.finished {
            return None;
        }
        let item = self.read().await;
        if !matches!(item, Ok(TurnEvent::Delta(_))) {
            self.finished = true;
        }
        Some((item, self))
    }

    async fn read(&mut self) -> Result<TurnEvent, TurnError> {
        let cut = |why: &str| TurnError::Unavailable(format!("{why}; the text so far is not a complete answer"));
        loop {
            let event = match tokio::time::timeout(self.idle_timeout, self.events.next()).await {
                Err(_) => return Err(TurnError::Idle(self.idle_timeout)),
                Ok(None) => return Err(cut("the gateway's answer ended before the turn was complete")),
                Ok(Some(Err(err))) => return Err(cut(&err.to_string())),
                Ok(Some(Ok(event))) => event,
            };
            if event.data.trim() == "[DONE]" {
                return Ok(TurnEvent::Done {
                    text: std::mem::take(&mut self.text),
                    finish_reason: std::mem::take(&mut self.finish_reason),
                    usage: self.usage,
                });
            }
            let chunk: Chunk = serde_json::from_str(&event.data)
                .map_err(|err| cut(&format!("the gateway sent an event that is not a chat chunk ({err})")))?;
            if let Some(error) = chunk.error {
                return Err(cut(&format!("the turn failed in the gateway: {}", error.message)));
            }
            if let Some(usage) = chunk.usage {
                self.usage = Some(TurnTokens {
                    input: usage.prompt_tokens,
                    output: usage.completion_tokens,
                    cache_read: usage.prompt_tokens_details.map(|d| d.cached_tokens).unwrap_or(0),
                    total: usage.total_tokens,
                });
            }
            let mut delta = String::new();
            for choice in chunk.choices {
                if let Some(reason) = choice.finish_reason {
                    self.finish_reason = reason;
                }
                delta.push_str(choice.delta.content.as_deref().unwrap_or_default());
            }
            if !delta.is_empty() {
                if self.text.len() + delta.len() > MAX_ANSWER_BYTES {
                    return Err(cut(&format!("the answer passed {} MiB", MAX_ANSWER_BYTES >> 20)));
                }
                self.text.push_str(&delta);
                return Ok(TurnEvent::Delta(delta));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &'static str) -> Answer {
        let chunks = futures::stream::iter([Ok::<Bytes, String>(Bytes::from_static(body.as_bytes()))]);
        Answer {
            events: Box::pin(chunks.eventsource()),
            text: String::new(),
            finish_reason: String::new(),
            usage: None,
            idle_timeout: Duration::from_secs(5),
            finished: false,
        }
    }

    async fn all(body: &'static str) -> Vec<Result<TurnEvent, String>> {
        futures::stream::unfold(answer(body), Answer::next).map(|r| r.map_err(|e| e.to_string())).collect().await
    }

    #[tokio::test]
    async fn an_answer_streams_as_deltas_then_done_with_the_whole_text() {
        let body = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":42,\"completion_tokens\":7,\"total_tokens\":49}}\n\n",
            "data: [DONE]\n\n",
        );
        let usage = TurnTokens { input: 42, output: 7, cache_read: 0, total: 49 };
        assert_eq!(
            all(body).await,
            vec![
                Ok(TurnEvent::Delta("Hel".into())),
                Ok(TurnEvent::Delta("lo".into())),
                Ok(TurnEvent::Done { text: "Hello".into(), finish_reason: "stop".into(), usage: Some(usage) }),
            ]
        );
    }

    #[tokio::test]
    async fn a_broken_answer_ends_in_an_error_never_in_done() {
        let table: [(&str, &'static str, &str); 4] = [
            (
                "an error event",
                "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"error\":{\"message\":\"model down\"}}\n\ndata: [DONE]\n\n",
                "the turn failed in the gateway: model down",
            ),
            ("a stream cut short", "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n", "ended before"),
            ("an event that is not JSON", "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: nonsense\n\n", "not a chat chunk"),
            ("nothing at all", "", "ended before"),
        ];
        for (what, body, expected) in table {
            let events = all(body).await;
            let last = events.last().unwrap();
            assert!(
                matches!(last, Err(m) if m.contains(expected) && m.contains("not a complete answer")),
                "{what}: {events:?}"
            );
            assert!(!events.iter().any(|e| matches!(e, Ok(TurnEvent::Done { .. }))), "{what}: {events:?}");
        }
    }

    #[test]
    fn refusals_say_what_the_gateway_said_in_the_right_class() {
        let table = [
            (
                400,
                "{\"error\":{\"message\":\"Unknown agent id \\\"x\\\".\"}}",
                ServiceErrorCode::InvalidArgument,
                "Unknown agent id",
            ),
            (429, "{\"error\":{\"message\":\"slow down\"}}", ServiceErrorCode::ResourceExhausted, "slow down"),
            (404, "tenant is not on this host\n", ServiceErrorCode::Unavailable, "tenant is not on this host"),
            (502, "the tenant's gateway is not answering\n", ServiceErrorCode::Unavailable, "not answering"),
            (401, "{\"error\":{\"message\":\"Unauthorized\"}}", ServiceErrorCode::Internal, "own token"),
        ];
        for (status, body, code, says) in table {
            let err = refusal(StatusCode::from_u16(status).unwrap(), body.as_bytes());
            assert_eq!(err.error_code(), code, "{status}: {err}");
            assert!(err.to_string().contains(says), "{status}: {err}");
        }
    }
}
