//! What every service does with a request before its own work: who is
//! calling, whether they may see the tenant, and the shared checks and
//! encodings of request fields (pages, timestamps, labels, ids).
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};

pub use crate::wire::{check_text, timestamp};

use super::error::{ApiError, ApiResult};
use clawplane_identity::Principal;

use crate::auth::Authentication;
use crate::store::{Store, TenantRecord};

/// The caller of a request, or UNAUTHENTICATED naming what was wrong.
pub fn caller<T>(request: &tonic::Request<T>) -> ApiResult<Principal> {
    match request.extensions().get::<Authentication>() {
        Some(Authentication(Ok(principal))) => Ok(principal.clone()),
        Some(Authentication(Err(err))) => Err(err.clone().into()),
        None => Err(ApiError::Unauthenticated("missing credentials".into())),
    }
}

/// The caller, who must be an operator.
pub fn admin<T>(request: &tonic::Request<T>) -> ApiResult<Principal> {
    let principal = caller(request)?;
    if !principal.is_admin {
        return Err(ApiError::PermissionDenied("this call needs an admin identity".into()));
    }
    Ok(principal)
}

/// google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z ..
/// 9999-12-31T23:59:59.999999999Z (seconds since the epoch).
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A request timestamp, refused outside the range the protobuf type defines
/// (so later date arithmetic has room on both sides).
pub fn check_timestamp(field: &str, value: &prost_types::Timestamp) -> ApiResult<DateTime<Utc>> {
    let in_range = (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&value.seconds)
        && (0..=999_999_999).contains(&value.nanos);
    in_range.then(|| DateTime::from_timestamp(value.seconds, value.nanos as u32)).flatten().ok_or_else(|| {
        ApiError::invalid(format!(
            "{field} must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z \
             (seconds {MIN_TIMESTAMP_SECONDS}..={MAX_TIMESTAMP_SECONDS}, nanos 0..=999999999)"
        ))
    })
}

/// An optional request timestamp (see [`check_timestamp`]).
pub fn optional_timestamp(field: &str, value: Option<&prost_types::Timestamp>) -> ApiResult<Option<DateTime<Utc>>> {
    value.map(|t| check_timestamp(field, t)).transpose()
}

/// A short, quoted prefix of caller input for error messages: echoing a
/// megabyte back in grpc-message would itself be a problem.
pub fn shown(value: &str) -> String {
    const SHOWN: usize = 40;
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// Page size from a request: 0 means the default, large values are capped.
pub fn page_size(requested: i32, default: u64, max: u64) -> ApiResult<u64> {
    match requested {
        n if n < 0 => Err(ApiError::invalid("page_size must not be negative")),
        0 => Ok(default),
        n => Ok((n as u64).min(max)),
    }
}

/// Page tokens are opaque to callers: base64url of the last key seen.
pub fn encode_page_token(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{last_key}"))
}

/// The token for the page after one ending at `last_key`, if more follow.
pub fn next_page_token(more: bool, last_key: Option<&str>) -> String {
    match (more, last_key) {
        (true, Some(key)) => encode_page_token(key),
        _ => String::new(),
    }
}

/// Longest page token accepted; ours are far shorter.
pub const MAX_PAGE_TOKEN: usize = 512;

pub fn decode_page_token(token: &str) -> ApiResult<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > MAX_PAGE_TOKEN {
        return Err(ApiError::invalid(format!("page_token must be at most {MAX_PAGE_TOKEN} characters")));
    }
    let invalid = || ApiError::invalid("page_token is not a token returned by this API");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let key = text.strip_prefix("v1:").ok_or_else(invalid)?;
    // Ours never hold control characters; PostgreSQL refuses a NUL outright.
    if key.chars().any(char::is_control) {
        return Err(invalid());
    }
    Ok(Some(key.to_string()))
}

/// Label keys and values: the Kubernetes-style shape operators expect.
pub fn check_label(key: &str, value: &str) -> ApiResult<()> {
    let key_ok =
        !key.is_empty() && key.len() <= 63 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    if !key_ok {
        return Err(ApiError::invalid(format!(
            "label key {} must be 1-63 characters of letters, digits, '-', '_', '.', '/'",
            shown(key)
        )));
    }
    Ok(check_text("label value", value, 253)?)
}

/// A required identifier from a request.
pub fn required_id<'a>(field: &str, value: &'a str) -> ApiResult<&'a str> {
    if value.is_empty() {
        return Err(ApiError::invalid(format!("{field} is required")));
    }
    check_text(field, value, 128)?;
    Ok(value)
}

/// A live tenant the caller may see (its owner by the rule the bridge
/// applies too, or an operator); anything else is NOT_FOUND, so the
/// existence of other owners' tenants never leaks.
pub async fn visible_tenant(store: &Store, principal: &Principal, id_or_slug: &str) -> ApiResult<TenantRecord> {
    let id_or_slug = required_id("tenant_id", id_or_slug)?;
    let record = store.live_tenant(id_or_slug).await?.ok_or(ApiError::NotFound("tenant"))?;
    if principal.is_admin || principal.owns(&record.owner()) {
        Ok(record)
    } else {
        Err(ApiError::NotFound("tenant"))
    }
}
