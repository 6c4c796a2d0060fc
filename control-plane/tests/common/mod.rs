//! Shared harness for the black-box tests: per-test databases on SQLite and
//! PostgreSQL, a real server on 127.0.0.1 with an ephemeral port, and
//! credentials (JWTs signed with the fixture keys, shared-secret headers).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clawplane::config::{Config, ServeArgs};
use clawplane::store::Store;
use clawplane::Server;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SHARED_SECRET: &str = "test-shared-secret-0123456789";
pub const HS_SECRET: &str = "test-hs256-secret-0123456789abcdef0123456789";
pub const ISSUER: &str = "https://sso.test";
pub const AUDIENCE: &str = "clawplane";

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A database for one test: a fresh SQLite file or a fresh PostgreSQL
/// database, dropped by [`TestDb::cleanup`].
pub struct TestDb {
    pub backend: &'static str,
    pub url: String,
    dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

fn pg_admin_url() -> String {
    std::env::var("CLAWPLANE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// SQLite always; PostgreSQL when reachable. With CLAWPLANE_REQUIRE_PG=1
/// (set by the test script and CI) an unreachable PostgreSQL fails the test
/// instead of being skipped.
pub async fn test_databases() -> Vec<TestDb> {
    let mut out = vec![sqlite_db()];
    if let Some(db) = postgres_db().await {
        out.push(db);
    }
    out
}

pub fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
    TestDb { backend: "sqlite", url, dir, pg: None }
}

pub async fn postgres_db() -> Option<TestDb> {
    let admin_url = pg_admin_url();
    let connected = tokio::time::timeout(Duration::from_secs(5), Database::connect(admin_url.clone())).await;
    let admin = match connected {
        Ok(Ok(db)) => db,
        other => {
            let reason = match other {
                Ok(Err(err)) => err.to_string(),
                _ => "timed out".into(),
            };
            if std::env::var("CLAWPLANE_REQUIRE_PG").as_deref() == Ok("1") {
                panic!("PostgreSQL at {admin_url} is required (CLAWPLANE_REQUIRE_PG=1) but unreachable: {reason}");
            }
            eprintln!("\n!!! SKIPPING PostgreSQL: {admin_url} unreachable ({reason}) !!!\n");
            return None;
        }
    };
    let name = format!("clawplane_test_{}", uuid::Uuid::new_v4().simple());
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
    let _ = admin.close().await;
    let base = admin_url.rsplit_once('/').map(|(base, _)| base.to_string()).unwrap();
    Some(TestDb {
        backend: "postgres",
        url: format!("{base}/{name}"),
        dir: tempfile::tempdir().expect("tempdir"),
        pg: Some((admin_url, name)),
    })
}

impl TestDb {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, 8).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    pub async fn cleanup(self) {
        if let Some((admin_url, name)) = &self.pg {
            if let Ok(admin) = Database::connect(admin_url.clone()).await {
                let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                let _ = admin.close().await;
            }
        }
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
    pub store: Store,
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
        let store = server.store();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer { addr, store, stop: Some(stop), task }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.expect("connect")
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

/// How a test call authenticates.
#[derive(Clone, Debug)]
pub enum Cred {
    None,
    Bearer(String),
    Shared { secret: String, user: String, teams: String },
}

impl Cred {
    pub fn admin() -> Cred {
        Cred::Bearer(ADMIN_TOKEN.into())
    }

    /// A valid SSO token for `user` in `teams`.
    pub fn user(user: &str, teams: &[&str]) -> Cred {
        Cred::Bearer(hs256(claims(user, teams)))
    }

    pub fn shared(user: &str) -> Cred {
        Cred::Shared { secret: SHARED_SECRET.into(), user: user.into(), teams: String::new() }
    }

    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        match self {
            Cred::None => {}
            Cred::Bearer(token) => {
                metadata.insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
            }
            Cred::Shared { secret, user, teams } => {
                metadata.insert("x-shared-secret", MetadataValue::try_from(secret.as_str()).unwrap());
                metadata.insert("x-user-id", MetadataValue::try_from(user.as_str()).unwrap());
                metadata.insert("x-user-email", MetadataValue::try_from(format!("{user}@example.com")).unwrap());
                if !teams.is_empty() {
                    metadata.insert("x-user-teams", MetadataValue::try_from(teams.as_str()).unwrap());
                }
            }
        }
        request
    }
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Valid claims for `user`, expiring in an hour.
pub fn claims(user: &str, teams: &[&str]) -> Value {
    json!({
        "sub": user,
        "email": format!("{user}@example.com"),
        "teams": teams,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 3600,
    })
}

pub fn hs256(claims: Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(HS_SECRET.as_bytes()), None, &claims)
}

pub fn rs256(claims: &Value, kid: Option<&str>) -> String {
    let pem = std::fs::read(fixture("rsa_private.pem")).unwrap();
    sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(&pem).unwrap(), kid, claims)
}

pub fn es256(claims: &Value, kid: Option<&str>) -> String {
    let pem = std::fs::read(fixture("ec_private.pem")).unwrap();
    sign(Algorithm::ES256, &EncodingKey::from_ec_pem(&pem).unwrap(), kid, claims)
}

pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key).unwrap()
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

/// A TCP connection to `addr` from the loopback address `source` (any of
/// 127.0.0.0/8): a client of its own, as per-address limits see it.
pub async fn connect_from(source: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(addr).await
}
