//! The connected agent streams and what rides on them: one session per
//! host (a newer connection replaces the older), the durable command queue
//! and the callers waiting on results, liveness leases, and log routes.
//!
//! Across replicas: a host's stream is claimed in its row under a new
//! generation, so exactly one stream per host acts cluster-wide; the others
//! hear [`ClusterEvent`]s (a command queued or answered, a stream claimed,
//! a host removed) and look at the tables again. A lost event is caught by
//! the slow poll of sessions and waiters.
//!
//! A host's identity comes only from its verified client certificate, looked
//! up by fingerprint in the store on every call ([`Fleet::authorize`]).
//! Commands are rows in `host_commands`; a connected session pushes them,
//! the agent acknowledges and answers by id, and anything without a final
//! answer is pushed again on the next connection. The agent remembers what
//! it already executed, so redelivery is harmless.
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use clawplane_edge::shutdown::ShutdownSignal;
use clawplane_proto::v1::{self as pb, command};
use prost::Message;
use serde_json::json;
use tokio::sync::{watch, Notify};

use super::error::{FleetError, FleetResult};
use super::logs::{LogAsk, LogRoutes, LogSubscription};
use super::peer::{Outbound, PeerCertificate};
use crate::desired::DesiredConfigs;
use crate::pki::Pki;
use crate::store::stored_inventory;
use crate::store::{ClusterEvent, CommandKind, Host, HostCommand, HostState, Store};
use crate::wire::timestamp;

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub heartbeat_interval: Duration,
    /// A host is online while its lease (renewed by heartbeats) runs.
    pub lease: Duration,
    /// The agent listener's URL as hosts reach it (used in join commands).
    pub public_url: String,
    /// Base domain of tenant URLs (`https://<slug>.<base_domain>`).
    pub base_domain: String,
    /// Committed memory a host may take, as a multiple of its memory.
    pub memory_overcommit: f64,
}

/// What a removed host's agent is told (its "host_revoked:" prefix is kept
/// for agents that read text, older than `CloseConnection.cause`).
const HOST_REMOVED_TEXT: &str = "this host was removed from the control plane";

/// Why the control plane closes a host's stream.
#[derive(Debug, Clone)]
pub(super) struct Closing {
    pub(super) cause: pb::ErrorReason,
    pub(super) reason: String,
}

impl Closing {
    fn replaced() -> Self {
        Closing {
            cause: pb::ErrorReason::ConnectionReplaced,
            reason: "replaced by a newer connection from this host".into(),
        }
    }

    fn revoked() -> Self {
        Closing { cause: pb::ErrorReason::HostRevoked, reason: FleetError::HostRevoked(HOST_REMOVED_TEXT).to_string() }
    }

    pub(super) fn shutting_down() -> Self {
        Closing { cause: pb::ErrorReason::ShuttingDown, reason: "the control plane is shutting down".into() }
    }
}

/// How often what a host's gateways use is written for the other replicas
/// when no gateway count changed (their GetHost figures are this old).
const USAGE_SHARE_EVERY: Duration = Duration::from_secs(30);

/// How often a waiter on a command result looks at the table even without
/// an event (in case one was lost).
const RESULT_POLL: Duration = Duration::from_secs(2);

/// What the control plane knows of one connected agent stream.
struct Session {
    id: u64,
    /// The stream's claim on its host, cluster-wide.
    generation: i64,
    /// Wakes the session to push newly queued commands.
    wake: Arc<Notify>,
    /// Set to close the stream.
    close: watch::Sender<Option<Closing>>,
    /// Unix milliseconds of the last message from the agent.
    last_seen_ms: Arc<AtomicI64>,
    /// Unix seconds when the certificate the agent uses expires; moves
    /// forward when the host renews.
    cert_not_after: Arc<AtomicI64>,
    /// The stream to the agent, for messages that are not queued (logs).
    outbound: Outbound,
    /// Where the agent serves its tenant proxy, from its hello.
    proxy_endpoint: Option<String>,
    /// How its tenants' gateways do, from its last hello or heartbeat.
    pub(super) tenants: Vec<pb::TenantState>,
    /// What of their use was last shared with the other replicas, and when.
    pub(super) usage_shared: Option<(pb::HostResources, std::time::Instant)>,
}

