//! Tenants, their owners (users, teams), subscriptions and audit entries.
use chrono::{DateTime, Utc};
use clawplane_identity::Owner;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use super::audit::audit;
use super::entities::{plan, team, team_membership, tenant, user};
use super::{is_unique_violation, Store, StoreError, StoreResult};

/// Lifecycle of a tenant as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    Pending,
    Provisioning,
    Running,
    Failed,
    Suspended,
    Deleted,
    Hibernated,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Pending => "pending",
            TenantStatus::Provisioning => "provisioning",
            TenantStatus::Running => "running",
            TenantStatus::Failed => "failed",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleted => "deleted",
            TenantStatus::Hibernated => "hibernated",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            TenantStatus::Pending,
            TenantStatus::Provisioning,
            TenantStatus::Running,
            TenantStatus::Failed,
            TenantStatus::Suspended,
            TenantStatus::Deleted,
            TenantStatus::Hibernated,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A tenant with the name of its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub tenant: tenant::Model,
    pub plan: String,
}

impl TenantRecord {
    pub fn status(&self) -> TenantStatus {
        TenantStatus::parse(&self.tenant.status).unwrap_or(TenantStatus::Failed)
    }

    /// The OpenClaw agents of the tenant's gateway, the slug first.
    pub fn agent_ids(&self) -> Vec<String> {
        self.tenant
            .agent_ids
            .as_ref()
            .and_then(|ids| serde_json::from_value::<Vec<String>>(ids.clone()).ok())
            .filter(|ids| !ids.is_empty())
            .unwrap_or_else(|| vec![self.tenant.slug.clone()])
    }

    /// Labels a host must carry to run the tenant.
    pub fn placement_labels(&self) -> std::collections::BTreeMap<String, String> {
        self.tenant
            .placement_labels
            .as_ref()
            .and_then(|labels| serde_json::from_value(labels.clone()).ok())
            .unwrap_or_default()
    }

    pub fn owner(&self) -> Owner {
        match self.tenant.owner_kind.as_str() {
            "team" => Owner::Team(self.tenant.owner_id.clone()),
            _ => Owner::User(self.tenant.owner_id.clone()),
        }
    }
}

pub struct NewTenant {
    pub owner: Owner,
    /// Slugs to try in order: the requested one, or derived candidates.
    pub slug_candidates: Vec<String>,
    /// True when the caller asked for the slug (a taken slug is an error
    /// rather than a reason to try the next candidate).
    pub slug_requested: bool,
    pub display_name: String,
    pub plan: plan::Model,
    /// Labels a host must carry.
    pub placement_labels: std::collections::BTreeMap<String, String>,
    /// Agents besides the slug's own (team tenants).
    pub extra_agents: Vec<String>,
    /// The user creating it (recorded as a user, and as a member of the team).
    pub actor_user_id: String,
    pub actor_email: Option<String>,
}

/// Positive-only cache of owner key -> live tenant (see
/// [`Store::with_owner_cache`]). Misses are never cached, so a tenant
/// created on another replica is visible at once. Entries read since the
/// last refresh are re-read together, one query per [`REFRESH_CHUNK`]
/// owners, every half TTL ([`Store::refresh_owner_cache`]): a dashboard's
/// owners stay in memory and cost one batched query per interval instead
/// of one query per owner (on PostgreSQL those per-owner misses took
/// about 30% of the machine in the tenant API bench).
#[derive(Default)]
pub struct OwnerCache {
    ttl: std::time::Duration,
    entries: std::sync::Mutex<std::collections::HashMap<String, CachedOwner>>,
}

struct CachedOwner {
    /// When the database said this (the start of the query).
    fetched: std::time::Instant,
    record: TenantRecord,
    /// Read since the last refresh.
    used: bool,
}

/// Upper bound on cached owners; the cache is cleared when it is reached.
const OWNER_CACHE_CAPACITY: usize = 100_000;
/// Owners re-read by one query of a refresh.
const REFRESH_CHUNK: usize = 500;

