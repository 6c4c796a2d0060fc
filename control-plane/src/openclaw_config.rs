//! What a tenant's Clawplane settings mean in OpenClaw's own config
//! (openclaw.json), in one place. The result is a complete list of
//! `config set` operations for one `--batch-json` call, the secret values
//! for the tenant's 0600 secrets file (referenced as SecretRefs, never
//! written into openclaw.json), and the paths to unset.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The secrets provider name inside each tenant's openclaw.json; the host
/// agent points it at the tenant's secrets file.
pub const SECRETS_PROVIDER: &str = "clawplane";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSettings {
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub base_url: String,
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
    pub model: Option<(ModelSettings, Option<String>)>,
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
}

fn secret_ref(pointer: &str) -> Value {
    json!({"source": "file", "provider": SECRETS_PROVIDER, "id": pointer})
}

/// Builds the operations for `agent_id` (the tenant's OpenClaw agent).
pub fn build(agent_id: &str, desired: &Desired) -> Apply {
    let mut ops: Vec<(String, Value)> = Vec::new();
    let mut secrets = Vec::new();
    let mut unset = Vec::new();

    if let Some((model, api_key)) = &desired.model {
        let provider = &model.provider;
        let mut entry = json!({
            "api": "openai-completions",
            "models": [{"id": model.model, "name": model.model}],
        });
        if !model.base_url.is_empty() {
            entry["baseUrl"] = json!(model.base_url);
        }
        if let Some(key) = api_key {
            let pointer = format!("/models/{provider}/apiKey");
            entry["apiKey"] = secret_ref(&pointer);
            secrets.push((pointer, key.clone()));
        }
        ops.push(("models.mode".into(), json!("merge")));
        ops.push((format!("models.providers.{provider}"), entry));
        ops.push(("agents.defaults.model.primary".into(), json!(format!("{provider}/{}", model.model))));
    }

    let profile = &desired.profile;
    if !profile.name.is_empty() {
        ops.push((format!("agents.entries.{agent_id}.identity.name"), json!(profile.name)));
    }
    let mut instructions = profile.system_prompt.clone();
    if !profile.style.is_empty() {
        if !instructions.is_empty() {
            instructions.push_str("\n\n");
        }
        instructions.push_str(&format!("Response style: {}", profile.style));
    }
    if !instructions.is_empty() {
        ops.push((format!("agents.entries.{agent_id}.systemPrompt"), json!(instructions)));
    }

    let tools = &desired.tools;
    if !tools.allow.is_empty() {
        ops.push(("tools.allow".into(), json!(tools.allow)));
    }
    if !tools.deny.is_empty() {
        ops.push(("tools.deny".into(), json!(tools.deny)));
    }

    for (channel, (settings, channel_secrets)) in &desired.channels {
        if settings.removed {
            unset.push(format!("channels.{channel}"));
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
        ops.push((format!("channels.{channel}"), Value::Object(entry)));
    }
    Apply { ops, secrets, unset }
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
            model: Some((
                ModelSettings {
                    provider: "local".into(),
                    model: "fake-model".into(),
                    base_url: "http://127.0.0.1:9/v1".into(),
                },
                Some("sk-very-secret".into()),
            )),
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
        assert!(rendered.contains("/models/local/apiKey") && rendered.contains("/channels/telegram/botToken"));
        assert_eq!(apply.secrets.len(), 2);
    }

    #[test]
    fn removed_channels_are_unset() {
        let mut desired = Desired::default();
        desired
            .channels
            .insert("discord".into(), (ChannelSettings { removed: true, ..Default::default() }, BTreeMap::new()));
        let apply = build("alice", &desired);
        assert_eq!(apply.unset, vec!["channels.discord".to_string()]);
        assert!(apply.ops.is_empty());
    }
}
