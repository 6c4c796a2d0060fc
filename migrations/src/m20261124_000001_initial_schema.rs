//! The whole schema, derived from seed 000 with its mistakes fixed:
//! - identities come from SSO, so `users` holds no password;
//! - a tenant belongs to a user or a team, one live tenant per owner;
//! - `messages` are idempotent on their source key (tenant, session, position);
//! - `usage` is per tenant per period (day and month);
//! - session statistics keep a sum and a count so averages stay exact;
//! - secrets live encrypted in their own column, never inside JSON values.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000001_initial_schema"
    }
}

fn col(name: &str) -> Alias {
    Alias::new(name)
}

fn table(name: &str) -> TableCreateStatement {
    Table::create().table(col(name)).if_not_exists().to_owned()
}

fn fk(from_table: &str, from_col: &str, to_table: &str, to_col: &str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(col(from_table), col(from_col))
        .to(col(to_table), col(to_col))
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

fn index(name: &str, on: &str, cols: &[&str]) -> IndexCreateStatement {
    let mut stmt = Index::create().name(name).table(col(on)).if_not_exists().to_owned();
    for c in cols {
        stmt.col(col(c));
    }
    stmt
}

fn tables() -> Vec<TableCreateStatement> {
    vec![
        table("users")
            .col(string(col("id")).primary_key())
            .col(string_null(col("email")))
            .col(timestamp_with_time_zone(col("created_at")))
            .col(timestamp_with_time_zone(col("last_seen_at")))
            .to_owned(),
        table("teams")
            .col(string(col("id")).primary_key())
            .col(string_null(col("name")))
            .col(timestamp_with_time_zone(col("created_at")))
            .to_owned(),
        table("team_memberships")
            .col(string(col("team_id")))
            .col(string(col("user_id")))
            .col(string(col("role")))
            .col(timestamp_with_time_zone(col("created_at")))
            .primary_key(Index::create().col(col("team_id")).col(col("user_id")))
            .foreign_key(&mut fk("team_memberships", "team_id", "teams", "id"))
            .foreign_key(&mut fk("team_memberships", "user_id", "users", "id"))
            .to_owned(),
        table("plans")
            .col(string(col("id")).primary_key())
            .col(string_uniq(col("name")))
            .col(string(col("display_name")))
            .col(big_integer(col("price_monthly_cents")))
            .col(string(col("currency")))
            .col(big_integer_null(col("monthly_message_limit")))
            .col(integer_null(col("channel_limit")))
            .col(json(col("features")))
            .col(timestamp_with_time_zone(col("created_at")))
            .to_owned(),
        table("hosts")
            .col(string(col("id")).primary_key())
            .col(string(col("name")))
            .col(string(col("status")))
            .col(json(col("labels")))
            .col(json_null(col("inventory")))
            .col(timestamp_with_time_zone_null(col("last_heartbeat_at")))
            .col(timestamp_with_time_zone_null(col("lease_expires_at")))
            .col(timestamp_with_time_zone(col("created_at")))
            .col(timestamp_with_time_zone(col("updated_at")))
            .col(timestamp_with_time_zone_null(col("removed_at")))
            .to_owned(),
        table("join_tokens")
            .col(string(col("id")).primary_key())
            .col(string(col("secret_hash")))
            .col(json(col("labels")))
            .col(integer(col("max_uses")))
            .col(integer(col("uses")))
            .col(timestamp_with_time_zone(col("expires_at")))
            .col(timestamp_with_time_zone_null(col("revoked_at")))
            .col(string(col("created_by")))
            .col(timestamp_with_time_zone(col("created_at")))
            .to_owned(),
        table("host_certificates")
            .col(string(col("serial")).primary_key())
            .col(string(col("host_id")))
            .col(string_uniq(col("fingerprint_sha256")))
            .col(timestamp_with_time_zone(col("not_before")))
            .col(timestamp_with_time_zone(col("not_after")))
            .col(timestamp_with_time_zone_null(col("revoked_at")))
            .col(timestamp_with_time_zone(col("created_at")))
            .foreign_key(&mut fk("host_certificates", "host_id", "hosts", "id"))
            .to_owned(),
        table("tenants")
            .col(string(col("id")).primary_key())
            .col(string_uniq(col("slug")))
            .col(string(col("display_name")))
            .col(string(col("owner_kind")))
            .col(string(col("owner_id")))
            .col(string(col("owner_key")))
            .col(string(col("plan_id")))
            .col(string(col("status")))
            .col(string(col("status_message")))
            .col(string_null(col("host_id")))
            .col(string(col("runtime")))
            .col(timestamp_with_time_zone(col("created_at")))
            .col(timestamp_with_time_zone(col("updated_at")))
            .col(timestamp_with_time_zone_null(col("deleted_at")))
            .foreign_key(
                ForeignKey::create()
                    .from(col("tenants"), col("plan_id"))
                    .to(col("plans"), col("id"))
                    .on_delete(ForeignKeyAction::Restrict),
            )
            .foreign_key(
                ForeignKey::create()
                    .from(col("tenants"), col("host_id"))
                    .to(col("hosts"), col("id"))
                    .on_delete(ForeignKeyAction::SetNull),
            )
            .to_owned(),
        table("host_commands")
            .col(string(col("id")).primary_key())
            .col(string(col("host_id")))
            .col(string_null(col("tenant_id")))
            .col(string(col("kind")))
            .col(json(col("payload")))
            .col(string(col("state")))
            .col(integer(col("attempts")))
            .col(json_null(col("result")))
            .col(text_null(col("error")))
            .col(timestamp_with_time_zone(col("created_at")))
            .col(timestamp_with_time_zone(col("updated_at")))
            .col(timestamp_with_time_zone_null(col("delivered_at")))
            .col(timestamp_with_time_zone_null(col("completed_at")))
            .foreign_key(&mut fk("host_commands", "host_id", "hosts", "id"))
            .to_owned(),
        table("subscriptions")
            .col(string(col("id")).primary_key())
            .col(string_uniq(col("tenant_id")))
            .col(string(col("plan_id")))
            .col(string(col("status")))
            .col(timestamp_with_time_zone(col("current_period_start")))
            .col(timestamp_with_time_zone(col("current_period_end")))
            .col(timestamp_with_time_zone(col("created_at")))
            .col(timestamp_with_time_zone(col("updated_at")))
            .foreign_key(&mut fk("subscriptions", "tenant_id", "tenants", "id"))
            .foreign_key(
                ForeignKey::create()
                    .from(col("subscriptions"), col("plan_id"))
                    .to(col("plans"), col("id"))
                    .on_delete(ForeignKeyAction::Restrict),
            )
            .to_owned(),
        // Usage per tenant per period: `period_kind` is "day" or "month",
        // `period_start` the first day of the period (YYYY-MM-DD, UTC).
        table("usage")
            .col(string(col("tenant_id")))
            .col(string(col("period_kind")))
            .col(string(col("period_start")))
            .col(big_integer(col("messages")))
            .col(big_integer(col("input_tokens")))
            .col(big_integer(col("output_tokens")))
            .col(big_integer(col("cache_read_tokens")))
            .col(big_integer(col("cache_write_tokens")))
            .col(big_integer(col("total_tokens")))
            .col(big_integer(col("cost_micros")))
            .primary_key(Index::create().col(col("tenant_id")).col(col("period_kind")).col(col("period_start")))
            .foreign_key(&mut fk("usage", "tenant_id", "tenants", "id"))
            .to_owned(),
        // Desired configuration, one row per (type, key), e.g. ("channel",
        // "telegram"). Secret values sit only in `secret_ciphertext`
        // (AEAD-encrypted), `value` keeps the non-secret part and a masked hint.
        table("tenant_configs")
            .col(string(col("tenant_id")))
            .col(string(col("config_type")))
            .col(string(col("config_key")))
            .col(json(col("value")))
            .col(binary_null(col("secret_ciphertext")))
            .col(boolean(col("enabled")))
            .col(timestamp_with_time_zone(col("updated_at")))
            .primary_key(Index::create().col(col("tenant_id")).col(col("config_type")).col(col("config_key")))
            .foreign_key(&mut fk("tenant_configs", "tenant_id", "tenants", "id"))
            .to_owned(),
        table("tenant_config_state")
            .col(string(col("tenant_id")).primary_key())
            .col(big_integer(col("desired_generation")))
            .col(big_integer(col("applied_generation")))
            .col(text_null(col("last_apply_error")))
            .col(json_null(col("observed")))
            .col(timestamp_with_time_zone(col("updated_at")))
            .foreign_key(&mut fk("tenant_config_state", "tenant_id", "tenants", "id"))
            .to_owned(),
        table("sessions")
            .col(string(col("tenant_id")))
            .col(string(col("session_id")))
            .col(string(col("agent_id")))
            .col(string_null(col("session_key")))
            .col(string_null(col("channel")))
            .col(string_null(col("chat_type")))
            .col(string_null(col("model")))
            .col(string_null(col("provider")))
            .col(timestamp_with_time_zone_null(col("started_at")))
            .col(timestamp_with_time_zone_null(col("last_activity_at")))
            .col(big_integer(col("message_count")))
            .col(big_integer(col("total_tokens")))
            .col(json_null(col("metadata")))
            .primary_key(Index::create().col(col("tenant_id")).col(col("session_id")))
            .foreign_key(&mut fk("sessions", "tenant_id", "tenants", "id"))
            .to_owned(),
        // One row per transcript event that carries a message. The natural key
        // (tenant, session, position) makes at-least-once delivery idempotent:
        // position is the SQLite `seq` or the JSONL byte offset.
        table("messages")
            .col(string(col("tenant_id")))
            .col(string(col("session_id")))
            .col(big_integer(col("position")))
            .col(string(col("source")))
            .col(string_null(col("event_id")))
            .col(string(col("role")))
            .col(text(col("content")))
            .col(string_null(col("model")))
            .col(string_null(col("provider")))
            .col(big_integer(col("input_tokens")))
            .col(big_integer(col("output_tokens")))
            .col(big_integer(col("cache_read_tokens")))
            .col(big_integer(col("cache_write_tokens")))
            .col(big_integer(col("total_tokens")))
            .col(big_integer(col("cost_micros")))
            .col(timestamp_with_time_zone(col("created_at")))
            .col(json_null(col("raw")))
            .primary_key(Index::create().col(col("tenant_id")).col(col("session_id")).col(col("position")))
            .foreign_key(&mut fk("messages", "tenant_id", "tenants", "id"))
            .to_owned(),
        // Per day and channel; the average response time is
        // response_time_total_ms / response_count, exact under increments.
        table("session_stats")
            .col(string(col("tenant_id")))
            .col(string(col("day")))
            .col(string(col("channel")))
            .col(big_integer(col("sessions")))
            .col(big_integer(col("messages")))
            .col(big_integer(col("response_time_total_ms")))
            .col(big_integer(col("response_count")))
            .primary_key(Index::create().col(col("tenant_id")).col(col("day")).col(col("channel")))
            .foreign_key(&mut fk("session_stats", "tenant_id", "tenants", "id"))
            .to_owned(),
        table("audit_log")
            .col(string(col("id")).primary_key())
            .col(timestamp_with_time_zone(col("at")))
            .col(string(col("actor")))
            .col(string(col("action")))
            .col(string(col("target_kind")))
            .col(string(col("target_id")))
            .col(json(col("detail")))
            .to_owned(),
    ]
}

fn indexes() -> Vec<IndexCreateStatement> {
    vec![
        index("idx_tenants_owner", "tenants", &["owner_key"]),
        index("idx_tenants_host", "tenants", &["host_id"]),
        index("idx_tenants_deleted", "tenants", &["deleted_at"]),
        index("idx_host_commands_queue", "host_commands", &["host_id", "state", "created_at"]),
        index("idx_host_certificates_host", "host_certificates", &["host_id"]),
        index("idx_sessions_activity", "sessions", &["tenant_id", "last_activity_at"]),
        index("idx_messages_created", "messages", &["tenant_id", "created_at"]),
        index("idx_audit_log_at", "audit_log", &["at"]),
    ]
}

/// Plans offered out of the box; operators change them in the table.
const SEED_PLANS: &[(&str, &str, &str, i64, Option<i64>, Option<i32>)] = &[
    ("00000000-0000-7000-8000-000000000001", "free", "Free", 0, Some(1_000), Some(1)),
    ("00000000-0000-7000-8000-000000000002", "pro", "Pro", 2_000, Some(50_000), Some(5)),
    ("00000000-0000-7000-8000-000000000003", "enterprise", "Enterprise", 20_000, None, None),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for stmt in tables() {
            manager.create_table(stmt).await?;
        }
        for stmt in indexes() {
            manager.create_index(stmt).await?;
        }
        // One live tenant per owner; a partial index (both SQLite and
        // PostgreSQL support it) so deleted tenants do not block a new one.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX IF NOT EXISTS uq_tenants_live_owner \
                 ON tenants (owner_key) WHERE deleted_at IS NULL",
            )
            .await?;
        for (id, name, display, cents, messages, channels) in SEED_PLANS {
            let insert = Query::insert()
                .into_table(col("plans"))
                .columns([
                    col("id"),
                    col("name"),
                    col("display_name"),
                    col("price_monthly_cents"),
                    col("currency"),
                    col("monthly_message_limit"),
                    col("channel_limit"),
                    col("features"),
                    col("created_at"),
                ])
                .values_panic([
                    (*id).into(),
                    (*name).into(),
                    (*display).into(),
                    (*cents).into(),
                    "USD".into(),
                    (*messages).into(),
                    (*channels).into(),
                    Expr::cust("'{}'"),
                    Expr::current_timestamp().into(),
                ])
                .to_owned();
            manager.exec_stmt(insert).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("the initial schema is not reversible".into()))
    }
}
