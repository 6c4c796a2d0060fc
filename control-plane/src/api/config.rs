//! ConfigService: a tenant's channels, model, tools and agent profile.
//!
//! The control plane keeps the desired config with a generation number;
//! each change is pushed to the tenant's host as one ApplyConfig command
//! (one `openclaw config set --batch-json` there). Secrets are sealed at
//! rest, travel only over the agent's mTLS stream, land in the tenant's
//! 0600 secrets file and are referenced from openclaw.json; callers only
//! ever see masked hints. When OpenClaw itself rejects a change, the change
//! is rolled back and the caller gets INVALID_ARGUMENT with OpenClaw's
//! message.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use clawplane_proto::v1::config_service_server::ConfigService;
use clawplane_proto::v1::{
    self as pb, command, ApplyConfigCommand, ConfigSetOp, GetConfigRequest, GetConfigResponse, RemoveChannelRequest,
    RemoveChannelResponse, SecretFile, SetAgentProfileRequest, SetAgentProfileResponse, SetChannelRequest,
    SetChannelResponse, SetModelRequest, SetModelResponse, SetToolsRequest, SetToolsResponse,
};
use ipnet::IpNet;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};

use super::{caller, check_text, required_id, shown, timestamp, visible_tenant, wait_within, ApiError, ApiResult};
use crate::fleet::Fleet;
use crate::model_url::{self, UrlError};
use crate::openclaw_config::{self, ChannelSettings, Desired, ModelSettings, ProfileSettings, ToolSettings};
use crate::secrets::{hint, SecretBox};
use crate::store::entities::tenant_config;
use crate::store::{Store, TenantRecord};

const MODEL: &str = "model";
const PROFILE: &str = "profile";
const TOOLS: &str = "tools";
const CHANNEL: &str = "channel";
const DEFAULT_KEY: &str = "default";
/// How long a Set call waits for the host to apply the change, at most (the
/// request's deadline may end the wait first; the change stays queued).
const APPLY_WAIT: Duration = Duration::from_secs(90);

/// Bounds of the Set* requests (documented in config.proto).
const MAX_PROVIDER: usize = 40;
const MAX_MODEL: usize = 128;
const MAX_BASE_URL: usize = 512;
const MAX_SECRET: usize = 4096;
const MAX_AGENT_NAME: usize = 100;
const MAX_SYSTEM_PROMPT: usize = 65_536;
const MAX_STYLE: usize = 2000;
const MAX_TOOLS: usize = 200;
const MAX_TOOL_NAME: usize = 100;
const MAX_CHANNEL_NAME: usize = 32;
const MAX_CHANNEL_ENTRIES: usize = 64;
const MAX_SETTING_NAME: usize = 64;
const MAX_SETTING_VALUE: usize = 1024;
/// Live channels per tenant, whatever the plan allows.
const MAX_CHANNELS: usize = 32;
/// Channel rows per tenant, removed ones included (they stay as tombstones
/// so later applies drop them), so churning names cannot grow the table.
const MAX_CHANNEL_ROWS: usize = 64;

pub struct ConfigApi {
    store: Store,
    fleet: Arc<Fleet>,
    secrets: Arc<SecretBox>,
    allowed_model_cidrs: Arc<Vec<IpNet>>,
}

impl ConfigApi {
    pub fn new(store: Store, fleet: Arc<Fleet>) -> Self {
        ConfigApi { secrets: fleet.secrets(), store, fleet, allowed_model_cidrs: Default::default() }
    }

    /// Ranges a model base_url may reach although they are not public
    /// (`models.allowed_cidrs`); none by default.
    pub fn with_allowed_model_cidrs(mut self, cidrs: Vec<IpNet>) -> Self {
        self.allowed_model_cidrs = Arc::new(cidrs);
        self
    }
}

fn row_context(row: &tenant_config::Model) -> String {
    format!("{}/{}/{}", row.tenant_id, row.config_type, row.config_key)
}

/// Identifiers that become OpenClaw config path segments.
fn check_name(field: &str, value: &str, max: usize) -> ApiResult<()> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && value.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be 1-{max} characters of letters, digits, '-' and '_', starting with a letter or digit"
        )))
    }
}

fn check_secret(field: &str, value: &str) -> ApiResult<()> {
    if value.is_empty() || value.len() > MAX_SECRET || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("{field} must be 1-{MAX_SECRET} bytes of printable characters")));
    }
    Ok(())
}

