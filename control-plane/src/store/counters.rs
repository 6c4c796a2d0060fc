//! Counter rows: one row per key, each counter raised by a delta in one
//! statement (INSERT ... ON CONFLICT DO UPDATE SET c = c + excluded.c),
//! the same on SQLite and PostgreSQL, so concurrent ingests never lose an
//! increment.
use sea_orm::sea_query::{Alias, Expr, OnConflict, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, DatabaseTransaction, EntityTrait, Iden};

use super::StoreResult;

/// Adds `counters` to the row of `table` with `keys`, creating it.
pub(super) async fn add<E, C>(
    txn: &DatabaseTransaction,
    table: E,
    keys: [(C, SimpleExpr); 3],
    counters: &[(C, i64)],
) -> StoreResult<()>
where
    E: EntityTrait + Iden + Copy + 'static,
    C: Iden + Copy + 'static,
{
    let mut insert = Query::insert();
    insert
        .into_table(table)
        .columns(keys.iter().map(|(c, _)| *c).chain(counters.iter().map(|(c, _)| *c)))
        .values_panic(keys.iter().map(|(_, v)| v.clone()).chain(counters.iter().map(|(_, v)| SimpleExpr::from(*v))));
    let mut on_conflict = OnConflict::columns(keys.iter().map(|(c, _)| *c));
    for (column, _) in counters {
        on_conflict.value(*column, Expr::col((table, *column)).add(Expr::col((Alias::new("excluded"), *column))));
    }
    insert.on_conflict(on_conflict);
    txn.execute(txn.get_database_backend().build(&insert)).await?;
    Ok(())
}
