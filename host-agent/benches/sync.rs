//! Sync, end to end: transcript events appended on the host (rows in a
//! per-agent SQLite with OpenClaw's schema, and legacy JSONL lines) until
//! they are queryable in the control plane's database. Prints, for
//! PostgreSQL and SQLite: what the database itself takes in the same run
//! (the same rows loaded into a copy of `messages` with its keys and
//! indexes, by binary COPY on PostgreSQL and by 1,000-row multi-row INSERT
//! on both), sustained throughput draining a backlog with its ratio to that
//! limit and the CPU time each process spent on it, and append-to-queryable
//! latency p50/p99 at a steady 1,000 records/s.
//!
//!     cargo bench -p clawplane-host-agent --bench sync
//!
//! Env: BENCH_BACKLOG (default 100000), BENCH_RATE_SECS (default 10),
//! BENCH_SOURCES (default "sqlite,jsonl"),
//! CLAWPLANE_TEST_PG_URL (admin URL; a fresh database is created).
//! Tenants run on the stand-in `openclaw` (tests/fixtures): OpenClaw itself
//! plays no part in what is measured.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clawplane::store::Store;
use clawplane_test_kit::{pg_admin_url, postgres_db, sqlite_db};

/// The control plane runs in this process: it allocates as the `clawplane`
/// binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{env, limit, proc_stat, spawn_quiet, Stage};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn event_json(session: &str, i: i64) -> String {
    let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    if i % 2 == 0 {
        serde_json::json!({"type": "message", "id": format!("{session}-{i}"), "timestamp": at,
            "message": {"role": "user", "content": format!("question {i} with some ordinary length to it")}})
    } else {
        serde_json::json!({"type": "message", "id": format!("{session}-{i}"), "timestamp": at,
            "message": {"role": "assistant", "content": [{"type": "text", "text": format!("answer {i}, a few words long, like a short reply")}],
                "provider": "local", "model": "fake-model", "stopReason": "stop",
                "usage": {"input": 120, "output": 40, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 160, "cost": {"total": 0.0001}}}})
    }
    .to_string()
}

/// Appends events the way OpenClaw does (SQLite rows or JSONL lines).
enum Writer {
    Sqlite(rusqlite::Connection, String),
    Jsonl(std::fs::File, String),
}

impl Writer {
    fn open(kind: &str, state_dir: &Path, session: &str) -> Writer {
        match kind {
            "sqlite" => {
                let dir = state_dir.join("agents/main/agent");
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join("openclaw-agent.sqlite");
                if !path.exists() {
                    let fixture =
                        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclaw-agent-2026.9.6.sqlite");
                    std::fs::copy(fixture, &path).unwrap();
                }
                let db = rusqlite::Connection::open(&path).unwrap();
                db.busy_timeout(Duration::from_secs(10)).unwrap();
                db.execute_batch("PRAGMA journal_mode=WAL").unwrap();
                let now = now_ms();
                let key = format!("agent:main:bench:{session}");
                db.execute(
                    "INSERT INTO session_nodes (session_key, current_session_id, entry_json, updated_at) VALUES (?1, ?2, '{}', ?3)",
                    rusqlite::params![key, session, now],
                )
                .unwrap();
                db.execute(
                    "INSERT INTO session_windows (session_id, session_key, created_at, updated_at, channel) VALUES (?1, ?2, ?3, ?3, 'bench')",
                    rusqlite::params![session, key, now],
                )
                .unwrap();
                Writer::Sqlite(db, session.to_string())
            }
            _ => {
                let dir = state_dir.join("agents/main/sessions");
                std::fs::create_dir_all(&dir).unwrap();
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("{session}.jsonl")))
                    .unwrap();
                Writer::Jsonl(file, session.to_string())
            }
        }
    }

    /// Appends events [from, to) in one write (one transaction).
    fn append(&mut self, from: i64, to: i64) {
        match self {
            Writer::Sqlite(db, session) => {
                let tx = db.transaction().unwrap();
                {
                    let mut insert = tx
                        .prepare_cached("INSERT INTO transcript_events (session_id, seq, event_json, created_at, event_utf8_bytes) VALUES (?1, ?2, ?3, ?4, ?5)")
                        .unwrap();
                    let now = now_ms();
                    for i in from..to {
                        let json = event_json(session, i);
                        insert.execute(rusqlite::params![&*session, i, json, now, json.len() as i64]).unwrap();
                    }
                }
                tx.execute(
                    "UPDATE session_windows SET updated_at = ?2, transcript_updated_at = ?2 WHERE session_id = ?1",
                    rusqlite::params![&*session, now_ms()],
                )
                .unwrap();
                tx.commit().unwrap();
            }
            Writer::Jsonl(file, session) => {
                let mut text = String::new();
                for i in from..to {
                    text.push_str(&event_json(session, i));
                    text.push('\n');
                }
                file.write_all(text.as_bytes()).unwrap();
            }
        }
    }
}

struct Rig {
    store: Store,
    tenant_id: String,
    state_dir: PathBuf,
    agent: Child,
    agent_cmd: Vec<String>,
}

impl Rig {
    /// Messages stored in one session: its counter, which moves in the
    /// transaction that inserts them (a primary-key read, so polling it
    /// does not load the database the way counting rows would).
    async fn stored(&self, session: &str) -> i64 {
        self.store.session_message_count(&self.tenant_id, session).await.unwrap()
    }

