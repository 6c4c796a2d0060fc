//! What the end-to-end tests share beyond the test kit (which runs the
//! binaries): plain HTTP/1.1 clients, a fake model server, and a control
//! plane with one host running tenants on the stand-in OpenClaw.
#![allow(dead_code)]

use std::time::Duration;

use clawplane::store::Store;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{GetMyTenantRequest, Tenant, TenantStatus};
use clawplane_test_kit::auth::Cred;
pub use clawplane_test_kit::*;
use tonic::transport::Channel;

/// The control plane's store on a test's database, migrated.
#[allow(async_fn_in_trait)]
pub trait StoreOf {
    async fn store(&self) -> Store;
}

impl StoreOf for TestDb {
    async fn store(&self) -> Store {
        let store = Store::connect(&self.url, 8).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

/// A tiny OpenAI-compatible model server on 127.0.0.1 for real OpenClaw
/// turns: every `POST /v1/chat/completions` answers `reply` with usage
/// 42 prompt / 7 completion tokens, streamed as SSE when asked (OpenClaw
/// always asks, with `include_usage`) one word per event, 20 ms apart.
/// A request whose last message contains `[hold]` gets the first word and
/// then only keep-alive comments until its client goes away (counted in
/// `aborted`). Every request body is kept in `requests`. The server lives
/// as long as the test's runtime.
pub struct FakeModel {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    pub aborted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// [`FakeModel`]'s port alone.
pub async fn fake_model_server(reply: &'static str) -> u16 {
    fake_model(reply).await.port
}

pub async fn fake_model(reply: &'static str) -> FakeModel {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model = FakeModel {
        port: listener.local_addr().unwrap().port(),
        requests: Default::default(),
        aborted: Default::default(),
    };
    let (requests, aborted) = (model.requests.clone(), model.aborted.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let (requests, aborted) = (requests.clone(), aborted.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                // Headers, then a body of content-length bytes.
                let (head_end, length) = loop {
                    let Ok(n) = socket.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                            .unwrap_or(0usize);
                        break (end + 4, length);
                    }
                };
                while request.len() < head_end + length {
                    let Ok(n) = socket.read(&mut buf).await else { return };
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let body: serde_json::Value = serde_json::from_slice(&request[head_end..]).unwrap_or_default();
                requests.lock().unwrap().push(body.clone());
                let usage = serde_json::json!({"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49});
                if body["stream"].as_bool() != Some(true) {
                    let json = serde_json::json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1,
                        "model": "fake-model", "usage": usage, "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": reply}}]})
                    .to_string();
                    let response = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}", json.len());
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                    return;
                }
                let last = body["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .map(|m| m["content"].to_string())
                    .unwrap_or_default();
                let hold = last.contains("[hold]");
                let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
                    let chunk = serde_json::json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                        "model": "fake-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                    format!("data: {chunk}\n\n")
                };
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for (i, word) in reply.split_inclusive(' ').enumerate() {
                    let delta = if i == 0 {
                        serde_json::json!({"role": "assistant", "content": word})
                    } else {
                        serde_json::json!({"content": word})
                    };
                    if socket.write_all(chunk(delta, serde_json::Value::Null).as_bytes()).await.is_err() {
                        return;
                    }
                    if hold {
                        for _ in 0..1200 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if socket.write_all(b": keep-alive\n\n").await.is_err() {
                                aborted.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let usage = serde_json::json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                    "model": "fake-model", "choices": [], "usage": usage});
                let tail = format!("{}data: {usage}\n\ndata: [DONE]\n\n", chunk(serde_json::json!({}), "stop".into()));
                let _ = socket.write_all(tail.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    model
}

/// A JSON POST over plain HTTP/1.1 to 127.0.0.1; returns status and body.
pub async fn http_post_json(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let body = body.to_string();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A raw HTTP/1.1 GET with `Connection: close`; returns (status, head, body).
pub async fn http(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    http_from("127.0.0.1", port, host, path, headers).await
}

/// A connection to 127.0.0.1:`port` from the loopback address `source`.
pub async fn connect_from(source: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    clawplane_test_kit::connect_from(source, ([127, 0, 0, 1], port).into()).await
}

/// [`http`] from the loopback address `source`.
pub async fn http_from(
    source: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_from(source, port).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A control plane and one joined host whose agent runs the stand-in
/// `openclaw` (no tenant users) with its tenant proxy on loopback, for the
/// bridge's tests.
pub async fn host_with_tenant_proxy(db: &TestDb) -> (ControlPlane, Agent) {
    host_with_tenant_proxy_config(db, "").await
}

/// [`host_with_tenant_proxy`] with more control-plane settings (TOML).
pub async fn host_with_tenant_proxy_config(db: &TestDb, extra_toml: &str) -> (ControlPlane, Agent) {
    let cp = ControlPlane::start(db, extra_toml);
    let dir = db.data_dir();
    let fake = fake_openclaw(&dir);
    let (token, pin) = cp.join_token(600, 1).await;
    let mut agent = Agent::new(&dir, "agent");
    assert!(agent.join(&cp.url(), &token, &pin).status.success());
    let (fake_bin, tenants_dir) =
        (fake.join("openclaw").display().to_string(), dir.join("tenants").display().to_string());
    let base_port = free_port().to_string();
    agent.run_with(&[
        "--openclaw-bin",
        &fake_bin,
        "--tenants-dir",
        &tenants_dir,
        "--no-tenant-users",
        "--gateway-base-port",
        &base_port,
        "--proxy-listen",
        "127.0.0.1:0",
    ]);
    (cp, agent)
}

/// Waits until the caller's tenant (of `team`, or their own) is running.
pub async fn running(client: &mut TenantServiceClient<Channel>, cred: &Cred, team: &str) -> Tenant {
    let mut last = None;
    for _ in 0..300 {
        let request = cred.request(GetMyTenantRequest { team_id: team.into() });
        last = client.get_my_tenant(request).await.ok().and_then(|r| r.into_inner().tenant);
        if last.as_ref().is_some_and(|t| t.status == TenantStatus::Running as i32) {
            return last.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tenant not running: {last:?}")
}

/// Changes a seeded plan's columns (`sets`: SQL, e.g. "hibernate_after_secs
/// = 2"), as an operator edits the plans table; tenants created after it
/// get the new values.
pub async fn set_plan(db: &TestDb, plan: &str, sets: &str) {
    use sea_orm::{ConnectionTrait, Database};
    let conn = Database::connect(db.url.clone()).await.expect("connect");
    let updated =
        conn.execute_unprepared(&format!("UPDATE plans SET {sets} WHERE name = '{plan}'")).await.expect("update plan");
    assert_eq!(updated.rows_affected(), 1, "plan {plan}");
    conn.close().await.ok();
}

/// Waits until the caller's tenant has `status`; returns it.
pub async fn tenant_in(
    client: &mut TenantServiceClient<Channel>,
    cred: &Cred,
    status: TenantStatus,
    limit: Duration,
) -> Tenant {
    let started = std::time::Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        let request = cred.request(GetMyTenantRequest { team_id: String::new() });
        last = client.get_my_tenant(request).await.ok().and_then(|r| r.into_inner().tenant);
        if last.as_ref().is_some_and(|t| t.status == status as i32) {
            return last.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tenant not {status:?} within {limit:?}: {last:?}")
}
