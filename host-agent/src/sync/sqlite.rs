//! Reader of OpenClaw's per-agent database
//! (`agents/<id>/agent/openclaw-agent.sqlite`, WAL mode, schema 23).
//! Opened read-only for one short read at a time: in WAL mode readers never
//! block the gateway's writes, and no read transaction stays open long
//! enough to hold back its checkpoints. Opened as the database's owner
//! ([`crate::openclaw::database`]).
use std::io::Read;
use std::path::Path;

use clawplane_proto::v1::{sync_record, SessionMeta, SyncRecord, SyncSource};
use rusqlite::OptionalExtension;

use super::cursors::{CursorKey, Cursors, Position};
use super::event;
use super::reading::{millis, Reading};

/// The agent schema this reader understands.
pub const SCHEMA_VERSION: i64 = 23;
/// Stream of a database's session metadata.
pub const SESSIONS_STREAM: &str = "session_windows";
/// An event larger than this is not decompressed (OpenClaw's own cap is
/// 4 MiB per event).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("agent database has schema version {0}; this agent reads version {SCHEMA_VERSION} (OpenClaw 2026.9.x)")]
    UnsupportedSchema(i64),
    #[error("agent database has no schema_meta row; it is not an OpenClaw agent database")]
    NoSchemaMeta,
    /// The gateway has created the file but not its schema yet (a tenant's
    /// first turn); its commit sets off the next read.
    #[error("agent database has no schema yet")]
    NoSchemaYet,
    #[error("cannot read the agent database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

struct Window {
    session_id: String,
    session_key: String,
    updated_at: i64,
    generation: String,
}

/// Whether the database is in WAL mode yet, from its file header (bytes 18
/// and 19 are 2 in WAL mode, 1 in rollback mode). Until the gateway has
/// made it so (a new database, mid-creation), a reader's lock can fail the
/// gateway's own switch to WAL or its schema commit; the WAL file it then
/// creates sets off the read.
pub fn in_wal_mode(path: &Path) -> bool {
    let mut header = [0u8; 20];
    std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut header)).is_ok()
        && header.starts_with(b"SQLite format 3\0")
        && header[18] == 2
        && header[19] == 2
}

