//! What the fleet and replicas benches share: simulated hosts (a real Join
//! for a certificate, then mutual-TLS Connect streams that hello, heartbeat
//! and answer Ping commands, and fail over between control planes the way
//! the real agent does), admin calls, latency percentiles, and CPU and
//! memory read from /proc.
// Each bench uses its own part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clawplane_proto::v1::agent_service_client::AgentServiceClient;
use clawplane_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::{
    agent_message, command_result, control_message, AgentHello, AgentMessage, CommandAck, CommandOutcome,
    CommandResult, CreateJoinTokenRequest, Heartbeat, HostInventory, JoinRequest, PingResult,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Clock ticks per second in /proc (USER_HZ on Linux).
pub const USER_HZ: f64 = 100.0;

pub fn proc_value(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

pub fn rss_kib(pid: u32) -> u64 {
    proc_value(pid, "status")
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime in clock ticks; 0 once the process is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = proc_value(pid, "stat");
    let Some(end) = stat.rfind(')') else { return 0 };
    let fields: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// The `q` quantile of sorted latencies, in milliseconds.
pub fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

pub fn mean_ms(latencies: &[Duration]) -> f64 {
    latencies.iter().sum::<Duration>().as_secs_f64() * 1e3 / latencies.len().max(1) as f64
}

pub fn admin<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
    request
}

/// One simulated host's identity, from its Join.
#[derive(Clone)]
pub struct SimHost {
    pub id: String,
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// Joins one simulated host named `sim-<n>` through `url`.
pub async fn join(url: &str, pin: &str, token: &str, n: usize) -> SimHost {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr =
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap().pem().unwrap();
    let verifier = clawplane_tls::PinnedServerVerifier::new(pin).unwrap();
    let channel = clawplane_tls::channel(url, clawplane_tls::pinned_client_config(verifier).unwrap()).unwrap();
    let inventory = HostInventory { hostname: format!("sim-{n}"), agent_version: "bench".into(), ..Default::default() };
    let response = EnrollmentServiceClient::new(channel)
        .join(JoinRequest { token: token.to_string(), csr_pem: csr, inventory: Some(inventory) })
        .await
        .unwrap()
        .into_inner();
    SimHost {
        id: response.host_id,
        cert: response.certificate_pem,
        key: key.serialize_pem(),
        ca: response.ca_chain_pem,
    }
}

/// Joins `count` simulated hosts (named from `sim-<first>` on) through
/// `agent_url`, with join tokens of up to 1,000 uses made through `hosts`,
/// at most `handshakes` joins at once.
pub async fn enroll(
    hosts: &mut HostServiceClient<Channel>,
    admin_token: &str,
    agent_url: &str,
    first: usize,
    count: usize,
    handshakes: &Arc<Semaphore>,
) -> Vec<SimHost> {
    let mut joined = Vec::with_capacity(count);
    while joined.len() < count {
        let uses = (count - joined.len()).min(1000);
        let response = hosts
            .create_join_token(admin(
                admin_token,
                CreateJoinTokenRequest {
                    ttl: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
                    max_uses: uses as i32,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let joins = (0..uses).map(|i| {
            let (url, pin, token) = (agent_url.to_string(), response.ca_pin.clone(), response.token.clone());
            let permits = handshakes.clone();
            let n = first + joined.len() + i;
            tokio::spawn(async move {
                let _permit = permits.acquire().await.unwrap();
                join(&url, &pin, &token, n).await
            })
        });
        for handle in futures::future::join_all(joins).await {
            joined.push(handle.unwrap());
        }
    }
    joined
}

/// How a simulated session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The stream did not open (nothing listens, or the call failed).
    Unreachable,
    /// The stream was open and ended.
    Lost,
}

/// One Connect stream of a simulated agent to `url`: hello, heartbeats (at
/// the interval the HelloAck gives), every command acknowledged and
/// answered with a Ping result. Calls `acked` at each HelloAck, and
/// `answered(received)` once a command that arrived at `received` is
/// answered.
pub async fn session(host: &SimHost, url: &str, mut acked: impl FnMut(), mut answered: impl FnMut(Instant)) -> Ended {
    let identity = clawplane_tls::ReloadableIdentity::from_pem(&host.cert, &host.key).unwrap();
    let channel = clawplane_tls::channel(url, clawplane_tls::mtls_client_config(&host.ca, identity).unwrap()).unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage { kind: Some(agent_message::Kind::Hello(AgentHello::default())) }).await.unwrap();
    let mut inbound = match AgentServiceClient::new(channel).connect(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(_) => return Ended::Unreachable,
    };
    let mut beat = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(message)) => match message.kind {
                    Some(control_message::Kind::HelloAck(ack)) => {
                        let every = ack.heartbeat_interval.and_then(|d| Duration::try_from(d).ok());
                        if let Some(every) = every.filter(|every| !every.is_zero() && *every != beat.period()) {
                            beat = tokio::time::interval(every);
                        }
                        acked();
                    }
                    Some(control_message::Kind::Command(command)) => {
                        let received = Instant::now();
                        let ack = CommandAck { command_id: command.id.clone() };
                        let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::CommandAck(ack)) }).await;
                        let result = CommandResult {
                            command_id: command.id,
                            outcome: CommandOutcome::Succeeded as i32,
                            payload: Some(command_result::Payload::Ping(PingResult::default())),
                            ..Default::default()
                        };
                        let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::CommandResult(result)) }).await;
                        answered(received);
                    }
                    _ => {}
                },
                _ => return Ended::Lost,
            },
            _ = beat.tick() => {
                let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(Heartbeat::default())) }).await;
            }
        }
    }
}

/// The real agent's reconnect policy (host-agent `Backoff::RECONNECT`):
/// full jitter under 0.5 s doubling per failure up to 30 s; a session that
/// lasted `STABLE_SESSION` starts the count over.
const RECONNECT_BASE: Duration = Duration::from_millis(500);
const RECONNECT_CAP: Duration = Duration::from_secs(30);
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// A simulated agent that knows several control planes, kept connected the
/// way the real one is (host-agent `agent/reconnect.rs`): one session at a
/// time; each round tries the URLs in order, moving on at once from one
/// that does not take the stream; a round starts on the URL whose session
/// was just lost (a blip does not move the host), then goes on from there;
/// between rounds a jittered backoff. Calls `acked(i)` at each HelloAck
/// from `urls[i]`. Runs until its task is aborted.
pub async fn keep_connected(host: SimHost, urls: Vec<String>, mut acked: impl FnMut(usize)) {
    let mut failures = 0u32;
    let mut start = 0usize;
    loop {
        let mut lost = None;
        for i in (0..urls.len()).map(|k| (start + k) % urls.len()) {
            let began = Instant::now();
            if session(&host, &urls[i], || acked(i), |_| {}).await == Ended::Lost {
                lost = Some((i, began.elapsed()));
                break;
            }
        }
        start = 0;
        if let Some((i, lasted)) = lost {
            if lasted > STABLE_SESSION {
                failures = 0;
            }
            start = i;
        }
        let ceiling = RECONNECT_BASE.saturating_mul(1u32 << failures.min(16)).min(RECONNECT_CAP);
        failures = failures.saturating_add(1);
        tokio::time::sleep(ceiling.mul_f64(rand::random::<f64>())).await;
    }
}
