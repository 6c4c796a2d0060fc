//! The store on SQLite and PostgreSQL: migrations, seed data, and the
//! invariants the tenant API relies on.
mod common;

use clawplane::store::{NewTenant, TenantStatus};
use clawplane_identity::Owner;
use common::*;
use sea_orm::{ConnectionTrait, Database, Statement};

const TABLES: &[&str] = &[
    "users",
    "teams",
    "team_memberships",
    "plans",
    "hosts",
    "join_tokens",
    "host_certificates",
    "tenants",
    "host_commands",
    "subscriptions",
    "usage",
    "tenant_configs",
    "tenant_config_state",
    "sessions",
    "messages",
    "session_stats",
    "audit_log",
];

fn new_tenant(owner: Owner, slug: &str, plan: clawplane::store::Plan) -> NewTenant {
    NewTenant {
        owner,
        slug_candidates: vec![slug.to_string()],
        slug_requested: true,
        display_name: "Test".into(),
        plan,
        placement_labels: Default::default(),
        extra_agents: Vec::new(),
        actor_user_id: "actor".into(),
        actor_email: None,
    }
}

each_backend!(
    #[tokio::test]
    migrations_create_the_schema_and_are_rerunnable
);
async fn migrations_create_the_schema_and_are_rerunnable(db: TestDb) {
    let store = db.store().await;
    store.migrate().await.expect("second run is a no-op");
    let conn = Database::connect(db.url.clone()).await.unwrap();
    for table in TABLES {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        conn.query_one(Statement::from_string(conn.get_database_backend(), sql))
            .await
            .unwrap_or_else(|err| panic!("{}: table {table}: {err}", db.backend));
    }
    let plans: Vec<String> = store.list_plans().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(plans, ["free", "pro", "enterprise"], "{}", db.backend);
    let _ = conn.close().await;
    store.close().await;
}

each_backend!(
    #[tokio::test]
    one_live_tenant_per_owner_and_unique_slugs
);
async fn one_live_tenant_per_owner_and_unique_slugs(db: TestDb) {
    let store = db.store().await;
    let plan = store.plan_by_name("free").await.unwrap().unwrap();

    // Racing creates for one owner: exactly one row, everyone sees it.
    let racers = (0..6).map(|i| {
        let store = store.clone();
        let plan = plan.clone();
        async move { store.create_tenant(new_tenant(Owner::User("u1".into()), &format!("slug-{i}"), plan)).await }
    });
    let results: Vec<_> = futures::future::join_all(racers).await.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1, "{}", db.backend);
    let id = &results[0].0.tenant.id;
    assert!(results.iter().all(|(r, _)| &r.tenant.id == id));
    let (page, more) = store.list_tenants(None, 100, true).await.unwrap();
    assert_eq!((page.len(), more), (1, false), "{}: no stray rows", db.backend);

    // Another owner cannot take a used slug, and nothing is written.
    let slug = results[0].0.tenant.slug.clone();
    let err = store.create_tenant(new_tenant(Owner::Team("t1".into()), &slug, plan.clone())).await.unwrap_err();
    assert!(err.to_string().contains("already taken"), "{}: {err}", db.backend);
    assert!(store.live_tenant_of(&Owner::Team("t1".into())).await.unwrap().is_none());

    // User u1 and team u1 are different owners.
    let (team, created) =
        store.create_tenant(new_tenant(Owner::Team("u1".into()), "team-u1", plan.clone())).await.unwrap();
    assert!(created);
    assert_eq!(team.owner(), Owner::Team("u1".into()));

    // Soft delete frees the owner, keeps the slug until purge.
    let deleted = store.soft_delete_tenant(id, "actor").await.unwrap();
    assert_eq!(deleted.status(), TenantStatus::Deleted);
    assert!(store.live_tenant(id).await.unwrap().is_none());
    let err = store.create_tenant(new_tenant(Owner::User("u2".into()), &slug, plan.clone())).await.unwrap_err();
    assert!(err.to_string().contains("already taken"));
    let (replacement, created) =
        store.create_tenant(new_tenant(Owner::User("u1".into()), "u1-again", plan.clone())).await.unwrap();
    assert!(created && &replacement.tenant.id != id);

    let purged = store.purge_deleted_tenants(chrono::Utc::now()).await.unwrap();
    assert_eq!(purged, 1, "{}", db.backend);
    assert!(!store.tenant_row_exists(id).await.unwrap());
    let (reused, created) = store.create_tenant(new_tenant(Owner::User("u2".into()), &slug, plan)).await.unwrap();
    assert!(created && reused.tenant.slug == slug, "{}: slug free after purge", db.backend);
    store.close().await;
}

each_backend!(
    #[tokio::test]
    cached_owners_are_refreshed_in_batches_and_see_other_replicas_changes
);
async fn cached_owners_are_refreshed_in_batches_and_see_other_replicas_changes(db: TestDb) {
    // Replica A caches for a minute (so nothing expires during the test);
    // replica B, sharing the database, changes what A has cached.
    let a = db.store().await.with_owner_cache(std::time::Duration::from_secs(60));
    let b = db.store().await;
    let plan = b.plan_by_name("free").await.unwrap().unwrap();
    let mut ids = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let (record, _) = b.create_tenant(new_tenant(Owner::User(user.into()), user, plan.clone())).await.unwrap();
        ids.push(record.tenant.id);
        assert!(a.live_tenant_of(&Owner::User(user.into())).await.unwrap().is_some());
    }
    b.set_pending_reason(&ids[0], "no host has room").await.unwrap();
    b.soft_delete_tenant(&ids[1], "actor").await.unwrap();
    let status_of = |user: &'static str| {
        let a = a.clone();
        async move { a.live_tenant_of(&Owner::User(user.into())).await.unwrap().map(|t| t.tenant.status_message) }
    };
    // Until A refreshes it answers from memory.
    let first = status_of("u1").await.unwrap();
    assert_ne!(first, "no host has room", "{}", db.backend);
    assert_eq!(status_of("u2").await, Some(first.clone()), "{}: the deleted tenant is still cached", db.backend);
    // u1 and u2 were read since the last refresh: one batched read brings
    // their changes. u3 was not: it is not re-read, and keeps what it had
    // until its TTL ends or it is read and refreshed again.
    b.set_pending_reason(&ids[2], "waiting for a zone=eu host").await.unwrap();
    a.refresh_owner_cache().await.unwrap();
    assert_eq!(status_of("u1").await.as_deref(), Some("no host has room"), "{}", db.backend);
    assert_eq!(status_of("u2").await, None, "{}: the deleted tenant is gone", db.backend);
    assert_eq!(status_of("u3").await.as_deref(), Some(first.as_str()), "{}: idle, not re-read", db.backend);
    a.refresh_owner_cache().await.unwrap();
    assert_eq!(status_of("u3").await.as_deref(), Some("waiting for a zone=eu host"), "{}", db.backend);
    a.close().await;
    b.close().await;
}
