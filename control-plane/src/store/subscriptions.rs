//! Subscriptions: a tenant's plan, status and current billing period, and
//! the history of its periods (`subscription_periods`, one row per period
//! with the plan in effect) that billing reads. Periods are calendar months
//! in UTC; a plan change closes the current period at once and starts one
//! that ends at the next month boundary. A cancelled subscription does not
//! roll over: its plan holds until the period's end, then calls stop.
use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::audit::audit;
use super::entities::{allowance_state, plan, subscription, subscription_period, tenant};
use super::{Store, StoreError, StoreResult, Tenant};

/// State of a subscription, stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    Active,
    Trialing,
    PastDue,
    Canceled,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Canceled => "canceled",
        }
    }

    /// Unknown text reads as active: the plan's own limits still apply.
    pub fn parse(text: &str) -> Self {
        match text {
            "trialing" => SubscriptionStatus::Trialing,
            "past_due" => SubscriptionStatus::PastDue,
            "canceled" => SubscriptionStatus::Canceled,
            _ => SubscriptionStatus::Active,
        }
    }
}

/// A tenant's subscription with its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub tenant_id: String,
    pub plan: plan::Model,
    pub status: SubscriptionStatus,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// One period of a subscription, for billing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingPeriod {
    pub tenant_id: String,
    pub plan_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What a change did: the period it closed (a plan change), if any.
#[derive(Debug, Clone)]
pub struct SubscriptionChange {
    pub subscription: SubscriptionRecord,
    pub closed: Option<BillingPeriod>,
    pub changed: bool,
}

/// 00:00 UTC on the first day of the month after `at`'s.
pub fn next_month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    let first = at.date_naive().with_day(1).unwrap_or(at.date_naive());
    let next = first.checked_add_months(Months::new(1)).unwrap_or(first);
    Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// 00:00 UTC on the first day of `at`'s month.
