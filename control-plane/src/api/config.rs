//! ConfigService: a tenant's channels, model, tools and agent profile.
//!
//! Requests are checked here; the desired config with its generation number
//! lives in [`crate::desired`], and [`Fleet::change_config`] pushes each
//! change to the tenant's host as one ApplyConfig command (one `openclaw
//! config set --batch-json` there). Secrets are sealed at
//! rest, travel only over the agent's mTLS stream, land in the tenant's
//! 0600 secrets file and are referenced from openclaw.json; callers only
//! ever see masked hints. When OpenClaw itself rejects a change, the change
//! is rolled back and the caller gets INVALID_ARGUMENT with OpenClaw's
//! message.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clawplane_proto::v1::config_service_server::ConfigService;
use clawplane_proto::v1::{
    self as pb, GetConfigRequest, GetConfigResponse, ModelApi, RemoveChannelRequest, RemoveChannelResponse,
    SetAgentProfileRequest, SetAgentProfileResponse, SetChannelRequest, SetChannelResponse, SetModelRequest,
    SetModelResponse, SetToolsRequest, SetToolsResponse,
};
use ipnet::IpNet;
use serde_json::json;
use tonic::{Request, Response, Status};

use super::deadline::wait_within;
use super::error::{ApiError, ApiResult};
use super::request::{caller, check_text, required_id, shown, timestamp, visible_tenant};
use crate::desired::{
    api_by_name, api_name, default_api, find, has_channel, known_upstream, secret_hints, settings, ChannelSettings,
    DesiredConfigs, ModelSettings, ProfileSettings, ToolSettings, CHANNEL, DEFAULT_KEY, MODEL, PROFILE, TOOLS,
};
use crate::fleet::Fleet;
use crate::model_url::{self, UrlError};
use crate::store::{ConfigRow, Store, TenantRecord};

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

pub struct ConfigApi {
    store: Store,
    fleet: Arc<Fleet>,
    allowed_model_cidrs: Arc<Vec<IpNet>>,
}

impl ConfigApi {
    pub fn new(store: Store, fleet: Arc<Fleet>) -> Self {
        ConfigApi { store, fleet, allowed_model_cidrs: Default::default() }
    }

    /// Ranges a model base_url may reach although they are not public
    /// (`models.allowed_cidrs`); none by default.
    pub fn with_allowed_model_cidrs(mut self, cidrs: Vec<IpNet>) -> Self {
        self.allowed_model_cidrs = Arc::new(cidrs);
        self
    }
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
    fn desired(&self) -> &DesiredConfigs {
        self.fleet.desired()
    }

