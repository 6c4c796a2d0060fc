//! What the host-agent benches share: an in-process control plane, an
//! enrolled agent state directory, the stand-in `openclaw`, and a tenant
//! running on it.
#![allow(dead_code)]

pub mod limit;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clawplane::config::{Config, ServeArgs};
use clawplane::Server;
use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{CreateJoinTokenRequest, CreateTenantRequest, GetMyTenantRequest, Tenant, TenantStatus};
use clawplane_test_kit::fake_openclaw;
pub use clawplane_test_kit::free_port;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub const SHARED: &str = "bench-shared-secret-0123456789";

pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn request<T>(headers: &[(&'static str, String)], message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in headers {
        request.metadata_mut().insert(*name, MetadataValue::try_from(value.as_str()).unwrap());
    }
    request
}

/// The bench user, by shared secret.
pub fn user() -> [(&'static str, String); 2] {
    [("x-shared-secret", SHARED.to_string()), ("x-user-id", "bench".to_string())]
}

/// A control plane serving in this process and an agent state dir joined
/// to it.
pub struct Stage {
    pub api: SocketAddr,
    pub channel: Channel,
    pub admin_token: String,
    pub data_dir: PathBuf,
    pub agent_state: PathBuf,
    pub fake_openclaw: PathBuf,
    pub tenants_dir: PathBuf,
}

impl Stage {
    pub async fn start(dir: &Path, database_url: Option<String>, base_domain: Option<&str>) -> Stage {
        Stage::start_configured(dir, database_url, base_domain, |_| {}).await
    }

    /// [`Stage::start`] with the control plane's config changed first.
    pub async fn start_configured(
        dir: &Path,
        database_url: Option<String>,
        base_domain: Option<&str>,
        configure: impl FnOnce(&mut Config),
    ) -> Stage {
        let data_dir = dir.join("cp");
        let mut args = ServeArgs {
            data_dir: Some(data_dir.clone()),
            api_listen: Some("127.0.0.1:0".into()),
            agent_listen: Some("127.0.0.1:0".into()),
            database_url,
            base_domain: base_domain.map(String::from),
            ..Default::default()
        };
        args.auth.shared_secret = Some(SHARED.into());
        let mut config = Config::load(&args).unwrap();
        // The limiters run but never bite.
        config.rate_per_caller = clawplane_edge::rate::Rate::new(1_000_000_000, 1_000_000_000);
        config.rate_per_address = config.rate_per_caller;
        configure(&mut config);
        let server = Server::bind(config).await.unwrap();
        let (api, agent_addr, pin) = (server.local_addr(), server.agent_addr(), server.ca_pin());
        let admin_token = std::fs::read_to_string(data_dir.join("admin-token")).unwrap().trim().to_string();
        tokio::spawn(server.run(std::future::pending()));
        let channel = Channel::from_shared(format!("http://{api}")).unwrap().connect().await.unwrap();
        let admin = [("authorization", format!("Bearer {admin_token}"))];
        let token = HostServiceClient::new(channel.clone())
            .create_join_token(request(&admin, CreateJoinTokenRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .token;
        let agent_state = dir.join("agent");
        let joined = Command::new(env!("CARGO_BIN_EXE_clawplane-agent"))
            .args(["join", "--control-plane", &format!("https://{agent_addr}"), "--token", &token, "--ca-pin", &pin])
            .arg("--state-dir")
            .arg(&agent_state)
            .output()
            .unwrap();
        assert!(joined.status.success(), "{}", String::from_utf8_lossy(&joined.stderr));
        let fake = fake_openclaw(dir);
        Stage {
            api,
            channel,
            admin_token,
            data_dir,
            agent_state,
            fake_openclaw: fake.join("openclaw"),
            tenants_dir: dir.join("tenants"),
        }
    }

    /// `clawplane-agent run` with the stand-in OpenClaw, then `extra`.
    pub fn agent_command(&self, extra: &[&str]) -> Vec<String> {
        self.agent_command_with(&self.fake_openclaw, extra)
    }

    /// `clawplane-agent run` with the given `openclaw`, then `extra`.
    pub fn agent_command_with(&self, openclaw: &Path, extra: &[&str]) -> Vec<String> {
        let mut command: Vec<String> = vec![
            env!("CARGO_BIN_EXE_clawplane-agent").into(),
            "run".into(),
            "--state-dir".into(),
            self.agent_state.display().to_string(),
            "--openclaw-bin".into(),
            openclaw.display().to_string(),
            "--tenants-dir".into(),
            self.tenants_dir.display().to_string(),
            "--no-tenant-users".into(),
            "--gateway-base-port".into(),
            free_port().to_string(),
        ];
        command.extend(extra.iter().map(|a| a.to_string()));
        command
    }

    /// Ends a tenant's stand-in gateway (its whole process group), so a
    /// bench can serve the port itself.
    pub fn kill_gateway(&self, slug: &str) {
        if let Ok(pid) = std::fs::read_to_string(self.tenants_dir.join(slug).join("gateway.pid")) {
            unsafe { libc::kill(-pid.trim().parse::<i32>().unwrap(), libc::SIGKILL) };
        }
    }

    /// The tenant's gateway port, its stand-in gateway ended, for a bench
    /// to serve itself.
    pub async fn take_gateway_port(&self, slug: &str, port: u16) -> tokio::net::TcpListener {
        loop {
            self.kill_gateway(slug);
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => return listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Creates the bench user's tenant and waits until it runs.
    pub async fn running_tenant(&self) -> Tenant {
        let mut tenants = TenantServiceClient::new(self.channel.clone());
        let user = user();
        tenants
            .create_tenant(request(&user, CreateTenantRequest { plan: "pro".into(), ..Default::default() }))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        loop {
            assert!(started.elapsed() < Duration::from_secs(300), "the bench tenant never came up");
            let t = tenants
                .get_my_tenant(request(&user, GetMyTenantRequest::default()))
                .await
                .ok()
                .and_then(|r| r.into_inner().tenant);
            match t {
                Some(t) if t.status == TenantStatus::Running as i32 => return t,
                Some(t) if t.status == TenantStatus::Failed as i32 => panic!("{}", t.status_message),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Spawns a command vector with its output discarded.
pub fn spawn_quiet(command: &[String]) -> Child {
    Command::new(&command[0])
        .args(&command[1..])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The fields of `/proc/<pid>/stat` after "pid (comm)": the process state
/// (field 3 of proc(5)) comes first. None once the process is gone.
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 2..].split_whitespace().map(String::from).collect())
}

/// Signs the bridge's test SSO tokens.
pub const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef0123456789";
/// The user's address as a load balancer in front would report it. The
/// real gateway refuses proxied requests it can only attribute to
/// loopback (`proxy_attribution_required`), and every client here is on
/// loopback; the bridge and nginx trust the front on 127.0.0.1.
pub const CLIENT_IP: &str = "203.0.113.7";

pub fn wait_port(port: u16) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child ended (SIGTERM, then waited for) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM, so nginx's master takes its workers down too.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// The bench user's SSO token for the bridge, valid for an hour.
pub fn bench_jwt() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "bench", "iat": now, "exp": now + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// `clawplane-bridge` (from `bins`, next to the bench's agent) in front of
/// the stage's control plane for `*.bench.test`, with an identity issued
/// by the stage's CA; its limiters run but never bite. Returned once it
/// listens.
pub fn start_bridge(stage: &Stage, dir: &Path, bins: &Path, worker_threads: u64) -> Bridge {
    let (bridge_bin, cp_bin) = (bins.join("clawplane-bridge"), bins.join("clawplane"));
    for bin in [&bridge_bin, &cp_bin] {
        assert!(bin.exists(), "{} is missing: cargo build --release --workspace --bins", bin.display());
    }
    let identity = dir.join("bridge-identity");
    let issued = Command::new(&cp_bin)
        .args(["ca", "issue-bridge", "--name", "bench", "--out"])
        .arg(&identity)
        .arg("--data-dir")
        .arg(&stage.data_dir)
        .output()
        .unwrap();
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let (bridge_port, admin_port) = (free_port(), free_port());
    let bridge = Killed(
        Command::new(&bridge_bin)
            .args(["--control-plane", &format!("http://{}", stage.api), "--base-domain", "bench.test"])
            .args([
                "--listen",
                &format!("127.0.0.1:{bridge_port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
                "--trusted-front",
                "127.0.0.1",
                "--worker-threads",
                &worker_threads.to_string(),
                "--rate-per-address",
                "1000000000",
                "--burst-per-address",
                "1000000000",
                "--rate-per-tenant",
                "1000000000",
                "--burst-per-tenant",
                "1000000000",
            ])
            .arg("--identity-dir")
            .arg(&identity)
            .env("CLAWPLANE_ADMIN_TOKEN", &stage.admin_token)
            .env("CLAWPLANE_JWT_HS256_SECRET", JWT_SECRET)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(bridge_port);
    Bridge { process: bridge, port: bridge_port, admin_port, identity }
}

/// A running bridge: its ports and the identity it holds.
pub struct Bridge {
    pub process: Killed,
    pub port: u16,
    pub admin_port: u16,
    pub identity: PathBuf,
}
