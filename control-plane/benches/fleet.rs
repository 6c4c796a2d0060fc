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
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::PingHostRequest;
use clawplane_test_kit::{free_port, TestDir};
use common::{admin, cpu_ticks, enroll, percentile, rss_kib, session};
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::Channel;

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
            let joined = enroll(&mut hosts_api, &cp.token, &cp.agent_url, host_ids.len(), want, &handshakes).await;
            // Connect all of them and wait for every HelloAck.
            let started = Instant::now();
            for host in joined {
                host_ids.push(host.id.clone());
                let (url, ready) = (cp.agent_url.clone(), ready_tx.clone());
                let permits = handshakes.clone();
                tokio::spawn(async move {
                    let permit = permits.acquire_owned().await.unwrap();
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    let task = tokio::spawn(async move {
                        let ready = move || {
                            let _ = tx.send(());
                        };
                        session(&host, &url, ready, |_| {}).await
                    });
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
            let cpu_percent = ticks as f64 / common::USER_HZ / window.elapsed().as_secs_f64() * 100.0;
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
