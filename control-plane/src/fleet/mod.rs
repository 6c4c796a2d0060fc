//! The host fleet: enrollment, the agent listener (mutual TLS), connected
//! sessions, liveness leases and the durable command queue.
//!
//! A host's identity comes only from its verified client certificate, looked
//! up by fingerprint in the store on every call ([`Fleet::authorize`]).
//! Commands are rows in `host_commands`; a connected session pushes them,
//! the agent acknowledges and answers by id, and anything without a final
//! answer is pushed again on the next connection. The agent remembers what
//! it already executed, so redelivery is harmless.
mod agent;
mod enrollment;
mod listener;
mod placement;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use clawplane_proto::v1::{self as pb, command};
use prost::Message;
use serde_json::json;
use tokio::sync::{oneshot, watch, Notify};

pub use agent::AgentApi;
pub use enrollment::{hash_secret, parse_join_token, EnrollmentApi};
pub use listener::{serve_agents, AgentConnectInfo, PeerCertificate};

use crate::api::{ApiError, ApiResult};
use crate::pki::Pki;
use crate::store::entities::host;
use crate::store::{Store, HOST_DRAINING, HOST_REMOVED};

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub heartbeat_interval: Duration,
    /// A host is online while its lease (renewed by heartbeats) runs.
    pub lease: Duration,
    /// The agent listener's URL as hosts reach it (used in join commands).
    pub public_url: String,
    /// Base domain of tenant URLs (`https://<slug>.<base_domain>`).
    pub base_domain: String,
}

/// What the control plane knows of one connected agent stream.
struct Session {
    id: u64,
    /// Wakes the session to push newly queued commands.
    wake: Arc<Notify>,
    /// Set to a reason to close the stream.
    close: watch::Sender<Option<String>>,
    /// Unix milliseconds of the last message from the agent.
    last_seen_ms: Arc<AtomicI64>,
    /// Unix seconds when the certificate the agent uses expires; moves
    /// forward when the host renews.
    cert_not_after: Arc<AtomicI64>,
    /// The stream to the agent, for messages that are not queued (logs).
    outbound: agent::Outbound,
}

/// Where the log lines of one StreamTenantLogs call go.
struct LogRoute {
    host_id: String,
    tenant_id: String,
    sink: tokio::sync::mpsc::Sender<pb::LogChunk>,
}

pub struct Fleet {
    store: Store,
    pki: Arc<Pki>,
    secrets: Arc<crate::secrets::SecretBox>,
    config: FleetConfig,
    sessions: Mutex<HashMap<String, Session>>,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<pb::CommandResult>>>>,
    log_routes: Mutex<HashMap<String, LogRoute>>,
    next_session: AtomicU64,
}

/// Handles a session task holds.
struct SessionHandles {
    id: u64,
    wake: Arc<Notify>,
    close: watch::Receiver<Option<String>>,
    last_seen_ms: Arc<AtomicI64>,
    cert_not_after: Arc<AtomicI64>,
}

impl Fleet {
    pub fn new(
        store: Store,
        pki: Arc<Pki>,
        secrets: Arc<crate::secrets::SecretBox>,
        config: FleetConfig,
    ) -> Arc<Fleet> {
        Arc::new(Fleet {
            store,
            pki,
            secrets,
            config,
            sessions: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            log_routes: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        })
    }

    pub fn secrets(&self) -> Arc<crate::secrets::SecretBox> {
        self.secrets.clone()
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
    pub async fn authorize(&self, peer: Option<&PeerCertificate>) -> ApiResult<host::Model> {
        let peer =
            peer.ok_or_else(|| ApiError::Unauthenticated("this call needs the host's client certificate".into()))?;
        let (cert, host) = self.store.certificate(&peer.fingerprint).await?.ok_or_else(|| {
            ApiError::Unauthenticated("client certificate is not one this control plane issued".into())
        })?;
        if host.status == HOST_REMOVED {
            return Err(ApiError::PermissionDenied(
                "host_revoked: this host was removed from the control plane".into(),
            ));
        }
        if cert.revoked_at.is_some() {
            return Err(ApiError::PermissionDenied("host_revoked: this certificate was revoked".into()));
        }
        if cert.host_id != peer.common_name {
            return Err(ApiError::PermissionDenied("certificate subject does not match its host".into()));
        }
        Ok(host)
    }

    fn register(&self, host_id: &str, cert_not_after: i64, outbound: agent::Outbound) -> SessionHandles {
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
        };
        if let Some(previous) = self.sessions.lock().unwrap().insert(host_id.to_string(), session) {
            // One stream per host: a reconnect replaces the old stream.
            let _ = previous.close.send(Some("replaced by a newer connection from this host".into()));
        }
        SessionHandles { id, wake, close: close_rx, last_seen_ms, cert_not_after }
    }

    fn unregister(&self, host_id: &str, session_id: u64) {
        let mut sessions = self.sessions.lock().unwrap();
        if sessions.get(host_id).is_some_and(|s| s.id == session_id) {
            sessions.remove(host_id);
        }
    }

    pub fn is_connected(&self, host_id: &str) -> bool {
        self.sessions.lock().unwrap().contains_key(host_id)
    }

