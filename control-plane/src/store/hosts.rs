//! Hosts, their join tokens and certificates, and the durable per-host
//! command queue.
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use prost::Message as _;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde_json::{json, Value};
use uuid::Uuid;

use super::entities::{host, host_certificate, host_command, join_token, tenant, CommandKind, CommandState, HostState};
use super::{Store, StoreError, StoreResult};

/// Why a join token was refused. Each has its own message so an operator
/// knows what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error("token_unknown: join token not recognised (check the token id and secret)")]
    Unknown,
    #[error("token_expired: join token has expired; create a new one with `clawplane token create`")]
    Expired,
    #[error("token_used: join token was already used; create a new one with `clawplane token create`")]
    Used,
    #[error("token_revoked: join token was revoked")]
    Revoked,
}

/// States of a command that still wants an answer.
const OPEN: [CommandState; 3] = [CommandState::Pending, CommandState::Delivered, CommandState::Acked];

/// What the live tenants on a host take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLoad {
    pub tenants: u64,
    /// Sum of their plans' memory limits.
    pub committed_memory_bytes: u64,
}

pub struct NewHostCert {
    pub serial: String,
    pub fingerprint: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl Store {
    pub async fn create_join_token(&self, token: join_token::Model) -> StoreResult<()> {
        join_token::Entity::insert(join_token::ActiveModel::from(token)).exec(&self.db).await?;
        Ok(())
    }

    pub async fn list_join_tokens(
        &self,
        after_id: Option<&str>,
        limit: u64,
    ) -> StoreResult<(Vec<join_token::Model>, bool)> {
        let mut query = join_token::Entity::find();
        if let Some(after) = after_id {
            query = query.filter(join_token::Column::Id.gt(after));
        }
        let mut rows = query.order_by_asc(join_token::Column::Id).limit(limit + 1).all(&self.db).await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }

    pub async fn revoke_join_token(&self, id: &str) -> StoreResult<join_token::Model> {
        join_token::Entity::update_many()
            .col_expr(join_token::Column::RevokedAt, Expr::value(Some(Utc::now())))
            .filter(join_token::Column::Id.eq(id))
            .filter(join_token::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        join_token::Entity::find_by_id(id).one(&self.db).await?.ok_or(StoreError::NotFound("join token"))
    }

    /// Spends one use of a join token. The conditional UPDATE is the single
    /// point of truth, so two hosts racing for a single-use token cannot both
    /// win, on either backend.
    pub async fn consume_join_token(
        &self,
        id: &str,
        secret_matches: impl Fn(&str) -> bool,
    ) -> StoreResult<Result<join_token::Model, JoinTokenError>> {
        let Some(token) = join_token::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(Err(JoinTokenError::Unknown));
        };
        if !secret_matches(&token.secret_hash) {
            return Ok(Err(JoinTokenError::Unknown));
        }
        let now = Utc::now();
        let updated = join_token::Entity::update_many()
            .col_expr(join_token::Column::Uses, Expr::col(join_token::Column::Uses).add(1))
            .filter(join_token::Column::Id.eq(id))
            .filter(Expr::col(join_token::Column::Uses).lt(Expr::col(join_token::Column::MaxUses)))
            .filter(join_token::Column::RevokedAt.is_null())
            .filter(join_token::Column::ExpiresAt.gt(now))
            .exec(&self.db)
            .await?;
        if updated.rows_affected == 1 {
            return Ok(Ok(token));
        }
        let current =
            join_token::Entity::find_by_id(id).one(&self.db).await?.ok_or(StoreError::NotFound("join token"))?;
        Ok(Err(if current.revoked_at.is_some() {
            JoinTokenError::Revoked
        } else if current.expires_at <= now {
            JoinTokenError::Expired
        } else {
            JoinTokenError::Used
        }))
    }

    /// Records a newly joined host and its first certificate.
    pub async fn create_host(&self, host: host::Model, cert: NewHostCert) -> StoreResult<()> {
        let txn = self.db.begin().await?;
        host::Entity::insert(host::ActiveModel::from(host.clone())).exec(&txn).await?;
        insert_cert(&txn, &host.id, cert).await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn add_host_certificate(&self, host_id: &str, cert: NewHostCert) -> StoreResult<()> {
        insert_cert(&self.db, host_id, cert).await
    }

    /// The certificate with this fingerprint and its host.
    pub async fn certificate(&self, fingerprint: &str) -> StoreResult<Option<(host_certificate::Model, host::Model)>> {
        let Some(cert) = host_certificate::Entity::find()
            .filter(host_certificate::Column::FingerprintSha256.eq(fingerprint))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let host = host::Entity::find_by_id(&cert.host_id).one(&self.db).await?;
        Ok(host.map(|host| (cert, host)))
    }

    /// The newest unrevoked certificate's expiry of each of `host_ids`, in
    /// one query (hosts without one are absent).
    pub async fn certificate_expiries(
        &self,
        host_ids: &[String],
    ) -> StoreResult<std::collections::HashMap<String, DateTime<Utc>>> {
        let rows: Vec<(String, Option<DateTime<Utc>>)> = host_certificate::Entity::find()
            .select_only()
            .column(host_certificate::Column::HostId)
            .column_as(host_certificate::Column::NotAfter.max(), "not_after")
            .filter(host_certificate::Column::HostId.is_in(host_ids.iter().cloned()))
            .filter(host_certificate::Column::RevokedAt.is_null())
            .group_by(host_certificate::Column::HostId)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().filter_map(|(host, not_after)| Some((host, not_after?))).collect())
    }

    /// Every host not removed (for the route table).
    pub async fn all_hosts(&self) -> StoreResult<Vec<host::Model>> {
        Ok(host::Entity::find().filter(host::Column::Status.ne(HostState::Removed)).all(&self.db).await?)
    }

    pub async fn host(&self, id: &str) -> StoreResult<Option<host::Model>> {
        Ok(host::Entity::find_by_id(id).one(&self.db).await?)
    }

    pub async fn list_hosts(&self, after_id: Option<&str>, limit: u64) -> StoreResult<(Vec<host::Model>, bool)> {
        let mut query = host::Entity::find();
        if let Some(after) = after_id {
            query = query.filter(host::Column::Id.gt(after));
        }
        let mut rows = query.order_by_asc(host::Column::Id).limit(limit + 1).all(&self.db).await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }

    /// Live tenants on each of `host_ids` and the sum of their plans'
    /// memory limits, in one query (hosts without any are absent).
    pub async fn host_loads(&self, host_ids: &[String]) -> StoreResult<std::collections::HashMap<String, HostLoad>> {
        let rows: Vec<(Option<String>, i64, i64)> = tenant::Entity::find()
            .select_only()
            .column(tenant::Column::HostId)
            .column_as(tenant::Column::Id.count(), "tenants")
            // CAST: PostgreSQL sums BIGINT into NUMERIC.
            .column_as(Expr::cust("CAST(COALESCE(SUM(plans.memory_limit_mib), 0) AS BIGINT)"), "memory_mib")
            .join(sea_orm::JoinType::LeftJoin, sea_orm::RelationTrait::def(&tenant::Relation::Plan))
            .filter(tenant::Column::HostId.is_in(host_ids.iter().cloned()))
            .filter(tenant::Column::DeletedAt.is_null())
            .group_by(tenant::Column::HostId)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(host, tenants, memory_mib)| {
                let load = HostLoad {
                    tenants: tenants.max(0) as u64,
                    committed_memory_bytes: (memory_mib.max(0) as u64) << 20,
                };
                Some((host?, load))
            })
            .collect())
    }

    /// Live tenants on one host and their plans' committed memory.
    pub async fn host_load(&self, host_id: &str) -> StoreResult<HostLoad> {
        Ok(self.host_loads(&[host_id.to_string()]).await?.remove(host_id).unwrap_or_default())
    }

    /// Sets the administrative state of a host that is not removed.
    pub async fn set_host_state(&self, id: &str, state: HostState) -> StoreResult<host::Model> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let mut update = host::Entity::update_many()
            .col_expr(host::Column::Status, Expr::value(state))
            .col_expr(host::Column::UpdatedAt, Expr::value(now))
            .filter(host::Column::Id.eq(id))
            .filter(host::Column::Status.ne(HostState::Removed));
        if state == HostState::Removed {
            update = update.col_expr(host::Column::RemovedAt, Expr::value(Some(now)));
        }
        let result = update.exec(&txn).await?;
        if result.rows_affected == 0 {
            return Err(StoreError::NotFound("host"));
        }
        if state == HostState::Removed {
            // Removing a host revokes every certificate it holds, at once.
            host_certificate::Entity::update_many()
                .col_expr(host_certificate::Column::RevokedAt, Expr::value(Some(now)))
                .filter(host_certificate::Column::HostId.eq(id))
                .filter(host_certificate::Column::RevokedAt.is_null())
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        host::Entity::find_by_id(id).one(&self.db).await?.ok_or(StoreError::NotFound("host"))
    }

    /// Stores what a host reported in its hello, starts its lease and
    /// claims its stream for `replica`. Returns the stream's generation,
    /// higher than any stream of this host had before.
    pub async fn record_hello(
        &self,
        id: &str,
        inventory: Value,
        lease_until: DateTime<Utc>,
        replica: &str,
    ) -> StoreResult<i64> {
        let now = Utc::now();
        // One transaction: the row stays locked from the bump to the read,
        // so two replicas claiming at once get two generations.
        let txn = self.db.begin().await?;
        let updated = host::Entity::update_many()
            .col_expr(host::Column::Inventory, Expr::value(Some(inventory)))
            .col_expr(host::Column::LastHeartbeatAt, Expr::value(Some(now)))
            .col_expr(host::Column::LeaseExpiresAt, Expr::value(Some(lease_until)))
            .col_expr(host::Column::UpdatedAt, Expr::value(now))
            .col_expr(host::Column::StreamReplica, Expr::value(Some(replica.to_string())))
            .col_expr(host::Column::StreamGeneration, Expr::col(host::Column::StreamGeneration).add(1))
            .filter(host::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            return Err(StoreError::NotFound("host"));
        }
        let generation = host::Entity::find_by_id(id)
            .select_only()
            .column(host::Column::StreamGeneration)
            .into_tuple::<i64>()
            .one(&txn)
            .await?
            .ok_or(StoreError::NotFound("host"))?;
        txn.commit().await?;
        Ok(generation)
    }

    /// Shares what a host's gateways use with the other replicas.
    pub async fn record_host_usage(&self, id: &str, usage: Value) -> StoreResult<()> {
        host::Entity::update_many()
            .col_expr(host::Column::ReportedUsage, Expr::value(Some(usage)))
            .filter(host::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Lets go of a host's stream claim, unless a newer stream has it.
    pub async fn release_stream(&self, id: &str, generation: i64) -> StoreResult<()> {
        host::Entity::update_many()
            .col_expr(host::Column::StreamReplica, Expr::value(Option::<String>::None))
            .filter(host::Column::Id.eq(id))
            .filter(host::Column::StreamGeneration.eq(generation))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Renews the leases of hosts whose streams `replica` still holds, in a
    /// few statements (heartbeats are batched in memory; one UPDATE per
    /// host per beat would not scale). Returns each host's current stream
    /// generation (`i64::MAX` once removed): a stream here with an older
    /// one was replaced elsewhere and must close.
    pub async fn renew_leases(
        &self,
        replica: &str,
        ids: &[String],
        heartbeat_at: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<std::collections::HashMap<String, i64>> {
        let mut claims = std::collections::HashMap::new();
        for chunk in ids.chunks(500) {
            host::Entity::update_many()
                .col_expr(host::Column::LastHeartbeatAt, Expr::value(Some(heartbeat_at)))
                .col_expr(host::Column::LeaseExpiresAt, Expr::value(Some(lease_until)))
                .filter(host::Column::Id.is_in(chunk.iter().cloned()))
                .filter(host::Column::Status.ne(HostState::Removed))
                .filter(host::Column::StreamReplica.eq(replica))
                .exec(&self.db)
                .await?;
            let rows: Vec<(String, i64, HostState)> = host::Entity::find()
                .select_only()
                .column(host::Column::Id)
                .column(host::Column::StreamGeneration)
                .column(host::Column::Status)
                .filter(host::Column::Id.is_in(chunk.iter().cloned()))
                .into_tuple()
                .all(&self.db)
                .await?;
            claims.extend(
                rows.into_iter().map(|(id, generation, state)| {
                    (id, if state == HostState::Removed { i64::MAX } else { generation })
                }),
            );
        }
        Ok(claims)
    }

    pub async fn enqueue_command(
        &self,
        host_id: &str,
        tenant_id: Option<&str>,
        kind: CommandKind,
        payload: Value,
    ) -> StoreResult<String> {
        let now = Utc::now();
        let id = Uuid::now_v7().to_string();
        host_command::Entity::insert(host_command::ActiveModel {
            id: Set(id.clone()),
            host_id: Set(host_id.to_owned()),
            tenant_id: Set(tenant_id.map(String::from)),
            kind: Set(kind),
            payload: Set(payload),
            state: Set(CommandState::Pending),
            attempts: Set(0),
            result: Set(None),
            error: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            delivered_at: Set(None),
            completed_at: Set(None),
        })
        .exec(&self.db)
        .await?;
        Ok(id)
    }

    /// Commands of a host that have no final result yet, oldest first.
    pub async fn open_commands(&self, host_id: &str) -> StoreResult<Vec<host_command::Model>> {
        Ok(host_command::Entity::find()
            .filter(host_command::Column::HostId.eq(host_id))
            .filter(host_command::Column::State.is_in(OPEN))
            .order_by_asc(host_command::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Whether an unfinished command of this kind exists for the tenant.
    pub async fn has_open_command(&self, host_id: &str, tenant_id: &str, kind: CommandKind) -> StoreResult<bool> {
        Ok(host_command::Entity::find()
            .filter(host_command::Column::HostId.eq(host_id))
            .filter(host_command::Column::TenantId.eq(tenant_id))
            .filter(host_command::Column::Kind.eq(kind))
            .filter(host_command::Column::State.is_in(OPEN))
            .count(&self.db)
            .await?
            > 0)
    }

    /// Hosts that may receive new tenants: active (not draining or removed),
    /// with a running lease and a stream to some replica.
    pub async fn placeable_hosts(&self) -> StoreResult<Vec<host::Model>> {
        Ok(host::Entity::find()
            .filter(host::Column::Status.eq(HostState::Active))
            .filter(host::Column::LeaseExpiresAt.gt(Utc::now()))
            .filter(host::Column::StreamReplica.is_not_null())
            .order_by_asc(host::Column::Id)
            .all(&self.db)
            .await?)
    }

    pub async fn command(&self, id: &str) -> StoreResult<Option<host_command::Model>> {
        Ok(host_command::Entity::find_by_id(id).one(&self.db).await?)
    }

    pub async fn mark_delivered(&self, id: &str) -> StoreResult<()> {
        let now = Utc::now();
        host_command::Entity::update_many()
            .col_expr(host_command::Column::State, Expr::value(CommandState::Delivered))
            .col_expr(host_command::Column::Attempts, Expr::col(host_command::Column::Attempts).add(1))
            .col_expr(host_command::Column::DeliveredAt, Expr::value(Some(now)))
            .col_expr(host_command::Column::UpdatedAt, Expr::value(now))
            .filter(host_command::Column::Id.eq(id))
            .filter(host_command::Column::State.is_in(OPEN))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Marks a command acknowledged, only for the host it belongs to.
    pub async fn mark_acked(&self, id: &str, host_id: &str) -> StoreResult<bool> {
        let result = host_command::Entity::update_many()
            .col_expr(host_command::Column::State, Expr::value(CommandState::Acked))
            .col_expr(host_command::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(host_command::Column::Id.eq(id))
            .filter(host_command::Column::HostId.eq(host_id))
            .filter(host_command::Column::State.is_in([CommandState::Pending, CommandState::Delivered]))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Records the final result of a command, once, and only from the host it
    /// belongs to. Returns false for a duplicate or foreign result.
    pub async fn complete_command(
        &self,
        id: &str,
        host_id: &str,
        succeeded: bool,
        result: Value,
        error: Option<String>,
    ) -> StoreResult<bool> {
        let now = Utc::now();
        let updated = host_command::Entity::update_many()
            .col_expr(
                host_command::Column::State,
                Expr::value(if succeeded { CommandState::Succeeded } else { CommandState::Failed }),
            )
            .col_expr(host_command::Column::Result, Expr::value(Some(result)))
            .col_expr(host_command::Column::Error, Expr::value(error))
            .col_expr(host_command::Column::CompletedAt, Expr::value(Some(now)))
            .col_expr(host_command::Column::UpdatedAt, Expr::value(now))
            .filter(host_command::Column::Id.eq(id))
            .filter(host_command::Column::HostId.eq(host_id))
            .filter(
                Condition::any()
                    .add(host_command::Column::State.eq(CommandState::Pending))
                    .add(host_command::Column::State.eq(CommandState::Delivered))
                    .add(host_command::Column::State.eq(CommandState::Acked)),
            )
            .exec(&self.db)
            .await?;
        Ok(updated.rows_affected == 1)
    }
}

async fn insert_cert<C: sea_orm::ConnectionTrait>(db: &C, host_id: &str, cert: NewHostCert) -> StoreResult<()> {
    host_certificate::Entity::insert(host_certificate::ActiveModel {
        serial: Set(cert.serial),
        host_id: Set(host_id.to_owned()),
        fingerprint_sha256: Set(cert.fingerprint),
        not_before: Set(cert.not_before),
        not_after: Set(cert.not_after),
        revoked_at: Set(None),
        created_at: Set(Utc::now()),
    })
    .exec(db)
    .await?;
    Ok(())
}

/// Inventory as stored: the exact message plus readable fields.
pub fn inventory_json(inventory: &clawplane_proto::v1::HostInventory) -> serde_json::Value {
    json!({
        "hostname": inventory.hostname,
        "agent_version": inventory.agent_version,
        "openclaw_version": inventory.openclaw_version,
        "b64": STANDARD.encode(inventory.encode_to_vec()),
    })
}

/// The inventory a host last reported, from its stored form.
pub fn stored_inventory(host: &super::Host) -> Option<clawplane_proto::v1::HostInventory> {
    let b64 = host.inventory.as_ref()?.get("b64")?.as_str()?;
    clawplane_proto::v1::HostInventory::decode(STANDARD.decode(b64).ok()?.as_slice()).ok()
}
