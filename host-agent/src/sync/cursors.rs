//! Read positions in the tenants' OpenClaw state. Two sets: `committed`
//! (acknowledged by the control plane, persisted in `<state>/sync/
//! cursors.json`) and `read` (sent, maybe not yet committed). After a
//! reconnect reading resumes from `committed`, so unacknowledged records are
//! sent again and the control plane deduplicates them.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clawplane_proto::v1::{Cursor, SyncSource};
use clawplane_tls::files::{create_private_dir, write_private};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CursorKey {
    pub tenant_id: String,
    pub agent_id: String,
    /// `SyncSource` as its number.
    pub source: i32,
    /// Session id, "session_windows", a file path relative to the state dir,
    /// or "openclaw.json".
    pub stream: String,
}

impl CursorKey {
    pub fn new(tenant_id: &str, agent_id: &str, source: SyncSource, stream: &str) -> Self {
        CursorKey {
            tenant_id: tenant_id.into(),
            agent_id: agent_id.into(),
            source: source as i32,
            stream: stream.into(),
        }
    }

    pub fn to_proto(&self, position: i64) -> Cursor {
        Cursor {
            tenant_id: self.tenant_id.clone(),
            agent_id: self.agent_id.clone(),
            source: self.source,
            stream_key: self.stream.clone(),
            position,
        }
    }

    pub fn matches(&self, cursor: &Cursor) -> bool {
        self.tenant_id == cursor.tenant_id
            && self.agent_id == cursor.agent_id
            && self.source == cursor.source
            && self.stream == cursor.stream_key
    }
}

/// Where to resume one stream. `identity` tells whether the stream is still
/// the one the position refers to: the SQLite rewrite generation of a
/// session, a JSONL file's fingerprint, or the config's content hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub position: i64,
    #[serde(default)]
    pub identity: String,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: CursorKey,
    #[serde(flatten)]
    at: Position,
}

pub struct Cursors {
    path: PathBuf,
    committed: BTreeMap<CursorKey, Position>,
    read: BTreeMap<CursorKey, Position>,
}

impl Cursors {
    pub fn load(state_dir: &Path) -> anyhow::Result<Cursors> {
        let dir = state_dir.join("sync");
        create_private_dir(&dir)?;
        let path = dir.join("cursors.json");
        let committed = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Entry>>(&bytes)
                .with_context(|| format!("{} is corrupt", path.display()))?
                .into_iter()
                .map(|e| (e.key, e.at))
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Cursors { path, read: committed.clone(), committed })
    }

    /// Where reading continues.
    pub fn read(&self, key: &CursorKey) -> Option<&Position> {
        self.read.get(key)
    }

    pub fn advance(&mut self, key: CursorKey, at: Position) {
        self.read.insert(key, at);
    }

    /// Forgets what was read but not committed (the connection dropped).
    pub fn rewind(&mut self) {
        self.read = self.committed.clone();
    }

    /// Persists acknowledged positions (atomically: write and rename).
    pub fn commit(&mut self, positions: impl IntoIterator<Item = (CursorKey, Position)>) -> anyhow::Result<()> {
        let mut changed = false;
        for (key, at) in positions {
            if self.committed.get(&key) != Some(&at) {
                self.committed.insert(key, at);
                changed = true;
            }
        }
        if changed {
            self.persist()?;
        }
        Ok(())
    }

    fn persist(&self) -> anyhow::Result<()> {
        let entries: Vec<Entry> =
            self.committed.iter().map(|(key, at)| Entry { key: key.clone(), at: at.clone() }).collect();
        write_private(&self.path, &serde_json::to_vec(&entries)?)
    }

    /// Drops the streams of tenants no longer on this host.
    pub fn retain_tenants(&mut self, keep: &std::collections::HashSet<String>) -> anyhow::Result<()> {
        let before = self.committed.len();
        self.committed.retain(|k, _| keep.contains(&k.tenant_id));
        self.read.retain(|k, _| keep.contains(&k.tenant_id));
        if self.committed.len() != before {
            self.persist()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_committed_positions_survive_a_restart_or_a_rewind() {
        let dir = tempfile::tempdir().unwrap();
        let key = CursorKey::new("t1", "main", SyncSource::Sqlite, "s1");
        let mut cursors = Cursors::load(dir.path()).unwrap();
        cursors.advance(key.clone(), Position { position: 5, identity: "g1".into() });
        cursors.commit([(key.clone(), Position { position: 3, identity: "g1".into() })]).unwrap();
        cursors.advance(key.clone(), Position { position: 9, identity: "g1".into() });
        assert_eq!(cursors.read(&key).unwrap().position, 9);
        cursors.rewind();
        assert_eq!(cursors.read(&key).unwrap().position, 3);
        cursors.advance(key.clone(), Position { position: 9, identity: "g1".into() });
        let reloaded = Cursors::load(dir.path()).unwrap();
        assert_eq!(reloaded.read(&key), Some(&Position { position: 3, identity: "g1".into() }));
    }
}