    /// The tenant's config as callers see it: settings, secret hints, and
    /// the generations desired, applied and observed.
    async fn view(&self, tenant_id: &str) -> ApiResult<pb::TenantConfig> {
        let rows = self.desired().rows(tenant_id).await?;
        let state = self.store.config_state(tenant_id).await?;
        let mut config = pb::TenantConfig { tenant_id: tenant_id.to_string(), ..Default::default() };
        let mut updated = None;
        for row in &rows {
            updated = updated.max(Some(row.updated_at));
            match row.config_type.as_str() {
                MODEL => {
                    let model: ModelSettings = settings(row);
                    let platform = self.desired().platform_model().filter(|p| p.provider == model.provider);
                    let api = match platform {
                        Some(platform) => platform.api,
                        None => api_by_name(&model.api).unwrap_or_else(|| default_api(&model.provider)),
                    };
                    config.model = Some(pb::ModelConfig {
                        api_key_hint: secret_hints(row).remove("api_key").unwrap_or_default(),
                        api: api as i32,
                        platform: platform.is_some(),
                        provider: model.provider,
                        model: model.model,
                        base_url: model.base_url,
                    });
                }
                PROFILE => {
                    let profile: ProfileSettings = settings(row);
                    config.agent_profile = Some(pb::AgentProfile {
                        name: profile.name,
                        system_prompt: profile.system_prompt,
                        style: profile.style,
                    });
                }
                TOOLS => {
                    let tools: ToolSettings = settings(row);
                    config.tools = Some(pb::ToolsConfig { allow: tools.allow, deny: tools.deny });
                }
                CHANNEL => {
                    let channel: ChannelSettings = settings(row);
                    if !channel.removed {
                        config.channels.push(pb::ChannelConfig {
                            channel: row.config_key.clone(),
                            enabled: channel.enabled,
                            settings: channel.settings.into_iter().collect(),
                            secret_hints: secret_hints(row).into_iter().collect(),
                            updated_at: Some(timestamp(row.updated_at)),
                        });
                    }
                }
                _ => {}
            }
        }
        // A tenant that chose no model (or cleared it) uses the platform's.
        if config.model.as_ref().is_none_or(|m| m.provider.is_empty()) {
            if let Some(platform) = self.desired().platform_model() {
                config.model = Some(pb::ModelConfig {
                    provider: platform.provider.clone(),
                    model: platform.default_model.clone(),
                    api: platform.api as i32,
                    platform: true,
                    ..Default::default()
                });
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

    /// Applies changed rows through the fleet, then answers with the config.
    async fn change(
        &self,
        tenant: &TenantRecord,
        rows: Vec<ConfigRow>,
        expected: Option<i64>,
        wait: Duration,
    ) -> ApiResult<pb::TenantConfig> {
        self.fleet.change_config(tenant, rows, expected, wait).await?;
        self.view(&tenant.tenant.id).await
    }
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
        let requested_api = match ModelApi::try_from(req.api) {
            Ok(ModelApi::Unspecified) => None,
            Ok(api) => Some(api),
            Err(_) => return Err(ApiError::invalid(format!("api: {} is not a ModelApi value", req.api)).into()),
        };
        let platform = self.desired().platform_model().filter(|p| p.provider == req.provider);
        let api = match platform {
            Some(platform) => {
                let set = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
                if set(&req.api_key) || set(&req.base_url) {
                    return Err(ApiError::invalid(format!(
                        "provider {:?} is the platform's model: it takes no api_key or base_url",
                        req.provider
                    ))
                    .into());
                }
                if !platform.models.contains(&req.model) {
                    return Err(ApiError::invalid(format!(
                        "model {:?} is not offered on the platform's provider; choose one of {}",
                        req.model,
                        platform.models.join(", ")
                    ))
                    .into());
                }
                if requested_api.is_some_and(|api| api != platform.api) {
                    return Err(ApiError::invalid(format!(
                        "api: the platform's provider speaks {}",
                        api_name(platform.api)
                    ))
                    .into());
                }
                platform.api
            }
            None => requested_api.unwrap_or_else(|| default_api(&req.provider)),
        };
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
        let existing = self.desired().rows(&tenant.tenant.id).await?;
        let mut secrets = self.desired().stored_secrets(&existing, MODEL, DEFAULT_KEY)?;
        // An absent base_url keeps the stored one (checked when it was set).
        let base_url = match req.base_url {
            Some(url) => url,
            None => {
                find(&existing, MODEL, DEFAULT_KEY).map(|r| settings::<ModelSettings>(r).base_url).unwrap_or_default()
            }
        };
        // The host's proxy needs an upstream to send the calls to.
        if platform.is_none() && base_url.is_empty() && known_upstream(&req.provider, api).is_none() {
            return Err(ApiError::invalid(format!(
                "base_url is required for provider {:?} with {} (Clawplane knows the upstreams of openai and \
                 anthropic only)",
                req.provider,
                api_name(api)
            ))
            .into());
        }
        if platform.is_some() {
            secrets.clear();
        }
        match req.api_key.as_deref() {
            None => {}
            Some("") => {
                secrets.remove("api_key");
            }
            Some(key) => {
                secrets.insert("api_key".into(), key.to_string());
            }
        }
        let api = api_name(api).to_string();
        let settings = json!(ModelSettings { provider: req.provider, model: req.model, base_url, api });
        let row = self.desired().row(&tenant.tenant.id, MODEL, DEFAULT_KEY, settings, &secrets, true)?;
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
        let existing = self.desired().rows(&tenant.tenant.id).await?;
        let mut profile: ProfileSettings = find(&existing, PROFILE, DEFAULT_KEY).map(settings).unwrap_or_default();
        if let Some(name) = req.name {
            profile.name = name;
        }
        if let Some(prompt) = req.system_prompt {
            profile.system_prompt = prompt;
        }
        if let Some(style) = req.style {
            profile.style = style;
        }
        let row =
            self.desired().row(&tenant.tenant.id, PROFILE, DEFAULT_KEY, json!(profile), &BTreeMap::new(), true)?;
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
        let row = self.desired().row(&tenant.tenant.id, TOOLS, DEFAULT_KEY, settings, &BTreeMap::new(), true)?;
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
        let existing = self.desired().rows(&tenant.tenant.id).await?;
        self.desired().check_channel_room(&tenant, &existing, &req.channel).await?;
        // Secrets merge: an empty value deletes one, an absent key keeps it.
        let mut secrets = self.desired().stored_secrets(&existing, CHANNEL, &req.channel)?;
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
        let row = self.desired().row(&tenant.tenant.id, CHANNEL, &req.channel, settings, &secrets, req.enabled)?;
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
        let existing = self.desired().rows(&tenant.tenant.id).await?;
        if !has_channel(&existing, &req.channel) {
            return Err(ApiError::NotFound("channel").into());
        }
        let tombstone = json!(ChannelSettings { removed: true, ..Default::default() });
        let row = self.desired().row(&tenant.tenant.id, CHANNEL, &req.channel, tombstone, &BTreeMap::new(), false)?;
        let config = self.change(&tenant, vec![row], req.expected_generation, wait).await?;
        Ok(Response::new(RemoveChannelResponse { config: Some(config) }))
    }
}
