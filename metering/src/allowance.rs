//! Enforcement of each tenant's allowance (the last SetAllowanceCommand):
//! blocked, tokens and messages per period, calls per minute, and calls in
//! flight. Usage is the control plane's count up to `counted_through` plus
//! what this proxy metered after it: journal records (kept here as small
//! entries until an allowance counts them) and calls that ended but are not
//! on disk yet. Limits are checked before a call is forwarded, so a limit
//! is overshot by at most the calls in flight when it is crossed.
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clawplane_proto::v1::SetAllowanceCommand;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Calls of one tenant in flight at once; more are refused (429).
pub(crate) const MAX_IN_FLIGHT: usize = 64;

#[derive(Debug)]
pub(crate) enum Refusal {
    /// Blocked, or a limit of the period reached: what the user is shown.
    Quota(String),
    /// Calls per minute: when to come back.
    Rate(Duration),
    /// Too many calls of this tenant in flight.
    Busy,
}

/// What one call counts for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counted {
    pub tokens: i64,
    /// A completed call counts as one message.
    pub message: bool,
    pub platform_key: bool,
    pub started_ms: i64,
}

struct Entry {
    position: i64,
    counted: Counted,
}

#[derive(Default, Clone, Copy)]
struct Sums {
    tokens: i64,
    messages: i64,
}

impl Sums {
    fn add(&mut self, counted: &Counted, sign: i64) {
        self.tokens += sign * counted.tokens;
        self.messages += sign * i64::from(counted.message);
    }
}

#[derive(Default)]
struct Tenant {
    allowance: Option<SetAllowanceCommand>,
    limiter: Option<(u32, DefaultDirectRateLimiter)>,
    /// Journal records after `counted_through`, oldest first.
    entries: VecDeque<Entry>,
    /// Sums of `entries`: all of them, and those made with the platform's key.
    all: Sums,
    platform: Sums,
    /// Calls ended, not yet durable (no position yet), by call id.
    pending: HashMap<String, Counted>,
    in_flight: Arc<AtomicUsize>,
}

/// Holds a call's place among its tenant's calls in flight (and the
/// meter's, which the journal writer waits for at shutdown).
pub(crate) struct InFlight {
    tenant: Arc<AtomicUsize>,
    meter: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tenant.fetch_sub(1, Ordering::AcqRel);
        self.meter.fetch_sub(1, Ordering::AcqRel);
    }
}

fn millis(timestamp: &Option<prost_types::Timestamp>) -> Option<i64> {
    timestamp.as_ref().map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
}

#[derive(Default)]
pub(crate) struct Allowances {
    tenants: Mutex<HashMap<String, Tenant>>,
    /// Calls in flight across tenants.
    pub(crate) active: Arc<AtomicUsize>,
}

impl Allowances {
    pub(crate) fn set(&self, allowance: SetAllowanceCommand) {
        let mut tenants = self.tenants.lock().unwrap();
        let tenant = tenants.entry(allowance.tenant_id.clone()).or_default();
        while tenant.entries.front().is_some_and(|e| e.position <= allowance.counted_through) {
            let entry = tenant.entries.pop_front().expect("checked above");
            tenant.all.add(&entry.counted, -1);
            if entry.counted.platform_key {
                tenant.platform.add(&entry.counted, -1);
            }
        }
        let rpm = allowance.requests_per_minute;
        if tenant.limiter.as_ref().map(|(r, _)| *r) != Some(rpm) {
            tenant.limiter = NonZeroU32::new(rpm).map(|rpm| (rpm.get(), RateLimiter::direct(Quota::per_minute(rpm))));
        }
        tenant.allowance = Some(allowance);
    }

    pub(crate) fn get(&self, tenant_id: &str) -> Option<SetAllowanceCommand> {
        self.tenants.lock().unwrap().get(tenant_id).and_then(|t| t.allowance.clone())
    }

    pub(crate) fn all(&self) -> HashMap<String, SetAllowanceCommand> {
        let tenants = self.tenants.lock().unwrap();
        tenants.iter().filter_map(|(id, t)| Some((id.clone(), t.allowance.clone()?))).collect()
    }

