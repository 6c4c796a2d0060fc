//! `clawplane-agent run`: keeps one mutual-TLS Connect stream to the control
//! plane, forever. Hello with inventory first, then heartbeats; commands are
//! acknowledged on receipt and answered by id. Lost connections are retried
//! with capped exponential backoff and full jitter. The certificate is
//! renewed at about two thirds of its life and swapped in without a restart.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use clawplane_proto::v1::agent_service_client::AgentServiceClient;
use clawplane_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use clawplane_proto::v1::{
    agent_message, command, control_message, AgentHello, AgentMessage, Command, CommandAck, GatewayStatus, Heartbeat,
    LogChunk, RenewCertificateRequest, Runtime, StreamLogsCommand, TenantState,
};
use clawplane_tls::ReloadableIdentity;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::commands;
use crate::inventory::{collect, AgentConfig};
use crate::join::{key_and_csr, transport_detail};
use crate::openclaw::cli::OpenClawCli;
use crate::openclaw::runtime::{GatewayPhase, ProcessRuntime, RuntimeConfig, RuntimeKind};
use crate::state::{Identity, StateDir};

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

struct Agent {
    state: StateDir,
    /// `host:port` of the tenant proxy, reported in the hello; empty if off.
    proxy_endpoint: String,
    /// `openclaw --version` of this host, for the inventory.
    openclaw_version: String,
    executor: Arc<commands::Executor>,
    /// Log streams in progress, by request id, to cancel them.
    log_streams: std::sync::Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    /// Command ids being executed right now: a redelivery that arrives while
    /// the first delivery still runs waits for it and reuses its result.
    running: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    identity: Identity,
    tls_identity: Arc<ReloadableIdentity>,
    /// Set once the certificate was renewed early for lacking the host name.
    renewed_for_name: std::sync::atomic::AtomicBool,
    ca_pem: String,
    config: AgentConfig,
}

/// How a session ended.
enum Ended {
    /// Worth reconnecting.
    Retry(String),
    /// The control plane refuses this host for good.
    Refused(String),
}

/// How the agent runs tenants.
pub struct RuntimeOptions {
    pub openclaw_bin: Option<std::path::PathBuf>,
    pub tenants_dir: Option<std::path::PathBuf>,
    pub base_port: u16,
    pub tenant_users: bool,
    /// How long archives of deleted tenants are kept.
    pub archive_retention: Duration,
    pub runtime: RuntimeKind,
    /// Tenant proxy listen address and the address to advertise.
    pub proxy_listen: Option<String>,
    pub proxy_advertise: Option<String>,
}

