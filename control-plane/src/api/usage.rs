//! UsageService: usage series and the dashboard overview, from the counters
//! sync maintains (messages from transcripts, tokens from the hosts'
//! meters), the plans catalogue, subscriptions, billing lines and usage
//! events. Periods are calendar periods in UTC.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc};
use clawplane_edge::shutdown::ShutdownSignal;
use clawplane_identity::{Owner, Principal};
use clawplane_proto::v1::usage_service_server::UsageService;
use clawplane_proto::v1::{
    BillingLine, ChangePlanRequest, ChangePlanResponse, ChannelShare, DailyPoint, GetOverviewRequest,
    GetOverviewResponse, GetSubscriptionRequest, GetSubscriptionResponse, GetUsageRequest, GetUsageResponse,
    ListBillingLinesRequest, ListBillingLinesResponse, ListPlansRequest, ListPlansResponse, OveragePolicy, Plan,
    SetSubscriptionRequest, SetSubscriptionResponse, Subscription, SubscriptionStatus, TenantBill, UsageEvent,
    UsageEventKind, UsagePeriod, UsagePoint, WatchUsageEventsRequest,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::error::{ApiError, ApiResult};
use super::request::{
    admin, caller, check_text, decode_page_token, next_page_token, optional_timestamp, required_id, timestamp,
    visible_tenant,
};
use super::sessions::token_usage;
use crate::fleet::Fleet;
use crate::quota::{self, billing, Standing};
use crate::store::{self, day_start, Store, TenantRecord};

pub struct UsageApi {
    store: Store,
    fleet: Arc<Fleet>,
    /// Event streams end when shutdown is requested.
    shutdown: ShutdownSignal,
}

impl UsageApi {
    pub fn new(store: Store, fleet: Arc<Fleet>, shutdown: ShutdownSignal) -> Self {
        UsageApi { store, fleet, shutdown }
    }
}

fn plan_message(model: store::Plan) -> Plan {
    let resources = Some(crate::fleet::plan_resources(&model));
    let features = match model.features {
        serde_json::Value::Object(map) => {
            map.into_iter().map(|(k, v)| (k, v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))).collect()
        }
        _ => Default::default(),
    };
    Plan {
        id: model.id,
        name: model.name,
        display_name: model.display_name,
        price_monthly_cents: model.price_monthly_cents,
        currency: model.currency,
        monthly_message_limit: model.monthly_message_limit.unwrap_or(0),
        channel_limit: model.channel_limit.unwrap_or(0),
        features,
        resources,
        monthly_token_limit: model.monthly_token_limit.unwrap_or(0).max(0),
        requests_per_minute: model.requests_per_minute.unwrap_or(0).max(0) as u32,
        overage_policy: match store::OveragePolicy::parse(&model.overage_policy) {
            store::OveragePolicy::Bill => OveragePolicy::Bill,
            store::OveragePolicy::Block => OveragePolicy::Block,
        } as i32,
        overage_per_1k_tokens_minor: model.overage_per_1k_tokens_minor,
        overage_per_message_minor: model.overage_per_message_minor,
    }
}

fn status_message(status: store::SubscriptionStatus) -> SubscriptionStatus {
    match status {
        store::SubscriptionStatus::Active => SubscriptionStatus::Active,
        store::SubscriptionStatus::Trialing => SubscriptionStatus::Trialing,
        store::SubscriptionStatus::PastDue => SubscriptionStatus::PastDue,
        store::SubscriptionStatus::Canceled => SubscriptionStatus::Canceled,
    }
}

fn subscription_message(standing: Standing) -> Subscription {
    let s = standing.subscription;
    Subscription {
        tenant_id: s.tenant_id,
        status: status_message(s.status) as i32,
        current_period_start: Some(timestamp(s.period_start)),
        current_period_end: Some(timestamp(s.period_end)),
        messages_used: standing.messages_used,
        tokens_used: standing.tokens_used,
        messages_remaining: Standing::remaining(standing.message_limit, standing.messages_used),
        tokens_remaining: Standing::remaining(standing.token_limit, standing.tokens_used),
        quota_exceeded: standing.blocked,
        quota_reason: standing.reason,
        plan: Some(plan_message(s.plan)),
    }
}