/// Reads what is new in one agent database, at most `budget` records.
pub fn read(
    path: &Path,
    owner: Option<(u32, u32)>,
    tenant_id: &str,
    agent_id: &str,
    cursors: &Cursors,
    budget: usize,
) -> Result<Reading, SqliteError> {
    let db = crate::openclaw::database::open_read_only(path, owner)?;
    let created: bool = db.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_meta'",
        [],
        |r| r.get(0),
    )?;
    if !created {
        return Err(SqliteError::NoSchemaYet);
    }
    let version: Option<i64> = db
        .query_row("SELECT schema_version FROM schema_meta WHERE role = 'agent' ORDER BY meta_key LIMIT 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    match version {
        None => return Err(SqliteError::NoSchemaMeta),
        Some(SCHEMA_VERSION) => {}
        Some(other) => return Err(SqliteError::UnsupportedSchema(other)),
    }
    let mut reading = Reading::default();

    // Session metadata changed since the cursor, oldest change first.
    let meta_key = CursorKey::new(tenant_id, agent_id, SyncSource::Sqlite, SESSIONS_STREAM);
    let meta_from = cursors.read(&meta_key).map(|p| p.position).unwrap_or(-1);
    let mut windows = Vec::new();
    let mut meta_to = meta_from;
    {
        let mut statement = db.prepare(
            "SELECT w.session_id, w.session_key, w.channel, w.chat_type, w.model, w.model_provider, \
                    w.created_at, w.updated_at, coalesce(g.generation, '') \
             FROM session_windows w LEFT JOIN transcript_rewrite_watermarks g ON g.session_id = w.session_id \
             ORDER BY w.updated_at, w.session_id",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let window = Window {
                session_id: row.get(0)?,
                session_key: row.get(1)?,
                updated_at: row.get(7)?,
                generation: row.get(8)?,
            };
            if window.updated_at > meta_from {
                let meta = SessionMeta {
                    channel: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    chat_type: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    model: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    provider: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    started_at: Some(millis(row.get(6)?)),
                    last_activity_at: Some(millis(window.updated_at)),
                };
                reading.records.push(SyncRecord {
                    tenant_id: tenant_id.into(),
                    agent_id: agent_id.into(),
                    source: SyncSource::Sqlite as i32,
                    session_key: window.session_key.clone(),
                    session_id: window.session_id.clone(),
                    position: window.updated_at,
                    body: Some(sync_record::Body::SessionMeta(meta)),
                });
                meta_to = meta_to.max(window.updated_at);
            }
            windows.push(window);
        }
    }
    if meta_to > meta_from {
        reading.advanced.push((meta_key, Position { position: meta_to, identity: String::new() }));
    }

    // New events per session, in seq order.
    let mut statement = db.prepare(
        "SELECT seq, event_json, event_zstd, event_utf8_bytes, created_at FROM transcript_events \
         WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    for window in &windows {
        let room = budget.saturating_sub(reading.records.len());
        if room == 0 {
            reading.more = true;
            break;
        }
        let key = CursorKey::new(tenant_id, agent_id, SyncSource::Sqlite, &window.session_id);
        let from = match cursors.read(&key) {
            // A rewrite renumbers the session from 0: read it all again
            // (event ids deduplicate on the control plane).
            Some(at) if at.identity == window.generation => at.position,
            Some(_) => -1,
            None => -1,
        };
        let mut last = from;
        let mut rows = statement.query(rusqlite::params![window.session_id, from, room as i64])?;
        let mut count = 0;
        while let Some(row) = rows.next()? {
            count += 1;
            let seq: i64 = row.get(0)?;
            let created_at: i64 = row.get(4)?;
            last = seq;
            let bytes = match (row.get::<_, Option<String>>(1)?, row.get::<_, Option<Vec<u8>>>(2)?) {
                (Some(json), _) => json.into_bytes(),
                (None, Some(compressed)) => match decompress(&compressed, row.get::<_, Option<i64>>(3)?) {
                    Ok(bytes) => bytes,
                    Err(err) => {
                        reading.parse_error(&format!("{}#{seq}", window.session_id), &err);
                        continue;
                    }
                },
                (None, None) => {
                    reading.parse_error(&format!("{}#{seq}", window.session_id), "row holds no event");
                    continue;
                }
            };
            match event::parse(&bytes, Some(created_at)) {
                Ok(event) => reading.records.push(SyncRecord {
                    tenant_id: tenant_id.into(),
                    agent_id: agent_id.into(),
                    source: SyncSource::Sqlite as i32,
                    session_key: window.session_key.clone(),
                    session_id: window.session_id.clone(),
                    position: seq,
                    body: Some(sync_record::Body::Event(event)),
                }),
                Err(err) => reading.parse_error(&format!("{}#{seq}", window.session_id), &err.to_string()),
            }
        }
        if count == room {
            reading.more = true;
        }
        if last != from || cursors.read(&key).is_some_and(|at| at.identity != window.generation) {
            reading.advanced.push((key, Position { position: last, identity: window.generation.clone() }));
        }
    }
    Ok(reading)
}