pub fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    let first = at.date_naive().with_day(1).unwrap_or(at.date_naive());
    Utc.from_utc_datetime(&first.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// Most periods one rollover fills in (a control plane down for years).
const MAX_ROLLED_PERIODS: usize = 240;

impl Store {
    /// The tenant's subscription; one is created (the current calendar
    /// month, the tenant's plan, active) for a tenant that has none.
    pub async fn subscription(&self, tenant: &Tenant) -> StoreResult<SubscriptionRecord> {
        let row = match subscription::Entity::find()
            .filter(subscription::Column::TenantId.eq(&tenant.id))
            .one(&self.db)
            .await?
        {
            Some(row) => row,
            None => self.create_subscription(&tenant.id, &tenant.plan_id).await?,
        };
        let plan = plan::Entity::find_by_id(&row.plan_id).one(&self.db).await?.ok_or(StoreError::NotFound("plan"))?;
        Ok(SubscriptionRecord {
            tenant_id: row.tenant_id,
            plan,
            status: SubscriptionStatus::parse(&row.status),
            period_start: row.current_period_start,
            period_end: row.current_period_end,
        })
    }

    async fn create_subscription(&self, tenant_id: &str, plan_id: &str) -> StoreResult<subscription::Model> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let row = insert_subscription(&txn, tenant_id, plan_id, now).await;
        match row {
            Ok(row) => {
                txn.commit().await?;
                Ok(row)
            }
            // Another caller created it first.
            Err(StoreError::Db(err)) if super::is_unique_violation(&err) => {
                drop(txn);
                subscription::Entity::find()
                    .filter(subscription::Column::TenantId.eq(tenant_id))
                    .one(&self.db)
                    .await?
                    .ok_or(StoreError::NotFound("subscription"))
            }
            Err(err) => Err(err),
        }
    }

    /// Moves the subscription to `plan` (a new period starting `now`, the
    /// tenant's plan with it) and/or sets its status, in one transaction.
    /// The same plan, or the same status, changes nothing.
    pub async fn change_subscription(
        &self,
        tenant: &Tenant,
        plan: Option<&plan::Model>,
        status: Option<SubscriptionStatus>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<SubscriptionChange> {
        let current = self.subscription(tenant).await?;
        let new_plan = plan.filter(|p| p.id != current.plan.id);
        let new_status = status.filter(|s| *s != current.status);
        if new_plan.is_none() && new_status.is_none() {
            return Ok(SubscriptionChange { subscription: current, closed: None, changed: false });
        }
        let tenant_id = &tenant.id;
        let txn = self.db.begin().await?;
        let mut update = subscription::Entity::update_many()
            .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
            .filter(subscription::Column::TenantId.eq(tenant_id))
            // Compare-and-set on what was read: a concurrent change wins once.
            .filter(subscription::Column::PlanId.eq(&current.plan.id))
            .filter(subscription::Column::CurrentPeriodStart.eq(current.period_start));
        if let Some(status) = new_status {
            update = update.col_expr(subscription::Column::Status, Expr::value(status.as_str()));
        }
        let mut closed = None;
        let mut record = current.clone();
        if let Some(plan) = new_plan {
            let end = next_month_start(now);
            update = update
                .col_expr(subscription::Column::PlanId, Expr::value(plan.id.clone()))
                .col_expr(subscription::Column::CurrentPeriodStart, Expr::value(now))
                .col_expr(subscription::Column::CurrentPeriodEnd, Expr::value(end));
            subscription_period::Entity::update_many()
                .col_expr(subscription_period::Column::PeriodEnd, Expr::value(now))
                .col_expr(subscription_period::Column::ClosedAt, Expr::value(Some(now)))
                .filter(subscription_period::Column::TenantId.eq(tenant_id))
                .filter(subscription_period::Column::PeriodStart.eq(current.period_start))
                .exec(&txn)
                .await?;
            insert_period(&txn, tenant_id, &plan.id, now, end, None).await?;
            tenant::Entity::update_many()
                .col_expr(tenant::Column::PlanId, Expr::value(plan.id.clone()))
                .col_expr(tenant::Column::UpdatedAt, Expr::value(now))
                .filter(tenant::Column::Id.eq(tenant_id))
                .exec(&txn)
                .await?;
            closed = Some(BillingPeriod {
                tenant_id: tenant_id.clone(),
                plan_id: current.plan.id.clone(),
                start: current.period_start,
                end: now,
            });
            record.plan = plan.clone();
            record.period_start = now;
            record.period_end = end;
        }
        if update.exec(&txn).await?.rows_affected == 0 {
            return Err(StoreError::Stale("the subscription changed meanwhile; try again".into()));
        }
        if let Some(status) = new_status {
            record.status = status;
        }
        let detail = json!({
            "plan": record.plan.name,
            "previous_plan": current.plan.name,
            "status": record.status.as_str(),
        });
        audit(&txn, actor, "subscription.change", tenant_id, detail).await?;
        txn.commit().await?;
        self.owner_changed(&tenant.owner_key).await;
        Ok(SubscriptionChange { subscription: record, closed, changed: true })
    }

    /// Subscriptions (of live tenants) whose period has ended and that roll
    /// over: every status but cancelled. At most `limit`.
    pub async fn due_rollovers(&self, now: DateTime<Utc>, limit: u64) -> StoreResult<Vec<(String, DateTime<Utc>)>> {
        let live = Query::select()
            .column(tenant::Column::Id)
            .from(tenant::Entity)
            .and_where(tenant::Column::DeletedAt.is_null())
            .to_owned();
        let rows = subscription::Entity::find()
            .filter(subscription::Column::CurrentPeriodEnd.lte(now))
            .filter(subscription::Column::Status.ne(SubscriptionStatus::Canceled.as_str()))
            .filter(subscription::Column::TenantId.in_subquery(live))
            .order_by_asc(subscription::Column::CurrentPeriodEnd)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| (r.tenant_id, r.current_period_end)).collect())
    }

    /// Cancelled subscriptions past their period's end whose tenant's host
    /// was last told it may call (so the sweep tells it otherwise).
    pub async fn ended_but_unblocked(&self, now: DateTime<Utc>, limit: u64) -> StoreResult<Vec<String>> {
        let unblocked = Query::select()
            .column(allowance_state::Column::TenantId)
            .from(allowance_state::Entity)
            .and_where(allowance_state::Column::Blocked.eq(false))
            .to_owned();
        let rows = subscription::Entity::find()
            .filter(subscription::Column::CurrentPeriodEnd.lte(now))
            .filter(subscription::Column::Status.eq(SubscriptionStatus::Canceled.as_str()))
            .filter(subscription::Column::TenantId.in_subquery(unblocked))
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| r.tenant_id).collect())
    }

    /// Starts the period after the one ending `expected_end` (and any whole
    /// months missed since, closed at once), unless another caller did.
    /// Returns the periods closed, oldest first; empty when it lost.
    pub async fn roll_over(
        &self,
        tenant_id: &str,
        expected_end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<BillingPeriod>> {
        let txn = self.db.begin().await?;
        // A write first: SQLite then takes its write lock now, waiting its
        // turn, rather than failing at the first write of a transaction that
        // read before another connection committed ("database is locked");
        // PostgreSQL locks the row against a concurrent sweep.
        subscription::Entity::update_many()
            .col_expr(subscription::Column::UpdatedAt, Expr::col(subscription::Column::UpdatedAt).into())
            .filter(subscription::Column::TenantId.eq(tenant_id))
            .filter(subscription::Column::CurrentPeriodEnd.eq(expected_end))
            .exec(&txn)
            .await?;
        let Some(row) = subscription::Entity::find()
            .filter(subscription::Column::TenantId.eq(tenant_id))
            .filter(subscription::Column::CurrentPeriodEnd.eq(expected_end))
            .one(&txn)
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut closed = vec![BillingPeriod {
            tenant_id: tenant_id.to_string(),
            plan_id: row.plan_id.clone(),
            start: row.current_period_start,
            end: row.current_period_end,
        }];
        let mut start = row.current_period_end;
        let mut end = next_month_start(start);
        while end <= now && closed.len() < MAX_ROLLED_PERIODS {
            insert_period(&txn, tenant_id, &row.plan_id, start, end, Some(now)).await?;
            closed.push(BillingPeriod { tenant_id: tenant_id.to_string(), plan_id: row.plan_id.clone(), start, end });
            start = end;
            end = next_month_start(start);
        }
        if end <= now {
            // Far behind: the current period is the month of `now`.
            start = month_start(now);
            end = next_month_start(now);
        }
        let updated = subscription::Entity::update_many()
            .col_expr(subscription::Column::CurrentPeriodStart, Expr::value(start))
            .col_expr(subscription::Column::CurrentPeriodEnd, Expr::value(end))
            .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
            .filter(subscription::Column::TenantId.eq(tenant_id))
            .filter(subscription::Column::CurrentPeriodEnd.eq(expected_end))
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            return Ok(Vec::new());
        }
        subscription_period::Entity::update_many()
            .col_expr(subscription_period::Column::ClosedAt, Expr::value(Some(now)))
            .filter(subscription_period::Column::TenantId.eq(tenant_id))
            .filter(subscription_period::Column::PeriodStart.eq(row.current_period_start))
            .exec(&txn)
            .await?;
        insert_period(&txn, tenant_id, &row.plan_id, start, end, None).await?;
        txn.commit().await?;
        Ok(closed)
    }

    /// Each tenant's period containing `at`, ordered by tenant id, after
    /// `after_tenant` and of `tenants` only if given; `limit + 1` rows tell
    /// whether more follow.
    pub async fn periods_at(
        &self,
        at: DateTime<Utc>,
        tenants: Option<&[String]>,
        after_tenant: Option<&str>,
        limit: u64,
    ) -> StoreResult<(Vec<BillingPeriod>, bool)> {
        let mut query = subscription_period::Entity::find()
            .filter(subscription_period::Column::PeriodStart.lte(at))
            .filter(subscription_period::Column::PeriodEnd.gt(at));
        if let Some(tenants) = tenants {
            query = query.filter(subscription_period::Column::TenantId.is_in(tenants.iter().map(String::as_str)));
        }
        if let Some(after) = after_tenant {
            query = query.filter(subscription_period::Column::TenantId.gt(after));
        }
        let mut rows: Vec<BillingPeriod> = query
            .order_by_asc(subscription_period::Column::TenantId)
            .limit(limit + 1)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| BillingPeriod {
                tenant_id: r.tenant_id,
                plan_id: r.plan_id,
                start: r.period_start,
                end: r.period_end,
            })
            .collect();
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }
}

