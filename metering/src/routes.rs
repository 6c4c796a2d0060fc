//! Tenants' routes as the proxy uses them: checked once when set, the key
//! held only as a sensitive header value (never printed).
use clawplane_proto::v1::{ModelApi, ModelRoute};
use http::{HeaderName, HeaderValue};

use crate::api::Api;

pub(crate) struct Route {
    pub provider: String,
    pub api: Api,
    /// `scheme://authority[/path]`, no trailing slash.
    pub base: String,
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub models: Vec<String>,
    pub platform_key: bool,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("provider", &self.provider)
            .field("api", &self.api)
            .field("base", &self.base)
            .field("key", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .field("platform_key", &self.platform_key)
            .finish()
    }
}

/// Longest model id and most models a route may list.
const MAX_MODEL_ID: usize = 256;
const MAX_MODELS: usize = 256;

impl Route {
    /// Errors name the field, never the key.
    pub(crate) fn compile(route: &ModelRoute) -> anyhow::Result<Route> {
        let api = ModelApi::try_from(route.api)
            .ok()
            .and_then(Api::from_proto)
            .ok_or_else(|| anyhow::anyhow!("model route: api must be set"))?;
        let base = route.upstream_base_url.trim().trim_end_matches('/');
        let uri: http::Uri =
            base.parse().map_err(|_| anyhow::anyhow!("model route: upstream_base_url {base:?} is not a URL"))?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
        if !scheme_ok || uri.authority().is_none() || uri.query().is_some() {
            anyhow::bail!("model route: upstream_base_url {base:?} must be http(s)://host[:port][/path]");
        }
        let auth = if route.api_key.is_empty() {
            None
        } else {
            Some(
                api.auth_header(&route.api_key)
                    .ok_or_else(|| anyhow::anyhow!("model route: api_key has bytes a header cannot carry"))?,
            )
        };
        if route.models.len() > MAX_MODELS || route.models.iter().any(|m| m.is_empty() || m.len() > MAX_MODEL_ID) {
            anyhow::bail!("model route: at most {MAX_MODELS} models of 1-{MAX_MODEL_ID} bytes each");
        }
        if route.provider.is_empty() || route.provider.len() > MAX_MODEL_ID {
            anyhow::bail!("model route: provider must be 1-{MAX_MODEL_ID} bytes");
        }
        Ok(Route {
            provider: route.provider.clone(),
            api,
            base: base.to_string(),
            auth,
            models: route.models.clone(),
            platform_key: route.platform_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_checked_and_never_show_their_key() {
        let mut route = ModelRoute {
            provider: "openai".into(),
            api: ModelApi::OpenaiCompletions as i32,
            upstream_base_url: "https://api.openai.com/v1/".into(),
            api_key: b"sk-secret-123".to_vec(),
            models: vec!["gpt-x".into()],
            platform_key: true,
        };
        let compiled = Route::compile(&route).unwrap();
        assert_eq!(compiled.base, "https://api.openai.com/v1");
        let shown = format!("{compiled:?}");
        assert!(!shown.contains("sk-secret") && shown.contains("redacted"), "{shown}");
        route.api_key = b"bad\nkey".to_vec();
        let err = Route::compile(&route).unwrap_err().to_string();
        assert!(!err.contains("bad"), "{err}");
        for url in ["ftp://x", "not a url", "/relative", "https://x/v1?q=1"] {
            route.api_key = b"k".to_vec();
            route.upstream_base_url = url.into();
            assert!(Route::compile(&route).is_err(), "{url}");
        }
        route.upstream_base_url = "http://127.0.0.1:1".into();
        route.api = 0;
        assert!(Route::compile(&route).is_err());
    }
}
