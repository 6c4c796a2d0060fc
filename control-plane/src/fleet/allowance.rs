//! Allowances on their way to hosts: what a tenant may still take through
//! its host's metering proxy in the current period, pushed as a durable
//! SetAllowance command. A push happens only when something the agent
//! cannot work out itself changes (period, limits, blocked or its reason,
//! a threshold reached, the host): between pushes the agent adds what its
//! proxy metered after `counted_through`. Usage events (thresholds, quota
//! lifted, period closed) are recorded on the way; the periodic sweep rolls
//! periods over.
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use clawplane_proto::v1::{command, SetAllowanceCommand};

use super::error::FleetResult;
use super::streams::Fleet;
use crate::quota::{self, grouped, Level, Standing};
use crate::store::{BillingPeriod, NewUsageEvent, TenantRecord, UsageEventKind, USAGE_EVENT_RETENTION_DAYS};
use crate::wire::timestamp;

/// Subscriptions one sweep looks at per pass.
const SWEEP_BATCH: u64 = 200;

/// The command telling a tenant's host its allowance; `counted_through` is
/// the METER position on that host the counts include.
pub fn allowance_command(tenant_id: &str, standing: &Standing, counted_through: i64) -> SetAllowanceCommand {
    SetAllowanceCommand {
        tenant_id: tenant_id.to_string(),
        period_start: Some(timestamp(standing.subscription.period_start)),
        period_end: Some(timestamp(standing.subscription.period_end)),
        message_limit: standing.message_limit,
        messages_used: standing.messages_used,
        token_limit: standing.token_limit,
        tokens_used: standing.tokens_used,
        requests_per_minute: standing.requests_per_minute,
        blocked: standing.blocked,
        blocked_reason: standing.reason.clone(),
        counted_through,
        platform_key_only: true,
    }
}

/// What, changed, calls for a push (the counts themselves do not).
fn signature(host_id: &str, standing: &Standing) -> String {
    let s = &standing.subscription;
    format!(
        "{host_id}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        s.period_start.timestamp_millis(),
        s.period_end.timestamp_millis(),
        standing.message_limit,
        standing.token_limit,
        standing.requests_per_minute,
        standing.blocked,
        standing.messages_level.percent(),
        standing.tokens_level.percent(),
        standing.reason,
    )
}

impl Fleet {
    /// Works out the tenant's allowance, records the usage events it implies
    /// and, when it changed meaningfully and the tenant is placed, queues it
    /// for the tenant's host. Returns the command id when one was queued.
    pub async fn push_allowance(&self, tenant: &TenantRecord) -> FleetResult<Option<String>> {
        let now = Utc::now();
        let standing = quota::standing(&self.store, tenant, now).await?;
        let tenant_id = &tenant.tenant.id;
        self.record_thresholds(tenant_id, &standing).await?;
        let previous = self.store.allowance_state(tenant_id).await?;
        if previous.as_ref().is_some_and(|p| p.blocked) && !standing.blocked {
            self.store
                .record_usage_event(NewUsageEvent {
                    tenant_id: tenant_id.clone(),
                    kind: UsageEventKind::QuotaLifted,
                    metric: String::new(),
                    period_start: standing.subscription.period_start,
                    message: format!(
                        "model calls are allowed again ({} plan)",
                        standing.subscription.plan.display_name
                    ),
                    dedupe_key: None,
                })
                .await?;
        }
        let host_id = tenant.tenant.host_id.clone().unwrap_or_default();
        let signature = signature(&host_id, &standing);
        if previous.as_ref().is_some_and(|p| p.signature == signature) {
            return Ok(None);
        }
        let queued = if host_id.is_empty() {
            None
        } else {
            let counted_through = self.store.meter_position(tenant_id, &host_id).await?;
            let payload = command::Payload::SetAllowance(allowance_command(tenant_id, &standing, counted_through));
            Some(self.enqueue(&host_id, Some(tenant_id), payload).await?)
        };
        self.store.save_allowance_state(tenant_id, &host_id, &signature, standing.blocked).await?;
        Ok(queued)
    }

