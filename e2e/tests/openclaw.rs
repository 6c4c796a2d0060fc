//! Tenants on the real OpenClaw 2026.9.6: the control plane places them on
//! a host, the agent gives each its own OS user, 0700 state tree and
//! supervised loopback gateway; restart, logs and delete go through the
//! same command path. Needs `CLAWPLANE_OPENCLAW_BIN` (scripts/test installs
//! OpenClaw and sets it) and root (tenant users).
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clawplane_proto::v1::config_service_client::ConfigServiceClient;
use clawplane_proto::v1::session_service_client::SessionServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::usage_service_client::UsageServiceClient;
use clawplane_proto::v1::{
    CreateTenantRequest, DeleteTenantRequest, GetConfigRequest, GetHostRequest, GetMyTenantRequest, GetOverviewRequest,
    GetUsageRequest, ListMessagesRequest, ListSessionsRequest, MessageRole, RestartTenantRequest, SendMessageRequest,
    SendMessageResponse, SetAgentProfileRequest, SetChannelRequest, SetModelRequest, SetToolsRequest,
    StreamTenantLogsRequest, Tenant, TenantStatus, TurnDone, UsagePeriod,
};
use clawplane_test_kit::auth::Cred;
use common::*;
use tonic::transport::Channel;

/// The fake model server listens on loopback, which model base URLs may
/// reach only when the operator allows it.
const MODELS_ON_LOOPBACK: &str = "[models]\nallowed_cidrs = [\"127.0.0.0/8\"]\n";

fn openclaw_bin() -> Option<PathBuf> {
    match std::env::var("CLAWPLANE_OPENCLAW_BIN") {
        Ok(path) => Some(PathBuf::from(path)),
        Err(_) if std::env::var("CLAWPLANE_REQUIRE_OPENCLAW").as_deref() == Ok("1") => {
            panic!("CLAWPLANE_OPENCLAW_BIN is required (scripts/test installs OpenClaw and sets it)")
        }
        Err(_) => {
            eprintln!("\n!!! SKIPPING real-OpenClaw test: CLAWPLANE_OPENCLAW_BIN is not set (run scripts/test) !!!\n");
            None
        }
    }
}

async fn my_tenant(client: &mut TenantServiceClient<Channel>, cred: &Cred) -> Option<Tenant> {
    client.get_my_tenant(cred.request(GetMyTenantRequest::default())).await.ok()?.into_inner().tenant
}

async fn wait_running(client: &mut TenantServiceClient<Channel>, cred: &Cred) -> Tenant {
    // Sized for 2 loaded cores: the other real-OpenClaw tests start
    // gateways (about 27 CPU-seconds each) at the same time.
    wait_running_on(client, cred, None, 480).await
}

