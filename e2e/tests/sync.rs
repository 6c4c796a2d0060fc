//! Sync under faults: control plane and agent as real processes, tenants
//! provisioned through the API (with the stand-in `openclaw`, so a tenant
//! is running in a second), and OpenClaw's state written the way OpenClaw
//! writes it: rows in a per-agent database with the real schema (a copy of
//! one produced by OpenClaw 2026.9.6) and legacy JSONL lines. Whatever
//! breaks, every source record ends up stored exactly once, and the counters
//! derived from them are exact. The real OpenClaw turn is in openclaw.rs.
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clawplane::store::Store;
use clawplane_proto::v1::agent_service_client::AgentServiceClient;
use clawplane_proto::v1::session_service_client::SessionServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::usage_service_client::UsageServiceClient;
use clawplane_proto::v1::{
    sync_record, CreateTenantRequest, Cursor, GetMyTenantRequest, GetSessionRequest, GetUsageRequest,
    ListSessionsRequest, SessionMeta, SyncBatch, SyncRecord, SyncRequest, SyncSource, Tenant, TenantStatus,
    TranscriptEvent, UsagePeriod,
};
use clawplane_test_kit::auth::Cred;
use common::*;
use tokio_stream::wrappers::ReceiverStream;

const SESSION: &str = "5d1f8c2a-0000-4000-8000-00000000a11c";

/// A control plane, one agent running tenants with the stand-in OpenClaw,
/// and alice's running tenant.
struct Rig {
    db: TestDb,
    cp: ControlPlane,
    agent: Agent,
    agent_args: Vec<String>,
    tenant: Tenant,
    state_dir: PathBuf,
    store: Store,
}

impl Rig {
    /// `agent_url` overrides the URL the agent joins (a proxy in front).
    async fn start(db: TestDb, proxy: Option<&Proxy>) -> Rig {
        let cp = ControlPlane::start(&db, "");
        let dir = db.data_dir();
        let fake = fake_openclaw(&dir);
        let (token, pin) = cp.join_token(600, 1).await;
        let mut agent = Agent::new(&dir, "agent");
        let url = match proxy {
            Some(proxy) => {
                proxy.upstream.lock().unwrap().replace(cp.agent_port);
                format!("https://127.0.0.1:{}", proxy.port)
            }
            None => cp.url(),
        };
        let joined = agent.join(&url, &token, &pin);
        assert!(joined.status.success(), "{}", text(&joined));
        let tenants_dir = dir.join("tenants");
        let agent_args: Vec<String> = vec![
            "--openclaw-bin".into(),
            fake.join("openclaw").display().to_string(),
            "--tenants-dir".into(),
            tenants_dir.display().to_string(),
            "--no-tenant-users".into(),
            "--gateway-base-port".into(),
            free_port().to_string(),
        ];
        agent.run_with(&agent_args.iter().map(String::as_str).collect::<Vec<_>>());
        let mut tenants = TenantServiceClient::new(cp.channel().await);
        let alice = Cred::shared("alice");
        tenants
            .create_tenant(alice.request(CreateTenantRequest { plan: "pro".into(), ..Default::default() }))
            .await
            .unwrap();
        let tenant = Arc::new(Mutex::new(None));
        eventually(Duration::from_secs(60), "alice's tenant running", || {
            let mut tenants = tenants.clone();
            let request = alice.request(GetMyTenantRequest::default());
            let tenant = tenant.clone();
            async move {
                let current = tenants.get_my_tenant(request).await.ok().and_then(|r| r.into_inner().tenant);
                let running = current.as_ref().is_some_and(|t| t.status == TenantStatus::Running as i32);
                *tenant.lock().unwrap() = current;
                running
            }
        })
        .await;
        let tenant = tenant.lock().unwrap().take().unwrap();
        let state_dir = tenants_dir.join(&tenant.slug).join("state");
        let store = db.store().await;
        Rig { db, cp, agent, agent_args, tenant, state_dir, store }
    }

    fn run_agent(&mut self) {
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        self.agent.run_with(&args);
    }

    async fn stored(&self) -> u64 {
        self.store.message_count(&self.tenant.id).await.unwrap()
    }

