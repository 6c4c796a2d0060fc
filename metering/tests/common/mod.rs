//! What the meter's tests share: a meter on a test directory, routes to
//! the fake upstream, a plain HTTP/1.1 client, and the journal read back.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use clawplane_edge::shutdown::ShutdownSignal;
use clawplane_metering::{Meter, MeterSettings};
use clawplane_proto::v1::{ModelApi, ModelCall, ModelRoute};
pub use clawplane_test_kit::model_upstream::{ModelUpstream, UpstreamMode, UpstreamUsage};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const KEY: &str = "sk-upstream-SECRET-4242";
pub const MODEL: &str = "fake-model";

pub struct Running {
    pub meter: Meter,
    pub signal: ShutdownSignal,
}

impl Running {
    pub async fn stop(self) {
        assert!(self.signal.finish(Duration::from_secs(10)).await, "the meter stops");
    }
}

pub fn settings(dir: &Path) -> MeterSettings {
    let mut settings = MeterSettings::new(dir.to_path_buf());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.connect_timeout = Duration::from_secs(2);
    settings.max_request_bytes = 64 * 1024;
    settings
}

pub async fn start_with(settings: MeterSettings) -> Running {
    let signal = ShutdownSignal::default();
    let meter = Meter::start(settings, signal.handle()).await.expect("the meter starts");
    Running { meter, signal }
}

pub async fn start(dir: &Path) -> Running {
    start_with(settings(dir)).await
}

pub const APIS: [ModelApi; 3] = [ModelApi::OpenaiCompletions, ModelApi::OpenaiResponses, ModelApi::AnthropicMessages];

pub fn route(upstream: &ModelUpstream, api: ModelApi) -> ModelRoute {
    ModelRoute {
        provider: "prov".into(),
        api: api as i32,
        upstream_base_url: upstream.base_url(api == ModelApi::AnthropicMessages),
        api_key: KEY.as_bytes().to_vec(),
        models: vec![MODEL.into(), "other-model".into()],
        platform_key: true,
    }
}

/// The URL path OpenClaw's client appends to `baseUrl`.
pub fn call_path(api: ModelApi) -> &'static str {
    match api {
        ModelApi::OpenaiResponses => "/responses",
        ModelApi::AnthropicMessages => "/v1/messages",
        _ => "/chat/completions",
    }
}

/// A request body as OpenClaw's clients send it.
pub fn body(api: ModelApi, stream: bool) -> Value {
    match api {
        ModelApi::OpenaiResponses => serde_json::json!({"model": MODEL, "input": "hi", "stream": stream}),
        ModelApi::AnthropicMessages => serde_json::json!({"model": MODEL, "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}),
        _ => serde_json::json!({"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}),
    }
}

/// How a client presents a key in this format.
pub enum Auth<'a> {
    None,
    Key(&'a str),
    Raw(&'static str, String),
}

pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(url: &str, api: ModelApi, auth: Auth<'_>, body: Vec<u8>) -> Response<Incoming> {
    let mut request = Request::post(url).header("content-type", "application/json");
    if api == ModelApi::AnthropicMessages {
        request = request.header("anthropic-version", "2023-06-01");
    }
    request = match auth {
        Auth::None => request,
        Auth::Key(key) if api == ModelApi::AnthropicMessages => request.header("x-api-key", key),
        Auth::Key(key) => request.header("authorization", format!("Bearer {key}")),
        Auth::Raw(name, value) => request.header(name, value),
    };
    client().request(request.body(Full::new(Bytes::from(body))).unwrap()).await.expect("the meter answers")
}

/// A call through the meter, its whole answer.
pub async fn call(meter: &Meter, tenant: &str, api: ModelApi, body: &Value) -> (StatusCode, HeaderMap, Bytes) {
    let url = format!("{}{}", meter.provider_base_url(api), call_path(api));
    let credential = meter.credential(tenant);
    let response = send(&url, api, Auth::Key(&credential), body.to_string().into_bytes()).await;
    whole(response).await
}

pub async fn whole(response: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.expect("a whole answer").to_bytes())
}

/// The same call straight to the upstream, with the real key.
pub async fn direct(upstream: &ModelUpstream, api: ModelApi, body: &Value) -> (StatusCode, HeaderMap, Bytes) {
    let url = format!("{}{}", upstream.base_url(api == ModelApi::AnthropicMessages), call_path(api));
    whole(send(&url, api, Auth::Key(KEY), body.to_string().into_bytes()).await).await
}

/// Waits until the tenant's journal holds `count` records; returns them.
pub async fn records(meter: &Meter, tenant: &str, count: usize) -> Vec<(i64, ModelCall)> {
    let journal = meter.journal();
    let mut changes = journal.changes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = journal.read(tenant, 0, usize::MAX).expect("the journal reads");
        if records.len() >= count {
            assert_eq!(records.len(), count, "more records than calls: {records:?}");
            return records;
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => panic!("{count} records expected, {} written: {records:?}", records.len()),
        }
    }
}

/// The error message of an answer in any of the formats.
pub fn error_message(body: &[u8]) -> String {
    let value: Value = serde_json::from_slice(body).expect("an error body is JSON");
    value["error"]["message"].as_str().expect("error.message").to_string()
}

/// Until `check` holds (bounded, for what happens after an answer).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not happen");
}
