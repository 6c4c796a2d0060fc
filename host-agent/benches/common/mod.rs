//! What the host-agent benches share: an in-process control plane, an
//! enrolled agent state directory, the stand-in `openclaw`, and a tenant
//! running on it.
#![allow(dead_code)]

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
        config.rate_per_caller = clawplane::rate::Rate::new(1_000_000_000, 1_000_000_000);
        config.rate_per_address = config.rate_per_caller;
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
