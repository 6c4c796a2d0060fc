//! Sync details: a transcript event keeps one row even when its legacy JSONL
//! file is rewritten and the event moves to another byte offset, and
//! sessions carry every token total, not only the sum.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000003_sync"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        for column in ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_micros"] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new("sessions"))
                        .add_column(big_integer(Alias::new(column)).default(0))
                        .to_owned(),
                )
                .await?;
        }
        // NULL event ids (events without one) stay distinct on both backends.
        manager
            .create_index(
                Index::create()
                    .name("uq_messages_event")
                    .table(Alias::new("messages"))
                    .col(Alias::new("tenant_id"))
                    .col(Alias::new("session_id"))
                    .col(Alias::new("event_id"))
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_sessions_channel")
                    .table(Alias::new("sessions"))
                    .col(Alias::new("tenant_id"))
                    .col(Alias::new("channel"))
                    .col(Alias::new("last_activity_at"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("not reversible".into()))
    }
}
