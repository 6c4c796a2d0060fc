//! A database for one test or bench: a fresh SQLite file or a fresh
//! PostgreSQL database, gone when the [`TestDb`] is dropped.

use std::path::PathBuf;
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};

use crate::TestDir;

/// One test's database and its directory ([`TestDir`]: data dirs, agent
/// state and tenants go there). Dropping it ends what still runs under the
/// directory, then drops the PostgreSQL database, also when the test
/// panicked.
pub struct TestDb {
    pub backend: &'static str,
    pub url: String,
    pg: Option<PgDatabase>,
    dir: TestDir,
}

/// A PostgreSQL database this kit created: the admin URL and its name.
struct PgDatabase {
    admin_url: String,
    name: String,
}

/// CLAWPLANE_TEST_PG_URL, else the local default the test script sets up.
pub fn pg_admin_url() -> String {
    std::env::var("CLAWPLANE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn sqlite_db() -> TestDb {
    let dir = TestDir::new();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
    TestDb { backend: "sqlite", url, pg: None, dir }
}

/// A fresh PostgreSQL database when PostgreSQL is reachable. With
/// CLAWPLANE_REQUIRE_PG=1 (set by the test script and CI) an unreachable
/// PostgreSQL panics instead of returning None.
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
        pg: Some(PgDatabase { admin_url, name }),
        dir: TestDir::new(),
    })
}

impl TestDb {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // First what may still hold connections (a control plane process).
        self.dir.end_processes();
        let Some(PgDatabase { admin_url, name }) = self.pg.take() else { return };
        // Drop runs inside the test's runtime, where blocking on another
        // future is not allowed: a thread of its own with its own runtime.
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let admin = Database::connect(admin_url).await.map_err(|e| e.to_string())?;
                let dropped = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                let _ = admin.close().await;
                dropped.map(|_| ()).map_err(|e| format!("{name}: {e}"))
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("test database not dropped: {err}"),
            Err(_) => eprintln!("test database not dropped: the dropping thread panicked"),
        }
    }
}
