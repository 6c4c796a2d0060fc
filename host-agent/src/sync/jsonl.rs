//! Reader of legacy OpenClaw transcripts: `agents/<id>/sessions/*.jsonl`
//! (one event per line, appended) and `sessions.json` (session key ->
//! entry). Only complete lines are read; a partial last line waits for its
//! newline. A file that was truncated or replaced is noticed (its size, its
//! inode, or the bytes just before the cursor no longer match) and read
//! again from the start; event ids deduplicate what was already stored.
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use clawplane_proto::v1::{sync_record, SessionMeta, SyncRecord, SyncSource};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cursors::{CursorKey, Cursors, Position};
use super::event;
use super::reading::{millis, Reading};

/// Bytes at the start of the file and just before the cursor that must
/// still match for the file to count as the same one.
const FINGERPRINT_BYTES: u64 = 1024;
const READ_CHUNK: usize = 256 * 1024;
/// Longest line read; a longer one is reported and the file waits.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
pub const SESSIONS_FILE: &str = "sessions.json";

struct SessionEntry {
    key: String,
    meta: SessionMeta,
    updated_at: i64,
}

/// Reads what is new under one agent's `sessions/` directory.
pub fn read(
    state_dir: &Path,
    tenant_id: &str,
    agent_id: &str,
    cursors: &Cursors,
    budget: usize,
) -> std::io::Result<Reading> {
    let dir = state_dir.join("agents").join(agent_id).join("sessions");
    let mut reading = Reading::default();
    let entries = read_sessions_json(&dir.join(SESSIONS_FILE), &mut reading);

    // Metadata first, so the messages that follow get their channel.
    let meta_key =
        CursorKey::new(tenant_id, agent_id, SyncSource::Jsonl, &relative(state_dir, &dir.join(SESSIONS_FILE)));
    let meta_from = cursors.read(&meta_key).map(|p| p.position).unwrap_or(-1);
    let mut meta_to = meta_from;
    let mut keys = HashMap::new();
    for (session_id, entry) in &entries {
        keys.insert(session_id.clone(), entry.key.clone());
        if entry.updated_at > meta_from {
            reading.records.push(SyncRecord {
                tenant_id: tenant_id.into(),
                agent_id: agent_id.into(),
                source: SyncSource::Jsonl as i32,
                session_key: entry.key.clone(),
                session_id: session_id.clone(),
                position: entry.updated_at,
                body: Some(sync_record::Body::SessionMeta(entry.meta.clone())),
            });
            meta_to = meta_to.max(entry.updated_at);
        }
    }
    if meta_to > meta_from {
        reading.advanced.push((meta_key, Position { position: meta_to, identity: String::new() }));
    }

    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && p.is_file())
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err),
    };
    files.sort();
    for path in files {
        let room = budget.saturating_sub(reading.records.len());
        if room == 0 {
            reading.more = true;
            break;
        }
        let Some(session_id) = path.file_stem().and_then(|s| s.to_str()).map(String::from) else { continue };
        let key = CursorKey::new(tenant_id, agent_id, SyncSource::Jsonl, &relative(state_dir, &path));
        let session_key = keys.get(&session_id).cloned().unwrap_or_default();
        read_file(&path, &key, cursors, room, &mut reading, |offset, event| SyncRecord {
            tenant_id: tenant_id.into(),
            agent_id: agent_id.into(),
            source: SyncSource::Jsonl as i32,
            session_key: session_key.clone(),
            session_id: session_id.clone(),
            position: offset,
            body: Some(sync_record::Body::Event(event)),
        })?;
    }
    Ok(reading)
}

fn relative(state_dir: &Path, path: &Path) -> String {
    path.strip_prefix(state_dir).unwrap_or(path).to_string_lossy().into_owned()
}

