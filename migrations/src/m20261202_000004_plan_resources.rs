//! What a plan lets a tenant's gateway take on its host: hard and soft
//! memory limits, CPU cores, PIDs, and the idle period after which it
//! hibernates (NULL: never). NULL limits mean none.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000004_plan_resources"
    }
}

/// (plan, memory MiB, soft memory MiB, CPU millicores, PIDs, hibernate after s)
/// for the seeded plans. An OpenClaw gateway takes about 1 GiB idle.
const SEEDED: &[(&str, i64, Option<i64>, Option<i32>, i32, Option<i64>)] = &[
    ("free", 2048, Some(1536), Some(1000), 512, Some(900)),
    ("pro", 4096, Some(3072), Some(2000), 1024, Some(3600)),
    ("enterprise", 8192, None, None, 4096, None),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        for column in ["memory_limit_mib", "memory_soft_limit_mib", "hibernate_after_secs"] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new("plans"))
                        .add_column(big_integer_null(Alias::new(column)))
                        .to_owned(),
                )
                .await?;
        }
        for column in ["cpu_millis", "pids_limit"] {
            manager
                .alter_table(
                    Table::alter().table(Alias::new("plans")).add_column(integer_null(Alias::new(column))).to_owned(),
                )
                .await?;
        }
        for (name, memory, soft, cpu, pids, hibernate) in SEEDED {
            let update = Query::update()
                .table(Alias::new("plans"))
                .values([
                    (Alias::new("memory_limit_mib"), (*memory).into()),
                    (Alias::new("memory_soft_limit_mib"), (*soft).into()),
                    (Alias::new("cpu_millis"), (*cpu).into()),
                    (Alias::new("pids_limit"), (*pids).into()),
                    (Alias::new("hibernate_after_secs"), (*hibernate).into()),
                ])
                .and_where(Expr::col(Alias::new("name")).eq(*name))
                .to_owned();
            manager.exec_stmt(update).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("not reversible".into()))
    }
}
