//! Synced conversations: sessions, messages and the usage counters derived
//! from them. Ingestion is idempotent on the messages' natural key
//! (tenant, session, position) and on (tenant, session, event id): a
//! redelivered batch inserts nothing, and counters move only by the rows a
//! batch really inserted, in the same transaction, so at-least-once delivery
//! gives exactly-once totals.
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use sea_orm::sea_query::{Expr, OnConflict, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait,
};

use super::entities::{message, session, session_stat, usage};
use super::{Store, StoreResult};

/// Rows per multi-row INSERT (SQLite): well under its bind-parameter limit.
const INSERT_CHUNK: usize = 500;
/// Rows per UNNEST insert (PostgreSQL): 17 parameters whatever the count;
/// a whole batch of the Sync stream is one statement.
const UNNEST_CHUNK: usize = 5_000;
/// Channel recorded when OpenClaw has none for a session.
pub const UNKNOWN_CHANNEL: &str = "unknown";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
    pub total: i64,
    pub cost_micros: i64,
}

impl Tokens {
    fn add(&mut self, other: &Tokens) {
        self.input += other.input;
        self.output += other.output;
        self.cache_read += other.cache_read;
        self.cache_write += other.cache_write;
        self.total += other.total;
        self.cost_micros += other.cost_micros;
    }
}

/// Session metadata as read on the host (a `session_windows` row or a
/// legacy `sessions.json` entry). `None` leaves the stored value alone.
#[derive(Debug, Clone, Default)]
pub struct SessionUpdate {
    pub tenant_id: String,
    pub session_id: String,
    pub agent_id: String,
    pub session_key: Option<String>,
    pub channel: Option<String>,
    pub chat_type: Option<String>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub last_activity_at: Option<DateTime<Utc>>,
}

/// One transcript message.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub tenant_id: String,
    pub session_id: String,
    pub agent_id: String,
    pub session_key: Option<String>,
    pub position: i64,
    pub source: &'static str,
    pub event_id: Option<String>,
    /// "user", "assistant", "toolResult" or "system".
    pub role: String,
    pub content: String,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub tokens: Tokens,
    pub created_at: DateTime<Utc>,
    /// The event as it was read, as JSON text.
    pub raw: Option<String>,
}

impl NewMessage {
    /// User and assistant messages are what plans count and bill.
    fn is_billable(&self) -> bool {
        self.role == "user" || self.role == "assistant"
    }
}

#[derive(Debug, Clone)]
pub enum IngestItem {
    Session(SessionUpdate),
    Message(NewMessage),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Messages stored by this call.
    pub inserted: usize,
    /// Messages that were already stored (redelivery).
    pub duplicates: usize,
}

