//! The route table's revision, one for the cluster: a single row holding the
//! last table state a replica recorded (its digest and route count) and its
//! revision. Replicas publish the revision stored with the state they read,
//! so the same state carries the same revision on every replica and
//! revisions only grow (see `api::routes` for how the refresher uses it).
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query, SelectStatement, SimpleExpr};
use sea_orm::ConnectionTrait;

use super::{Store, StoreError, StoreResult};

/// The recorded table state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRevision {
    pub revision: i64,
    /// Digest of the recorded state; empty before the first record.
    pub digest: String,
    /// How many routes that state has.
    pub routes: i64,
}

const ID: i32 = 1;

fn table() -> Alias {
    Alias::new("route_revision")
}

fn col(name: &str) -> Alias {
    Alias::new(name)
}

impl Store {
    /// The recorded state, creating the row (revision 0, no state) when
    /// none is (insert-if-absent: replicas may race to it).
    pub async fn route_revision(&self) -> StoreResult<RouteRevision> {
        if let Some(stored) = self.stored_route_revision().await? {
            return Ok(stored);
        }
        let insert = Query::insert()
            .into_table(table())
            .columns([col("id"), col("revision"), col("digest"), col("routes")])
            .values([ID.into(), 0i64.into(), "".into(), 0i64.into()])
            .map_err(|err| StoreError::Conflict(err.to_string()))?
            .on_conflict(OnConflict::column(col("id")).do_nothing().to_owned())
            .to_owned();
        let backend = self.db.get_database_backend();
        self.db.execute(backend.build(&insert)).await?;
        self.stored_route_revision().await?.ok_or(StoreError::NotFound("route revision"))
    }

    async fn stored_route_revision(&self) -> StoreResult<Option<RouteRevision>> {
        let select: SelectStatement = Query::select()
            .columns([col("revision"), col("digest"), col("routes")])
            .from(table())
            .and_where(Expr::col(col("id")).eq(ID))
            .to_owned();
        let backend = self.db.get_database_backend();
        let Some(row) = self.db.query_one(backend.build(&select)).await? else { return Ok(None) };
        Ok(Some(RouteRevision {
            revision: row.try_get("", "revision")?,
            digest: row.try_get("", "digest")?,
            routes: row.try_get("", "routes")?,
        }))
    }

    /// Records a table state of `routes` routes with `digest` and returns
    /// its revision: the stored one when the stored state has `digest`
    /// (another replica recorded this very state), else the stored revision
    /// plus the stored and the new route counts (at least 1). Two tables
    /// differ in at most that many routes, so every watcher on every
    /// replica, whichever recorded state it sent last, can number its
    /// per-route changes one by one up from that state's revision and still
    /// end at or below this one.
    ///
    /// One UPDATE computed from the row's own columns: concurrent replicas
    /// serialize on the row (PostgreSQL re-reads the row a concurrent
    /// writer left before computing), so revisions only grow.
    pub async fn advance_route_revision(&self, digest: &str, routes: i64) -> StoreResult<i64> {
        let revision = self.record_route_state(digest, routes, None).await?;
        revision.ok_or(StoreError::NotFound("route revision"))
    }

    /// [`Store::advance_route_revision`] for a state read after
    /// [`Store::route_revision`] answered revision `seen`: None, recording
    /// nothing, when another state was recorded since (the caller's read
    /// may predate it: it reads again rather than record an older state
    /// over a newer one). So replicas record states in the order they read
    /// them, and a state read by several gets one revision.
    pub async fn advance_route_revision_from(&self, seen: i64, digest: &str, routes: i64) -> StoreResult<Option<i64>> {
        self.record_route_state(digest, routes, Some(seen)).await
    }

    async fn record_route_state(&self, digest: &str, routes: i64, seen: Option<i64>) -> StoreResult<Option<i64>> {
        self.route_revision().await?; // the row exists
        let same = || Expr::col(col("digest")).eq(digest);
        let both = Expr::col(col("routes")).add(routes);
        let step = Expr::case(both.clone().gt(0i64), both).finally(1i64);
        let revision: SimpleExpr =
            Expr::case(same(), Expr::col(col("revision"))).finally(Expr::col(col("revision")).add(step)).into();
        let mut update = Query::update();
        update
            .table(table())
            .value(col("revision"), revision)
            .value(col("digest"), digest)
            .value(col("routes"), routes)
            .and_where(Expr::col(col("id")).eq(ID))
            .returning(Query::returning().column(col("revision")));
        if let Some(seen) = seen {
            update.and_where(same().or(Expr::col(col("revision")).eq(seen)));
        }
        let backend = self.db.get_database_backend();
        let Some(row) = self.db.query_one(backend.build(&update)).await? else { return Ok(None) };
        Ok(Some(row.try_get("", "revision")?))
    }
}
