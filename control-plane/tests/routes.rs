//! RouteService over real gRPC, on SQLite and PostgreSQL: hostnames resolve
//! to live tenants only, callers must be admins, and WatchRoutes streams a
//! snapshot and then every change within a second.
mod common;

use std::time::Duration;

use clawplane_proto::v1::route_service_client::RouteServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{
    watch_routes_response, CreateTenantRequest, DeleteTenantRequest, ResolveRouteRequest, RouteChangeType, RouteStatus,
    WatchRoutesRequest,
};
use common::*;
use tonic::Code;

each_backend!(
    #[tokio::test]
    routes_follow_tenants
);
async fn routes_follow_tenants(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let channel = server.channel().await;
    let mut tenants = TenantServiceClient::new(channel.clone());
    let alice = Cred::user("alice", &[]);
    let a = tenants
        .create_tenant(alice.request(CreateTenantRequest { plan: "free".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let mut routes = RouteServiceClient::new(channel.clone());
    let resolver = routes.clone();
    let admin = Cred::admin();
    let resolve = |host: &str, domain: &str| {
        let mut routes = resolver.clone();
        let request = admin.request(ResolveRouteRequest { host: host.into(), base_domain: domain.into() });
        async move { routes.resolve_route(request).await.map(|r| r.into_inner().route.unwrap()) }
    };

    // (Host header, base domain, expected outcome)
    let cases: &[(&str, &str, Result<&str, Code>)] = &[
        ("alice.claw.test", "", Ok("alice.claw.test")),
        ("ALICE.Claw.Test:8443", "", Ok("alice.claw.test")),
        ("alice.claw.test.", "", Ok("alice.claw.test")),
        ("alice.example.org", "example.org", Ok("alice.example.org")),
        ("bob.claw.test", "", Err(Code::NotFound)),
        ("claw.test", "", Err(Code::NotFound)),
        ("x.alice.claw.test", "", Err(Code::NotFound)),
        ("alice.other.test", "", Err(Code::NotFound)),
        ("", "", Err(Code::InvalidArgument)),
        ("alice.claw.test/../x", "", Err(Code::InvalidArgument)),
        ("alice.claw.test", "bad domain!", Err(Code::InvalidArgument)),
    ];
    for (host, domain, expected) in cases {
        match (resolve(host, domain).await, expected) {
            (Ok(route), Ok(hostname)) => {
                assert_eq!(route.hostname, *hostname, "{host}");
                assert_eq!((route.tenant_id.as_str(), route.slug.as_str()), (a.id.as_str(), "alice"));
                assert_eq!(route.owner_user_id, "alice");
                // No host yet: not servable, and no endpoint to leak.
                assert_eq!(route.status, RouteStatus::Unavailable as i32, "{host}");
                assert!(route.agent_endpoint.is_empty());
            }
            (Err(status), Err(code)) => assert_eq!(status.code(), *code, "{host:?}: {}", status.message()),
            (got, want) => panic!("{host:?} in {domain:?}: got {got:?}, want {want:?}"),
        }
    }
    // Only admins (the bridge, nginx's helper) may read routes.
    for cred in [Cred::user("alice", &[]), Cred::None] {
        let status = routes
            .resolve_route(cred.request(ResolveRouteRequest { host: "alice.claw.test".into(), ..Default::default() }))
            .await
            .unwrap_err();
        assert!(matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated), "{status:?}");
    }

    // Watch: the snapshot, then changes as tenants come and go.
    let mut watch = routes
        .watch_routes(admin.request(WatchRoutesRequest { base_domain: "example.org".into() }))
        .await
        .unwrap()
        .into_inner();
    async fn next(
        watch: &mut tonic::Streaming<clawplane_proto::v1::WatchRoutesResponse>,
    ) -> clawplane_proto::v1::WatchRoutesResponse {
        tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("a route event").unwrap().unwrap()
    }
    let first = next(&mut watch).await;
    let Some(watch_routes_response::Event::Snapshot(snapshot)) = first.event else { panic!("{first:?}") };
    let mut hostnames: Vec<String> = snapshot.routes.iter().map(|r| r.hostname.clone()).collect();
    if hostnames.is_empty() {
        // The table was not read yet when the watch began.
        let Some(watch_routes_response::Event::Change(change)) = next(&mut watch).await.event else { panic!() };
        hostnames.push(change.route.unwrap().hostname);
    }
    assert_eq!(hostnames, ["alice.example.org"]);

    let bob = Cred::user("bob", &["team-x"]);
    tenants
        .create_tenant(bob.request(CreateTenantRequest { plan: "free".into(), ..Default::default() }))
        .await
        .unwrap();
    let Some(watch_routes_response::Event::Change(added)) = next(&mut watch).await.event else { panic!() };
    assert_eq!(added.r#type, RouteChangeType::Upsert as i32);
    assert_eq!(added.route.as_ref().unwrap().hostname, "bob.example.org");
    tenants.delete_tenant(alice.request(DeleteTenantRequest { tenant_id: a.id.clone() })).await.unwrap();
    let Some(watch_routes_response::Event::Change(removed)) = next(&mut watch).await.event else { panic!() };
    assert_eq!(removed.r#type, RouteChangeType::Delete as i32);
    assert_eq!(removed.route.as_ref().unwrap().hostname, "alice.example.org");
    assert!(removed.revision > added.revision, "revisions increase");
    let gone = resolve("alice.claw.test", "").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "a deleted tenant has no route");
    drop(watch);
    server.shutdown().await;
}