/// `ino:<inode>:<sha256 of the file's first bytes and the bytes before
/// offset>`.
fn fingerprint(file: &File, inode: u64, offset: u64) -> std::io::Result<String> {
    let mut head = vec![0; offset.min(FINGERPRINT_BYTES) as usize];
    file.read_exact_at(&mut head, 0)?;
    let start = offset.saturating_sub(FINGERPRINT_BYTES);
    let mut tail = vec![0; (offset - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    let digest = Sha256::new().chain_update(&head).chain_update(&tail).finalize();
    Ok(format!("ino:{inode}:{}", hex::encode(&digest[..16])))
}

fn read_file(
    path: &Path,
    key: &CursorKey,
    cursors: &Cursors,
    room: usize,
    reading: &mut Reading,
    record: impl Fn(i64, clawplane_proto::v1::TranscriptEvent) -> SyncRecord,
) -> std::io::Result<()> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    let stored = cursors.read(key);
    let mut start = stored.map(|p| p.position.max(0) as u64).unwrap_or(0);
    if let Some(stored) = stored {
        let same = start <= meta.len() && fingerprint(&file, meta.ino(), start)? == stored.identity;
        if !same {
            tracing::info!(file = %path.display(), "transcript file was truncated or replaced; reading it again from the start");
            start = 0;
        }
    }
    if start == meta.len() {
        return Ok(());
    }
    file.seek(SeekFrom::Start(start))?;
    let mut buffer: Vec<u8> = Vec::new();
    let mut consumed_total = start;
    let mut chunk = vec![0; READ_CHUNK];
    let mut added = 0;
    'read: loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        while let Some(newline) = buffer[consumed..].iter().position(|&b| b == b'\n') {
            let line = &buffer[consumed..consumed + newline];
            let offset = consumed_total + consumed as u64;
            consumed += newline + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match event::parse(line, None) {
                Ok(event) => {
                    reading.records.push(record(offset as i64, event));
                    added += 1;
                }
                Err(err) => reading.parse_error(&format!("{}@{offset}", path.display()), &err.to_string()),
            }
            if added >= room {
                buffer.drain(..consumed);
                consumed_total += consumed as u64;
                reading.more = true;
                break 'read;
            }
        }
        buffer.drain(..consumed);
        consumed_total += consumed as u64;
        if buffer.len() > MAX_LINE_BYTES {
            reading.parse_error(
                &format!("{}@{consumed_total}", path.display()),
                &format!("line longer than {MAX_LINE_BYTES} bytes; the file is not read further"),
            );
            break;
        }
    }
    if consumed_total != start || stored.is_none_or(|p| p.position as u64 != consumed_total) {
        let identity = fingerprint(&file, meta.ino(), consumed_total)?;
        reading.advanced.push((key.clone(), Position { position: consumed_total as i64, identity }));
    }
    Ok(())
}