pub struct Fleet {
    pub(super) store: Store,
    pki: Arc<Pki>,
    pub(super) desired: DesiredConfigs,
    config: FleetConfig,
    /// Sessions end (with a SHUTTING_DOWN close) when it is requested.
    pub(super) shutdown: ShutdownSignal,
    sessions: Mutex<HashMap<String, Session>>,
    /// Callers waiting on a command's result, by command id.
    waiters: Mutex<HashMap<String, Waiting>>,
    /// Hosts removed, for their Sync streams to end.
    removed: tokio::sync::broadcast::Sender<String>,
    /// Tenant proxies of hosts whose streams other replicas hold.
    remote_endpoints: Mutex<HashMap<String, String>>,
    /// Log streams to callers here, and relayed to callers elsewhere.
    pub(super) logs: Arc<LogRoutes>,
    next_session: AtomicU64,
}

/// The callers waiting on one command's result.
struct Waiting {
    wake: Arc<Notify>,
    callers: usize,
}

/// One caller's place among a command's waiters; leaves it when dropped,
/// also when the caller's future is.
struct WaiterGuard<'a> {
    fleet: &'a Fleet,
    command_id: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut waiters = self.fleet.waiters.lock().unwrap();
        if let Some(waiting) = waiters.get_mut(self.command_id) {
            waiting.callers -= 1;
            if waiting.callers == 0 {
                waiters.remove(self.command_id);
            }
        }
    }
}

/// Handles a session task holds.
pub(super) struct SessionHandles {
    pub(super) id: u64,
    pub(super) generation: i64,
    pub(super) wake: Arc<Notify>,
    pub(super) close: watch::Receiver<Option<Closing>>,
    pub(super) last_seen_ms: Arc<AtomicI64>,
    pub(super) cert_not_after: Arc<AtomicI64>,
}

impl Fleet {
    pub fn new(
        store: Store,
        pki: Arc<Pki>,
        desired: DesiredConfigs,
        config: FleetConfig,
        shutdown: ShutdownSignal,
    ) -> Arc<Fleet> {
        let events = store.cluster_events();
        let logs = LogRoutes::new(store.clone(), shutdown.clone());
        let fleet = Arc::new(Fleet {
            store,
            pki,
            desired,
            config,
            shutdown: shutdown.clone(),
            sessions: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            removed: tokio::sync::broadcast::channel(256).0,
            remote_endpoints: Mutex::new(HashMap::new()),
            logs,
            next_session: AtomicU64::new(1),
        });
        shutdown.spawn(fleet.clone().follow_cluster(events));
        fleet
    }

