//! Plans that hold: the plans' token, rate and overage terms (and whether
//! the catalogue still offers them), metered model calls and their
//! per-period counters, the last METER journal position per tenant and
//! host, the history of subscription periods, usage events, and the last
//! allowance pushed to each tenant's host.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261210_000005_plans_billing"
    }
}

fn col(name: &str) -> Alias {
    Alias::new(name)
}

fn fk(from_table: &str, from_col: &str, to_table: &str, to_col: &str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(col(from_table), col(from_col))
        .to(col(to_table), col(to_col))
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

/// (plan, monthly tokens, requests per minute, policy, per 1k tokens, per message)
/// for the seeded plans; NULL limits mean unlimited.
const SEEDED: &[(&str, Option<i64>, Option<i32>, &str, i64, i64)] = &[
    ("free", Some(1_000_000), Some(20), "block", 0, 0),
    ("pro", Some(20_000_000), Some(120), "bill", 2, 1),
    ("enterprise", None, None, "bill", 0, 0),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        let plan_columns = [
            big_integer_null(col("monthly_token_limit")),
            integer_null(col("requests_per_minute")),
            string(col("overage_policy")).default("block").to_owned(),
            big_integer(col("overage_per_1k_tokens_minor")).default(0).to_owned(),
            big_integer(col("overage_per_message_minor")).default(0).to_owned(),
            boolean(col("offered")).default(true).to_owned(),
        ];
        for mut column in plan_columns {
            manager.alter_table(Table::alter().table(col("plans")).add_column(&mut column).to_owned()).await?;
        }
        for (name, tokens, rpm, policy, per_1k, per_message) in SEEDED {
            let update = Query::update()
                .table(col("plans"))
                .values([
                    (col("monthly_token_limit"), (*tokens).into()),
                    (col("requests_per_minute"), (*rpm).into()),
                    (col("overage_policy"), (*policy).into()),
                    (col("overage_per_1k_tokens_minor"), (*per_1k).into()),
                    (col("overage_per_message_minor"), (*per_message).into()),
                ])
                .and_where(Expr::col(col("name")).eq(*name))
                .to_owned();
            manager.exec_stmt(update).await?;
        }

        // One row per metered call, keyed by the proxy's call id within the
        // tenant, so a redelivered record is a no-op and one tenant's host
        // cannot shadow another tenant's calls.
        manager
            .create_table(
                Table::create()
                    .table(col("model_calls"))
                    .if_not_exists()
                    .col(string(col("tenant_id")))
                    .col(string(col("call_id")))
                    .col(string(col("host_id")))
                    .col(big_integer(col("position")))
                    .col(string(col("provider")))
                    .col(string(col("model")))
                    .col(string(col("api")))
                    .col(big_integer(col("input_tokens")))
                    .col(big_integer(col("output_tokens")))
                    .col(big_integer(col("cache_read_tokens")))
                    .col(big_integer(col("cache_write_tokens")))
                    .col(timestamp_with_time_zone(col("started_at")))
                    .col(big_integer(col("first_byte_ms")))
                    .col(big_integer(col("total_ms")))
                    .col(integer(col("http_status")))
                    .col(string(col("outcome")))
                    .col(boolean(col("streamed")))
                    .col(boolean(col("platform_key")))
                    .col(timestamp_with_time_zone(col("received_at")))
                    .primary_key(Index::create().col(col("tenant_id")).col(col("call_id")))
                    .foreign_key(&mut fk("model_calls", "tenant_id", "tenants", "id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_model_calls_started")
                    .table(col("model_calls"))
                    .col(col("tenant_id"))
                    .col(col("started_at"))
                    .to_owned(),
            )
            .await?;
        // Per tenant per period ("day" or "month", first day YYYY-MM-DD),
        // like `usage`; `platform_tokens` (input + output with the
        // platform's key) is what allowances count.
        manager
            .create_table(
                Table::create()
                    .table(col("meter_usage"))
                    .if_not_exists()
                    .col(string(col("tenant_id")))
                    .col(string(col("period_kind")))
                    .col(string(col("period_start")))
                    .col(big_integer(col("calls")))
                    .col(big_integer(col("input_tokens")))
                    .col(big_integer(col("output_tokens")))
                    .col(big_integer(col("cache_read_tokens")))
                    .col(big_integer(col("cache_write_tokens")))
                    .col(big_integer(col("platform_calls")))
                    .col(big_integer(col("platform_tokens")))
                    .primary_key(Index::create().col(col("tenant_id")).col(col("period_kind")).col(col("period_start")))
                    .foreign_key(&mut fk("meter_usage", "tenant_id", "tenants", "id"))
                    .to_owned(),
            )
            .await?;
        // The highest METER journal position stored per tenant and host (a
        // tenant moved to another host starts a new journal there).
        manager
            .create_table(
                Table::create()
                    .table(col("meter_positions"))
                    .if_not_exists()
                    .col(string(col("tenant_id")))
                    .col(string(col("host_id")))
                    .col(big_integer(col("position")))
                    .primary_key(Index::create().col(col("tenant_id")).col(col("host_id")))
                    .foreign_key(&mut fk("meter_positions", "tenant_id", "tenants", "id"))
                    .to_owned(),
            )
            .await?;
        // Every period a subscription had (the current one has no
        // closed_at), with the plan in effect, for billing.
        manager
            .create_table(
                Table::create()
                    .table(col("subscription_periods"))
                    .if_not_exists()
                    .col(string(col("id")).primary_key())
                    .col(string(col("tenant_id")))
                    .col(string(col("plan_id")))
                    .col(timestamp_with_time_zone(col("period_start")))
                    .col(timestamp_with_time_zone(col("period_end")))
                    .col(timestamp_with_time_zone_null(col("closed_at")))
                    .foreign_key(&mut fk("subscription_periods", "tenant_id", "tenants", "id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_subscription_periods_tenant")
                    .table(col("subscription_periods"))
                    .col(col("tenant_id"))
                    .col(col("period_start"))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO subscription_periods (id, tenant_id, plan_id, period_start, period_end) \
                 SELECT id, tenant_id, plan_id, current_period_start, current_period_end FROM subscriptions",
            )
            .await?;
        // Usage events with an increasing id; `dedupe_key` (NULLs distinct
        // on both backends) makes a threshold fire once per period.
        manager
            .create_table(
                Table::create()
                    .table(col("usage_events"))
                    .if_not_exists()
                    .col(big_integer(col("id")).auto_increment().primary_key())
                    .col(string(col("tenant_id")))
                    .col(string(col("kind")))
                    .col(string(col("metric")))
                    .col(timestamp_with_time_zone(col("period_start")))
                    .col(timestamp_with_time_zone(col("at")))
                    .col(text(col("message")))
                    .col(string_null(col("dedupe_key")))
                    .foreign_key(&mut fk("usage_events", "tenant_id", "tenants", "id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_usage_events_dedupe")
                    .table(col("usage_events"))
                    .col(col("dedupe_key"))
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("idx_usage_events_at").table(col("usage_events")).col(col("at")).to_owned(),
            )
            .await?;
        // What was last pushed to the tenant's host, so a push happens only
        // when something the agent cannot work out itself changed.
        manager
            .create_table(
                Table::create()
                    .table(col("allowance_state"))
                    .if_not_exists()
                    .col(string(col("tenant_id")).primary_key())
                    .col(string(col("host_id")))
                    .col(text(col("signature")))
                    .col(boolean(col("blocked")))
                    .col(timestamp_with_time_zone(col("pushed_at")))
                    .foreign_key(&mut fk("allowance_state", "tenant_id", "tenants", "id"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("not reversible".into()))
    }
}
