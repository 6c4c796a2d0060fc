//! AgentService: the long-lived command stream of each host.
//!
//! Protocol: the agent's first message is a hello with its inventory; the
//! control plane answers with a HelloAck (heartbeat interval, lease), then
//! pushes every open command. The agent acknowledges each command by id on
//! receipt and answers it with a result by id. Heartbeats (or any message)
//! keep the lease. The stream closes on removal, on a newer stream from the
//! same host, when the agent goes silent past its lease, or when its
//! certificate expires without renewal.
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use clawplane_proto::v1::agent_service_server::AgentService;
use clawplane_proto::v1::{
    agent_message, control_message, AgentMessage, CloseConnection, CommandOutcome, ControlMessage, HelloAck,
    SyncRequest, SyncResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::FleetError;
use super::peer::AgentConnectInfo;
use super::peer::Outbound;
use super::streams::{command_message, result_json, Closing, Fleet, SessionHandles};
use crate::store::inventory_json;
use crate::store::StoreError;
use crate::wire::timestamp;

pub struct AgentApi {
    fleet: Arc<Fleet>,
}

impl AgentApi {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        AgentApi { fleet }
    }
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;
type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncResponse, Status>> + Send>>;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Outbound messages buffered per host before the session waits.
const OUTBOUND_BUFFER: usize = 32;
/// How often a session looks for queued commands without being woken (in
/// case the event of another replica's enqueue was lost).
const COMMAND_POLL: Duration = Duration::from_secs(10);

fn control(kind: control_message::Kind) -> ControlMessage {
    ControlMessage { kind: Some(kind) }
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type ConnectStream = ControlStream;

    async fn connect(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<ControlStream>, Status> {
        let peer = request.extensions().get::<AgentConnectInfo>().and_then(|info| info.peer.clone());
        let host = self.fleet.authorize(peer.as_ref()).await?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }))) => hello,
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(FleetError::InvalidArgument("no hello within 10 seconds".into()).into()),
            Ok(_) => {
                return Err(FleetError::InvalidArgument("the first message on Connect must be a hello".into()).into())
            }
        };
        let config = self.fleet.config().clone();
        let lease_until = Utc::now() + chrono::Duration::from_std(config.lease).unwrap_or_default();
        let inventory = hello.inventory.unwrap_or_default();
        let store = &self.fleet.store;
        let generation = store
            .record_hello(&host.id, inventory_json(&inventory), lease_until, store.replica_id())
            .await
            .map_err(FleetError::from)?;

        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let ack = HelloAck {
            host_id: host.id.clone(),
            heartbeat_interval: Some(duration(config.heartbeat_interval)),
            lease_duration: Some(duration(config.lease)),
            server_time: Some(timestamp(Utc::now())),
        };
        let _ = tx.send(Box::new(Ok(control(control_message::Kind::HelloAck(ack))))).await;
        let not_after = peer.map(|p| p.not_after).unwrap_or(0);
        let proxy_endpoint = Some(inventory.proxy_endpoint.clone()).filter(|e| !e.is_empty());
        let handles = self.fleet.register(&host.id, generation, not_after, proxy_endpoint, tx.clone());
        self.fleet.claimed(&host.id, generation).await;
        tracing::info!(host = %host.id, session = handles.id, agent = %inventory.agent_version, "host connected");
        let fleet = self.fleet.clone();
        let (host_id, tenants) = (host.id.clone(), hello.tenants);
        self.fleet.shutdown.spawn(async move {
            if let Err(err) = fleet.reconcile(&host_id, &tenants).await {
                tracing::warn!(host = %host_id, error = %err, "reconciling the host's tenants failed");
            }
            if let Err(err) = fleet.place_pending().await {
                tracing::warn!(error = %err, "placing pending tenants failed");
            }
        });
        self.fleet.shutdown.spawn(run_session(self.fleet.clone(), host.id, inbound, tx, handles));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|message| *message))))
    }

    type SyncStream = SyncStream;

    async fn sync(&self, request: Request<Streaming<SyncRequest>>) -> Result<Response<SyncStream>, Status> {
        let peer = request.extensions().get::<AgentConnectInfo>().and_then(|info| info.peer.clone());
        let host = self.fleet.authorize(peer.as_ref()).await?;
        // Authorized once, so it must also end when the host is removed.
        let removed = self.fleet.removal_of(&host.id);
        let stream = crate::ingest::serve(
            self.fleet.store.clone(),
            host.id,
            request.into_inner(),
            self.fleet.shutdown.clone(),
            removed,
            self.fleet.clone(),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

async fn run_session(
    fleet: Arc<Fleet>,
    host_id: String,
    mut inbound: Streaming<AgentMessage>,
    tx: Outbound,
    mut handles: SessionHandles,
) {
    let lease = fleet.config().lease;
    let mut sent: HashSet<String> = HashSet::new();
    let mut check = tokio::time::interval(fleet.config().heartbeat_interval.min(Duration::from_secs(1)));
    let mut poll = tokio::time::interval(COMMAND_POLL);
    poll.tick().await;
    let reason = 'session: {
        if let Err(err) = push_open_commands(&fleet, &host_id, &tx, &mut sent).await {
            break 'session format!("cannot load commands: {err}");
        }
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        handles.last_seen_ms.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
                        if let Err(err) = handle_message(&fleet, &host_id, message).await {
                            tracing::warn!(host = %host_id, error = %err, "agent message not processed");
                        }
                    }
                    Ok(None) => break 'session "agent closed the stream".to_string(),
                    Err(status) => break 'session format!("stream error: {}", status.message()),
                },
                _ = async { tokio::select! { _ = handles.wake.notified() => {}, _ = poll.tick() => {} } } => {
                    if let Err(err) = push_open_commands(&fleet, &host_id, &tx, &mut sent).await {
                        tracing::warn!(host = %host_id, error = %err, "pushing commands failed");
                    }
                }
                changed = handles.close.changed() => {
                    let closing = match changed {
                        Ok(()) => handles.close.borrow().clone(),
                        Err(_) => None,
                    };
                    break 'session close(&tx, closing.unwrap_or_else(Closing::shutting_down)).await;
                }
                _ = fleet.shutdown.requested() => break 'session close(&tx, Closing::shutting_down()).await,
                _ = check.tick() => {
                    let now = Utc::now();
                    let silent_ms = now.timestamp_millis() - handles.last_seen_ms.load(Ordering::Relaxed);
                    if silent_ms > lease.as_millis() as i64 {
                        break 'session "no heartbeat within the lease".to_string();
                    }
                    let not_after = handles.cert_not_after.load(Ordering::Relaxed);
                    if not_after > 0 && now.timestamp() > not_after {
                        let _ = tx.send(Box::new(Err(Status::unauthenticated("client certificate expired; reconnect with a renewed one")))).await;
                        break 'session "client certificate expired".to_string();
                    }
                }
            }
        }
    };
    fleet.unregister(&host_id, &handles).await;
    tracing::info!(host = %host_id, session = handles.id, %reason, "host disconnected");
}