    async fn wait_stored(&self, expected: u64, limit: Duration) {
        let started = std::time::Instant::now();
        loop {
            let stored = self.stored().await;
            assert!(stored <= expected, "more messages stored ({stored}) than written ({expected})");
            if stored == expected {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "only {stored} of {expected} messages stored after {limit:?}\nagent log tail:\n{}",
                tail(&self.agent.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The tenant's billed (messages, tokens) this month. Tokens are what
    /// the host's model proxy metered (none here: these transcripts were
    /// written by hand), not what OpenClaw's transcripts claim.
    async fn billed(&self) -> (i64, i64) {
        let mut usage = UsageServiceClient::new(self.cp.channel().await);
        let request = GetUsageRequest {
            tenant_id: self.tenant.id.clone(),
            period: UsagePeriod::Month as i32,
            ..Default::default()
        };
        let total = usage.get_usage(Cred::shared("alice").request(request)).await.unwrap().into_inner().total.unwrap();
        (total.messages, total.tokens.unwrap().total_tokens)
    }

    /// Usage and session counters must equal what was written, exactly
    /// (`before`: what was billed before the session was written).
    async fn assert_counters(&self, session_id: &str, messages: i64, tokens: i64, before: (i64, i64)) {
        let alice = Cred::shared("alice");
        assert_eq!(self.billed().await, (before.0 + messages, before.1), "billed messages; no metered tokens");
        let mut sessions = SessionServiceClient::new(self.cp.channel().await);
        let request = GetSessionRequest { tenant_id: self.tenant.id.clone(), session_id: session_id.into() };
        let session = sessions.get_session(alice.request(request)).await.unwrap().into_inner().session.unwrap();
        assert_eq!(session.message_count, messages, "session message count");
        assert_eq!(session.usage.unwrap().total_tokens, tokens);
    }

    async fn finish(self) {
        let Rig { db, cp, agent, store, .. } = self;
        drop(agent);
        drop(cp);
        store.close().await;
        drop(db);
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The transcript event OpenClaw writes for message `i` of a conversation:
/// even = user, odd = assistant with usage 10 in / 5 out / 15 total.
fn event_json(i: i64) -> String {
    let timestamp = humantime_like(i);
    if i % 2 == 0 {
        serde_json::json!({"type": "message", "id": format!("ev-{i}"), "timestamp": timestamp,
            "message": {"role": "user", "content": format!("question {i}")}})
    } else {
        serde_json::json!({"type": "message", "id": format!("ev-{i}"), "timestamp": timestamp,
            "message": {"role": "assistant", "content": [{"type": "text", "text": format!("answer {i}")}],
                "provider": "local", "model": "fake-model", "stopReason": "stop",
                "usage": {"input": 10, "output": 5, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 15,
                    "cost": {"total": 0.0}}}})
    }
    .to_string()
}

/// Today, one millisecond per event: all events fall in this month.
fn humantime_like(i: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let day_start = now - now % 86_400_000;
    let ms = day_start + (i % 80_000_000);
    let secs = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(secs).to_string()
}

/// Copies the real OpenClaw database into the tenant's agent dir.
fn install_agent_db(state_dir: &Path) -> PathBuf {
    let dir = state_dir.join("agents/main/agent");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("openclaw-agent.sqlite");
    std::fs::copy(agent_fixture("openclaw-agent-2026.9.6.sqlite"), &path).unwrap();
    path
}

/// Appends events [from, to) to SESSION the way OpenClaw does: one write
/// transaction adding `transcript_events` rows and touching the session.
fn append_events(db: &Path, from: i64, to: i64) {
    let mut db = rusqlite::Connection::open(db).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = db.transaction().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    tx.execute(
        "INSERT OR IGNORE INTO session_nodes (session_key, current_session_id, entry_json, updated_at) VALUES ('agent:main:telegram:direct:7', ?1, '{}', ?2)",
        rusqlite::params![SESSION, now],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO session_windows (session_id, session_key, created_at, updated_at, channel, chat_type, model, model_provider) \
         VALUES (?1, 'agent:main:telegram:direct:7', ?2, ?2, 'telegram', 'direct', 'fake-model', 'local') \
         ON CONFLICT (session_id) DO UPDATE SET updated_at = excluded.updated_at",
        rusqlite::params![SESSION, now],
    )
    .unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO transcript_events (session_id, seq, event_json, created_at, event_utf8_bytes) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for i in from..to {
            let json = event_json(i);
            insert.execute(rusqlite::params![SESSION, i, json, now, json.len() as i64]).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Expected totals after events [0, n): every event is a billable message,
/// every second one carries 15 tokens.
fn expected(n: i64) -> (i64, i64) {
    (n, (n / 2) * 15)
}

each_backend!(
    #[tokio::test(flavor = "multi_thread")]
    a_backlog_survives_kill9_of_agent_and_control_plane
);
async fn a_backlog_survives_kill9_of_agent_and_control_plane(db: TestDb) {
    let mut rig = Rig::start(db, None).await;
    let db_path = install_agent_db(&rig.state_dir);
    // The fixture's own conversation: 6 messages, 98 tokens.
    rig.wait_stored(6, Duration::from_secs(30)).await;
    let before = rig.billed().await;
    assert_eq!(before.0, 6, "the fixture's user and assistant messages are billed");

    // 100,000 events pile up while the agent is down.
    const N: i64 = 100_000;
    rig.agent.kill9();
    append_events(&db_path, 0, N);
    rig.run_agent();
    let r = &rig;
    eventually(Duration::from_secs(120), "sync under way", || async move { r.stored().await > 6 + 1_000 }).await;
    rig.agent.kill9();
    let after_agent_kill = rig.stored().await;
    assert!(after_agent_kill < 6 + N as u64, "the kill should land mid-backlog");
    rig.run_agent();
    let r = &rig;
    eventually(Duration::from_secs(120), "sync resumed", || async move { r.stored().await > after_agent_kill + 1_000 })
        .await;
    rig.cp.restart();
    let after_cp_kill = rig.stored().await;
    eprintln!("stored before agent kill: {after_agent_kill}; before control plane kill: {after_cp_kill}");
    rig.wait_stored(6 + N as u64, Duration::from_secs(240)).await;
    let (messages, tokens) = expected(N);
    rig.assert_counters(SESSION, messages, tokens, before).await;

    // The session's metadata came from session_windows.
    let mut sessions = SessionServiceClient::new(rig.cp.channel().await);
    let request =
        ListSessionsRequest { tenant_id: rig.tenant.id.clone(), channel: "telegram".into(), ..Default::default() };
    let listed = sessions.list_sessions(Cred::shared("alice").request(request)).await.unwrap().into_inner().sessions;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id.as_str(), listed[0].chat_type.as_str()), (SESSION, "direct"));
    rig.finish().await;
}

/// A TCP proxy on loopback between agent and control plane that the test
/// can cut: while down it drops every connection and refuses new ones.
struct Proxy {
    port: u16,
    upstream: Arc<Mutex<Option<u16>>>,
    down: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            upstream: Default::default(),
            down: Default::default(),
            connections: Default::default(),
        };
        let (upstream, down, connections) = (proxy.upstream.clone(), proxy.down.clone(), proxy.connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if down.load(Ordering::SeqCst) {
                    continue;
                }
                let Some(port) = *upstream.lock().unwrap() else { continue };
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(task);
            }
        });
        proxy
    }

    fn cut(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for task in self.connections.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }
}

fn jsonl_line(i: i64) -> String {
    event_json(i) + "\n"
}

each_backend!(
    #[tokio::test(flavor = "multi_thread")]
    a_burst_through_a_dropped_connection_arrives_once
);
async fn a_burst_through_a_dropped_connection_arrives_once(db: TestDb) {
    let proxy = Proxy::start().await;
    let rig = Rig::start(db, Some(&proxy)).await;
    let sessions_dir = rig.state_dir.join("agents/main/sessions");
    std::fs::create_dir_all(&sessions_dir).unwrap();
    let file = sessions_dir.join(format!("{SESSION}.jsonl"));
    std::fs::write(
        sessions_dir.join("sessions.json"),
        serde_json::json!({"agent:main:discord:group:9": {"sessionId": SESSION, "updatedAt": 1, "channel": "discord",
            "chatType": "group", "model": "fake-model", "modelProvider": "local"}})
        .to_string(),
    )
    .unwrap();

    // 40 bursts of 100 lines; the connection is cut for 2 s in the middle,
    // and a burst ends with half a line that is completed later.
    const BURSTS: i64 = 40;
    const PER_BURST: i64 = 100;
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&file).unwrap();
    for burst in 0..BURSTS {
        if burst == 10 {
            proxy.cut(true);
        }
        if burst == 20 {
            proxy.cut(false);
        }
        let mut chunk = String::new();
        for i in burst * PER_BURST..(burst + 1) * PER_BURST {
            chunk.push_str(&jsonl_line(i));
        }
        if burst == 30 {
            let (head, rest) = chunk.split_at(chunk.len() - 20);
            out.write_all(head.as_bytes()).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            out.write_all(rest.as_bytes()).unwrap();
        } else {
            out.write_all(chunk.as_bytes()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = BURSTS * PER_BURST;
    rig.wait_stored(n as u64, Duration::from_secs(120)).await;
    let (messages, tokens) = expected(n);
    rig.assert_counters(SESSION, messages, tokens, (0, 0)).await;
    let mut sessions = SessionServiceClient::new(rig.cp.channel().await);
    let request =
        ListSessionsRequest { tenant_id: rig.tenant.id.clone(), channel: "discord".into(), ..Default::default() };
    let listed = sessions.list_sessions(Cred::shared("alice").request(request)).await.unwrap().into_inner().sessions;
    assert_eq!(listed.len(), 1, "metadata from sessions.json");
    assert_eq!(listed[0].session_key, "agent:main:discord:group:9");
    rig.finish().await;
}

/// Sends one batch on a Sync stream with the given host identity; returns
/// the ack or the status.
async fn sync_as(url: &str, agent: &Agent, batch: SyncBatch) -> Result<clawplane_proto::v1::SyncAck, tonic::Status> {
    let read = |name: &str| std::fs::read_to_string(agent.state_dir.join(name)).unwrap();
    let identity = clawplane_tls::ReloadableIdentity::from_pem(&read("cert.pem"), &read("key.pem")).unwrap();
    let config = clawplane_tls::mtls_client_config(&read("ca.pem"), identity).unwrap();
    let channel = clawplane_tls::channel(url, config).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(SyncRequest { batch: Some(batch) }).await.unwrap();
    let mut acks = AgentServiceClient::new(channel).sync(ReceiverStream::new(rx)).await?.into_inner();
    let ack = acks.message().await?.expect("an ack").ack.unwrap();
    Ok(ack)
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_cannot_sync_tenants_they_do_not_run() {
    let rig = Rig::start(sqlite_db(), None).await;
    // A second host, joined for real, running nothing.
    let (token, pin) = rig.cp.join_token(600, 1).await;
    let other = Agent::new(&rig.db.data_dir(), "other");
    assert!(other.join(&rig.cp.url(), &token, &pin).status.success());

    let event = |tenant: &str, position: i64| SyncRecord {
        tenant_id: tenant.into(),
        agent_id: "main".into(),
        source: SyncSource::Sqlite as i32,
        session_key: "agent:main:main".into(),
        session_id: SESSION.into(),
        position,
        body: Some(sync_record::Body::Event(TranscriptEvent {
            event_id: format!("forged-{position}"),
            event_type: "message".into(),
            role: clawplane_proto::v1::MessageRole::User as i32,
            text: "forged".into(),
            ..Default::default()
        })),
    };
    let cursor = |tenant: &str| Cursor {
        tenant_id: tenant.into(),
        agent_id: "main".into(),
        source: SyncSource::Sqlite as i32,
        stream_key: SESSION.into(),
        position: 1,
    };
    let a = rig.tenant.id.clone();
    // (who sends, records, expected rejections by reason)
    let cases: Vec<(&str, &Agent, Vec<SyncRecord>, Vec<&str>, usize)> = vec![
        ("another host, alice's tenant", &other, vec![event(&a, 1), event(&a, 2)], vec!["tenant_not_on_host"; 2], 0),
        ("alice's host, a made-up tenant", &rig.agent, vec![event("not-a-tenant", 1)], vec!["tenant_not_on_host"], 0),
        (
            "records without body, position or session",
            &rig.agent,
            vec![
                SyncRecord { body: None, ..event(&a, 1) },
                SyncRecord { position: -5, ..event(&a, 1) },
                SyncRecord { session_id: String::new(), ..event(&a, 1) },
                SyncRecord {
                    body: Some(sync_record::Body::SessionMeta(SessionMeta::default())),
                    session_id: "x\ny".into(),
                    ..event(&a, 1)
                },
            ],
            vec!["invalid_record"; 4],
            1,
        ),
    ];
    for (what, sender, records, reasons, committed) in cases {
        let cursors = vec![cursor(&records[0].tenant_id.clone())];
        let batch = SyncBatch { batch_id: "b1".into(), records, cursors_to_ack_on_commit: cursors };
        let ack = sync_as(&rig.cp.url(), sender, batch).await.unwrap_or_else(|s| panic!("{what}: {s:?}"));
        let got: Vec<&str> = ack.rejections.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(got, reasons, "{what}");
        assert_eq!(ack.accepted, 0, "{what}");
        assert_eq!(ack.committed_cursors.len(), committed, "{what}: cursors of foreign tenants are never echoed");
    }
    assert_eq!(rig.stored().await, 0, "nothing forged was stored");

    // Oversized batches are refused as a whole.
    let records: Vec<SyncRecord> = (0..2_001).map(|i| event(&a, i)).collect();
    let status =
        sync_as(&rig.cp.url(), &rig.agent, SyncBatch { batch_id: "big".into(), records, ..Default::default() })
            .await
            .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // Bob sees none of alice's sessions.
    let mut sessions = SessionServiceClient::new(rig.cp.channel().await);
    let denied = sessions
        .list_sessions(Cred::shared("bob").request(ListSessionsRequest { tenant_id: a.clone(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::NotFound);
    rig.finish().await;
}
