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
    agent_message, control_message, AgentHello, AgentMessage, CommandAck, Heartbeat, RenewCertificateRequest,
};
use clawplane_tls::ReloadableIdentity;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::commands;
use crate::inventory::{collect, AgentConfig};
use crate::join::{key_and_csr, transport_detail};
use crate::state::{Identity, StateDir};

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(30);

struct Agent {
    state: StateDir,
    /// Command ids being executed right now: a redelivery that arrives while
    /// the first delivery still runs waits for it and reuses its result.
    running: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    identity: Identity,
    tls_identity: Arc<ReloadableIdentity>,
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

pub async fn run(state_dir: &Path, config_path: Option<&Path>) -> anyhow::Result<()> {
    let state = StateDir::new(state_dir);
    let identity = state
        .identity()?
        .ok_or_else(|| anyhow!("{} holds no enrollment; run `clawplane-agent join` first", state_dir.display()))?;
    let config = AgentConfig::load(config_path)?;
    let tls_identity = ReloadableIdentity::from_pem(&state.read("cert.pem")?, &state.read("key.pem")?)
        .context("stored certificate or key is unusable")?;
    let agent = Arc::new(Agent {
        ca_pem: state.read("ca.pem")?,
        state,
        running: Default::default(),
        identity,
        tls_identity,
        config,
    });
    tracing::info!(host = %agent.identity.host_id, control_plane = %agent.identity.control_plane, "agent starting");

    let renewal = tokio::spawn(agent.clone().renew_forever());
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
    result
}

/// Full jitter: uniform in [0, min(cap, base * 2^attempt)].
fn backoff(attempt: u32) -> Duration {
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
        let hello = AgentHello {
            inventory: Some(collect(&self.config, self.state.root())),
            tenants: Vec::new(),
            completed_command_ids: Vec::new(),
        };
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
                        Some(control_message::Kind::Command(command)) => {
                            let ack = AgentMessage { kind: Some(agent_message::Kind::CommandAck(CommandAck { command_id: command.id.clone() })) };
                            let _ = out.send(ack).await;
                            let state = self.state.clone();
                            let out = out.clone();
                            let lock = self.running.lock().unwrap().entry(command.id.clone()).or_default().clone();
                            let running = self.running.clone();
                            tokio::spawn(async move {
                                let _guard = lock.lock().await;
                                let id = command.id.clone();
                                let result = tokio::task::spawn_blocking(move || commands::execute(&state, command)).await;
                                running.lock().unwrap().remove(&id);
                                if let Ok(result) = result {
                                    let _ = out.send(AgentMessage { kind: Some(agent_message::Kind::CommandResult(result)) }).await;
                                }
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
                    let beat = Heartbeat { sent_at: Some(SystemTime::now().into()), ..Default::default() };
                    if out.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(beat)) }).await.is_err() {
                        return Ended::Retry("outbound stream closed".into());
                    }
                }
            }
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
