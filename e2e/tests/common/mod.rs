//! Real processes on 127.0.0.1: the `clawplane` control plane and
//! `clawplane-agent`, driven the way an operator would.
#![allow(dead_code)]

#[path = "../../../control-plane/tests/common/mod.rs"]
pub mod cp;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{
    CreateJoinTokenRequest, GetMyTenantRequest, HostStatus, ListHostsRequest, Tenant, TenantStatus,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[allow(unused_imports)]
pub use cp::{sqlite_db, test_databases, TestDb};

pub fn bin(name: &str) -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_clawplane-agent"));
    let path = agent.parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (or `cargo build --workspace --bins` first)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for_port(port: u16, child: &mut Child) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "process exited before listening on {port}");
        assert!(started.elapsed() < Duration::from_secs(60), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` every 100 ms for up to `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `clawplane serve` process with its own data directory and ports.
pub struct ControlPlane {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub api_port: u16,
    pub agent_port: u16,
    config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

/// Short intervals so the tests see liveness and renewal within seconds.
pub const FAST_HOSTS: &str = "[hosts]\nheartbeat_interval = \"1s\"\nlease = \"4s\"\n";

impl ControlPlane {
    pub fn start(db: &TestDb, extra_toml: &str) -> ControlPlane {
        let data_dir = db.data_dir().join("cp");
        std::fs::create_dir_all(&data_dir).unwrap();
        let config = db.data_dir().join("clawplane.toml");
        std::fs::write(&config, format!("{FAST_HOSTS}{extra_toml}")).unwrap();
        let mut cp = ControlPlane {
            log: db.data_dir().join("cp.log"),
            data_dir,
            database_url: db.url.clone(),
            api_port: free_port(),
            agent_port: free_port(),
            config,
            child: None,
        };
        cp.spawn();
        cp
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut child = Command::new(bin("clawplane"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--database-url", &self.database_url])
            .args(["--api-listen", &format!("127.0.0.1:{}", self.api_port)])
            .args(["--base-domain", "claw.test"])
            .args(["--agent-listen", &format!("127.0.0.1:{}", self.agent_port)])
            .env_remove("CLAWPLANE_ADMIN_TOKEN")
            .env("CLAWPLANE_SHARED_SECRET", cp::SHARED_SECRET)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(self.api_port, &mut child);
        wait_for_port(self.agent_port, &mut child);
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.agent_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token")).unwrap().trim().to_string()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.api_port)).unwrap().connect().await.unwrap()
    }

    pub async fn hosts(&self) -> HostServiceClient<Channel> {
        let channel =
            Channel::from_shared(format!("http://127.0.0.1:{}", self.api_port)).unwrap().connect().await.unwrap();
        HostServiceClient::new(channel)
    }

    pub fn admin<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let value = MetadataValue::try_from(format!("Bearer {}", self.admin_token())).unwrap();
        request.metadata_mut().insert("authorization", value);
        request
    }

    /// A join token: returns (token, pin).
    pub async fn join_token(&self, ttl_secs: i64, max_uses: i32) -> (String, String) {
        let response = self
            .hosts()
            .await
            .create_join_token(self.admin(CreateJoinTokenRequest {
                ttl: Some(prost_types::Duration { seconds: ttl_secs, nanos: 0 }),
                max_uses,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        (response.token, response.ca_pin)
    }

    pub async fn host_status(&self, host_id: &str) -> Option<(HostStatus, bool)> {
        let hosts =
            self.hosts().await.list_hosts(self.admin(ListHostsRequest::default())).await.ok()?.into_inner().hosts;
        hosts.into_iter().find(|h| h.id == host_id).map(|h| (HostStatus::try_from(h.status).unwrap(), h.connected))
    }

    /// Runs an operator subcommand (`clawplane hosts ...`, `clawplane token ...`).
    pub fn operator(&self, args: &[&str]) -> Output {
        Command::new(bin("clawplane"))
            .args(args)
            .args(["--server", &format!("http://127.0.0.1:{}", self.api_port)])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env_remove("CLAWPLANE_ADMIN_TOKEN")
            .output()
            .unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One host's agent: a state directory and, while running, a process.
pub struct Agent {
    pub state_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    pub fn new(dir: &Path, name: &str) -> Agent {
        Agent { state_dir: dir.join(name), child: None, log: dir.join(format!("{name}.log")) }
    }

    pub fn join(&self, url: &str, token: &str, pin: &str) -> Output {
        Command::new(bin("clawplane-agent"))
            .args(["join", "--control-plane", url, "--token", token, "--ca-pin", pin, "--state-dir"])
            .arg(&self.state_dir)
            .output()
            .unwrap()
    }

    pub fn host_id(&self) -> String {
        let identity: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.state_dir.join("identity.json")).unwrap()).unwrap();
        identity["host_id"].as_str().unwrap().to_string()
    }

    pub fn run(&mut self) {
        self.run_with(&[]);
    }

    pub fn run_with(&mut self, extra: &[&str]) {
        self.run_env(extra, &[]);
    }

    pub fn run_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(bin("clawplane-agent"))
            .args(["run", "--state-dir"])
            .arg(&self.state_dir)
            .args(extra)
            // OpenClaw only where a test asks for it with --openclaw-bin.
            .env_remove("CLAWPLANE_OPENCLAW_BIN")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Exit status once the agent stops on its own, if within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Command ids in the order the agent executed them.
    pub fn executed(&self) -> Vec<String> {
        std::fs::read_to_string(self.state_dir.join("executed.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A tiny OpenAI-compatible model server on 127.0.0.1 for real OpenClaw
/// turns: every `POST /v1/chat/completions` answers `reply` with usage
/// 42 prompt / 7 completion tokens, streamed as SSE when asked (OpenClaw
/// always asks, with `include_usage`). Returns the port; the server lives
/// as long as the test's runtime.
pub async fn fake_model_server(reply: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
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
                let usage = serde_json::json!({"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49});
                let response = if body["stream"].as_bool() == Some(true) {
                    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
                        serde_json::json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                            "model": "fake-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                    };
                    let events = [
                        chunk(serde_json::json!({"role": "assistant", "content": reply}), serde_json::Value::Null),
                        chunk(serde_json::json!({}), "stop".into()),
                        serde_json::json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                            "model": "fake-model", "choices": [], "usage": usage}),
                    ];
                    let mut sse: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
                    sse.push_str("data: [DONE]\n\n");
                    format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n{sse}")
                } else {
                    let json = serde_json::json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1,
                        "model": "fake-model", "usage": usage, "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": reply}}]})
                    .to_string();
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}", json.len())
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    port
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

/// A `clawplane-bridge` process in front of a test control plane, with a
/// bridge identity issued by `clawplane ca issue-bridge` and the test SSO
/// (HS256) settings.
pub struct BridgeProcess {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub identity: PathBuf,
    pub log: PathBuf,
}

impl BridgeProcess {
    pub fn start(cp: &ControlPlane, dir: &Path) -> BridgeProcess {
        BridgeProcess::start_with(cp, dir, &[])
    }

    pub fn start_with(cp: &ControlPlane, dir: &Path, extra: &[&str]) -> BridgeProcess {
        BridgeProcess::start_on(cp, dir, free_port(), extra)
    }

    /// On a given port (e.g. 443 for a browser), with extra flags.
    pub fn start_on(cp: &ControlPlane, dir: &Path, port: u16, extra: &[&str]) -> BridgeProcess {
        let identity = dir.join("bridge-identity");
        let issued = Command::new(bin("clawplane"))
            .args(["ca", "issue-bridge", "--name", "edge-1", "--out"])
            .arg(&identity)
            .arg("--data-dir")
            .arg(&cp.data_dir)
            .output()
            .unwrap();
        assert!(issued.status.success(), "{}", text(&issued));
        let admin_port = free_port();
        let log = dir.join(format!("bridge-{port}.log"));
        let mut child = Command::new(bin("clawplane-bridge"))
            .args(["--control-plane", &format!("http://127.0.0.1:{}", cp.api_port)])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--base-domain", "claw.test", "--identity-dir"])
            .arg(&identity)
            .args(extra)
            .env("CLAWPLANE_ADMIN_TOKEN", cp.admin_token())
            .env("CLAWPLANE_JWT_HS256_SECRET", cp::HS_SECRET)
            .env("CLAWPLANE_JWT_ISSUER", cp::ISSUER)
            .env("CLAWPLANE_JWT_AUDIENCE", cp::AUDIENCE)
            .env("RUST_LOG", "info,clawplane_bridge=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child);
        BridgeProcess { child, port, admin_port, identity, log }
    }
}

impl BridgeProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 GET with `Connection: close`; returns (status, head, body).
pub async fn http(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    http_from("127.0.0.1", port, host, path, headers).await
}

/// A connection to 127.0.0.1:`port` from the loopback address `source`.
pub async fn connect_from(source: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    cp::connect_from(source, ([127, 0, 0, 1], port).into()).await
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
    let cp = ControlPlane::start(db, "");
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
pub async fn running(client: &mut TenantServiceClient<Channel>, cred: &cp::Cred, team: &str) -> Tenant {
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

/// The stand-in `openclaw` in `<dir>/fake`, answering normally; returns
/// its folder.
pub fn fake_openclaw(dir: &std::path::Path) -> PathBuf {
    let fake = dir.join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-openclaw"), fake.join("openclaw")).unwrap();
    std::fs::write(fake.join("fake-mode"), "ok").unwrap();
    fake
}
