//! Metered model calls from the hosts' proxies (SyncSource METER): one row
//! per call, idempotent on (tenant, call id), and the per-period counters
//! derived from them, moved only by the rows a batch really inserted, in
//! the same transaction, the way transcript ingest keeps `usage`. Also the
//! highest journal position stored per tenant and host, which an allowance
//! says it counted through.
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use super::entities::{message, meter_position, meter_usage, model_call, usage};
use super::transcripts::day_start;
use super::{Store, StoreResult};

/// Calls per multi-row INSERT: 19 parameters each, well under SQLite's limit.
const INSERT_CHUNK: usize = 400;

/// One metered call, checked.
#[derive(Debug, Clone)]
pub struct NewModelCall {
    pub tenant_id: String,
    pub call_id: String,
    /// Journal offset on the sending host.
    pub position: i64,
    pub provider: String,
    pub model: String,
    pub api: &'static str,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_write_tokens: i64,
    pub started_at: DateTime<Utc>,
    pub first_byte_ms: i64,
    pub total_ms: i64,
    pub http_status: i32,
    pub outcome: &'static str,
    pub streamed: bool,
    pub platform_key: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MeterOutcome {
    pub inserted: usize,
    pub duplicates: usize,
    /// Tenants whose counters moved.
    pub tenants: BTreeSet<String>,
}

/// Counters of one tenant and period from one batch.
#[derive(Debug, Default, Clone, Copy)]
struct MeterDelta {
    calls: i64,
    input: i64,
    output: i64,
    cache_read: i64,
    cache_write: i64,
    platform_calls: i64,
    platform_tokens: i64,
}

impl Store {
    /// Stores one batch of calls from `host_id` in one transaction.
    pub async fn ingest_model_calls(&self, host_id: &str, calls: Vec<NewModelCall>) -> StoreResult<MeterOutcome> {
        if calls.is_empty() {
            return Ok(MeterOutcome::default());
        }
        let txn = self.db.begin().await?;
        let backend = self.db.get_database_backend();
        let now = Utc::now();
        let mut inserted: BTreeSet<(String, String)> = BTreeSet::new();
        for chunk in calls.chunks(INSERT_CHUNK) {
            let insert = multi_row_insert(host_id, chunk, now);
            for row in txn.query_all(backend.build(&insert)).await? {
                inserted.insert((row.try_get::<String>("", "tenant_id")?, row.try_get::<String>("", "call_id")?));
            }
        }
        let mut outcome =
            MeterOutcome { inserted: inserted.len(), duplicates: calls.len() - inserted.len(), ..Default::default() };
        let mut deltas: BTreeMap<(String, &'static str, NaiveDate), MeterDelta> = BTreeMap::new();
        let mut positions: BTreeMap<String, i64> = BTreeMap::new();
        for call in &calls {
            let position = positions.entry(call.tenant_id.clone()).or_insert(call.position);
            *position = (*position).max(call.position);
            // Taken out once counted: a call twice in one batch counts once.
            if !inserted.remove(&(call.tenant_id.clone(), call.call_id.clone())) {
                continue;
            }
            outcome.tenants.insert(call.tenant_id.clone());
            let date = call.started_at.date_naive();
            let month = date.with_day(1).unwrap_or(date);
            for (kind, start) in [("day", date), ("month", month)] {
                let delta = deltas.entry((call.tenant_id.clone(), kind, start)).or_default();
                delta.calls += 1;
                delta.input += call.input_tokens;
                delta.output += call.output_tokens;
                delta.cache_read += call.cache_read_tokens;
                delta.cache_write += call.cache_write_tokens;
                if call.platform_key {
                    delta.platform_calls += 1;
                    delta.platform_tokens += call.input_tokens + call.output_tokens;
                }
            }
        }
        for ((tenant_id, kind, start), delta) in &deltas {
            add_meter_usage(&txn, tenant_id, kind, *start, delta).await?;
        }
        for (tenant_id, position) in positions {
            raise_position(&txn, &tenant_id, host_id, position).await?;
        }
        txn.commit().await?;
        Ok(outcome)
    }

    /// Meter counters of one period kind ("day" or "month") in [from, to).
    pub async fn meter_rows(
        &self,
        tenant_id: &str,
        kind: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<meter_usage::Model>> {
        Ok(meter_usage::Entity::find()
            .filter(meter_usage::Column::TenantId.eq(tenant_id))
            .filter(meter_usage::Column::PeriodKind.eq(kind))
            .filter(meter_usage::Column::PeriodStart.gte(from.to_string()))
            .filter(meter_usage::Column::PeriodStart.lt(to.to_string()))
            .order_by(meter_usage::Column::PeriodStart, Order::Asc)
            .all(&self.db)
            .await?)
    }

    /// The highest METER position stored for a tenant from a host (0: none).
    pub async fn meter_position(&self, tenant_id: &str, host_id: &str) -> StoreResult<i64> {
        Ok(meter_position::Entity::find_by_id((tenant_id.to_string(), host_id.to_string()))
            .one(&self.db)
            .await?
            .map_or(0, |row| row.position))
    }

    /// Tokens (input + output) of platform-key calls started in [from, to):
    /// whole days from the day counters, the partial days at either end
    /// from the calls themselves.
    pub async fn platform_tokens_between(
        &self,
        tenant_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> StoreResult<i64> {
        let (edges, days) = split_days(from, to);
        let mut total = 0;
        for (a, b) in edges {
            let sum: Option<i64> = model_call::Entity::find()
                .select_only()
                .column_as(Expr::cust("CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT)"), "n")
                .filter(model_call::Column::TenantId.eq(tenant_id))
                .filter(model_call::Column::PlatformKey.eq(true))
                .filter(model_call::Column::StartedAt.gte(a))
                .filter(model_call::Column::StartedAt.lt(b))
                .into_tuple()
                .one(&self.db)
                .await?;
            total += sum.unwrap_or(0);
        }
        if let Some((a, b)) = days {
            total += self.meter_rows(tenant_id, "day", a, b).await?.iter().map(|r| r.platform_tokens).sum::<i64>();
        }
        Ok(total)
    }

    /// Billable (user and assistant) messages created in [from, to), the
    /// same way: day counters for whole days, rows for the edges.
    pub async fn messages_between(&self, tenant_id: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<i64> {
        use sea_orm::PaginatorTrait;
        let (edges, days) = split_days(from, to);
        let mut total = 0;
        for (a, b) in edges {
            total += message::Entity::find()
                .filter(message::Column::TenantId.eq(tenant_id))
                .filter(message::Column::Role.is_in(["user", "assistant"]))
                .filter(message::Column::CreatedAt.gte(a))
                .filter(message::Column::CreatedAt.lt(b))
                .count(&self.db)
                .await? as i64;
        }
        if let Some((a, b)) = days {
            total += usage::Entity::find()
                .filter(usage::Column::TenantId.eq(tenant_id))
                .filter(usage::Column::PeriodKind.eq("day"))
                .filter(usage::Column::PeriodStart.gte(a.to_string()))
                .filter(usage::Column::PeriodStart.lt(b.to_string()))
                .all(&self.db)
                .await?
                .iter()
                .map(|r| r.messages)
                .sum::<i64>();
        }
        Ok(total)
    }

    /// Metered calls of a tenant, newest first (tests and diagnostics).
    pub async fn model_calls(&self, tenant_id: &str, limit: u64) -> StoreResult<Vec<model_call::Model>> {
        Ok(model_call::Entity::find()
            .filter(model_call::Column::TenantId.eq(tenant_id))
            .order_by(model_call::Column::StartedAt, Order::Desc)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

/// [from, to) as the partial days at its ends (instant ranges) and the
/// whole days between (a date range), so sums read few rows.
fn split_days(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (Vec<(DateTime<Utc>, DateTime<Utc>)>, Option<(NaiveDate, NaiveDate)>) {
    if from >= to {
        return (Vec::new(), None);
    }
    let first_whole = match day_start(from.date_naive()) {
        start if start == from => from.date_naive(),
        _ => from.date_naive() + Duration::days(1),
    };
    let last_whole_end = to.date_naive();
    if first_whole >= last_whole_end {
        return (vec![(from, to)], None);
    }
    let mut edges = Vec::new();
    if day_start(first_whole) > from {
        edges.push((from, day_start(first_whole)));
    }
    if day_start(last_whole_end) < to {
        edges.push((day_start(last_whole_end), to));
    }
    (edges, Some((first_whole, last_whole_end)))
}

fn multi_row_insert(host_id: &str, chunk: &[NewModelCall], now: DateTime<Utc>) -> sea_orm::sea_query::InsertStatement {
    use model_call::Column as C;
    let mut insert = Query::insert();
    insert.into_table(model_call::Entity).columns([
        C::TenantId,
        C::CallId,
        C::HostId,
        C::Position,
        C::Provider,
        C::Model,
        C::Api,
        C::InputTokens,
        C::OutputTokens,
        C::CacheReadTokens,
        C::CacheWriteTokens,
        C::StartedAt,
        C::FirstByteMs,
        C::TotalMs,
        C::HttpStatus,
        C::Outcome,
        C::Streamed,
        C::PlatformKey,
        C::ReceivedAt,
    ]);
    for c in chunk {
        insert.values_panic([
            c.tenant_id.clone().into(),
            c.call_id.clone().into(),
            host_id.into(),
            c.position.into(),
            c.provider.clone().into(),
            c.model.clone().into(),
            c.api.into(),
            c.input_tokens.into(),
            c.output_tokens.into(),
            c.cache_read_tokens.into(),
            c.cache_write_tokens.into(),
            c.started_at.into(),
            c.first_byte_ms.into(),
            c.total_ms.into(),
            c.http_status.into(),
            c.outcome.into(),
            c.streamed.into(),
            c.platform_key.into(),
            now.into(),
        ]);
    }
    insert.on_conflict(OnConflict::new().do_nothing().to_owned());
    insert.returning(Query::returning().columns([C::TenantId, C::CallId]));
    insert
}

async fn add_meter_usage(
    txn: &DatabaseTransaction,
    tenant_id: &str,
    kind: &str,
    start: NaiveDate,
    delta: &MeterDelta,
) -> StoreResult<()> {
    use meter_usage::Column as C;
    let counters = [
        (C::Calls, delta.calls),
        (C::InputTokens, delta.input),
        (C::OutputTokens, delta.output),
        (C::CacheReadTokens, delta.cache_read),
        (C::CacheWriteTokens, delta.cache_write),
        (C::PlatformCalls, delta.platform_calls),
        (C::PlatformTokens, delta.platform_tokens),
    ];
    let keys =
        [(C::TenantId, tenant_id.into()), (C::PeriodKind, kind.into()), (C::PeriodStart, start.to_string().into())];
    super::counters::add(txn, meter_usage::Entity, keys, &counters).await
}

/// Raises the stored position to `position` if it is higher (CASE works
/// on both backends, unlike GREATEST or two-argument MAX).
async fn raise_position(txn: &DatabaseTransaction, tenant_id: &str, host_id: &str, position: i64) -> StoreResult<()> {
    use meter_position::Column as C;
    let mut insert = Query::insert();
    insert.into_table(meter_position::Entity).columns([C::TenantId, C::HostId, C::Position]).values_panic([
        tenant_id.into(),
        host_id.into(),
        position.into(),
    ]);
    insert.on_conflict(
        OnConflict::columns([C::TenantId, C::HostId])
            .value(
                C::Position,
                Expr::cust(
                    "CASE WHEN excluded.position > meter_positions.position \
                     THEN excluded.position ELSE meter_positions.position END",
                ),
            )
            .to_owned(),
    );
    txn.execute(txn.get_database_backend().build(&insert)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ranges_split_into_partial_and_whole_days() {
        let t = |d, h| Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0).unwrap();
        let date = |d| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
        assert_eq!(split_days(t(3, 5), t(3, 9)), (vec![(t(3, 5), t(3, 9))], None));
        assert_eq!(split_days(t(3, 0), t(5, 0)), (vec![], Some((date(3), date(5)))));
        assert_eq!(
            split_days(t(3, 5), t(6, 7)),
            (vec![(t(3, 5), t(4, 0)), (t(6, 0), t(6, 7))], Some((date(4), date(6))))
        );
        assert_eq!(split_days(t(3, 5), t(4, 7)), (vec![(t(3, 5), t(4, 7))], None));
        assert_eq!(split_days(t(4, 0), t(3, 0)), (vec![], None));
    }
}