impl OwnerCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        OwnerCache { ttl, entries: Default::default() }
    }

    fn get(&self, key: &str) -> Option<TenantRecord> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut entries = self.entries.lock().unwrap();
        let entry = entries.get_mut(key).filter(|e| e.fetched.elapsed() < self.ttl)?;
        entry.used = true;
        Some(entry.record.clone())
    }

    fn put(&self, key: String, record: &TenantRecord, fetched: std::time::Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= OWNER_CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(key, CachedOwner { fetched, record: record.clone(), used: false });
    }

    pub(super) fn forget(&self, key: &str) {
        self.entries.lock().unwrap().remove(key);
    }

    /// The owners to re-read: those used since the last refresh. Expired
    /// entries are dropped; idle ones live out their TTL unrefreshed.
    fn take_used(&self) -> Vec<String> {
        let mut entries = self.entries.lock().unwrap();
        let ttl = self.ttl;
        entries.retain(|_, e| e.fetched.elapsed() < ttl);
        entries.iter_mut().filter_map(|(key, e)| std::mem::take(&mut e.used).then(|| key.clone())).collect()
    }

    /// What a refresh read (from `fetched` on): found owners are renewed,
    /// owners without a live tenant any more are forgotten. An entry
    /// written (or forgotten) after `fetched` by this replica wins.
    fn renew(&self, keys: &[String], found: Vec<TenantRecord>, fetched: std::time::Instant) {
        let mut found: std::collections::HashMap<String, TenantRecord> =
            found.into_iter().map(|r| (r.tenant.owner_key.clone(), r)).collect();
        let mut entries = self.entries.lock().unwrap();
        for key in keys {
            let Some(entry) = entries.get_mut(key) else { continue };
            if entry.fetched > fetched {
                continue;
            }
            match found.remove(key) {
                Some(record) => {
                    entry.record = record;
                    entry.fetched = fetched;
                }
                None => {
                    entries.remove(key);
                }
            }
        }
    }
}

const WAITING_FOR_HOST: &str = "waiting for a host: no host has been placed for this tenant yet";

impl Store {
    pub async fn plan_by_name(&self, name: &str) -> StoreResult<Option<plan::Model>> {
        Ok(plan::Entity::find().filter(plan::Column::Name.eq(name)).one(&self.db).await?)
    }

    pub async fn list_plans(&self) -> StoreResult<Vec<plan::Model>> {
        Ok(plan::Entity::find().order_by_asc(plan::Column::PriceMonthlyCents).all(&self.db).await?)
    }

