//! Scale to zero: a tenant whose plan allows it and that had no traffic for
//! its idle period has its gateway stopped (no process, no memory), and the
//! next request through the tenant proxy starts it again.
//!
//! [`Activity`] is the one record of traffic: the proxy marks every request
//! (bridge traffic and SendMessage turns both come through it) from its
//! start to the end of its response body or upgraded connection, so a turn
//! streaming an answer, or an open Control UI, keeps the gateway awake. The
//! [`watch`] loop hibernates a tenant only when no request is in flight,
//! none came for its idle period, and nothing else needs a live gateway: a
//! channel (Telegram and the like keep a connection or poll) or a cron job
//! the tenant scheduled (nothing would start it at the due time, so such a
//! tenant never hibernates). OpenClaw's own maintenance jobs (its
//! heartbeat, memory dreaming, skill review) wait for the wake: without a
//! channel they have no one to tell.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{GatewayPhase, LocalState, Runtime};
use clawplane_edge::shutdown::Shutdown;

#[derive(Debug)]
struct Entry {
    /// When the last request ended (or the tenant was first seen or woken).
    last: Instant,
    in_flight: u32,
    hibernated: bool,
}

/// Traffic and sleep of each tenant, shared by the proxy and the runtime.
#[derive(Debug, Default)]
pub struct Activity {
    tenants: Mutex<HashMap<String, Entry>>,
}

/// One request in flight for a tenant; its end counts as activity.
pub struct Active {
    activity: Arc<Activity>,
    tenant_id: String,
    /// Whether the tenant slept when the request began.
    pub found_asleep: bool,
}

impl Drop for Active {
    fn drop(&mut self) {
        let mut tenants = self.activity.tenants.lock().unwrap();
        if let Some(entry) = tenants.get_mut(&self.tenant_id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.last = Instant::now();
        }
    }
}

impl Activity {
    fn entry<'a>(tenants: &'a mut HashMap<String, Entry>, tenant_id: &str) -> &'a mut Entry {
        tenants.entry(tenant_id.to_string()).or_insert_with(|| Entry {
            last: Instant::now(),
            in_flight: 0,
            hibernated: false,
        })
    }

    /// Marks a request for the tenant in flight until the guard is dropped;
    /// the guard says whether the tenant slept (one lock per request).
    pub fn begin(self: &Arc<Self>, tenant_id: &str) -> Active {
        let mut tenants = self.tenants.lock().unwrap();
        let entry = Self::entry(&mut tenants, tenant_id);
        entry.in_flight += 1;
        entry.last = Instant::now();
        let found_asleep = entry.hibernated;
        Active { activity: self.clone(), tenant_id: tenant_id.to_string(), found_asleep }
    }

    /// Marks the tenant asleep (at agent start, from its record) or awake;
    /// waking starts its idle period over.
    pub fn set_hibernated(&self, tenant_id: &str, hibernated: bool) {
        let mut tenants = self.tenants.lock().unwrap();
        let entry = Self::entry(&mut tenants, tenant_id);
        entry.hibernated = hibernated;
        entry.last = Instant::now();
    }

    /// Whether the tenant is awake with no request in flight and none for
    /// `idle` (first seen now if unknown).
    pub fn is_idle(&self, tenant_id: &str, idle: Duration) -> bool {
        let mut tenants = self.tenants.lock().unwrap();
        let entry = Self::entry(&mut tenants, tenant_id);
        !entry.hibernated && entry.in_flight == 0 && entry.last.elapsed() >= idle
    }

    /// Marks the tenant asleep if no request is in flight and none came for
    /// `idle`, in one step, so a request arriving now either counts or
    /// finds it asleep and wakes it.
    pub fn claim_idle(&self, tenant_id: &str, idle: Duration) -> bool {
        let mut tenants = self.tenants.lock().unwrap();
        let entry = Self::entry(&mut tenants, tenant_id);
        if entry.hibernated || entry.in_flight > 0 || entry.last.elapsed() < idle {
            return false;
        }
        entry.hibernated = true;
        true
    }

    /// Forgets a deleted tenant.
    pub fn forget(&self, tenant_id: &str) {
        self.tenants.lock().unwrap().remove(tenant_id);
    }
}

