//! Storage on SQLite (default, embedded) or PostgreSQL, through sea-orm.
//! Each submodule owns the queries of one area; callers get records (the
//! rows as plain data under domain names, typed states included) and
//! [`StoreError`], never the ORM's query types or raw database errors.
mod allowances;
mod audit;
mod bus;
mod cluster;
mod configs;
mod counters;
mod entities;
mod hosts;
mod meter;
mod plans;
mod routes;
mod subscriptions;
mod tenants;
mod transcripts;
mod usage_events;

use std::time::Duration;

use crate::service_error::{into_status, ServiceError, ServiceErrorCode};
use clawplane_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};

pub use allowances::AllowanceState;
pub use bus::{ClusterEvent, MAX_LOG_EVENT_BYTES};
pub use cluster::ClusterRecord;
pub use entities::host::Model as Host;
pub use entities::host_certificate::Model as HostCertificate;
pub use entities::host_command::Model as HostCommand;
pub use entities::join_token::Model as JoinToken;
pub use entities::message::Model as Message;
pub use entities::meter_usage::Model as MeterUsage;
pub use entities::model_call::Model as ModelCallRow;
pub use entities::plan::Model as Plan;
pub use entities::session::Model as Session;
pub use entities::tenant::Model as Tenant;
pub use entities::tenant_config::Model as ConfigRow;
pub use entities::tenant_config_state::Model as ConfigState;
pub use entities::usage::Model as Usage;
pub use entities::{CommandKind, CommandState, HostState};
pub use hosts::{inventory_json, stored_inventory, HostLoad, JoinTokenError, NewHostCert};
pub use meter::{MeterOutcome, NewModelCall};
pub use plans::{OveragePolicy, PlanSpec};
pub use routes::RouteRevision;
pub use subscriptions::{
    month_start, next_month_start, BillingPeriod, SubscriptionChange, SubscriptionRecord, SubscriptionStatus,
};
pub use tenants::{NewTenant, TenantRecord, TenantStatus};
pub use transcripts::{
    day_start, IngestItem, IngestOutcome, NewMessage, SessionFilter, SessionUpdate, Tokens, UNKNOWN_CHANNEL,
};
pub use usage_events::{NewUsageEvent, UsageEventKind, UsageEventRow, USAGE_EVENT_RETENTION_DAYS};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A natural key is taken (e.g. a slug).
    #[error("{0}")]
    Conflict(String),
    /// A compare-and-set found newer data than the caller expected.
    #[error("{0}")]
    Stale(String),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

impl ServiceError for StoreError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            StoreError::NotFound(_) => ServiceErrorCode::NotFound,
            StoreError::Conflict(_) => ServiceErrorCode::AlreadyExists,
            StoreError::Stale(_) => ServiceErrorCode::Aborted,
            StoreError::Db(_) => ServiceErrorCode::Internal,
        }
    }
}

into_status!(StoreError);

pub type StoreResult<T> = Result<T, StoreError>;

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    owner_cache: std::sync::Arc<tenants::OwnerCache>,
    /// Events to and from the other replicas on this database.
    bus: std::sync::Arc<bus::Bus>,
    /// The latest usage event id recorded by this process (wakes watchers).
    usage_events: std::sync::Arc<tokio::sync::watch::Sender<i64>>,
}

impl Store {
    /// Connects and, for SQLite, creates the file and switches it to WAL so
    /// readers never block the writer.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Store> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        let db = Database::connect(options).await?;
        if db.get_database_backend() == DbBackend::Sqlite {
            db.execute_unprepared("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;").await?;
        }
        Ok(Store {
            db,
            owner_cache: Default::default(),
            bus: std::sync::Arc::new(bus::Bus::new()),
            usage_events: std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// Serves "the owner's live tenant" (GetMyTenant, the dashboard's hot
    /// path) from memory for up to `ttl`. A write through any replica on
    /// the database invalidates at once (a cluster event); were the event
    /// lost, within `ttl`. Zero disables the cache.
    pub fn with_owner_cache(mut self, ttl: Duration) -> Self {
        self.owner_cache = std::sync::Arc::new(tenants::OwnerCache::new(ttl));
        self
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> StoreResult<()> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Checks that the database answers, for health reporting.
    pub async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await?;
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.db.close().await;
    }
}

/// True when the error is a unique-constraint violation (a lost race or a
/// taken natural key), on either backend.
fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}
