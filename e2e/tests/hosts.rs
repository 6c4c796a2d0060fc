//! Hosts end to end with real processes: join tokens, enrollment, the mTLS
//! command stream, removal, restarts and certificate renewal.
mod common;

use std::time::{Duration, SystemTime};

use clawplane::store::{CommandState, Store};
use clawplane_proto::v1::agent_service_client::AgentServiceClient;
use clawplane_proto::v1::{
    agent_message, command_result, control_message, AgentHello, AgentMessage, CommandAck, CommandOutcome,
    CommandResult, GetHostRequest, HostStatus, PingHostRequest, PingResult, RemoveHostRequest, RevokeJoinTokenRequest,
};
use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn arg_after<'a>(command: &'a str, flag: &str) -> &'a str {
    let mut words = command.split_whitespace();
    while let Some(word) = words.next() {
        if word == flag {
            return words.next().unwrap();
        }
    }
    panic!("{flag} not in {command}");
}

/// An agent joined with a fresh token, running, and seen online.
async fn online_agent(cp: &ControlPlane, dir: &std::path::Path) -> (Agent, String) {
    let (token, pin) = cp.join_token(600, 1).await;
    let mut agent = Agent::new(dir, "agent");
    assert!(agent.join(&cp.url(), &token, &pin).status.success());
    let host_id = agent.host_id();
    agent.run();
    eventually(Duration::from_secs(20), "online", || online(cp, &host_id)).await;
    (agent, host_id)
}

async fn online(cp: &ControlPlane, host_id: &str) -> bool {
    cp.host_status(host_id).await == Some((HostStatus::Online, true))
}

