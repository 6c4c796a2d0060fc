//! Sync: streams what OpenClaw writes on this host (sessions, transcript
//! events, outside config changes) to the control plane over
//! `AgentService/Sync`, off the command stream.
//!
//! A `notify` watcher marks a tenant dirty when anything under its state
//! changes (during a turn only the `*.sqlite-wal` files do); the loop reads
//! what is new right away, in batches of at most [`BATCH_RECORDS`], with at
//! most [`MAX_IN_FLIGHT`] batches unacknowledged. Positions are persisted
//! only from the control plane's acks, so a crash or a dropped connection
//! re-sends instead of losing, and ingestion deduplicates.
pub mod config;
pub mod cursors;
pub mod event;
pub mod jsonl;
pub mod meter;
pub mod reading;
pub mod sqlite;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use clawplane_metering::Journal;
use clawplane_proto::v1::agent_service_client::AgentServiceClient;
use clawplane_proto::v1::{SyncBatch, SyncRecord, SyncRequest};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;

use cursors::{CursorKey, Cursors, Position};
pub use reading::Reading;

use crate::config::STABLE_SESSION;
use crate::retry::{Backoff, Retries};
use crate::rpc::transport_detail;
use clawplane_edge::shutdown::Shutdown;

/// Records per batch: the control plane's limit, so a backlog goes out in
/// as few transactions as it takes (each batch is one on its side).
pub const BATCH_RECORDS: usize = 2_000;
/// Batches sent and not yet acknowledged.
pub const MAX_IN_FLIGHT: usize = 4;
/// A batch also closes at this size, so one message stays far below the
/// control plane's limit even with multi-MiB events.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Largest message sent; the control plane accepts 32 MiB.
const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// A second look shortly after a burst: the WAL write that woke us may land
/// a moment before its commit is visible to readers.
const RECHECK_AFTER: Duration = Duration::from_millis(50);
/// Everything is rescanned this often, in case the watcher missed events
/// (e.g. an inotify queue overflow).
const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);
const TENANT_REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How long a stopping syncer waits for the acks of its batches in flight
/// (unacknowledged ones are sent again by the next run).
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// How soon a tenant held by a command is looked at again.
const BUSY_RETRY: Duration = Duration::from_millis(250);

/// A tenant whose OpenClaw state this host syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTenant {
    pub tenant_id: String,
    /// The tenant's OPENCLAW_STATE_DIR.
    pub state_dir: PathBuf,
    /// The tenant's OS user (uid, gid), whose files these are.
    pub owner: Option<(u32, u32)>,
}

/// Where the syncer learns which tenants run here and which config writes
/// are the agent's own.
pub trait TenantSource: Send + Sync + 'static {
    fn tenants(&self) -> Vec<SyncTenant>;
    /// Permission to read a tenant now; `None` while a command holds it
    /// (provisioning, a config write, a delete removing the tree).
    fn read_permit(&self, tenant_id: &str) -> Option<ReadPermit>;
}

/// Held while a tenant's state is read.
pub struct ReadPermit {
    /// The content hash of the agent's own last write of openclaw.json.
    pub own_config_hash: String,
    pub _hold: Box<dyn Send>,
}

/// Agents of a tenant: the directories under `agents/`.
fn agent_ids(state_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("agents")) else { return Vec::new() };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|id| crate::openclaw::valid_agent_id(id))
        .collect();
    ids.sort();
    ids
}

