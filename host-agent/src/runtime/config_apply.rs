//! Turning a config generation into OpenClaw calls, the same for both
//! runtimes: what a change may contain (checked before anything runs), the
//! agent's own gateway defaults, the secrets file as JSON pointers, and
//! one `openclaw config set --batch-json` per generation.
use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::error::{RuntimeError, RuntimeResult};
use super::records::TenantRecord;
use super::{ConfigChange, TenantCli};
use crate::openclaw::cli::CliOutput;
use crate::openclaw::{valid_config_path, valid_secret_pointer};

/// Bumped whenever [`gateway_defaults`] changes.
pub const GATEWAY_DEFAULTS_VERSION: u32 = 1;

/// Workspace files the agent writes on the control plane's behalf.
const WORKSPACE_FILES: &[&str] = &["SOUL.md"];

/// Settings the agent owns in every tenant's gateway config, beyond the
/// first provisioning steps.
pub fn gateway_defaults(public_origin: &str) -> Vec<Value> {
    // User traffic arrives through this host's agent (the tenant proxy, on
    // loopback) with X-Forwarded-* naming the real client; attribution only:
    // every request still needs the token.
    let mut ops = vec![json!({"path": "gateway.trustedProxies", "value": ["127.0.0.1/32", "::1/128"]})];
    if !public_origin.is_empty() {
        ops.push(json!({"path": "gateway.controlUi.allowedOrigins", "value": [public_origin]}));
    }
    ops
}

/// A change that passed every check.
pub struct CheckedChange<'a> {
    /// The `config set` operations, values parsed.
    pub batch: Vec<Value>,
    pub unset_paths: &'a [String],
    /// Every secret of the tenant after this generation, by pointer.
    pub secrets: HashMap<String, String>,
    pub files: &'a [(String, String, String)],
}

/// Checks every part of a change; nothing reaches OpenClaw or the disk
/// unless all of it is valid.
pub fn check<'a>(record: &TenantRecord, change: ConfigChange<'a>) -> RuntimeResult<CheckedChange<'a>> {
    let ConfigChange { ops, unset_paths, secrets, files } = change;
    let mut batch = Vec::with_capacity(ops.len());
    for (path, value_json) in ops {
        if !valid_config_path(path) {
            return Err(RuntimeError::Invalid(format!("invalid config path {path:?}")));
        }
        let value: Value = serde_json::from_str(value_json)
            .map_err(|err| RuntimeError::Invalid(format!("value of {path} is not JSON: {err}")))?;
        batch.push(json!({"path": path, "value": value}));
    }
    for path in unset_paths {
        if !valid_config_path(path) {
            return Err(RuntimeError::Invalid(format!("invalid config path {path:?}")));
        }
    }
    for (agent_id, name, _) in files {
        if !record.agent_ids.contains(agent_id) {
            return Err(RuntimeError::Invalid(format!("agent {agent_id:?} is not one of this tenant's agents")));
        }
        if !WORKSPACE_FILES.contains(&name.as_str()) {
            return Err(RuntimeError::Invalid(format!("workspace file {name:?} is not one the agent manages")));
        }
    }
    let mut new_secrets = HashMap::new();
    for (pointer, value) in secrets {
        if !valid_secret_pointer(pointer) {
            return Err(RuntimeError::Invalid(format!("invalid secret name {pointer:?}")));
        }
        let value = String::from_utf8(value.clone())
            .map_err(|_| RuntimeError::Invalid(format!("secret {pointer} is not UTF-8")))?;
        new_secrets.insert(pointer.clone(), value);
    }
    Ok(CheckedChange { batch, unset_paths, secrets: new_secrets, files })
}

/// The secrets file's document: `base` with every secret at its pointer.
pub fn secrets_document(mut base: Value, secrets: &HashMap<String, String>) -> Value {
    for (pointer, value) in secrets {
        set_pointer(&mut base, pointer, Value::String(value.clone()));
    }
    base
}

fn set_pointer(document: &mut Value, pointer: &str, value: Value) {
    let mut node = document;
    let segments: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if i + 1 == segments.len() {
            if let Value::Object(map) = node {
                map.insert(segment.to_string(), value);
            }
            return;
        }
        if !node.get(*segment).is_some_and(Value::is_object) {
            if let Value::Object(map) = node {
                map.insert(segment.to_string(), json!({}));
            }
        }
        node = node.get_mut(*segment).expect("just inserted");
    }
}

/// Runs a CLI call, again when OpenClaw reports a transient conflict
/// (the file changed while it wrote, another process holds a state lock)
/// and asks for a re-run.
pub(super) async fn openclaw_retrying(
    cli: &dyn TenantCli,
    record: &TenantRecord,
    args: &[&str],
) -> RuntimeResult<CliOutput> {
    const TRANSIENT: &[&str] = &["changed while this command was writing", "another OpenClaw process owns"];
    let mut attempt = 0;
    loop {
        let output = cli.openclaw(record, args).await?;
        attempt += 1;
        if output.success || attempt >= 4 || !TRANSIENT.iter().any(|t| output.error_message().contains(t)) {
            return Ok(output);
        }
        tokio::time::sleep(Duration::from_secs(attempt)).await;
    }
}

/// One `openclaw config set --batch-json` call for all the operations.
pub(super) async fn config_set(cli: &dyn TenantCli, record: &TenantRecord, ops: &Value) -> RuntimeResult<()> {
    let batch = ops.to_string();
    let output = openclaw_retrying(cli, record, &["config", "set", "--batch-json", &batch]).await?;
    if !output.success {
        return Err(RuntimeError::OpenClaw(format!("openclaw config set: {}", output.error_message())));
    }
    Ok(())
}

/// A generation's secrets and config: the secrets file first (references
/// in the batch must resolve when OpenClaw validates them), then the batch
/// and unsets; if OpenClaw refuses, the previous secrets are put back.
pub(super) async fn apply_secrets_and_config(
    cli: &dyn TenantCli,
    record: &mut TenantRecord,
    secrets: HashMap<String, String>,
    batch: Option<Value>,
    unset_paths: &[String],
) -> RuntimeResult<()> {
    let previous = std::mem::replace(&mut record.secrets, secrets);
    cli.write_secrets(record)?;
    if let Err(err) = set_and_unset(cli, record, batch, unset_paths).await {
        record.secrets = previous;
        cli.write_secrets(record)?;
        return Err(err);
    }
    Ok(())
}

/// The generation's `config set` batch (if any), then its unsets; a path
/// that is not set is no error.
async fn set_and_unset(
    cli: &dyn TenantCli,
    record: &TenantRecord,
    batch: Option<Value>,
    unset_paths: &[String],
) -> RuntimeResult<()> {
    if let Some(batch) = batch {
        config_set(cli, record, &batch).await?;
    }
    for path in unset_paths {
        let output = cli.openclaw(record, &["config", "unset", path]).await?;
        if !output.success
            && !output.error_message().contains("not found")
            && !output.error_message().contains("Unknown")
        {
            return Err(RuntimeError::OpenClaw(format!("openclaw config unset {path}: {}", output.error_message())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_build_nested_secrets() {
        let mut doc = json!({"gateway": {"token": "t"}});
        set_pointer(&mut doc, "/models/local/apiKey", json!("k"));
        set_pointer(&mut doc, "/channels/telegram/botToken", json!("b"));
        assert_eq!(
            doc,
            json!({"gateway": {"token": "t"}, "models": {"local": {"apiKey": "k"}}, "channels": {"telegram": {"botToken": "b"}}})
        );
    }
}
