//! A tenant's model, reached through this host's metering proxy: the
//! control plane sends the route (upstream, key, models); the key stays in
//! the proxy's own 0600 state, and the tenant's openclaw.json gets a
//! provider entry naming the proxy and a credential that identifies only
//! this tenant (through its secrets file, like every other secret).
use clawplane_metering::Meter;
use clawplane_proto::v1::{ModelApi, ModelRoute};
use serde_json::json;

use crate::openclaw::{valid_config_path, valid_secret_pointer};
use crate::runtime::RuntimeError;

/// OpenClaw's name of an API (`api` of a provider entry).
fn api_name(api: ModelApi) -> Option<&'static str> {
    match api {
        ModelApi::OpenaiCompletions => Some("openai-completions"),
        ModelApi::OpenaiResponses => Some("openai-responses"),
        ModelApi::AnthropicMessages => Some("anthropic-messages"),
        ModelApi::Unspecified => None,
    }
}

/// The provider entry's `config set` operation and the credential's
/// secret, after the route is in the proxy. Checked whole before the
/// proxy learns anything.
pub fn install(
    meter: &Meter,
    tenant_id: &str,
    route: ModelRoute,
) -> Result<((String, String), (String, Vec<u8>)), RuntimeError> {
    let api = ModelApi::try_from(route.api)
        .ok()
        .and_then(api_name)
        .ok_or_else(|| RuntimeError::Invalid(format!("model route has no known api ({})", route.api)))?;
    let path = format!("models.providers.{}", route.provider);
    let pointer = format!("/models/{}/apiKey", route.provider);
    if !valid_config_path(&path) || !valid_secret_pointer(&pointer) {
        return Err(RuntimeError::Invalid(format!("invalid model provider {:?}", route.provider)));
    }
    if route.models.is_empty() || route.models.len() > 64 || route.models.iter().any(|m| !valid_model(m)) {
        return Err(RuntimeError::Invalid("model route: 1-64 model ids of letters, digits and -_.:/".into()));
    }
    let models: Vec<_> = route.models.iter().map(|id| json!({"id": id, "name": id})).collect();
    let entry = json!({
        "api": api,
        "baseUrl": meter.provider_base_url(ModelApi::try_from(route.api).unwrap_or_default()),
        "apiKey": {"source": "file", "provider": "clawplane", "id": pointer},
        "models": models,
    });
    meter.set_route(tenant_id, route).map_err(RuntimeError::Other)?;
    Ok(((path, entry.to_string()), (pointer, meter.credential(tenant_id).into_bytes())))
}

fn valid_model(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
}
