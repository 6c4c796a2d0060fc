//! Where a tenant stands against its plan in the current period: the
//! messages (from transcripts) and tokens (from the meter, platform key
//! only) counted, the limits, whether platform model calls are refused and
//! why, and which thresholds are reached. One computation serves the
//! allowance pushed to hosts, GetSubscription and GetOverview. `billing`
//! turns a period's usage into lines.
pub mod billing;

use chrono::{DateTime, Utc};

use crate::store::{
    day_start, OveragePolicy, Store, StoreResult, SubscriptionRecord, SubscriptionStatus, TenantRecord,
};

/// A threshold of an allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Below,
    /// 80% or more used.
    Warning,
    /// All used.
    Reached,
}

impl Level {
    pub fn of(used: i64, limit: i64) -> Level {
        if limit <= 0 {
            return Level::Below;
        }
        let (used, limit) = (i128::from(used), i128::from(limit));
        if used >= limit {
            Level::Reached
        } else if used * 10 >= limit * 8 {
            Level::Warning
        } else {
            Level::Below
        }
    }

    pub fn percent(self) -> u8 {
        match self {
            Level::Below => 0,
            Level::Warning => 80,
            Level::Reached => 100,
        }
    }
}

/// A tenant's standing in its current period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub subscription: SubscriptionRecord,
    pub policy: OveragePolicy,
    /// 0: unlimited.
    pub message_limit: i64,
    pub messages_used: i64,
    /// 0: unlimited.
    pub token_limit: i64,
    pub tokens_used: i64,
    /// 0: unlimited.
    pub requests_per_minute: u32,
    /// Platform model calls are refused; `reason` says why, for people.
    pub blocked: bool,
    pub reason: String,
    pub messages_level: Level,
    pub tokens_level: Level,
}

impl Standing {
    /// What remains of a limit: -1 unlimited, never below 0.
    pub fn remaining(limit: i64, used: i64) -> i64 {
        if limit <= 0 {
            -1
        } else {
            limit.saturating_sub(used).max(0)
        }
    }
}

/// 1234567 -> "1,234,567".
pub fn grouped(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0 {
        out.insert(0, '-');
    }
    out
}

/// The standing of `tenant` at `now`.
pub async fn standing(store: &Store, tenant: &TenantRecord, now: DateTime<Utc>) -> StoreResult<Standing> {
    let subscription = store.subscription(&tenant.tenant).await?;
    let tenant_id = &tenant.tenant.id;
    // Usage up to now (or the period's end, for an ended cancelled one).
    // While the period runs, "up to now" is all of today so far: counted to
    // the end of today, today is a whole day read from its counter row
    // instead of counting its messages one by one (this runs after every
    // sync batch; periods end at midnight, so the end of today is in it).
    let until = match now < subscription.period_end {
        true => day_start(now.date_naive() + chrono::Days::new(1)).min(subscription.period_end),
        false => subscription.period_end,
    }
    .max(subscription.period_start);
    let messages_used = store.messages_between(tenant_id, subscription.period_start, until).await?;
    let tokens_used = store.platform_tokens_between(tenant_id, subscription.period_start, until).await?;
    Ok(assess(subscription, messages_used, tokens_used, now))
}

/// The pure part of [`standing`]: limits, levels, and whether calls stop.
pub fn assess(subscription: SubscriptionRecord, messages_used: i64, tokens_used: i64, now: DateTime<Utc>) -> Standing {
    let plan = &subscription.plan;
    let policy = OveragePolicy::parse(&plan.overage_policy);
    let message_limit = plan.monthly_message_limit.unwrap_or(0).max(0);
    let token_limit = plan.monthly_token_limit.unwrap_or(0).max(0);
    let messages_level = Level::of(messages_used, message_limit);
    let tokens_level = Level::of(tokens_used, token_limit);
    let renews = subscription.period_end.format("%Y-%m-%d %H:%M UTC");
    let reason = if subscription.status == SubscriptionStatus::Canceled && now >= subscription.period_end {
        format!("the subscription was cancelled and ended on {}", subscription.period_end.format("%Y-%m-%d %H:%M UTC"))
    } else if policy == OveragePolicy::Block && tokens_level == Level::Reached {
        format!(
            "tokens: the {} plan's {} tokens for this period are used up; the allowance renews on {renews}",
            plan.display_name,
            grouped(token_limit)
        )
    } else if policy == OveragePolicy::Block && messages_level == Level::Reached {
        format!(
            "messages: the {} plan's {} messages for this period are used up; the allowance renews on {renews}",
            plan.display_name,
            grouped(message_limit)
        )
    } else {
        String::new()
    };
    Standing {
        policy,
        message_limit,
        messages_used,
        token_limit,
        tokens_used,
        requests_per_minute: plan.requests_per_minute.unwrap_or(0).max(0) as u32,
        blocked: !reason.is_empty(),
        reason,
        messages_level,
        tokens_level,
        subscription,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_numbers() {
        assert_eq!(Level::of(0, 0), Level::Below, "unlimited");
        assert_eq!(Level::of(799, 1000), Level::Below);
        assert_eq!(Level::of(800, 1000), Level::Warning);
        assert_eq!(Level::of(1000, 1000), Level::Reached);
        assert_eq!(Level::of(i64::MAX, i64::MAX - 1), Level::Reached, "no overflow");
        assert_eq!(grouped(1_000_000), "1,000,000");
        assert_eq!(grouped(999), "999");
        assert_eq!(Standing::remaining(0, 5), -1);
        assert_eq!(Standing::remaining(10, 15), 0);
    }
}
