//! The connected agent streams and what rides on them: one session per
//! host (a newer connection replaces the older), the durable command queue
//! and the callers waiting on results, liveness leases, and log routes.
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
use clawplane_proto::v1::{self as pb, command, ControlMessage};
use prost::Message;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tonic::Status;

use super::error::{FleetError, FleetResult};
use super::peer::PeerCertificate;
use crate::desired::DesiredConfigs;
use crate::pki::Pki;
use crate::store::stored_inventory;
use crate::store::{CommandKind, Host, HostCommand, HostState, Store};
use crate::wire::timestamp;

/// Messages to one agent. Boxed: a channel allocates its slots up front,
/// and thousands of idle sessions should not each hold room for 32 full
/// messages.
pub(super) type Outbound = mpsc::Sender<Box<Result<ControlMessage, Status>>>;

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

/// What the control plane knows of one connected agent stream.
struct Session {
    id: u64,
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
}

/// Where the log lines of one StreamTenantLogs call go.
struct LogRoute {
    host_id: String,
    tenant_id: String,
    sink: tokio::sync::mpsc::Sender<pb::LogChunk>,
}

pub struct Fleet {
    pub(super) store: Store,
    pki: Arc<Pki>,
    pub(super) desired: DesiredConfigs,
    config: FleetConfig,
    /// Sessions end (with a SHUTTING_DOWN close) when it is requested.
    pub(super) shutdown: ShutdownSignal,
    sessions: Mutex<HashMap<String, Session>>,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<pb::CommandResult>>>>,
    log_routes: Mutex<HashMap<String, LogRoute>>,
    next_session: AtomicU64,
}

