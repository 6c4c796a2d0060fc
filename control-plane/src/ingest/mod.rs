//! Ingestion of what host agents read from their tenants' OpenClaw state:
//! the `AgentService/Sync` stream. Each batch is validated, checked against
//! the tenants placed on the sending host, its transcript items stored in
//! one transaction, observed configs written after it (each an idempotent
//! upsert, so a retried batch repeats them harmlessly), and only then
//! acknowledged with the cursors the agent may persist. Metered model calls
//! (source METER) take the same path: checked here, stored idempotently by
//! call id with their counters, and the tenants whose usage moved are
//! handed to a [`UsageObserver`] (the fleet, which re-checks allowances)
//! before the ack. Batches
//! are handled one at a time per stream, in order, so a slow database slows
//! the agent down (its in-flight window fills) instead of growing memory.
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clawplane_proto::v1::{
    sync_record, Cursor, MessageRole, ModelApi, ModelCall, ModelCallOutcome, ObservedConfig, RejectedRecord,
    SessionMeta, SyncAck, SyncBatch, SyncRecord, SyncResponse, SyncSource, TokenUsage, TranscriptEvent,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use clawplane_edge::shutdown::ShutdownSignal;

use crate::service_error::{into_status, ServiceError, ServiceErrorCode};
use crate::store::{IngestItem, NewMessage, NewModelCall, SessionUpdate, Store, StoreError, Tokens};

/// Largest batch accepted; agents send at most this many records.
pub const MAX_BATCH_RECORDS: usize = 2_000;
/// Largest Sync message (one record may carry a multi-MiB event).
pub const MAX_SYNC_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
const MAX_ID_LEN: usize = 256;

/// Why a batch (and with it the stream) is refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    TooLarge(String),
    /// The host was removed while its stream was open.
    #[error("host_revoked: this host was removed from the control plane")]
    HostRemoved,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError for IngestError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            IngestError::TooLarge(_) => ServiceErrorCode::ResourceExhausted,
            IngestError::HostRemoved => ServiceErrorCode::PermissionDenied,
            IngestError::Store(err) => err.error_code(),
        }
    }
}

into_status!(IngestError);

/// Told, after a batch is stored and before it is acked, which tenants'
/// counted usage (messages or metered calls) moved.
#[tonic::async_trait]
pub trait UsageObserver: Send + Sync + 'static {
    async fn usage_changed(&self, tenant_ids: BTreeSet<String>);
}