    /// Creates a tenant, or returns the owner's live tenant with `false`.
    /// Races between two creates for one owner are settled by the unique
    /// index on live owners: the loser reads and returns the winner's row.
    pub async fn create_tenant(&self, new: NewTenant) -> StoreResult<(TenantRecord, bool)> {
        if let Some(existing) = self.live_tenant_of(&new.owner).await? {
            return Ok((existing, false));
        }
        for slug in &new.slug_candidates {
            match self.insert_tenant(&new, slug).await {
                Ok(record) => return Ok((record, true)),
                Err(StoreError::Db(err)) if is_unique_violation(&err) => {
                    if let Some(existing) = self.live_tenant_of(&new.owner).await? {
                        return Ok((existing, false));
                    }
                    if new.slug_requested {
                        return Err(StoreError::Conflict(format!("slug {slug:?} is already taken")));
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::Conflict("could not find a free slug for this owner; pass one explicitly".into()))
    }

    /// Writes a tenant and everything that comes with it in one transaction
    /// that starts with a write, so SQLite takes its write lock up front.
    async fn insert_tenant(&self, new: &NewTenant, slug: &str) -> StoreResult<TenantRecord> {
        let plan = &new.plan;
        let now = Utc::now();
        let txn = self.db.begin().await?;
        user::Entity::insert(user::ActiveModel {
            id: Set(new.actor_user_id.clone()),
            email: Set(new.actor_email.clone()),
            created_at: Set(now),
            last_seen_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(user::Column::Id)
                .update_columns([user::Column::Email, user::Column::LastSeenAt])
                .to_owned(),
        )
        .exec(&txn)
        .await?;
        if let Owner::Team(team_id) = &new.owner {
            team::Entity::insert(team::ActiveModel { id: Set(team_id.clone()), name: Set(None), created_at: Set(now) })
                .on_conflict(OnConflict::column(team::Column::Id).do_nothing().to_owned())
                .do_nothing()
                .exec(&txn)
                .await?;
            team_membership::Entity::insert(team_membership::ActiveModel {
                team_id: Set(team_id.clone()),
                user_id: Set(new.actor_user_id.clone()),
                role: Set("member".into()),
                created_at: Set(now),
            })
            .on_conflict(
                OnConflict::columns([team_membership::Column::TeamId, team_membership::Column::UserId])
                    .do_nothing()
                    .to_owned(),
            )
            .do_nothing()
            .exec(&txn)
            .await?;
        }
        let model = tenant::Model {
            id: Uuid::now_v7().to_string(),
            slug: slug.to_owned(),
            display_name: new.display_name.clone(),
            owner_kind: new.owner.kind().into(),
            owner_id: new.owner.id().into(),
            owner_key: new.owner.key(),
            plan_id: plan.id.clone(),
            status: TenantStatus::Pending.as_str().into(),
            status_message: WAITING_FOR_HOST.into(),
            host_id: None,
            runtime: "process".into(),
            created_at: now,
            updated_at: now,
            deleted_at: None,
            placement_labels: (!new.placement_labels.is_empty()).then(|| json!(new.placement_labels)),
            agent_ids: Some(json!(std::iter::once(slug.to_string())
                .chain(new.extra_agents.iter().cloned())
                .collect::<Vec<_>>())),
        };
        tenant::Entity::insert(tenant::ActiveModel::from(model.clone())).exec(&txn).await?;
        super::subscriptions::insert_subscription(&txn, &model.id, &plan.id, now).await?;
        audit(&txn, &new.actor_user_id, "tenant.create", &model.id, json!({"slug": slug, "plan": plan.name})).await?;
        txn.commit().await?;
        Ok(TenantRecord { tenant: model, plan: plan.name.clone() })
    }

    /// The owner's tenant that is not deleted.
    pub async fn live_tenant_of(&self, owner: &Owner) -> StoreResult<Option<TenantRecord>> {
        let key = owner.key();
        if let Some(cached) = self.owner_cache.get(&key) {
            return Ok(Some(cached));
        }
        let fetched = std::time::Instant::now();
        let row = tenant::Entity::find()
            .find_also_related(plan::Entity)
            .filter(tenant::Column::OwnerKey.eq(key.as_str()))
            .filter(tenant::Column::DeletedAt.is_null())
            .one(&self.db)
            .await?;
        let found = row.map(record);
        if let Some(record) = &found {
            self.owner_cache.put(key, record, fetched);
        }
        Ok(found)
    }

    /// Re-reads the cached owners that were read since the last refresh,
    /// [`REFRESH_CHUNK`] per query; the server runs it every half TTL.
    pub async fn refresh_owner_cache(&self) -> StoreResult<()> {
        let keys = self.owner_cache.take_used();
        for chunk in keys.chunks(REFRESH_CHUNK) {
            let fetched = std::time::Instant::now();
            let rows = tenant::Entity::find()
                .find_also_related(plan::Entity)
                .filter(tenant::Column::OwnerKey.is_in(chunk.iter().map(String::as_str)))
                .filter(tenant::Column::DeletedAt.is_null())
                .all(&self.db)
                .await?;
            self.owner_cache.renew(chunk, rows.into_iter().map(record).collect(), fetched);
        }
        Ok(())
    }

    /// How often [`Store::refresh_owner_cache`] should run; None without
    /// a cache.
    pub fn owner_cache_refresh(&self) -> Option<std::time::Duration> {
        (!self.owner_cache.ttl.is_zero()).then(|| self.owner_cache.ttl / 2)
    }

    /// A live tenant by id or slug.
    pub async fn live_tenant(&self, id_or_slug: &str) -> StoreResult<Option<TenantRecord>> {
        let row = tenant::Entity::find()
            .find_also_related(plan::Entity)
            .filter(tenant::Column::Id.eq(id_or_slug).or(tenant::Column::Slug.eq(id_or_slug)))
            .filter(tenant::Column::DeletedAt.is_null())
            .one(&self.db)
            .await?;
        Ok(row.map(record))
    }

    /// One page of tenants ordered by id (UUIDv7, so by creation time),
    /// starting after `after_id`. Returns the page and whether more follow.
    pub async fn list_tenants(
        &self,
        after_id: Option<&str>,
        limit: u64,
        include_deleted: bool,
    ) -> StoreResult<(Vec<TenantRecord>, bool)> {
        let mut query = tenant::Entity::find().find_also_related(plan::Entity);
        if let Some(after) = after_id {
            query = query.filter(tenant::Column::Id.gt(after));
        }
        if !include_deleted {
            query = query.filter(tenant::Column::DeletedAt.is_null());
        }
        let mut rows: Vec<TenantRecord> = query
            .order_by_asc(tenant::Column::Id)
            .limit(limit + 1)
            .all(&self.db)
            .await?
            .into_iter()
            .map(record)
            .collect();
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }

    /// Marks a live tenant deleted; it is purged after the retention.
    pub async fn soft_delete_tenant(&self, tenant_id: &str, actor: &str) -> StoreResult<TenantRecord> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let updated = tenant::Entity::update_many()
            .col_expr(tenant::Column::Status, TenantStatus::Deleted.as_str().into())
            .col_expr(tenant::Column::StatusMessage, "deleted".into())
            .col_expr(tenant::Column::DeletedAt, Some(now).into())
            .col_expr(tenant::Column::UpdatedAt, now.into())
            .filter(tenant::Column::Id.eq(tenant_id))
            .filter(tenant::Column::DeletedAt.is_null())
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            return Err(StoreError::NotFound("tenant"));
        }
        audit(&txn, actor, "tenant.delete", tenant_id, json!({})).await?;
        txn.commit().await?;
        let row = tenant::Entity::find_by_id(tenant_id)
            .find_also_related(plan::Entity)
            .one(&self.db)
            .await?
            .ok_or(StoreError::NotFound("tenant"))?;
        self.owner_changed(&row.0.owner_key).await;
        Ok(record(row))
    }

    /// Removes tenants deleted before `cutoff`, with everything that
    /// references them (the foreign keys cascade). Returns how many went.
    pub async fn purge_deleted_tenants(&self, cutoff: DateTime<Utc>) -> StoreResult<u64> {
        let result = tenant::Entity::delete_many().filter(tenant::Column::DeletedAt.lt(cutoff)).exec(&self.db).await?;
        Ok(result.rows_affected)
    }

    /// Whether a tenant row exists at all, deleted or not (for tests and the
    /// purger's reporting).
    pub async fn tenant_row_exists(&self, tenant_id: &str) -> StoreResult<bool> {
        Ok(tenant::Entity::find_by_id(tenant_id).one(&self.db).await?.is_some())
    }
}

fn record((tenant, plan): (tenant::Model, Option<plan::Model>)) -> TenantRecord {
    TenantRecord { tenant, plan: plan.map(|p| p.name).unwrap_or_default() }
}

/// Placement and lifecycle updates driven by the fleet.
impl Store {
    /// Live tenants waiting for a host, oldest first.
    pub async fn unplaced_tenants(&self, limit: u64) -> StoreResult<Vec<TenantRecord>> {
        let rows = tenant::Entity::find()
            .find_also_related(plan::Entity)
            .filter(tenant::Column::HostId.is_null())
            .filter(tenant::Column::DeletedAt.is_null())
            .filter(tenant::Column::Status.eq(TenantStatus::Pending.as_str()))
            .order_by_asc(tenant::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(record).collect())
    }

    /// Live tenants placed on a host.
    pub async fn tenants_on_host(&self, host_id: &str) -> StoreResult<Vec<TenantRecord>> {
        let rows = tenant::Entity::find()
            .find_also_related(plan::Entity)
            .filter(tenant::Column::HostId.eq(host_id))
            .filter(tenant::Column::DeletedAt.is_null())
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(record).collect())
    }

    /// Every live tenant (for the route table).
    pub async fn live_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
        let rows = tenant::Entity::find()
            .find_also_related(plan::Entity)
            .filter(tenant::Column::DeletedAt.is_null())
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(record).collect())
    }

    /// Any tenant by id, deleted or not.
    pub async fn tenant_by_id(&self, tenant_id: &str) -> StoreResult<Option<TenantRecord>> {
        let row = tenant::Entity::find_by_id(tenant_id).find_also_related(plan::Entity).one(&self.db).await?;
        Ok(row.map(record))
    }

    /// Places an unplaced tenant on a host. Only one caller wins a race (the
    /// condition is on the row), so a tenant is never placed twice.
    pub async fn assign_tenant(&self, tenant_id: &str, host_id: &str) -> StoreResult<bool> {
        let now = Utc::now();
        let result = tenant::Entity::update_many()
            .col_expr(tenant::Column::HostId, Some(host_id.to_string()).into())
            .col_expr(tenant::Column::Status, TenantStatus::Provisioning.as_str().into())
            .col_expr(tenant::Column::StatusMessage, format!("provisioning on host {host_id}").into())
            .col_expr(tenant::Column::UpdatedAt, now.into())
            .filter(tenant::Column::Id.eq(tenant_id))
            .filter(tenant::Column::HostId.is_null())
            .filter(tenant::Column::DeletedAt.is_null())
            .exec(&self.db)
            .await?;
        self.forget_tenant(tenant_id).await?;
        Ok(result.rows_affected == 1)
    }

    /// Explains why a pending tenant still waits (written only on change).
    pub async fn set_pending_reason(&self, tenant_id: &str, message: &str) -> StoreResult<()> {
        tenant::Entity::update_many()
            .col_expr(tenant::Column::StatusMessage, message.into())
            .col_expr(tenant::Column::UpdatedAt, Utc::now().into())
            .filter(tenant::Column::Id.eq(tenant_id))
            .filter(tenant::Column::HostId.is_null())
            .filter(tenant::Column::StatusMessage.ne(message))
            .exec(&self.db)
            .await?;
        self.forget_tenant(tenant_id).await
    }

    /// Records what the tenant's host reported, if it is still placed there.
    pub async fn set_tenant_status(
        &self,
        tenant_id: &str,
        host_id: &str,
        status: TenantStatus,
        message: &str,
    ) -> StoreResult<()> {
        tenant::Entity::update_many()
            .col_expr(tenant::Column::Status, status.as_str().into())
            .col_expr(tenant::Column::StatusMessage, message.chars().take(2000).collect::<String>().into())
            .col_expr(tenant::Column::UpdatedAt, Utc::now().into())
            .filter(tenant::Column::Id.eq(tenant_id))
            .filter(tenant::Column::HostId.eq(host_id))
            .filter(tenant::Column::DeletedAt.is_null())
            .exec(&self.db)
            .await?;
        self.forget_tenant(tenant_id).await
    }

    /// What the host reports about a placed tenant's gateway: a new status
    /// for tenants past provisioning (running, hibernated, failed), or with
    /// `status` None only a new message, for those and tenants still
    /// provisioning (a gateway restarting while it is being set up).
    pub async fn set_gateway_status(
        &self,
        tenant_id: &str,
        host_id: &str,
        status: Option<TenantStatus>,
        message: &str,
    ) -> StoreResult<u64> {
        let mut allowed = vec![TenantStatus::Running, TenantStatus::Hibernated, TenantStatus::Failed];
        let mut update = tenant::Entity::update_many()
            .col_expr(tenant::Column::StatusMessage, message.chars().take(2000).collect::<String>().into())
            .col_expr(tenant::Column::UpdatedAt, Utc::now().into());
        match status {
            Some(status) => update = update.col_expr(tenant::Column::Status, status.as_str().into()),
            None => allowed.push(TenantStatus::Provisioning),
        }
        let updated = update
            .filter(tenant::Column::Id.eq(tenant_id))
            .filter(tenant::Column::HostId.eq(host_id))
            .filter(tenant::Column::Status.is_in(allowed.iter().map(|s| s.as_str())))
            .filter(tenant::Column::DeletedAt.is_null())
            .exec(&self.db)
            .await?;
        if updated.rows_affected > 0 {
            self.forget_tenant(tenant_id).await?;
        }
        Ok(updated.rows_affected)
    }

    /// Records the OpenClaw agents the host reports in the tenant's gateway
    /// (a fleet cell has OpenClaw's default agent, not the requested ones).
    pub async fn set_tenant_agents(&self, tenant_id: &str, agent_ids: &[String]) -> StoreResult<()> {
        tenant::Entity::update_many()
            .col_expr(tenant::Column::AgentIds, Expr::value(serde_json::json!(agent_ids)))
            .filter(tenant::Column::Id.eq(tenant_id))
            .exec(&self.db)
            .await?;
        self.forget_tenant(tenant_id).await
    }

    async fn forget_tenant(&self, tenant_id: &str) -> StoreResult<()> {
        if let Some(row) = tenant::Entity::find_by_id(tenant_id).one(&self.db).await? {
            self.owner_changed(&row.owner_key).await;
        }
        Ok(())
    }
}
