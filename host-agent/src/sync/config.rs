//! Outside changes to a tenant's openclaw.json (someone ran `openclaw config
//! set` on the host, or the gateway rewrote it). The agent's own writes are
//! recognised by content hash and not reported.
use std::path::Path;
use std::time::SystemTime;

use clawplane_proto::v1::{sync_record, ObservedConfig, SyncRecord, SyncSource};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::cursors::{CursorKey, Cursors, Position};
use super::reading::{now_ms, Reading};

pub const CONFIG_STREAM: &str = "openclaw.json";
const REDACTED: &str = "__OPENCLAW_REDACTED__";

pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The hash of a tenant's openclaw.json as it is now, if it exists.
pub fn current_hash(state_dir: &Path) -> Option<String> {
    std::fs::read(state_dir.join("openclaw.json")).ok().map(|bytes| content_hash(&bytes))
}

/// A record for the tenant's config if it changed since both the agent's
/// own last write and the last reported observation.
pub fn observe(
    state_dir: &Path,
    tenant_id: &str,
    own_hash: &str,
    cursors: &Cursors,
) -> std::io::Result<Option<Reading>> {
    let bytes = match std::fs::read(state_dir.join("openclaw.json")) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let hash = content_hash(&bytes);
    let key = CursorKey::new(tenant_id, "", SyncSource::Config, CONFIG_STREAM);
    let last_reported = cursors.read(&key).map(|p| p.identity.as_str()).unwrap_or_default();
    if own_hash.is_empty() || hash == own_hash || hash == last_reported {
        return Ok(None);
    }
    // JSON5 is accepted by OpenClaw; anything serde cannot read is sent as
    // an unparsed, fully redacted note rather than raw text.
    let config_json = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut value) => {
            redact(&mut value);
            value.to_string()
        }
        Err(_) => serde_json::json!({ "unparsed": REDACTED }).to_string(),
    };
    let position = now_ms();
    let mut reading = Reading::default();
    reading.records.push(SyncRecord {
        tenant_id: tenant_id.into(),
        agent_id: String::new(),
        source: SyncSource::Config as i32,
        session_key: String::new(),
        session_id: String::new(),
        position,
        body: Some(sync_record::Body::ObservedConfig(ObservedConfig {
            config_json,
            content_hash: hash.clone(),
            observed_at: Some(SystemTime::now().into()),
        })),
    });
    reading.advanced.push((key, Position { position, identity: hash }));
    Ok(Some(reading))
}

/// Replaces every string under a secret-looking key. SecretRefs (objects)
/// stay: they name where a secret lives, not the secret.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let lower = key.to_ascii_lowercase();
                let secret = ["token", "secret", "password", "apikey", "api_key", "privatekey", "credential"]
                    .iter()
                    .any(|word| lower.contains(word));
                if secret && child.is_string() {
                    *child = Value::String(REDACTED.into());
                } else {
                    redact(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_refs_kept() {
        let mut config = serde_json::json!({
            "gateway": {"auth": {"token": "plain-secret", "mode": "token"}},
            "models": {"providers": {"x": {"apiKey": {"source": "file", "id": "/models/x"}, "baseUrl": "http://h"}}},
            "channels": {"telegram": {"botToken": "123:abc"}},
            "list": [{"password": "p"}]
        });
        redact(&mut config);
        let text = config.to_string();
        for secret in ["plain-secret", "123:abc", "\"p\""] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(config["models"]["providers"]["x"]["apiKey"]["id"], "/models/x");
        assert_eq!(config["gateway"]["auth"]["mode"], "token");
    }

    #[test]
    fn own_writes_and_repeated_observations_are_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut cursors = Cursors::load(dir.path()).unwrap();
        std::fs::write(dir.path().join("openclaw.json"), br#"{"a":1}"#).unwrap();
        let own = current_hash(dir.path()).unwrap();
        assert!(observe(dir.path(), "t1", &own, &cursors).unwrap().is_none());
        std::fs::write(dir.path().join("openclaw.json"), br#"{"a":2,"token":"s"}"#).unwrap();
        let reading = observe(dir.path(), "t1", &own, &cursors).unwrap().expect("an outside change is reported");
        let Some(sync_record::Body::ObservedConfig(observed)) = &reading.records[0].body else { panic!() };
        assert_eq!(observed.config_json, r#"{"a":2,"token":"__OPENCLAW_REDACTED__"}"#);
        for (key, at) in reading.advanced {
            cursors.advance(key, at);
        }
        assert!(observe(dir.path(), "t1", &own, &cursors).unwrap().is_none(), "reported once");
    }
}
