//! Control plane replicas on one PostgreSQL database sharing one CA: an
//! agent that fails over from one to the other when the one it is
//! connected to dies, and every call working through every replica against
//! hosts whose streams the others hold.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use clawplane_proto::v1::config_service_client::ConfigServiceClient;
use clawplane_proto::v1::session_service_client::SessionServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{
    send_message_response, CreateTenantRequest, DeleteTenantRequest, GetConfigRequest, GetHostRequest, HostStatus,
    PingHostRequest, RemoveHostRequest, RestartTenantRequest, SendMessageRequest, SetToolsRequest,
    StreamTenantLogsRequest,
};
use clawplane_test_kit::auth::Cred;
use clawplane_tls::files::{create_private_dir, write_private};
use common::*;

/// Local to this test's replicas on 127.0.0.1.
const ADMIN_TOKEN: &str = "failover-test-admin-token-0123456789";

/// What replicas on one database must share (README, "Several
/// replicas"): a CA through `[pki]` (`clawplane` has no command to make
/// one), a secrets key, and the admin token, written where each replica's
/// data directory keeps it. Returns the TOML both are given.
fn cluster(dir: &Path, replicas: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Clawplane test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (SystemTime::now() - Duration::from_secs(60)).into();
    params.not_after = (SystemTime::now() + Duration::from_secs(24 * 3600)).into();
    let cert = params.self_signed(&key).unwrap();
    let shared = dir.join("shared");
    create_private_dir(&shared).unwrap();
    let (ca_cert, ca_key, secrets_key) = (shared.join("ca.pem"), shared.join("ca.key"), shared.join("secrets.key"));
    std::fs::write(&ca_cert, cert.pem()).unwrap();
    write_private(&ca_key, key.serialize_pem().as_bytes()).unwrap();
    let made = Command::new(bin("clawplane")).args(["secrets", "new-key", "--out"]).arg(&secrets_key).output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
    for replica in replicas {
        create_private_dir(&dir.join(replica)).unwrap();
        write_private(&dir.join(replica).join("admin-token"), ADMIN_TOKEN.as_bytes()).unwrap();
    }
    format!("[pki]\nca_cert_file = {ca_cert:?}\nca_key_file = {ca_key:?}\n[secrets]\nkey_file = {secrets_key:?}\n")
}