async fn insert_period<C: ConnectionTrait>(
    db: &C,
    tenant_id: &str,
    plan_id: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
) -> StoreResult<()> {
    subscription_period::Entity::insert(subscription_period::ActiveModel {
        id: Set(Uuid::now_v7().to_string()),
        tenant_id: Set(tenant_id.to_string()),
        plan_id: Set(plan_id.to_string()),
        period_start: Set(start),
        period_end: Set(end),
        closed_at: Set(closed_at),
    })
    .exec(db)
    .await?;
    Ok(())
}

/// A new tenant's subscription: active, on its plan, for the calendar month
/// of `now`, with its first period.
pub(super) async fn insert_subscription<C: ConnectionTrait>(
    db: &C,
    tenant_id: &str,
    plan_id: &str,
    now: DateTime<Utc>,
) -> StoreResult<subscription::Model> {
    let model = subscription::Model {
        id: Uuid::now_v7().to_string(),
        tenant_id: tenant_id.to_string(),
        plan_id: plan_id.to_string(),
        status: SubscriptionStatus::Active.as_str().into(),
        current_period_start: month_start(now),
        current_period_end: next_month_start(now),
        created_at: now,
        updated_at: now,
    };
    subscription::Entity::insert(subscription::ActiveModel::from(model.clone())).exec(db).await?;
    insert_period(db, tenant_id, plan_id, model.current_period_start, model.current_period_end, None).await?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_end_at_the_next_month_boundary() {
        let at = Utc.with_ymd_and_hms(2026, 12, 17, 13, 5, 0).unwrap();
        assert_eq!(month_start(at), Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
        assert_eq!(next_month_start(at), Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        let boundary = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(next_month_start(boundary), Utc.with_ymd_and_hms(2027, 2, 1, 0, 0, 0).unwrap());
    }
}