pub async fn run(state_dir: &Path, config_path: Option<&Path>, options: RuntimeOptions) -> anyhow::Result<()> {
    let state = StateDir::new(state_dir);
    let runtime = match &options.openclaw_bin {
        Some(bin) => {
            let runtime = ProcessRuntime::new(RuntimeConfig {
                kind: options.runtime,
                openclaw: OpenClawCli::new(bin),
                state_dir: state_dir.to_path_buf(),
                tenants_dir: options.tenants_dir.clone().unwrap_or_else(|| state_dir.join("tenant-homes")),
                tenant_users: options.tenant_users,
                base_port: options.base_port,
                port_stride: 150,
                cli_timeout: Duration::from_secs(120),
                ready_timeout: Duration::from_secs(180),
                archive_dir: state_dir.join("archives"),
                archive_retention: options.archive_retention,
            })?;
            runtime.adopt_all().await;
            runtime.prune_archives();
            Some(runtime)
        }
        None => None,
    };
    let executor = Arc::new(commands::Executor { state: state.clone(), runtime });
    let identity = state
        .identity()?
        .ok_or_else(|| anyhow!("{} holds no enrollment; run `clawplane-agent join` first", state_dir.display()))?;
    let config = AgentConfig::load(config_path)?;
    let tls_identity = ReloadableIdentity::from_pem(&state.read("cert.pem")?, &state.read("key.pem")?)
        .context("stored certificate or key is unusable")?;
    let openclaw_version = match &executor.runtime {
        Some(runtime) => runtime.openclaw_version().await,
        None => String::new(),
    };
    // The tenant proxy, for gateway bridges.
    let proxy_endpoint = match (&options.proxy_listen, &executor.runtime) {
        (Some(listen), Some(runtime)) => {
            let (listener, addr) = crate::proxy::bind(listen).await?;
            let tls = clawplane_tls::mtls_server_config(&state.read("ca.pem")?, tls_identity.clone())?;
            crate::proxy::spawn(listener, tls, runtime.clone())?;
            let endpoint = options.proxy_advertise.clone().unwrap_or_else(|| addr.to_string());
            tracing::info!(listen = %addr, %endpoint, "tenant proxy listening");
            endpoint
        }
        (Some(_), None) => anyhow::bail!("--proxy-listen needs --openclaw-bin: there are no tenants to proxy to"),
        (None, _) => String::new(),
    };
    let agent = Arc::new(Agent {
        proxy_endpoint,
        openclaw_version,
        ca_pem: state.read("ca.pem")?,
        executor,
        log_streams: Default::default(),
        state,
        running: Default::default(),
        identity,
        tls_identity,
        renewed_for_name: Default::default(),
        config,
    });
    tracing::info!(host = %agent.identity.host_id, control_plane = %agent.identity.control_plane, "agent starting");

    let renewal = tokio::spawn(agent.clone().renew_forever());
    let sync = match &agent.executor.runtime {
        Some(runtime) => {
            let syncer = crate::sync::Syncer::new(agent.state.root(), Arc::new(RuntimeTenants(runtime.clone())))?;
            let agent = agent.clone();
            Some(tokio::spawn(async move { syncer.run(|| agent.channel()).await }))
        }
        None => None,
    };
    let mut attempt: u32 = 0;
    let result = loop {
        let started = Instant::now();
        match agent.session().await {
            Ended::Refused(reason) => break Err(anyhow!("{reason}")),
            Ended::Retry(reason) => {
                if started.elapsed() > STABLE_SESSION {
                    attempt = 0;
                }
                let delay = backoff(attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "connection to the control plane lost");
                tokio::time::sleep(delay).await;
            }
        }
    };
    renewal.abort();
    if let Some(sync) = sync {
        sync.abort();
    }
    result
}

/// The runtime's tenants, as the syncer sees them.
struct RuntimeTenants(Arc<ProcessRuntime>);

impl crate::sync::TenantSource for RuntimeTenants {
    fn tenants(&self) -> Vec<crate::sync::SyncTenant> {
        self.0.sync_tenants()
    }

    fn read_permit(&self, tenant_id: &str) -> Option<crate::sync::ReadPermit> {
        self.0.sync_permit(tenant_id)
    }
}

/// Full jitter: uniform in [0, min(cap, base * 2^attempt)].
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(16)).min(BACKOFF_CAP);
    ceiling.mul_f64(rand::random::<f64>())
}

fn is_refusal(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::PermissionDenied) && status.message().starts_with("host_revoked")
}

