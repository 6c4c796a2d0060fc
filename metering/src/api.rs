//! The three wire formats OpenClaw speaks to models: where their calls land
//! on the proxy, where they go upstream, how they carry the key, and what
//! their errors look like.
use bytes::Bytes;
use clawplane_proto::v1::ModelApi;
use http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// OpenAI chat completions.
    Chat,
    /// OpenAI responses.
    Responses,
    /// Anthropic messages.
    Anthropic,
}

pub(crate) const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The proxy's path prefix for the OpenAI formats: OpenClaw's OpenAI
/// clients append `/chat/completions` or `/responses` to a provider's
/// `baseUrl`.
pub(crate) const OPENAI_BASE: &str = "/openai/v1";
/// For Anthropic's: its SDK appends `/v1/messages` to `baseUrl`.
pub(crate) const ANTHROPIC_BASE: &str = "/anthropic";

impl Api {
    pub(crate) fn from_proto(api: ModelApi) -> Option<Api> {
        match api {
            ModelApi::OpenaiCompletions => Some(Api::Chat),
            ModelApi::OpenaiResponses => Some(Api::Responses),
            ModelApi::AnthropicMessages => Some(Api::Anthropic),
            ModelApi::Unspecified => None,
        }
    }

    pub(crate) fn proto(self) -> ModelApi {
        match self {
            Api::Chat => ModelApi::OpenaiCompletions,
            Api::Responses => ModelApi::OpenaiResponses,
            Api::Anthropic => ModelApi::AnthropicMessages,
        }
    }

    /// OpenClaw's name for it (`api` of a provider entry).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Api::Chat => "openai-completions",
            Api::Responses => "openai-responses",
            Api::Anthropic => "anthropic-messages",
        }
    }

    pub(crate) fn base_path(self) -> &'static str {
        match self {
            Api::Chat | Api::Responses => OPENAI_BASE,
            Api::Anthropic => ANTHROPIC_BASE,
        }
    }

    /// The format a request path is a call of, and the suffix that goes
    /// after the upstream's base URL. `/anthropic/messages` is accepted for
    /// clients whose base URL already ends in `/v1`.
    pub(crate) fn of_path(path: &str) -> Option<(Api, &'static str)> {
        match path {
            "/openai/v1/chat/completions" => Some((Api::Chat, "/chat/completions")),
            "/openai/v1/responses" => Some((Api::Responses, "/responses")),
            "/anthropic/v1/messages" | "/anthropic/messages" => Some((Api::Anthropic, "/v1/messages")),
            _ => None,
        }
    }

    /// The upstream URL of a call: the route's base (OpenClaw's `baseUrl`
    /// convention: OpenAI's ends in `/v1`, Anthropic's does not) with the
    /// call's suffix; an Anthropic base that ends in `/v1` anyway is not
    /// given a second one.
    pub(crate) fn upstream_url(self, base: &str, suffix: &str, query: Option<&str>) -> String {
        let suffix = match suffix.strip_prefix("/v1") {
            Some(rest) if self == Api::Anthropic && base.ends_with("/v1") => rest,
            _ => suffix,
        };
        match query {
            Some(query) => format!("{base}{suffix}?{query}"),
            None => format!("{base}{suffix}"),
        }
    }

    /// The credential a client presented, in this format's header
    /// (Anthropic's SDK sends `x-api-key`, or a bearer token for OAuth-style
    /// keys; OpenAI's a bearer token).
    pub(crate) fn presented_key(self, headers: &HeaderMap) -> Option<&str> {
        let bearer = || {
            let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        };
        match self {
            Api::Chat | Api::Responses => bearer(),
            Api::Anthropic => headers.get(X_API_KEY).and_then(|v| v.to_str().ok()).or_else(bearer),
        }
    }

    /// The header that carries an upstream key in this format, and its
    /// value (marked sensitive: never printed by `Debug`, never indexed by
    /// HPACK).
    pub(crate) fn auth_header(self, key: &[u8]) -> Option<(HeaderName, HeaderValue)> {
        let mut value = match self {
            Api::Chat | Api::Responses => {
                let mut bearer = b"Bearer ".to_vec();
                bearer.extend_from_slice(key);
                HeaderValue::from_bytes(&bearer).ok()?
            }
            Api::Anthropic => HeaderValue::from_bytes(key).ok()?,
        };
        value.set_sensitive(true);
        let name = match self {
            Api::Chat | Api::Responses => http::header::AUTHORIZATION,
            Api::Anthropic => X_API_KEY,
        };
        Some((name, value))
    }

    /// An error body in this format's own shape, so the client's SDK shows
    /// `message` as it would an upstream's.
    pub(crate) fn error_body(self, kind: &str, message: &str) -> Bytes {
        let body = match self {
            Api::Chat | Api::Responses => serde_json::json!({
                "error": {"message": message, "type": kind, "param": null, "code": kind}
            }),
            Api::Anthropic => serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}),
        };
        Bytes::from(body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_follow_openclaw_base_url_conventions() {
        let cases = [
            (
                Api::Chat,
                "https://api.openai.com/v1",
                "/chat/completions",
                None,
                "https://api.openai.com/v1/chat/completions",
            ),
            (Api::Responses, "http://127.0.0.1:9/v1", "/responses", None, "http://127.0.0.1:9/v1/responses"),
            (
                Api::Anthropic,
                "https://api.anthropic.com",
                "/v1/messages",
                Some("beta=true"),
                "https://api.anthropic.com/v1/messages?beta=true",
            ),
            (
                Api::Anthropic,
                "https://api.minimax.io/anthropic",
                "/v1/messages",
                None,
                "https://api.minimax.io/anthropic/v1/messages",
            ),
            (Api::Anthropic, "https://proxy.example/v1", "/v1/messages", None, "https://proxy.example/v1/messages"),
        ];
        for (api, base, suffix, query, url) in cases {
            assert_eq!(api.upstream_url(base, suffix, query), url);
        }
    }

    #[test]
    fn paths_name_their_format() {
        assert_eq!(Api::of_path("/openai/v1/chat/completions"), Some((Api::Chat, "/chat/completions")));
        assert_eq!(Api::of_path("/anthropic/messages"), Some((Api::Anthropic, "/v1/messages")));
        assert_eq!(Api::of_path("/openai/v1/models"), None);
        assert_eq!(Api::of_path("/"), None);
    }
}