each_backend!(
    #[tokio::test(flavor = "multi_thread")]
    operator_adds_pings_and_removes_a_host
);
async fn operator_adds_pings_and_removes_a_host(db: TestDb) {
    let cp = ControlPlane::start(&db, "");
    // The operator's path: token create prints the join command.
    let created = cp.operator(&["token", "create", "--ttl", "10m", "--label", "zone=a"]);
    assert!(created.status.success(), "{}", text(&created));
    let join_command = String::from_utf8(created.stdout).unwrap();
    assert!(join_command.starts_with("clawplane-agent join --control-plane https://127.0.0.1:"), "{join_command}");
    let (token, pin) = (arg_after(&join_command, "--token"), arg_after(&join_command, "--ca-pin"));
    let shown = std::process::Command::new(bin("clawplane"))
        .args(["ca", "show", "--data-dir"])
        .arg(&cp.data_dir)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), pin, "ca show prints the same pin");

    let mut agent = Agent::new(&db.data_dir(), "agent");
    let joined = agent.join(&cp.url(), token, pin);
    assert!(joined.status.success(), "{}", text(&joined));
    let host_id = agent.host_id();
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(agent.state_dir.join("key.pem")).unwrap().permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600, "private key is owner-only");

    agent.run();
    eventually(Duration::from_secs(20), "host online", || online(&cp, &host_id)).await;
    let host = cp
        .hosts()
        .await
        .get_host(cp.admin(GetHostRequest { host_id: host_id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .host
        .unwrap();
    let inventory = host.inventory.unwrap();
    assert_eq!(inventory.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(inventory.capacity.unwrap().cpu_cores >= 1);
    assert_eq!(host.labels.get("zone").map(String::as_str), Some("a"), "token labels land on the host");
    assert!(host.certificate_expires_at.is_some());

    let listed = cp.operator(&["hosts", "list"]);
    let table = text(&listed);
    assert!(table.lines().any(|l| l.contains(&host_id) && l.contains("online") && l.contains("yes")), "{table}");
    let pinged = cp.operator(&["hosts", "ping", &host_id]);
    assert!(pinged.status.success() && text(&pinged).contains("pong from"), "{}", text(&pinged));

    // Removal: the open stream closes within seconds and reconnecting is refused.
    cp.hosts().await.remove_host(cp.admin(RemoveHostRequest { host_id: host_id.clone(), force: false })).await.unwrap();
    let exit = agent.wait_exit(Duration::from_secs(10)).expect("agent stops after removal");
    assert!(!exit.success());
    assert!(agent.log().contains("removed this host"), "{}", agent.log());
    agent.run();
    let exit = agent.wait_exit(Duration::from_secs(10)).expect("a removed host cannot reconnect");
    assert!(!exit.success());
    assert!(agent.log().matches("host_revoked").count() >= 2, "{}", agent.log());
    assert_eq!(cp.host_status(&host_id).await, Some((HostStatus::Removed, false)));
    drop(cp);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_join_failure_says_what_failed() {
    let db = sqlite_db();
    let cp = ControlPlane::start(&db, "");
    let dir = db.data_dir();
    let url = cp.url();
    let (valid, pin) = cp.join_token(600, 1).await;

    let expect_failure = |name: &str, url: &str, token: &str, pin: &str, message: &str| {
        let output = Agent::new(&dir, name).join(url, token, pin);
        assert!(!output.status.success(), "{name}: joined unexpectedly");
        assert!(text(&output).contains(message), "{name}: {:?} lacks {message:?}", text(&output));
    };
    let unknown = format!("abcdefabcdef.{}", "0".repeat(64));
    expect_failure("unknown", &url, &unknown, &pin, "token_unknown: join token not recognised");
    let wrong_secret = format!("{}.{}", valid.split('.').next().unwrap(), "1".repeat(64));
    expect_failure("wrong-secret", &url, &wrong_secret, &pin, "token_unknown");
    expect_failure("malformed", &url, "not-a-token", &pin, "malformed join token");
    let other_pin = format!("sha256:{}", "0".repeat(64));
    expect_failure("pin-mismatch", &url, &valid, &other_pin, "CA pin mismatch");
    expect_failure("bad-pin", &url, &valid, "md5:abc", "CA pin must look like sha256:");
    let closed = format!("https://127.0.0.1:{}", free_port());
    expect_failure("unreachable", &closed, &valid, &pin, "cannot reach the control plane");

    let (short, _) = cp.join_token(1, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    expect_failure("expired", &url, &short, &pin, "token_expired");

    let (revoked, _) = cp.join_token(600, 1).await;
    let id = revoked.split('.').next().unwrap().to_string();
    cp.hosts().await.revoke_join_token(cp.admin(RevokeJoinTokenRequest { token_id: id })).await.unwrap();
    expect_failure("revoked", &url, &revoked, &pin, "token_revoked");

    // None of the failures above spent the valid token.
    let first = Agent::new(&dir, "first");
    let output = first.join(&url, &valid, &pin);
    assert!(output.status.success(), "{}", text(&output));
    expect_failure("used", &url, &valid, &pin, "token_used");
    let again = first.join(&url, &valid, &pin);
    assert!(text(&again).contains("already joined"), "{}", text(&again));

    // Two hosts racing for one single-use token: exactly one wins.
    for round in 0..3 {
        let (token, _) = cp.join_token(600, 1).await;
        let racers: Vec<_> = (0..2)
            .map(|i| {
                let (dir, url, token, pin) = (dir.clone(), url.clone(), token.clone(), pin.clone());
                std::thread::spawn(move || Agent::new(&dir, &format!("race-{round}-{i}")).join(&url, &token, &pin))
            })
            .collect();
        let outputs: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(outputs.iter().filter(|o| o.status.success()).count(), 1, "round {round}");
        assert!(outputs.iter().any(|o| text(o).contains("token_used")), "round {round}");
    }
    drop(cp);
}

/// A client certificate + key, signed by `issuer`.
fn client_cert(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    cn: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    (params.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

/// Opens Connect with a given identity and sends a hello; returns the
/// outbound sender and the inbound stream, or the error.
async fn connect_as(
    url: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(mpsc::Sender<AgentMessage>, tonic::Streaming<clawplane_proto::v1::ControlMessage>), String> {
    let identity = clawplane_tls::ReloadableIdentity::from_pem(cert_pem, key_pem).unwrap();
    let config = clawplane_tls::mtls_client_config(ca_pem, identity).unwrap();
    let channel = clawplane_tls::channel(url, config).unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(AgentMessage { kind: Some(agent_message::Kind::Hello(AgentHello::default())) }).await.unwrap();
    let mut inbound = AgentServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?} {}", s.code(), s.message()))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(message)) if matches!(message.kind, Some(control_message::Kind::HelloAck(_))) => Ok((tx, inbound)),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_from_elsewhere_cannot_act() {
    let db = sqlite_db();
    let cp = ControlPlane::start(&db, "");
    let dir = db.data_dir();
    let (token_a, pin) = cp.join_token(600, 1).await;
    let (token_b, _) = cp.join_token(600, 1).await;
    let (a, b) = (Agent::new(&dir, "a"), Agent::new(&dir, "b"));
    assert!(a.join(&cp.url(), &token_a, &pin).status.success());
    assert!(b.join(&cp.url(), &token_b, &pin).status.success());
    let read = |agent: &Agent, name: &str| std::fs::read_to_string(agent.state_dir.join(name)).unwrap();
    let ca_pem = read(&a, "ca.pem");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);

    // A's own certificate works.
    let (a_tx, _a_in) =
        connect_as(&cp.url(), &ca_pem, &read(&a, "cert.pem"), &read(&a, "key.pem")).await.expect("A connects");

    // Same subject, signed by another CA: refused at the handshake.
    let other_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut other_ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_issuer = rcgen::Issuer::new(other_ca, other_ca_key);
    let (cert, key) = client_cert(&other_issuer, &a.host_id(), now - hour, now + hour);
    assert!(connect_as(&cp.url(), &ca_pem, &cert, &key).await.is_err(), "foreign CA accepted");

    // Our CA, but expired: refused.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(cp.data_dir.join("pki/ca.key")).unwrap()).unwrap();
    let our_issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let (cert, key) = client_cert(&our_issuer, &a.host_id(), now - hour * 2, now - hour);
    assert!(connect_as(&cp.url(), &ca_pem, &cert, &key).await.is_err(), "expired certificate accepted");

    // Our CA, valid, naming host A, but never issued by the control plane: refused.
    let (cert, key) = client_cert(&our_issuer, &a.host_id(), now - hour, now + hour);
    let refused = connect_as(&cp.url(), &ca_pem, &cert, &key).await.unwrap_err();
    assert!(refused.contains("not one this control plane issued"), "{refused}");

    // A tries to answer a command queued for B: nothing changes for B.
    let queued = cp
        .hosts()
        .await
        .ping_host(cp.admin(PingHostRequest { host_id: b.host_id(), no_wait: true, ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .command_id;
    let forged = CommandResult {
        command_id: queued.clone(),
        outcome: CommandOutcome::Succeeded as i32,
        payload: Some(command_result::Payload::Ping(PingResult::default())),
        ..Default::default()
    };
    a_tx.send(AgentMessage { kind: Some(agent_message::Kind::CommandAck(CommandAck { command_id: queued.clone() })) })
        .await
        .unwrap();
    a_tx.send(AgentMessage { kind: Some(agent_message::Kind::CommandResult(forged)) }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store = Store::connect(&db.url, 1).await.unwrap();
    let row = store.command(&queued).await.unwrap().unwrap();
    assert_eq!(row.state, CommandState::Pending, "B's command is untouched by A");
    assert_eq!(row.host_id, b.host_id());
    store.close().await;
    drop(cp);
}

async fn queue_pings(cp: &ControlPlane, host_id: &str, n: usize) -> Vec<String> {
    let mut client = cp.hosts().await;
    let mut ids = Vec::new();
    for _ in 0..n {
        let request = cp.admin(PingHostRequest { host_id: host_id.to_string(), no_wait: true, ..Default::default() });
        ids.push(client.ping_host(request).await.unwrap().into_inner().command_id);
    }
    ids
}

each_backend!(
    #[tokio::test(flavor = "multi_thread")]
    queued_commands_survive_kill9_and_run_once
);
async fn queued_commands_survive_kill9_and_run_once(db: TestDb) {
    let mut cp = ControlPlane::start(&db, "");
    let (mut agent, host_id) = online_agent(&cp, &db.data_dir()).await;

    // Queued while the agent is down, then the control plane dies hard.
    agent.kill9();
    let mut ids = queue_pings(&cp, &host_id, 10).await;
    cp.kill9();
    cp.restart();
    // Queued and being delivered while the control plane dies again.
    agent.run();
    eventually(Duration::from_secs(20), "online again", || online(&cp, &host_id)).await;
    ids.extend(queue_pings(&cp, &host_id, 10).await);
    cp.restart();

    let store = Store::connect(&db.url, 2).await.unwrap();
    eventually(Duration::from_secs(40), "every queued command answered", || {
        let (store, ids) = (store.clone(), ids.clone());
        async move {
            for id in &ids {
                match store.command(id).await {
                    Ok(Some(row)) if row.state == CommandState::Succeeded => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await;
    let executed = agent.executed();
    for id in &ids {
        assert_eq!(
            executed.iter().filter(|e| *e == id).count(),
            1,
            "{}: {id} executed exactly once; log:\n{}",
            db.backend,
            agent.log()
        );
    }
    store.close().await;
    drop(cp);
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_keeps_the_stream_alive() {
    let db = sqlite_db();
    let cp = ControlPlane::start(&db, "cert_ttl = \"4s\"\n");
    let (agent, host_id) = online_agent(&cp, &db.data_dir()).await;
    eventually(Duration::from_secs(40), "three renewals", || {
        let renewed = agent.log().matches("certificate renewed").count();
        async move { renewed >= 3 }
    })
    .await;
    // Still the first stream, and it still carries commands; well past the
    // first certificate's 4 seconds.
    assert_eq!(agent.log().matches("connected to the control plane").count(), 1, "{}", agent.log());
    assert!(online(&cp, &host_id).await);
    let pong = cp
        .hosts()
        .await
        .ping_host(cp.admin(PingHostRequest { host_id, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert!(pong.answered);
    drop(cp);
}

each_backend!(
    #[tokio::test(flavor = "multi_thread")]
    a_stopping_control_plane_tells_its_agents_and_exits
);
/// SIGTERM: every agent stream is closed with SHUTTING_DOWN (the agent
/// retries, it does not stop as it would when revoked), every background
/// task ends, the store closes and the process exits 0; started again, the
/// same agent comes back on its own.
async fn a_stopping_control_plane_tells_its_agents_and_exits(db: TestDb) {
    let mut cp = ControlPlane::start(&db, "");
    let (mut agent, host_id) = online_agent(&cp, &db.data_dir()).await;

    let exit = cp.terminate(Duration::from_secs(60)).expect("the control plane exits after SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", cp.log());
    assert!(!cp.log().contains("still running at shutdown"), "every task ended in time:\n{}", cp.log());
    eventually(Duration::from_secs(10), "the agent hears why", || {
        let told = agent.log().contains("the control plane is shutting down");
        async move { told }
    })
    .await;
    assert!(agent.wait_exit(Duration::from_millis(500)).is_none(), "the agent keeps running:\n{}", agent.log());
    assert!(!agent.log().contains("removed this host"), "{}", agent.log());

    cp.start_again();
    eventually(Duration::from_secs(30), "back online", || online(&cp, &host_id)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_honours_labels_and_waits_for_a_matching_host() {
    use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
    use clawplane_proto::v1::{CreateTenantRequest, GetTenantRequest, TenantStatus};
    let db = sqlite_db();
    let cp = ControlPlane::start(&db, "");
    // These agents run no OpenClaw and so enforce no limits: a plan without
    // any, so only the labels decide (limits: density.rs).
    set_plan(&db, "pro", "memory_limit_mib = NULL, memory_soft_limit_mib = NULL, cpu_millis = NULL, pids_limit = NULL")
        .await;
    let mut tenants = TenantServiceClient::new(cp.channel().await);
    let carol = auth::Cred::Shared { secret: auth::SHARED_SECRET.into(), user: "carol".into(), teams: "crew".into() };
    let mut labels = std::collections::HashMap::new();
    labels.insert("zone".to_string(), "eu".to_string());
    let created = tenants
        .create_tenant(carol.request(CreateTenantRequest {
            plan: "pro".into(),
            team_id: "crew".into(),
            placement_labels: labels.clone(),
            agent_ids: vec!["planner".into(), "writer".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(created.agent_ids, vec!["crew", "planner", "writer"]);
    assert_eq!(created.placement_labels, labels);

    // A host without the label joins: the tenant keeps waiting, and says why.
    let join = |name: &str, label: &str| {
        let (cp, dir, name, label) = (&cp, db.data_dir(), name.to_string(), label.to_string());
        async move {
            let response = cp
                .hosts()
                .await
                .create_join_token(cp.admin(clawplane_proto::v1::CreateJoinTokenRequest {
                    labels: [("zone".to_string(), label)].into_iter().collect(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            let mut agent = Agent::new(&dir, &name);
            assert!(agent.join(&cp.url(), &response.token, &response.ca_pin).status.success());
            agent.run();
            agent
        }
    };
    let us = join("us-host", "us").await;
    let us_id = us.host_id();
    eventually(Duration::from_secs(20), "us host online", || online(&cp, &us_id)).await;
    eventually(Duration::from_secs(20), "pending reason names the labels", || {
        let mut tenants = tenants.clone();
        let request = carol.request(GetTenantRequest { tenant_id: created.id.clone() });
        async move {
            let t = tenants.get_tenant(request).await.unwrap().into_inner().tenant.unwrap();
            t.status == TenantStatus::Pending as i32 && t.status_message.contains("labels zone=eu")
        }
    })
    .await;

    // The matching host joins: the tenant is placed there at once. This agent
    // has no OpenClaw configured, so provisioning fails with that reason,
    // which proves the command reached the right host.
    let eu = join("eu-host", "eu").await;
    eventually(Duration::from_secs(30), "placed on the eu host", || {
        let mut tenants = tenants.clone();
        let request = carol.request(GetTenantRequest { tenant_id: created.id.clone() });
        let eu_id = eu.host_id();
        async move {
            let t = tenants.get_tenant(request).await.unwrap().into_inner().tenant.unwrap();
            t.host_id == eu_id
                && t.status == TenantStatus::Failed as i32
                && t.status_message.contains("OpenClaw is not configured")
        }
    })
    .await;
    drop(cp);
}

/// A call that waits on a host answers by its deadline, with an error that
/// says the command stays queued: the server's own deadline when the client
/// sets none, the client's `grpc-timeout` when it does. A malformed
/// `grpc-timeout` is refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_waiting_on_a_silent_host_answers_by_its_deadline() {
    let db = sqlite_db();
    let cp = ControlPlane::start(&db, "\n[limits]\nrequest_timeout = \"3s\"\n");
    let (token, pin) = cp.join_token(600, 1).await;
    // Joined but never run: the host exists and never answers.
    let agent = Agent::new(&db.data_dir(), "agent");
    assert!(agent.join(&cp.url(), &token, &pin).status.success());
    let host_id = agent.host_id();
    let minute = prost_types::Duration { seconds: 60, nanos: 0 };

    let cases: &[(&str, Option<&str>, tonic::Code, &str)] = &[
        (
            "no grpc-timeout: the server's 3 s",
            None,
            tonic::Code::DeadlineExceeded,
            "a longer grpc-timeout waits longer",
        ),
        ("the client's 2 s", Some("2S"), tonic::Code::DeadlineExceeded, "stays queued as command"),
        ("the client may ask for more than the default", Some("5000m"), tonic::Code::DeadlineExceeded, "within 4s"),
        ("malformed", Some("soon"), tonic::Code::InvalidArgument, "grpc-timeout header: \"soon\""),
        ("no unit", Some("10"), tonic::Code::InvalidArgument, "grpc-timeout header"),
    ];
    let mut client = cp.hosts().await;
    for (case, header, code, says) in cases {
        let mut request =
            cp.admin(PingHostRequest { host_id: host_id.clone(), timeout: Some(minute), ..Default::default() });
        if let Some(header) = header {
            request.metadata_mut().insert("grpc-timeout", header.parse().unwrap());
        }
        let started = std::time::Instant::now();
        let status = client.ping_host(request).await.expect_err(case);
        assert_eq!(status.code(), *code, "{case}: {status:?}");
        assert!(status.message().contains(says), "{case}: {}", status.message());
        assert!(started.elapsed() < Duration::from_secs(30), "{case}: waited the ping's minute");
    }
    drop(cp);
}

/// SQLite runs one control plane: a second `serve` on the same database is
/// refused at start, naming the one that serves it; PostgreSQL takes
/// several (the scale-out path).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_control_plane_on_one_sqlite_database_is_refused() {
    let db = sqlite_db();
    let cp = ControlPlane::start(&db, "");
    let second_dir = db.data_dir().join("second");
    std::fs::create_dir_all(&second_dir).unwrap();
    let mut second = std::process::Command::new(bin("clawplane"))
        .arg("serve")
        .arg("--data-dir")
        .arg(&second_dir)
        .args(["--database-url", &db.url])
        .args(["--api-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--agent-listen", &format!("127.0.0.1:{}", free_port())])
        .env("CLAWPLANE_SHARED_SECRET", auth::SHARED_SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = second.kill();
            panic!("the second control plane kept running on the same SQLite database");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("is already served by another clawplane (pid "), "{stderr}");
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    // The first one serves on.
    assert!(cp.hosts().await.list_hosts(cp.admin(Default::default())).await.is_ok());
}
