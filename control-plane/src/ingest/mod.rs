//! Ingestion of what host agents read from their tenants' OpenClaw state:
//! the `AgentService/Sync` stream. Each batch is validated, checked against
//! the tenants placed on the sending host, its transcript items stored in
//! one transaction, observed configs written after it (each an idempotent
//! upsert, so a retried batch repeats them harmlessly), and only then
//! acknowledged with the cursors the agent may persist. Batches
//! are handled one at a time per stream, in order, so a slow database slows
//! the agent down (its in-flight window fills) instead of growing memory.
use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clawplane_proto::v1::{
    sync_record, Cursor, MessageRole, ObservedConfig, RejectedRecord, SessionMeta, SyncAck, SyncBatch, SyncRecord,
    SyncResponse, SyncSource, TokenUsage, TranscriptEvent,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use clawplane_edge::shutdown::ShutdownSignal;

use crate::service_error::{into_status, ServiceError, ServiceErrorCode};
use crate::store::{IngestItem, NewMessage, SessionUpdate, Store, StoreError, Tokens};

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError for IngestError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            IngestError::TooLarge(_) => ServiceErrorCode::ResourceExhausted,
            IngestError::Store(err) => err.error_code(),
        }
    }
}

into_status!(IngestError);

/// Serves one host's Sync stream until the agent closes it or shutdown is
/// requested (between batches: the batches already read are stored and
/// acked first).
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
) -> impl Stream<Item = Result<SyncResponse, Status>> {
    let (tx, rx) = mpsc::channel(4);
    let (prepared_tx, mut prepared_rx) = mpsc::channel::<Result<Prepared, IngestError>>(1);
    let mut reader = Reader { store: store.clone(), host_id: host_id.clone(), placed: HashSet::new() };
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                _ = stop.requested() => break,
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
                Ok(prepared) => store_batch(&store, &host_id, prepared).await,
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
                Ok(Converted::Nothing) => {}
                Err(message) => rejections.push(reject("invalid_record", message)),
            }
        }
        let committed_cursors =
            batch.cursors_to_ack_on_commit.into_iter().filter(|c| self.placed.contains(&c.tenant_id)).collect();
        Ok(Prepared { batch_id: batch.batch_id, received, items, observed, rejections, committed_cursors, started })
    }
}

/// Stores one checked batch in one transaction; the ack follows its commit.
async fn store_batch(store: &Store, host_id: &str, prepared: Prepared) -> Result<SyncAck, IngestError> {
    let Prepared { batch_id, received, items, observed, rejections, committed_cursors, started } = prepared;
    let total = items.len();
    let outcome = store.ingest(items).await?;
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
        elapsed_ms = started.elapsed().as_millis() as u64,
        "sync batch committed"
    );
    let rejected = rejections.len() as i32;
    Ok(SyncAck { batch_id, committed_cursors, accepted: (received - rejections.len()) as i32, rejected, rejections })
}

enum Converted {
    Item(IngestItem),
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
        _ => Err(format!("unknown source {source}")),
    }
}

fn convert(record: SyncRecord) -> Result<Converted, String> {
    let source = source_name(record.source)?;
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
        None => Err("record has no body".into()),
    }
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
