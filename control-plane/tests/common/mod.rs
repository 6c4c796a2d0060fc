//! Shared harness for the black-box tests: a real server on 127.0.0.1 with
//! an ephemeral port on a per-test database, and credentials (JWTs signed
//! with the fixture keys). Databases, test credentials and the rest come
//! from the test kit.
#![allow(dead_code)]

pub mod fake_agent;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clawplane::config::{Config, ServeArgs};
use clawplane::store::Store;
use clawplane::Server;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub use clawplane_test_kit::auth::*;
#[allow(unused_imports)]
pub use clawplane_test_kit::{connect_from, each_backend, free_port, postgres_db, sqlite_db, TestDb};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

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

/// Server settings for tests: HS256 JWTs with issuer and audience, the
/// shared secret and the admin token.
pub fn serve_args(db: &TestDb) -> ServeArgs {
    let mut args = ServeArgs {
        data_dir: Some(db.data_dir()),
        database_url: Some(db.url.clone()),
        api_listen: Some("127.0.0.1:0".into()),
        agent_listen: Some("127.0.0.1:0".into()),
        base_domain: Some("claw.test".into()),
        ..Default::default()
    };
    args.auth.admin_token = Some(ADMIN_TOKEN.into());
    args.auth.shared_secret = Some(SHARED_SECRET.into());
    args.auth.jwt_hs256_secret = Some(HS_SECRET.into());
    args.auth.jwt_issuer = Some(ISSUER.into());
    args.auth.jwt_audience = Some(AUDIENCE.into());
    args
}

/// A control plane running in this process on an ephemeral loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The agent listener (mutual TLS) and the CA pin hosts join with.
    pub agent_addr: SocketAddr,
    pub ca_pin: String,
    pub store: Store,
    /// The fleet, for driving its periodic work (e.g. the period sweep) at
    /// a chosen time.
    pub fleet: std::sync::Arc<clawplane::fleet::Fleet>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start(args: ServeArgs) -> TestServer {
        Self::start_with(args, |_| {}).await
    }

    pub async fn start_with(args: ServeArgs, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::load(&args).expect("valid test config");
        adjust(&mut config);
        let server = Server::bind(config).await.expect("server binds");
        let addr = server.local_addr();
        let (agent_addr, ca_pin) = (server.agent_addr(), server.ca_pin());
        let store = server.store();
        let fleet = server.fleet();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer { addr, agent_addr, ca_pin, store, fleet, stop: Some(stop), task }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.expect("connect")
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

pub fn rs256(claims: &Value, kid: Option<&str>) -> String {
    let pem = std::fs::read(fixture("rsa_private.pem")).unwrap();
    sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(&pem).unwrap(), kid, claims)
}

pub fn es256(claims: &Value, kid: Option<&str>) -> String {
    let pem = std::fs::read(fixture("ec_private.pem")).unwrap();
    sign(Algorithm::ES256, &EncodingKey::from_ec_pem(&pem).unwrap(), kid, claims)
}

/// The test process hosts the server: its resident memory stays far below
/// what an input-sized allocation (a period per day since year 1, say)
/// would take.
pub fn assert_memory_bounded() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(kib < 512 * 1024, "resident memory {kib} KiB");
}