    pub(crate) fn forget(&self, tenant_id: &str) {
        self.tenants.lock().unwrap().remove(tenant_id);
    }

    /// A record is on disk at `position`.
    pub(crate) fn durable(&self, tenant_id: &str, call_id: &str, position: i64, counted: Counted) {
        let mut tenants = self.tenants.lock().unwrap();
        let Some(tenant) = tenants.get_mut(tenant_id) else { return };
        tenant.pending.remove(call_id);
        tenant.push(position, counted);
    }

    /// At start, a record read back from the journal.
    pub(crate) fn replay(&self, tenant_id: &str, position: i64, counted: Counted) {
        let mut tenants = self.tenants.lock().unwrap();
        let tenant = tenants.entry(tenant_id.to_string()).or_default();
        if tenant.allowance.as_ref().is_none_or(|a| position > a.counted_through) {
            tenant.push(position, counted);
        }
    }

    /// A call ended; it counts at once, before its record is on disk.
    pub(crate) fn ended(&self, tenant_id: &str, call_id: &str, counted: Counted) {
        let mut tenants = self.tenants.lock().unwrap();
        tenants.entry(tenant_id.to_string()).or_default().pending.insert(call_id.to_string(), counted);
    }

    /// Lets a call through, or says why not.
    pub(crate) fn admit(&self, tenant_id: &str, platform_key: bool, now_ms: i64) -> Result<InFlight, Refusal> {
        let mut tenants = self.tenants.lock().unwrap();
        let tenant = tenants.entry(tenant_id.to_string()).or_default();
        if tenant.in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
            return Err(Refusal::Busy);
        }
        if let Some((_, limiter)) = &tenant.limiter {
            limiter.check().map_err(|not_until| Refusal::Rate(not_until.wait_time_from(limiter.clock().now())))?;
        }
        tenant.check_quota(platform_key, now_ms)?;
        tenant.in_flight.fetch_add(1, Ordering::AcqRel);
        self.active.fetch_add(1, Ordering::AcqRel);
        Ok(InFlight { tenant: tenant.in_flight.clone(), meter: self.active.clone() })
    }
}

impl Tenant {
    fn push(&mut self, position: i64, counted: Counted) {
        self.all.add(&counted, 1);
        if counted.platform_key {
            self.platform.add(&counted, 1);
        }
        self.entries.push_back(Entry { position, counted });
    }

    fn check_quota(&self, platform_key: bool, now_ms: i64) -> Result<(), Refusal> {
        let Some(allowance) = &self.allowance else { return Ok(()) };
        if allowance.platform_key_only && !platform_key {
            return Ok(());
        }
        if allowance.blocked {
            let reason = allowance.blocked_reason.trim();
            return Err(Refusal::Quota(if reason.is_empty() {
                "Clawplane: model calls are paused for this workspace.".to_string()
            } else {
                format!("Clawplane: {reason}")
            }));
        }
        if allowance.token_limit <= 0 && allowance.message_limit <= 0 {
            return Ok(());
        }
        let (tokens, messages) = self.used(allowance, now_ms);
        let what = if allowance.token_limit > 0 && tokens >= allowance.token_limit {
            format!("{tokens} of {} tokens", allowance.token_limit)
        } else if allowance.message_limit > 0 && messages >= allowance.message_limit {
            format!("{messages} of {} messages", allowance.message_limit)
        } else {
            return Ok(());
        };
        // Worded to stay clear of what OpenClaw reads as billing or rate
        // limits (it would show its own text, or retry): it shows this.
        Err(Refusal::Quota(format!(
            "Clawplane: this workspace has used its model allowance for the current period ({what}). \
             Model calls resume when the allowance is raised or the next period begins."
        )))
    }

