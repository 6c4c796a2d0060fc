//! The route table's revision, one for the whole cluster: every replica
//! records the table state it read (as a digest) and publishes the revision
//! stored with it, so a gateway bridge moving from one replica to another
//! sees comparable, strictly increasing revisions, and one table state has
//! one revision on every replica.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261222_000008_route_revision"
    }
}

fn col(name: &str) -> Alias {
    Alias::new(name)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(col("route_revision"))
                    .if_not_exists()
                    // Always 1: the primary key makes concurrent first
                    // records insert-if-absent.
                    .col(integer(col("id")).primary_key())
                    .col(big_integer(col("revision")))
                    // SHA-256 (hex) of the recorded table state.
                    .col(string(col("digest")))
                    // How many routes that state has.
                    .col(big_integer(col("routes")))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(col("route_revision")).to_owned()).await
    }
}
