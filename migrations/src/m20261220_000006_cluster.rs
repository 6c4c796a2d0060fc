//! The cluster record: one row of fingerprints of what every control-plane
//! replica on this database must share (the CA, the secrets key, the admin
//! token, the shared secret, the JWT settings), written by the first
//! replica and checked by each at start. Fingerprints only: the CA's is its
//! certificate's SHA-256, the others are MACs under the secrets key, so the
//! row gives away no secret.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261220_000006_cluster"
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
                    .table(col("cluster"))
                    .if_not_exists()
                    // Always 1: the primary key makes concurrent first
                    // starts insert-if-absent.
                    .col(integer(col("id")).primary_key())
                    .col(string(col("ca_sha256")))
                    .col(string(col("secrets_key_id")))
                    // Comma-separated ids of keys rotated away from: a
                    // replica still on one is refused, not rolled back to.
                    .col(text(col("retired_key_ids")).default("").to_owned())
                    .col(string(col("admin_token_mac")))
                    .col(string(col("shared_secret_mac")))
                    .col(string(col("jwt_mac")))
                    .col(big_integer(col("updated_at")))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(col("cluster")).to_owned()).await
    }
}