/// Reads everything new of one tenant, up to `budget` records: its model
/// calls first (they are what it is billed by), then its OpenClaw state.
fn read_tenant(
    tenant: &SyncTenant,
    journal: Option<&Journal>,
    own_hash: &str,
    cursors: &Cursors,
    budget: usize,
) -> Reading {
    let mut reading = Reading::default();
    if let Some(journal) = journal {
        match meter::read(journal, &tenant.tenant_id, cursors, budget) {
            Ok(calls) => reading.extend(calls),
            Err(err) => tracing::warn!(tenant = %tenant.tenant_id, error = %err, "cannot read the model call journal"),
        }
        if reading.more {
            return reading;
        }
    }
    match config::observe(&tenant.state_dir, &tenant.tenant_id, own_hash, cursors) {
        Ok(Some(observed)) => reading.extend(observed),
        Ok(None) => {}
        Err(err) => tracing::warn!(tenant = %tenant.tenant_id, error = %err, "cannot read openclaw.json"),
    }
    for agent_id in agent_ids(&tenant.state_dir) {
        let room = budget.saturating_sub(reading.records.len());
        if room == 0 {
            reading.more = true;
            break;
        }
        let db = tenant.state_dir.join("agents").join(&agent_id).join("agent").join("openclaw-agent.sqlite");
        if sqlite::in_wal_mode(&db) {
            match sqlite::read(&db, tenant.owner, &tenant.tenant_id, &agent_id, cursors, room) {
                Ok(more) => reading.extend(more),
                Err(sqlite::SqliteError::NoSchemaYet) => {
                    tracing::debug!(database = %db.display(), "agent database has no schema yet; read once it does")
                }
                Err(err) => log_once(&db, &err.to_string()),
            }
        }
        let room = budget.saturating_sub(reading.records.len());
        if room == 0 {
            reading.more = true;
            break;
        }
        match jsonl::read(&tenant.state_dir, &tenant.tenant_id, &agent_id, cursors, room) {
            Ok(more) => reading.extend(more),
            Err(err) => {
                tracing::warn!(tenant = %tenant.tenant_id, agent = %agent_id, error = %err, "cannot read legacy transcripts")
            }
        }
    }
    reading
}

/// An unreadable source is reported once per distinct problem, not on
/// every scan.
fn log_once(path: &Path, problem: &str) {
    static SEEN: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap();
    let seen = seen.get_or_insert_with(HashMap::new);
    if seen.get(path).map(String::as_str) != Some(problem) {
        tracing::error!(database = %path.display(), %problem, "agent database not synced");
        seen.insert(path.to_path_buf(), problem.to_string());
    }
}

/// Tenants marked for a read, from the watcher or the loop itself.
#[derive(Default)]
struct Dirty {
    tenants: Mutex<HashSet<String>>,
    wake: Notify,
}

impl Dirty {
    fn mark(&self, tenant_id: &str) {
        if self.tenants.lock().unwrap().insert(tenant_id.to_string()) {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.tenants.lock().unwrap())
    }
}

pub struct Syncer {
    source: Arc<dyn TenantSource>,
    /// The metering proxy's journal, when this host runs one.
    journal: Option<Journal>,
    cursors: Arc<Mutex<Cursors>>,
    dirty: Arc<Dirty>,
    /// State dirs being watched, by tenant id (shared with the watcher).
    roots: Arc<RwLock<Vec<WatchedRoot>>>,
}

/// What is watched of one tenant's state dir: the dir itself (not its
/// subtrees: the gateway keeps caches there, hundreds of directories it
/// rewrites at every start) and, once it exists, `agents/` with all below.
struct WatchedRoot {
    state_dir: PathBuf,
    tenant_id: String,
    agents_watched: bool,
}

/// Whether a change at `relative` (to a state dir) can change what sync
/// reads: the config, an agent's database or its WAL, legacy transcripts,
/// or an agent coming or going. Anything else the gateway writes (its
/// global state database, caches) must not set off a read: under load that
/// kept the agent reading the tenant's state back to back.
fn relevant(relative: &Path) -> bool {
    let parts: Vec<&std::ffi::OsStr> = relative.iter().collect();
    match parts.as_slice() {
        [name] => *name == "openclaw.json" || *name == "agents",
        [agents, _] => *agents == "agents",
        [agents, _, dir, rest @ ..] if *agents == "agents" => match (dir.to_str(), rest) {
            (Some("agent"), []) | (Some("sessions"), _) => true,
            (Some("agent"), [file]) => file.to_str().is_some_and(|f| f.starts_with("openclaw-agent.sqlite")),
            _ => false,
        },
        _ => false,
    }
}