    /// Waits until `target` messages are stored; returns when the first
    /// one was (the agent's start-up until its first batch is committed).
    async fn wait_for(&self, session: &str, target: i64, limit: Duration) -> Duration {
        let started = Instant::now();
        let mut first = None;
        loop {
            let stored = self.stored(session).await;
            if stored > 0 {
                first.get_or_insert_with(|| started.elapsed());
            }
            if stored >= target {
                return first.unwrap_or_default();
            }
            assert!(started.elapsed() < limit, "only {stored} of {target} stored after {limit:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn stop_agent(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }

    fn start_agent(&mut self) {
        self.agent = spawn_quiet(&self.agent_cmd);
    }
}

async fn setup(dir: &Path, database_url: String) -> Rig {
    let stage = Stage::start(dir, Some(database_url.clone()), None).await;
    let agent_cmd = stage.agent_command(&[]);
    let agent = spawn_quiet(&agent_cmd);
    let tenant = stage.running_tenant().await;
    let store = Store::connect(&database_url, 2).await.unwrap();
    Rig { store, state_dir: stage.tenants_dir.join(&tenant.slug).join("state"), tenant_id: tenant.id, agent, agent_cmd }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

/// CPU time (user + system) of a process so far, from /proc/<pid>/stat
/// (utime and stime, fields 14 and 15 of proc(5), in clock ticks of 10 ms).
fn cpu_secs(pid: i32) -> f64 {
    proc_stat(pid).map_or(0.0, |f| {
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        (ticks(11) + ticks(12)) as f64 / 100.0
    })
}

/// CPU time of every `postgres` process on the machine (the server's
/// backends, including other clients': a figure for a quiet machine).
fn postgres_cpu_secs() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .map(cpu_secs)
        .sum()
}

/// CPU seconds of (this process: the control plane, the agent, PostgreSQL).
fn cpu_split(agent: i32) -> [f64; 3] {
    [cpu_secs(std::process::id() as i32), cpu_secs(agent), postgres_cpu_secs()]
}

async fn run_backend(name: &str, database_url: String, dir: &Path) {
    let backlog = env("BENCH_BACKLOG", 100_000) as i64;
    let rate_secs = env("BENCH_RATE_SECS", 10) as i64;
    let mut rig = setup(dir, database_url.clone()).await;
    // What the database takes, measured before the drain on the same rows.
    let limit = limit::measure(&database_url, &rig.tenant_id, backlog).await;
    println!("{name:<10} limit  {}", limit.describe(backlog));
    // BENCH_SOURCES=jsonl,sqlite runs them the other way round: what a
    // figure owes to its place in the run (a fuller table) and not to
    // its source shows that way.
    let sources = std::env::var("BENCH_SOURCES").unwrap_or_else(|_| "sqlite,jsonl".into());
    for source in sources.split(',').filter(|s| ["sqlite", "jsonl"].contains(s)) {
        // Throughput: a backlog written while the agent is down, drained.
        rig.stop_agent();
        let session = format!("backlog-{source}");
        let mut writer = Writer::open(source, &rig.state_dir, &session);
        for from in (0..backlog).step_by(10_000) {
            writer.append(from, (from + 10_000).min(backlog));
        }
        drop(writer);
        let started = Instant::now();
        rig.start_agent();
        let before = cpu_split(rig.agent.id() as i32);
        let first = rig.wait_for(&session, backlog, Duration::from_secs(600)).await;
        let drained = started.elapsed();
        let after = cpu_split(rig.agent.id() as i32);
        let rate = backlog as f64 / drained.as_secs_f64();
        println!(
            "{name:<10} {source:<6} backlog of {backlog}: drained in {:.2} s = {rate:.0} records/s (agent start included); {}",
            drained.as_secs_f64(),
            limit.ratio(rate)
        );
        let [cp, agent, pg] = [0, 1, 2].map(|i| after[i] - before[i]);
        println!(
            "{name:<10} {source:<6} drain CPU: control plane {cp:.2} s, agent {agent:.2} s, postgres {pg:.2} s, in {:.2} s on {} cores; first batch stored {:.2} s after the agent's start, then {:.0} records/s",
            drained.as_secs_f64(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            first.as_secs_f64(),
            backlog as f64 / (drained - first).as_secs_f64()
        );

        // Latency at 1,000 records/s: 10 records every 10 ms.
        let session = format!("steady-{source}");
        let mut writer = Writer::open(source, &rig.state_dir, &session);
        let total = 1_000 * rate_secs;
        let appended_at = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::with_capacity(total as usize)));
        let appended = appended_at.clone();
        let producer = std::thread::spawn(move || {
            let start = Instant::now();
            for tick in 0..(total / 10) {
                let due = start + Duration::from_millis(tick as u64 * 10);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                writer.append(tick * 10, tick * 10 + 10);
                let now = Instant::now();
                appended.lock().unwrap().extend(std::iter::repeat_n(now, 10));
            }
        });
        let mut latencies = Vec::with_capacity(total as usize);
        let mut seen = 0i64;
        let limit = Instant::now() + Duration::from_secs(rate_secs as u64 + 120);
        while seen < total {
            assert!(Instant::now() < limit, "steady run stalled at {seen} of {total}");
            let stored = rig.stored(&session).await;
            let now = Instant::now();
            if stored > seen {
                let appended = appended_at.lock().unwrap();
                let upto = (stored as usize).min(appended.len());
                for at in &appended[seen as usize..upto] {
                    latencies.push(now.duration_since(*at));
                }
                seen = upto as i64;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        producer.join().unwrap();
        latencies.sort();
        println!(
            "{name:<10} {source:<6} steady 1000 records/s for {rate_secs} s: append-to-queryable p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0)
        );
    }
    rig.stop_agent();
    rig.store.close().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // Dropping each database also ends the gateways its agent left.
        match postgres_db().await {
            Some(db) => run_backend("postgres", db.url.clone(), &db.data_dir()).await,
            None => println!("postgres   skipped: {} unreachable", pg_admin_url()),
        }
        let db = sqlite_db();
        run_backend("sqlite", db.url.clone(), &db.data_dir()).await;
    });
}
