//! Desired tenant configuration, one row per (type, key), and its
//! generation: every change bumps `desired_generation`; hosts report the
//! generation they applied.
use chrono::Utc;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

use super::entities::{tenant_config, tenant_config_state};
use super::{Store, StoreError, StoreResult};

impl Store {
    pub async fn config_rows(&self, tenant_id: &str) -> StoreResult<Vec<tenant_config::Model>> {
        Ok(tenant_config::Entity::find().filter(tenant_config::Column::TenantId.eq(tenant_id)).all(&self.db).await?)
    }

    pub async fn config_state(&self, tenant_id: &str) -> StoreResult<Option<tenant_config_state::Model>> {
        Ok(tenant_config_state::Entity::find_by_id(tenant_id).one(&self.db).await?)
    }

    /// Writes changed rows and bumps the generation in one transaction.
    /// With `expected_generation`, a concurrent change makes this fail
    /// (compare-and-set) instead of silently overwriting it.
    pub async fn save_config(
        &self,
        tenant_id: &str,
        rows: Vec<tenant_config::Model>,
        expected_generation: Option<i64>,
    ) -> StoreResult<i64> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        // Create the state row first: the write takes SQLite's lock up front.
        tenant_config_state::Entity::insert(tenant_config_state::ActiveModel {
            tenant_id: Set(tenant_id.to_string()),
            desired_generation: Set(0),
            applied_generation: Set(0),
            last_apply_error: Set(None),
            observed: Set(None),
            updated_at: Set(now),
        })
        .on_conflict(OnConflict::column(tenant_config_state::Column::TenantId).do_nothing().to_owned())
        .do_nothing()
        .exec(&txn)
        .await?;
        let mut bump = tenant_config_state::Entity::update_many()
            .col_expr(
                tenant_config_state::Column::DesiredGeneration,
                Expr::col(tenant_config_state::Column::DesiredGeneration).add(1),
            )
            .col_expr(tenant_config_state::Column::UpdatedAt, Expr::value(now))
            .filter(tenant_config_state::Column::TenantId.eq(tenant_id));
        if let Some(expected) = expected_generation {
            bump = bump.filter(tenant_config_state::Column::DesiredGeneration.eq(expected));
        }
        if bump.exec(&txn).await?.rows_affected == 0 {
            return Err(StoreError::Stale(format!(
                "expected_generation {} is not the current generation; the configuration changed, read it again",
                expected_generation.unwrap_or_default()
            )));
        }
        for row in rows {
            tenant_config::Entity::insert(tenant_config::ActiveModel::from(row))
                .on_conflict(
                    OnConflict::columns([
                        tenant_config::Column::TenantId,
                        tenant_config::Column::ConfigType,
                        tenant_config::Column::ConfigKey,
                    ])
                    .update_columns([
                        tenant_config::Column::Value,
                        tenant_config::Column::SecretCiphertext,
                        tenant_config::Column::Enabled,
                        tenant_config::Column::UpdatedAt,
                    ])
                    .to_owned(),
                )
                .exec(&txn)
                .await?;
        }
        let state = tenant_config_state::Entity::find_by_id(tenant_id)
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound("config"))?;
        txn.commit().await?;
        Ok(state.desired_generation)
    }

    /// Records the outcome of applying `generation` on the host.
    pub async fn record_config_apply(
        &self,
        tenant_id: &str,
        generation: i64,
        error: Option<String>,
    ) -> StoreResult<()> {
        let now = Utc::now();
        let mut update = tenant_config_state::Entity::update_many()
            .col_expr(tenant_config_state::Column::LastApplyError, Expr::value(error.clone()))
            .col_expr(tenant_config_state::Column::UpdatedAt, Expr::value(now))
            .filter(tenant_config_state::Column::TenantId.eq(tenant_id));
        if error.is_none() {
            update = update
                .col_expr(tenant_config_state::Column::AppliedGeneration, Expr::value(generation))
                .filter(tenant_config_state::Column::AppliedGeneration.lt(generation));
        }
        update.exec(&self.db).await?;
        Ok(())
    }

    /// Records the tenant's openclaw.json as last seen after a change made
    /// outside Clawplane (secrets already redacted by the agent).
    pub async fn record_observed_config(&self, tenant_id: &str, observed: serde_json::Value) -> StoreResult<()> {
        let now = Utc::now();
        tenant_config_state::Entity::insert(tenant_config_state::ActiveModel {
            tenant_id: Set(tenant_id.to_string()),
            desired_generation: Set(0),
            applied_generation: Set(0),
            last_apply_error: Set(None),
            observed: Set(Some(observed.clone())),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(tenant_config_state::Column::TenantId)
                .update_column(tenant_config_state::Column::Observed)
                .to_owned(),
        )
        .exec(&self.db)
        .await?;
        Ok(())
    }
}
