//! Usage events (thresholds crossed, quota lifted, period closed) with an
//! increasing id, kept 35 days. The table is the truth: watchers read it
//! after an id; the in-process watch only wakes them, so several replicas
//! work too (their events are found by the watchers' periodic re-read).
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::usage_event;
use super::{Store, StoreResult};

pub use usage_event::Model as UsageEventRow;

/// How long events are kept.
pub const USAGE_EVENT_RETENTION_DAYS: i64 = 35;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageEventKind {
    Threshold80,
    Threshold100,
    QuotaLifted,
    PeriodClosed,
}

impl UsageEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageEventKind::Threshold80 => "threshold_80",
            UsageEventKind::Threshold100 => "threshold_100",
            UsageEventKind::QuotaLifted => "quota_lifted",
            UsageEventKind::PeriodClosed => "period_closed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            UsageEventKind::Threshold80,
            UsageEventKind::Threshold100,
            UsageEventKind::QuotaLifted,
            UsageEventKind::PeriodClosed,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

#[derive(Debug, Clone)]
pub struct NewUsageEvent {
    pub tenant_id: String,
    pub kind: UsageEventKind,
    /// "messages" or "tokens" for thresholds; empty otherwise.
    pub metric: String,
    pub period_start: DateTime<Utc>,
    pub message: String,
    /// Events with the same key are recorded once (thresholds: once per
    /// tenant, metric and period).
    pub dedupe_key: Option<String>,
}

impl Store {
    /// Records an event; None when one with its dedupe key exists.
    pub async fn record_usage_event(&self, event: NewUsageEvent) -> StoreResult<Option<i64>> {
        use usage_event::Column as C;
        let mut insert = Query::insert();
        insert
            .into_table(usage_event::Entity)
            .columns([C::TenantId, C::Kind, C::Metric, C::PeriodStart, C::At, C::Message, C::DedupeKey])
            .values_panic([
                event.tenant_id.into(),
                event.kind.as_str().into(),
                event.metric.into(),
                event.period_start.into(),
                Utc::now().into(),
                event.message.into(),
                event.dedupe_key.into(),
            ]);
        insert.on_conflict(OnConflict::new().do_nothing().to_owned());
        insert.returning(Query::returning().column(C::Id));
        let row = self.db.query_one(self.db.get_database_backend().build(&insert)).await?;
        let id = row.map(|r| r.try_get::<i64>("", "id")).transpose()?;
        if let Some(id) = id {
            self.usage_events.send_if_modified(|latest| {
                let newer = id > *latest;
                if newer {
                    *latest = id;
                }
                newer
            });
        }
        Ok(id)
    }

    /// Events after `after_id`, oldest first, of some tenants or all.
    pub async fn usage_events_after(
        &self,
        after_id: i64,
        tenants: Option<&[String]>,
        limit: u64,
    ) -> StoreResult<Vec<UsageEventRow>> {
        let mut query = usage_event::Entity::find().filter(usage_event::Column::Id.gt(after_id));
        if let Some(tenants) = tenants {
            query = query.filter(usage_event::Column::TenantId.is_in(tenants.iter().map(String::as_str)));
        }
        Ok(query.order_by_asc(usage_event::Column::Id).limit(limit).all(&self.db).await?)
    }

    /// The largest event id so far (0: none).
    pub async fn latest_usage_event_id(&self) -> StoreResult<i64> {
        let id: Option<Option<i64>> = usage_event::Entity::find()
            .select_only()
            .column_as(usage_event::Column::Id.max(), "id")
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(id.flatten().unwrap_or(0))
    }

    /// Wakes when this process records an event (the value: its id).
    pub fn usage_event_wakeups(&self) -> tokio::sync::watch::Receiver<i64> {
        self.usage_events.subscribe()
    }

    /// Drops events recorded before `cutoff`.
    pub async fn purge_usage_events(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let result =
            usage_event::Entity::delete_many().filter(usage_event::Column::At.lt(cutoff)).exec(&self.db).await?;
        Ok(result.rows_affected)
    }
}
