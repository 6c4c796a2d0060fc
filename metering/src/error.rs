//! Every way a call ends early, mapped once to its HTTP answer (in the
//! call's own format) and its journal outcome.
use bytes::Bytes;
use clawplane_proto::v1::ModelCallOutcome;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::allowance::Refusal;
use crate::api::Api;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("no such endpoint on the model proxy")]
    NotFound,
    #[error("the model proxy needs this tenant's own credential")]
    Unauthenticated,
    #[error("no model is configured for this workspace")]
    NoRoute,
    #[error("this workspace's model is served over {route}, not {called}")]
    WrongApi { route: &'static str, called: &'static str },
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("model {model:?} is not available to this workspace; available: {}", allowed.join(", "))]
    UnknownModel { model: String, allowed: Vec<String> },
    #[error("{}", refusal_text(.0))]
    Refused(Refusal),
    #[error("the model provider could not be reached")]
    Unreachable,
    #[error("the model provider did not answer in time")]
    UpstreamTimeout,
}

fn refusal_text(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Quota(message) => message.clone(),
        Refusal::Rate(wait) => format!(
            "Clawplane: too many model calls per minute for this workspace; retry in {} s",
            clawplane_edge::rate::retry_after_secs(*wait)
        ),
        Refusal::Busy => "Clawplane: too many model calls of this workspace at once; retry shortly".to_string(),
    }
}

impl CallError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            CallError::NotFound | CallError::UnknownModel { .. } => StatusCode::NOT_FOUND,
            CallError::Unauthenticated => StatusCode::UNAUTHORIZED,
            CallError::NoRoute | CallError::WrongApi { .. } | CallError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CallError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // 400, neither 402 nor 403: OpenClaw reads a 402 as the key's
            // billing failure (its own "top up" text instead of this one)
            // and a 401/403 as an auth failure, and after either it
            // disables the credential for minutes, so a lifted allowance
            // would stay refused. A 400 it classes as a request-format
            // failure: no cooldown, no retry, and the turn ends with this
            // message shown (after any fallback model the tenant has).
            CallError::Refused(Refusal::Quota(_)) => StatusCode::BAD_REQUEST,
            CallError::Refused(_) => StatusCode::TOO_MANY_REQUESTS,
            CallError::Unreachable => StatusCode::BAD_GATEWAY,
            CallError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The journal outcome; None for what is not a tenant's call at all.
    pub(crate) fn outcome(&self) -> Option<ModelCallOutcome> {
        Some(match self {
            CallError::NotFound | CallError::Unauthenticated => return None,
            CallError::NoRoute
            | CallError::WrongApi { .. }
            | CallError::TooLarge { .. }
            | CallError::BadRequest(_)
            | CallError::UnknownModel { .. } => ModelCallOutcome::RefusedInvalid,
            CallError::Refused(Refusal::Quota(_)) => ModelCallOutcome::RefusedQuota,
            CallError::Refused(_) => ModelCallOutcome::RefusedRate,
            CallError::Unreachable | CallError::UpstreamTimeout => ModelCallOutcome::UpstreamFailed,
        })
    }

    /// The error type each format's clients know.
    fn kind(&self, api: Api) -> &'static str {
        match (self, api) {
            (CallError::NotFound, Api::Anthropic) => "not_found_error",
            (CallError::UnknownModel { .. }, Api::Anthropic) => "not_found_error",
            (CallError::UnknownModel { .. }, _) => "model_not_found",
            (CallError::Unauthenticated, _) => "authentication_error",
            (CallError::TooLarge { .. }, Api::Anthropic) => "request_too_large",
            // Not "permission_error": OpenClaw would read it as an auth
            // failure (see `status`).
            (CallError::Refused(Refusal::Quota(_)), Api::Anthropic) => "invalid_request_error",
            (CallError::Refused(Refusal::Quota(_)), _) => "allowance_exhausted",
            (CallError::Refused(_), _) => "rate_limit_error",
            (CallError::Unreachable | CallError::UpstreamTimeout, _) => "api_error",
            _ => "invalid_request_error",
        }
    }

    pub(crate) fn response<B: From<Full<Bytes>>>(&self, api: Api) -> Response<B> {
        let body = api.error_body(self.kind(api), &self.to_string());
        let mut response = Response::new(B::from(Full::new(body)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let CallError::Refused(refusal) = self {
            let wait = match refusal {
                Refusal::Rate(wait) => Some(*wait),
                Refusal::Busy => Some(std::time::Duration::from_secs(1)),
                Refusal::Quota(_) => None,
            };
            if let Some(wait) = wait {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(clawplane_edge::rate::retry_after_secs(wait)));
            }
        }
        response
    }
}
