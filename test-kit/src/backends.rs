//! One test body run once per storage backend, as two test cases, so a
//! failure names its backend.

/// `each_backend!(#[tokio::test] name);` above `async fn name(db: TestDb)`
/// makes the tests `name::sqlite` and `name::postgres`. The PostgreSQL case
/// is skipped (with a note) when PostgreSQL is unreachable, unless
/// CLAWPLANE_REQUIRE_PG=1 makes that a failure (see [`crate::postgres_db`]).
#[macro_export]
macro_rules! each_backend {
    ($(#[$test:meta])+ $name:ident) => {
        mod $name {
            $(#[$test])+
            async fn sqlite() {
                super::$name($crate::sqlite_db()).await
            }

            $(#[$test])+
            async fn postgres() {
                if let Some(db) = $crate::postgres_db().await {
                    super::$name(db).await
                }
            }
        }
    };
}
