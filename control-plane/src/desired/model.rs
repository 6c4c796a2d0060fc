//! Which upstream a tenant's model calls go to, and with whose key. Every
//! call goes through the host's metering proxy, which holds the key: the
//! tenant's openclaw.json only ever names the proxy and a credential that
//! identifies the tenant.
use clawplane_proto::v1::ModelApi;

/// The model the SaaS provides (`[models.platform]`): the operator's
/// upstream and key, metered against the tenant's plan.
#[derive(Clone)]
pub struct PlatformModel {
    /// Provider id tenants select it by (SetModel.provider).
    pub provider: String,
    pub api: ModelApi,
    pub base_url: String,
    pub api_key: String,
    /// Model ids tenants may use.
    pub models: Vec<String>,
    /// The model of a tenant that chose none.
    pub default_model: String,
}

impl std::fmt::Debug for PlatformModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformModel")
            .field("provider", &self.provider)
            .field("api", &self.api)
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("models", &self.models)
            .field("default_model", &self.default_model)
            .finish()
    }
}

/// A tenant's model as the host's proxy serves it.
#[derive(Clone, PartialEq, Eq)]
pub struct ModelRoute {
    pub provider: String,
    pub api: ModelApi,
    /// The model OpenClaw uses by default.
    pub model: String,
    /// Every model the tenant may call through the route.
    pub models: Vec<String>,
    pub upstream_base_url: String,
    pub api_key: Option<String>,
    /// The platform's key (the plan's allowance applies).
    pub platform: bool,
}

impl std::fmt::Debug for ModelRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRoute")
            .field("provider", &self.provider)
            .field("api", &self.api)
            .field("model", &self.model)
            .field("upstream_base_url", &self.upstream_base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("platform", &self.platform)
            .finish()
    }
}

impl PlatformModel {
    pub fn route(&self, model: &str) -> ModelRoute {
        ModelRoute {
            provider: self.provider.clone(),
            api: self.api,
            model: model.to_string(),
            models: self.models.clone(),
            upstream_base_url: self.base_url.clone(),
            api_key: Some(self.api_key.clone()),
            platform: true,
        }
    }
}

/// The public upstream of a provider Clawplane knows, for a tenant's own
/// key without a base_url. The proxy appends the call's path (e.g.
/// `/chat/completions`, `/v1/messages`) to it.
pub fn known_upstream(provider: &str, api: ModelApi) -> Option<&'static str> {
    match (provider, api) {
        ("openai", ModelApi::OpenaiCompletions | ModelApi::OpenaiResponses) => Some("https://api.openai.com/v1"),
        ("anthropic", ModelApi::AnthropicMessages) => Some("https://api.anthropic.com"),
        _ => None,
    }
}

/// The API a provider speaks when the caller did not say.
pub fn default_api(provider: &str) -> ModelApi {
    match provider {
        "anthropic" => ModelApi::AnthropicMessages,
        _ => ModelApi::OpenaiCompletions,
    }
}

/// OpenClaw's name of an API (`api` of a provider entry).
pub fn api_name(api: ModelApi) -> &'static str {
    match api {
        ModelApi::OpenaiResponses => "openai-responses",
        ModelApi::AnthropicMessages => "anthropic-messages",
        ModelApi::OpenaiCompletions | ModelApi::Unspecified => "openai-completions",
    }
}

/// Provider ids become OpenClaw config path segments.
pub fn valid_provider(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 40
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && value.as_bytes()[0].is_ascii_alphanumeric()
}

pub fn valid_model(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
}