/// [`wait_running`] for up to `limit_s`, and on failure what the host's
/// agent said last.
async fn wait_running_on(
    client: &mut TenantServiceClient<Channel>,
    cred: &Cred,
    agent: Option<&Agent>,
    limit_s: u64,
) -> Tenant {
    let mut last = None;
    for _ in 0..(limit_s * 4) {
        last = my_tenant(client, cred).await;
        match last.as_ref().map(|t| TenantStatus::try_from(t.status).unwrap()) {
            Some(TenantStatus::Running) => return last.unwrap(),
            Some(TenantStatus::Failed) => panic!("provisioning failed: {last:?}"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    let said = agent.map(|agent| agent.log()).unwrap_or_default();
    let said: Vec<&str> = said.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
    panic!("tenant not running within {limit_s} s: {last:?}\nthe agent's last lines:\n{}", said.join("\n"))
}

/// The tenant's log tail through host and control plane (no follow).
async fn log_lines(
    client: &mut TenantServiceClient<Channel>,
    cred: &Cred,
    tenant_id: &str,
    tail_lines: i32,
) -> Vec<String> {
    let request = StreamTenantLogsRequest { tenant_id: tenant_id.to_string(), tail_lines, follow: false };
    let mut logs = client.stream_tenant_logs(cred.request(request)).await.unwrap().into_inner();
    let mut lines = Vec::new();
    while let Some(message) = logs.message().await.unwrap() {
        lines.extend(message.lines.into_iter().map(|l| l.text));
    }
    lines
}

/// A call that waits on the host (restart, config apply) with a deadline
/// longer than the default 30 s, as a client would ask for: on a loaded
/// machine a real gateway's restart or an `openclaw config set` can take
/// longer than that.
fn patient<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    request.set_timeout(Duration::from_secs(180));
    request
}

/// The agent's record of a tenant (port, OS user).
fn record(state_dir: &Path, tenant_id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(state_dir.join("tenants").join(format!("{tenant_id}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn http_status(port: u64, path: &str, token: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port as u16)) else { return 0 };
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 32];
    let n = stream.read(&mut head).unwrap_or(0);
    String::from_utf8_lossy(&head[..n]).split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Runs a program as another uid with no supplementary groups.
fn as_user(uid: u64, gid: u64, program: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([&format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups", "--", program])
        .args(args)
        .output()
        .unwrap()
}

async fn synced_turn_is_queryable(
    cp: &ControlPlane,
    owner: &Cred,
    other: &Cred,
    tenant: &Tenant,
    port: u16,
    token: &str,
) {
    let auth = format!("Bearer {token}");
    let body = serde_json::json!({
        "model": format!("openclaw/{}", tenant.slug),
        "messages": [{"role": "user", "content": "hello from the sync test"}],
    });
    let sent = std::time::Instant::now();
    let (status, answer) = http_post_json(port, "/v1/chat/completions", &[("Authorization", &auth)], &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("pong from the fake model"), "{answer}");
    let answered = sent.elapsed();

    let mut sessions = SessionServiceClient::new(cp.channel().await);
    let found = std::sync::Arc::new(std::sync::Mutex::new(None));
    eventually(Duration::from_secs(30), "the turn's messages in ListMessages", || {
        let mut sessions = sessions.clone();
        let (list, tenant_id) = (
            owner.request(ListSessionsRequest { tenant_id: tenant.id.clone(), ..Default::default() }),
            tenant.id.clone(),
        );
        let owner = owner.clone();
        let found = found.clone();
        async move {
            let Ok(list) = sessions.list_sessions(list).await else { return false };
            for session in list.into_inner().sessions {
                let request = owner.request(ListMessagesRequest {
                    tenant_id: tenant_id.clone(),
                    session_id: session.id.clone(),
                    ..Default::default()
                });
                let messages = sessions.list_messages(request).await.unwrap().into_inner().messages;
                let has_reply = messages.iter().any(|m| m.role == MessageRole::Assistant as i32);
                if messages.iter().any(|m| m.text.contains("hello from the sync test")) && has_reply {
                    *found.lock().unwrap() = Some((session, messages));
                    return true;
                }
            }
            false
        }
    })
    .await;
    eprintln!("turn answered in {answered:?}; queryable {:?} after sending", sent.elapsed());
    let (session, messages) = found.lock().unwrap().take().unwrap();
    assert_eq!(session.agent_id, tenant.slug);
    let user = messages.iter().find(|m| m.role == MessageRole::User as i32).unwrap();
    assert_eq!(user.text, "hello from the sync test");
    let assistant = messages.iter().find(|m| m.role == MessageRole::Assistant as i32).unwrap();
    assert_eq!(assistant.text, "pong from the fake model");
    assert_eq!((assistant.model.as_str(), assistant.provider.as_str()), ("fake-model", "local"));
    let usage = assistant.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens, usage.total_tokens), (42, 7, 49));
    assert!(messages.windows(2).all(|w| w[0].seq < w[1].seq), "chronological");
    assert_eq!(session.message_count, messages.len() as i64);

    let mut usage = UsageServiceClient::new(cp.channel().await);
    let day = usage
        .get_usage(owner.request(GetUsageRequest {
            tenant_id: tenant.id.clone(),
            period: UsagePeriod::Day as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let total = day.total.unwrap();
    assert_eq!(total.messages, 2, "one user and one assistant message");
    assert_eq!(total.tokens.unwrap().total_tokens, 49);
    assert_eq!(day.points.len(), 30);
    let overview = usage
        .get_overview(owner.request(GetOverviewRequest { tenant_id: tenant.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((overview.today_messages, overview.active_sessions), (2, 1));
    // Nobody else sees them.
    let denied = sessions
        .list_messages(other.request(ListMessagesRequest {
            tenant_id: tenant.id.clone(),
            session_id: session.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::NotFound);
}

/// Every event of a SendMessage call: the deltas, then `done`.
async fn turn(
    sessions: &mut SessionServiceClient<Channel>,
    owner: &Cred,
    request: SendMessageRequest,
) -> (Vec<String>, TurnDone) {
    try_turn(sessions, owner, request).await.expect("the turn streams")
}

async fn try_turn(
    sessions: &mut SessionServiceClient<Channel>,
    owner: &Cred,
    request: SendMessageRequest,
) -> Result<(Vec<String>, TurnDone), tonic::Status> {
    use clawplane_proto::v1::send_message_response::Event;
    let mut stream = sessions.send_message(owner.request(request)).await?.into_inner();
    let mut deltas = Vec::new();
    loop {
        match stream.message().await?.expect("done before the end") {
            SendMessageResponse { event: Some(Event::Delta(delta)) } => deltas.push(delta.text),
            SendMessageResponse { event: Some(Event::Done(done)) } => return Ok((deltas, done)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// SendMessage on the real gateway: the fake model's words stream back as
/// deltas, the turn is in ListMessages under the session `done` names, a
/// second message continues that session (the model gets the first turn
/// as history), another user cannot, and a cancelled call aborts the
/// gateway's request to the model.
async fn send_message_turns(cp: &ControlPlane, owner: &Cred, other: &Cred, tenant: &Tenant, model: &FakeModel) {
    let mut sessions = SessionServiceClient::new(cp.channel().await);
    let ask = |text: &str, session_key: &str| SendMessageRequest {
        tenant_id: tenant.id.clone(),
        session_key: session_key.into(),
        text: text.into(),
        ..Default::default()
    };
    let sent = std::time::Instant::now();
    let (deltas, first) = turn(&mut sessions, owner, ask("what is on my list?", "")).await;
    eprintln!("SendMessage on the real gateway: done after {:?}, deltas {deltas:?}", sent.elapsed());
    assert!(deltas.len() >= 2, "the answer streams in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), "pong from the fake model");
    assert_eq!(first.text, "pong from the fake model");
    assert!(first.session_key.starts_with(&format!("agent:{}:clawplane:", tenant.slug)), "{}", first.session_key);
    assert!(!first.session_id.is_empty(), "done names the synced session");
    assert_eq!((first.model.as_str(), first.agent_id.as_str()), ("fake-model", tenant.slug.as_str()));
    let usage = first.usage.unwrap();
    assert!(usage.output_tokens > 0 && usage.total_tokens > 0, "{usage:?}");

    let reader = sessions.clone();
    let list = |session_id: String| {
        let mut sessions = reader.clone();
        let request =
            owner.request(ListMessagesRequest { tenant_id: tenant.id.clone(), session_id, ..Default::default() });
        async move { sessions.list_messages(request).await.unwrap().into_inner().messages }
    };
    let messages = list(first.session_id.clone()).await;
    let texts: Vec<(i32, &str)> = messages.iter().map(|m| (m.role, m.text.as_str())).collect();
    assert_eq!(
        texts,
        [
            (MessageRole::User as i32, "what is on my list?"),
            (MessageRole::Assistant as i32, "pong from the fake model")
        ]
    );

    // The same session continues: the model is sent the first turn again.
    let (_, second) = turn(&mut sessions, owner, ask("and tomorrow?", &first.session_key)).await;
    assert_eq!(
        (second.session_id.as_str(), second.session_key.as_str()),
        (first.session_id.as_str(), first.session_key.as_str())
    );
    let history = model
        .requests
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|body| body["messages"].to_string().contains("and tomorrow?"))
        .map(|body| body["messages"].to_string())
        .expect("the model was asked the second message");
    assert!(history.contains("what is on my list?") && history.contains("pong from the fake model"), "{history}");
    assert_eq!(list(first.session_id.clone()).await.len(), 4, "two turns in the one session");

    let denied = sessions.send_message(other.request(ask("hi", &first.session_key))).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::NotFound);

    // Cancelling the call aborts the turn: the gateway drops its request
    // to the model.
    let aborted_before = model.aborted.load(std::sync::atomic::Ordering::SeqCst);
    let asked_before = model.requests.lock().unwrap().len();
    let stream = sessions.send_message(owner.request(ask("[hold] take your time", ""))).await.unwrap().into_inner();
    eventually(Duration::from_secs(60), "the held turn reaches the model", || {
        let asked = model.requests.lock().unwrap().len();
        std::future::ready(asked > asked_before)
    })
    .await;
    drop(stream);
    eventually(Duration::from_secs(60), "the gateway aborts its request to the model", || {
        std::future::ready(model.aborted.load(std::sync::atomic::Ordering::SeqCst) > aborted_before)
    })
    .await;
}

/// `https://<slug>.<domain>` through clawplane-bridge and the agent's tenant
/// proxy to the real gateway: /healthz, the Control UI page, and the
/// gateway's WebSocket protocol (its `connect.challenge`, then ping/pong).
async fn through_the_bridge(cp: &ControlPlane, dir: &Path, a: &Tenant, b: &Tenant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The gateway refuses proxied requests it cannot attribute to a real,
    // non-loopback client: the test plays a load balancer in front that
    // forwards a documentation-range client address.
    let bridge = BridgeProcess::start_with(cp, dir, &["--trusted-front", "127.0.0.1"]);
    let port = bridge.port;
    let client = ("X-Forwarded-For", "203.0.113.7");
    let (alice, bob) =
        (bearer(&auth::hs256(auth::claims("alice", &[]))), bearer(&auth::hs256(auth::claims("bob", &[]))));
    let (a_host, b_host) = (format!("{}.claw.test", a.slug), format!("{}.claw.test", b.slug));
    eventually(Duration::from_secs(30), "alice's gateway through the bridge", || {
        let (host, auth) = (a_host.clone(), alice.clone());
        async move { http(port, &host, "/healthz", &[("Authorization", &auth), client]).await.0 == 200 }
    })
    .await;
    for (host, auth, expected) in
        [(&b_host, &bob, 200), (&b_host, &alice, 404), (&a_host, &bob, 404), (&a_host, &String::new(), 401)]
    {
        let mut headers = vec![client];
        if !auth.is_empty() {
            headers.push(("Authorization", auth));
        }
        let (status, _, body) = http(port, host, "/healthz", &headers).await;
        assert_eq!(status, expected, "{host}: {body}");
    }
    let (status, _, page) =
        http(port, &a_host, "/", &[("Authorization", &alice), ("Accept", "text/html"), client]).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.to_ascii_lowercase().contains("<html"), "the Control UI page: {}", &page[..page.len().min(300)]);

    let mut ws = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: {a_host}\r\nAuthorization: {alice}\r\nX-Forwarded-For: 203.0.113.7\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    ws.write_all(upgrade.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("connect.challenge") {
        assert!(std::time::Instant::now() < deadline, "no challenge frame: {}", String::from_utf8_lossy(&seen));
        let n = tokio::time::timeout(Duration::from_secs(20), ws.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&seen));
    // A masked ping from us; the gateway answers with a pong frame (0x8A).
    ws.write_all(&[0x89, 0x84, 1, 2, 3, 4, b'p' ^ 1, b'i' ^ 2, b'n' ^ 3, b'g' ^ 4]).await.unwrap();
    let mut after = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !after.windows(2).any(|w| w == [0x8A, 0x04]) {
        assert!(std::time::Instant::now() < deadline, "no pong: {after:?}");
        let n = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the pong");
        after.extend_from_slice(&buf[..n]);
    }
    drop(ws);
    in_a_browser(dir, a, &alice, port, bridge.admin_port).await;
}

fn chromium_bin() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() && std::env::var("CLAWPLANE_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("chromium is required (scripts/test installs the Debian package)");
    }
    found
}

/// Headless Chromium opens alice's Control UI at https://<slug>.claw.test:
/// nginx on 127.0.0.1:443 plays the TLS load balancer (reporting a public
/// client address, as real users have), the bridge behind it trusts it.
/// The SSO hand-off sets the session cookie, the page loads, and its
/// WebSocket to the gateway upgrades through bridge and agent.
async fn in_a_browser(dir: &Path, a: &Tenant, alice: &str, bridge_port: u16, bridge_admin: u16) {
    let Some(chromium) = chromium_bin() else {
        eprintln!("\n!!! SKIPPING the browser check: chromium is not installed (scripts/test installs it) !!!\n");
        return;
    };
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists());
    let Some(nginx) = nginx else { panic!("nginx is required for the browser check (scripts/test installs it)") };
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["*.claw.test".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let root = dir.join("lb");
    std::fs::create_dir_all(root.join("logs")).unwrap();
    std::fs::write(root.join("wildcard.pem"), cert.pem()).unwrap();
    std::fs::write(root.join("wildcard.key"), key.serialize_pem()).unwrap();
    let r = root.display();
    let conf = format!(
        "user root; daemon off; worker_processes 1; pid {r}/nginx.pid; error_log {r}/logs/error.log;\n\
         events {{}}\nhttp {{ access_log off; client_body_temp_path {r}/body; proxy_temp_path {r}/proxy;\n\
         fastcgi_temp_path {r}/fastcgi; uwsgi_temp_path {r}/uwsgi; scgi_temp_path {r}/scgi;\n\
         map $http_upgrade $up {{ default upgrade; '' ''; }}\n\
         server {{ listen 127.0.0.1:443 ssl; server_name *.claw.test;\n\
         ssl_certificate {r}/wildcard.pem; ssl_certificate_key {r}/wildcard.key;\n\
         location / {{ proxy_pass http://127.0.0.1:{bridge_port}; proxy_http_version 1.1;\n\
         proxy_set_header Host $host; proxy_set_header X-Forwarded-For 203.0.113.7;\n\
         proxy_set_header X-Forwarded-Proto https; proxy_set_header Upgrade $http_upgrade;\n\
         proxy_set_header Connection $up; proxy_read_timeout 1h; }} }} }}\n"
    );
    std::fs::write(root.join("nginx.conf"), conf).unwrap();
    let mut lb = Command::new(nginx).arg("-p").arg(&root).arg("-c").arg(root.join("nginx.conf")).spawn().unwrap();
    wait_for_port(443, &mut lb);
    let token = alice.trim_start_matches("Bearer ");
    let url = format!("https://{}.claw.test/_clawplane/session?token={token}&next=/", a.slug);
    let upgrades = |admin: u16, tenant: String| async move {
        let line = format!("clawplane_bridge_upgrades_total{{tenant=\"{tenant}\"}}");
        let (_, _, body) = http(admin, "127.0.0.1", "/metrics", &[]).await;
        body.lines()
            .find(|l| l.starts_with(&line))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Upgrades before the browser (the raw WebSocket check made one).
    let before = upgrades(bridge_admin, a.id.clone()).await;
    let profile = dir.join("chromium-profile");
    let mut child = Command::new(chromium)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors"])
        .args(["--host-resolver-rules=MAP *.claw.test 127.0.0.1", "--virtual-time-budget=20000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while upgrades(bridge_admin, a.id.clone()).await <= before {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the page's WebSocket never upgraded through the bridge\nload balancer log:\n{}",
            std::fs::read_to_string(root.join("logs/error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let dom = String::from_utf8_lossy(&output.stdout).to_string();
    eprintln!("browser: WebSocket upgraded after {:?}; DOM {} bytes", started.elapsed(), dom.len());
    unsafe { libc::kill(lb.id() as i32, libc::SIGTERM) };
    let _ = lb.wait();
}

/// A host joined to `cp` whose agent runs tenants on the real OpenClaw
/// (process runtime): tenant trees under `<data dir>/tenants`, gateways on
/// a port range of their own, the tenant proxy on, plus `extra` flags.
/// Returns the agent, the tenants dir and the flags it runs with (to start
/// it again after a kill -9).
async fn real_host(cp: &ControlPlane, db: &TestDb, openclaw: &Path, extra: &[&str]) -> (Agent, PathBuf, Vec<String>) {
    let (token, pin) = cp.join_token(600, 1).await;
    let mut agent = Agent::new(&db.data_dir(), "agent");
    assert!(agent.join(&cp.url(), &token, &pin).status.success());
    let tenants_dir = db.data_dir().join("tenants");
    let base_port = (free_port() / 1000 * 1000).clamp(21000, 60000).to_string();
    let mut args: Vec<String> = [
        "--openclaw-bin",
        openclaw.to_str().unwrap(),
        "--tenants-dir",
        tenants_dir.to_str().unwrap(),
        "--gateway-base-port",
        &base_port,
        "--proxy-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    agent.run_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (agent, tenants_dir, args)
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_run_isolated_on_real_openclaw() {
    let Some(openclaw) = openclaw_bin() else { return };
    let db = sqlite_db();
    // Tenant users must be able to reach their own tree under this folder.
    std::fs::set_permissions(db.data_dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut cp = ControlPlane::start(&db, MODELS_ON_LOOPBACK);
    let (mut agent, tenants_dir, agent_args) = real_host(&cp, &db, &openclaw, &[]).await;

    let mut client = TenantServiceClient::new(cp.channel().await);
    let (alice, bob) = (Cred::shared("alice"), Cred::shared("bob"));
    for cred in [&alice, &bob] {
        let created = client
            .create_tenant(cred.request(CreateTenantRequest { plan: "free".into(), ..Default::default() }))
            .await
            .unwrap();
        assert!(created.into_inner().created);
    }
    let a = wait_running(&mut client, &alice).await;
    let b = wait_running(&mut client, &bob).await;
    assert_eq!(a.host_id, agent.host_id());
    let host =
        cp.hosts().await.get_host(cp.admin(GetHostRequest { host_id: a.host_id.clone() })).await.unwrap().into_inner();
    assert_eq!(
        host.host.unwrap().inventory.unwrap().openclaw_version,
        "2026.9.6",
        "the hello reports OpenClaw's version"
    );

    // Each tenant: its own OS user, a 0700 state tree it owns, a ready gateway.
    let (ra, rb) = (record(&agent.state_dir, &a.id), record(&agent.state_dir, &b.id));
    let a_root = tenants_dir.join(&a.slug);
    let meta = std::fs::metadata(&a_root).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(u64::from(meta.uid()), ra["uid"].as_u64().unwrap());
    assert_ne!(ra["uid"], rb["uid"], "one OS user per tenant");
    let user = ra["user"].as_str().unwrap().to_string();
    assert!(Command::new("getent").args(["passwd", &user]).output().unwrap().status.success());
    let a_port = ra["port"].as_u64().unwrap();
    assert_eq!(http_status(a_port, "/readyz", None), 200);
    // The gateway runs as the tenant's user, without the agent's (root's) groups.
    let pid = std::fs::read_to_string(a_root.join("gateway.pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(field("Uid:").iter().all(|u| u == &ra["uid"].to_string()), "{status}");
    assert!(
        field("Groups:").iter().all(|g| g == &ra["gid"].to_string()),
        "supplementary groups: {:?}",
        field("Groups:")
    );
    let openclaw_json = std::fs::read_to_string(a_root.join("state/openclaw.json")).unwrap();
    assert!(
        !openclaw_json.contains(ra["gateway_token"].as_str().unwrap()),
        "gateway token is a SecretRef, not plaintext"
    );

    // Tenant B's user can neither read A's state nor authenticate to A's gateway.
    let (b_uid, b_gid) = (rb["uid"].as_u64().unwrap(), rb["gid"].as_u64().unwrap());
    let read = as_user(b_uid, b_gid, "cat", &[a_root.join("state/openclaw.json").to_str().unwrap()]);
    assert!(!read.status.success(), "B read A's config");
    assert!(String::from_utf8_lossy(&read.stderr).contains("Permission denied"));
    let secrets = as_user(b_uid, b_gid, "cat", &[a_root.join("secrets.json").to_str().unwrap()]);
    assert!(!secrets.status.success(), "B read A's secrets");
    assert_eq!(http_status(a_port, "/v1/models", None), 401, "A's gateway refuses callers without A's token");
    assert_eq!(http_status(a_port, "/v1/models", Some(ra["gateway_token"].as_str().unwrap())), 200);
    // And neither can see the other's tenant through the API.
    let status =
        client.get_my_tenant(Cred::shared("mallory").request(GetMyTenantRequest::default())).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Config: model (with a secret) and profile, each one batch on the host.
    let mut config = ConfigServiceClient::new(cp.channel().await);
    let secret = "sk-alice-secret-0123456789";
    let fake_model = fake_model("pong from the fake model").await;
    let model_port = fake_model.port;
    let model = config
        .set_model(patient(alice.request(SetModelRequest {
            tenant_id: a.id.clone(),
            provider: "local".into(),
            model: "fake-model".into(),
            api_key: Some(secret.into()),
            base_url: Some(format!("http://127.0.0.1:{model_port}/v1")),
            expected_generation: None,
            ..Default::default()
        })))
        .await
        .expect("set model")
        .into_inner()
        .config
        .unwrap();
    assert_eq!(model.model.as_ref().unwrap().api_key_hint, "sk-...6789");
    assert!(!format!("{model:?}").contains(secret), "the API never returns a secret");
    let profile = config
        .set_agent_profile(patient(alice.request(SetAgentProfileRequest {
            tenant_id: a.id.clone(),
            name: Some("Alice Claw".into()),
            system_prompt: Some("You help Alice plan her week.".into()),
            style: Some("concise".into()),
            expected_generation: None,
        })))
        .await
        .expect("set profile")
        .into_inner()
        .config
        .unwrap();
    assert_eq!(profile.desired_generation, 2);
    assert_eq!(profile.applied_generation, 2, "applied on the host before the call returned");
    assert!(profile.last_apply_error.is_empty(), "{}", profile.last_apply_error);
    // `openclaw` run by hand on the host as the tenant's user.
    let by_hand = |cli_args: &[&str]| {
        let root = a_root.clone();
        let env = [
            format!("HOME={}", root.join("home").display()),
            format!("OPENCLAW_HOME={}", root.join("home").display()),
            format!("OPENCLAW_STATE_DIR={}", root.join("state").display()),
            format!("TMPDIR={}", root.join("tmp").display()),
            "OPENCLAW_OFFLINE=1".to_string(),
            "PATH=/usr/bin:/bin".to_string(),
        ];
        let mut args: Vec<String> = vec!["-i".into()];
        args.extend(env);
        args.push(openclaw.display().to_string());
        args.extend(cli_args.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        as_user(ra["uid"].as_u64().unwrap(), ra["gid"].as_u64().unwrap(), "env", &args)
    };
    let get = |path: &str| String::from_utf8_lossy(&by_hand(&["config", "get", path, "--json"]).stdout).to_string();
    assert!(get("agents.defaults.model.primary").contains("local/fake-model"));
    assert!(get(&format!("agents.entries.{}.identity.name", a.slug)).contains("Alice Claw"));
    let openclaw_json = std::fs::read_to_string(a_root.join("state/openclaw.json")).unwrap();
    assert!(!openclaw_json.contains(secret), "openclaw.json holds the API key");
    assert!(openclaw_json.contains("/models/local/apiKey"), "the key is a SecretRef");
    let soul = std::fs::read_to_string(a_root.join(format!("state/workspaces/{}/SOUL.md", a.slug))).unwrap();
    assert!(soul.contains("You help Alice plan her week.") && soul.contains("concise"), "{soul}");
    let secrets_mode = std::fs::metadata(a_root.join("secrets.json")).unwrap().permissions().mode() & 0o777;
    assert_eq!(secrets_mode, 0o600);
    assert!(!cp.log().contains(secret) && !agent.log().contains(secret), "a secret reached a log");
    // The key itself stays with the host's model proxy: alice's user finds
    // it nowhere in her tree, environment or command lines.
    let seen = tenant_can_see(ra["uid"].as_u64().unwrap(), ra["gid"].as_u64().unwrap(), &a_root, secret);
    assert!(seen.is_empty(), "the tenant can read its model key at {seen:?}");

    // A value OpenClaw's own validation rejects: INVALID_ARGUMENT with its
    // message, and the desired config rolls back.
    let mut settings = std::collections::HashMap::new();
    settings.insert("dmPolicy".to_string(), "bogus".to_string());
    let mut secrets = std::collections::HashMap::new();
    secrets.insert("botToken".to_string(), "123456:telegram-token".to_string());
    let rejected = config
        .set_channel(patient(alice.request(SetChannelRequest {
            tenant_id: a.id.clone(),
            channel: "telegram".into(),
            settings,
            secrets,
            enabled: true,
            expected_generation: None,
        })))
        .await
        .unwrap_err();
    assert_eq!(rejected.code(), tonic::Code::InvalidArgument, "{}", rejected.message());
    assert!(rejected.message().contains("dmPolicy"), "{}", rejected.message());
    assert_eq!(
        clawplane_proto::status_reason(&rejected),
        Some(clawplane_proto::v1::ErrorReason::OpenclawRejected),
        "programs tell OpenClaw's refusal from other bad input by its reason"
    );
    eventually(Duration::from_secs(60), "rolled-back generation applied", || {
        let mut config = config.clone();
        let request = alice.request(GetConfigRequest { tenant_id: a.id.clone() });
        async move {
            let current = config.get_config(request).await.unwrap().into_inner().config.unwrap();
            current.channels.is_empty() && current.applied_generation == current.desired_generation
        }
    })
    .await;
    assert!(get("channels.telegram").contains("Unknown config path") || !get("channels").contains("telegram"));
    // Bob cannot read or change Alice's config.
    let denied = config.get_config(bob.request(GetConfigRequest { tenant_id: a.id.clone() })).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::NotFound);

    // The control plane dies (kill -9) while a change is being applied: after
    // its restart the host converges on the latest generation, applied once.
    let racing = {
        let mut config = config.clone();
        let request = alice.request(SetToolsRequest {
            tenant_id: a.id.clone(),
            allow: vec!["read".into(), "web_search".into()],
            deny: vec!["exec".into()],
            expected_generation: None,
        });
        tokio::spawn(async move { config.set_tools(request).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp.restart();
    let _ = racing.await;
    eventually(Duration::from_secs(120), "latest generation applied after the control plane restart", || {
        let mut config = config.clone();
        let request = alice.request(GetConfigRequest { tenant_id: a.id.clone() });
        async move {
            match config.get_config(request).await {
                Ok(response) => {
                    let current = response.into_inner().config.unwrap();
                    current.applied_generation == current.desired_generation && current.last_apply_error.is_empty()
                }
                Err(_) => false,
            }
        }
    })
    .await;
    let executed = agent.executed();
    let unique: std::collections::HashSet<&String> = executed.iter().collect();
    assert_eq!(unique.len(), executed.len(), "a command ran twice: {executed:?}");

    // Restart answers once the gateway is ready again, on a new process.
    let pid_before = std::fs::read_to_string(a_root.join("gateway.pid")).unwrap();
    client
        .restart_tenant(patient(alice.request(RestartTenantRequest { tenant_id: a.id.clone() })))
        .await
        .expect("restart");
    assert_eq!(http_status(a_port, "/readyz", None), 200);
    let pid_after = std::fs::read_to_string(a_root.join("gateway.pid")).unwrap();
    assert_ne!(pid_before, pid_after, "a new gateway process");

    // Real gateway log lines, through host and control plane.
    let lines = log_lines(&mut client, &alice, &a.id, 200).await;
    assert!(!lines.is_empty(), "no log lines");
    assert!(lines.iter().any(|l| l.contains("gateway") || l.contains("listening")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains(ra["gateway_token"].as_str().unwrap())), "token in logs");

    // A real agent turn through the gateway lands in OpenClaw's SQLite; sync
    // brings it to the control plane within seconds.
    synced_turn_is_queryable(&cp, &alice, &bob, &a, a_port as u16, ra["gateway_token"].as_str().unwrap()).await;
    // The same through the API: SendMessage streams a real turn.
    send_message_turns(&cp, &alice, &bob, &a, &fake_model).await;

    // Clawplane's own applies are not reported as outside changes; a change
    // made by hand on the host is, with secrets redacted.
    let get_config = |config: &ConfigServiceClient<Channel>| {
        let mut config = config.clone();
        let request = alice.request(GetConfigRequest { tenant_id: a.id.clone() });
        async move { config.get_config(request).await.unwrap().into_inner().config.unwrap() }
    };
    let current = get_config(&config).await;
    assert!(current.observed_config_json.is_empty(), "own writes echoed: {}", current.observed_config_json);
    let out = by_hand(&["config", "set", "gateway.http.endpoints.responses.enabled", "true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(30), "the outside change observed", || {
        let observed = get_config(&config);
        async move { observed.await.observed_config_json.contains("responses") }
    })
    .await;
    let observed = get_config(&config).await;
    assert!(observed.observed_at.is_some());
    assert!(!observed.observed_config_json.contains(secret));

    // Users reach their real gateways through the bridge, and only theirs.
    through_the_bridge(&cp, &db.data_dir(), &a, &b).await;

    // The agent dies (kill -9) in the middle of provisioning a tenant: after
    // its restart the tenant still ends up running, and the others come back.
    let carol = Cred::shared("carol");
    client
        .create_tenant(carol.request(CreateTenantRequest { plan: "free".into(), ..Default::default() }))
        .await
        .unwrap();
    let c_id = my_tenant(&mut client, &carol).await.unwrap().id;
    eventually(Duration::from_secs(60), "carol's provisioning started", || {
        let path = agent.state_dir.join("tenants").join(format!("{c_id}.json"));
        async move { path.exists() }
    })
    .await;
    agent.kill9();
    agent.run_with(&agent_args.iter().map(String::as_str).collect::<Vec<_>>());
    // The killed agent's OpenClaw CLI calls may still hold the tenant's
    // state lock, and the provisioning starts over: on a loaded 2-core
    // machine that is several CLI calls and a gateway start (about 27
    // CPU-seconds) while the other real-OpenClaw tests run.
    let c = wait_running_on(&mut client, &carol, Some(&agent), 480).await;
    assert_eq!(record(&agent.state_dir, &c.id)["provisioned"], true);
    eventually(Duration::from_secs(120), "gateways back after the agent restart", || {
        let ports = [a_port, rb["port"].as_u64().unwrap()];
        async move { ports.iter().all(|p| http_status(*p, "/readyz", None) == 200) }
    })
    .await;

    // Delete: archive kept, gateway gone, user gone.
    client.delete_tenant(alice.request(DeleteTenantRequest { tenant_id: a.id.clone() })).await.unwrap();
    let archives = agent.state_dir.join("archives");
    // The user goes last, after the tree: waited for too, then checked below.
    let user_exists = |user: &str| Command::new("getent").args(["passwd", user]).output().unwrap().status.success();
    eventually(Duration::from_secs(120), "tenant removed from the host", || {
        let (root, archives) = (a_root.clone(), archives.clone());
        let user_gone = !user_exists(&user);
        async move {
            user_gone && !root.exists() && std::fs::read_dir(&archives).map(|d| d.count() > 0).unwrap_or(false)
        }
    })
    .await;
    let archive = std::fs::read_dir(&archives).unwrap().next().unwrap().unwrap().path();
    let listing = Command::new("tar").arg("-tzf").arg(&archive).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains(&format!("{}/state/openclaw.json", a.slug)));
    assert_eq!(http_status(a_port, "/readyz", None), 0, "gateway stopped");
    assert!(!user_exists(&user), "user removed");
    // B is untouched.
    assert_eq!(http_status(rb["port"].as_u64().unwrap(), "/readyz", None), 200);

    for (cred, tenant) in [(&bob, &b), (&carol, &c)] {
        client.delete_tenant(cred.request(DeleteTenantRequest { tenant_id: tenant.id.clone() })).await.unwrap();
        let root = tenants_dir.join(&tenant.slug);
        // As long as the other waits here: on a loaded 2-core CI machine a
        // delete (gateway stop, archive, user removal) took over a minute.
        eventually(Duration::from_secs(120), "tenant removed", || {
            let root = root.clone();
            async move { !root.exists() }
        })
        .await;
    }
    agent.kill9();
    drop(cp);
}

/// The `fleet` runtime: the same tenant commands through OpenClaw's own
/// `openclaw fleet` (the real CLI), against a stand-in `docker` on PATH since
/// no container engine runs here.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_run_as_openclaw_fleet_cells() {
    let Some(openclaw) = openclaw_bin() else { return };
    let db = sqlite_db();
    let mut cp = ControlPlane::start(&db, MODELS_ON_LOOPBACK);
    let (token, pin) = cp.join_token(600, 1).await;
    let mut agent = Agent::new(&db.data_dir(), "fleet-agent");
    assert!(agent.join(&cp.url(), &token, &pin).status.success());
    let bin_dir = db.data_dir().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-docker"),
        bin_dir.join("docker"),
    )
    .unwrap();
    let docker_state = db.data_dir().join("docker-state");
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let base_port = (free_port() / 1000 * 1000).clamp(21000, 60000).to_string();
    agent.run_env(
        &["--openclaw-bin", openclaw.to_str().unwrap(), "--runtime", "fleet", "--gateway-base-port", &base_port],
        &[("PATH", path.as_str()), ("FAKE_DOCKER_STATE", docker_state.to_str().unwrap())],
    );

    let mut client = TenantServiceClient::new(cp.channel().await);
    let dora = Cred::shared("dora");
    client
        .create_tenant(dora.request(CreateTenantRequest { plan: "free".into(), ..Default::default() }))
        .await
        .unwrap();
    let t = wait_running(&mut client, &dora).await;
    let host =
        cp.hosts().await.get_host(cp.admin(GetHostRequest { host_id: t.host_id.clone() })).await.unwrap().into_inner();
    assert_eq!(host.host.unwrap().inventory.unwrap().runtimes, vec![clawplane_proto::v1::Runtime::Fleet as i32]);
    let rec = record(&agent.state_dir, &t.id);
    let port = rec["port"].as_u64().unwrap();
    assert_eq!(http_status(port, "/healthz", None), 200, "the cell answers on its loopback port");
    let calls = std::fs::read_to_string(docker_state.join("calls.jsonl")).unwrap();
    assert!(calls.contains("\"create\""), "openclaw fleet drove docker: {calls}");
    assert!(calls.contains(&format!("openclaw-cell-{}", t.slug)), "one cell per tenant, named by its slug");

    client
        .restart_tenant(patient(dora.request(RestartTenantRequest { tenant_id: t.id.clone() })))
        .await
        .expect("restart via fleet restart");
    assert_eq!(http_status(port, "/healthz", None), 200);

    let lines = log_lines(&mut client, &dora, &t.id, 5).await;
    assert!(!lines.is_empty() && lines.len() <= 5, "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains(rec["gateway_token"].as_str().unwrap())), "fleet redacts the token");

    // Follow: the tail, then lines as the cell writes them (a restart logs
    // its shutdown), until the caller hangs up.
    let request = StreamTenantLogsRequest { tenant_id: t.id.clone(), tail_lines: 2, follow: true };
    let mut follow = client.stream_tenant_logs(dora.request(request)).await.unwrap().into_inner();
    let first = follow.message().await.unwrap().unwrap();
    assert!(!first.lines.is_empty());
    client
        .restart_tenant(patient(dora.request(RestartTenantRequest { tenant_id: t.id.clone() })))
        .await
        .expect("restart");
    let mut followed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !followed.iter().any(|l: &String| l.contains("SIGTERM")) {
        assert!(std::time::Instant::now() < deadline, "no new line followed: {followed:?}");
        let message = tokio::time::timeout(Duration::from_secs(30), follow.message()).await.unwrap().unwrap().unwrap();
        followed.extend(message.lines.into_iter().map(|l| l.text));
    }
    drop(follow);

    // Config for a cell: one `openclaw config set` inside its container,
    // secrets in a 0600 file in the cell's state, referenced, never inline.
    let mut config = ConfigServiceClient::new(cp.channel().await);
    let secret = "sk-dora-secret-9876543210";
    let applied = config
        .set_model(patient(dora.request(SetModelRequest {
            tenant_id: t.id.clone(),
            provider: "local".into(),
            model: "fake-model".into(),
            api_key: Some(secret.into()),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            expected_generation: None,
            ..Default::default()
        })))
        .await
        .expect("set model on a cell")
        .into_inner()
        .config
        .unwrap();
    assert_eq!(applied.applied_generation, applied.desired_generation, "{}", applied.last_apply_error);
    let profile = config
        .set_agent_profile(patient(dora.request(SetAgentProfileRequest {
            tenant_id: t.id.clone(),
            name: Some("Dora".into()),
            system_prompt: Some("You help Dora.".into()),
            style: None,
            expected_generation: None,
        })))
        .await
        .expect("set profile on a cell")
        .into_inner()
        .config
        .unwrap();
    assert_eq!(profile.applied_generation, profile.desired_generation, "{}", profile.last_apply_error);
    let calls = std::fs::read_to_string(docker_state.join("calls.jsonl")).unwrap();
    let execs: Vec<&str> = calls.lines().filter(|l| l.starts_with("[\"exec\"")).collect();
    assert!(!execs.is_empty(), "{calls}");
    assert!(execs.iter().all(|l| l.contains(&format!("openclaw-cell-{}", t.slug)) && l.contains("--batch-json")));
    assert!(execs.iter().any(|l| l.contains("agents.entries.main.identity")), "the cell's agent is OpenClaw's main");
    assert!(!calls.contains(secret), "a secret on a command line");
    let cell = agent.state_dir.join("fleet/state/fleet/cells").join(&t.slug);
    let secrets_file = cell.join("clawplane-secrets.json");
    // The cell holds its credential for the host's model proxy; the key
    // stays with the proxy.
    let cell_secrets = std::fs::read_to_string(&secrets_file).unwrap();
    assert!(cell_secrets.contains("cpm1.") && !cell_secrets.contains(secret), "{cell_secrets}");
    assert_eq!(std::fs::metadata(&secrets_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(cell.join("workspace/SOUL.md")).unwrap().contains("You help Dora."));
    assert!(!agent.log().contains(secret) && !cp.log().contains(secret));

    client.delete_tenant(dora.request(DeleteTenantRequest { tenant_id: t.id.clone() })).await.unwrap();
    let archives = agent.state_dir.join("archives");
    eventually(Duration::from_secs(90), "cell backed up and removed", || {
        let (archives, record) = (archives.clone(), agent.state_dir.join("tenants").join(format!("{}.json", t.id)));
        async move { !record.exists() && std::fs::read_dir(&archives).map(|d| d.count() > 0).unwrap_or(false) }
    })
    .await;
    // The cell's server process is gone (its port may already serve another
    // test's gateway, so the process is what is checked). On a loaded host
    // it may outlive `docker rm` for a moment.
    let container = format!("openclaw-cell-{}", t.slug);
    eventually(Duration::from_secs(30), "the cell's server process ended", || {
        let container = container.clone();
        async move {
            let processes = std::fs::read_dir("/proc").unwrap().flatten();
            !processes.filter_map(|p| std::fs::read(p.path().join("cmdline")).ok()).any(|cmdline| {
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("fake-docker-health-server") && cmdline.contains(&container)
            })
        }
    })
    .await;
    let containers = std::fs::read_dir(docker_state.join("containers")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(containers, 0, "no container left");
    agent.kill9();
    cp.kill9();
}

/// A tenant's cgroup file, on cgroup v1 (`controller`'s hierarchy) or v2.
fn cgroup_file(controller: &str, tenant_id: &str, v1: &str, v2: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/clawplane/{tenant_id}/{v1}"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/clawplane/{tenant_id}/{v2}")))
        .ok()
        .map(|text| text.trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_are_limited_and_hibernate_on_real_openclaw() {
    let Some(openclaw) = openclaw_bin() else { return };
    let db = sqlite_db();
    std::fs::set_permissions(db.data_dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let cp = ControlPlane::start(&db, "");
    // Alice's plan hibernates after 5 idle seconds; carol's gives a gateway
    // far less memory than it takes.
    set_plan(&db, "pro", "hibernate_after_secs = 5").await;
    set_plan(&db, "enterprise", "memory_limit_mib = 160").await;
    let extra = ["--hibernation-check-interval", "1s", "--wake-timeout", "240s"];
    let (agent, tenants_dir, _) = real_host(&cp, &db, &openclaw, &extra).await;

    let mut client = TenantServiceClient::new(cp.channel().await);
    let (alice, bob, carol) = (Cred::shared("alice"), Cred::shared("bob"), Cred::shared("carol"));
    for (cred, plan) in [(&bob, "free"), (&carol, "enterprise")] {
        let request = CreateTenantRequest { plan: plan.into(), ..Default::default() };
        client.create_tenant(cred.request(request)).await.unwrap();
    }
    let b = wait_running(&mut client, &bob).await;

    // Bob runs inside his plan's limits: his gateway's processes are in his
    // cgroup, which holds the free plan's memory, CPU and PIDs limits.
    let rb = record(&agent.state_dir, &b.id);
    let b_pid = std::fs::read_to_string(tenants_dir.join(&b.slug).join("gateway.pid")).unwrap();
    let procs = cgroup_file("memory", &b.id, "cgroup.procs", "cgroup.procs").expect("bob's cgroup");
    assert!(procs.lines().any(|p| p == b_pid.trim()), "gateway {b_pid} in its cgroup: {procs}");
    let memory = cgroup_file("memory", &b.id, "memory.limit_in_bytes", "memory.max").unwrap();
    assert_eq!(memory, (2048u64 << 20).to_string());
    assert_eq!(cgroup_file("pids", &b.id, "pids.max", "pids.max").unwrap(), "512");
    let quota = cgroup_file("cpu", &b.id, "cpu.cfs_quota_us", "cpu.max").unwrap();
    assert!(quota == "100000" || quota.starts_with("100000 "), "one core: {quota}");

    // Carol's gateway needs more than her 160 MiB: the kernel kills it, the
    // agent restarts it, and her status says why; bob's keeps answering.
    eventually(Duration::from_secs(240), "carol's out-of-memory restart in her status", || {
        let (mut client, carol) = (client.clone(), carol.clone());
        async move {
            my_tenant(&mut client, &carol)
                .await
                .is_some_and(|t| t.status_message.contains("out of memory at the 160 MiB limit"))
        }
    })
    .await;
    assert_eq!(http_status(rb["port"].as_u64().unwrap(), "/readyz", None), 200, "bob is unaffected");
    assert_eq!(std::fs::read_to_string(tenants_dir.join(&b.slug).join("gateway.pid")).unwrap(), b_pid);
    let c = my_tenant(&mut client, &carol).await.unwrap();
    client.delete_tenant(carol.request(DeleteTenantRequest { tenant_id: c.id.clone() })).await.unwrap();

    // GetHost: what the host's tenants use and commit.
    let host = cp.hosts().await.get_host(cp.admin(GetHostRequest { host_id: b.host_id.clone() })).await.unwrap();
    let host = host.into_inner().host.unwrap();
    assert!(!host.inventory.unwrap().capacity.unwrap().cgroup_version.is_empty(), "this machine has cgroups");
    let resources = host.resources.unwrap();
    assert!(resources.used_memory_bytes > 100 << 20, "gateways use memory: {resources:?}");

    // Alice idles 5 s: hibernated, her gateway and its memory gone.
    let request = CreateTenantRequest { plan: "pro".into(), ..Default::default() };
    client.create_tenant(alice.request(request)).await.unwrap();
    let a = wait_running(&mut client, &alice).await;
    let a_pid: u32 =
        std::fs::read_to_string(tenants_dir.join(&a.slug).join("gateway.pid")).unwrap().trim().parse().unwrap();
    let idle_since = std::time::Instant::now();
    while !my_tenant(&mut client, &alice).await.is_some_and(|t| t.status == TenantStatus::Hibernated as i32) {
        if idle_since.elapsed() > Duration::from_secs(120) {
            let log = agent.log();
            let said: Vec<&str> = log.lines().filter(|l| l.contains("stays up") || l.contains("hibernat")).collect();
            panic!("alice never hibernated; the agent said: {said:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eventually(Duration::from_secs(30), "alice's gateway process gone", || async move {
        !Path::new(&format!("/proc/{a_pid}")).exists()
    })
    .await;
    let left = cgroup_file("memory", &a.id, "cgroup.procs", "cgroup.procs").unwrap_or_default();
    assert!(left.is_empty(), "no process left in alice's cgroup: {left}");

    // A request through the real bridge wakes her and gets the real
    // gateway's answer: the Control UI page.
    let bridge = BridgeProcess::start_with(&cp, &db.data_dir(), &["--trusted-front", "127.0.0.1"]);
    let auth = bearer(&auth::hs256(auth::claims("alice", &[])));
    let client_address = ("X-Forwarded-For", "203.0.113.7");
    let a_host = format!("{}.claw.test", a.slug);
    let sent = std::time::Instant::now();
    let (status, _, page) = loop {
        // The bridge's first route table may predate the agent's proxy; a
        // wake longer than this client's 30 s read is waited for again.
        let answer = http(bridge.port, &a_host, "/", &[("Authorization", &auth), client_address]).await;
        if ![0, 404, 502].contains(&answer.0) || sent.elapsed() > Duration::from_secs(240) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("woken and answered {:?} after the request", sent.elapsed());
    assert_eq!(status, 200, "{page}");
    assert!(page.to_ascii_lowercase().contains("<html"), "the Control UI page: {}", &page[..page.len().min(300)]);
    let woken = tenant_in(&mut client, &alice, TenantStatus::Running, Duration::from_secs(30)).await;
    assert!(woken.status_message.contains("gateway ready"), "{}", woken.status_message);
    drop(bridge);
}

/// Everything a tenant's OS user can see of a secret: files in its tree
/// (read as that user), and the environment and command lines of its
/// processes.
fn tenant_can_see(uid: u64, gid: u64, tree: &Path, secret: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let grep = as_user(uid, gid, "grep", &["-r", "-l", "-F", secret, tree.to_str().unwrap()]);
    seen.extend(String::from_utf8_lossy(&grep.stdout).lines().map(String::from));
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(meta) = entry.metadata() else { continue };
        if u64::from(meta.uid()) != uid || !entry.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        for what in ["environ", "cmdline"] {
            let bytes = std::fs::read(entry.path().join(what)).unwrap_or_default();
            if String::from_utf8_lossy(&bytes).contains(secret) {
                seen.push(format!("{}/{what}", entry.path().display()));
            }
        }
    }
    seen
}

/// Plans that hold, on the real OpenClaw: the tenant's model is the
/// platform's, reached through the host's metering proxy, which adds the
/// platform key (never in the tenant's tree, environment or command
/// lines); the upstream's token counts reach GetUsage and GetSubscription;
/// a free tenant past its token allowance is refused on its next turn with
/// a message it sees, and ChangePlan lifts it.
#[tokio::test(flavor = "multi_thread")]
async fn plans_hold_on_real_openclaw() {
    use clawplane_proto::v1::{ChangePlanRequest, GetSubscriptionRequest};
    let Some(openclaw) = openclaw_bin() else { return };
    let db = sqlite_db();
    std::fs::set_permissions(db.data_dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let model = fake_model("metered pong").await;
    let platform_key = "sk-platform-key-0123456789abcdef";
    let key_file = db.data_dir().join("platform.key");
    std::fs::write(&key_file, platform_key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Each turn costs 42 + 7 tokens at the fake model: the free plan's 60
    // allow two turns (the second crosses the limit) and refuse the third.
    let config = format!(
        r#"{MODELS_ON_LOOPBACK}
[models.platform]
provider = "saas"
base_url = "http://127.0.0.1:{port}/v1"
api_key_file = "{key}"
models = ["fake-model"]

[[plans]]
name = "free"
display_name = "Free"
monthly_token_limit = 60
overage_policy = "block"

[[plans]]
name = "pro"
display_name = "Pro"
price_monthly_minor = 2000
overage_policy = "bill"
overage_per_1k_tokens_minor = 2
"#,
        port = model.port,
        key = key_file.display()
    );
    let cp = ControlPlane::start(&db, &config);
    let (agent, tenants_dir, _) = real_host(&cp, &db, &openclaw, &[]).await;

    let mut client = TenantServiceClient::new(cp.channel().await);
    let alice = Cred::shared("alice");
    let request = CreateTenantRequest { plan: "free".into(), ..Default::default() };
    client.create_tenant(alice.request(request)).await.unwrap();
    let a = wait_running(&mut client, &alice).await;

    // Without choosing a model, alice has the platform's, applied on her host.
    let mut configs = ConfigServiceClient::new(cp.channel().await);
    let applied = std::sync::Arc::new(std::sync::Mutex::new(None));
    eventually(Duration::from_secs(120), "the platform model applied on the host", || {
        let (mut configs, request, applied) =
            (configs.clone(), alice.request(GetConfigRequest { tenant_id: a.id.clone() }), applied.clone());
        async move {
            let config = configs.get_config(request).await.unwrap().into_inner().config.unwrap();
            let done = config.applied_generation >= 1 && config.applied_generation == config.desired_generation;
            *applied.lock().unwrap() = Some(config);
            done
        }
    })
    .await;
    let shown = applied.lock().unwrap().take().unwrap().model.unwrap();
    assert_eq!((shown.provider.as_str(), shown.model.as_str(), shown.platform), ("saas", "fake-model", true));
    // The gateway picks the written config up on its own, a moment later.
    eventually(Duration::from_secs(120), "the gateway reloaded its model config", || {
        let (mut client, alice, id) = (client.clone(), alice.clone(), a.id.clone());
        async move {
            let log = log_lines(&mut client, &alice, &id, 200).await;
            log.iter().any(|line| line.contains("config hot reload applied") && line.contains("models"))
        }
    })
    .await;
    let set_other_key = configs
        .set_model(alice.request(SetModelRequest {
            tenant_id: a.id.clone(),
            provider: "saas".into(),
            model: "fake-model".into(),
            api_key: Some("sk-mine-0123456789".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(set_other_key.code(), tonic::Code::InvalidArgument, "{set_other_key:?}");

    let mut sessions = SessionServiceClient::new(cp.channel().await);
    let ask = |text: &str| SendMessageRequest { tenant_id: a.id.clone(), text: text.into(), ..Default::default() };
    let (_, first) = match try_turn(&mut sessions, &alice, ask("first")).await {
        Ok(answer) => answer,
        Err(status) => {
            let log = log_lines(&mut client, &alice, &a.id, 80).await;
            panic!("first turn: {status:?}\ngateway log:\n{}\nagent log:\n{}", log.join("\n"), agent.log());
        }
    };
    assert_eq!(first.text, "metered pong");
    // The upstream got the platform's key; alice's tree, environment and
    // command lines never hold it.
    let record = record(&agent.state_dir, &a.id);
    let (uid, gid) = (record["uid"].as_u64().unwrap(), record["gid"].as_u64().unwrap());
    let seen = tenant_can_see(uid, gid, &tenants_dir.join(&a.slug), platform_key);
    assert!(seen.is_empty(), "the tenant can read the platform key at {seen:?}");
    assert!(!cp.log().contains(platform_key) && !agent.log().contains(platform_key), "the key reached a log");

    // The upstream's own counts, metered by the proxy, in GetUsage and the
    // subscription.
    let mut usage = UsageServiceClient::new(cp.channel().await);
    let tokens_used = |usage: &UsageServiceClient<Channel>| {
        let (mut usage, request) = (usage.clone(), alice.request(GetSubscriptionRequest { tenant_id: a.id.clone() }));
        async move { usage.get_subscription(request).await.unwrap().into_inner().subscription.unwrap() }
    };
    eventually(Duration::from_secs(30), "the first turn's 49 tokens in the subscription", || {
        let subscription = tokens_used(&usage);
        async move { subscription.await.tokens_used == 49 }
    })
    .await;
    let day = usage
        .get_usage(alice.request(GetUsageRequest {
            tenant_id: a.id.clone(),
            period: UsagePeriod::Day as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let tokens = day.total.unwrap().tokens.unwrap();
    assert_eq!((tokens.input_tokens, tokens.output_tokens), (42, 7));

    // The second turn crosses the limit; the third is refused before it
    // reaches the model, with a message alice sees.
    let (_, second) = turn(&mut sessions, &alice, ask("second")).await;
    assert_eq!(second.text, "metered pong");
    let subscription = tokens_used(&usage).await;
    eventually(Duration::from_secs(30), "quota exceeded in the subscription", || {
        let subscription = tokens_used(&usage);
        async move { subscription.await.quota_exceeded }
    })
    .await;
    assert!(subscription.tokens_used >= 49);
    // A turn through the gateway itself, as a channel's would come, is
    // refused by the host's proxy before it reaches the model.
    let asked = model.requests.lock().unwrap().len();
    let auth = format!("Bearer {}", record["gateway_token"].as_str().unwrap());
    let body = serde_json::json!({
        "model": format!("openclaw/{}", a.slug),
        "messages": [{"role": "user", "content": "third"}],
    });
    let port = record["port"].as_u64().unwrap() as u16;
    let (status, said) = http_post_json(port, "/v1/chat/completions", &[("Authorization", &auth)], &body).await;
    eprintln!("the refused turn: {status} {said}");
    assert!(said.contains("allowance"), "the refusal says why: {said}");
    assert_eq!(model.requests.lock().unwrap().len(), asked, "the refused turn never reached the model");
    // The transcript shows the refusal as the turn's answer.
    let transcript = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    eventually(Duration::from_secs(30), "the refused turn in the transcript", || {
        let (mut sessions, alice, id, transcript) = (sessions.clone(), alice.clone(), a.id.clone(), transcript.clone());
        async move {
            let list = ListSessionsRequest { tenant_id: id.clone(), ..Default::default() };
            let Ok(list) = sessions.list_sessions(alice.request(list)).await else { return false };
            let mut texts = Vec::new();
            for session in list.into_inner().sessions {
                let request =
                    ListMessagesRequest { tenant_id: id.clone(), session_id: session.id, ..Default::default() };
                let messages = sessions.list_messages(alice.request(request)).await.unwrap().into_inner().messages;
                texts.extend(messages.into_iter().map(|m| (m.role, m.text)));
            }
            let found = texts
                .iter()
                .skip_while(|(_, text)| text != "third")
                .any(|(role, text)| *role == MessageRole::Assistant as i32 && text.contains("allowance"));
            *transcript.lock().unwrap() = texts;
            found
        }
    })
    .await;

    // SendMessage does not start a turn the model would refuse: it answers
    // RESOURCE_EXHAUSTED with the reason (once the control plane has
    // counted the turns that used the allowance up).
    let refusal = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    eventually(Duration::from_secs(30), "SendMessage refused with RESOURCE_EXHAUSTED", || {
        let (mut sessions, request, refusal) = (sessions.clone(), alice.request(ask("fourth")), refusal.clone());
        async move {
            let status = match sessions.send_message(request).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(_)) => continue,
                            Ok(None) => return false,
                            Err(status) => break status,
                        }
                    }
                }
                Err(status) => status,
            };
            *refusal.lock().unwrap() = status.message().to_string();
            status.code() == tonic::Code::ResourceExhausted
        }
    })
    .await;
    let refusal = refusal.lock().unwrap().clone();
    assert!(refusal.contains("allowance is used up") && refusal.contains("Free plan"), "{refusal}");
    assert_eq!(model.requests.lock().unwrap().len(), asked, "no refused turn reached the model");

    // A bigger plan lifts it at once.
    usage.change_plan(alice.request(ChangePlanRequest { tenant_id: a.id.clone(), plan: "pro".into() })).await.unwrap();
    let lifted = std::time::Instant::now();
    let answer = loop {
        let (_, done) = turn(&mut sessions, &alice, ask("after the upgrade")).await;
        if done.text == "metered pong" || lifted.elapsed() > Duration::from_secs(60) {
            break done.text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(answer, "metered pong");
}
