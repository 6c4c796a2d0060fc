//! One Connect stream to the control plane: hello with inventory first,
//! then heartbeats; commands are acknowledged on receipt and answered by
//! id, log requests are streamed.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use clawplane_proto::v1::agent_service_client::AgentServiceClient;
use clawplane_proto::v1::{
    agent_message, control_message, AgentHello, AgentMessage, CommandAck, GatewayStatus, Heartbeat, Runtime,
    TenantState,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::link::Link;
use super::logs::{is_log_command, LogStreams};
use crate::commands::Executor;
use crate::config::{HostConfig, HEARTBEAT_EVERY};
use crate::endpoints::Endpoint;
use crate::inventory::collect;
use crate::rpc::{close_is_revocation, is_refusal, transport_detail};
use crate::runtime::GatewayPhase;
use crate::state::StateDir;
use clawplane_edge::shutdown::Shutdown;

/// How a session ended.
pub enum Ended {
    /// The endpoint did not take the session: worth trying the next.
    Unreachable(String),
    /// The session was up and ended: worth reconnecting.
    Lost(String),
    /// The control plane refuses this host for good.
    Refused(String),
    /// The agent is shutting down.
    Stopped,
}

/// What every session of this agent run works with.
pub struct Sessions {
    pub link: Arc<Link>,
    pub state: StateDir,
    pub config: HostConfig,
    /// `host:port` of the tenant proxy, reported in the hello; empty if off.
    pub proxy_endpoint: String,
    /// `openclaw --version` of this host, for the inventory.
    pub openclaw_version: String,
    pub executor: Arc<Executor>,
    pub log_streams: LogStreams,
    /// Command ids being executed right now: a redelivery that arrives while
    /// the first delivery still runs waits for it and reuses its result.
    pub running: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Sessions {
    /// Connects to `endpoint` and serves one session until it ends.
    pub async fn run_one(&self, endpoint: &Endpoint, shutdown: &mut Shutdown) -> Ended {
        let channel = match self.link.channel_to(endpoint) {
            Ok(channel) => channel,
            Err(err) => return Ended::Refused(format!("invalid agent state: {err:#}")),
        };
        let (out, out_rx) = mpsc::channel::<AgentMessage>(64);
        let mut inventory = collect(&self.config, self.state.root(), &self.openclaw_version, self.runtime_kind());
        inventory.proxy_endpoint = self.proxy_endpoint.clone();
        if let (Some(capacity), Some(runtime)) = (inventory.capacity.as_mut(), &self.executor.runtime) {
            (capacity.cgroup_version, capacity.limits_unavailable) = runtime.limits_support();
        }
        let hello =
            AgentHello { inventory: Some(inventory), tenants: self.tenant_states(), completed_command_ids: Vec::new() };
        let _ = out.send(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }).await;
        let mut client = AgentServiceClient::new(channel);
        let connected = tokio::select! {
            connected = client.connect(ReceiverStream::new(out_rx)) => connected,
            _ = shutdown.requested() => return Ended::Stopped,
        };
        let mut inbound = match connected {
            Ok(response) => response.into_inner(),
            Err(status) if is_refusal(&status) => {
                return Ended::Refused(format!("control plane refused this host: {}", status.message()))
            }
            Err(status) => return Ended::Unreachable(transport_detail(&status)),
        };
        self.link.follow(endpoint);
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        // For the tasks this session starts.
        let tasks = shutdown.clone();
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let kind = match message {
                        Ok(Some(message)) => message.kind,
                        Ok(None) => return Ended::Lost("control plane closed the stream".into()),
                        Err(status) if is_refusal(&status) => return Ended::Refused(status.message().to_string()),
                        Err(status) => return Ended::Lost(transport_detail(&status)),
                    };
                    match kind {
                        Some(control_message::Kind::HelloAck(ack)) => {
                            tracing::info!(host = %ack.host_id, %endpoint, "connected to the control plane");
                            if let Some(every) = ack.heartbeat_interval.and_then(|d| Duration::try_from(d).ok()) {
                                if !every.is_zero() {
                                    heartbeat = tokio::time::interval(every);
                                }
                            }
                        }
                        Some(control_message::Kind::Command(command)) if is_log_command(&command) => {
                            self.log_streams.handle(command, out.clone(), self.executor.runtime.clone(), tasks.clone());
                        }
                        Some(control_message::Kind::Command(command)) => {
                            let ack = AgentMessage { kind: Some(agent_message::Kind::CommandAck(CommandAck { command_id: command.id.clone() })) };
                            let _ = out.send(ack).await;
                            let executor = self.executor.clone();
                            let out = out.clone();
                            let lock = self.running.lock().unwrap().entry(command.id.clone()).or_default().clone();
                            let running = self.running.clone();
                            // Held to its end: a command under way finishes
                            // (within the grace) before the agent exits.
                            let shutdown = tasks.clone();
                            tokio::spawn(async move {
                                let _guard = lock.lock().await;
                                let id = command.id.clone();
                                let result = executor.execute(command).await;
                                running.lock().unwrap().remove(&id);
                                let _ = out.send(AgentMessage { kind: Some(agent_message::Kind::CommandResult(result)) }).await;
                                drop(shutdown);
                            });
                        }
                        Some(control_message::Kind::Close(close)) => {
                            if close_is_revocation(&close) {
                                return Ended::Refused(format!("control plane removed this host: {}", close.reason));
                            }
                            return Ended::Lost(format!("control plane closed the stream: {}", close.reason));
                        }
                        None => {}
                    }
                }
                _ = heartbeat.tick() => {
                    let beat = Heartbeat { sent_at: Some(SystemTime::now().into()), tenants: self.tenant_states(), ..Default::default() };
                    if out.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(beat)) }).await.is_err() {
                        return Ended::Lost("outbound stream closed".into());
                    }
                }
                _ = shutdown.requested() => return Ended::Stopped,
            }
        }
    }

    fn runtime_kind(&self) -> Runtime {
        self.executor.runtime.as_ref().map(|runtime| runtime.kind().wire()).unwrap_or(Runtime::Process)
    }

    /// What the host runs, for the hello and heartbeats.
    fn tenant_states(&self) -> Vec<TenantState> {
        let Some(runtime) = &self.executor.runtime else { return Vec::new() };
        let kind = runtime.kind().wire();
        runtime
            .records()
            .all()
            .into_iter()
            .map(|record| {
                let gateway = runtime.gateway(&record);
                let status = match gateway.phase {
                    GatewayPhase::Running => GatewayStatus::Running,
                    GatewayPhase::Starting => GatewayStatus::Starting,
                    GatewayPhase::Backoff => GatewayStatus::Backoff,
                    GatewayPhase::Failed => GatewayStatus::Failed,
                    GatewayPhase::Stopped => GatewayStatus::Stopped,
                    GatewayPhase::Hibernated => GatewayStatus::Hibernated,
                };
                TenantState {
                    tenant_id: record.tenant_id,
                    slug: record.slug,
                    runtime: kind as i32,
                    status: status as i32,
                    applied_config_generation: record.applied_generation,
                    gateway_port: record.port as u32,
                    agent_ids: record.agent_ids,
                    last_error: gateway.last_error,
                    restart_count: gateway.restarts,
                    status_since: gateway.since.map(Into::into),
                    memory_used_bytes: gateway.usage.memory_used_bytes,
                    cpu_used_micros: gateway.usage.cpu_used_micros,
                    memory_limit_bytes: gateway.usage.memory_limit_bytes,
                    memory_kills: gateway.usage.memory_kills,
                }
            })
            .collect()
    }
}