    /// Tokens and messages used in the period `now_ms` falls in.
    fn used(&self, allowance: &SetAllowanceCommand, now_ms: i64) -> (i64, i64) {
        let counts = |c: &Counted| !allowance.platform_key_only || c.platform_key;
        let (start, end) = (millis(&allowance.period_start), millis(&allowance.period_end));
        let pending = |since: Option<i64>| {
            self.pending.values().filter(|c| counts(c) && since.is_none_or(|s| c.started_ms >= s)).fold(
                Sums::default(),
                |mut sums, c| {
                    sums.add(c, 1);
                    sums
                },
            )
        };
        let before = start.is_some_and(|start| now_ms < start);
        let after = end.is_some_and(|end| now_ms >= end);
        if !before && !after {
            let journal = if allowance.platform_key_only { self.platform } else { self.all };
            let pending = pending(None);
            return (
                allowance.tokens_used + journal.tokens + pending.tokens,
                allowance.messages_used + journal.messages + pending.messages,
            );
        }
        // Outside the period the control plane's counts do not apply: a new
        // period starts from zero here, with the calls made since it began.
        let since = if after { end } else { Some(now_ms) };
        let mut sums = pending(since);
        for entry in &self.entries {
            if counts(&entry.counted) && since.is_none_or(|s| entry.counted.started_ms >= s) {
                sums.add(&entry.counted, 1);
            }
        }
        (sums.tokens, sums.messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn allowance(now_ms: i64) -> SetAllowanceCommand {
        let at = |ms: i64| Some(prost_types::Timestamp { seconds: ms / 1000, nanos: 0 });
        SetAllowanceCommand {
            tenant_id: "t".into(),
            period_start: at(now_ms - HOUR),
            period_end: at(now_ms + HOUR),
            token_limit: 100,
            ..Default::default()
        }
    }

    fn call(tokens: i64, started_ms: i64) -> Counted {
        Counted { tokens, message: true, platform_key: true, started_ms }
    }

    #[test]
    fn calls_in_flight_are_capped_per_tenant() {
        let allowances = Allowances::default();
        let held: Vec<_> = (0..MAX_IN_FLIGHT).map(|_| allowances.admit("t", true, 0).unwrap()).collect();
        assert!(matches!(allowances.admit("t", true, 0), Err(Refusal::Busy)));
        assert!(allowances.admit("u", true, 0).is_ok(), "another tenant has its own");
        drop(held);
        assert!(allowances.admit("t", true, 0).is_ok());
        assert_eq!(allowances.active.load(Ordering::Acquire), 0);
    }

    #[test]
    fn usage_counts_pending_and_durable_calls_after_counted_through() {
        let now = 1_800_000_000_000;
        let allowances = Allowances::default();
        allowances.set(allowance(now));
        allowances.ended("t", "a", call(60, now));
        assert!(allowances.admit("t", true, now).is_ok(), "60 < 100");
        allowances.durable("t", "a", 30, call(60, now));
        allowances.ended("t", "b", call(40, now));
        assert!(matches!(allowances.admit("t", true, now), Err(Refusal::Quota(_))), "pending counts at once");
        allowances.durable("t", "b", 90, call(40, now));
        // The control plane counted the first (60); the second is still ours.
        let mut counted = allowance(now);
        counted.tokens_used = 60;
        counted.counted_through = 30;
        allowances.set(counted.clone());
        assert!(matches!(allowances.admit("t", true, now), Err(Refusal::Quota(_))), "60 + 40");
        counted.tokens_used = 50;
        allowances.set(counted.clone());
        assert!(allowances.admit("t", true, now).is_ok(), "50 + 40");
        // A tenant's own key is not limited under platform_key_only.
        counted.tokens_used = 500;
        counted.platform_key_only = true;
        allowances.set(counted.clone());
        assert!(allowances.admit("t", false, now).is_ok());
        assert!(allowances.admit("t", true, now).is_err());
        // After the period: only calls since its end count.
        let later = now + 2 * HOUR;
        assert!(allowances.admit("t", true, later).is_ok(), "the old period's counts do not apply");
        allowances.ended("t", "c", call(100, later));
        assert!(allowances.admit("t", true, later).is_err(), "the new period's own calls do");
    }
}
