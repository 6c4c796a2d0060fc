//! Density end to end, as real processes on 127.0.0.1 with the stand-in
//! `openclaw` (the real one: openclaw.rs): idle tenants hibernate and the
//! next request through the gateway bridge wakes them; placement counts
//! the memory tenants' plans commit and refuses limited plans on a host
//! that cannot enforce them.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clawplane_proto::v1::config_service_client::ConfigServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{
    CreateTenantRequest, DeleteTenantRequest, GetConfigRequest, GetHostRequest, HostResources, SetModelRequest,
    TenantStatus,
};
use clawplane_test_kit::auth::{claims, hs256, Cred};
use common::*;

/// A control plane and one host running the stand-in `openclaw` with its
/// tenant proxy; `agent_args` are added to the agent's. Returns the fake's
/// folder (markers go there) and the agent's arguments, to run it again.
async fn host(db: &TestDb, agent_args: &[&str]) -> (ControlPlane, Agent, PathBuf, Vec<String>) {
    let cp = ControlPlane::start(db, "");
    let dir = db.data_dir();
    let fake = fake_openclaw(&dir);
    let (token, pin) = cp.join_token(600, 1).await;
    let mut agent = Agent::new(&dir, "agent");
    assert!(agent.join(&cp.url(), &token, &pin).status.success());
    let mut args: Vec<String> = [
        "--openclaw-bin",
        &fake.join("openclaw").display().to_string(),
        "--tenants-dir",
        &dir.join("tenants").display().to_string(),
        "--no-tenant-users",
        "--gateway-base-port",
        &free_port().to_string(),
        "--proxy-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(agent_args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    agent.run_with(&refs);
    (cp, agent, fake, args)
}

fn gateway_pid(tenants: &Path, slug: &str) -> Option<u32> {
    std::fs::read_to_string(tenants.join(slug).join("gateway.pid")).ok()?.trim().parse().ok()
}

/// Whether the agent's record says the tenant sleeps and no gateway runs.
fn asleep(agent: &Agent, tenants: &Path, tenant_id: &str, slug: &str) -> bool {
    let record = std::fs::read_to_string(agent.state_dir.join("tenants").join(format!("{tenant_id}.json")))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    record.is_some_and(|r| r["hibernated"] == true) && gateway_pid(tenants, slug).is_none()
}

/// Waits until the tenant sleeps again (the agent's record: the control
/// plane's status may lag a heartbeat behind a short awake spell).
async fn asleep_again(agent: &Agent, tenants: &Path, tenant_id: &str, slug: &str) {
    let started = std::time::Instant::now();
    while !asleep(agent, tenants, tenant_id, slug) {
        assert!(started.elapsed() < Duration::from_secs(60), "{slug} never went back to sleep");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn resources(cp: &ControlPlane, host_id: &str) -> (HostResources, String) {
    let host = cp.hosts().await.get_host(cp.admin(GetHostRequest { host_id: host_id.into() })).await.unwrap();
    let host = host.into_inner().host.unwrap();
    let capacity = host.inventory.unwrap().capacity.unwrap();
    let limits = if capacity.cgroup_version.is_empty() { capacity.limits_unavailable } else { capacity.cgroup_version };
    (host.resources.unwrap(), limits)
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tenants_hibernate_and_the_next_request_wakes_them() {
    let db = sqlite_db();
    let dir = db.data_dir();
    let tenants_dir = dir.join("tenants");
    let (cp, mut agent, fake, agent_args) =
        host(&db, &["--hibernation-check-interval", "300ms", "--wake-timeout", "30s"]).await;
    set_plan(&db, "free", "hibernate_after_secs = 4").await;

    let mut client = TenantServiceClient::new(cp.channel().await);
    let (alice, carol, dave) = (Cred::shared("alice"), Cred::shared("carol"), Cred::shared("dave"));
    for (cred, plan) in [(&alice, "free"), (&carol, "pro"), (&dave, "free")] {
        let request = CreateTenantRequest { plan: plan.into(), ..Default::default() };
        client.create_tenant(cred.request(request)).await.unwrap();
    }
    let a = running(&mut client, &alice, "").await;
    let _c = running(&mut client, &carol, "").await;
    let d = running(&mut client, &dave, "").await;
    // Dave has a channel (what SetChannel writes; the stand-in's `config
    // set` writes no file): his gateway must stay up.
    std::fs::write(
        tenants_dir.join(&d.slug).join("state/openclaw.json"),
        r#"{"channels": {"telegram": {"enabled": true, "dmPolicy": "pairing"}}}"#,
    )
    .unwrap();
    let first_pid = gateway_pid(&tenants_dir, &a.slug).expect("alice's gateway runs");

    // Alice idles past her plan's 4 s: her gateway stops, her process is gone.
    let hibernated = tenant_in(&mut client, &alice, TenantStatus::Hibernated, Duration::from_secs(60)).await;
    assert!(hibernated.status_message.contains("next request wakes it"), "{}", hibernated.status_message);
    eventually(Duration::from_secs(20), "alice's gateway process gone", || async move { !alive(first_pid) }).await;
    assert_eq!(gateway_pid(&tenants_dir, &a.slug), None);
    // A config change while she sleeps is applied without waking her.
    let mut config = ConfigServiceClient::new(cp.channel().await);
    let set = SetModelRequest {
        tenant_id: a.id.clone(),
        provider: "anthropic".into(),
        model: "claude-sonnet-4".into(),
        api_key: Some("sk-ant-test-0123456789".into()),
        base_url: None,
        expected_generation: None,
        ..Default::default()
    };
    config.set_model(alice.request(set)).await.unwrap();
    let current =
        config.get_config(alice.request(GetConfigRequest { tenant_id: a.id.clone() })).await.unwrap().into_inner();
    let current = current.config.unwrap();
    assert_eq!(current.applied_generation, current.desired_generation, "applied while asleep");
    assert_eq!(gateway_pid(&tenants_dir, &a.slug), None, "still asleep");
    // Carol (an hour's idle period) and dave (a channel) keep running, well
    // past alice's idle period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (cred, who) in [(&carol, "carol"), (&dave, "dave")] {
        let request = cred.request(clawplane_proto::v1::GetMyTenantRequest::default());
        let tenant = client.get_my_tenant(request).await.unwrap().into_inner().tenant.unwrap();
        assert_eq!(tenant.status, TenantStatus::Running as i32, "{who}: {}", tenant.status_message);
    }
    eventually(Duration::from_secs(20), "GetHost counts one hibernated, two running", || {
        let (cp, host_id) = (&cp, a.host_id.clone());
        async move {
            let (r, _) = resources(cp, &host_id).await;
            r.hibernated_tenants == 1 && r.running_tenants == 2
        }
    })
    .await;
    let (host_resources, limits) = resources(&cp, &a.host_id).await;
    assert!(!limits.is_empty(), "the host says how it enforces limits, or why it cannot");
    assert_eq!(host_resources.committed_memory_bytes, (2048 + 4096 + 2048) << 20, "free, pro, free");

    // Through the bridge: a browser navigation while the gateway starts
    // slowly gets the page that retries; an API request is held until the
    // gateway answers, and gets its answer.
    let bridge = BridgeProcess::start(&cp, &dir);
    let alice_jwt = hs256(claims("alice", &[]));
    let auth = bearer(&alice_jwt);
    let a_host = format!("{}.claw.test", a.slug);
    std::fs::write(fake.join("gateway-delay-secs"), "8").unwrap();
    let (status, head, body) =
        http(bridge.port, &a_host, "/", &[("Authorization", &auth), ("Accept", "text/html,*/*")]).await;
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(body.contains("Starting your OpenClaw"), "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 2"), "{head}");
    let (status, _, body) = http(bridge.port, &a_host, "/healthz", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "the held request gets the gateway's answer: {body}");
    std::fs::remove_file(fake.join("gateway-delay-secs")).unwrap();
    let woken = tenant_in(&mut client, &alice, TenantStatus::Running, Duration::from_secs(30)).await;
    assert!(woken.status_message.contains("gateway ready"), "{}", woken.status_message);
    let second_pid = gateway_pid(&tenants_dir, &a.slug).expect("a new gateway");
    assert_ne!(second_pid, first_pid);

    // The agent restarts while alice sleeps: she stays hibernated, and the
    // next request still wakes her.
    asleep_again(&agent, &tenants_dir, &a.id, &a.slug).await;
    agent.kill9();
    let refs: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    agent.run_with(&refs);
    eventually(Duration::from_secs(30), "the agent back", || {
        let (cp, host_id) = (&cp, a.host_id.clone());
        async move { cp.host_status(&host_id).await.is_some_and(|(_, connected)| connected) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gateway_pid(&tenants_dir, &a.slug), None, "the restarted agent leaves her asleep");
    let request = alice.request(clawplane_proto::v1::GetMyTenantRequest::default());
    let tenant = client.get_my_tenant(request).await.unwrap().into_inner().tenant.unwrap();
    assert_eq!(tenant.status, TenantStatus::Hibernated as i32, "{}", tenant.status_message);
    let mut woke = (0, String::new());
    for _ in 0..100 {
        // The bridge's route to the host's new proxy address may take a moment.
        let (status, _, body) = http(bridge.port, &a_host, "/healthz", &[("Authorization", &auth)]).await;
        woke = (status, body);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(woke.0, 200, "woken after the agent's restart: {}", woke.1);

    // A gateway that crashes while waking: the held request gets 503 and
    // the reason, not a hang until the wake timeout.
    asleep_again(&agent, &tenants_dir, &a.id, &a.slug).await;
    std::fs::write(fake.join("gateway-exit"), "").unwrap();
    let (status, head, body) = http(bridge.port, &a_host, "/healthz", &[("Authorization", &auth)]).await;
    assert_eq!(status, 503, "{head}\n{body}");
    assert!(body.contains("could not start"), "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    eventually(Duration::from_secs(30), "alice RUNNING, restarting, with the crash's reason", || {
        let (mut client, alice) = (client.clone(), alice.clone());
        async move {
            let request = alice.request(clawplane_proto::v1::GetMyTenantRequest::default());
            let tenant = client.get_my_tenant(request).await.unwrap().into_inner().tenant.unwrap();
            tenant.status == TenantStatus::Running as i32 && tenant.status_message.contains("crashed at start")
        }
    })
    .await;
    std::fs::remove_file(fake.join("gateway-exit")).unwrap();
    eventually(Duration::from_secs(60), "alice's gateway back after its backoff", || {
        let tenants_dir = tenants_dir.clone();
        let slug = a.slug.clone();
        async move { gateway_pid(&tenants_dir, &slug).is_some_and(alive) }
    })
    .await;
    drop(bridge);
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_admits_a_tenant_only_where_its_plans_memory_fits() {
    let db = sqlite_db();
    let (cp, _agent, _fake, _) = host(&db, &[]).await;
    // A plan taking 60% of this host's memory: one tenant fits, two do not.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    let plan_mib = total_kib / 1024 * 6 / 10;
    set_plan(&db, "free", &format!("memory_limit_mib = {plan_mib}, memory_soft_limit_mib = NULL")).await;

    let mut client = TenantServiceClient::new(cp.channel().await);
    let (alice, bob) = (Cred::shared("alice"), Cred::shared("bob"));
    for cred in [&alice, &bob] {
        let request = CreateTenantRequest { plan: "free".into(), ..Default::default() };
        client.create_tenant(cred.request(request)).await.unwrap();
    }
    let a = running(&mut client, &alice, "").await;
    let waiting = tenant_in(&mut client, &bob, TenantStatus::Pending, Duration::from_secs(30)).await;
    assert!(
        waiting.status_message.contains("needs") && waiting.status_message.contains("uncommitted"),
        "{}",
        waiting.status_message
    );
    let (host_resources, _) = resources(&cp, &a.host_id).await;
    assert_eq!(host_resources.committed_memory_bytes, plan_mib << 20);

    // Alice leaves: bob's tenant fits now and is placed.
    client.delete_tenant(alice.request(DeleteTenantRequest { tenant_id: a.id.clone() })).await.unwrap();
    let b = running(&mut client, &bob, "").await;
    assert_eq!(b.host_id, a.host_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_cannot_enforce_limits_says_so_and_gets_no_limited_tenant() {
    let db = sqlite_db();
    // A cgroup parent that cannot be used stands for a host without cgroups.
    let (cp, agent, _fake, _) = host(&db, &["--cgroup-parent", "../elsewhere"]).await;
    eventually(Duration::from_secs(30), "the host connected", || {
        let (cp, host_id) = (&cp, agent.host_id());
        async move { cp.host_status(&host_id).await.is_some_and(|(_, connected)| connected) }
    })
    .await;
    let (_, reason) = resources(&cp, &agent.host_id()).await;
    assert!(reason.contains("cgroup parent"), "GetHost says why: {reason}");

    let mut client = TenantServiceClient::new(cp.channel().await);
    let (alice, bob) = (Cred::shared("alice"), Cred::shared("bob"));
    let request = CreateTenantRequest { plan: "free".into(), ..Default::default() };
    client.create_tenant(alice.request(request)).await.unwrap();
    let waiting = tenant_in(&mut client, &alice, TenantStatus::Pending, Duration::from_secs(30)).await;
    assert!(waiting.status_message.contains("can enforce them"), "{}", waiting.status_message);
    // A plan without limits runs there.
    set_plan(&db, "pro", "memory_limit_mib = NULL, memory_soft_limit_mib = NULL, cpu_millis = NULL, pids_limit = NULL")
        .await;
    let request = CreateTenantRequest { plan: "pro".into(), ..Default::default() };
    client.create_tenant(bob.request(request)).await.unwrap();
    running(&mut client, &bob, "").await;
    let request = alice.request(clawplane_proto::v1::GetMyTenantRequest::default());
    let tenant = client.get_my_tenant(request).await.unwrap().into_inner().tenant.unwrap();
    assert_eq!(tenant.status, TenantStatus::Pending as i32, "still waiting: {}", tenant.status_message);
}