/// Why a tenant's gateway must stay up whatever its traffic, if it must:
/// an enabled channel in its config, or an enabled cron job in its state
/// database. Unreadable state counts as a reason (never sleep on a guess).
pub fn needs_live_gateway(state_dir: &Path, owner: Option<(u32, u32)>) -> Option<String> {
    let config = match std::fs::read(state_dir.join("openclaw.json")) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Some(format!("cannot read openclaw.json: {err}")),
    };
    if !config.is_empty() {
        let Ok(config) = serde_json::from_slice::<Value>(&config) else {
            return Some("openclaw.json is not JSON".into());
        };
        if let Some(channels) = config.get("channels").and_then(Value::as_object) {
            let enabled =
                channels.iter().find(|(_, settings)| settings.get("enabled").and_then(Value::as_bool) != Some(false));
            if let Some((name, _)) = enabled {
                return Some(format!("channel {name} needs a live gateway"));
            }
        }
    }
    let state_db = state_dir.join("state").join("openclaw.sqlite");
    if !state_db.exists() {
        return None;
    }
    let jobs = crate::openclaw::database::open_read_only(&state_db, owner).and_then(|db| {
        let table: bool = db.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'cron_jobs'",
            [],
            |r| r.get(0),
        )?;
        if !table {
            return Ok(0);
        }
        // OpenClaw declares its own maintenance jobs (heartbeat:<agent>,
        // memory dreaming, skill review) with a declaration key; those wait
        // for the wake. A job the tenant scheduled has none.
        db.query_row("SELECT count(*) FROM cron_jobs WHERE enabled = 1 AND declaration_key IS NULL", [], |r| {
            r.get::<_, i64>(0)
        })
    });
    match jobs {
        Ok(0) => None,
        Ok(n) => Some(format!("{n} scheduled cron job(s) need a live gateway")),
        Err(err) => Some(format!("cannot read the cron jobs: {err}")),
    }
}

/// Whether an agent's transcript database changed within `idle`: a turn
/// that runs without a request in flight (one a tool or sub-agent goes on
/// with after its answer) keeps the gateway up.
fn written_within(state_dir: &Path, idle: Duration) -> Option<String> {
    let agents = std::fs::read_dir(state_dir.join("agents")).ok()?;
    for agent in agents.flatten() {
        for file in ["openclaw-agent.sqlite", "openclaw-agent.sqlite-wal"] {
            let path = agent.path().join("agent").join(file);
            let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else { continue };
            if modified.elapsed().unwrap_or_default() < idle {
                return Some(format!("{} written within the idle period", path.display()));
            }
        }
    }
    None
}

