//! The cluster record: one row of fingerprints every replica on this
//! database checks at start (see [`crate::cluster`] for what they are and
//! how they compare).
use sea_orm::sea_query::{Alias, Expr, OnConflict, Query, SelectStatement};
use sea_orm::ConnectionTrait;

use super::{Store, StoreError, StoreResult};

/// The row as stored: fingerprints, never secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRecord {
    /// `sha256:<hex>` of the CA certificate's DER.
    pub ca_sha256: String,
    /// The id of the key secrets are sealed with.
    pub secrets_key_id: String,
    /// Ids of the keys it replaced, oldest first.
    pub retired_key_ids: Vec<String>,
    /// MACs under that key (see `SecretBox::mac_with`).
    pub admin_token_mac: String,
    pub shared_secret_mac: String,
    pub jwt_mac: String,
}

const ID: i32 = 1;

fn table() -> Alias {
    Alias::new("cluster")
}

fn col(name: &str) -> Alias {
    Alias::new(name)
}

const COLUMNS: [&str; 6] =
    ["ca_sha256", "secrets_key_id", "retired_key_ids", "admin_token_mac", "shared_secret_mac", "jwt_mac"];

fn values(record: &ClusterRecord) -> [sea_orm::Value; 6] {
    [
        record.ca_sha256.clone().into(),
        record.secrets_key_id.clone().into(),
        record.retired_key_ids.join(",").into(),
        record.admin_token_mac.clone().into(),
        record.shared_secret_mac.clone().into(),
        record.jwt_mac.clone().into(),
    ]
}

impl Store {
    /// Writes `record` unless the database has one (the first replica's
    /// wins, also when several start at once), then returns the stored
    /// one and whether it is `record`'s insert.
    pub async fn claim_cluster(&self, record: &ClusterRecord) -> StoreResult<(ClusterRecord, bool)> {
        let mut columns = vec![col("id"), col("updated_at")];
        columns.extend(COLUMNS.map(col));
        let mut row: Vec<sea_orm::sea_query::SimpleExpr> = vec![ID.into(), chrono::Utc::now().timestamp().into()];
        row.extend(values(record).map(Into::into));
        let insert = Query::insert()
            .into_table(table())
            .columns(columns)
            .values(row)
            .map_err(|err| StoreError::Conflict(err.to_string()))?
            .on_conflict(OnConflict::column(col("id")).do_nothing().to_owned())
            .to_owned();
        let backend = self.db.get_database_backend();
        let inserted = self.db.execute(backend.build(&insert)).await?.rows_affected() == 1;
        let stored = self.cluster().await?.ok_or(StoreError::NotFound("cluster record"))?;
        Ok((stored, inserted))
    }

    /// The stored record, if a replica wrote one.
    pub async fn cluster(&self) -> StoreResult<Option<ClusterRecord>> {
        let select: SelectStatement =
            Query::select().columns(COLUMNS.map(col)).from(table()).and_where(Expr::col(col("id")).eq(ID)).to_owned();
        let backend = self.db.get_database_backend();
        let Some(row) = self.db.query_one(backend.build(&select)).await? else { return Ok(None) };
        let get = |name: &str| row.try_get::<String>("", name);
        let retired = get("retired_key_ids")?;
        Ok(Some(ClusterRecord {
            ca_sha256: get("ca_sha256")?,
            secrets_key_id: get("secrets_key_id")?,
            retired_key_ids: retired.split(',').filter(|id| !id.is_empty()).map(String::from).collect(),
            admin_token_mac: get("admin_token_mac")?,
            shared_secret_mac: get("shared_secret_mac")?,
            jwt_mac: get("jwt_mac")?,
        }))
    }

    /// Replaces the record if it still names `expected_key_id` (a rotation;
    /// false: another replica changed it first).
    pub async fn replace_cluster(&self, expected_key_id: &str, record: &ClusterRecord) -> StoreResult<bool> {
        let mut update = Query::update();
        update.table(table()).value(col("updated_at"), chrono::Utc::now().timestamp());
        for (name, value) in COLUMNS.into_iter().zip(values(record)) {
            update.value(col(name), value);
        }
        update.and_where(Expr::col(col("id")).eq(ID)).and_where(Expr::col(col("secrets_key_id")).eq(expected_key_id));
        let backend = self.db.get_database_backend();
        Ok(self.db.execute(backend.build(&update)).await?.rows_affected() == 1)
    }

    /// Deletes the record: the next replica to start writes its own.
    pub async fn forget_cluster(&self) -> StoreResult<bool> {
        let delete = Query::delete().from_table(table()).and_where(Expr::col(col("id")).eq(ID)).to_owned();
        let backend = self.db.get_database_backend();
        Ok(self.db.execute(backend.build(&delete)).await?.rows_affected() == 1)
    }
}