    /// 80% and 100% of each allowance, once per tenant, metric and period.
    async fn record_thresholds(&self, tenant_id: &str, standing: &Standing) -> FleetResult<()> {
        let period_start = standing.subscription.period_start;
        for (metric, level, used, limit) in [
            ("messages", standing.messages_level, standing.messages_used, standing.message_limit),
            ("tokens", standing.tokens_level, standing.tokens_used, standing.token_limit),
        ] {
            for (reached, kind) in
                [(Level::Warning, UsageEventKind::Threshold80), (Level::Reached, UsageEventKind::Threshold100)]
            {
                if level < reached {
                    continue;
                }
                let message = match kind {
                    UsageEventKind::Threshold80 => format!("{metric}: 80% of {} used", grouped(limit)),
                    _ => format!("{metric}: all {} used ({} counted)", grouped(limit), grouped(used)),
                };
                self.store
                    .record_usage_event(NewUsageEvent {
                        tenant_id: tenant_id.to_string(),
                        kind,
                        metric: metric.to_string(),
                        period_start,
                        message,
                        dedupe_key: Some(format!(
                            "{tenant_id}|{}|{metric}|{}",
                            period_start.timestamp_millis(),
                            kind.as_str()
                        )),
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Records that a period ended (its billing lines are final).
    pub async fn period_closed(&self, period: &BillingPeriod) -> FleetResult<()> {
        self.store
            .record_usage_event(NewUsageEvent {
                tenant_id: period.tenant_id.clone(),
                kind: UsageEventKind::PeriodClosed,
                metric: String::new(),
                period_start: period.start,
                message: format!(
                    "the period {} to {} is closed",
                    period.start.format("%Y-%m-%d %H:%M UTC"),
                    period.end.format("%Y-%m-%d %H:%M UTC")
                ),
                dedupe_key: Some(format!("{}|{}|closed", period.tenant_id, period.start.timestamp_millis())),
            })
            .await?;
        Ok(())
    }

    /// After an ingest batch: re-checks the tenants whose counted usage
    /// moved (a push follows only if a threshold or the blocking changed).
    pub async fn recheck_allowances(&self, tenant_ids: &BTreeSet<String>) -> FleetResult<()> {
        for tenant_id in tenant_ids {
            if let Some(tenant) = self.store.live_tenant(tenant_id).await? {
                self.push_allowance(&tenant).await?;
            }
        }
        Ok(())
    }

    /// Why the tenant's model calls are refused now, if they are: the
    /// allowance last pushed to its host blocks (used up under `block`, or
    /// the subscription ended) and its model is the platform's (a tenant's
    /// own key is never refused). One row read when not blocked.
    pub async fn model_calls_refused(&self, tenant_id: &str) -> FleetResult<Option<String>> {
        if !self.store.allowance_state(tenant_id).await?.is_some_and(|state| state.blocked) {
            return Ok(None);
        }
        let Some(tenant) = self.store.live_tenant(tenant_id).await? else { return Ok(None) };
        let rows = self.desired.rows(tenant_id).await?;
        if !self.desired.document(&rows)?.model.is_some_and(|route| route.platform) {
            return Ok(None);
        }
        let standing = quota::standing(&self.store, &tenant, Utc::now()).await?;
        Ok(standing.blocked.then_some(standing.reason))
    }

    /// The periodic sweep: rolls over ended periods (PERIOD_CLOSED, then a
    /// fresh allowance), tells hosts when a cancelled subscription ends, and
    /// drops usage events past their retention. Returns the periods rolled.
    pub async fn sweep_periods(&self, now: DateTime<Utc>) -> FleetResult<usize> {
        let mut rolled = 0;
        // Bounded: a row that will not roll (lost races) cannot spin the sweep.
        for _ in 0..50 {
            let due = self.store.due_rollovers(now, SWEEP_BATCH).await?;
            let batch = due.len();
            for (tenant_id, end) in due {
                let closed = self.store.roll_over(&tenant_id, end, now).await?;
                for period in &closed {
                    self.period_closed(period).await?;
                }
                rolled += usize::from(!closed.is_empty());
                if let Some(tenant) = self.store.live_tenant(&tenant_id).await? {
                    self.push_allowance(&tenant).await?;
                }
            }
            if (batch as u64) < SWEEP_BATCH {
                break;
            }
        }
        for tenant_id in self.store.ended_but_unblocked(now, SWEEP_BATCH).await? {
            if let Some(tenant) = self.store.live_tenant(&tenant_id).await? {
                self.push_allowance(&tenant).await?;
            }
        }
        self.store.purge_usage_events(now - chrono::Duration::days(USAGE_EVENT_RETENTION_DAYS)).await?;
        Ok(rolled)
    }
}

#[tonic::async_trait]
impl crate::ingest::UsageObserver for Fleet {
    async fn usage_changed(&self, tenant_ids: BTreeSet<String>) {
        if let Err(err) = self.recheck_allowances(&tenant_ids).await {
            tracing::warn!(error = %err, "re-checking allowances after ingest failed");
        }
    }
}