async fn connected_to(cp: &ControlPlane, host_id: &str) -> bool {
    cp.host_status(host_id).await == Some((HostStatus::Online, true))
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_fails_over_to_the_other_replica_when_its_replica_dies() {
    let Some(db) = postgres_db().await else { return };
    let shared = cluster(&db.data_dir(), &["cp-a", "cp-b"]);
    // Started one after the other: both migrate the same database.
    let mut first = ControlPlane::start_replica(&db, "cp-a", &shared);
    let second = ControlPlane::start_replica(&db, "cp-b", &shared);
    let (token, pin) = first.join_token(600, 1).await;
    let (_, second_pin) = second.join_token(600, 1).await;
    assert_eq!(pin, second_pin, "both replicas serve the one CA");

    // Joined with both (comma-separated); `run` uses what join stored.
    let mut agent = Agent::new(&db.data_dir(), "agent");
    let joined = agent.join(&format!("{},{}", first.url(), second.url()), &token, &pin);
    assert!(joined.status.success(), "{}", text(&joined));
    let identity = std::fs::read_to_string(agent.state_dir.join("identity.json")).unwrap();
    assert!(identity.contains(&first.url()) && identity.contains(&second.url()), "{identity}");
    let host_id = agent.host_id();
    agent.run();
    eventually(Duration::from_secs(30), "connected to the first replica", || connected_to(&first, &host_id)).await;
    assert!(connected_to(&second, &host_id).await, "the other replica says the same");

    first.kill9();
    let killed = Instant::now();
    eventually(Duration::from_secs(60), "connected to the second replica", || connected_to(&second, &host_id)).await;
    let failover = killed.elapsed();

    // A command through the surviving replica is answered by the host.
    let ping = second
        .hosts()
        .await
        .ping_host(second.admin(PingHostRequest { host_id: host_id.clone(), ..Default::default() }))
        .await
        .unwrap_or_else(|status| panic!("PingHost through the second replica: {status:?}\n{}", agent.log()))
        .into_inner();
    assert!(ping.answered, "the host answered the ping: {ping:?}");
    let answered = killed.elapsed();

    let log = agent.log();
    let switches: Vec<&str> = log.lines().filter(|line| line.contains("switching to the next")).collect();
    assert_eq!(switches.len(), 1, "one switch, logged once:\n{log}");
    assert!(switches[0].contains(&first.url()) && switches[0].contains(&second.url()), "{}", switches[0]);
    eprintln!(
        "failover: connected to the second replica {failover:?} after the kill; ping answered after {answered:?}"
    );
    drop(agent);
    drop(second);
}

/// Runs an agent on the stand-in OpenClaw, with its own tenants and ports.
fn run_on_fake(agent: &mut Agent, dir: &Path, name: &str) {
    let fake = fake_openclaw(dir).join("openclaw").display().to_string();
    let tenants = dir.join(format!("{name}-tenants")).display().to_string();
    let base_port = free_port().to_string();
    agent.run_with(&[
        "--openclaw-bin",
        &fake,
        "--tenants-dir",
        &tenants,
        "--no-tenant-users",
        "--gateway-base-port",
        &base_port,
        "--proxy-listen",
        "127.0.0.1:0",
    ]);
}

async fn ping_through(cp: &ControlPlane, host_id: &str, wait: Duration) -> Result<bool, tonic::Status> {
    let mut request = cp.admin(PingHostRequest {
        host_id: host_id.to_string(),
        timeout: Some(prost_types::Duration { seconds: wait.as_secs() as i64, nanos: 0 }),
        ..Default::default()
    });
    request.set_timeout(wait + Duration::from_secs(10));
    Ok(cp.hosts().await.ping_host(request).await?.into_inner().answered)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_works_through_every_replica_against_hosts_the_others_hold() {
    let Some(db) = postgres_db().await else { return };
    let dir = db.data_dir();
    let names = ["cp-a", "cp-b", "cp-c"];
    let shared = cluster(&dir, &names);
    let mut replicas: Vec<ControlPlane> =
        names.iter().map(|name| ControlPlane::start_replica(&db, name, &shared)).collect();
    let urls: Vec<String> = replicas.iter().map(ControlPlane::url).collect();
    let (token, pin) = replicas[0].join_token(600, 2).await;

    // Host one prefers replica a, host two replica b; c holds no stream.
    let mut one = Agent::new(&dir, "one");
    let mut two = Agent::new(&dir, "two");
    for (agent, order) in [(&one, [0, 1, 2]), (&two, [1, 2, 0])] {
        let list = order.map(|i| urls[i].clone()).join(",");
        let joined = agent.join(&list, &token, &pin);
        assert!(joined.status.success(), "{}", text(&joined));
    }
    run_on_fake(&mut one, &dir, "one");
    run_on_fake(&mut two, &dir, "two");
    let (host_one, host_two) = (one.host_id(), two.host_id());
    for cp in &replicas {
        for host in [&host_one, &host_two] {
            eventually(Duration::from_secs(60), "every replica says both hosts are connected", || {
                connected_to(cp, host)
            })
            .await;
        }
    }

    // Commands through every replica, each against a host it holds and
    // hosts the others hold.
    for (cp, name) in replicas.iter().zip(names) {
        for host in [&host_one, &host_two] {
            let started = Instant::now();
            let answered = ping_through(cp, host, Duration::from_secs(30)).await;
            assert!(matches!(answered, Ok(true)), "PingHost of {host} through {name}: {answered:?}");
            eprintln!("ping of {host} through {name}: {:?}", started.elapsed());
        }
    }

    // A tenant created through c, which holds no stream, is placed at once
    // and runs; restarts, logs and a turn work through every replica.
    let alice = Cred::shared("alice");
    let mut tenants_c = TenantServiceClient::new(replicas[2].channel().await);
    let request = CreateTenantRequest { plan: "free".into(), ..Default::default() };
    tenants_c.create_tenant(alice.request(request)).await.unwrap();
    let tenant = running(&mut tenants_c, &alice, "").await;
    // What the host's gateways use reads the same through every replica.
    for cp in &replicas {
        eventually(Duration::from_secs(60), "every replica counts the running gateway", || async {
            let host = cp.hosts().await.get_host(cp.admin(GetHostRequest { host_id: tenant.host_id.clone() })).await;
            host.ok().and_then(|h| h.into_inner().host?.resources).is_some_and(|r| r.running_tenants == 1)
        })
        .await;
    }
    for (cp, name) in replicas.iter().zip(names) {
        let mut tenants = TenantServiceClient::new(cp.channel().await);
        let mut restart = alice.request(RestartTenantRequest { tenant_id: tenant.id.clone() });
        restart.set_timeout(Duration::from_secs(120));
        tenants.restart_tenant(restart).await.unwrap_or_else(|status| panic!("restart through {name}: {status:?}"));
        let mut config = ConfigServiceClient::new(cp.channel().await);
        let tools =
            SetToolsRequest { tenant_id: tenant.id.clone(), allow: vec![format!("via-{name}")], ..Default::default() };
        let mut set = alice.request(tools);
        set.set_timeout(Duration::from_secs(120));
        config.set_tools(set).await.unwrap_or_else(|status| panic!("SetTools through {name}: {status:?}"));
        let current = config.get_config(alice.request(GetConfigRequest { tenant_id: tenant.id.clone() })).await;
        let current = current.unwrap().into_inner().config.unwrap();
        assert_eq!(current.applied_generation, current.desired_generation, "applied through {name}");
        let logs = StreamTenantLogsRequest { tenant_id: tenant.id.clone(), tail_lines: 20, follow: false };
        let mut logs = tenants.stream_tenant_logs(alice.request(logs)).await.unwrap().into_inner();
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            while logs.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        })
        .await
        .unwrap_or_else(|_| {
            let logs: Vec<String> = replicas.iter().map(ControlPlane::log).collect();
            panic!("the log tail through {name} ended within 60 s\n{}\n{}", logs.join("\n-----\n"), one.log())
        });
        ended.unwrap_or_else(|status| panic!("the log tail through {name}: {status:?}"));
        let mut sessions = SessionServiceClient::new(cp.channel().await);
        let ask =
            SendMessageRequest { tenant_id: tenant.id.clone(), text: format!("hi via {name}"), ..Default::default() };
        let mut answer = sessions.send_message(alice.request(ask)).await.unwrap().into_inner();
        let mut done = None;
        while let Some(event) = answer.message().await.unwrap() {
            if let Some(send_message_response::Event::Done(turn)) = event.event {
                done = Some(turn.text);
            }
        }
        assert_eq!(done.as_deref(), Some(format!("echo: hi via {name}").as_str()), "a turn through {name}");
    }

    // kill -9 of the replica holding host one, with a log stream relayed
    // from it to c: the host is online through another replica within
    // seconds, a command queued through c meanwhile is answered once, and
    // the log stream ends with an error saying to call again, which works.
    let holder_of_tenant = if tenant.host_id == host_one { 0 } else { 1 };
    let mut tenants_c = TenantServiceClient::new(replicas[2].channel().await);
    let follow = StreamTenantLogsRequest { tenant_id: tenant.id.clone(), tail_lines: 1, follow: true };
    let mut followed = tenants_c.stream_tenant_logs(alice.request(follow.clone())).await.unwrap().into_inner();
    replicas[holder_of_tenant].kill9();
    let killed = Instant::now();
    let moved = if holder_of_tenant == 0 { &host_one } else { &host_two };
    let answered = ping_through(&replicas[2], moved, Duration::from_secs(90)).await;
    assert!(matches!(answered, Ok(true)), "a ping queued through c while its host moves replicas: {answered:?}");
    eprintln!("host {moved} answered through c {:?} after its replica's kill -9", killed.elapsed());
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match followed.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the relayed log stream ended within 60 s of its replica's kill");
    let status = ended.expect("the relayed log stream ended with an error, not as if the log were done");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("call again"), "{status:?}");
    let tail = StreamTenantLogsRequest { follow: false, ..follow };
    let mut again = tenants_c.stream_tenant_logs(alice.request(tail)).await.unwrap().into_inner();
    let reopened = tokio::time::timeout(Duration::from_secs(60), async {
        while again.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    })
    .await
    .expect("the reopened log tail ended within 60 s");
    reopened.expect("the log tail through c, relayed by the host's new replica");
    for agent in [&one, &two] {
        let executed = agent.executed();
        let unique: std::collections::HashSet<&String> = executed.iter().collect();
        assert_eq!(unique.len(), executed.len(), "every command ran once: {executed:?}");
    }

    // RemoveHost through one replica closes the host's streams held by
    // another: the agent stops for good, and every replica says so. A
    // host with a tenant is kept without force.
    let live: Vec<usize> = (0..3).filter(|i| *i != holder_of_tenant).collect();
    let remover = &replicas[live[1]];
    let kept = remover
        .hosts()
        .await
        .remove_host(remover.admin(RemoveHostRequest { host_id: moved.clone(), force: false }))
        .await
        .expect_err("a host with a tenant is kept without force");
    assert_eq!(kept.code(), tonic::Code::FailedPrecondition, "{kept:?}");
    assert!(kept.message().contains("1 tenant") && kept.message().contains("force"), "{kept:?}");
    let mut tenants = TenantServiceClient::new(replicas[live[0]].channel().await);
    tenants.delete_tenant(alice.request(DeleteTenantRequest { tenant_id: tenant.id.clone() })).await.unwrap();
    let (mut moved_agent, mut other_agent) = if holder_of_tenant == 0 { (one, two) } else { (two, one) };
    let other_host = if holder_of_tenant == 0 { &host_two } else { &host_one };
    for (agent, host) in [(&mut moved_agent, moved), (&mut other_agent, other_host)] {
        for _ in 0..2 {
            let removed = remover
                .hosts()
                .await
                .remove_host(remover.admin(RemoveHostRequest { host_id: host.clone(), force: false }))
                .await
                .unwrap_or_else(|status| panic!("RemoveHost of {host}: {status:?}"))
                .into_inner();
            assert_eq!(removed.host.unwrap().status, HostStatus::Removed as i32, "removing a removed host succeeds");
        }
        let stopped = tokio::task::block_in_place(|| agent.wait_exit(Duration::from_secs(30)));
        assert!(stopped.is_some(), "the removed host's agent stopped within 30 s:\n{}", agent.log());
        for i in &live {
            assert_eq!(replicas[*i].host_status(host).await, Some((HostStatus::Removed, false)), "{}", names[*i]);
        }
    }
}
