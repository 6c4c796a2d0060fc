//! Tenant lifecycle on the real OpenClaw, timed: provision (CreateTenant to
//! RUNNING), one config change touching more than 10 keys, restart to
//! ready, the OpenClaw processes that change spawns, the gateway's memory,
//! and the control plane's own overhead per command (a Ping through the
//! queue, no OpenClaw involved).
//!
//!     eval "$(scripts/install-openclaw)"
//!     CLAWPLANE_OPENCLAW_BIN=$OPENCLAW_BIN cargo bench -p clawplane-host-agent --bench openclaw
//!
//! Needs root (tenant OS users) and an OpenClaw install tenant users can
//! read (scripts/test uses /var/cache/clawplane).
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clawplane::config::{Config, ServeArgs};
use clawplane::Server;
use clawplane_proto::v1::config_service_client::ConfigServiceClient;
use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{
    CreateJoinTokenRequest, CreateTenantRequest, DeleteTenantRequest, GetMyTenantRequest, PingHostRequest,
    RestartTenantRequest, SetAgentProfileRequest, SetChannelRequest, SetModelRequest, SetToolsRequest, TenantStatus,
};
use tonic::transport::Channel;

mod common;
use common::{request, SHARED};

/// RSS (KiB) of every process in a process group.
fn group_rss_kib(pgid: i32) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Some(stat) = common::proc_stat(pid) else { continue };
        let group: i32 = stat[2].parse().unwrap();
        if group == pgid {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            total += status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

fn openclaw_calls(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("openclaw call"))
        .map(String::from)
        .collect()
}

