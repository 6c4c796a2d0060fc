//! The desired OpenClaw configuration of each tenant: the stored rows (one
//! per kind and key, secrets sealed, callers only ever see hints), the
//! rules a change must follow, and the whole document a host applies
//! ([`openclaw`]). Pushing it to the host is the fleet's job
//! (`fleet/config.rs`); turning it into messages is the API's.
mod model;
mod openclaw;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{json, Value};

pub use model::{api_name, default_api, known_upstream, valid_model, valid_provider, ModelRoute, PlatformModel};
pub use openclaw::{build, Apply, ChannelSettings, Desired, ModelSettings, ProfileSettings, ToolSettings};

use crate::service_error::{into_status, ServiceError, ServiceErrorCode};
use crate::store::{ConfigRow, Store, StoreError, TenantRecord};
use clawplane_proto::v1::ModelApi;
use clawplane_tls::secrets::{hint, SecretBox};

/// Kinds of config rows.
pub const MODEL: &str = "model";
pub const PROFILE: &str = "profile";
pub const TOOLS: &str = "tools";
pub const CHANNEL: &str = "channel";
/// The key of the kinds a tenant has one of.
pub const DEFAULT_KEY: &str = "default";

/// Live channels per tenant, whatever the plan allows.
pub const MAX_CHANNELS: usize = 32;
/// Channel rows per tenant, removed ones included (they stay as tombstones
/// so later applies drop them), so churning names cannot grow the table.
pub const MAX_CHANNEL_ROWS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A new channel does not fit the plan or the per-tenant bounds.
    #[error("{0}")]
    NoRoom(String),
    /// A secret could not be sealed or opened (a changed secrets key).
    #[error("tenant secrets: {0:#}")]
    Secrets(#[source] anyhow::Error),
}

impl ServiceError for DesiredError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            DesiredError::Store(err) => err.error_code(),
            DesiredError::NoRoom(_) => ServiceErrorCode::FailedPrecondition,
            DesiredError::Secrets(_) => ServiceErrorCode::Internal,
        }
    }
}

into_status!(DesiredError);

pub type DesiredResult<T> = Result<T, DesiredError>;

/// A tenant's desired config as stored: rows in, rows and documents out.
#[derive(Clone)]
pub struct DesiredConfigs {
    store: Store,
    secrets: Arc<SecretBox>,
    platform: Option<Arc<PlatformModel>>,
}

/// The secrets of a row are bound to it: a ciphertext copied to another
/// tenant's row does not open.
fn row_context(row: &ConfigRow) -> String {
    format!("{}/{}/{}", row.tenant_id, row.config_type, row.config_key)
}

fn is_removed(row: &ConfigRow) -> bool {
    row.value.pointer("/settings/removed").and_then(Value::as_bool) == Some(true)
}

/// The settings of a row, as their kind's type.
pub fn settings<T: serde::de::DeserializeOwned + Default>(row: &ConfigRow) -> T {
    row.value.get("settings").and_then(|s| serde_json::from_value(s.clone()).ok()).unwrap_or_default()
}

/// The masked hints of a row's secrets, the only form callers see.
pub fn secret_hints(row: &ConfigRow) -> BTreeMap<String, String> {
    row.value.get("secret_hints").and_then(|h| serde_json::from_value(h.clone()).ok()).unwrap_or_default()
}

/// The row of one kind and key, if stored.
pub fn find<'a>(rows: &'a [ConfigRow], kind: &str, key: &str) -> Option<&'a ConfigRow> {
    rows.iter().find(|r| r.config_type == kind && r.config_key == key)
}

/// Whether a live (not removed) channel of this name is stored.
pub fn has_channel(rows: &[ConfigRow], channel: &str) -> bool {
    find(rows, CHANNEL, channel).is_some_and(|row| !is_removed(row))
}

impl DesiredConfigs {
    pub fn new(store: Store, secrets: Arc<SecretBox>) -> Self {
        DesiredConfigs { store, secrets, platform: None }
    }

    /// Tenants without a model of their own use the platform's.
    pub fn with_platform_model(mut self, platform: Option<PlatformModel>) -> Self {
        self.platform = platform.map(Arc::new);
        self
    }

    pub fn platform_model(&self) -> Option<&PlatformModel> {
        self.platform.as_deref()
    }

    pub async fn rows(&self, tenant_id: &str) -> DesiredResult<Vec<ConfigRow>> {
        Ok(self.store.config_rows(tenant_id).await?)
    }

    /// A new row with its secrets sealed and their hints beside the
    /// settings.
    pub fn row(
        &self,
        tenant_id: &str,
        kind: &str,
        key: &str,
        settings: Value,
        secrets: &BTreeMap<String, String>,
        enabled: bool,
    ) -> DesiredResult<ConfigRow> {
        let hints: BTreeMap<&String, String> = secrets.iter().map(|(k, v)| (k, hint(v))).collect();
        let mut row = ConfigRow {
            tenant_id: tenant_id.to_string(),
            config_type: kind.to_string(),
            config_key: key.to_string(),
            value: json!({"settings": settings, "secret_hints": hints}),
            secret_ciphertext: None,
            enabled,
            updated_at: Utc::now(),
        };
        if !secrets.is_empty() {
            let plain = serde_json::to_vec(secrets).map_err(|e| DesiredError::Secrets(e.into()))?;
            row.secret_ciphertext = Some(self.secrets.seal(&row_context(&row), &plain).map_err(DesiredError::Secrets)?);
        }
        Ok(row)
    }

