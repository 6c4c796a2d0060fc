//! The audit log: who did what to which tenant, written in the same
//! transaction as the change.
use chrono::Utc;
use sea_orm::{EntityTrait, Set};
use uuid::Uuid;

use super::entities::audit_log;
use super::StoreResult;

pub(super) async fn audit<C: sea_orm::ConnectionTrait>(
    db: &C,
    actor: &str,
    action: &str,
    target_id: &str,
    detail: serde_json::Value,
) -> StoreResult<()> {
    audit_log::Entity::insert(audit_log::ActiveModel {
        id: Set(Uuid::now_v7().to_string()),
        at: Set(Utc::now()),
        actor: Set(actor.to_owned()),
        action: Set(action.to_owned()),
        target_kind: Set("tenant".into()),
        target_id: Set(target_id.to_owned()),
        detail: Set(detail),
    })
    .exec(db)
    .await?;
    Ok(())
}