fn day(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

fn month_start(date: NaiveDate) -> NaiveDate {
    date.with_day(1).unwrap_or(date)
}

pub fn day_start(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
}

type SessionKey = (String, String);

/// What one batch changes in one session.
#[derive(Default)]
struct SessionDelta {
    update: SessionUpdate,
    messages: i64,
    tokens: Tokens,
}

/// Counters of one (tenant, day, channel) from one batch.
#[derive(Default)]
struct StatDelta {
    sessions: i64,
    messages: i64,
    response_ms: i64,
    responses: i64,
}

impl Store {
    /// Stores one batch in one transaction and returns what was new.
    /// Items apply in order, so metadata ahead of its messages gives those
    /// messages their channel.
    pub async fn ingest(&self, items: Vec<IngestItem>) -> StoreResult<IngestOutcome> {
        let txn = self.db.begin().await?;
        let backend = self.db.get_database_backend();
        let mut deltas: BTreeMap<SessionKey, SessionDelta> = BTreeMap::new();
        let mut messages = Vec::new();
        for item in items {
            match item {
                IngestItem::Session(update) => {
                    let delta = deltas.entry((update.tenant_id.clone(), update.session_id.clone())).or_default();
                    merge_update(&mut delta.update, update);
                }
                IngestItem::Message(message) => {
                    // The session must exist; its activity moves only by the
                    // messages actually inserted (below).
                    let delta = deltas.entry((message.tenant_id.clone(), message.session_id.clone())).or_default();
                    merge_update(
                        &mut delta.update,
                        SessionUpdate {
                            tenant_id: message.tenant_id.clone(),
                            session_id: message.session_id.clone(),
                            agent_id: message.agent_id.clone(),
                            session_key: message.session_key.clone(),
                            ..Default::default()
                        },
                    );
                    messages.push(message);
                }
            }
        }

        // Sessions first: a new one is known exactly by its insert.
        let created = insert_new_sessions(&txn, backend, &deltas).await?;
        let existing = load_sessions(&txn, &deltas).await?;

        let mut inserted = insert_messages(&txn, backend, &messages).await?;
        let outcome = IngestOutcome { inserted: inserted.len(), duplicates: messages.len() - inserted.len() };

        // Counters move only by what was inserted now.
        let mut usage_rows: BTreeMap<(String, &'static str, NaiveDate), (i64, Tokens)> = BTreeMap::new();
        let mut stats: BTreeMap<(String, NaiveDate, String), StatDelta> = BTreeMap::new();
        let mut by_session: BTreeMap<SessionKey, Vec<&NewMessage>> = BTreeMap::new();
        for message in &messages {
            by_session.entry((message.tenant_id.clone(), message.session_id.clone())).or_default().push(message);
        }
        for (key, mut session_messages) in by_session {
            session_messages.sort_by_key(|m| m.position);
            let channel = existing
                .get(&key)
                .and_then(|s| s.channel.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| UNKNOWN_CHANNEL.to_string());
            // The message before this batch's first, for response times and
            // for whether a day's activity is new.
            let first = session_messages[0].position;
            let mut previous: Option<(String, DateTime<Utc>)> = message::Entity::find()
                .filter(message::Column::TenantId.eq(&key.0))
                .filter(message::Column::SessionId.eq(&key.1))
                .filter(message::Column::Position.lt(first))
                .order_by(message::Column::Position, Order::Desc)
                .limit(1)
                .one(&txn)
                .await?
                .map(|m| (m.role, m.created_at));
            let delta = deltas.entry(key.clone()).or_default();
            for message in session_messages {
                // Taken out once counted: a position twice in one batch was
                // stored once (its first occurrence, which sorts first).
                let is_new = inserted.remove(&(key.0.clone(), key.1.clone(), message.position));
                if is_new {
                    delta.messages += 1;
                    delta.tokens.add(&message.tokens);
                    merge_update(
                        &mut delta.update,
                        SessionUpdate {
                            model: message.model.clone(),
                            provider: message.provider.clone(),
                            started_at: Some(message.created_at),
                            last_activity_at: Some(message.created_at),
                            ..Default::default()
                        },
                    );
                    let date = day(message.created_at);
                    let stat = stats.entry((key.0.clone(), date, channel.clone())).or_default();
                    if previous.as_ref().is_none_or(|(_, at)| day(*at) < date) {
                        stat.sessions += 1;
                    }
                    if message.is_billable() {
                        stat.messages += 1;
                        for (kind, start) in [("day", date), ("month", month_start(date))] {
                            let row = usage_rows.entry((key.0.clone(), kind, start)).or_default();
                            row.0 += 1;
                            row.1.add(&message.tokens);
                        }
                    } else {
                        for (kind, start) in [("day", date), ("month", month_start(date))] {
                            usage_rows.entry((key.0.clone(), kind, start)).or_default().1.add(&message.tokens);
                        }
                    }
                    if message.role == "assistant" {
                        if let Some(("user", asked_at)) = previous.as_ref().map(|(r, at)| (r.as_str(), *at)) {
                            stat.response_ms += (message.created_at - asked_at).num_milliseconds().max(0);
                            stat.responses += 1;
                        }
                    }
                }
                previous = Some((message.role.clone(), message.created_at));
            }
        }
        for (key, delta) in &deltas {
            let was_new = created.contains(key);
            update_session(&txn, key, delta, existing.get(key), was_new).await?;
        }
        for ((tenant_id, kind, start), (count, tokens)) in usage_rows {
            add_usage(&txn, &tenant_id, kind, start, count, &tokens).await?;
        }
        for ((tenant_id, date, channel), stat) in stats {
            add_stats(&txn, &tenant_id, date, &channel, &stat).await?;
        }
        txn.commit().await?;
        Ok(outcome)
    }

    /// Sessions of a tenant, most recent activity first, after the page
    /// cursor `(last_activity_at, session_id)`.
    pub async fn list_sessions(&self, filter: &SessionFilter, limit: u64) -> StoreResult<Vec<session::Model>> {
        let mut query = session::Entity::find().filter(session::Column::TenantId.eq(&filter.tenant_id));
        if let Some(channel) = &filter.channel {
            query = query.filter(session::Column::Channel.eq(channel));
        }
        if let Some(agent_id) = &filter.agent_id {
            query = query.filter(session::Column::AgentId.eq(agent_id));
        }
        if let Some(after) = filter.active_after {
            query = query.filter(session::Column::LastActivityAt.gte(after));
        }
        if let Some(before) = filter.active_before {
            query = query.filter(session::Column::LastActivityAt.lt(before));
        }
        if let Some((at, id)) = &filter.page_after {
            query = query.filter(
                sea_orm::Condition::any().add(session::Column::LastActivityAt.lt(*at)).add(
                    sea_orm::Condition::all()
                        .add(session::Column::LastActivityAt.eq(*at))
                        .add(session::Column::SessionId.lt(id.as_str())),
                ),
            );
        }
        Ok(query
            .order_by(session::Column::LastActivityAt, Order::Desc)
            .order_by(session::Column::SessionId, Order::Desc)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    pub async fn session(&self, tenant_id: &str, session_id: &str) -> StoreResult<Option<session::Model>> {
        Ok(session::Entity::find_by_id((tenant_id.to_string(), session_id.to_string())).one(&self.db).await?)
    }

    /// The tenant's current session under a session key (OpenClaw starts a
    /// new session id under the same key after a reset: the latest wins).
    pub async fn session_by_key(&self, tenant_id: &str, session_key: &str) -> StoreResult<Option<session::Model>> {
        Ok(session::Entity::find()
            .filter(session::Column::TenantId.eq(tenant_id))
            .filter(session::Column::SessionKey.eq(session_key))
            .order_by(session::Column::LastActivityAt, Order::Desc)
            .one(&self.db)
            .await?)
    }

    /// Messages of a session in transcript order, after `after_position`.
    pub async fn list_messages(
        &self,
        tenant_id: &str,
        session_id: &str,
        after_position: Option<i64>,
        limit: u64,
    ) -> StoreResult<Vec<message::Model>> {
        let mut query = message::Entity::find()
            .filter(message::Column::TenantId.eq(tenant_id))
            .filter(message::Column::SessionId.eq(session_id));
        if let Some(after) = after_position {
            query = query.filter(message::Column::Position.gt(after));
        }
        Ok(query.order_by(message::Column::Position, Order::Asc).limit(limit).all(&self.db).await?)
    }

    /// Usage rows of one period kind ("day" or "month") in [from, to).
    pub async fn usage_rows(
        &self,
        tenant_id: &str,
        kind: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<usage::Model>> {
        Ok(usage::Entity::find()
            .filter(usage::Column::TenantId.eq(tenant_id))
            .filter(usage::Column::PeriodKind.eq(kind))
            .filter(usage::Column::PeriodStart.gte(from.to_string()))
            .filter(usage::Column::PeriodStart.lt(to.to_string()))
            .order_by(usage::Column::PeriodStart, Order::Asc)
            .all(&self.db)
            .await?)
    }

    /// Per-day, per-channel counters in [from, to).
    pub async fn session_stats(
        &self,
        tenant_id: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<session_stat::Model>> {
        Ok(session_stat::Entity::find()
            .filter(session_stat::Column::TenantId.eq(tenant_id))
            .filter(session_stat::Column::Day.gte(from.to_string()))
            .filter(session_stat::Column::Day.lt(to.to_string()))
            .all(&self.db)
            .await?)
    }

    /// Sessions per channel with activity at or after `since`.
    pub async fn active_sessions_by_channel(
        &self,
        tenant_id: &str,
        since: DateTime<Utc>,
    ) -> StoreResult<HashMap<String, i64>> {
        let rows: Vec<(Option<String>, i64)> = session::Entity::find()
            .select_only()
            .column(session::Column::Channel)
            .column_as(session::Column::SessionId.count(), "count")
            .filter(session::Column::TenantId.eq(tenant_id))
            .filter(session::Column::LastActivityAt.gte(since))
            .group_by(session::Column::Channel)
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut out = HashMap::new();
        for (channel, count) in rows {
            let channel = channel.filter(|c| !c.is_empty()).unwrap_or_else(|| UNKNOWN_CHANNEL.to_string());
            *out.entry(channel).or_default() += count;
        }
        Ok(out)
    }

    /// How many messages are stored for a tenant (tests and the bench).
    pub async fn message_count(&self, tenant_id: &str) -> StoreResult<u64> {
        use sea_orm::PaginatorTrait;
        Ok(message::Entity::find().filter(message::Column::TenantId.eq(tenant_id)).count(&self.db).await?)
    }

    /// A session's message counter (0 for an unknown session): it moves in
    /// the transaction that inserts the messages, and reads one row.
    pub async fn session_message_count(&self, tenant_id: &str, session_id: &str) -> StoreResult<i64> {
        Ok(self.session(tenant_id, session_id).await?.map_or(0, |s| s.message_count))
    }
}

/// Filters of ListSessions, already validated.
#[derive(Debug, Default, Clone)]
pub struct SessionFilter {
    pub tenant_id: String,
    pub channel: Option<String>,
    pub agent_id: Option<String>,
    pub active_after: Option<DateTime<Utc>>,
    pub active_before: Option<DateTime<Utc>>,
    pub page_after: Option<(DateTime<Utc>, String)>,
}

fn merge_update(into: &mut SessionUpdate, from: SessionUpdate) {
    fn take(into: &mut Option<String>, from: Option<String>) {
        if let Some(value) = from.filter(|v| !v.is_empty()) {
            *into = Some(value);
        }
    }
    if into.tenant_id.is_empty() {
        into.tenant_id = from.tenant_id;
        into.session_id = from.session_id;
    }
    if into.agent_id.is_empty() {
        into.agent_id = from.agent_id;
    }
    take(&mut into.session_key, from.session_key);
    take(&mut into.channel, from.channel);
    take(&mut into.chat_type, from.chat_type);
    take(&mut into.model, from.model);
    take(&mut into.provider, from.provider);
    into.started_at = match (into.started_at, from.started_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    into.last_activity_at = into.last_activity_at.max(from.last_activity_at);
}

async fn insert_new_sessions(
    txn: &DatabaseTransaction,
    backend: sea_orm::DbBackend,
    deltas: &BTreeMap<SessionKey, SessionDelta>,
) -> StoreResult<Vec<SessionKey>> {
    use session::Column as C;
    let mut created = Vec::new();
    let keys: Vec<_> = deltas.iter().collect();
    for chunk in keys.chunks(INSERT_CHUNK / 4) {
        let mut insert = Query::insert();
        insert.into_table(session::Entity).columns([
            C::TenantId,
            C::SessionId,
            C::AgentId,
            C::MessageCount,
            C::TotalTokens,
            C::InputTokens,
            C::OutputTokens,
            C::CacheReadTokens,
            C::CacheWriteTokens,
            C::CostMicros,
        ]);
        for ((tenant_id, session_id), delta) in chunk {
            insert.values_panic([
                tenant_id.clone().into(),
                session_id.clone().into(),
                delta.update.agent_id.clone().into(),
                0i64.into(),
                0i64.into(),
                0i64.into(),
                0i64.into(),
                0i64.into(),
                0i64.into(),
                0i64.into(),
            ]);
        }
        insert.on_conflict(OnConflict::new().do_nothing().to_owned());
        insert.returning(Query::returning().columns([C::TenantId, C::SessionId]));
        for row in txn.query_all(backend.build(&insert)).await? {
            created.push((row.try_get::<String>("", "tenant_id")?, row.try_get::<String>("", "session_id")?));
        }
    }
    Ok(created)
}

async fn load_sessions(
    txn: &DatabaseTransaction,
    deltas: &BTreeMap<SessionKey, SessionDelta>,
) -> StoreResult<HashMap<SessionKey, session::Model>> {
    let mut by_tenant: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tenant_id, session_id) in deltas.keys() {
        by_tenant.entry(tenant_id).or_default().push(session_id);
    }
    let mut out = HashMap::new();
    for (tenant_id, ids) in by_tenant {
        for chunk in ids.chunks(INSERT_CHUNK) {
            let rows = session::Entity::find()
                .filter(session::Column::TenantId.eq(tenant_id))
                .filter(session::Column::SessionId.is_in(chunk.iter().copied()))
                .all(txn)
                .await?;
            for row in rows {
                out.insert((row.tenant_id.clone(), row.session_id.clone()), row);
            }
        }
    }
    // The batch's metadata applies before its messages are counted.
    for (key, delta) in deltas {
        if let Some(row) = out.get_mut(key) {
            if let Some(channel) = delta.update.channel.clone() {
                row.channel = Some(channel);
            }
        }
    }
    Ok(out)
}

/// (tenant, session, position) of a message.
type MessageKey = (String, String, i64);

/// Inserts what is not stored yet; returns the keys of the rows inserted
/// now. A message whose position or event id is stored already (or comes
/// earlier in the same batch) is skipped. An empty event id, model or
/// provider is stored as NULL on both backends.
async fn insert_messages(
    txn: &DatabaseTransaction,
    backend: sea_orm::DbBackend,
    messages: &[NewMessage],
) -> StoreResult<HashSet<MessageKey>> {
    let mut inserted = HashSet::with_capacity(messages.len());
    let statements = match backend {
        sea_orm::DbBackend::Postgres => messages.chunks(UNNEST_CHUNK).map(unnest_insert).collect::<Vec<_>>(),
        _ => messages.chunks(INSERT_CHUNK).map(|chunk| backend.build(&multi_row_insert(chunk))).collect(),
    };
    for statement in statements {
        for row in txn.query_all(statement).await? {
            inserted.insert((
                row.try_get::<String>("", "tenant_id")?,
                row.try_get::<String>("", "session_id")?,
                row.try_get::<i64>("", "position")?,
            ));
        }
    }
    Ok(inserted)
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.is_empty())
}

/// SQLite: one multi-row `INSERT ... ON CONFLICT DO NOTHING RETURNING`.
fn multi_row_insert(chunk: &[NewMessage]) -> sea_orm::sea_query::InsertStatement {
    use message::Column as C;
    let mut insert = Query::insert();
    insert.into_table(message::Entity).columns([
        C::TenantId,
        C::SessionId,
        C::Position,
        C::Source,
        C::EventId,
        C::Role,
        C::Content,
        C::Model,
        C::Provider,
        C::InputTokens,
        C::OutputTokens,
        C::CacheReadTokens,
        C::CacheWriteTokens,
        C::TotalTokens,
        C::CostMicros,
        C::CreatedAt,
        C::Raw,
    ]);
    for m in chunk {
        insert.values_panic([
            m.tenant_id.clone().into(),
            m.session_id.clone().into(),
            m.position.into(),
            m.source.into(),
            non_empty(&m.event_id).into(),
            m.role.clone().into(),
            m.content.clone().into(),
            non_empty(&m.model).into(),
            non_empty(&m.provider).into(),
            m.tokens.input.into(),
            m.tokens.output.into(),
            m.tokens.cache_read.into(),
            m.tokens.cache_write.into(),
            m.tokens.total.into(),
            m.tokens.cost_micros.into(),
            m.created_at.into(),
            m.raw.clone().into(),
        ]);
    }
    // No target: either unique key (position or event id) makes a
    // redelivered message a no-op.
    insert.on_conflict(OnConflict::new().do_nothing().to_owned());
    insert.returning(Query::returning().columns([C::TenantId, C::SessionId, C::Position]));
    insert
}

/// PostgreSQL: the whole chunk as 17 typed arrays (bound in binary, one
/// parameter per column, one statement text whatever the chunk's size)
/// unnested into one `INSERT ... SELECT ... ON CONFLICT DO NOTHING
/// RETURNING`: the planning and per-row binding of a multi-row VALUES list
/// are gone, idempotency is the same (either unique key, no target).
/// Arrays carry no NULLs here, so an absent text is '' and NULLIF maps it
/// back.
fn unnest_insert(chunk: &[NewMessage]) -> Statement {
    fn column<T>(chunk: &[NewMessage], value: impl Fn(&NewMessage) -> T) -> sea_orm::Value
    where
        Vec<T>: Into<sea_orm::Value>,
    {
        chunk.iter().map(value).collect::<Vec<T>>().into()
    }
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let values = vec![
        column(chunk, |m| m.tenant_id.clone()),
        column(chunk, |m| m.session_id.clone()),
        column(chunk, |m| m.position),
        column(chunk, |m| m.source.to_string()),
        column(chunk, |m| text(&m.event_id)),
        column(chunk, |m| m.role.clone()),
        column(chunk, |m| m.content.clone()),
        column(chunk, |m| text(&m.model)),
        column(chunk, |m| text(&m.provider)),
        column(chunk, |m| m.tokens.input),
        column(chunk, |m| m.tokens.output),
        column(chunk, |m| m.tokens.cache_read),
        column(chunk, |m| m.tokens.cache_write),
        column(chunk, |m| m.tokens.total),
        column(chunk, |m| m.tokens.cost_micros),
        column(chunk, |m| m.created_at),
        column(chunk, |m| text(&m.raw)),
    ];
    Statement::from_sql_and_values(sea_orm::DbBackend::Postgres, UNNEST_INSERT, values)
}

const UNNEST_INSERT: &str = "INSERT INTO messages (tenant_id, session_id, position, source, event_id, role, \
    content, model, provider, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, total_tokens, \
    cost_micros, created_at, raw) \
    SELECT tenant_id, session_id, position, source, NULLIF(event_id, ''), role, content, NULLIF(model, ''), \
    NULLIF(provider, ''), input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, total_tokens, \
    cost_micros, created_at, NULLIF(raw, '')::json \
    FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
    $9::text[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::int8[], \
    $16::timestamptz[], $17::text[]) \
    AS batch(tenant_id, session_id, position, source, event_id, role, content, model, provider, input_tokens, \
    output_tokens, cache_read_tokens, cache_write_tokens, total_tokens, cost_micros, created_at, raw) \
    ON CONFLICT DO NOTHING \
    RETURNING tenant_id, session_id, position";

fn add(column: session::Column, amount: i64) -> SimpleExpr {
    Expr::col(column).add(amount)
}

async fn update_session(
    txn: &DatabaseTransaction,
    key: &SessionKey,
    delta: &SessionDelta,
    stored: Option<&session::Model>,
    was_new: bool,
) -> StoreResult<()> {
    use session::Column as C;
    let update = &delta.update;
    let mut query = session::Entity::update_many()
        .filter(C::TenantId.eq(&key.0))
        .filter(C::SessionId.eq(&key.1))
        .col_expr(C::MessageCount, add(C::MessageCount, delta.messages))
        .col_expr(C::TotalTokens, add(C::TotalTokens, delta.tokens.total))
        .col_expr(C::InputTokens, add(C::InputTokens, delta.tokens.input))
        .col_expr(C::OutputTokens, add(C::OutputTokens, delta.tokens.output))
        .col_expr(C::CacheReadTokens, add(C::CacheReadTokens, delta.tokens.cache_read))
        .col_expr(C::CacheWriteTokens, add(C::CacheWriteTokens, delta.tokens.cache_write))
        .col_expr(C::CostMicros, add(C::CostMicros, delta.tokens.cost_micros));
    for (column, value) in [
        (C::SessionKey, &update.session_key),
        (C::Channel, &update.channel),
        (C::ChatType, &update.chat_type),
        (C::Model, &update.model),
        (C::Provider, &update.provider),
    ] {
        if let Some(value) = value {
            query = query.col_expr(column, Expr::value(value.clone()));
        }
    }
    let stored_started = stored.and_then(|s| s.started_at).filter(|_| !was_new);
    let started = match (stored_started, update.started_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(started) = started {
        query = query.col_expr(C::StartedAt, Expr::value(started));
    }
    let stored_last = stored.and_then(|s| s.last_activity_at).filter(|_| !was_new);
    if let Some(last) = stored_last.max(update.last_activity_at) {
        query = query.col_expr(C::LastActivityAt, Expr::value(last));
    }
    query.exec(txn).await?;
    Ok(())
}

async fn add_usage(
    txn: &DatabaseTransaction,
    tenant_id: &str,
    kind: &str,
    start: NaiveDate,
    messages: i64,
    tokens: &Tokens,
) -> StoreResult<()> {
    use usage::Column as C;
    let counters = [
        (C::Messages, messages),
        (C::InputTokens, tokens.input),
        (C::OutputTokens, tokens.output),
        (C::CacheReadTokens, tokens.cache_read),
        (C::CacheWriteTokens, tokens.cache_write),
        (C::TotalTokens, tokens.total),
        (C::CostMicros, tokens.cost_micros),
    ];
    let keys =
        [(C::TenantId, tenant_id.into()), (C::PeriodKind, kind.into()), (C::PeriodStart, start.to_string().into())];
    super::counters::add(txn, usage::Entity, keys, &counters).await
}

async fn add_stats(
    txn: &DatabaseTransaction,
    tenant_id: &str,
    date: NaiveDate,
    channel: &str,
    stat: &StatDelta,
) -> StoreResult<()> {
    use session_stat::Column as C;
    let counters = [
        (C::Sessions, stat.sessions),
        (C::Messages, stat.messages),
        (C::ResponseTimeTotalMs, stat.response_ms),
        (C::ResponseCount, stat.responses),
    ];
    let keys = [(C::TenantId, tenant_id.into()), (C::Day, date.to_string().into()), (C::Channel, channel.into())];
    super::counters::add(txn, session_stat::Entity, keys, &counters).await
}