/// `sessions.json`: `{ "<sessionKey>": { "sessionId": ..., "updatedAt": ms,
/// ... } }`. Unreadable or half-written files are skipped until the next
/// change.
fn read_sessions_json(path: &Path, reading: &mut Reading) -> Vec<(String, SessionEntry)> {
    let Ok(bytes) = std::fs::read(path) else { return Vec::new() };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) else {
        reading.parse_error(&path.display().to_string(), "not a JSON object (yet)");
        return Vec::new();
    };
    let mut out: Vec<(String, SessionEntry)> = map
        .into_iter()
        .filter_map(|(key, entry)| {
            let session_id = entry.get("sessionId")?.as_str()?.to_string();
            let str_at = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let updated_at = entry.get("updatedAt").and_then(Value::as_i64).unwrap_or(0);
            let started = entry.get("sessionStartedAt").and_then(Value::as_i64).unwrap_or(updated_at);
            let channel = entry
                .get("channel")
                .or_else(|| entry.get("lastChannel"))
                .or_else(|| entry.get("deliveryContext").and_then(|d| d.get("channel")))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let meta = SessionMeta {
                channel,
                chat_type: str_at("chatType"),
                model: str_at("model"),
                provider: str_at("modelProvider"),
                started_at: Some(millis(started)),
                last_activity_at: Some(millis(updated_at)),
            };
            Some((session_id, SessionEntry { key, meta, updated_at }))
        })
        .collect();
    out.sort_by_key(|(_, e)| e.updated_at);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const SID: &str = "0b8d2f6e-1111-4a4a-9a9a-000000000001";

    fn line(id: &str, role: &str, text: &str) -> String {
        serde_json::json!({
            "type": "message", "id": id, "timestamp": "2026-11-24T10:00:00.000Z",
            "message": {"role": role, "content": text}
        })
        .to_string()
            + "\n"
    }

    struct Fixture {
        dir: tempfile::TempDir,
        cursors: Cursors,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("state/agents/main/sessions")).unwrap();
            let cursors = Cursors::load(&dir.path().join("agent")).unwrap();
            Fixture { dir, cursors }
        }

        fn file(&self) -> PathBuf {
            self.dir.path().join(format!("state/agents/main/sessions/{SID}.jsonl"))
        }

        fn append(&self, bytes: &[u8]) {
            std::fs::OpenOptions::new().create(true).append(true).open(self.file()).unwrap().write_all(bytes).unwrap();
        }

        /// Reads and commits; returns (offset, event id) of the events read.
        fn sync(&mut self) -> (Vec<(i64, String)>, u64) {
            let reading = read(&self.dir.path().join("state"), "t1", "main", &self.cursors, 1000).unwrap();
            for (key, at) in &reading.advanced {
                self.cursors.advance(key.clone(), at.clone());
            }
            let events = reading
                .records
                .iter()
                .filter_map(|r| match &r.body {
                    Some(sync_record::Body::Event(e)) => Some((r.position, e.event_id.clone())),
                    _ => None,
                })
                .collect();
            (events, reading.parse_errors)
        }
    }

    use std::path::PathBuf;

    #[test]
    fn partial_lines_wait_and_bad_lines_are_counted_not_fatal() {
        let mut f = Fixture::new();
        let a = line("a", "user", "hi");
        f.append(a.as_bytes());
        f.append(b"{\"type\":\"message\",\"id\":\"b\"");
        assert_eq!(f.sync(), (vec![(0, "a".to_string())], 0), "the partial line waits");
        f.append(b",\"message\":{\"role\":\"assistant\",\"content\":\"yo\"}}\n");
        f.append(b"\xff\xfe not utf-8\n");
        f.append(b"{not json\n");
        f.append(b"\n");
        let c_at = std::fs::metadata(f.file()).unwrap().len() as i64;
        f.append(line("c", "user", "again").as_bytes());
        let (events, errors) = f.sync();
        assert_eq!(events, vec![(a.len() as i64, "b".to_string()), (c_at, "c".to_string())]);
        assert_eq!(errors, 2);
        assert_eq!(f.sync(), (vec![], 0));
    }

    #[test]
    fn a_five_mib_line_is_read_whole() {
        let mut f = Fixture::new();
        let big = "x".repeat(5 * 1024 * 1024);
        f.append(line("big", "user", &big).as_bytes());
        f.append(line("after", "assistant", "ok").as_bytes());
        let reading = read(&f.dir.path().join("state"), "t1", "main", &f.cursors, 1000).unwrap();
        let Some(sync_record::Body::Event(event)) = &reading.records[0].body else { panic!() };
        assert_eq!(event.text.len(), big.len());
        assert_eq!(reading.records.len(), 2);
        let _ = f.sync();
    }

    #[test]
    fn truncated_then_rewritten_files_are_read_again_from_the_start() {
        let mut f = Fixture::new();
        f.append(line("a", "user", "one").as_bytes());
        f.append(line("b", "assistant", "two").as_bytes());
        assert_eq!(f.sync().0.len(), 2);
        // Rewritten with the same first line and more after it: the bytes
        // before the cursor changed, so everything is read again.
        std::fs::write(
            f.file(),
            line("a", "user", "one") + &line("b2", "assistant", "two, edited") + &line("c", "user", "3"),
        )
        .unwrap();
        let ids: Vec<String> = f.sync().0.into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["a", "b2", "c"]);
        // Truncated below the cursor.
        std::fs::write(f.file(), line("d", "user", "4")).unwrap();
        let ids: Vec<String> = f.sync().0.into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["d"]);
        // Replaced by another file of the same length.
        std::fs::remove_file(f.file()).unwrap();
        std::fs::write(f.file(), line("e", "user", "4")).unwrap();
        let ids: Vec<String> = f.sync().0.into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["e"], "a replaced file is read again");
    }

    #[test]
    fn sessions_json_gives_keys_and_metadata() {
        let mut f = Fixture::new();
        std::fs::write(
            f.dir.path().join("state/agents/main/sessions/sessions.json"),
            serde_json::json!({"agent:main:telegram:direct:42": {
                "sessionId": SID, "updatedAt": 1795514161309i64, "sessionStartedAt": 1795514136122i64,
                "model": "m", "modelProvider": "p", "channel": "telegram", "chatType": "direct"}})
            .to_string(),
        )
        .unwrap();
        f.append(line("a", "user", "hi").as_bytes());
        let reading = read(&f.dir.path().join("state"), "t1", "main", &f.cursors, 1000).unwrap();
        let Some(sync_record::Body::SessionMeta(meta)) = &reading.records[0].body else { panic!("meta first") };
        assert_eq!((meta.channel.as_str(), meta.chat_type.as_str()), ("telegram", "direct"));
        assert_eq!(reading.records[1].session_key, "agent:main:telegram:direct:42");
        assert_eq!(reading.records[1].session_id, SID);
        let _ = f.sync();
        assert_eq!(f.sync(), (vec![], 0), "metadata is sent once per change");
    }
}