fn event_message(row: store::UsageEventRow) -> UsageEvent {
    let kind = match store::UsageEventKind::parse(&row.kind) {
        Some(store::UsageEventKind::Threshold80) => UsageEventKind::Threshold80,
        Some(store::UsageEventKind::Threshold100) => UsageEventKind::Threshold100,
        Some(store::UsageEventKind::QuotaLifted) => UsageEventKind::QuotaLifted,
        Some(store::UsageEventKind::PeriodClosed) => UsageEventKind::PeriodClosed,
        None => UsageEventKind::Unspecified,
    };
    UsageEvent {
        id: row.id,
        tenant_id: row.tenant_id,
        kind: kind as i32,
        metric: row.metric,
        period_start: Some(timestamp(row.period_start)),
        at: Some(timestamp(row.at)),
        message: row.message,
    }
}

/// Longest plan name a request may carry.
const MAX_PLAN_NAME: usize = 64;
/// ListBillingLines page size: default and most.
const BILLS_PER_PAGE: i32 = 100;
const MAX_BILLS_PER_PAGE: i32 = 500;
/// Events one read of the table hands a watcher.
const EVENTS_PER_READ: u64 = 100;
/// Events buffered per watcher: a slow reader holds up only its own stream.
const EVENT_BUFFER: usize = 32;
/// How often a watcher re-reads the table without a wakeup (events of
/// other replicas).
const EVENT_POLL: std::time::Duration = std::time::Duration::from_secs(5);
/// Teams of one caller looked at for "the caller's tenants".
const MAX_OWN_TEAMS: usize = 64;

/// Days of the overview's series, today included.
const OVERVIEW_DAYS: u64 = 30;

/// One period's point: messages (and OpenClaw's reported cost) from the
/// transcript counters, tokens from the meter (OpenClaw's own token totals
/// are known to be wrong). Total tokens are input + output, as allowances
/// count them.
fn point(start: NaiveDate, row: Option<&store::Usage>, meter: Option<&store::MeterUsage>) -> UsagePoint {
    let row = row.cloned().unwrap_or(store::Usage {
        tenant_id: String::new(),
        period_kind: String::new(),
        period_start: String::new(),
        messages: 0,
        input_tokens: 0,
        output_tokens: 0,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        total_tokens: 0,
        cost_micros: 0,
    });
    UsagePoint {
        period_start: Some(timestamp(day_start(start))),
        messages: row.messages,
        tokens: Some(match meter {
            Some(m) => token_usage(
                m.input_tokens,
                m.output_tokens,
                m.cache_read_tokens,
                m.cache_write_tokens,
                m.input_tokens.saturating_add(m.output_tokens),
                row.cost_micros,
            ),
            None => token_usage(0, 0, 0, 0, 0, row.cost_micros),
        }),
    }
}

fn sum(points: &[UsagePoint]) -> UsagePoint {
    let mut total = UsagePoint { tokens: Some(Default::default()), ..Default::default() };
    let tokens = total.tokens.as_mut().unwrap();
    for p in points {
        total.messages += p.messages;
        let t = p.tokens.unwrap_or_default();
        tokens.input_tokens += t.input_tokens;
        tokens.output_tokens += t.output_tokens;
        tokens.cache_read_tokens += t.cache_read_tokens;
        tokens.cache_write_tokens += t.cache_write_tokens;
        tokens.total_tokens += t.total_tokens;
        tokens.cost += t.cost;
    }
    total
}

/// Most periods one GetUsage answers.
const MAX_DAYS: i64 = 366;
const MAX_MONTHS: i64 = 120;

/// Months since year 0, for counting calendar months without iterating.
fn month_index(date: NaiveDate) -> i64 {
    i64::from(date.year()) * 12 + i64::from(date.month0())
}

/// The earliest date a request may reach: the protobuf Timestamp minimum.
fn min_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or(NaiveDate::MIN)
}