/// Tells the agent why its stream ends; returns the reason for the log.
async fn close(tx: &Outbound, closing: Closing) -> String {
    let message = CloseConnection { reason: closing.reason.clone(), cause: closing.cause as i32, ..Default::default() };
    let _ = tx.send(Box::new(Ok(control(control_message::Kind::Close(message))))).await;
    closing.reason
}

async fn push_open_commands(
    fleet: &Fleet,
    host_id: &str,
    tx: &Outbound,
    sent: &mut HashSet<String>,
) -> Result<(), StoreError> {
    for row in fleet.store.open_commands(host_id).await? {
        if sent.contains(&row.id) {
            continue;
        }
        let Some(command) = command_message(&row) else {
            tracing::error!(command = %row.id, "stored command cannot be decoded; failing it");
            fleet
                .store
                .complete_command(&row.id, host_id, false, serde_json::json!({}), Some("undecodable command".into()))
                .await?;
            continue;
        };
        fleet.store.mark_delivered(&row.id).await?;
        if tx.send(Box::new(Ok(control(control_message::Kind::Command(command))))).await.is_err() {
            return Ok(());
        }
        sent.insert(row.id);
    }
    Ok(())
}

async fn handle_message(fleet: &Fleet, host_id: &str, message: AgentMessage) -> Result<(), StoreError> {
    match message.kind {
        Some(agent_message::Kind::CommandAck(ack)) => {
            fleet.store.mark_acked(&ack.command_id, host_id).await?;
        }
        Some(agent_message::Kind::CommandResult(result)) => {
            let succeeded = result.outcome == CommandOutcome::Succeeded as i32;
            let error = (!succeeded).then(|| result.error_message.clone());
            // Only this host's own commands can be completed by it; a result
            // for anyone else's command changes nothing.
            let recorded = fleet
                .store
                .complete_command(&result.command_id, host_id, succeeded, result_json(&result), error)
                .await?;
            if recorded {
                if let Some(row) = fleet.store.command(&result.command_id).await? {
                    if let Err(err) = fleet.apply_result(&row, &result).await {
                        tracing::warn!(command = %row.id, error = %err, "applying a command result failed");
                    }
                }
                fleet.notify_result(&result).await;
            } else {
                tracing::debug!(host = %host_id, command = %result.command_id, "duplicate or foreign command result ignored");
            }
        }
        Some(agent_message::Kind::Heartbeat(heartbeat)) => {
            if let Err(err) = fleet.observe_tenants(host_id, heartbeat.tenants).await {
                tracing::warn!(host = %host_id, error = %err, "recording the host's tenant states failed");
            }
        }
        None => {}
        Some(agent_message::Kind::Hello(_)) => {
            tracing::warn!(host = %host_id, "second hello on one stream ignored");
        }
        Some(agent_message::Kind::LogChunk(chunk)) => fleet.logs.route(host_id, chunk),
    }
    Ok(())
}
