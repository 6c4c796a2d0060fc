use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::{CreateJoinTokenRequest, HostStatus, ListHostsRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::bin;
use crate::{auth, free_port, wait_for_port, TestDb};

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
        ControlPlane::start_in(db, "cp", "clawplane.toml", extra_toml)
    }

    /// One of several control planes on the same database (PostgreSQL:
    /// SQLite serves one), each with its own data directory, config file,
    /// log (`<name>.log`), ports and admin token.
    pub fn start_replica(db: &TestDb, name: &str, extra_toml: &str) -> ControlPlane {
        ControlPlane::start_in(db, name, &format!("{name}.toml"), extra_toml)
    }

    fn start_in(db: &TestDb, name: &str, config_file: &str, extra_toml: &str) -> ControlPlane {
        let data_dir = db.data_dir().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let config = db.data_dir().join(config_file);
        std::fs::write(&config, format!("{FAST_HOSTS}{extra_toml}")).unwrap();
        let mut cp = ControlPlane {
            log: db.data_dir().join(format!("{name}.log")),
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
            .env("CLAWPLANE_SHARED_SECRET", auth::SHARED_SECRET)
            // SSO as the bridge has it: test JWTs (auth::hs256) sign in.
            .env("CLAWPLANE_JWT_HS256_SECRET", auth::HS_SECRET)
            .env("CLAWPLANE_JWT_ISSUER", auth::ISSUER)
            .env("CLAWPLANE_JWT_AUDIENCE", auth::AUDIENCE)
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

    /// SIGTERM, then up to `limit` for the process to exit; None if it is
    /// still running then (it is killed when the harness drops).
    pub fn terminate(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Starts a stopped control plane again on the same data and ports.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the control plane is still running");
        self.spawn();
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token")).unwrap().trim().to_string()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.api_port)).unwrap().connect().await.unwrap()
    }

    pub async fn hosts(&self) -> HostServiceClient<Channel> {
        HostServiceClient::new(self.channel().await)
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