    /// The stored secrets of one row (none when it does not exist), opened
    /// to merge a change into them.
    pub fn stored_secrets(&self, rows: &[ConfigRow], kind: &str, key: &str) -> DesiredResult<BTreeMap<String, String>> {
        match find(rows, kind, key) {
            Some(row) => self.unseal(row),
            None => Ok(BTreeMap::new()),
        }
    }

    fn unseal(&self, row: &ConfigRow) -> DesiredResult<BTreeMap<String, String>> {
        match &row.secret_ciphertext {
            None => Ok(BTreeMap::new()),
            Some(sealed) => {
                let plain = self.secrets.open(&row_context(row), sealed).map_err(DesiredError::Secrets)?;
                serde_json::from_slice(&plain).map_err(|e| DesiredError::Secrets(e.into()))
            }
        }
    }

    /// The whole desired config with secrets opened (in memory only, on
    /// the way to the host).
    pub fn document(&self, rows: &[ConfigRow]) -> DesiredResult<Desired> {
        let mut desired = Desired::default();
        let mut chose_model = false;
        for row in rows {
            match row.config_type.as_str() {
                MODEL => {
                    let model: ModelSettings = settings(row);
                    // A model row without a provider configures nothing.
                    if !model.provider.is_empty() {
                        chose_model = true;
                        desired.model = self.route(model, self.unseal(row)?.remove("api_key"));
                    }
                }
                PROFILE => desired.profile = settings(row),
                TOOLS => desired.tools = settings(row),
                CHANNEL => {
                    desired.channels.insert(row.config_key.clone(), (settings(row), self.unseal(row)?));
                }
                _ => {}
            }
        }
        if !chose_model {
            desired.model = self.platform.as_ref().map(|platform| platform.route(&platform.default_model));
        }
        Ok(desired)
    }

    /// Where a chosen model's calls go: the platform's upstream for its
    /// provider, else the tenant's base URL (or the provider's known one)
    /// with the tenant's own key. A model with nowhere to go (a provider
    /// whose platform is no longer configured) configures no model.
    fn route(&self, model: ModelSettings, api_key: Option<String>) -> Option<ModelRoute> {
        if let Some(platform) = self.platform.as_ref().filter(|p| p.provider == model.provider) {
            return Some(platform.route(&model.model));
        }
        let api = api_by_name(&model.api).unwrap_or_else(|| default_api(&model.provider));
        let upstream = match model.base_url.as_str() {
            "" => known_upstream(&model.provider, api)?.to_string(),
            url => url.to_string(),
        };
        Some(ModelRoute {
            models: vec![model.model.clone()],
            provider: model.provider,
            api,
            model: model.model,
            upstream_base_url: upstream,
            api_key,
            platform: false,
        })
    }

    /// A new channel must fit the plan's channel limit, [`MAX_CHANNELS`]
    /// and [`MAX_CHANNEL_ROWS`]; changing an existing one always may.
    pub async fn check_channel_room(
        &self,
        tenant: &TenantRecord,
        rows: &[ConfigRow],
        channel: &str,
    ) -> DesiredResult<()> {
        let channel_rows: Vec<&ConfigRow> = rows.iter().filter(|r| r.config_type == CHANNEL).collect();
        let live = channel_rows.iter().filter(|r| !is_removed(r)).count();
        match channel_rows.iter().find(|r| r.config_key == channel) {
            Some(row) if !is_removed(row) => return Ok(()),
            Some(_) => {}
            None if channel_rows.len() >= MAX_CHANNEL_ROWS => {
                return Err(DesiredError::NoRoom(format!(
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
            return Err(DesiredError::NoRoom(format!(
                "the tenant already has {live} channels, the most its plan allows ({limit}); remove one first"
            )));
        }
        Ok(())
    }

    /// Saves changed rows as a new generation (compare-and-set on
    /// `expected`), returning it.
    pub async fn save(&self, tenant_id: &str, rows: Vec<ConfigRow>, expected: Option<i64>) -> DesiredResult<i64> {
        Ok(self.store.save_config(tenant_id, rows, expected).await?)
    }

    /// Puts `changed` rows back as they were in `before` (a row that did not
    /// exist gets a value that configures nothing), as a new generation.
    pub async fn roll_back(&self, tenant_id: &str, before: &[ConfigRow], changed: &[ConfigRow]) -> DesiredResult<i64> {
        let restored = changed
            .iter()
            .map(|row| find(before, &row.config_type, &row.config_key).cloned().unwrap_or_else(|| neutral(row)))
            .collect();
        self.save(tenant_id, restored, None).await
    }
}

/// The API of OpenClaw's name for it; `None` for an empty or unknown one.
pub fn api_by_name(name: &str) -> Option<ModelApi> {
    [ModelApi::OpenaiCompletions, ModelApi::OpenaiResponses, ModelApi::AnthropicMessages]
        .into_iter()
        .find(|api| api_name(*api) == name)
}

/// A row that configures nothing, for rolling back a first-time setting.
fn neutral(row: &ConfigRow) -> ConfigRow {
    let settings = match row.config_type.as_str() {
        CHANNEL => json!(ChannelSettings { removed: true, ..Default::default() }),
        PROFILE => json!(ProfileSettings::default()),
        TOOLS => json!(ToolSettings::default()),
        _ => Value::Null,
    };
    ConfigRow { value: json!({"settings": settings}), secret_ciphertext: None, updated_at: Utc::now(), ..row.clone() }
}