fn decompress(compressed: &[u8], expected: Option<i64>) -> Result<Vec<u8>, String> {
    let mut decoder =
        ruzstd::decoding::StreamingDecoder::new(compressed).map_err(|err| format!("bad zstd frame: {err}"))?;
    let mut out = Vec::with_capacity(expected.unwrap_or(0).clamp(0, MAX_EVENT_BYTES as i64) as usize);
    decoder
        .by_ref()
        .take(MAX_EVENT_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|err| format!("bad zstd data: {err}"))?;
    if out.len() > MAX_EVENT_BYTES {
        return Err(format!("event is larger than {MAX_EVENT_BYTES} bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clawplane_proto::v1::MessageRole;

    use rusqlite::Connection;

    use super::*;

    /// Real OpenClaw 2026.9.6 output: three `openclaw agent` turns against
    /// a fake model, 13 events, two of them zstd-compressed by OpenClaw.
    fn fixture() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("openclaw-agent.sqlite");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclaw-agent-2026.9.6.sqlite");
        std::fs::copy(source, &path).unwrap();
        (dir, path)
    }

    #[test]
    fn only_a_database_in_wal_mode_is_read() {
        let (dir, wal) = fixture();
        assert!(in_wal_mode(&wal), "OpenClaw's database");
        let rollback = dir.path().join("rollback.sqlite");
        Connection::open(&rollback).unwrap().execute("CREATE TABLE t (x)", []).unwrap();
        assert!(!in_wal_mode(&rollback), "a database not switched to WAL yet");
        let empty = dir.path().join("empty.sqlite");
        std::fs::write(&empty, b"").unwrap();
        assert!(!in_wal_mode(&empty), "a file being created");
        assert!(!in_wal_mode(&dir.path().join("missing.sqlite")));
    }

    fn apply(cursors: &mut Cursors, reading: &Reading) {
        for (key, at) in &reading.advanced {
            cursors.advance(key.clone(), at.clone());
        }
    }

    fn events(reading: &Reading) -> Vec<(i64, clawplane_proto::v1::TranscriptEvent)> {
        reading
            .records
            .iter()
            .filter_map(|r| match &r.body {
                Some(sync_record::Body::Event(e)) => Some((r.position, e.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn reads_a_real_openclaw_database_including_zstd_events() {
        let (dir, path) = fixture();
        let mut cursors = Cursors::load(dir.path()).unwrap();
        let reading = read(&path, None, "t1", "main", &cursors, 1000).unwrap();
        assert!(!reading.more);
        assert_eq!(reading.parse_errors, 0);
        let Some(sync_record::Body::SessionMeta(meta)) = &reading.records[0].body else {
            panic!("session metadata comes first")
        };
        assert_eq!((meta.model.as_str(), meta.provider.as_str()), ("fake-model", "local"));
        assert_eq!(reading.records[0].session_key, "agent:main:main");
        let events = events(&reading);
        assert_eq!(events.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (0..13).collect::<Vec<_>>());
        let messages: Vec<_> = events.iter().filter(|(_, e)| e.event_type == "message").collect();
        assert_eq!(messages.len(), 6);
        assert_eq!(messages[0].1.role, MessageRole::User as i32);
        assert_eq!(messages[0].1.text, "hello there");
        assert_eq!(messages[1].1.role, MessageRole::Assistant as i32);
        assert_eq!(messages[1].1.text, "pong from fake");
        let usage = messages[1].1.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.total_tokens), (42, 7, 49));
        // seq 10 and 11 are stored compressed (event_zstd).
        assert!(messages[4].1.text.len() > 1000, "decompressed user text");
        assert!(messages[5].1.raw_event_json.starts_with("{\"type\":\"message\""));

        // Nothing new: nothing read, nothing advanced.
        apply(&mut cursors, &reading);
        let again = read(&path, None, "t1", "main", &cursors, 1000).unwrap();
        assert!(again.records.is_empty() && again.advanced.is_empty());
    }

    #[test]
    fn the_budget_splits_reading_and_cursors_resume_exactly() {
        let (dir, path) = fixture();
        let mut cursors = Cursors::load(dir.path()).unwrap();
        let mut seqs = Vec::new();
        for _ in 0..10 {
            let reading = read(&path, None, "t1", "main", &cursors, 4).unwrap();
            seqs.extend(events(&reading).into_iter().map(|(seq, _)| seq));
            apply(&mut cursors, &reading);
            if !reading.more {
                break;
            }
        }
        assert_eq!(seqs, (0..13).collect::<Vec<_>>());
    }

    #[test]
    fn a_rewritten_session_is_read_again_and_unknown_schemas_are_refused() {
        let (dir, path) = fixture();
        let mut cursors = Cursors::load(dir.path()).unwrap();
        let first = read(&path, None, "t1", "main", &cursors, 1000).unwrap();
        apply(&mut cursors, &first);
        let db = Connection::open(&path).unwrap();
        db.execute("UPDATE transcript_rewrite_watermarks SET generation = 'g2'", []).unwrap();
        let again = read(&path, None, "t1", "main", &cursors, 1000).unwrap();
        assert_eq!(events(&again).len(), 13, "a new generation starts from seq 0");

        db.execute("UPDATE schema_meta SET schema_version = 24", []).unwrap();
        let err = read(&path, None, "t1", "main", &cursors, 1000).unwrap_err();
        assert!(err.to_string().contains("schema version 24"), "{err}");
    }

    #[test]
    fn a_database_without_its_schema_yet_is_not_an_error_to_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("openclaw-agent.sqlite");
        let db = Connection::open(&path).unwrap();
        db.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE early (x)").unwrap();
        let cursors = Cursors::load(dir.path()).unwrap();
        assert!(matches!(read(&path, None, "t1", "main", &cursors, 10), Err(SqliteError::NoSchemaYet)));
        db.execute_batch("CREATE TABLE schema_meta (meta_key TEXT, role TEXT, schema_version INTEGER)").unwrap();
        assert!(
            matches!(read(&path, None, "t1", "main", &cursors, 10), Err(SqliteError::NoSchemaMeta)),
            "not OpenClaw's"
        );
    }

    #[test]
    fn reading_as_root_leaves_wal_files_owned_by_the_tenant() {
        // A read-only open creates -wal/-shm when they are missing; files
        // owned by root would lock the tenant's gateway out of its own
        // database. SQLite hands them to the database file's owner.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let (dir, path) = fixture();
        given_to_nobody(dir.path(), &path);
        let cursors = Cursors::load(dir.path()).unwrap();
        read(&path, None, "t1", "main", &cursors, 10).unwrap();
        for suffix in ["-wal", "-shm"] {
            let meta = std::fs::metadata(format!("{}{suffix}", path.display())).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{suffix}");
        }
    }

    /// The database and its directory as a tenant's are: the owner's.
    fn given_to_nobody(dir: &Path, db: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
            if file.exists() {
                std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
    }

    #[test]
    fn a_gateway_opening_its_database_during_a_read_can_still_write() {
        // The gateway (its own uid) opens, writes and closes its database
        // again and again, each close removing -wal/-shm, while root reads
        // it: no open may find those files root's and fail its write with
        // "attempt to write a readonly database" (one run in four after a
        // gateway restart, before reads ran as the database's owner).
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let (dir, path) = fixture();
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE race (x INTEGER)").unwrap();
        given_to_nobody(dir.path(), &path);
        const WRITER: &str = r#"
import sqlite3, sys
failures = []
for i in range(1000):
    try:
        db = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO race VALUES (?)", (i,))
        db.execute("COMMIT")
        db.close()
    except Exception as err:
        failures.append(str(err))
print(len(failures), sorted(set(failures)))
"#;
        let mut writer = std::process::Command::new("setpriv")
            // Debian's python: the tenant's uid cannot reach root's own.
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "/usr/bin/python3", "-c", WRITER])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 and setpriv");
        let cursors = Cursors::load(dir.path()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let mut reads = 0;
        while writer.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            let _ = read(&path, None, "t1", "main", &cursors, 10);
            reads += 1;
        }
        let _ = writer.kill();
        let output = writer.wait_with_output().unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        let errors = String::from_utf8_lossy(&output.stderr);
        assert!(report.starts_with("0 "), "the gateway's writes failed during {reads} reads: {report} {errors}");
        assert!(reads > 10, "the reads ran alongside the writes ({reads})");
    }

    #[test]
    fn a_link_to_another_tenants_database_is_not_read() {
        // Tenant A (uid 65534) links its agent database to tenant B's
        // (uid 65533, its 0700 tree): read as A, the link leads nowhere.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let (b_dir, b_db) = fixture();
        for path in [b_dir.path(), b_db.as_path()] {
            std::os::unix::fs::chown(path, Some(65533), Some(65533)).unwrap();
        }
        std::fs::set_permissions(b_dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let a_dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(a_dir.path(), Some(65534), Some(65534)).unwrap();
        let a_db = a_dir.path().join("openclaw-agent.sqlite");
        std::os::unix::fs::symlink(&b_db, &a_db).unwrap();
        let cursors = Cursors::load(a_dir.path()).unwrap();
        let err = read(&a_db, Some((65534, 65534)), "t-a", "main", &cursors, 10).err().expect("refused");
        assert!(err.to_string().contains("unable to open") || err.to_string().contains("denied"), "{err}");
        assert!(read(&b_db, Some((65533, 65533)), "t-b", "main", &cursors, 10).is_ok(), "B reads its own");
    }
}