/// Handles a session task holds.
pub(super) struct SessionHandles {
    pub(super) id: u64,
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
        Arc::new(Fleet {
            store,
            pki,
            desired,
            config,
            shutdown,
            sessions: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            log_routes: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        })
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
            wake: wake.clone(),
            close,
            last_seen_ms: last_seen_ms.clone(),
            cert_not_after: cert_not_after.clone(),
            outbound,
            proxy_endpoint,
            tenants: Vec::new(),
        };
        if let Some(previous) = self.sessions.lock().unwrap().insert(host_id.to_string(), session) {
            let _ = previous.close.send(Some(Closing::replaced()));
        }
        SessionHandles { id, wake, close: close_rx, last_seen_ms, cert_not_after }
    }

    /// Forgets a session that ended. Log streams from the host end with it
    /// (their lines came over that session), so a following reader is not
    /// left waiting, nor a shutdown on that reader.
    pub(super) fn unregister(&self, host_id: &str, session_id: u64) {
        let mut sessions = self.sessions.lock().unwrap();
        if sessions.get(host_id).is_some_and(|s| s.id == session_id) {
            sessions.remove(host_id);
            self.log_routes.lock().unwrap().retain(|_, route| route.host_id != host_id);
        }
    }

    /// The tenant proxy of a connected host, as its agent said in this
    /// session's hello (None when it is not connected or serves none).
    pub fn proxy_endpoint_of(&self, host_id: &str) -> Option<String> {
        self.sessions.lock().unwrap().get(host_id).and_then(|s| s.proxy_endpoint.clone())
    }

    /// Replaces what a connected host reports about its tenants.
    pub(super) fn swap_tenant_states(&self, host_id: &str, states: Vec<pb::TenantState>) {
        if let Some(session) = self.sessions.lock().unwrap().get_mut(host_id) {
            session.tenants = states;
        }
    }

    /// What a connected host last reported about its tenants.
    pub(super) fn with_tenant_states<T>(&self, host_id: &str, read: impl FnOnce(&[pb::TenantState]) -> T) -> T {
        match self.sessions.lock().unwrap().get(host_id) {
            Some(session) => read(&session.tenants),
            None => read(&[]),
        }
    }

    pub fn is_connected(&self, host_id: &str) -> bool {
        self.sessions.lock().unwrap().contains_key(host_id)
    }

    pub fn connected_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// Closes a removed host's stream at once; the agent stops for good.
    pub fn revoke(&self, host_id: &str) {
        if let Some(session) = self.sessions.lock().unwrap().remove(host_id) {
            let _ = session.close.send(Some(Closing::revoked()));
        }
    }

    /// Lets an open stream outlive the certificate it was opened with once
    /// the host has renewed.
    pub(super) fn certificate_renewed(&self, host_id: &str, not_after: i64) {
        if let Some(session) = self.sessions.lock().unwrap().get(host_id) {
            session.cert_not_after.fetch_max(not_after, Ordering::Relaxed);
        }
    }

    /// Streams a tenant's log lines from its host: the tail, then (with
    /// `follow`) new lines until the receiver is dropped. Not queued: a host
    /// that is not connected is an error now, not a stream later.
    pub async fn stream_logs(
        self: &Arc<Self>,
        host_id: &str,
        tenant_id: &str,
        tail_lines: u32,
        follow: bool,
    ) -> FleetResult<LogSubscription> {
        let outbound = self
            .sessions
            .lock()
            .unwrap()
            .get(host_id)
            .map(|s| s.outbound.clone())
            .ok_or(FleetError::NotConnected("the tenant's host is not connected"))?;
        let request_id = uuid::Uuid::new_v4().to_string();
        let (sink, lines) = tokio::sync::mpsc::channel(16);
        self.log_routes.lock().unwrap().insert(
            request_id.clone(),
            LogRoute { host_id: host_id.to_string(), tenant_id: tenant_id.to_string(), sink },
        );
        let command = pb::Command {
            id: uuid::Uuid::now_v7().to_string(),
            payload: Some(command::Payload::StreamLogs(pb::StreamLogsCommand {
                request_id: request_id.clone(),
                tenant_id: tenant_id.to_string(),
                tail_lines,
                follow,
            })),
            ..Default::default()
        };
        let message = pb::ControlMessage { kind: Some(pb::control_message::Kind::Command(command)) };
        if outbound.send(Box::new(Ok(message))).await.is_err() {
            self.log_routes.lock().unwrap().remove(&request_id);
            return Err(FleetError::NotConnected("the tenant's host disconnected"));
        }
        Ok(LogSubscription { fleet: self.clone(), host_id: host_id.to_string(), request_id, lines, outbound })
    }

    /// Hands a log chunk to its subscriber, if it came from the right host
    /// for the right tenant.
    pub(super) fn route_log(&self, host_id: &str, chunk: pb::LogChunk) {
        let sink = {
            let routes = self.log_routes.lock().unwrap();
            match routes.get(&chunk.request_id) {
                Some(route) if route.host_id == host_id && route.tenant_id == chunk.tenant_id => {
                    Some(route.sink.clone())
                }
                _ => None,
            }
        };
        if let Some(sink) = sink {
            // A slow reader drops chunks rather than growing memory.
            if sink.try_send(chunk).is_err() {
                tracing::debug!(host = %host_id, "log subscriber is behind; chunk dropped");
            }
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
        if let Some(session) = self.sessions.lock().unwrap().get(host_id) {
            session.wake.notify_one();
        }
        Ok(id)
    }

    /// Waits for the result of a command queued by this process.
    pub async fn wait_for_result(&self, command_id: &str, timeout: Duration) -> FleetResult<Option<pb::CommandResult>> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().entry(command_id.to_string()).or_default().push(tx);
        // The answer may have landed before we started waiting.
        if let Some(done) = self.store.command(command_id).await? {
            if let Some(result) = stored_result(&done) {
                self.waiters.lock().unwrap().remove(command_id);
                return Ok(Some(result));
            }
        }
        let outcome = tokio::time::timeout(timeout, rx).await;
        self.waiters.lock().unwrap().remove(command_id);
        Ok(outcome.ok().and_then(Result::ok))
    }

    pub(super) fn notify_result(&self, result: &pb::CommandResult) {
        if let Some(waiters) = self.waiters.lock().unwrap().remove(&result.command_id) {
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
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
            if let Err(err) = self.store.renew_leases(&alive, now, lease_until).await {
                tracing::warn!(error = %err, "renewing host leases failed");
            }
        }
    }

    /// The proto view of a host.
    pub async fn host_message(&self, model: Host) -> FleetResult<pb::Host> {
        let now = Utc::now();
        let status = host_status(&model, now);
        let inventory = stored_inventory(&model);
        let labels = model
            .labels
            .as_object()
            .map(|map| map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let certificate_expires_at = self.store.certificate_expiry(&model.id).await?.map(timestamp);
        let load = self.store.host_load(&model.id).await?;
        let tenant_count = load.tenants as i32;
        let resources = Some(self.host_resources(&model.id, load.committed_memory_bytes));
        Ok(pb::Host {
            connected: self.is_connected(&model.id),
            id: model.id,
            name: model.name,
            status: status as i32,
            labels,
            last_heartbeat_at: model.last_heartbeat_at.map(timestamp),
            inventory,
            certificate_expires_at,
            tenant_count,
            created_at: Some(timestamp(model.created_at)),
            removed_at: model.removed_at.map(timestamp),
            resources,
        })
    }
}

/// Log lines of one tenant; cancels the stream on the host when dropped.
pub struct LogSubscription {
    fleet: Arc<Fleet>,
    host_id: String,
    request_id: String,
    pub lines: tokio::sync::mpsc::Receiver<pb::LogChunk>,
    outbound: Outbound,
}

impl Drop for LogSubscription {
    fn drop(&mut self) {
        self.fleet.log_routes.lock().unwrap().remove(&self.request_id);
        let cancel = pb::Command {
            id: uuid::Uuid::now_v7().to_string(),
            payload: Some(command::Payload::CancelLogs(pb::CancelLogsCommand { request_id: self.request_id.clone() })),
            ..Default::default()
        };
        let message = pb::ControlMessage { kind: Some(pb::control_message::Kind::Command(cancel)) };
        if self.outbound.try_send(Box::new(Ok(message))).is_err() {
            tracing::debug!(host = %self.host_id, "could not cancel a log stream; the host stops it on disconnect");
        }
    }
}

/// Where the host's agent serves its tenant proxy (`ip:port`), as it said
/// in its last hello; None if it has none.
pub fn proxy_endpoint(host: &Host) -> Option<String> {
    stored_inventory(host).map(|inventory| inventory.proxy_endpoint).filter(|endpoint| !endpoint.is_empty())
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
