//! The plans catalogue: what `[[plans]]` configures, upserted at start.
//! Tenants and subscriptions reference plans by id, so a plan is never
//! deleted: one the catalogue dropped stays for the tenants on it and is
//! flagged not offered (ListPlans leaves it out, ChangePlan refuses it).
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, TransactionTrait};
use uuid::Uuid;

use super::entities::plan;
use super::{Store, StoreResult};

/// What happens past a plan's monthly allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OveragePolicy {
    /// Platform model calls are refused until the next period.
    Block,
    /// Calls go on; the excess is billed.
    Bill,
}

impl OveragePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OveragePolicy::Block => "block",
            OveragePolicy::Bill => "bill",
        }
    }

    /// Anything but "bill" blocks: an unreadable policy must not run up a bill.
    pub fn parse(text: &str) -> Self {
        if text == "bill" {
            OveragePolicy::Bill
        } else {
            OveragePolicy::Block
        }
    }
}

/// One plan of the configured catalogue, validated. Limits of 0 mean
/// unlimited (stored as NULL, like the seeded rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSpec {
    pub name: String,
    pub display_name: String,
    pub price_monthly_minor: i64,
    pub currency: String,
    pub monthly_message_limit: i64,
    pub channel_limit: i32,
    pub features: std::collections::BTreeMap<String, String>,
    pub monthly_token_limit: i64,
    pub requests_per_minute: i32,
    pub overage_policy: OveragePolicy,
    pub overage_per_1k_tokens_minor: i64,
    pub overage_per_message_minor: i64,
    pub memory_limit_mib: i64,
    pub memory_soft_limit_mib: i64,
    pub cpu_millis: i32,
    pub pids_limit: i32,
    pub hibernate_after_secs: i64,
}

fn limit<T: Default + PartialEq>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

impl Store {
    /// Upserts the catalogue by name (ids of existing plans are kept) and
    /// flags every other plan not offered, in one transaction.
    pub async fn sync_catalogue(&self, catalogue: &[PlanSpec]) -> StoreResult<()> {
        let txn = self.db.begin().await?;
        let existing = plan::Entity::find().all(&txn).await?;
        for spec in catalogue {
            let stored = existing.iter().find(|p| p.name == spec.name);
            let model = plan::ActiveModel {
                id: Set(stored.map(|p| p.id.clone()).unwrap_or_else(|| Uuid::now_v7().to_string())),
                name: Set(spec.name.clone()),
                display_name: Set(spec.display_name.clone()),
                price_monthly_cents: Set(spec.price_monthly_minor),
                currency: Set(spec.currency.clone()),
                monthly_message_limit: Set(limit(spec.monthly_message_limit)),
                channel_limit: Set(limit(spec.channel_limit)),
                features: Set(serde_json::json!(spec.features)),
                created_at: Set(stored.map(|p| p.created_at).unwrap_or_else(Utc::now)),
                memory_limit_mib: Set(limit(spec.memory_limit_mib)),
                memory_soft_limit_mib: Set(limit(spec.memory_soft_limit_mib)),
                cpu_millis: Set(limit(spec.cpu_millis)),
                pids_limit: Set(limit(spec.pids_limit)),
                hibernate_after_secs: Set(limit(spec.hibernate_after_secs)),
                monthly_token_limit: Set(limit(spec.monthly_token_limit)),
                requests_per_minute: Set(limit(spec.requests_per_minute)),
                overage_policy: Set(spec.overage_policy.as_str().to_string()),
                overage_per_1k_tokens_minor: Set(spec.overage_per_1k_tokens_minor),
                overage_per_message_minor: Set(spec.overage_per_message_minor),
                offered: Set(true),
            };
            if stored.is_some() {
                plan::Entity::update(model).exec(&txn).await?;
            } else {
                plan::Entity::insert(model).exec(&txn).await?;
            }
        }
        let names: Vec<&str> = catalogue.iter().map(|p| p.name.as_str()).collect();
        plan::Entity::update_many()
            .col_expr(plan::Column::Offered, Expr::value(false))
            .filter(plan::Column::Name.is_not_in(names))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// The plans on offer, cheapest first (then by name, for a stable order).
    pub async fn offered_plans(&self) -> StoreResult<Vec<plan::Model>> {
        Ok(plan::Entity::find()
            .filter(plan::Column::Offered.eq(true))
            .order_by_asc(plan::Column::PriceMonthlyCents)
            .order_by_asc(plan::Column::Name)
            .all(&self.db)
            .await?)
    }

    pub async fn plan_by_id(&self, id: &str) -> StoreResult<Option<plan::Model>> {
        Ok(plan::Entity::find_by_id(id).one(&self.db).await?)
    }
}
