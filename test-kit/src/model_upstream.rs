//! A fake model provider on 127.0.0.1 that speaks the three formats
//! OpenClaw uses (OpenAI chat completions at `/v1/chat/completions`, OpenAI
//! responses at `/v1/responses`, Anthropic messages at `/v1/messages`),
//! streamed (SSE, when the request asks) or not, always with a usage block
//! of the counts it was given. It keeps every request it got, and can
//! stall, answer an error status, be slow to answer, or hold its stream
//! after the first event until the test releases it.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// The counts the upstream reports, as the meter should record them:
/// `input` is the uncached input (OpenAI's prompt count is reported as the
/// sum of the three input buckets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamUsage {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
}

impl Default for UpstreamUsage {
    fn default() -> Self {
        UpstreamUsage { input: 42, output: 7, cache_read: 5, cache_write: 3 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamMode {
    Normal,
    /// The first event (message_start for Anthropic, which carries the
    /// input counts), then nothing until the client goes away.
    StallAfterFirst,
    /// This status, with an error body in the format's shape.
    Status(u16),
    /// Waits this long before the answer's head.
    SlowFirstByte(Duration),
    /// The first event, then the rest once [`ModelUpstream::release`] is
    /// called (once per stream).
    Gated,
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl UpstreamRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

struct Shared {
    mode: Mutex<UpstreamMode>,
    usage: Mutex<UpstreamUsage>,
    words: Mutex<Vec<String>>,
    interval: Mutex<Duration>,
    requests: Mutex<Vec<UpstreamRequest>>,
    gate: tokio::sync::Semaphore,
    aborted: AtomicUsize,
    finished: AtomicUsize,
}

/// The fake provider; it serves as long as the test's runtime runs.
#[derive(Clone)]
pub struct ModelUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ModelUpstream {
    pub async fn start() -> ModelUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake model upstream");
        let shared = Arc::new(Shared {
            mode: Mutex::new(UpstreamMode::Normal),
            usage: Mutex::new(UpstreamUsage::default()),
            words: Mutex::new("pong from the fake model".split(' ').map(String::from).collect()),
            interval: Mutex::new(Duration::ZERO),
            requests: Mutex::default(),
            gate: tokio::sync::Semaphore::new(0),
            aborted: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
        });
        let upstream = ModelUpstream { addr: listener.local_addr().expect("local address"), shared };
        let serving = upstream.shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let _ = tcp.set_nodelay(true);
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| answer(shared.clone(), request));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        upstream
    }

    /// The route's `upstream_base_url` for a format (OpenClaw's `baseUrl`
    /// convention: OpenAI's with `/v1`, Anthropic's without).
    pub fn base_url(&self, anthropic: bool) -> String {
        if anthropic {
            format!("http://{}", self.addr)
        } else {
            format!("http://{}/v1", self.addr)
        }
    }

    pub fn set_mode(&self, mode: UpstreamMode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn set_usage(&self, usage: UpstreamUsage) {
        *self.shared.usage.lock().unwrap() = usage;
    }

    /// The answer's text, one streamed event per word.
    pub fn set_reply(&self, words: usize) {
        *self.shared.words.lock().unwrap() = (0..words).map(|i| format!("w{i}")).collect();
    }

    /// Pause between streamed events.
    pub fn set_interval(&self, interval: Duration) {
        *self.shared.interval.lock().unwrap() = interval;
    }

    pub fn requests(&self) -> Vec<UpstreamRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Lets one gated stream go on.
    pub fn release(&self) {
        self.shared.gate.add_permits(1);
    }

    /// Streams whose client went away before their end.
    pub fn aborted(&self) -> usize {
        self.shared.aborted.load(Ordering::SeqCst)
    }

    /// Streams sent to their last event.
    pub fn finished(&self) -> usize {
        self.shared.finished.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Chat,
    Responses,
    Anthropic,
}

type Answer = Response<ChannelBody>;

async fn answer(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Answer, hyper::Error> {
    use http_body_util::BodyExt;
    let path = request.uri().path().to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let bytes = request.into_body().collect().await?.to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    shared.requests.lock().unwrap().push(UpstreamRequest { path: path.clone(), headers, body: body.clone() });
    let format = if path.ends_with("/chat/completions") {
        Format::Chat
    } else if path.ends_with("/responses") {
        Format::Responses
    } else if path.ends_with("/messages") {
        Format::Anthropic
    } else {
        return Ok(whole(404, "application/json", json!({"error": {"message": "no such path"}}).to_string()));
    };
    let mode = shared.mode.lock().unwrap().clone();
    match mode {
        UpstreamMode::Status(status) => {
            let error = match format {
                Format::Anthropic => {
                    json!({"type": "error", "error": {"type": "api_error", "message": "fake failure"}})
                }
                _ => json!({"error": {"message": "fake failure", "type": "server_error", "code": null}}),
            };
            return Ok(whole(status, "application/json", error.to_string()));
        }
        UpstreamMode::SlowFirstByte(wait) => tokio::time::sleep(wait).await,
        _ => {}
    }
    let usage = *shared.usage.lock().unwrap();
    let words = shared.words.lock().unwrap().clone();
    let model = body["model"].as_str().unwrap_or("fake-model").to_string();
    if body["stream"].as_bool() != Some(true) {
        let text = words.join(" ");
        return Ok(whole(200, "application/json", plain_answer(format, &model, &text, usage).to_string()));
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let events = stream_events(format, &model, &words, usage, include_usage);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let interval = *shared.interval.lock().unwrap();
    tokio::spawn(async move {
        let gone = |shared: &Shared| {
            shared.aborted.fetch_add(1, Ordering::SeqCst);
        };
        for (i, event) in events.into_iter().enumerate() {
            if i == 1 {
                match mode {
                    UpstreamMode::StallAfterFirst => {
                        tx.closed().await;
                        return gone(&shared);
                    }
                    UpstreamMode::Gated => {
                        tokio::select! {
                            permit = shared.gate.acquire() => permit.expect("the gate stays open").forget(),
                            _ = tx.closed() => return gone(&shared),
                        }
                    }
                    _ => {}
                }
            }
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if tx.send(Bytes::from(event)).await.is_err() {
                return gone(&shared);
            }
        }
        shared.finished.fetch_add(1, Ordering::SeqCst);
    });
    let mut response = Response::new(ChannelBody::Stream(rx));
    response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    response.headers_mut().insert("cache-control", "no-cache".parse().unwrap());
    Ok(response)
}

fn whole(status: u16, content_type: &'static str, body: String) -> Answer {
    let mut response = Response::new(ChannelBody::Whole(Some(Bytes::from(body))));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert("content-type", content_type.parse().unwrap());
    response
}

fn openai_usage(u: UpstreamUsage) -> Value {
    json!({"prompt_tokens": u.input + u.cache_read + u.cache_write, "completion_tokens": u.output,
        "total_tokens": u.input + u.cache_read + u.cache_write + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write}})
}

fn responses_usage(u: UpstreamUsage) -> Value {
    json!({"input_tokens": u.input + u.cache_read + u.cache_write, "output_tokens": u.output,
        "total_tokens": u.input + u.cache_read + u.cache_write + u.output,
        "input_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write}})
}

fn plain_answer(format: Format, model: &str, text: &str, u: UpstreamUsage) -> Value {
    match format {
        Format::Chat => json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": openai_usage(u)}),
        Format::Responses => json!({"id": "resp_fake", "object": "response", "status": "completed", "model": model,
            "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
            "usage": responses_usage(u)}),
        Format::Anthropic => json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": u.input, "output_tokens": u.output,
                "cache_read_input_tokens": u.cache_read, "cache_creation_input_tokens": u.cache_write}}),
    }
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(event) => format!("event: {event}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// Every event of a streamed answer, in order; the first carries no text
/// for Anthropic (message_start, with the input counts).
fn stream_events(format: Format, model: &str, words: &[String], u: UpstreamUsage, include_usage: bool) -> Vec<String> {
    let mut events = Vec::new();
    match format {
        Format::Chat => {
            for (i, word) in words.iter().enumerate() {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": word})
                } else {
                    json!({"content": format!(" {word}")})
                };
                events.push(sse(
                    None,
                    &json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                    "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": null}]}),
                ));
            }
            events.push(sse(
                None,
                &json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            ));
            if include_usage {
                events.push(sse(
                    None,
                    &json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                    "model": model, "choices": [], "usage": openai_usage(u)}),
                ));
            }
            events.push("data: [DONE]\n\n".to_string());
        }
        Format::Responses => {
            events.push(sse(
                Some("response.created"),
                &json!({"type": "response.created",
                "response": {"id": "resp_fake", "status": "in_progress", "model": model, "usage": null}}),
            ));
            for word in words {
                events.push(sse(
                    Some("response.output_text.delta"),
                    &json!({"type": "response.output_text.delta", "item_id": "msg_fake", "delta": format!("{word} ")}),
                ));
            }
            events.push(sse(
                Some("response.completed"),
                &json!({"type": "response.completed",
                "response": {"id": "resp_fake", "status": "completed", "model": model, "usage": responses_usage(u)}}),
            ));
        }
        Format::Anthropic => {
            events.push(sse(
                Some("message_start"),
                &json!({"type": "message_start", "message": {"id": "msg_fake",
                "type": "message", "role": "assistant", "model": model, "content": [],
                "usage": {"input_tokens": u.input, "cache_read_input_tokens": u.cache_read,
                    "cache_creation_input_tokens": u.cache_write, "output_tokens": 1}}}),
            ));
            events.push(sse(
                Some("content_block_start"),
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            for word in words {
                events.push(sse(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": format!("{word} ")}}),
                ));
            }
            events.push(sse(Some("content_block_stop"), &json!({"type": "content_block_stop", "index": 0})));
            events.push(sse(
                Some("message_delta"),
                &json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": u.output}}),
            ));
            events.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
        }
    }
    events
}

/// A whole body, or events as the producer sends them.
pub enum ChannelBody {
    Whole(Option<Bytes>),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ChannelBody::Whole(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            ChannelBody::Stream(rx) => rx.poll_recv(cx).map(|event| event.map(|b| Ok(Frame::data(b)))),
        }
    }
}
