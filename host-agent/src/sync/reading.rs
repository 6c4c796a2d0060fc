//! What one read of a tenant's state produced, and the time stamps on it.
use std::time::{SystemTime, UNIX_EPOCH};

use clawplane_proto::v1::SyncRecord;

use super::cursors::{CursorKey, Position};

/// What one read produced: records to send and the positions they reach.
#[derive(Debug, Default)]
pub struct Reading {
    pub records: Vec<SyncRecord>,
    pub advanced: Vec<(CursorKey, Position)>,
    /// The budget ran out before the end.
    pub more: bool,
    pub parse_errors: u64,
}

impl Reading {
    pub fn parse_error(&mut self, at: &str, detail: &str) {
        self.parse_errors += 1;
        tracing::warn!(at, detail, "transcript event skipped: it cannot be parsed");
    }

    pub(super) fn extend(&mut self, other: Reading) {
        self.records.extend(other.records);
        self.advanced.extend(other.advanced);
        self.more |= other.more;
        self.parse_errors += other.parse_errors;
    }
}

pub fn millis(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
