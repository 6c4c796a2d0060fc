//! What a tenant's Clawplane settings mean in OpenClaw's own config
//! (openclaw.json), in one place. The result is a complete list of
//! `config set` operations for one `--batch-json` call, the secret values
//! for the tenant's 0600 secrets file (referenced as SecretRefs, never
//! written into openclaw.json), the paths to unset, and the model route:
//! the provider entry itself is written by the host agent, which points it
//! at its metering proxy and keeps the upstream key out of the tenant's
//! tree.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::model::ModelRoute;

/// The secrets provider name inside each tenant's openclaw.json; the host
/// agent points it at the tenant's secrets file.
pub const SECRETS_PROVIDER: &str = "clawplane";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSettings {
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub base_url: String,
    /// OpenClaw's API name (`openai-completions`, ...); empty: the
    /// provider's default.
    #[serde(default)]
    pub api: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSettings {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub system_prompt: String,
    #[serde(default)]
    pub style: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSettings {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSettings {
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    pub enabled: bool,
    /// Removed channels stay as tombstones so every later apply unsets them.
    #[serde(default)]
    pub removed: bool,
}

/// A tenant's whole desired configuration, with secrets in plain text
/// (in memory only, on the way to the host).
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub model: Option<ModelRoute>,
    pub profile: ProfileSettings,
    pub tools: ToolSettings,
    pub channels: BTreeMap<String, (ChannelSettings, BTreeMap<String, String>)>,
}

/// One apply for the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Apply {
    pub ops: Vec<(String, Value)>,
    /// (JSON pointer in the secrets file, value).
    pub secrets: Vec<(String, String)>,
    pub unset: Vec<String>,
    /// (agent id, file name, content) for the agent's workspace.
    pub files: Vec<(String, String, String)>,
    /// The model the host's proxy serves the tenant; none: no model.
    pub route: Option<ModelRoute>,
}

/// The workspace file OpenClaw reads an agent's persona from.
pub const PERSONA_FILE: &str = "SOUL.md";

fn secret_ref(pointer: &str) -> Value {
    json!({"source": "file", "provider": SECRETS_PROVIDER, "id": pointer})
}

/// Builds the operations for `agent_id` (the tenant's OpenClaw agent).
pub fn build(agent_id: &str, desired: &Desired) -> Apply {
    let mut ops: Vec<(String, Value)> = Vec::new();
    let mut secrets = Vec::new();
    let unset = Vec::new();

    if let Some(route) = &desired.model {
        ops.push(("models.mode".into(), json!("merge")));
        ops.push(("agents.defaults.model.primary".into(), json!(format!("{}/{}", route.provider, route.model))));
    }

    let profile = &desired.profile;
    let mut identity = serde_json::Map::new();
    if !profile.name.is_empty() {
        identity.insert("name".into(), json!(profile.name));
    }
    if !profile.style.is_empty() {
        identity.insert("theme".into(), json!(profile.style));
    }
    if !identity.is_empty() {
        ops.push((format!("agents.entries.{agent_id}.identity"), Value::Object(identity)));
    }
    // OpenClaw has no config key for the system prompt: the persona lives in
    // the workspace's SOUL.md (injected into every turn), which the host
    // agent writes in the same apply.
    let mut files = Vec::new();
    if !profile.system_prompt.is_empty() || !profile.style.is_empty() {
        let mut soul =
            String::from("# Persona\n\n<!-- managed by Clawplane: edits here are replaced on the next change -->\n\n");
        if !profile.system_prompt.is_empty() {
            soul.push_str(&profile.system_prompt);
            soul.push('\n');
        }
        if !profile.style.is_empty() {
            soul.push_str(&format!("\n## Response style\n\n{}\n", profile.style));
        }
        files.push((agent_id.to_string(), PERSONA_FILE.to_string(), soul));
    }

    // Tools are scoped to the tenant's agent (deny wins in OpenClaw).
    let tools = &desired.tools;
    if !tools.allow.is_empty() || !tools.deny.is_empty() {
        let mut scope = serde_json::Map::new();
        if !tools.allow.is_empty() {
            scope.insert("allow".into(), json!(tools.allow));
        }
        if !tools.deny.is_empty() {
            scope.insert("deny".into(), json!(tools.deny));
        }
        ops.push((format!("agents.entries.{agent_id}.tools"), Value::Object(scope)));
    }

    // Channels are written as the whole map, so a removed channel simply
    // disappears; each active one is bound to the tenant's agent (OpenClaw
    // keeps unbound accounts blocked once agents are explicit).
    if !desired.channels.is_empty() {
        let mut channels = serde_json::Map::new();
        let mut bindings = Vec::new();
        for (channel, (settings, channel_secrets)) in &desired.channels {
            if settings.removed {
                continue;
            }
            let mut entry = serde_json::Map::new();
            entry.insert("enabled".into(), json!(settings.enabled));
            for (key, value) in &settings.settings {
                entry.insert(key.clone(), setting_value(value));
            }
            for (key, value) in channel_secrets {
                let pointer = format!("/channels/{channel}/{key}");
                entry.insert(key.clone(), secret_ref(&pointer));
                secrets.push((pointer, value.clone()));
            }
            channels.insert(channel.clone(), Value::Object(entry));
            bindings.push(json!({"agentId": agent_id, "match": {"channel": channel, "accountId": "default"}}));
        }
        ops.push(("channels".into(), Value::Object(channels)));
        ops.push(("bindings".into(), Value::Array(bindings)));
    }
    Apply { ops, secrets, unset, files, route: desired.model.clone() }
}

/// Settings arrive as strings; booleans and numbers go to OpenClaw typed.
fn setting_value(text: &str) -> Value {
    match text {
        "true" => json!(true),
        "false" => json!(false),
        _ => text.parse::<i64>().map(|n| json!(n)).unwrap_or_else(|_| json!(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_become_refs_and_never_values() {
        let mut desired = Desired {
            model: Some(ModelRoute {
                provider: "local".into(),
                api: clawplane_proto::v1::ModelApi::OpenaiCompletions,
                model: "fake-model".into(),
                models: vec!["fake-model".into()],
                upstream_base_url: "http://127.0.0.1:9/v1".into(),
                api_key: Some("sk-very-secret".into()),
                platform: false,
            }),
            ..Default::default()
        };
        let mut bot = BTreeMap::new();
        bot.insert("botToken".into(), "123:abc".into());
        desired.channels.insert("telegram".into(), (ChannelSettings { enabled: true, ..Default::default() }, bot));
        let apply = build("alice", &desired);
        let rendered =
            serde_json::to_string(&apply.ops.iter().map(|(p, v)| json!({"path": p, "value": v})).collect::<Vec<_>>())
                .unwrap();
        assert!(!rendered.contains("sk-very-secret") && !rendered.contains("123:abc"), "{rendered}");
        // The model key goes to the host's proxy in the route, not into the
        // tenant's secrets file.
        assert!(rendered.contains("/channels/telegram/botToken") && rendered.contains("local/fake-model"));
        assert_eq!(apply.secrets.len(), 1);
        assert_eq!(apply.route.as_ref().and_then(|r| r.api_key.as_deref()), Some("sk-very-secret"));
    }

    #[test]
    fn removed_channels_leave_the_channel_map() {
        let mut desired = Desired::default();
        let removed = ChannelSettings { removed: true, ..Default::default() };
        desired.channels.insert("discord".into(), (removed, BTreeMap::new()));
        desired
            .channels
            .insert("slack".into(), (ChannelSettings { enabled: true, ..Default::default() }, BTreeMap::new()));
        let apply = build("alice", &desired);
        let channels = &apply.ops.iter().find(|(p, _)| p == "channels").unwrap().1;
        assert_eq!(channels, &json!({"slack": {"enabled": true}}));
        let bindings = &apply.ops.iter().find(|(p, _)| p == "bindings").unwrap().1;
        assert_eq!(bindings, &json!([{"agentId": "alice", "match": {"channel": "slack", "accountId": "default"}}]));
    }
}