impl Syncer {
    pub fn new(state_dir: &Path, source: Arc<dyn TenantSource>, journal: Option<Journal>) -> anyhow::Result<Syncer> {
        Ok(Syncer {
            source,
            journal,
            cursors: Arc::new(Mutex::new(Cursors::load(state_dir)?)),
            dirty: Default::default(),
            roots: Default::default(),
        })
    }

    /// Runs until shutdown: watches, reads, sends, commits acked
    /// positions, and reconnects with backoff when the stream fails.
    pub async fn run<F>(self, connect: F, mut shutdown: Shutdown)
    where
        F: Fn() -> anyhow::Result<tonic::transport::Channel>,
    {
        let roots = self.roots.clone();
        let dirty = self.dirty.clone();
        let watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            let Ok(event) = result else {
                // Overflow or a watcher error: read everything.
                for root in roots.read().unwrap().iter() {
                    dirty.mark(&root.tenant_id);
                }
                return;
            };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let roots = roots.read().unwrap();
            for path in &event.paths {
                let changed = roots.iter().find_map(|root| Some((root, path.strip_prefix(&root.state_dir).ok()?)));
                if let Some((root, _)) = changed.filter(|(_, relative)| relevant(relative)) {
                    dirty.mark(&root.tenant_id);
                }
            }
        });
        // A model call ends: its tenant has a record to send.
        if let Some(journal) = self.journal.clone() {
            let (dirty, mut changes, mut stop) = (self.dirty.clone(), journal.changes(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        changed = changes.changed() => if changed.is_err() { return },
                        _ = stop.requested() => return,
                    }
                    for tenant_id in journal.tenants() {
                        dirty.mark(&tenant_id);
                    }
                }
            });
        }
        let mut watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::error!(error = %err, "cannot watch tenant state; falling back to periodic scans");
                None
            }
        };
        let mut retries = Retries::new(Backoff::RECONNECT, STABLE_SESSION);
        while !shutdown.is_requested() {
            let started = Instant::now();
            let reason = match connect() {
                Ok(channel) => self.session(channel, &mut watcher, &mut shutdown).await,
                Err(err) => format!("{err:#}"),
            };
            if shutdown.is_requested() {
                break;
            }
            let delay = retries.after(started.elapsed());
            tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "sync stream lost");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.requested() => {}
            }
        }
        tracing::debug!("sync stopped");
    }

    /// Adds watches for new tenants and forgets departed ones.
    fn refresh_tenants(&self, watcher: &mut Option<notify::RecommendedWatcher>) -> HashMap<String, SyncTenant> {
        let tenants: HashMap<String, SyncTenant> =
            self.source.tenants().into_iter().map(|t| (t.tenant_id.clone(), t)).collect();
        let mut roots = self.roots.write().unwrap();
        roots.retain(|root| {
            let keep = tenants.get(&root.tenant_id).is_some_and(|t| t.state_dir == root.state_dir);
            if let (false, Some(watcher)) = (keep, watcher.as_mut()) {
                let _ = watcher.unwatch(&root.state_dir);
                if root.agents_watched {
                    let _ = watcher.unwatch(&root.state_dir.join("agents"));
                }
            }
            keep
        });
        for tenant in tenants.values() {
            if roots.iter().any(|root| root.tenant_id == tenant.tenant_id) || !tenant.state_dir.is_dir() {
                continue;
            }
            if let Some(watcher) = watcher.as_mut() {
                if let Err(err) = watcher.watch(&tenant.state_dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(tenant = %tenant.tenant_id, error = %err, "cannot watch tenant state");
                    continue;
                }
            }
            roots.push(WatchedRoot {
                state_dir: tenant.state_dir.clone(),
                tenant_id: tenant.tenant_id.clone(),
                agents_watched: false,
            });
            self.dirty.mark(&tenant.tenant_id);
        }
        // `agents/` appears with the first agent; watched from then on, and
        // read once in case something landed before the watch did. Gone
        // again (every agent removed), it is watched anew when it returns.
        for root in roots.iter_mut() {
            let Some(watcher) = watcher.as_mut() else { break };
            let agents = root.state_dir.join("agents");
            match (root.agents_watched, agents.is_dir()) {
                (true, false) => {
                    let _ = watcher.unwatch(&agents);
                    root.agents_watched = false;
                }
                (false, true) => match watcher.watch(&agents, RecursiveMode::Recursive) {
                    Ok(()) => {
                        root.agents_watched = true;
                        self.dirty.mark(&root.tenant_id);
                    }
                    Err(err) => tracing::warn!(tenant = %root.tenant_id, error = %err, "cannot watch tenant agents"),
                },
                _ => {}
            }
        }
        drop(roots);
        let keep: HashSet<String> = tenants.keys().cloned().collect();
        if let Err(err) = self.cursors.lock().unwrap().retain_tenants(&keep) {
            tracing::warn!(error = %err, "cannot prune sync cursors");
        }
        tenants
    }

    /// One sync stream, until it fails or, asked to shut down, the
    /// batches in flight are acknowledged (or [`SHUTDOWN_DRAIN`] passed).
    async fn session(
        &self,
        channel: tonic::transport::Channel,
        watcher: &mut Option<notify::RecommendedWatcher>,
        shutdown: &mut Shutdown,
    ) -> String {
        let (tx, rx) = mpsc::channel::<SyncRequest>(MAX_IN_FLIGHT);
        let mut client = AgentServiceClient::new(channel).max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut acks = match client.sync(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return transport_detail(&status),
        };
        self.cursors.lock().unwrap().rewind();
        let mut in_flight: VecDeque<(String, Vec<(CursorKey, Position)>)> = VecDeque::new();
        let mut tenants = self.refresh_tenants(watcher);
        for id in tenants.keys() {
            self.dirty.mark(id);
        }
        let mut pending: HashSet<String> = HashSet::new();
        let mut rechecks: HashSet<String> = HashSet::new();
        let mut recheck_at: Option<tokio::time::Instant> = None;
        let mut refresh = tokio::time::interval(TENANT_REFRESH_EVERY);
        let mut full_scan = tokio::time::interval(FULL_SCAN_EVERY);
        let mut batch_seq: u64 = 0;
        let mut draining = false;
        // Set once shutdown is asked for: nothing new is read, the acks of
        // what is in flight are awaited until then.
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            if stopping.is_some() && in_flight.is_empty() {
                return "shutting down".into();
            }
            // Send while the window has room and something may be new.
            let woke = self.dirty.take();
            for tenant in &woke {
                rechecks.insert(tenant.clone());
            }
            if !woke.is_empty() && recheck_at.is_none() {
                recheck_at = Some(tokio::time::Instant::now() + RECHECK_AFTER);
            }
            pending.extend(woke);
            // Several batches in flight only while draining a backlog (full
            // batches); otherwise the next read waits for the ack, so what
            // arrives meanwhile goes out as one batch, not many small ones.
            while stopping.is_none() && in_flight.len() < MAX_IN_FLIGHT && (in_flight.is_empty() || draining) {
                let Some(tenant_id) = pending.iter().next().cloned() else { break };
                let Some(tenant) = tenants.get(&tenant_id).cloned() else {
                    pending.remove(&tenant_id);
                    continue;
                };
                let Some(permit) = self.source.read_permit(&tenant_id) else {
                    // Busy: look again shortly, without spinning.
                    pending.remove(&tenant_id);
                    rechecks.insert(tenant_id);
                    recheck_at.get_or_insert(tokio::time::Instant::now() + BUSY_RETRY);
                    continue;
                };
                let (cursors, journal) = (self.cursors.clone(), self.journal.clone());
                let reading = tokio::task::spawn_blocking(move || {
                    let cursors = cursors.lock().unwrap();
                    let reading =
                        read_tenant(&tenant, journal.as_ref(), &permit.own_config_hash, &cursors, BATCH_RECORDS);
                    drop(permit);
                    reading
                })
                .await
                .unwrap_or_default();
                draining = reading.more;
                if !reading.more {
                    pending.remove(&tenant_id);
                }
                if reading.records.is_empty() && reading.advanced.is_empty() {
                    continue;
                }
                for batch in split(reading) {
                    batch_seq += 1;
                    let batch_id = format!("{}-{batch_seq}", std::process::id());
                    {
                        let mut cursors = self.cursors.lock().unwrap();
                        for (key, at) in &batch.1 {
                            cursors.advance(key.clone(), at.clone());
                        }
                    }
                    let request = SyncRequest {
                        batch: Some(SyncBatch {
                            batch_id: batch_id.clone(),
                            records: batch.0,
                            cursors_to_ack_on_commit: batch.1.iter().map(|(k, at)| k.to_proto(at.position)).collect(),
                        }),
                    };
                    in_flight.push_back((batch_id, batch.1));
                    if tx.send(request).await.is_err() {
                        return "sync stream closed".into();
                    }
                }
            }
            let recheck = async {
                match recheck_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ack = acks.message() => {
                    let ack = match ack {
                        Ok(Some(response)) => match response.ack { Some(ack) => ack, None => continue },
                        Ok(None) => return "control plane closed the sync stream".into(),
                        Err(status) => return transport_detail(&status),
                    };
                    let Some((batch_id, positions)) = in_flight.pop_front() else {
                        return format!("unexpected ack for batch {}", ack.batch_id);
                    };
                    if batch_id != ack.batch_id {
                        return format!("ack for batch {} while {batch_id} was expected", ack.batch_id);
                    }
                    for rejection in &ack.rejections {
                        tracing::warn!(batch = %batch_id, index = rejection.index, reason = %rejection.reason, detail = %rejection.message, "control plane rejected a sync record");
                    }
                    let committed: Vec<_> = positions
                        .into_iter()
                        .filter(|(key, _)| ack.committed_cursors.iter().any(|c| key.matches(c)))
                        .collect();
                    if let Err(err) = self.cursors.lock().unwrap().commit(committed) {
                        tracing::error!(error = %err, "cannot persist sync cursors");
                    }
                }
                _ = self.dirty.wake.notified() => {}
                _ = recheck => {
                    recheck_at = None;
                    pending.extend(rechecks.drain());
                }
                _ = refresh.tick() => {
                    tenants = self.refresh_tenants(watcher);
                }
                _ = full_scan.tick() => {
                    pending.extend(tenants.keys().cloned());
                }
                _ = shutdown.requested(), if stopping.is_none() => {
                    stopping = Some(tokio::time::Instant::now() + SHUTDOWN_DRAIN);
                }
                _ = tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)), if stopping.is_some() => {
                    return "shutting down before the control plane acknowledged every batch".into();
                }
            }
        }
    }
}