    pub fn connected_count(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// Closes a host's stream (removal, revocation).
    pub fn disconnect(&self, host_id: &str, reason: &str) {
        if let Some(session) = self.sessions.lock().unwrap().remove(host_id) {
            let _ = session.close.send(Some(reason.to_string()));
        }
    }

    /// Lets an open stream outlive the certificate it was opened with once
    /// the host has renewed.
    fn certificate_renewed(&self, host_id: &str, not_after: i64) {
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
    ) -> ApiResult<LogSubscription> {
        let outbound = self
            .sessions
            .lock()
            .unwrap()
            .get(host_id)
            .map(|s| s.outbound.clone())
            .ok_or_else(|| ApiError::FailedPrecondition("the tenant's host is not connected".into()))?;
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
            return Err(ApiError::FailedPrecondition("the tenant's host disconnected".into()));
        }
        Ok(LogSubscription { fleet: self.clone(), host_id: host_id.to_string(), request_id, lines, outbound })
    }

    /// Hands a log chunk to its subscriber, if it came from the right host
    /// for the right tenant.
    fn route_log(&self, host_id: &str, chunk: pb::LogChunk) {
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
    ) -> ApiResult<String> {
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
    pub async fn wait_for_result(&self, command_id: &str, timeout: Duration) -> ApiResult<Option<pb::CommandResult>> {
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

    fn notify_result(&self, result: &pb::CommandResult) {
        if let Some(waiters) = self.waiters.lock().unwrap().remove(&result.command_id) {
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }

    /// Renews the leases of hosts that sent anything within the lease, in
    /// one batch per beat.
    pub async fn keep_leases(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
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
    pub async fn host_message(&self, model: host::Model) -> ApiResult<pb::Host> {
        let now = Utc::now();
        let status = host_status(&model, now);
        let inventory = model
            .inventory
            .as_ref()
            .and_then(|value| value.get("b64"))
            .and_then(|v| v.as_str())
            .and_then(|b64| STANDARD.decode(b64).ok())
            .and_then(|bytes| pb::HostInventory::decode(bytes.as_slice()).ok());
        let labels = model
            .labels
            .as_object()
            .map(|map| map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let certificate_expires_at = self.store.certificate_expiry(&model.id).await?.map(crate::api::timestamp);
        let tenant_count = self.store.tenant_count(&model.id).await? as i32;
        Ok(pb::Host {
            connected: self.is_connected(&model.id),
            id: model.id,
            name: model.name,
            status: status as i32,
            labels,
            last_heartbeat_at: model.last_heartbeat_at.map(crate::api::timestamp),
            inventory,
            certificate_expires_at,
            tenant_count,
            created_at: Some(crate::api::timestamp(model.created_at)),
            removed_at: model.removed_at.map(crate::api::timestamp),
        })
    }
}

/// Log lines of one tenant; cancels the stream on the host when dropped.
pub struct LogSubscription {
    fleet: Arc<Fleet>,
    host_id: String,
    request_id: String,
    pub lines: tokio::sync::mpsc::Receiver<pb::LogChunk>,
    outbound: agent::Outbound,
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

/// Online/offline come from the lease; draining and removed are decisions.
pub fn host_status(model: &host::Model, now: DateTime<Utc>) -> pb::HostStatus {
    match model.status.as_str() {
        HOST_REMOVED => pb::HostStatus::Removed,
        HOST_DRAINING => pb::HostStatus::Draining,
        _ if model.lease_expires_at.is_some_and(|until| until > now) => pb::HostStatus::Online,
        _ => pb::HostStatus::Offline,
    }
}

fn command_kind(payload: &command::Payload) -> &'static str {
    match payload {
        command::Payload::Ping(_) => "ping",
        command::Payload::ProvisionTenant(_) => "provision_tenant",
        command::Payload::ApplyConfig(_) => "apply_config",
        command::Payload::RestartTenant(_) => "restart_tenant",
        command::Payload::StopTenant(_) => "stop_tenant",
        command::Payload::DeleteTenant(_) => "delete_tenant",
        command::Payload::StreamLogs(_) => "stream_logs",
        command::Payload::CancelLogs(_) => "cancel_logs",
    }
}

/// The command to push, rebuilt from its stored row.
fn command_message(row: &crate::store::entities::host_command::Model) -> Option<pb::Command> {
    let encoded = row.payload.get("command")?.as_str()?;
    let mut command = pb::Command::decode(STANDARD.decode(encoded).ok()?.as_slice()).ok()?;
    command.id = row.id.clone();
    command.attempt = (row.attempts + 1) as u32;
    command.created_at = Some(crate::api::timestamp(row.created_at));
    Some(command)
}

fn stored_result(row: &crate::store::entities::host_command::Model) -> Option<pb::CommandResult> {
    let encoded = row.result.as_ref()?.get("b64")?.as_str()?;
    pb::CommandResult::decode(STANDARD.decode(encoded).ok()?.as_slice()).ok()
}

fn result_json(result: &pb::CommandResult) -> serde_json::Value {
    json!({
        "outcome": pb::CommandOutcome::try_from(result.outcome).map(|o| o.as_str_name()).unwrap_or("COMMAND_OUTCOME_UNSPECIFIED"),
        "error_code": result.error_code,
        "error_message": result.error_message,
        "b64": STANDARD.encode(result.encode_to_vec()),
    })
}