fn main() {
    let Ok(openclaw) = std::env::var("CLAWPLANE_OPENCLAW_BIN") else {
        eprintln!("set CLAWPLANE_OPENCLAW_BIN (eval \"$(scripts/install-openclaw)\")");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        // Dropped at the end: ends the tenants' gateways with it.
        let dir = clawplane_test_kit::TestDir::new();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let mut args = ServeArgs {
            data_dir: Some(dir.path().join("cp")),
            api_listen: Some("127.0.0.1:0".into()),
            agent_listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        args.auth.shared_secret = Some(SHARED.into());
        // The stand-in model server is on loopback.
        args.models_allowed_cidrs = vec!["127.0.0.0/8".into()];
        let mut config = Config::load(&args).unwrap();
        config.rate_per_caller = clawplane_edge::rate::Rate::new(1_000_000_000, 1_000_000_000);
        let server = Server::bind(config).await.unwrap();
        let (api, agent_addr, pin) = (server.local_addr(), server.agent_addr(), server.ca_pin());
        let admin_token = std::fs::read_to_string(dir.path().join("cp/admin-token")).unwrap();
        tokio::spawn(server.run(std::future::pending()));
        let channel = Channel::from_shared(format!("http://{api}")).unwrap().connect().await.unwrap();
        let admin = [("authorization", format!("Bearer {}", admin_token.trim()))];
        let user = [("x-shared-secret", SHARED.to_string()), ("x-user-id", "bench".to_string())];

        let mut hosts = HostServiceClient::new(channel.clone());
        let token = hosts
            .create_join_token(request(&admin, CreateJoinTokenRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .token;
        let agent_bin = env!("CARGO_BIN_EXE_clawplane-agent");
        let state = dir.path().join("agent");
        let url = format!("https://{agent_addr}");
        let joined = Command::new(agent_bin)
            .args(["join", "--control-plane", &url, "--token", &token, "--ca-pin", &pin, "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
        let log_path = dir.path().join("agent.log");
        let mut agent = Command::new(agent_bin)
            .args(["run", "--state-dir"])
            .arg(&state)
            .args(["--openclaw-bin", &openclaw, "--tenants-dir"])
            .arg(dir.path().join("tenants"))
            .args(["--gateway-base-port", "31000"])
            .env("RUST_LOG", "info,clawplane_agent=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();

        // Control-plane overhead per command: Ping through the durable queue.
        let host_id = loop {
            let listed = hosts.list_hosts(request(&admin, Default::default())).await.unwrap().into_inner().hosts;
            if let Some(host) = listed.into_iter().find(|h| h.connected) {
                break host.id;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut pings = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let pong = hosts
                .ping_host(request(&admin, PingHostRequest { host_id: host_id.clone(), ..Default::default() }))
                .await
                .unwrap();
            assert!(pong.into_inner().answered);
            pings.push(t.elapsed());
        }
        pings.sort();

        // Provision: CreateTenant to RUNNING.
        let mut tenants = TenantServiceClient::new(channel.clone());
        let started = Instant::now();
        tenants
            .create_tenant(request(&user, CreateTenantRequest { plan: "free".into(), ..Default::default() }))
            .await
            .unwrap();
        let tenant = loop {
            let t = tenants
                .get_my_tenant(request(&user, GetMyTenantRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .tenant
                .unwrap();
            match TenantStatus::try_from(t.status).unwrap() {
                TenantStatus::Running => break t,
                TenantStatus::Failed => panic!("{}", t.status_message),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let provision = started.elapsed();

        // Fill in every config area, then time one change that rewrites them all.
        let mut config = ConfigServiceClient::new(channel.clone());
        let id = tenant.id.clone();
        config
            .set_model(request(
                &user,
                SetModelRequest {
                    tenant_id: id.clone(),
                    provider: "local".into(),
                    model: "fake-model".into(),
                    api_key: Some("sk-bench-0123456789".into()),
                    base_url: Some("http://127.0.0.1:9/v1".into()),
                    expected_generation: None,
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        config
            .set_tools(request(
                &user,
                SetToolsRequest {
                    tenant_id: id.clone(),
                    allow: vec!["read".into()],
                    deny: vec!["exec".into()],
                    expected_generation: None,
                },
            ))
            .await
            .unwrap();
        let mut secrets = HashMap::new();
        secrets.insert("botToken".to_string(), "123456:bench-token".to_string());
        config
            .set_channel(request(
                &user,
                SetChannelRequest {
                    tenant_id: id.clone(),
                    channel: "telegram".into(),
                    settings: HashMap::new(),
                    secrets,
                    enabled: true,
                    expected_generation: None,
                },
            ))
            .await
            .unwrap();
        let calls_before = openclaw_calls(&log_path).len();
        let t = Instant::now();
        let applied = config
            .set_agent_profile(request(
                &user,
                SetAgentProfileRequest {
                    tenant_id: id.clone(),
                    name: Some("Bench".into()),
                    system_prompt: Some("You are a benchmark.".into()),
                    style: Some("terse".into()),
                    expected_generation: None,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .config
            .unwrap();
        let change = t.elapsed();
        assert_eq!(applied.applied_generation, applied.desired_generation);
        let spawned = openclaw_calls(&log_path)[calls_before..].to_vec();

        let root = dir.path().join("tenants").join(&tenant.slug);
        let pid: i32 = std::fs::read_to_string(root.join("gateway.pid")).unwrap().trim().parse().unwrap();
        let rss = group_rss_kib(pid);

        let t = Instant::now();
        tenants.restart_tenant(request(&user, RestartTenantRequest { tenant_id: id.clone() })).await.unwrap();
        let restart = t.elapsed();

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("provision (CreateTenant -> RUNNING)      {:>8.1} s", provision.as_secs_f64());
        println!(
            "config change, all areas (>10 keys)     {:>8.1} s  ({} openclaw process(es): {})",
            change.as_secs_f64(),
            spawned.len(),
            spawned
                .iter()
                .map(|l| if l.contains("command=config set") {
                    "config set"
                } else if l.contains("command=agents add") {
                    "agents add"
                } else {
                    "other"
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("restart to ready                        {:>8.1} s", restart.as_secs_f64());
        println!("gateway memory (process group RSS)      {:>8.0} MiB", rss as f64 / 1024.0);
        println!(
            "control-plane overhead per command      p50 {:.2} ms  p99 {:.2} ms  (Ping via the queue, n={})",
            ms(pings[pings.len() / 2]),
            ms(pings[pings.len() * 99 / 100]),
            pings.len()
        );
        // Leave nothing behind: the agent removes the gateway, tree and user.
        tenants.delete_tenant(request(&user, DeleteTenantRequest { tenant_id: id.clone() })).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while root.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = agent.kill();
        let _ = agent.wait();
    });
}
