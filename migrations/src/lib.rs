//! Forward-only schema migrations, run on SQLite and PostgreSQL alike.
//! `clawplane migrate` and `clawplane serve` apply them at start.
pub use sea_orm_migration::prelude::*;

mod m20261124_000001_initial_schema;
mod m20261124_000002_tenant_placement;
mod m20261124_000003_sync;
mod m20261202_000004_plan_resources;
mod m20261210_000005_plans_billing;
mod m20261220_000006_cluster;
mod m20261222_000007_stream_claims;
mod m20261222_000008_route_revision;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_initial_schema::Migration),
            Box::new(m20261124_000002_tenant_placement::Migration),
            Box::new(m20261124_000003_sync::Migration),
            Box::new(m20261202_000004_plan_resources::Migration),
            Box::new(m20261210_000005_plans_billing::Migration),
            Box::new(m20261220_000006_cluster::Migration),
            Box::new(m20261222_000007_stream_claims::Migration),
            Box::new(m20261222_000008_route_revision::Migration),
        ]
    }
}