/// Every `every`, hibernates the tenants that may sleep; until shutdown.
pub async fn watch(runtime: Arc<dyn Runtime>, every: Duration, mut shutdown: Shutdown) {
    let Some(activity) = runtime.activity() else { return };
    for record in runtime.records().all() {
        if record.hibernated {
            activity.set_hibernated(&record.tenant_id, true);
        }
    }
    let mut kept_up: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.requested() => return,
        }
        let states: HashMap<String, LocalState> =
            runtime.local_states().into_iter().map(|state| (state.tenant_id.clone(), state)).collect();
        for record in runtime.records().all() {
            let idle = Duration::from_secs(record.resources.hibernate_after_secs);
            // The cheap checks first: most tenants have traffic or sleep.
            if idle.is_zero() || record.hibernated || !record.provisioned || !activity.is_idle(&record.tenant_id, idle)
            {
                continue;
            }
            if runtime.gateway(&record).phase != GatewayPhase::Running {
                continue;
            }
            let Some(state) = states.get(&record.tenant_id) else { continue };
            let (state_dir, owner) = (state.state_dir.clone(), state.owner);
            let keeps = tokio::task::spawn_blocking(move || {
                needs_live_gateway(&state_dir, owner).or_else(|| written_within(&state_dir, idle))
            })
            .await
            .ok()
            .flatten();
            if let Some(reason) = keeps {
                // Said once per reason, not at every check.
                if kept_up.get(&record.tenant_id) != Some(&reason) {
                    tracing::info!(tenant = %record.tenant_id, %reason, "tenant stays up past its idle period");
                    kept_up.insert(record.tenant_id.clone(), reason);
                }
                continue;
            }
            kept_up.remove(&record.tenant_id);
            match runtime.hibernate(&record.tenant_id, idle).await {
                Ok(true) => tracing::info!(tenant = %record.tenant_id, idle_s = idle.as_secs(), "tenant hibernated"),
                Ok(false) => {}
                Err(err) => tracing::warn!(tenant = %record.tenant_id, error = %err, "hibernating failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_in_flight_or_recent_keeps_the_tenant_awake() {
        let activity = Arc::new(Activity::default());
        let request = activity.begin("t1");
        assert!(!activity.claim_idle("t1", Duration::ZERO), "in flight");
        drop(request);
        assert!(!activity.claim_idle("t1", Duration::from_secs(3600)), "recent");
        assert!(activity.claim_idle("t1", Duration::ZERO), "idle");
        assert!(!activity.claim_idle("t1", Duration::ZERO), "already asleep");
        assert!(activity.begin("t1").found_asleep, "a request finds it asleep");
        activity.set_hibernated("t1", false);
        assert!(!activity.begin("t1").found_asleep);
    }

    #[test]
    fn a_transcript_written_within_the_idle_period_keeps_the_gateway_up() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(written_within(dir.path(), Duration::from_secs(60)), None, "no agents yet");
        let db = dir.path().join("agents/main/agent");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("openclaw-agent.sqlite-wal"), b"turn").unwrap();
        assert!(written_within(dir.path(), Duration::from_secs(60)).is_some(), "just written");
        assert_eq!(written_within(dir.path(), Duration::ZERO), None, "longer ago than the idle period");
    }

    #[test]
    fn channels_and_cron_jobs_keep_the_gateway_live() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(needs_live_gateway(dir.path(), None), None, "a fresh tenant");
        let config = dir.path().join("openclaw.json");
        std::fs::write(&config, r#"{"channels": {"telegram": {"enabled": false}}}"#).unwrap();
        assert_eq!(needs_live_gateway(dir.path(), None), None, "a disabled channel");
        std::fs::write(&config, r#"{"channels": {"telegram": {"dmPolicy": "pairing"}}}"#).unwrap();
        assert!(needs_live_gateway(dir.path(), None).unwrap().contains("telegram"));
        std::fs::write(&config, "{not json").unwrap();
        assert!(needs_live_gateway(dir.path(), None).is_some(), "unreadable config: stay up");
        std::fs::write(&config, "{}").unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let db = rusqlite::Connection::open(dir.path().join("state/openclaw.sqlite")).unwrap();
        db.execute_batch("CREATE TABLE other (x)").unwrap();
        assert_eq!(needs_live_gateway(dir.path(), None), None, "no cron table yet");
        db.execute_batch(
            "CREATE TABLE cron_jobs (job_id TEXT, declaration_key TEXT, enabled INTEGER);
             INSERT INTO cron_jobs VALUES ('a', NULL, 0), ('h', 'heartbeat:main', 1)",
        )
        .unwrap();
        assert_eq!(needs_live_gateway(dir.path(), None), None, "a disabled job, OpenClaw's own heartbeat");
        db.execute_batch("INSERT INTO cron_jobs VALUES ('b', NULL, 1)").unwrap();
        assert!(needs_live_gateway(dir.path(), None).unwrap().contains("cron"));
    }
}
