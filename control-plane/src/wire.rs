//! Conversions and checks every service shares at the edge of the wire:
//! protobuf timestamps and bounded request text.
use chrono::{DateTime, Utc};

use crate::service_error::{into_status, ServiceError, ServiceErrorCode};

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

/// A request field that breaks its rule; the message names both.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidField(pub String);

impl ServiceError for InvalidField {
    fn error_code(&self) -> ServiceErrorCode {
        ServiceErrorCode::InvalidArgument
    }
}

into_status!(InvalidField);

/// Bounded, printable free text (names, ids from requests).
pub fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), InvalidField> {
    if value.chars().count() > max_chars {
        return Err(InvalidField(format!("{field} must be at most {max_chars} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidField(format!("{field} must not contain control characters")));
    }
    Ok(())
}
