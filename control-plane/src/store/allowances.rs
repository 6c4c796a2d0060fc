//! The allowance last pushed to each tenant's host: a signature of what
//! the agent cannot work out by itself (period, limits, blocked and why,
//! thresholds reached, the host), so a push happens only when it changes.
use chrono::Utc;
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{ConnectionTrait, EntityTrait};

use super::entities::allowance_state;
use super::{Store, StoreResult};

pub use allowance_state::Model as AllowanceState;

impl Store {
    pub async fn allowance_state(&self, tenant_id: &str) -> StoreResult<Option<AllowanceState>> {
        Ok(allowance_state::Entity::find_by_id(tenant_id).one(&self.db).await?)
    }

    pub async fn save_allowance_state(
        &self,
        tenant_id: &str,
        host_id: &str,
        signature: &str,
        blocked: bool,
    ) -> StoreResult<()> {
        use allowance_state::Column as C;
        let mut insert = Query::insert();
        insert
            .into_table(allowance_state::Entity)
            .columns([C::TenantId, C::HostId, C::Signature, C::Blocked, C::PushedAt])
            .values_panic([tenant_id.into(), host_id.into(), signature.into(), blocked.into(), Utc::now().into()]);
        insert.on_conflict(
            OnConflict::column(C::TenantId)
                .update_columns([C::HostId, C::Signature, C::Blocked, C::PushedAt])
                .to_owned(),
        );
        self.db.execute(self.db.get_database_backend().build(&insert)).await?;
        Ok(())
    }
}
