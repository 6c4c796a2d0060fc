//! Which replica holds each host's command stream, under a generation that
//! every new stream bumps: a replica renews a host's lease only while it
//! holds the current generation, and closes its stream once another replica
//! has claimed the host, so exactly one stream per host acts cluster-wide.
//! And what the host's gateways use, as the holding replica last shared it,
//! for the other replicas' GetHost.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261222_000007_stream_claims"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let columns = [
            string_null(Alias::new("stream_replica")),
            big_integer(Alias::new("stream_generation")).default(0).to_owned(),
            json_null(Alias::new("reported_usage")),
        ];
        // One column per statement: SQLite adds them one at a time.
        for column in columns {
            manager.alter_table(Table::alter().table(Alias::new("hosts")).add_column(column).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration("not reversible".into()))
    }
}