impl Agent {
    fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let config = clawplane_tls::mtls_client_config(&self.ca_pem, self.tls_identity.clone())?;
        clawplane_tls::channel(&self.identity.control_plane, config)
    }

    async fn session(&self) -> Ended {
        let channel = match self.channel() {
            Ok(channel) => channel,
            Err(err) => return Ended::Refused(format!("invalid agent state: {err:#}")),
        };
        let (out, out_rx) = mpsc::channel::<AgentMessage>(64);
        let mut inventory = collect(&self.config, self.state.root(), &self.openclaw_version, self.runtime_kind());
        inventory.proxy_endpoint = self.proxy_endpoint.clone();
        let hello =
            AgentHello { inventory: Some(inventory), tenants: self.tenant_states(), completed_command_ids: Vec::new() };
        let _ = out.send(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }).await;
        let mut inbound = match AgentServiceClient::new(channel).connect(ReceiverStream::new(out_rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) if is_refusal(&status) => {
                return Ended::Refused(format!("control plane refused this host: {}", status.message()))
            }
            Err(status) => return Ended::Retry(transport_detail(&status)),
        };
        let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let kind = match message {
                        Ok(Some(message)) => message.kind,
                        Ok(None) => return Ended::Retry("control plane closed the stream".into()),
                        Err(status) if is_refusal(&status) => return Ended::Refused(status.message().to_string()),
                        Err(status) => return Ended::Retry(transport_detail(&status)),
                    };
                    match kind {
                        Some(control_message::Kind::HelloAck(ack)) => {
                            tracing::info!(host = %ack.host_id, "connected to the control plane");
                            if let Some(every) = ack.heartbeat_interval.and_then(|d| Duration::try_from(d).ok()) {
                                if !every.is_zero() {
                                    heartbeat = tokio::time::interval(every);
                                }
                            }
                        }
                        Some(control_message::Kind::Command(command)) if self.is_log_command(&command) => {
                            self.handle_log_command(command, out.clone());
                        }
                        Some(control_message::Kind::Command(command)) => {
                            let ack = AgentMessage { kind: Some(agent_message::Kind::CommandAck(CommandAck { command_id: command.id.clone() })) };
                            let _ = out.send(ack).await;
                            let executor = self.executor.clone();
                            let out = out.clone();
                            let lock = self.running.lock().unwrap().entry(command.id.clone()).or_default().clone();
                            let running = self.running.clone();
                            tokio::spawn(async move {
                                let _guard = lock.lock().await;
                                let id = command.id.clone();
                                let result = executor.execute(command).await;
                                running.lock().unwrap().remove(&id);
                                let _ = out.send(AgentMessage { kind: Some(agent_message::Kind::CommandResult(result)) }).await;
                            });
                        }
                        Some(control_message::Kind::Close(close)) => {
                            if close.reason.starts_with("host_revoked") {
                                return Ended::Refused(format!("control plane removed this host: {}", close.reason));
                            }
                            return Ended::Retry(format!("control plane closed the stream: {}", close.reason));
                        }
                        None => {}
                    }
                }
                _ = heartbeat.tick() => {
                    let beat = Heartbeat { sent_at: Some(SystemTime::now().into()), tenants: self.tenant_states(), ..Default::default() };
                    if out.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(beat)) }).await.is_err() {
                        return Ended::Retry("outbound stream closed".into());
                    }
                }
            }
        }
    }

    fn runtime_kind(&self) -> Runtime {
        match self.executor.runtime.as_ref().map(|r| r.kind()) {
            Some(RuntimeKind::Fleet) => Runtime::Fleet,
            _ => Runtime::Process,
        }
    }

    /// What the host runs, for the hello and heartbeats.
    fn tenant_states(&self) -> Vec<TenantState> {
        let Some(runtime) = &self.executor.runtime else { return Vec::new() };
        runtime
            .records()
            .into_iter()
            .map(|record| {
                let gateway = runtime.gateway_state(&record.tenant_id);
                let fleet = runtime.kind() == RuntimeKind::Fleet;
                let status = match gateway.as_ref().map(|g| &g.phase) {
                    // Cells are supervised by the container engine.
                    _ if fleet && record.provisioned => GatewayStatus::Running,
                    Some(GatewayPhase::Running) => GatewayStatus::Running,
                    Some(GatewayPhase::Starting) => GatewayStatus::Starting,
                    Some(GatewayPhase::Backoff) => GatewayStatus::Backoff,
                    Some(GatewayPhase::Failed) => GatewayStatus::Failed,
                    Some(GatewayPhase::Stopped) | None => GatewayStatus::Stopped,
                };
                TenantState {
                    tenant_id: record.tenant_id,
                    slug: record.slug,
                    runtime: if fleet { Runtime::Fleet as i32 } else { Runtime::Process as i32 },
                    status: status as i32,
                    applied_config_generation: record.applied_generation,
                    gateway_port: record.port as u32,
                    agent_ids: record.agent_ids,
                    last_error: gateway.as_ref().map(|g| g.last_error.clone()).unwrap_or_default(),
                    restart_count: gateway.as_ref().map(|g| g.restarts).unwrap_or(0),
                    status_since: gateway.map(|g| g.since.into()),
                }
            })
            .collect()
    }

    fn is_log_command(&self, command: &Command) -> bool {
        matches!(command.payload, Some(command::Payload::StreamLogs(_)) | Some(command::Payload::CancelLogs(_)))
    }

    /// Log tails are streamed, not queued: the tail first, then new lines
    /// while following, in bounded chunks, until cancelled or disconnected.
    fn handle_log_command(&self, command: Command, out: mpsc::Sender<AgentMessage>) {
        match command.payload {
            Some(command::Payload::CancelLogs(cancel)) => {
                if let Some(stop) = self.log_streams.lock().unwrap().remove(&cancel.request_id) {
                    let _ = stop.send(());
                }
            }
            Some(command::Payload::StreamLogs(request)) => {
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
                self.log_streams.lock().unwrap().insert(request.request_id.clone(), stop_tx);
                let runtime = self.executor.runtime.clone();
                tokio::spawn(stream_logs(runtime, request, out, stop_rx));
            }
            _ => {}
        }
    }

    /// Renews the certificate at two thirds of its life; failed attempts
    /// retry well before expiry.
    async fn renew_forever(self: Arc<Self>) {
        loop {
            let wait = match self.time_to_renewal() {
                Ok(wait) => wait,
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the current certificate");
                    Duration::from_secs(30)
                }
            };
            tokio::time::sleep(wait).await;
            match self.renew_once().await {
                Ok(expires) => tracing::info!(expires_in_s = expires.as_secs(), "certificate renewed"),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "certificate renewal failed; retrying");
                    let retry = self.remaining_life().unwrap_or_default() / 10;
                    tokio::time::sleep(retry.clamp(Duration::from_millis(200), Duration::from_secs(60))).await;
                }
            }
        }
    }

    fn current_cert(&self) -> anyhow::Result<clawplane_tls::CertInfo> {
        let pem = self.state.read("cert.pem")?;
        clawplane_tls::cert_info(&clawplane_tls::certs_from_pem(&pem)?[0])
    }

    fn remaining_life(&self) -> anyhow::Result<Duration> {
        let cert = self.current_cert()?;
        Ok(cert.not_after.duration_since(SystemTime::now()).unwrap_or_default())
    }

    fn time_to_renewal(&self) -> anyhow::Result<Duration> {
        let cert = self.current_cert()?;
        // Bridges verify the tenant proxy by the host's name, which host
        // certificates issued before the proxy existed lack: renew those at
        // once (once per run, in case the control plane still omits it).
        let name = clawplane_tls::host_server_name(&self.identity.host_id);
        if !self.proxy_endpoint.is_empty()
            && !cert.dns_names.contains(&name)
            && !self.renewed_for_name.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!(%name, "the certificate does not name this host for the tenant proxy; renewing it now");
            return Ok(Duration::ZERO);
        }
        // The certificate is backdated for clock skew; two thirds are counted
        // from when it was issued to us, a minute after not_before.
        let issued = cert.not_before + Duration::from_secs(60);
        let life = cert.not_after.duration_since(issued).unwrap_or_default();
        let renew_at = issued + life * 2 / 3;
        Ok(renew_at.duration_since(SystemTime::now()).unwrap_or_default())
    }

    async fn renew_once(&self) -> anyhow::Result<Duration> {
        let (key_pem, csr_pem) = key_and_csr()?;
        let response = EnrollmentServiceClient::new(self.channel()?)
            .renew_certificate(RenewCertificateRequest { csr_pem })
            .await
            .map_err(|status| anyhow!("{:?}: {}", status.code(), transport_detail(&status)))?
            .into_inner();
        let cert_pem = response.certificate_pem;
        // Check the pair loads before it replaces the working one.
        self.tls_identity.replace(&cert_pem, &key_pem)?;
        self.state.save_renewal(&key_pem, &cert_pem)?;
        let info = clawplane_tls::cert_info(&clawplane_tls::certs_from_pem(&cert_pem)?[0])?;
        if info.common_name != self.identity.host_id {
            bail!("renewed certificate names {} instead of this host", info.common_name);
        }
        Ok(info.not_after.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

/// Lines per LogChunk and the pause between polls while following.
const LOG_CHUNK_LINES: usize = 200;
const LOG_POLL: Duration = Duration::from_millis(200);

async fn stream_logs(
    runtime: Option<Arc<ProcessRuntime>>,
    request: StreamLogsCommand,
    out: mpsc::Sender<AgentMessage>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let chunk = |lines: Vec<String>, eof: bool, error: String| AgentMessage {
        kind: Some(agent_message::Kind::LogChunk(LogChunk {
            request_id: request.request_id.clone(),
            tenant_id: request.tenant_id.clone(),
            lines,
            read_at: Some(SystemTime::now().into()),
            eof,
            error,
        })),
    };
    let Some(runtime) = runtime else {
        let _ = out.send(chunk(Vec::new(), true, "OpenClaw is not configured on this host".into())).await;
        return;
    };
    let tail = (request.tail_lines as usize).clamp(1, 10_000);
    if runtime.kind() == RuntimeKind::Fleet && request.follow {
        // Fleet cells: `openclaw fleet logs --follow` for as long as the
        // caller listens; its lines go out in chunks as they come.
        let mut follower = match runtime.cell_log_follow(&request.tenant_id, tail) {
            Ok(follower) => follower,
            Err(err) => {
                let _ = out.send(chunk(Vec::new(), true, err.to_string())).await;
                return;
            }
        };
        let Some(stdout) = follower.child.stdout.take() else { return };
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let mut pending = Vec::new();
        // Lines wait at most LOG_POLL after the first of a chunk arrived.
        let mut flush_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = &mut stop => return,
                line = lines.next_line() => match line {
                    Ok(Some(line)) => {
                        if pending.is_empty() {
                            flush_at = tokio::time::Instant::now() + LOG_POLL;
                        }
                        pending.push(line);
                        if pending.len() < LOG_CHUNK_LINES {
                            continue;
                        }
                    }
                    // The cell went away or the CLI ended: say so and stop.
                    _ => {
                        let _ = out.send(chunk(std::mem::take(&mut pending), true, String::new())).await;
                        return;
                    }
                },
                _ = tokio::time::sleep_until(flush_at), if !pending.is_empty() => {}
            }
            if out.send(chunk(std::mem::take(&mut pending), false, String::new())).await.is_err() {
                return;
            }
        }
    }
    if runtime.kind() == RuntimeKind::Fleet {
        let (lines, error) = match runtime.cell_log_tail(&request.tenant_id, tail).await {
            Ok(lines) => (lines, String::new()),
            Err(err) => (Vec::new(), err.to_string()),
        };
        for part in lines.chunks(LOG_CHUNK_LINES) {
            if out.send(chunk(part.to_vec(), false, String::new())).await.is_err() {
                return;
            }
        }
        let _ = out.send(chunk(Vec::new(), true, error)).await;
        return;
    }
    let (lines, mut offset, path) = match runtime.log_tail(&request.tenant_id, tail) {
        Ok(found) => found,
        Err(err) => {
            let _ = out.send(chunk(Vec::new(), true, err.to_string())).await;
            return;
        }
    };
    for part in lines.chunks(LOG_CHUNK_LINES) {
        if out.send(chunk(part.to_vec(), false, String::new())).await.is_err() {
            return;
        }
    }
    if !request.follow {
        let _ = out.send(chunk(Vec::new(), true, String::new())).await;
        return;
    }
    let mut partial = String::new();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(LOG_POLL) => {}
        }
        let Ok(mut file) = std::fs::File::open(&path) else { continue };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < offset {
            offset = 0; // rotated or truncated
        }
        if len == offset {
            continue;
        }
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_err() || file.by_ref().take(1 << 20).read_to_end(&mut bytes).is_err() {
            continue;
        }
        offset += bytes.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut complete: Vec<String> = Vec::new();
        while let Some(newline) = partial.find('\n') {
            complete.push(partial[..newline].to_string());
            partial.drain(..=newline);
        }
        for part in complete.chunks(LOG_CHUNK_LINES) {
            if out.send(chunk(part.to_vec(), false, String::new())).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            let delay = backoff(attempt);
            assert!(delay <= BACKOFF_CAP, "{attempt}: {delay:?}");
            assert!(delay <= BACKOFF_BASE * 2u32.pow(attempt.min(16)), "{attempt}: {delay:?}");
        }
        let samples: std::collections::HashSet<u128> = (0..20).map(|_| backoff(10).as_micros()).collect();
        assert!(samples.len() > 10, "full jitter spreads retries");
    }
}