/// Splits a reading into batches that respect the byte budget. Positions
/// go with the last batch, so none is committed before all its records.
fn split(reading: Reading) -> Vec<(Vec<SyncRecord>, Vec<(CursorKey, Position)>)> {
    use prost::Message;
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for record in reading.records {
        let size = record.encoded_len();
        if !current.is_empty() && bytes + size > BATCH_BYTES {
            batches.push((std::mem::take(&mut current), Vec::new()));
            bytes = 0;
        }
        bytes += size;
        current.push(record);
    }
    batches.push((current, reading.advanced));
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_to_what_sync_reads_set_off_a_read() {
        let cases: &[(&str, bool)] = &[
            ("openclaw.json", true),
            ("agents", true),
            ("agents/main", true),
            ("agents/main/agent", true),
            ("agents/main/agent/openclaw-agent.sqlite", true),
            ("agents/main/agent/openclaw-agent.sqlite-wal", true),
            ("agents/main/sessions", true),
            ("agents/main/sessions/0193.jsonl", true),
            ("agents/main/sessions/sessions.json", true),
            ("openclaw.json.tmp-1234", false),
            ("state/openclaw.sqlite-wal", false),
            ("cache/control-ui-assets/.staging-1/assets/app.js.br", false),
            ("workspaces/main/SOUL.md", false),
            ("agents/main/agent/auth-profiles.json", false),
            ("agents/main/models/cache.json", false),
        ];
        for (path, expected) in cases {
            assert_eq!(relevant(Path::new(path)), *expected, "{path}");
        }
    }
}