    /// Acts on what this and the other replicas tell (see the module doc).
    async fn follow_cluster(self: Arc<Self>, mut events: tokio::sync::broadcast::Receiver<ClusterEvent>) {
        loop {
            let event = tokio::select! {
                _ = self.shutdown.requested() => return,
                event = events.recv() => match event {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => ClusterEvent::Resync,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            match event {
                ClusterEvent::CommandQueued { host_id } => {
                    if let Some(session) = self.sessions.lock().unwrap().get(&host_id) {
                        session.wake.notify_one();
                    }
                }
                ClusterEvent::CommandAnswered { command_id } => {
                    if let Some(waiting) = self.waiters.lock().unwrap().get(&command_id) {
                        waiting.wake.notify_waiters();
                    }
                }
                ClusterEvent::StreamClaimed { host_id, generation } => {
                    self.remote_endpoints.lock().unwrap().remove(&host_id);
                    self.close_older(&host_id, generation, Closing::replaced());
                    // Relayed lines came from the stream that was replaced.
                    self.logs.end_relayed(Some(&host_id));
                }
                ClusterEvent::HostRemoved { host_id } => {
                    self.close_older(&host_id, i64::MAX, Closing::revoked());
                    let _ = self.removed.send(host_id);
                }
                ClusterEvent::OwnerChanged { .. } => {}
                ClusterEvent::LogsWanted { request_id, host_id, tenant_id, tail_lines, follow } => {
                    if let Some(outbound) = self.outbound_of(&host_id) {
                        self.logs.relay(request_id, Some(outbound), LogAsk { host_id, tenant_id, tail_lines, follow });
                    }
                }
                ClusterEvent::LogLines { request_id, chunk } => self.logs.relayed_lines(request_id, &chunk),
                ClusterEvent::LogsEnded { request_id } => self.logs.end(&request_id),
                ClusterEvent::LogsStopped { request_id } => self.logs.stop_relay(&request_id),
                ClusterEvent::Resync => {
                    // Relayed lines may have been lost: those streams end,
                    // and their callers call again.
                    self.logs.end_relayed(None);
                    self.remote_endpoints.lock().unwrap().clear();
                    for session in self.sessions.lock().unwrap().values() {
                        session.wake.notify_one();
                    }
                    for waiting in self.waiters.lock().unwrap().values() {
                        waiting.wake.notify_waiters();
                    }
                }
            }
        }
    }

    /// Closes this replica's stream of a host if its claim is older than
    /// `generation`.
    fn close_older(&self, host_id: &str, generation: i64, closing: Closing) {
        let mut sessions = self.sessions.lock().unwrap();
        if sessions.get(host_id).is_some_and(|s| s.generation < generation) {
            if let Some(session) = sessions.remove(host_id) {
                let _ = session.close.send(Some(closing));
            }
        }
    }

    /// Resolves when the host is removed, through any replica.
    pub fn removal_of(&self, host_id: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut removed = self.removed.subscribe();
        let host_id = host_id.to_string();
        async move {
            loop {
                match removed.recv().await {
                    Ok(id) if id == host_id => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        }
    }

    pub fn desired(&self) -> &DesiredConfigs {
        &self.desired
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The host behind a verified client certificate, if it may still act:
    /// the certificate must be one we issued, not revoked, for a host that
    /// is not removed.
    pub async fn authorize(&self, peer: Option<&PeerCertificate>) -> FleetResult<Host> {
        let peer =
            peer.ok_or_else(|| FleetError::Unauthenticated("this call needs the host's client certificate".into()))?;
        let (cert, host) = self.store.certificate(&peer.fingerprint).await?.ok_or_else(|| {
            FleetError::Unauthenticated("client certificate is not one this control plane issued".into())
        })?;
        if host.status == HostState::Removed {
            return Err(FleetError::HostRevoked(HOST_REMOVED_TEXT));
        }
        if cert.revoked_at.is_some() {
            return Err(FleetError::HostRevoked("this certificate was revoked"));
        }
        if cert.host_id != peer.common_name {
            return Err(FleetError::PermissionDenied("certificate subject does not match its host".into()));
        }
        Ok(host)
    }

    pub(super) fn register(
        &self,
        host_id: &str,
        generation: i64,
        cert_not_after: i64,
        proxy_endpoint: Option<String>,
        outbound: Outbound,
    ) -> SessionHandles {
        // One stream per host: a reconnect replaces the old stream.
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (close, close_rx) = watch::channel(None);
        let wake = Arc::new(Notify::new());
        let last_seen_ms = Arc::new(AtomicI64::new(Utc::now().timestamp_millis()));
        let cert_not_after = Arc::new(AtomicI64::new(cert_not_after));
        let session = Session {
            id,
            generation,
            wake: wake.clone(),
            close,
            last_seen_ms: last_seen_ms.clone(),
            cert_not_after: cert_not_after.clone(),
            outbound,
            proxy_endpoint,
            tenants: Vec::new(),
            usage_shared: None,
        };
        if let Some(previous) = self.sessions.lock().unwrap().insert(host_id.to_string(), session) {
            let _ = previous.close.send(Some(Closing::replaced()));
        }
        SessionHandles { id, generation, wake, close: close_rx, last_seen_ms, cert_not_after }
    }

    /// Forgets a session that ended. Log streams from the host end with it
    /// (their lines came over that session), so a following reader is not
    /// left waiting, nor a shutdown on that reader.
    pub(super) async fn unregister(&self, host_id: &str, session: &SessionHandles) {
        {
            let mut sessions = self.sessions.lock().unwrap();
            if sessions.get(host_id).is_some_and(|s| s.id == session.id) {
                sessions.remove(host_id);
                self.logs.end_host(host_id);
            }
        }
        // Only this stream's own claim: a newer one elsewhere stays.
        if let Err(err) = self.store.release_stream(host_id, session.generation).await {
            tracing::warn!(host = %host_id, error = %err, "releasing the host's stream claim failed; its lease runs out");
        }
    }

    /// The tenant proxy of a connected host, as its agent said in its
    /// hello: from this replica's session, else as last looked up for a
    /// stream another replica holds ([`Fleet::connected_proxy`]).
    pub fn proxy_endpoint_of(&self, host_id: &str) -> Option<String> {
        if let Some(session) = self.sessions.lock().unwrap().get(host_id) {
            return session.proxy_endpoint.clone();
        }
        self.remote_endpoints.lock().unwrap().get(host_id).cloned()
    }

    /// Whether the host has a live stream to any replica, and where its
    /// tenant proxy is (None: it serves none).
    pub async fn connected_proxy(&self, host_id: &str) -> FleetResult<Option<Option<String>>> {
        if let Some(session) = self.sessions.lock().unwrap().get(host_id) {
            return Ok(Some(session.proxy_endpoint.clone()));
        }
        let Some(host) = self.store.host(host_id).await? else { return Ok(None) };
        if !host_connected(&host, Utc::now()) {
            self.remote_endpoints.lock().unwrap().remove(host_id);
            return Ok(None);
        }
        let endpoint = proxy_endpoint(&host);
        let mut remote = self.remote_endpoints.lock().unwrap();
        match &endpoint {
            Some(endpoint) => remote.insert(host_id.to_string(), endpoint.clone()),
            None => remote.remove(host_id),
        };
        Ok(Some(endpoint))
    }

    /// Replaces what a connected host reports about its tenants.
    pub(super) fn swap_tenant_states(&self, host_id: &str, states: Vec<pb::TenantState>) {
        if let Some(session) = self.sessions.lock().unwrap().get_mut(host_id) {
            session.tenants = states;
        }
    }

    /// Whether this use should be shared now (and notes it as shared): a
    /// gateway count changed, or [`USAGE_SHARE_EVERY`] passed.
    pub(super) fn usage_due(&self, host_id: &str, usage: &pb::HostResources) -> bool {
        let mut sessions = self.sessions.lock().unwrap();
        let Some(session) = sessions.get_mut(host_id) else { return false };
        let due = match &session.usage_shared {
            None => true,
            Some((shared, at)) => {
                (shared.running_tenants, shared.hibernated_tenants) != (usage.running_tenants, usage.hibernated_tenants)
                    || at.elapsed() >= USAGE_SHARE_EVERY
            }
        };
        if due {
            session.usage_shared = Some((*usage, std::time::Instant::now()));
        }
        due
    }

    /// What a connected host last reported about its tenants.
    pub(super) fn with_tenant_states<T>(&self, host_id: &str, read: impl FnOnce(&[pb::TenantState]) -> T) -> T {
        match self.sessions.lock().unwrap().get(host_id) {
            Some(session) => read(&session.tenants),
            None => read(&[]),
        }
    }

    /// Streams a tenant's log lines from its host: the tail, then (with
    /// `follow`) new lines until the receiver is dropped. Not queued: a host
    /// that is not connected is an error now, not a stream later. When
    /// another replica holds the host's stream, it relays the lines.
    pub async fn stream_logs(
        &self,
        host_id: &str,
        tenant_id: &str,
        tail_lines: u32,
        follow: bool,
    ) -> FleetResult<LogSubscription> {
        let ask = LogAsk { host_id: host_id.to_string(), tenant_id: tenant_id.to_string(), tail_lines, follow };
        if let Some(outbound) = self.outbound_of(host_id) {
            return self.logs.open_here(outbound, ask).await;
        }
        if self.connected_proxy(host_id).await?.is_none() {
            return Err(FleetError::NotConnected("the tenant's host is not connected"));
        }
        Ok(self.logs.open_relayed(ask).await)
    }

    /// The stream to a host held here, for messages that are not queued.
    pub(super) fn outbound_of(&self, host_id: &str) -> Option<Outbound> {
        self.sessions.lock().unwrap().get(host_id).map(|s| s.outbound.clone())
    }

    /// Whether this replica holds the host's stream.
    pub fn holds_stream(&self, host_id: &str) -> bool {
        self.sessions.lock().unwrap().contains_key(host_id)
    }

    /// Streams held by this replica.
    pub fn held_streams(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// Closes a removed host's streams (command and Sync) on whichever
    /// replica holds them; the agent stops for good.
    pub async fn revoke(&self, host_id: &str) {
        self.store.publish(ClusterEvent::HostRemoved { host_id: host_id.to_string() }).await;
    }

    /// Claims the host's stream for this replica and closes any older one,
    /// here or on another replica.
    pub(super) async fn claimed(&self, host_id: &str, generation: i64) {
        self.store.publish(ClusterEvent::StreamClaimed { host_id: host_id.to_string(), generation }).await;
    }

    /// Lets an open stream outlive the certificate it was opened with once
    /// the host has renewed.
    pub(super) fn certificate_renewed(&self, host_id: &str, not_after: i64) {
        if let Some(session) = self.sessions.lock().unwrap().get(host_id) {
            session.cert_not_after.fetch_max(not_after, Ordering::Relaxed);
        }
    }

    /// Queues a command for a host and pushes it at once if connected.
    pub async fn enqueue(
        &self,
        host_id: &str,
        tenant_id: Option<&str>,
        payload: command::Payload,
    ) -> FleetResult<String> {
        let kind = command_kind(&payload);
        let encoded = pb::Command { payload: Some(payload), ..Default::default() }.encode_to_vec();
        let id = self
            .store
            .enqueue_command(host_id, tenant_id, kind, json!({ "command": STANDARD.encode(encoded) }))
            .await?;
        // Held here: a wake is enough, and saves a database round trip.
        // Held elsewhere (or nowhere yet): the holder hears the event.
        let held_here = match self.sessions.lock().unwrap().get(host_id) {
            Some(session) => {
                session.wake.notify_one();
                true
            }
            None => false,
        };
        if !held_here {
            self.store.publish(ClusterEvent::CommandQueued { host_id: host_id.to_string() }).await;
        }
        Ok(id)
    }

    /// Waits for the result of a command, whichever replica receives it:
    /// the stored result is read when its event arrives, and every
    /// [`RESULT_POLL`] in case the event was lost. None after `timeout`.
    pub async fn wait_for_result(&self, command_id: &str, timeout: Duration) -> FleetResult<Option<pb::CommandResult>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let wake = {
            let mut waiters = self.waiters.lock().unwrap();
            let waiting = waiters
                .entry(command_id.to_string())
                .or_insert_with(|| Waiting { wake: Arc::new(Notify::new()), callers: 0 });
            waiting.callers += 1;
            waiting.wake.clone()
        };
        let _guard = WaiterGuard { fleet: self, command_id };
        loop {
            // Listening before reading: an answer between the two wakes us.
            let answered = wake.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if let Some(result) = self.store.command(command_id).await?.as_ref().and_then(stored_result) {
                return Ok(Some(result));
            }
            let poll = deadline.min(tokio::time::Instant::now() + RESULT_POLL);
            tokio::select! {
                _ = answered => {}
                _ = tokio::time::sleep_until(poll) => {
                    if poll >= deadline {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Tells every replica's waiters that the command's result is stored.
    pub(super) async fn notify_result(&self, result: &pb::CommandResult) {
        self.store.publish(ClusterEvent::CommandAnswered { command_id: result.command_id.clone() }).await;
    }

    /// Renews the leases of hosts that sent anything within the lease, in
    /// one batch per beat.
    pub async fn keep_leases(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.shutdown.requested() => return,
                _ = tokio::time::sleep(self.config.heartbeat_interval) => {}
            }
            let now = Utc::now();
            let fresh_after = now.timestamp_millis() - self.config.lease.as_millis() as i64;
            let alive: Vec<String> = self
                .sessions
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| s.last_seen_ms.load(Ordering::Relaxed) >= fresh_after)
                .map(|(id, _)| id.clone())
                .collect();
            if alive.is_empty() {
                continue;
            }
            let lease_until = now + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
            match self.store.renew_leases(self.store.replica_id(), &alive, now, lease_until).await {
                // A stream whose claim went elsewhere unheard (a lost event)
                // closes now: exactly one stream per host acts.
                Ok(claims) => {
                    for (host_id, generation) in claims {
                        let closing = if generation == i64::MAX { Closing::revoked() } else { Closing::replaced() };
                        self.close_older(&host_id, generation, closing);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "renewing host leases failed"),
            }
        }
    }

    /// The proto view of a host.
    pub async fn host_message(&self, model: Host) -> FleetResult<pb::Host> {
        let mut messages = self.host_messages(vec![model]).await?;
        Ok(messages.pop().expect("one host in, one out"))
    }

    /// The proto views of hosts, with their loads and certificates read in
    /// one query each, whatever the number of hosts.
    pub async fn host_messages(&self, models: Vec<Host>) -> FleetResult<Vec<pb::Host>> {
        let ids: Vec<String> = models.iter().map(|model| model.id.clone()).collect();
        let mut loads = self.store.host_loads(&ids).await?;
        let mut expiries = self.store.certificate_expiries(&ids).await?;
        let now = Utc::now();
        Ok(models
            .into_iter()
            .map(|model| {
                let load = loads.remove(&model.id).unwrap_or_default();
                let labels = model
                    .labels
                    .as_object()
                    .map(|map| {
                        map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
                    })
                    .unwrap_or_default();
                pb::Host {
                    connected: host_connected(&model, now),
                    status: host_status(&model, now) as i32,
                    inventory: stored_inventory(&model),
                    certificate_expires_at: expiries.remove(&model.id).map(timestamp),
                    tenant_count: load.tenants as i32,
                    resources: Some(self.host_resources(&model, load.committed_memory_bytes, now)),
                    labels,
                    last_heartbeat_at: model.last_heartbeat_at.map(timestamp),
                    created_at: Some(timestamp(model.created_at)),
                    removed_at: model.removed_at.map(timestamp),
                    id: model.id,
                    name: model.name,
                }
            })
            .collect())
    }
}

/// Where the host's agent serves its tenant proxy (`ip:port`), as it said
/// in its last hello; None if it has none.
pub fn proxy_endpoint(host: &Host) -> Option<String> {
    stored_inventory(host).map(|inventory| inventory.proxy_endpoint).filter(|endpoint| !endpoint.is_empty())
}

/// Whether the host has a stream to some replica: claimed, and its lease
/// running (a replica that died leaves its claim, not a running lease).
pub fn host_connected(model: &Host, now: DateTime<Utc>) -> bool {
    model.status != HostState::Removed
        && model.stream_replica.is_some()
        && model.lease_expires_at.is_some_and(|until| until > now)
}

/// Online/offline come from the lease; draining and removed are decisions.
pub fn host_status(model: &Host, now: DateTime<Utc>) -> pb::HostStatus {
    match model.status {
        HostState::Removed => pb::HostStatus::Removed,
        HostState::Draining => pb::HostStatus::Draining,
        HostState::Active if model.lease_expires_at.is_some_and(|until| until > now) => pb::HostStatus::Online,
        HostState::Active => pb::HostStatus::Offline,
    }
}

fn command_kind(payload: &command::Payload) -> CommandKind {
    match payload {
        command::Payload::Ping(_) => CommandKind::Ping,
        command::Payload::ProvisionTenant(_) => CommandKind::ProvisionTenant,
        command::Payload::ApplyConfig(_) => CommandKind::ApplyConfig,
        command::Payload::RestartTenant(_) => CommandKind::RestartTenant,
        command::Payload::StopTenant(_) => CommandKind::StopTenant,
        command::Payload::DeleteTenant(_) => CommandKind::DeleteTenant,
        command::Payload::StreamLogs(_) => CommandKind::StreamLogs,
        command::Payload::CancelLogs(_) => CommandKind::CancelLogs,
        command::Payload::SetAllowance(_) => CommandKind::SetAllowance,
    }
}

/// The command to push, rebuilt from its stored row.
pub(super) fn command_message(row: &HostCommand) -> Option<pb::Command> {
    let encoded = row.payload.get("command")?.as_str()?;
    let mut command = pb::Command::decode(STANDARD.decode(encoded).ok()?.as_slice()).ok()?;
    command.id = row.id.clone();
    command.attempt = (row.attempts + 1) as u32;
    command.created_at = Some(timestamp(row.created_at));
    Some(command)
}

fn stored_result(row: &HostCommand) -> Option<pb::CommandResult> {
    let encoded = row.result.as_ref()?.get("b64")?.as_str()?;
    pb::CommandResult::decode(STANDARD.decode(encoded).ok()?.as_slice()).ok()
}

pub(super) fn result_json(result: &pb::CommandResult) -> serde_json::Value {
    json!({
        "outcome": pb::CommandOutcome::try_from(result.outcome).map(|o| o.as_str_name()).unwrap_or("COMMAND_OUTCOME_UNSPECIFIED"),
        "error_code": result.error_code,
        "error_message": result.error_message,
        "b64": STANDARD.encode(result.encode_to_vec()),
    })
}
