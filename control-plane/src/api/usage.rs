//! UsageService: usage series and the dashboard overview, from the counters
//! sync maintains, and the plans. Periods are calendar periods in UTC.
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc};
use clawplane_proto::v1::usage_service_server::UsageService;
use clawplane_proto::v1::{
    ChangePlanRequest, ChangePlanResponse, ChannelShare, DailyPoint, GetOverviewRequest, GetOverviewResponse,
    GetSubscriptionRequest, GetSubscriptionResponse, GetUsageRequest, GetUsageResponse, ListPlansRequest,
    ListPlansResponse, Plan, UsagePeriod, UsagePoint,
};
use tonic::{Request, Response, Status};

use super::error::{ApiError, ApiResult};
use super::request::{caller, optional_timestamp, required_id, timestamp, visible_tenant};
use super::sessions::token_usage;
use crate::store::{self, day_start, Store};

pub struct UsageApi {
    store: Store,
}

impl UsageApi {
    pub fn new(store: Store) -> Self {
        UsageApi { store }
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
    }
}

const LATER: &str = "subscriptions are not managed by Clawplane yet; the plan is set at CreateTenant";

/// Days of the overview's series, today included.
const OVERVIEW_DAYS: u64 = 30;

fn point(start: NaiveDate, row: Option<&store::Usage>) -> UsagePoint {
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
        tokens: Some(token_usage(
            row.input_tokens,
            row.output_tokens,
            row.cache_read_tokens,
            row.cache_write_tokens,
            row.total_tokens,
            row.cost_micros,
        )),
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
        let plans = self.store.list_plans().await.map_err(ApiError::from)?;
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
        let rows = self
            .store
            .usage_rows(&tenant.tenant.id, kind, *first, last.succ_opt().unwrap_or(*last))
            .await
            .map_err(ApiError::from)?;
        let by_start: HashMap<String, store::Usage> = rows.into_iter().map(|r| (r.period_start.clone(), r)).collect();
        let points: Vec<UsagePoint> = starts.iter().map(|s| point(*s, by_start.get(&s.to_string()))).collect();
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
                let point = point(day, days.get(&key));
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
        let limit = store
            .plan_by_name(&tenant.plan)
            .await
            .map_err(ApiError::from)?
            .and_then(|p| p.monthly_message_limit)
            .unwrap_or(0);
        Ok(Response::new(GetOverviewResponse {
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
        caller(&request)?;
        Err(ApiError::Unimplemented(LATER).into())
    }

    async fn change_plan(&self, request: Request<ChangePlanRequest>) -> Result<Response<ChangePlanResponse>, Status> {
        caller(&request)?;
        Err(ApiError::Unimplemented(LATER).into())
    }
}
