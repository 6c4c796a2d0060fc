//! Fleet benchmark: N simulated agents, each with its own certificate from a
//! real Join, hold real mutual-TLS Connect streams to one `clawplane serve`
//! process and heartbeat. Prints, per N: time for all to connect, the
//! control plane's RSS per connected host, its CPU at steady state, and
//! Ping round-trips through the durable command queue under that load.
//!
//!     cargo bench -p clawplane-control-plane --bench fleet
//!
//! Env: BENCH_HOSTS (default "1000,5000"), BENCH_PINGS (default 500),
//! BENCH_STEADY_SECONDS (default 10).
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawplane_proto::v1::agent_service_client::AgentServiceClient;
use clawplane_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::{
    agent_message, command_result, control_message, AgentHello, AgentMessage, CommandAck, CommandOutcome,
    CommandResult, CreateJoinTokenRequest, Heartbeat, HostInventory, JoinRequest, PingHostRequest, PingResult,
};
use clawplane_test_kit::{free_port, TestDir};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

fn proc_value(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

fn rss_kib(pid: u32) -> u64 {
    proc_value(pid, "status")
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = proc_value(pid, "stat");
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

struct ControlPlane {
    child: Child,
    api: String,
    agent_url: String,
    token: String,
    _dir: TestDir,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_control_plane() -> ControlPlane {
    let dir = TestDir::new();
    let (api_port, agent_port) = (free_port(), free_port());
    let config = dir.path().join("bench.toml");
    std::fs::write(&config, "[hosts]\nheartbeat_interval = \"5s\"\nlease = \"20s\"\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_clawplane"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--api-listen", &format!("127.0.0.1:{api_port}"), "--agent-listen", &format!("127.0.0.1:{agent_port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "control plane exited");
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(dir.path().join("admin-token")).unwrap().trim().to_string();
    ControlPlane {
        child,
        api: format!("http://127.0.0.1:{api_port}"),
        agent_url: format!("https://127.0.0.1:{agent_port}"),
        token,
        _dir: dir,
    }
}

fn admin<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
    request
}

/// Joins one simulated host; returns its host id, certificate and key.
async fn join(url: &str, pin: &str, token: &str, n: usize) -> (String, String, String, String) {
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
    (response.host_id, response.certificate_pem, key.serialize_pem(), response.ca_chain_pem)
}

/// A simulated agent: hello, heartbeats, ack + answer pings. Signals on
/// `ready` once the HelloAck arrives.
async fn simulate(url: String, ca: String, cert: String, key: String, ready: mpsc::Sender<()>) {
    let identity = clawplane_tls::ReloadableIdentity::from_pem(&cert, &key).unwrap();
    let channel = clawplane_tls::channel(&url, clawplane_tls::mtls_client_config(&ca, identity).unwrap()).unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage { kind: Some(agent_message::Kind::Hello(AgentHello::default())) }).await.unwrap();
    let mut inbound = AgentServiceClient::new(channel).connect(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut beat = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(message)) => match message.kind {
                    Some(control_message::Kind::HelloAck(_)) => { let _ = ready.send(()).await; }
                    Some(control_message::Kind::Command(command)) => {
                        let ack = CommandAck { command_id: command.id.clone() };
                        let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::CommandAck(ack)) }).await;
                        let result = CommandResult {
                            command_id: command.id,
                            outcome: CommandOutcome::Succeeded as i32,
                            payload: Some(command_result::Payload::Ping(PingResult::default())),
                            ..Default::default()
                        };
                        let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::CommandResult(result)) }).await;
                    }
                    _ => {}
                },
                _ => return,
            },
            _ = beat.tick() => {
                let _ = tx.send(AgentMessage { kind: Some(agent_message::Kind::Heartbeat(Heartbeat::default())) }).await;
            }
        }
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let targets: Vec<usize> = std::env::var("BENCH_HOSTS")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    let pings: usize = std::env::var("BENCH_PINGS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let steady: u64 = std::env::var("BENCH_STEADY_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let cp = start_control_plane();
        let pid = cp.child.id();
        let api = Channel::from_shared(cp.api.clone()).unwrap().connect().await.unwrap();
        let mut hosts_api = HostServiceClient::new(api);
        let baseline_rss = rss_kib(pid);
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1024);
        let mut host_ids: Vec<String> = Vec::new();
        let mut connected = 0usize;
        let handshakes = Arc::new(Semaphore::new(64));
        for &target in &targets {
            let want = target - host_ids.len();
            // Enroll (not timed: that is a one-off per host).
            let mut joined = Vec::with_capacity(want);
            let mut remaining = want;
            while remaining > 0 {
                let uses = remaining.min(1000);
                let response = hosts_api
                    .create_join_token(admin(&cp.token, CreateJoinTokenRequest {
                        ttl: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
                        max_uses: uses as i32,
                        ..Default::default()
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                let joins = (0..uses).map(|i| {
                    let (url, pin, token) = (cp.agent_url.clone(), response.ca_pin.clone(), response.token.clone());
                    let permits = handshakes.clone();
                    let n = host_ids.len() + joined.len() + i;
                    tokio::spawn(async move {
                        let _permit = permits.acquire().await.unwrap();
                        join(&url, &pin, &token, n).await
                    })
                });
                for handle in futures::future::join_all(joins).await {
                    joined.push(handle.unwrap());
                }
                remaining -= uses;
            }
            // Connect all of them and wait for every HelloAck.
            let started = Instant::now();
            for (id, cert, key, ca) in joined {
                host_ids.push(id);
                let (url, ready) = (cp.agent_url.clone(), ready_tx.clone());
                let permits = handshakes.clone();
                tokio::spawn(async move {
                    let permit = permits.acquire_owned().await.unwrap();
                    let (tx, mut rx) = mpsc::channel(1);
                    let task = tokio::spawn(simulate(url, ca, cert, key, tx));
                    let _ = rx.recv().await;
                    drop(permit);
                    let _ = ready.send(()).await;
                    while rx.recv().await.is_some() {}
                    let _ = task.await;
                });
            }
            while connected < host_ids.len() {
                ready_rx.recv().await.unwrap();
                connected += 1;
            }
            let connect_time = started.elapsed();

            // Steady state: heartbeats only.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let ticks_before = cpu_ticks(pid);
            let window = Instant::now();
            tokio::time::sleep(Duration::from_secs(steady)).await;
            let ticks = cpu_ticks(pid) - ticks_before;
            let hz = 100.0; // USER_HZ on Linux
            let cpu_percent = ticks as f64 / hz / window.elapsed().as_secs_f64() * 100.0;
            let rss = rss_kib(pid);

            // Ping round-trips through the queue under that load.
            let mut latencies = Vec::with_capacity(pings);
            for i in 0..pings {
                let host_id = host_ids[(i * 7919) % host_ids.len()].clone();
                let t = Instant::now();
                let answer = hosts_api
                    .ping_host(admin(&cp.token, PingHostRequest { host_id, ..Default::default() }))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(answer.answered);
                latencies.push(t.elapsed());
            }
            latencies.sort();
            println!(
                "hosts={:<5} connect_all={:>6.2}s  cp_rss={:>7.1} MiB ({:>5.1} KiB/host over baseline {:.1} MiB)  cp_cpu_steady={:>5.1}%  ping_rtt p50={:.2} ms p99={:.2} ms (n={})",
                host_ids.len(),
                connect_time.as_secs_f64(),
                rss as f64 / 1024.0,
                (rss.saturating_sub(baseline_rss)) as f64 / host_ids.len() as f64,
                baseline_rss as f64 / 1024.0,
                cpu_percent,
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                pings,
            );
        }
    });
}