/// Free text that may span lines (system prompts).
fn check_multiline(field: &str, value: &str, max_chars: usize) -> ApiResult<()> {
    if value.chars().count() > max_chars {
        return Err(ApiError::invalid(format!("{field} must be at most {max_chars} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(format!("{field} must not contain control characters")));
    }
    Ok(())
}

impl ConfigApi {
    fn seal(&self, row: &mut tenant_config::Model, secrets: &BTreeMap<String, String>) -> ApiResult<()> {
        if secrets.is_empty() {
            row.secret_ciphertext = None;
            return Ok(());
        }
        let plain = serde_json::to_vec(secrets).map_err(|e| ApiError::Internal(e.into()))?;
        row.secret_ciphertext = Some(self.secrets.seal(&row_context(row), &plain).map_err(ApiError::Internal)?);
        Ok(())
    }

    /// The stored secrets of one config row, if it exists.
    fn stored_secrets(
        &self,
        rows: &[tenant_config::Model],
        kind: &str,
        key: &str,
    ) -> ApiResult<BTreeMap<String, String>> {
        match rows.iter().find(|r| r.config_type == kind && r.config_key == key) {
            Some(row) => unseal(&self.secrets, row),
            None => Ok(BTreeMap::new()),
        }
    }

    async fn view(&self, tenant_id: &str) -> ApiResult<pb::TenantConfig> {
        let rows = self.store.config_rows(tenant_id).await?;
        let state = self.store.config_state(tenant_id).await?;
        let hints = |row: &tenant_config::Model| -> BTreeMap<String, String> {
            row.value.get("secret_hints").and_then(|h| serde_json::from_value(h.clone()).ok()).unwrap_or_default()
        };
        let mut config = pb::TenantConfig { tenant_id: tenant_id.to_string(), ..Default::default() };
        let mut updated = None;
        for row in &rows {
            updated = updated.max(Some(row.updated_at));
            let settings = row.value.get("settings").cloned().unwrap_or(Value::Null);
            match row.config_type.as_str() {
                MODEL => {
                    let model: ModelSettings = serde_json::from_value(settings).unwrap_or_default();
                    config.model = Some(pb::ModelConfig {
                        provider: model.provider,
                        model: model.model,
                        base_url: model.base_url,
                        api_key_hint: hints(row).remove("api_key").unwrap_or_default(),
                    });
                }
                PROFILE => {
                    let profile: ProfileSettings = serde_json::from_value(settings).unwrap_or_default();
                    config.agent_profile = Some(pb::AgentProfile {
                        name: profile.name,
                        system_prompt: profile.system_prompt,
                        style: profile.style,
                    });
                }
                TOOLS => {
                    let tools: ToolSettings = serde_json::from_value(settings).unwrap_or_default();
                    config.tools = Some(pb::ToolsConfig { allow: tools.allow, deny: tools.deny });
                }
                CHANNEL => {
                    let channel: ChannelSettings = serde_json::from_value(settings).unwrap_or_default();
                    if !channel.removed {
                        config.channels.push(pb::ChannelConfig {
                            channel: row.config_key.clone(),
                            enabled: channel.enabled,
                            settings: channel.settings.into_iter().collect(),
                            secret_hints: hints(row).into_iter().collect(),
                            updated_at: Some(timestamp(row.updated_at)),
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some(state) = state {
            config.desired_generation = state.desired_generation;
            config.applied_generation = state.applied_generation;
            config.last_apply_error = state.last_apply_error.unwrap_or_default();
            config.applied_at = None;
            updated = updated.max(Some(state.updated_at));
            if let Some(observed) = &state.observed {
                config.observed_config_json = observed["config"].to_string();
                config.observed_at = observed["observed_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| timestamp(t.with_timezone(&chrono::Utc)));
            }
        }
        config.updated_at = updated.map(timestamp);
        Ok(config)
    }

    fn row(
        &self,
        tenant_id: &str,
        kind: &str,
        key: &str,
        settings: Value,
        secrets: &BTreeMap<String, String>,
        enabled: bool,
    ) -> ApiResult<tenant_config::Model> {
        let hints: BTreeMap<&String, String> = secrets.iter().map(|(k, v)| (k, hint(v))).collect();
        let mut row = tenant_config::Model {
            tenant_id: tenant_id.to_string(),
            config_type: kind.to_string(),
            config_key: key.to_string(),
            value: json!({"settings": settings, "secret_hints": hints}),
            secret_ciphertext: None,
            enabled,
            updated_at: Utc::now(),
        };
        self.seal(&mut row, secrets)?;
        Ok(row)
    }

    /// A new channel must fit the plan's channel limit, [`MAX_CHANNELS`]
    /// and [`MAX_CHANNEL_ROWS`]; changing an existing one always may.
    async fn check_channel_room(
        &self,
        tenant: &TenantRecord,
        rows: &[tenant_config::Model],
        channel: &str,
    ) -> ApiResult<()> {
        let channel_rows: Vec<&tenant_config::Model> = rows.iter().filter(|r| r.config_type == CHANNEL).collect();
        let removed = |r: &tenant_config::Model| r.value.pointer("/settings/removed").and_then(Value::as_bool);
        let live = channel_rows.iter().filter(|r| removed(r) != Some(true)).count();
        match channel_rows.iter().find(|r| r.config_key == channel) {
            Some(row) if removed(row) != Some(true) => return Ok(()),
            Some(_) => {}
            None if channel_rows.len() >= MAX_CHANNEL_ROWS => {
                return Err(ApiError::FailedPrecondition(format!(
                    "at most {MAX_CHANNEL_ROWS} different channels per tenant, removed ones included; \
                     reuse a removed channel's name"
                )))
            }
            None => {}
        }
        let plan_limit = self.store.plan_by_name(&tenant.plan).await?.and_then(|p| p.channel_limit).unwrap_or(0);
        let limit = match usize::try_from(plan_limit) {
            Ok(n) if n > 0 => n.min(MAX_CHANNELS),
            _ => MAX_CHANNELS,
        };
        if live >= limit {
            return Err(ApiError::FailedPrecondition(format!(
                "the tenant already has {live} channels, the most its plan allows ({limit}); remove one first"
            )));
        }
        Ok(())
    }

    /// Saves changed rows, pushes the new generation to the tenant's host
    /// and, when the host answers in time, reports OpenClaw's verdict. A
    /// change OpenClaw rejects is rolled back.
    async fn change(
        &self,
        tenant: &TenantRecord,
        rows: Vec<tenant_config::Model>,
        expected: Option<i64>,
        wait: Duration,
    ) -> ApiResult<pb::TenantConfig> {
        let tenant_id = &tenant.tenant.id;
        let before = self.store.config_rows(tenant_id).await?;
        let generation = self.store.save_config(tenant_id, rows.clone(), expected).await?;
        if let Some(command_id) = push_config(&self.fleet, &self.store, &self.secrets, tenant).await? {
            if let Some(result) = self.fleet.wait_for_result(&command_id, wait).await? {
                if result.outcome != pb::CommandOutcome::Succeeded as i32 && result.error_code == "openclaw" {
                    // Restore the rows as they were (a row that did not exist
                    // keeps a neutral value) and push that as a new generation.
                    let restored: Vec<tenant_config::Model> = rows
                        .iter()
                        .map(|changed| {
                            before
                                .iter()
                                .find(|b| b.config_type == changed.config_type && b.config_key == changed.config_key)
                                .cloned()
                                .unwrap_or_else(|| neutral(changed))
                        })
                        .collect();
                    self.store.save_config(tenant_id, restored, None).await?;
                    push_config(&self.fleet, &self.store, &self.secrets, tenant).await?;
                    return Err(ApiError::invalid(format!(
                        "OpenClaw rejected the change (generation {generation}): {}",
                        result.error_message
                    )));
                }
            }
        }
        self.view(tenant_id).await
    }
}

/// A row that configures nothing, for rolling back a first-time setting.
fn neutral(row: &tenant_config::Model) -> tenant_config::Model {
    let settings = match row.config_type.as_str() {
        CHANNEL => json!(ChannelSettings { removed: true, ..Default::default() }),
        PROFILE => json!(ProfileSettings::default()),
        TOOLS => json!(ToolSettings::default()),
        _ => Value::Null,
    };
    tenant_config::Model {
        value: json!({"settings": settings}),
        secret_ciphertext: None,
        updated_at: Utc::now(),
        ..row.clone()
    }
}

/// Queues the tenant's whole desired config, at its current generation, for
/// its host. None when the tenant is not placed or has no config yet.
pub async fn push_config(
    fleet: &Fleet,
    store: &Store,
    secrets: &SecretBox,
    tenant: &TenantRecord,
) -> ApiResult<Option<String>> {
    let Some(host_id) = &tenant.tenant.host_id else { return Ok(None) };
    let Some(state) = store.config_state(&tenant.tenant.id).await? else { return Ok(None) };
    let rows = store.config_rows(&tenant.tenant.id).await?;
    let mut desired = desired(secrets, &rows)?;
    if desired.model.as_ref().is_some_and(|(m, _)| m.provider.is_empty()) {
        desired.model = None;
    }
    // The persona and tools go to the gateway's first agent: the slug's own
    // agent, a team's first, or OpenClaw's default agent of a fleet cell.
    let agent_id = tenant.agent_ids().into_iter().next().unwrap_or_else(|| tenant.tenant.slug.clone());
    let apply = openclaw_config::build(&agent_id, &desired);
    let payload = command::Payload::ApplyConfig(ApplyConfigCommand {
        tenant_id: tenant.tenant.id.clone(),
        generation: state.desired_generation,
        unset_paths: apply.unset,
        ops: apply.ops.into_iter().map(|(path, value)| ConfigSetOp { path, value_json: value.to_string() }).collect(),
        secrets: apply
            .secrets
            .into_iter()
            .map(|(name, value)| SecretFile { name, value: value.into_bytes() })
            .collect(),
        merge: false,
        restart: false,
        files: apply
            .files
            .into_iter()
            .map(|(agent_id, name, content)| pb::WorkspaceFile { agent_id, name, content })
            .collect(),
    });
    Ok(Some(fleet.enqueue(host_id, Some(&tenant.tenant.id), payload).await?))
}

fn unseal(secrets: &SecretBox, row: &tenant_config::Model) -> ApiResult<BTreeMap<String, String>> {
    match &row.secret_ciphertext {
        None => Ok(BTreeMap::new()),
        Some(sealed) => {
            let plain = secrets.open(&row_context(row), sealed).map_err(ApiError::Internal)?;
            serde_json::from_slice(&plain).map_err(|e| ApiError::Internal(e.into()))
        }
    }
}

/// The whole desired config with secrets opened (in memory only, on the way
/// to the host).
fn desired(secrets: &SecretBox, rows: &[tenant_config::Model]) -> ApiResult<Desired> {
    let mut desired = Desired::default();
    for row in rows {
        let settings = row.value.get("settings").cloned().unwrap_or(Value::Null);
        match row.config_type.as_str() {
            MODEL => {
                if let Ok(model) = serde_json::from_value::<ModelSettings>(settings) {
                    desired.model = Some((model, unseal(secrets, row)?.remove("api_key")));
                }
            }
            PROFILE => desired.profile = serde_json::from_value(settings).unwrap_or_default(),
            TOOLS => desired.tools = serde_json::from_value(settings).unwrap_or_default(),
            CHANNEL => {
                let channel: ChannelSettings = serde_json::from_value(settings).unwrap_or_default();
                desired.channels.insert(row.config_key.clone(), (channel, unseal(secrets, row)?));
            }
            _ => {}
        }
    }
    Ok(desired)
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn get_config(&self, request: Request<GetConfigRequest>) -> Result<Response<GetConfigResponse>, Status> {
        let principal = caller(&request)?;
        let tenant = visible_tenant(&self.store, &principal, &request.get_ref().tenant_id).await?;
        Ok(Response::new(GetConfigResponse { config: Some(self.view(&tenant.tenant.id).await?) }))
    }

    async fn set_model(&self, request: Request<SetModelRequest>) -> Result<Response<SetModelResponse>, Status> {
        let principal = caller(&request)?;
        let wait = wait_within(&request, APPLY_WAIT);
        let req = request.into_inner();
        required_id("tenant_id", &req.tenant_id)?;
        check_name("provider", &req.provider, MAX_PROVIDER)?;
        if req.model.is_empty()
            || req.model.len() > MAX_MODEL
            || !req.model.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
        {
            return Err(ApiError::invalid(format!(
                "model must be 1-{MAX_MODEL} characters of letters, digits, '-', '_', '.', ':' and '/'"
            ))
            .into());
        }
        if let Some(key) = req.api_key.as_deref().filter(|k| !k.is_empty()) {
            check_secret("api_key", key)?;
        }
        if let Some(base_url) = req.base_url.as_deref().filter(|u| !u.is_empty()) {
            check_text("base_url", base_url, MAX_BASE_URL)?;
            match model_url::check(base_url, &self.allowed_model_cidrs).await {
                Ok(()) => {}
                Err(UrlError::Refused(why)) => {
                    return Err(ApiError::invalid(format!("base_url is refused: {why}")).into())
                }
                Err(UrlError::Busy) => {
                    return Err(ApiError::ResourceExhausted(
                        "too many base_url host lookups are in progress; try again shortly".into(),
                    )
                    .into())
                }
            }
        }
        let tenant = visible_tenant(&self.store, &principal, &req.tenant_id).await?;
        // An absent api_key keeps the stored one; an empty one removes it.
        let existing = self.store.config_rows(&tenant.tenant.id).await.map_err(ApiError::from)?;
        let mut secrets = self.stored_secrets(&existing, MODEL, DEFAULT_KEY)?;
        // An absent base_url keeps the stored one (checked when it was set).
        let base_url = match req.base_url {
            Some(url) => url,
            None => existing
                .iter()
                .find(|r| r.config_type == MODEL && r.config_key == DEFAULT_KEY)
                .and_then(|r| serde_json::from_value::<ModelSettings>(r.value.get("settings")?.clone()).ok())
                .map(|m| m.base_url)
                .unwrap_or_default(),
        };
        match req.api_key.as_deref() {
            None => {}
            Some("") => {
                secrets.remove("api_key");
            }
            Some(key) => {
                secrets.insert("api_key".into(), key.to_string());
            }
        }
        let settings = json!(ModelSettings { provider: req.provider, model: req.model, base_url });
        let row = self.row(&tenant.tenant.id, MODEL, DEFAULT_KEY, settings, &secrets, true)?;
        let config = self.change(&tenant, vec![row], req.expected_generation, wait).await?;
        Ok(Response::new(SetModelResponse { config: Some(config) }))
    }

    async fn set_agent_profile(
        &self,
        request: Request<SetAgentProfileRequest>,
    ) -> Result<Response<SetAgentProfileResponse>, Status> {
        let principal = caller(&request)?;
        let wait = wait_within(&request, APPLY_WAIT);
        let req = request.into_inner();
        required_id("tenant_id", &req.tenant_id)?;
        if let Some(name) = &req.name {
            check_text("name", name, MAX_AGENT_NAME)?;
        }
        if let Some(prompt) = &req.system_prompt {
            check_multiline("system_prompt", prompt, MAX_SYSTEM_PROMPT)?;
        }
        if let Some(style) = &req.style {
            check_text("style", style, MAX_STYLE)?;
        }
        let tenant = visible_tenant(&self.store, &principal, &req.tenant_id).await?;
        let existing = self.store.config_rows(&tenant.tenant.id).await.map_err(ApiError::from)?;
        let mut profile: ProfileSettings = existing
            .iter()
            .find(|r| r.config_type == PROFILE)
            .and_then(|r| serde_json::from_value(r.value.get("settings").cloned()?).ok())
            .unwrap_or_default();
        if let Some(name) = req.name {
            profile.name = name;
        }
        if let Some(prompt) = req.system_prompt {
            profile.system_prompt = prompt;
        }
        if let Some(style) = req.style {
            profile.style = style;
        }
        let row = self.row(&tenant.tenant.id, PROFILE, DEFAULT_KEY, json!(profile), &BTreeMap::new(), true)?;
        let config = self.change(&tenant, vec![row], req.expected_generation, wait).await?;
        Ok(Response::new(SetAgentProfileResponse { config: Some(config) }))
    }

    async fn set_tools(&self, request: Request<SetToolsRequest>) -> Result<Response<SetToolsResponse>, Status> {
        let principal = caller(&request)?;
        let wait = wait_within(&request, APPLY_WAIT);
        let req = request.into_inner();
        required_id("tenant_id", &req.tenant_id)?;
        for (field, list) in [("allow", &req.allow), ("deny", &req.deny)] {
            if list.len() > MAX_TOOLS {
                return Err(ApiError::invalid(format!("{field} lists more than {MAX_TOOLS} tools")).into());
            }
            for tool in list {
                if tool.is_empty()
                    || tool.len() > MAX_TOOL_NAME
                    || !tool.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:*/".contains(&b))
                {
                    return Err(ApiError::invalid(format!(
                        "{field}: {} is not a tool name or pattern (1-{MAX_TOOL_NAME} characters of letters, \
                         digits, '-', '_', '.', ':', '*' and '/')",
                        shown(tool)
                    ))
                    .into());
                }
            }
        }
        let tenant = visible_tenant(&self.store, &principal, &req.tenant_id).await?;
        let settings = json!(ToolSettings { allow: req.allow, deny: req.deny });
        let row = self.row(&tenant.tenant.id, TOOLS, DEFAULT_KEY, settings, &BTreeMap::new(), true)?;
        let config = self.change(&tenant, vec![row], req.expected_generation, wait).await?;
        Ok(Response::new(SetToolsResponse { config: Some(config) }))
    }

    async fn set_channel(&self, request: Request<SetChannelRequest>) -> Result<Response<SetChannelResponse>, Status> {
        let principal = caller(&request)?;
        let wait = wait_within(&request, APPLY_WAIT);
        let req = request.into_inner();
        required_id("tenant_id", &req.tenant_id)?;
        check_name("channel", &req.channel, MAX_CHANNEL_NAME)?;
        if req.settings.len() + req.secrets.len() > MAX_CHANNEL_ENTRIES {
            return Err(ApiError::invalid(format!(
                "settings and secrets: at most {MAX_CHANNEL_ENTRIES} entries per channel together"
            ))
            .into());
        }
        for (key, value) in &req.settings {
            check_name("setting name", key, MAX_SETTING_NAME)?;
            check_text("setting value", value, MAX_SETTING_VALUE)?;
        }
        for (key, value) in &req.secrets {
            check_name("secret name", key, MAX_SETTING_NAME)?;
            if req.settings.contains_key(key) {
                return Err(ApiError::invalid(format!("{key} is given both as a setting and as a secret")).into());
            }
            if !value.is_empty() {
                check_secret(key, value)?;
            }
        }
        let tenant = visible_tenant(&self.store, &principal, &req.tenant_id).await?;
        let existing = self.store.config_rows(&tenant.tenant.id).await.map_err(ApiError::from)?;
        self.check_channel_room(&tenant, &existing, &req.channel).await?;
        // Secrets merge: an empty value deletes one, an absent key keeps it.
        let mut secrets = self.stored_secrets(&existing, CHANNEL, &req.channel)?;
        for (key, value) in &req.secrets {
            if value.is_empty() {
                secrets.remove(key);
            } else {
                secrets.insert(key.clone(), value.clone());
            }
        }
        let settings = json!(ChannelSettings {
            settings: req.settings.into_iter().collect(),
            enabled: req.enabled,
            removed: false
        });
        let row = self.row(&tenant.tenant.id, CHANNEL, &req.channel, settings, &secrets, req.enabled)?;
        let config = self.change(&tenant, vec![row], req.expected_generation, wait).await?;
        Ok(Response::new(SetChannelResponse { config: Some(config) }))
    }

    async fn remove_channel(
        &self,
        request: Request<RemoveChannelRequest>,
    ) -> Result<Response<RemoveChannelResponse>, Status> {
        let principal = caller(&request)?;
        let wait = wait_within(&request, APPLY_WAIT);
        let req = request.into_inner();
        required_id("tenant_id", &req.tenant_id)?;
        check_name("channel", &req.channel, MAX_CHANNEL_NAME)?;
        let tenant = visible_tenant(&self.store, &principal, &req.tenant_id).await?;
        let existing = self.store.config_rows(&tenant.tenant.id).await.map_err(ApiError::from)?;
        let present = existing.iter().any(|r| {
            r.config_type == CHANNEL
                && r.config_key == req.channel
                && !r.value.pointer("/settings/removed").and_then(Value::as_bool).unwrap_or(false)
        });
        if !present {
            return Err(ApiError::NotFound("channel").into());
        }
        let tombstone = json!(ChannelSettings { removed: true, ..Default::default() });
        let row = self.row(&tenant.tenant.id, CHANNEL, &req.channel, tombstone, &BTreeMap::new(), false)?;
        let config = self.change(&tenant, vec![row], req.expected_generation, wait).await?;
        Ok(Response::new(RemoveChannelResponse { config: Some(config) }))
    }
}
