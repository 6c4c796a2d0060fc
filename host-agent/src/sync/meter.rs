//! The metering proxy's journal as a sync source: one record per model
//! call, at its journal position, sent like transcript events (the control
//! plane deduplicates by call id, so a resend counts nothing twice).
use clawplane_metering::Journal;
use clawplane_proto::v1::{sync_record, SyncRecord, SyncSource};

use super::cursors::{CursorKey, Cursors, Position};
use super::reading::Reading;

/// The one stream of a tenant's journal.
const STREAM: &str = "meter";

/// Model calls of `tenant_id` after the cursor, at most `budget`.
pub fn read(journal: &Journal, tenant_id: &str, cursors: &Cursors, budget: usize) -> std::io::Result<Reading> {
    let key = CursorKey::new(tenant_id, "", SyncSource::Meter, STREAM);
    // The cursor is one past the last record sent: reading resumes at the
    // first record starting there or later.
    let from = cursors.read(&key).map_or(0, |at| at.position);
    let calls = journal.read(tenant_id, from, budget + 1)?;
    let mut reading = Reading { more: calls.len() > budget, ..Default::default() };
    let mut next = None;
    for (position, call) in calls.into_iter().take(budget) {
        next = Some(position + 1);
        reading.records.push(SyncRecord {
            tenant_id: tenant_id.to_string(),
            source: SyncSource::Meter as i32,
            position,
            body: Some(sync_record::Body::ModelCall(call)),
            ..Default::default()
        });
    }
    if let Some(next) = next {
        reading.advanced.push((key, Position { position: next, identity: String::new() }));
    }
    Ok(reading)
}