/// The period starts in [from, to): every day, or every month's first day.
/// Counted arithmetically and refused above the limit before anything is
/// built; `from` and `to` are already within the Timestamp range, so every
/// step below is checked arithmetic that cannot run away.
fn periods(period: UsagePeriod, from: NaiveDate, to: DateTime<Utc>) -> ApiResult<Vec<NaiveDate>> {
    let first = match period {
        UsagePeriod::Month => from.with_day(1).unwrap_or(from),
        _ => from,
    };
    if day_start(first) >= to {
        return Err(ApiError::invalid("from must be before to"));
    }
    // The last day that starts before `to`.
    let to_date = to.date_naive();
    let last = if day_start(to_date) < to { Some(to_date) } else { to_date.pred_opt() };
    let last = last.filter(|last| *last >= first).ok_or_else(|| ApiError::invalid("from must be before to"))?;
    let (count, limit, unit) = match period {
        UsagePeriod::Month => (month_index(last) - month_index(first) + 1, MAX_MONTHS, "months"),
        _ => ((last - first).num_days() + 1, MAX_DAYS, "days"),
    };
    if count > limit {
        return Err(ApiError::invalid(format!(
            "the range from {first} to {to} spans {count} {unit}; at most {limit} {unit} are allowed for this period"
        )));
    }
    (0..count as u32)
        .map(|i| match period {
            UsagePeriod::Month => first.checked_add_months(Months::new(i)),
            _ => first.checked_add_days(Days::new(u64::from(i))),
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiError::invalid("the range is outside the supported dates"))
}

#[tonic::async_trait]
impl UsageService for UsageApi {
    async fn list_plans(&self, request: Request<ListPlansRequest>) -> Result<Response<ListPlansResponse>, Status> {
        caller(&request)?;
        let plans = self.store.offered_plans().await.map_err(ApiError::from)?;
        Ok(Response::new(ListPlansResponse { plans: plans.into_iter().map(plan_message).collect() }))
    }

    async fn get_usage(&self, request: Request<GetUsageRequest>) -> Result<Response<GetUsageResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        required_id("tenant_id", &request.tenant_id)?;
        let period = match UsagePeriod::try_from(request.period) {
            Ok(UsagePeriod::Day) => UsagePeriod::Day,
            Ok(UsagePeriod::Month) => UsagePeriod::Month,
            _ => return Err(ApiError::invalid("period must be USAGE_PERIOD_DAY or USAGE_PERIOD_MONTH").into()),
        };
        let to = optional_timestamp("to", request.to.as_ref())?.unwrap_or_else(Utc::now);
        let from = match optional_timestamp("from", request.from.as_ref())? {
            Some(from) => from.date_naive(),
            // Checked: near the minimum date the default range is shortened.
            None => match period {
                UsagePeriod::Month => to.date_naive().checked_sub_months(Months::new(11)).and_then(|d| d.with_day(1)),
                _ => to.date_naive().checked_sub_days(Days::new(29)),
            }
            .unwrap_or_else(min_date)
            .max(min_date()),
        };
        let starts = periods(period, from, to)?;
        let tenant = visible_tenant(&self.store, &principal, &request.tenant_id).await?;
        let kind = match period {
            UsagePeriod::Month => "month",
            _ => "day",
        };
        let (Some(first), Some(last)) = (starts.first(), starts.last()) else {
            return Err(ApiError::invalid("from must be before to").into());
        };
        let end = last.succ_opt().unwrap_or(*last);
        let rows = self.store.usage_rows(&tenant.tenant.id, kind, *first, end).await.map_err(ApiError::from)?;
        let by_start: HashMap<String, store::Usage> = rows.into_iter().map(|r| (r.period_start.clone(), r)).collect();
        let meter = self.store.meter_rows(&tenant.tenant.id, kind, *first, end).await.map_err(ApiError::from)?;
        let meter: HashMap<String, store::MeterUsage> =
            meter.into_iter().map(|r| (r.period_start.clone(), r)).collect();
        let points: Vec<UsagePoint> =
            starts.iter().map(|s| point(*s, by_start.get(&s.to_string()), meter.get(&s.to_string()))).collect();
        Ok(Response::new(GetUsageResponse { total: Some(sum(&points)), points }))
    }

    async fn get_overview(
        &self,
        request: Request<GetOverviewRequest>,
    ) -> Result<Response<GetOverviewResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        let tenant = visible_tenant(&self.store, &principal, &request.tenant_id).await?;
        let tenant_id = tenant.tenant.id.as_str();
        let now = Utc::now();
        let today = now.date_naive();
        let first = today - chrono::Days::new(OVERVIEW_DAYS - 1);
        let tomorrow = today.succ_opt().unwrap_or(today);
        let store = &self.store;
        let days = store.usage_rows(tenant_id, "day", first, tomorrow).await.map_err(ApiError::from)?;
        let days: HashMap<String, store::Usage> = days.into_iter().map(|r| (r.period_start.clone(), r)).collect();
        let meter_days = store.meter_rows(tenant_id, "day", first, tomorrow).await.map_err(ApiError::from)?;
        let meter_days: HashMap<String, store::MeterUsage> =
            meter_days.into_iter().map(|r| (r.period_start.clone(), r)).collect();
        let month_start = today.with_day(1).unwrap_or(today);
        let month = store.usage_rows(tenant_id, "month", month_start, tomorrow).await.map_err(ApiError::from)?;
        let stats = store.session_stats(tenant_id, first, tomorrow).await.map_err(ApiError::from)?;
        let mut sessions_per_day: HashMap<String, i64> = HashMap::new();
        // channel -> (messages, response ms, responses)
        let mut per_channel: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
        for stat in &stats {
            *sessions_per_day.entry(stat.day.clone()).or_default() += stat.sessions;
            let entry = per_channel.entry(stat.channel.clone()).or_default();
            entry.0 += stat.messages;
            entry.1 += stat.response_time_total_ms;
            entry.2 += stat.response_count;
        }
        let active_in_window =
            store.active_sessions_by_channel(tenant_id, day_start(first)).await.map_err(ApiError::from)?;
        let active_today = store
            .active_sessions_by_channel(tenant_id, now - chrono::Duration::hours(24))
            .await
            .map_err(ApiError::from)?;
        let daily = (0..OVERVIEW_DAYS)
            .map(|offset| {
                let day = first + chrono::Days::new(offset);
                let key = day.to_string();
                let point = point(day, days.get(&key), meter_days.get(&key));
                DailyPoint {
                    day: point.period_start,
                    messages: point.messages,
                    sessions: sessions_per_day.get(&key).copied().unwrap_or(0),
                    tokens: point.tokens,
                }
            })
            .collect();
        let mut channels: Vec<ChannelShare> = per_channel
            .into_iter()
            .map(|(channel, (messages, response_ms, responses))| ChannelShare {
                sessions: active_in_window.get(&channel).copied().unwrap_or(0),
                channel,
                messages,
                avg_response_time_ms: if responses > 0 { response_ms as f64 / responses as f64 } else { 0.0 },
            })
            .collect();
        channels.sort_by(|a, b| b.messages.cmp(&a.messages).then_with(|| a.channel.cmp(&b.channel)));
        let standing = quota::standing(store, &tenant, now).await.map_err(ApiError::from)?;
        let limit = standing.message_limit;
        Ok(Response::new(GetOverviewResponse {
            quota_exceeded: standing.blocked,
            quota_reason: standing.reason,
            today_messages: days.get(&today.to_string()).map(|r| r.messages).unwrap_or(0),
            active_sessions: active_today.values().sum(),
            month_messages: month.first().map(|r| r.messages).unwrap_or(0),
            monthly_message_limit: limit,
            daily,
            channels,
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<GetSubscriptionResponse>, Status> {
        let principal = caller(&request)?;
        let tenant = visible_tenant(&self.store, &principal, &request.get_ref().tenant_id).await?;
        let standing = quota::standing(&self.store, &tenant, Utc::now()).await.map_err(ApiError::from)?;
        Ok(Response::new(GetSubscriptionResponse { subscription: Some(subscription_message(standing)) }))
    }

    async fn change_plan(&self, request: Request<ChangePlanRequest>) -> Result<Response<ChangePlanResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        required_id("tenant_id", &request.tenant_id)?;
        let plan_name = plan_name(&request.plan)?;
        let tenant = visible_tenant(&self.store, &principal, &request.tenant_id).await?;
        let subscription = self.change(&tenant, Some(plan_name), None, &principal, true).await?;
        Ok(Response::new(ChangePlanResponse { subscription: Some(subscription) }))
    }

    async fn set_subscription(
        &self,
        request: Request<SetSubscriptionRequest>,
    ) -> Result<Response<SetSubscriptionResponse>, Status> {
        let principal = admin(&request)?;
        let request = request.into_inner();
        required_id("tenant_id", &request.tenant_id)?;
        let status = match SubscriptionStatus::try_from(request.status) {
            Ok(SubscriptionStatus::Unspecified) => None,
            Ok(SubscriptionStatus::Active) => Some(store::SubscriptionStatus::Active),
            Ok(SubscriptionStatus::Trialing) => Some(store::SubscriptionStatus::Trialing),
            Ok(SubscriptionStatus::PastDue) => Some(store::SubscriptionStatus::PastDue),
            Ok(SubscriptionStatus::Canceled) => Some(store::SubscriptionStatus::Canceled),
            Err(_) => {
                return Err(ApiError::invalid(format!("status {} is not a SubscriptionStatus", request.status)).into())
            }
        };
        let plan = match request.plan.as_str() {
            "" => None,
            name => Some(plan_name(name)?),
        };
        if plan.is_none() && status.is_none() {
            return Err(ApiError::invalid("give a plan, a status, or both").into());
        }
        let tenant = visible_tenant(&self.store, &principal, &request.tenant_id).await?;
        let subscription = self.change(&tenant, plan, status, &principal, false).await?;
        Ok(Response::new(SetSubscriptionResponse { subscription: Some(subscription) }))
    }

    async fn list_billing_lines(
        &self,
        request: Request<ListBillingLinesRequest>,
    ) -> Result<Response<ListBillingLinesResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        let now = Utc::now();
        let at = optional_timestamp("at", request.at.as_ref())?.unwrap_or(now);
        let limit = match request.page_size {
            0 => BILLS_PER_PAGE,
            n if (1..=MAX_BILLS_PER_PAGE).contains(&n) => n,
            n => {
                return Err(ApiError::invalid(format!(
                    "page_size {n} is outside 1..={MAX_BILLS_PER_PAGE} (0: {BILLS_PER_PAGE})"
                ))
                .into())
            }
        } as u64;
        let after = decode_page_token(&request.page_token)?;
        if let Some(after) = &after {
            check_text("page_token", after, 128)?;
        }
        let tenants = self.tenants_in_view(&principal, &request.tenant_id).await?;
        let (periods, more) =
            self.store.periods_at(at, tenants.as_deref(), after.as_deref(), limit).await.map_err(ApiError::from)?;
        let mut plans: HashMap<String, store::Plan> = HashMap::new();
        let mut bills = Vec::with_capacity(periods.len());
        for period in &periods {
            if !plans.contains_key(&period.plan_id) {
                let plan = self.store.plan_by_id(&period.plan_id).await.map_err(ApiError::from)?;
                let plan = plan.ok_or(ApiError::NotFound("plan"))?;
                plans.insert(period.plan_id.clone(), plan);
            }
            let plan = &plans[&period.plan_id];
            bills.push(self.bill(period, plan, now).await?);
        }
        let last = periods.last().map(|p| p.tenant_id.as_str());
        Ok(Response::new(ListBillingLinesResponse { bills, next_page_token: next_page_token(more, last) }))
    }

    type WatchUsageEventsStream = std::pin::Pin<Box<dyn Stream<Item = Result<UsageEvent, Status>> + Send + 'static>>;

    async fn watch_usage_events(
        &self,
        request: Request<WatchUsageEventsRequest>,
    ) -> Result<Response<Self::WatchUsageEventsStream>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        if request.after_id < 0 {
            return Err(ApiError::invalid(format!("after_id {} is negative", request.after_id)).into());
        }
        let tenants = self.tenants_in_view(&principal, &request.tenant_id).await?;
        // Subscribed before the first read, so nothing recorded meanwhile is missed.
        let mut wakeups = self.store.usage_event_wakeups();
        let mut last = match request.after_id {
            0 => self.store.latest_usage_event_id().await.map_err(ApiError::from)?,
            after => after,
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let store = self.store.clone();
        let stop = self.shutdown.clone();
        self.shutdown.spawn(async move {
            loop {
                let rows = match store.usage_events_after(last, tenants.as_deref(), EVENTS_PER_READ).await {
                    Ok(rows) => rows,
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(ApiError::from(err)))).await;
                        return;
                    }
                };
                let full = rows.len() as u64 == EVENTS_PER_READ;
                for row in rows {
                    last = row.id;
                    if tx.send(Ok(event_message(row))).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    _ = stop.requested() => return,
                    _ = tx.closed() => return,
                    changed = wakeups.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(EVENT_POLL) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A plan name from a request.
fn plan_name(name: &str) -> ApiResult<&str> {
    if name.is_empty() {
        return Err(ApiError::invalid("plan is required"));
    }
    check_text("plan", name, MAX_PLAN_NAME)?;
    Ok(name)
}

impl UsageApi {
    /// Changes a tenant's plan and/or status: the plan must exist (and be
    /// offered, for an owner) and allow the tenant's channels. A change
    /// closes the period (PERIOD_CLOSED) and pushes the new allowance.
    async fn change(
        &self,
        tenant: &TenantRecord,
        plan_name: Option<&str>,
        status: Option<store::SubscriptionStatus>,
        principal: &Principal,
        offered_only: bool,
    ) -> ApiResult<Subscription> {
        let plan = match plan_name {
            None => None,
            Some(name) => {
                let plan = self.store.plan_by_name(name).await?;
                let plan = plan
                    .filter(|p| p.offered || !offered_only || p.name == tenant.plan)
                    .ok_or_else(|| ApiError::invalid(format!("unknown plan {name:?} (see UsageService.ListPlans)")))?;
                Some(plan)
            }
        };
        if let Some(plan) = plan.as_ref().filter(|p| p.name != tenant.plan) {
            let limit = plan.channel_limit.unwrap_or(0);
            if limit > 0 {
                let channels = self.live_channels(&tenant.tenant.id).await?;
                if channels > limit as usize {
                    return Err(ApiError::FailedPrecondition(format!(
                        "the tenant has {channels} channels and plan {:?} allows {limit}; remove {} first",
                        plan.name,
                        channels - limit as usize
                    )));
                }
            }
        }
        let change = self
            .store
            .change_subscription(&tenant.tenant, plan.as_ref(), status, &principal.user_id, Utc::now())
            .await?;
        if change.changed {
            if let Some(closed) = &change.closed {
                self.fleet.period_closed(closed).await?;
            }
            // The tenant as it is now (its plan changed with the subscription).
            let current = self.store.live_tenant(&tenant.tenant.id).await?.ok_or(ApiError::NotFound("tenant"))?;
            if let Err(err) = self.fleet.push_allowance(&current).await {
                // Recorded already; the sweep and the next ingest push it again.
                tracing::warn!(tenant = %tenant.tenant.id, error = %err, "pushing the new allowance failed");
            }
        }
        let standing = quota::standing(&self.store, tenant, Utc::now()).await?;
        Ok(subscription_message(standing))
    }

    /// Channels the tenant has, removed ones not counted.
    async fn live_channels(&self, tenant_id: &str) -> ApiResult<usize> {
        let rows = self.store.config_rows(tenant_id).await?;
        Ok(rows
            .iter()
            .filter(|r| r.config_type == crate::desired::CHANNEL && crate::desired::has_channel(&rows, &r.config_key))
            .count())
    }

    /// Which tenants a call looks at: one (visible to the caller), every
    /// tenant (an admin naming none: None), or the caller's own.
    async fn tenants_in_view(&self, principal: &Principal, tenant_id: &str) -> ApiResult<Option<Vec<String>>> {
        if !tenant_id.is_empty() {
            let tenant = visible_tenant(&self.store, principal, tenant_id).await?;
            return Ok(Some(vec![tenant.tenant.id]));
        }
        if principal.is_admin {
            return Ok(None);
        }
        let mut owners = vec![Owner::User(principal.user_id.clone())];
        owners.extend(principal.teams.iter().take(MAX_OWN_TEAMS).map(|t| Owner::Team(t.clone())));
        let mut ids = Vec::new();
        for owner in owners {
            if let Some(tenant) = self.store.live_tenant_of(&owner).await? {
                ids.push(tenant.tenant.id);
            }
        }
        if ids.is_empty() {
            return Err(ApiError::NotFound("tenant"));
        }
        Ok(Some(ids))
    }

    /// One tenant's bill for one period.
    async fn bill(
        &self,
        period: &store::BillingPeriod,
        plan: &store::Plan,
        now: DateTime<Utc>,
    ) -> ApiResult<TenantBill> {
        let until = now.min(period.end).max(period.start);
        let messages = self.store.messages_between(&period.tenant_id, period.start, until).await?;
        let tokens = self.store.platform_tokens_between(&period.tenant_id, period.start, until).await?;
        let terms = billing::Terms {
            plan_display_name: plan.display_name.clone(),
            price_minor: plan.price_monthly_cents,
            message_limit: plan.monthly_message_limit.unwrap_or(0).max(0),
            token_limit: plan.monthly_token_limit.unwrap_or(0).max(0),
            policy: store::OveragePolicy::parse(&plan.overage_policy),
            per_1k_tokens_minor: plan.overage_per_1k_tokens_minor,
            per_message_minor: plan.overage_per_message_minor,
        };
        let lines = billing::lines(&terms, messages, tokens);
        Ok(TenantBill {
            tenant_id: period.tenant_id.clone(),
            plan: plan.name.clone(),
            period_start: Some(timestamp(period.start)),
            period_end: Some(timestamp(period.end)),
            closed: period.end <= now,
            currency: plan.currency.clone(),
            total_minor: billing::total(&lines),
            lines: lines
                .into_iter()
                .map(|l| BillingLine {
                    kind: l.kind.to_string(),
                    description: l.description,
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                    amount_minor: l.amount_minor,
                })
                .collect(),
            messages_used: messages,
            tokens_used: tokens,
        })
    }
}