/// Serves one host's Sync stream until the agent closes it, shutdown is
/// requested (between batches: the batches already read are stored and
/// acked first) or `removed` resolves (the stream ends with an error).
///
/// Two stages, so decoding and checking a batch overlaps with storing the
/// one before it: a reader decodes, checks and converts each batch, a
/// writer stores it and acks. They are joined by a one-slot channel, so at
/// most three batches (each bounded by [`MAX_BATCH_RECORDS`] and
/// [`MAX_SYNC_MESSAGE_BYTES`]) are held per stream, and acks keep the
/// order of the batches.
pub fn serve(
    store: Store,
    host_id: String,
    mut inbound: Streaming<clawplane_proto::v1::SyncRequest>,
    shutdown: ShutdownSignal,
    removed: impl std::future::Future<Output = ()> + Send + 'static,
    observer: Arc<dyn UsageObserver>,
) -> impl Stream<Item = Result<SyncResponse, Status>> {
    let (tx, rx) = mpsc::channel(4);
    let (prepared_tx, mut prepared_rx) = mpsc::channel::<Result<Prepared, IngestError>>(1);
    let mut reader = Reader { store: store.clone(), host_id: host_id.clone(), placed: HashSet::new() };
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        tokio::pin!(removed);
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                _ = stop.requested() => break,
                _ = &mut removed => {
                    let _ = prepared_tx.send(Err(IngestError::HostRemoved)).await;
                    break;
                }
            };
            let batch = match message {
                Ok(Some(request)) => match request.batch {
                    Some(batch) => batch,
                    None => continue,
                },
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(host = %reader.host_id, %status, "sync stream ended");
                    break;
                }
            };
            let prepared = reader.prepare(batch).await;
            let failed = prepared.is_err();
            if prepared_tx.send(prepared).await.is_err() || failed {
                break;
            }
        }
    });
    shutdown.spawn(async move {
        while let Some(prepared) = prepared_rx.recv().await {
            let reply = match prepared {
                Ok(prepared) => store_batch(&store, &host_id, prepared, observer.as_ref()).await,
                Err(err) => Err(err),
            };
            let reply = reply.map(|ack| SyncResponse { ack: Some(ack) }).map_err(Status::from);
            let failed = reply.is_err();
            if tx.send(reply).await.is_err() || failed {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

struct Reader {
    store: Store,
    host_id: String,
    /// Tenants placed on this host, refreshed when a record names another.
    placed: HashSet<String>,
}

/// A checked batch, ready to store.
struct Prepared {
    batch_id: String,
    received: usize,
    items: Vec<IngestItem>,
    calls: Vec<NewModelCall>,
    observed: Vec<(String, ObservedConfig)>,
    rejections: Vec<RejectedRecord>,
    committed_cursors: Vec<Cursor>,
    started: Instant,
}

impl Reader {
    async fn prepare(&mut self, batch: SyncBatch) -> Result<Prepared, IngestError> {
        if batch.records.len() > MAX_BATCH_RECORDS {
            return Err(IngestError::TooLarge(format!(
                "batch {} holds {} records; the limit is {MAX_BATCH_RECORDS}",
                batch.batch_id,
                batch.records.len()
            )));
        }
        let started = Instant::now();
        let named: HashSet<&str> = batch
            .records
            .iter()
            .map(|r| r.tenant_id.as_str())
            .chain(batch.cursors_to_ack_on_commit.iter().map(|c| c.tenant_id.as_str()))
            .collect();
        if named.iter().any(|t| !self.placed.contains(*t)) {
            self.placed = self.store.tenants_on_host(&self.host_id).await?.into_iter().map(|t| t.tenant.id).collect();
        }
        let received = batch.records.len();
        let mut items = Vec::with_capacity(received);
        let mut observed = Vec::new();
        let mut calls = Vec::new();
        let mut rejections = Vec::new();
        for (index, record) in batch.records.into_iter().enumerate() {
            let reject = |reason: &str, message: String| RejectedRecord {
                index: index as i32,
                reason: reason.to_string(),
                message,
            };
            if !self.placed.contains(&record.tenant_id) {
                rejections.push(reject(
                    "tenant_not_on_host",
                    format!("tenant {:?} is not placed on this host", record.tenant_id),
                ));
                continue;
            }
            match convert(record) {
                Ok(Converted::Item(item)) => items.push(item),
                Ok(Converted::Config(tenant_id, config)) => observed.push((tenant_id, config)),
                Ok(Converted::Call(call)) => calls.push(call),
                Ok(Converted::Nothing) => {}
                Err(message) => rejections.push(reject("invalid_record", message)),
            }
        }
        let committed_cursors =
            batch.cursors_to_ack_on_commit.into_iter().filter(|c| self.placed.contains(&c.tenant_id)).collect();
        Ok(Prepared {
            batch_id: batch.batch_id,
            received,
            items,
            calls,
            observed,
            rejections,
            committed_cursors,
            started,
        })
    }
}

/// Stores one checked batch in one transaction; the ack follows its commit.
async fn store_batch(
    store: &Store,
    host_id: &str,
    prepared: Prepared,
    observer: &dyn UsageObserver,
) -> Result<SyncAck, IngestError> {
    let Prepared { batch_id, received, items, calls, observed, rejections, committed_cursors, started } = prepared;
    let total = items.len();
    // Tenants with messages in the batch: their message counts may have moved.
    let messaged: BTreeSet<String> = items
        .iter()
        .filter_map(|item| match item {
            IngestItem::Message(m) => Some(m.tenant_id.clone()),
            IngestItem::Session(_) => None,
        })
        .collect();
    let outcome = store.ingest(items).await?;
    let metered = store.ingest_model_calls(host_id, calls).await?;
    let mut changed = metered.tenants;
    if outcome.inserted > 0 {
        changed.extend(messaged);
    }
    if !changed.is_empty() {
        observer.usage_changed(changed).await;
    }
    for (tenant_id, config) in observed {
        store.record_observed_config(&tenant_id, observed_json(&config)).await?;
    }
    for rejection in &rejections {
        tracing::warn!(host = %host_id, batch = %batch_id, index = rejection.index, reason = %rejection.reason, detail = %rejection.message, "sync record rejected");
    }
    tracing::debug!(
        host = %host_id,
        batch = %batch_id,
        items = total,
        inserted = outcome.inserted,
        duplicates = outcome.duplicates,
        calls = metered.inserted,
        duplicate_calls = metered.duplicates,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "sync batch committed"
    );
    let rejected = rejections.len() as i32;
    Ok(SyncAck { batch_id, committed_cursors, accepted: (received - rejections.len()) as i32, rejected, rejections })
}

enum Converted {
    Item(IngestItem),
    Call(NewModelCall),
    Config(String, ObservedConfig),
    /// A valid event that fills no table (session header, custom events).
    Nothing,
}

fn check_id(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_ID_LEN || value.chars().any(|c| c.is_control()) {
        return Err(format!("{what} {value:?} is longer than {MAX_ID_LEN} bytes or holds control characters"));
    }
    Ok(())
}

fn at(timestamp: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    timestamp.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32))
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn source_name(source: i32) -> Result<&'static str, String> {
    match SyncSource::try_from(source) {
        Ok(SyncSource::Sqlite) => Ok("sqlite"),
        Ok(SyncSource::Jsonl) => Ok("jsonl"),
        Ok(SyncSource::Config) => Ok("config"),
        Ok(SyncSource::Meter) => Ok("meter"),
        _ => Err(format!("unknown source {source}")),
    }
}

fn convert(record: SyncRecord) -> Result<Converted, String> {
    let source = source_name(record.source)?;
    if source == "meter" && !matches!(record.body, Some(sync_record::Body::ModelCall(_))) {
        return Err("a METER record must carry a model call".into());
    }
    if record.position < 0 {
        return Err(format!("position {} is negative", record.position));
    }
    match record.body {
        Some(sync_record::Body::ObservedConfig(config)) => Ok(Converted::Config(record.tenant_id, config)),
        Some(sync_record::Body::SessionMeta(meta)) => {
            check_id("session_id", &record.session_id)?;
            check_id("agent_id", &record.agent_id)?;
            Ok(Converted::Item(IngestItem::Session(session_update(
                record.tenant_id,
                record.session_id,
                record.agent_id,
                record.session_key,
                meta,
            ))))
        }
        Some(sync_record::Body::Event(event)) => {
            check_id("session_id", &record.session_id)?;
            check_id("agent_id", &record.agent_id)?;
            message(
                record.tenant_id,
                record.session_id,
                record.agent_id,
                record.session_key,
                record.position,
                source,
                event,
            )
        }
        Some(sync_record::Body::ModelCall(call)) => {
            if source != "meter" {
                return Err(format!("a model call must come from source METER, not {source}"));
            }
            model_call(record.tenant_id, record.position, call).map(Converted::Call)
        }
        None => Err("record has no body".into()),
    }
}

/// Most tokens of one kind a single call may report: far above any
/// model's context, so only nonsense is refused.
const MAX_CALL_TOKENS: i64 = 100_000_000;
/// Longest plausible call (a day), in ms.
const MAX_CALL_MS: i64 = 86_400_000;
/// Earliest plausible call: 2020-01-01T00:00:00Z.
const MIN_CALL_SECONDS: i64 = 1_577_836_800;
/// How far ahead of this clock a call may start (hosts' clocks drift).
const MAX_CLOCK_AHEAD_SECS: i64 = 3_600;

fn model_call(tenant_id: String, position: i64, call: ModelCall) -> Result<NewModelCall, String> {
    let call_id = uuid::Uuid::parse_str(&call.call_id)
        .map_err(|_| format!("call_id {:?} is not a UUID", call.call_id.chars().take(64).collect::<String>()))?;
    for (what, value) in [("provider", &call.provider), ("model", &call.model)] {
        if value.len() > MAX_ID_LEN || value.chars().any(|c| c.is_control()) {
            return Err(format!("{what} is longer than {MAX_ID_LEN} bytes or holds control characters"));
        }
    }
    for (what, value) in [
        ("input_tokens", call.input_tokens),
        ("output_tokens", call.output_tokens),
        ("cache_read_tokens", call.cache_read_tokens),
        ("cache_write_tokens", call.cache_write_tokens),
    ] {
        if !(0..=MAX_CALL_TOKENS).contains(&value) {
            return Err(format!("{what} {value} is outside 0..={MAX_CALL_TOKENS}"));
        }
    }
    for (what, value) in [("first_byte_ms", call.first_byte_ms), ("total_ms", call.total_ms)] {
        if !(0..=MAX_CALL_MS).contains(&value) {
            return Err(format!("{what} {value} is outside 0..={MAX_CALL_MS}"));
        }
    }
    if call.http_status > 999 {
        return Err(format!("http_status {} is not an HTTP status", call.http_status));
    }
    let outcome = match ModelCallOutcome::try_from(call.outcome) {
        Ok(ModelCallOutcome::Completed) => "completed",
        Ok(ModelCallOutcome::RefusedQuota) => "refused_quota",
        Ok(ModelCallOutcome::RefusedRate) => "refused_rate",
        Ok(ModelCallOutcome::RefusedInvalid) => "refused_invalid",
        Ok(ModelCallOutcome::UpstreamFailed) => "upstream_failed",
        Ok(ModelCallOutcome::Stalled) => "stalled",
        Ok(ModelCallOutcome::ClientGone) => "client_gone",
        _ => return Err(format!("unknown outcome {}", call.outcome)),
    };
    let api = match ModelApi::try_from(call.api) {
        Ok(ModelApi::OpenaiCompletions) => "openai-completions",
        Ok(ModelApi::OpenaiResponses) => "openai-responses",
        Ok(ModelApi::AnthropicMessages) => "anthropic-messages",
        // A call refused before its route was known may have none.
        _ => "",
    };
    let latest = Utc::now().timestamp() + MAX_CLOCK_AHEAD_SECS;
    let started_at = match call.started_at {
        None => return Err("started_at is missing".into()),
        Some(t) if t.seconds < MIN_CALL_SECONDS || t.seconds > latest => {
            return Err(format!("started_at {}s is not a plausible time for a call", t.seconds))
        }
        t => at(t).ok_or("started_at is not a valid time")?,
    };
    Ok(NewModelCall {
        tenant_id,
        call_id: call_id.hyphenated().to_string(),
        position,
        provider: call.provider,
        model: call.model,
        api,
        input_tokens: call.input_tokens,
        output_tokens: call.output_tokens,
        cache_read_tokens: call.cache_read_tokens,
        cache_write_tokens: call.cache_write_tokens,
        started_at,
        first_byte_ms: call.first_byte_ms,
        total_ms: call.total_ms,
        http_status: call.http_status as i32,
        outcome,
        streamed: call.streamed,
        platform_key: call.platform_key,
    })
}

fn session_update(
    tenant_id: String,
    session_id: String,
    agent_id: String,
    key: String,
    meta: SessionMeta,
) -> SessionUpdate {
    SessionUpdate {
        tenant_id,
        session_id,
        agent_id,
        session_key: non_empty(key),
        channel: non_empty(meta.channel),
        chat_type: non_empty(meta.chat_type),
        model: non_empty(meta.model),
        provider: non_empty(meta.provider),
        started_at: at(meta.started_at),
        last_activity_at: at(meta.last_activity_at),
    }
}

#[allow(clippy::too_many_arguments)]
fn message(
    tenant_id: String,
    session_id: String,
    agent_id: String,
    session_key: String,
    position: i64,
    source: &'static str,
    event: TranscriptEvent,
) -> Result<Converted, String> {
    let event_at = at(event.event_at);
    if event.event_type == "model_change" {
        // The session's current model, without a message.
        return Ok(Converted::Item(IngestItem::Session(SessionUpdate {
            tenant_id,
            session_id,
            agent_id,
            session_key: non_empty(session_key),
            model: non_empty(event.model),
            provider: non_empty(event.provider),
            last_activity_at: event_at,
            ..Default::default()
        })));
    }
    if event.event_type != "message" {
        return Ok(Converted::Nothing);
    }
    let role = match MessageRole::try_from(event.role) {
        Ok(MessageRole::User) => "user",
        Ok(MessageRole::Assistant) => "assistant",
        Ok(MessageRole::ToolResult) => "toolResult",
        Ok(MessageRole::System) => "system",
        _ => return Err(format!("message event {:?} has no role", event.event_id)),
    };
    // Stored as JSON text: checked, not built into a tree and printed again;
    // what is not JSON is stored as a JSON string.
    let raw = match event.raw_event_json {
        raw if raw.is_empty() => None,
        raw if serde_json::from_str::<serde::de::IgnoredAny>(&raw).is_ok() => Some(raw),
        raw => Some(serde_json::Value::String(raw).to_string()),
    };
    Ok(Converted::Item(IngestItem::Message(NewMessage {
        tenant_id,
        session_id,
        agent_id,
        session_key: non_empty(session_key),
        position,
        source,
        event_id: non_empty(event.event_id),
        role: role.to_string(),
        content: event.text,
        model: non_empty(event.model),
        provider: non_empty(event.provider),
        tokens: tokens(event.usage.unwrap_or_default()),
        created_at: event_at.unwrap_or_else(Utc::now),
        raw,
    })))
}

fn tokens(usage: TokenUsage) -> Tokens {
    Tokens {
        input: usage.input_tokens.max(0),
        output: usage.output_tokens.max(0),
        cache_read: usage.cache_read_tokens.max(0),
        cache_write: usage.cache_write_tokens.max(0),
        total: usage.total_tokens.max(0),
        cost_micros: if usage.cost.is_finite() { (usage.cost * 1e6).round().max(0.0) as i64 } else { 0 },
    }
}

fn observed_json(config: &ObservedConfig) -> serde_json::Value {
    let parsed: serde_json::Value =
        serde_json::from_str(&config.config_json).unwrap_or(serde_json::Value::String(config.config_json.clone()));
    serde_json::json!({
        "config": parsed,
        "content_hash": config.content_hash,
        "observed_at": at(config.observed_at).map(|t| t.to_rfc3339()),
    })
}
