//! Black-box tests of the tenant API: a real server on 127.0.0.1, called
//! over gRPC, on SQLite and on PostgreSQL.
mod common;

use std::time::Duration;

use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::usage_service_client::UsageServiceClient;
use clawplane_proto::v1::{
    owner, CreateTenantRequest, DeleteTenantRequest, GetMyTenantRequest, GetTenantRequest, ListPlansRequest,
    ListTenantsRequest, RestartTenantRequest, StreamTenantLogsRequest, Tenant, TenantStatus,
};
use common::*;
use tonic::transport::Channel;
use tonic::Code;

fn create(plan: &str) -> CreateTenantRequest {
    CreateTenantRequest { plan: plan.into(), ..Default::default() }
}

async fn create_as(client: &mut TenantServiceClient<Channel>, cred: &Cred, req: CreateTenantRequest) -> (Tenant, bool) {
    let response = client.create_tenant(cred.request(req)).await.expect("create").into_inner();
    (response.tenant.unwrap(), response.created)
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, text: &str, what: &str) {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {}", status.message());
            assert!(status.message().contains(text), "{what}: message {:?} lacks {text:?}", status.message());
        }
    }
}

each_backend!(
    #[tokio::test]
    tenant_lifecycle
);
async fn tenant_lifecycle(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let mut client = TenantServiceClient::new(server.channel().await);
    let alice = Cred::user("alice", &[]);

    let (tenant, created) = create_as(&mut client, &alice, create("free")).await;
    assert!(created, "{}", db.backend);
    assert_eq!(tenant.slug, "alice");
    assert_eq!(tenant.url, "https://alice.claw.test");
    assert_eq!(tenant.plan, "free");
    assert_eq!(tenant.display_name, "alice@example.com");
    assert_eq!(tenant.status, TenantStatus::Pending as i32, "no host exists yet, so not running");
    assert!(tenant.status_message.contains("waiting for a host"));
    assert_eq!(tenant.owner.unwrap().kind, Some(owner::Kind::UserId("alice".into())));

    // Idempotent per owner: same tenant, nothing new, whatever the plan.
    let (again, created) = create_as(&mut client, &alice, create("pro")).await;
    assert!(!created);
    assert_eq!(again.id, tenant.id);
    assert_eq!(again.plan, "free");

    let mine = client.get_my_tenant(alice.request(GetMyTenantRequest::default())).await.unwrap();
    assert_eq!(mine.into_inner().tenant.unwrap().id, tenant.id);
    for key in [&tenant.id, &tenant.slug] {
        let got = client.get_tenant(alice.request(GetTenantRequest { tenant_id: key.clone() })).await.unwrap();
        assert_eq!(got.into_inner().tenant.unwrap().id, tenant.id);
    }

    let listed = client.list_tenants(Cred::admin().request(ListTenantsRequest::default())).await.unwrap();
    assert_eq!(listed.into_inner().tenants.iter().map(|t| &t.id).collect::<Vec<_>>(), vec![&tenant.id]);

    let deleted = client
        .delete_tenant(alice.request(DeleteTenantRequest { tenant_id: tenant.slug.clone() }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(deleted.status, TenantStatus::Deleted as i32);
    assert!(deleted.deleted_at.is_some());
    assert_status(
        client.get_my_tenant(alice.request(GetMyTenantRequest::default())).await,
        Code::NotFound,
        "tenant not found",
        "get mine after delete",
    );
    assert_status(
        client.delete_tenant(alice.request(DeleteTenantRequest { tenant_id: tenant.id.clone() })).await,
        Code::NotFound,
        "tenant",
        "second delete",
    );
    // Deleted tenants still show to admins who ask for them.
    let listed = client
        .list_tenants(Cred::admin().request(ListTenantsRequest { include_deleted: true, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tenants.len(), 1);

    // A new tenant for the same owner; the old slug stays reserved until purge.
    let (fresh, created) = create_as(&mut client, &alice, create("pro")).await;
    assert!(created);
    assert_ne!(fresh.id, tenant.id);
    assert_ne!(fresh.slug, "alice");
    assert!(fresh.slug.starts_with("alice-"), "{}", fresh.slug);

    // The shared-secret form reaches the same API.
    let (shared, _) = create_as(
        &mut client,
        &Cred::shared("bob"),
        CreateTenantRequest {
            plan: "free".into(),
            slug: "bobs-claw".into(),
            display_name: "Bob".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((shared.slug.as_str(), shared.display_name.as_str()), ("bobs-claw", "Bob"));

    let plans = UsageServiceClient::new(server.channel().await)
        .list_plans(alice.request(ListPlansRequest {}))
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert_eq!(plans.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["free", "pro", "enterprise"]);

    server.shutdown().await;
}

each_backend!(
    #[tokio::test]
    concurrent_creates_for_one_owner_yield_one_tenant
);
async fn concurrent_creates_for_one_owner_yield_one_tenant(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let channel = server.channel().await;
    let calls = (0..8).map(|_| {
        let mut client = TenantServiceClient::new(channel.clone());
        async move { create_as(&mut client, &Cred::user("racer", &[]), create("free")).await }
    });
    let results = futures::future::join_all(calls).await;
    let created = results.iter().filter(|(_, created)| *created).count();
    assert_eq!(created, 1, "{}: exactly one call creates", db.backend);
    assert!(results.iter().all(|(t, _)| t.id == results[0].0.id), "{}: all see one tenant", db.backend);
    server.shutdown().await;
}

/// Every tenant RPC, called by someone who may not see the tenant.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Get,
    Delete,
    Restart,
    Logs,
}

async fn call(
    client: &mut TenantServiceClient<Channel>,
    rpc: Rpc,
    cred: &Cred,
    tenant_id: &str,
) -> Result<(), tonic::Status> {
    let id = tenant_id.to_string();
    match rpc {
        Rpc::Get => client.get_tenant(cred.request(GetTenantRequest { tenant_id: id })).await.map(drop),
        Rpc::Delete => client.delete_tenant(cred.request(DeleteTenantRequest { tenant_id: id })).await.map(drop),
        Rpc::Restart => client.restart_tenant(cred.request(RestartTenantRequest { tenant_id: id })).await.map(drop),
        Rpc::Logs => client
            .stream_tenant_logs(cred.request(StreamTenantLogsRequest { tenant_id: id, tail_lines: 10, follow: false }))
            .await
            .map(drop),
    }
}

each_backend!(
    #[tokio::test]
    tenants_are_isolated_between_owners
);
async fn tenants_are_isolated_between_owners(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let mut client = TenantServiceClient::new(server.channel().await);
    let (alice_tenant, _) = create_as(&mut client, &Cred::user("alice", &[]), create("free")).await;
    let (team_tenant, _) = create_as(
        &mut client,
        &Cred::user("carol", &["team-red"]),
        CreateTenantRequest { plan: "pro".into(), team_id: "team-red".into(), ..Default::default() },
    )
    .await;
    assert_eq!(team_tenant.owner.clone().unwrap().kind, Some(owner::Kind::TeamId("team-red".into())));
    assert_eq!(team_tenant.slug, "team-red");
    assert_eq!(team_tenant.agent_ids, vec!["team-red".to_string()]);

    let outsiders = [
        ("other user", Cred::user("bob", &[])),
        ("other user, shared secret", Cred::shared("bob")),
        ("member of another team", Cred::user("eve", &["team-blue"])),
    ];
    let rpcs = [Rpc::Get, Rpc::Delete, Rpc::Restart, Rpc::Logs];
    for tenant in [&alice_tenant, &team_tenant] {
        for key in [&tenant.id, &tenant.slug] {
            for (who, cred) in &outsiders {
                for rpc in rpcs {
                    let what = format!("{}: {who} {rpc:?} {key}", db.backend);
                    assert_status(call(&mut client, rpc, cred, key).await, Code::NotFound, "tenant not found", &what);
                }
            }
        }
    }
    // Owners and team members reach their tenant; it is not placed yet.
    for (cred, tenant) in [
        (Cred::user("alice", &[]), &alice_tenant),
        (Cred::user("dave", &["team-red"]), &team_tenant),
        (Cred::admin(), &alice_tenant),
    ] {
        call(&mut client, Rpc::Get, &cred, &tenant.id).await.expect("visible");
        for rpc in [Rpc::Restart, Rpc::Logs] {
            assert_status(
                call(&mut client, rpc, &cred, &tenant.id).await,
                Code::FailedPrecondition,
                "not placed",
                "own tenant",
            );
        }
    }
    // Nobody else's tenant shows up as "mine".
    assert_status(
        client.get_my_tenant(Cred::user("bob", &[]).request(GetMyTenantRequest::default())).await,
        Code::NotFound,
        "tenant not found",
        "bob has none",
    );
    assert_status(
        client
            .get_my_tenant(Cred::user("eve", &["team-blue"]).request(GetMyTenantRequest { team_id: "team-red".into() }))
            .await,
        Code::NotFound,
        "team not found",
        "not a member",
    );
    assert_status(
        client
            .create_tenant(Cred::user("eve", &[]).request(CreateTenantRequest {
                plan: "free".into(),
                team_id: "team-red".into(),
                ..Default::default()
            }))
            .await,
        Code::NotFound,
        "team not found",
        "create for a foreign team",
    );
    // Listing everything is for operators only.
    for cred in [Cred::user("alice", &[]), Cred::shared("bob")] {
        assert_status(
            client.list_tenants(cred.request(ListTenantsRequest::default())).await,
            Code::PermissionDenied,
            "admin",
            "list",
        );
    }
    // The admin token itself owns nothing.
    assert_status(
        client.create_tenant(Cred::admin().request(create("free"))).await,
        Code::PermissionDenied,
        "owns no tenant",
        "admin create",
    );
    // After all that, both tenants are intact.
    for (cred, tenant) in
        [(Cred::user("alice", &[]), &alice_tenant), (Cred::user("carol", &["team-red"]), &team_tenant)]
    {
        let got = client.get_tenant(cred.request(GetTenantRequest { tenant_id: tenant.id.clone() })).await.unwrap();
        assert_eq!(got.into_inner().tenant.unwrap().status, TenantStatus::Pending as i32);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_a_named_reason() {
    let db = sqlite_db();
    let server = TestServer::start(serve_args(&db)).await;
    let mut client = TenantServiceClient::new(server.channel().await);
    let user = Cred::user("mallory", &[]);
    let with_slug = |slug: &str| CreateTenantRequest { plan: "free".into(), slug: slug.into(), ..Default::default() };
    let cases: Vec<(&str, CreateTenantRequest, &str)> = vec![
        ("uppercase slug", with_slug("Mallory"), "lowercase"),
        ("path traversal slug", with_slug("../etc"), "lowercase"),
        ("shell slug", with_slug("a;rm -rf"), "lowercase"),
        ("newline slug", with_slug("ab\ncd"), "lowercase"),
        ("short slug", with_slug("ab"), "3 to 40"),
        ("long slug", with_slug(&"a".repeat(41)), "3 to 40"),
        ("reserved slug", with_slug("admin"), "reserved"),
        ("digit first", with_slug("9lives"), "start with a letter"),
        ("unknown plan", create("platinum"), "unknown plan \"platinum\""),
        ("no plan", create(""), "plan is required"),
        ("oversized plan", create(&"p".repeat(65)), "plan must be at most 64"),
        (
            "oversized display name",
            CreateTenantRequest { plan: "free".into(), display_name: "x".repeat(201), ..Default::default() },
            "display_name must be at most 200",
        ),
        (
            "control characters",
            CreateTenantRequest { plan: "free".into(), display_name: "a\u{0}b".into(), ..Default::default() },
            "control characters",
        ),
    ];
    for (what, request, text) in cases {
        assert_status(client.create_tenant(user.request(request)).await, Code::InvalidArgument, text, what);
    }
    let labelled = |key: &str| {
        let mut labels = std::collections::HashMap::new();
        labels.insert(key.to_string(), "x".to_string());
        CreateTenantRequest { plan: "free".into(), placement_labels: labels, ..Default::default() }
    };
    assert_status(
        client.create_tenant(user.request(labelled("bad key!"))).await,
        Code::InvalidArgument,
        "label key",
        "bad label",
    );
    let agents = CreateTenantRequest { plan: "free".into(), agent_ids: vec!["helper".into()], ..Default::default() };
    assert_status(
        client.create_tenant(user.request(agents)).await,
        Code::InvalidArgument,
        "only team tenants",
        "user agents",
    );
    // Nothing was written by any of them.
    assert_status(
        client.get_my_tenant(user.request(GetMyTenantRequest::default())).await,
        Code::NotFound,
        "tenant",
        "no tenant",
    );

    assert_status(
        client.get_tenant(user.request(GetTenantRequest { tenant_id: String::new() })).await,
        Code::InvalidArgument,
        "tenant_id is required",
        "empty id",
    );
    assert_status(
        client.get_tenant(user.request(GetTenantRequest { tenant_id: "x".repeat(129) })).await,
        Code::InvalidArgument,
        "tenant_id must be at most",
        "long id",
    );
    let admin = Cred::admin();
    assert_status(
        client.list_tenants(admin.request(ListTenantsRequest { page_size: -1, ..Default::default() })).await,
        Code::InvalidArgument,
        "page_size",
        "negative page",
    );
    assert_status(
        client
            .list_tenants(admin.request(ListTenantsRequest { page_token: "garbage!".into(), ..Default::default() }))
            .await,
        Code::InvalidArgument,
        "page_token",
        "bad token",
    );

    // A slug taken by another owner is a conflict, not a silent rename.
    create_as(&mut client, &Cred::user("first", &[]), with_slug("popular")).await;
    assert_status(
        client.create_tenant(Cred::user("second", &[]).request(with_slug("popular"))).await,
        Code::AlreadyExists,
        "already taken",
        "taken slug",
    );
    server.shutdown().await;
}

#[tokio::test]
async fn list_tenants_pages_through_everything_once() {
    let db = sqlite_db();
    let server = TestServer::start(serve_args(&db)).await;
    let mut client = TenantServiceClient::new(server.channel().await);
    let mut expected = Vec::new();
    for i in 0..7 {
        let (tenant, _) = create_as(&mut client, &Cred::shared(&format!("user{i}")), create("free")).await;
        expected.push(tenant.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_tenants(Cred::admin().request(ListTenantsRequest {
                page_size: 3,
                page_token: token,
                include_deleted: false,
            }))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.tenants.len() <= 3);
        seen.extend(page.tenants.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected, "every tenant once, oldest first");
    server.shutdown().await;
}

each_backend!(
    #[tokio::test]
    deleted_tenants_are_purged_after_retention
);
async fn deleted_tenants_are_purged_after_retention(db: TestDb) {
    let server = TestServer::start_with(serve_args(&db), |config| {
        config.tenant_purge_after = Duration::ZERO;
        config.tenant_purge_interval = Duration::from_millis(100);
    })
    .await;
    let mut client = TenantServiceClient::new(server.channel().await);
    let alice = Cred::user("alice", &[]);
    let (tenant, _) = create_as(&mut client, &alice, create("free")).await;
    client.delete_tenant(alice.request(DeleteTenantRequest { tenant_id: tenant.id.clone() })).await.unwrap();
    let mut purged = false;
    for _ in 0..100 {
        if !server.store.tenant_row_exists(&tenant.id).await.unwrap() {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(purged, "{}: deleted tenant row is purged", db.backend);
    // Its slug is free again.
    let (again, created) = create_as(&mut client, &alice, create("free")).await;
    assert!(created);
    assert_eq!(again.slug, "alice");
    server.shutdown().await;
}
