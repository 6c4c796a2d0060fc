//! RouteService over real gRPC, on SQLite and PostgreSQL: hostnames resolve
//! to live tenants only, callers must be admins, WatchRoutes streams a
//! snapshot and then every change within a second, and replicas on one
//! database share one strictly increasing revision.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clawplane::config::{Config, ServeArgs};
use clawplane_proto::v1::route_service_client::RouteServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{
    watch_routes_response, CreateTenantRequest, DeleteTenantRequest, ResolveRouteRequest, Route, RouteChangeType,
    RouteStatus, WatchRoutesRequest,
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

each_backend!(
    #[tokio::test]
    the_route_revision_is_recorded_once_per_state
);
/// The store's record: one state, one revision, whichever replica (store)
/// records it; a new state moves past both states' route counts.
async fn the_route_revision_is_recorded_once_per_state(db: TestDb) {
    let b = db.backend;
    let (one, two) = (db.store().await, db.store().await);
    let start = one.route_revision().await.unwrap();
    assert_eq!((start.revision, start.digest.as_str(), start.routes), (0, "", 0), "{b}");
    // From the empty record: 0 + 2 routes.
    let first = one.advance_route_revision("state-a", 2).await.unwrap();
    assert_eq!(first, 2, "{b}");
    assert_eq!(
        two.advance_route_revision("state-a", 2).await.unwrap(),
        first,
        "{b}: the same state, the same revision"
    );
    // 2 routes stored, 3 new ones: up by 5.
    let second = two.advance_route_revision("state-b", 3).await.unwrap();
    assert_eq!(second, first + 5, "{b}");
    assert_eq!(one.advance_route_revision("state-c", 0).await.unwrap(), second + 3, "{b}");
    // Between two empty tables: still up by one.
    let last = one.advance_route_revision("state-d", 0).await.unwrap();
    assert_eq!(last, second + 4, "{b}");
    let stored = two.route_revision().await.unwrap();
    assert_eq!((stored.revision, stored.digest.as_str(), stored.routes), (last, "state-d", 0), "{b}");

    // Replicas recording at once: each state gets its own revision, and
    // the last one recorded holds the highest.
    let records = (0..8).map(|i| {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        async move { store.advance_route_revision(&format!("concurrent-{i}"), 1).await.unwrap() }
    });
    let mut revisions = futures::future::join_all(records).await;
    revisions.sort_unstable();
    // The first moves from 0 routes to 1 (+1), every other from 1 to 1 (+2).
    let expected: Vec<i64> = (0..8).map(|i| last + 1 + 2 * i).collect();
    assert_eq!(revisions, expected, "{b}");
    let stored = one.route_revision().await.unwrap();
    assert_eq!(stored.revision, last + 15, "{b}");

    // A state read before another one was recorded is not recorded over it;
    // the state recorded since, or one read after it, is.
    let stale = two.advance_route_revision_from(stored.revision - 1, "stale", 5).await.unwrap();
    assert_eq!(stale, None, "{b}");
    let same = two.advance_route_revision_from(stored.revision - 1, &stored.digest, 1).await.unwrap();
    assert_eq!(same, Some(stored.revision), "{b}");
    let fresh = one.advance_route_revision_from(stored.revision, "fresh", 3).await.unwrap();
    assert_eq!(fresh, Some(stored.revision + 4), "{b}");
}

/// A bridge-like watcher: the routes by hostname it was sent and the
/// revision of the last message, checked to increase with every change.
struct Watcher {
    name: &'static str,
    stream: tonic::Streaming<clawplane_proto::v1::WatchRoutesResponse>,
    routes: BTreeMap<String, Route>,
    revision: i64,
}

impl Watcher {
    async fn start(server: &TestServer, name: &'static str) -> Watcher {
        let mut routes = RouteServiceClient::new(server.channel().await);
        let request = Cred::admin().request(WatchRoutesRequest::default());
        let mut stream = routes.watch_routes(request).await.unwrap().into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        let first = first.expect("a snapshot").unwrap().expect("the stream is open");
        let Some(watch_routes_response::Event::Snapshot(snapshot)) = first.event else { panic!("{name}: {first:?}") };
        let routes = snapshot.routes.into_iter().map(|r| (r.hostname.clone(), r)).collect();
        Watcher { name, stream, routes, revision: snapshot.revision }
    }

    fn hostnames(&self) -> BTreeSet<String> {
        self.routes.keys().cloned().collect()
    }

    /// Applies changes until the table has exactly `slugs`' routes.
    async fn until(&mut self, slugs: &[&str]) -> i64 {
        let want: BTreeSet<String> = slugs.iter().map(|s| format!("{s}.claw.test")).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.hostnames() != want {
            let message = tokio::time::timeout_at(deadline, self.stream.message()).await;
            let message = message
                .unwrap_or_else(|_| panic!("{}: still {:?}, want {want:?}", self.name, self.hostnames()))
                .unwrap()
                .expect("the stream is open");
            let Some(watch_routes_response::Event::Change(change)) = message.event else {
                panic!("{}: {message:?}", self.name)
            };
            assert!(
                change.revision > self.revision,
                "{}: revision {} after {}: strictly increasing",
                self.name,
                change.revision,
                self.revision
            );
            self.revision = change.revision;
            let route = change.route.unwrap();
            if change.r#type == RouteChangeType::Delete as i32 {
                assert_eq!(route.status, RouteStatus::Deleted as i32);
                assert!(
                    self.routes.remove(&route.hostname).is_some(),
                    "{}: {} deleted unknown",
                    self.name,
                    route.hostname
                );
            } else {
                self.routes.insert(route.hostname.clone(), route);
            }
        }
        self.revision
    }
}

/// Creates `user`'s tenant (slug `user`) through `server`; its id.
async fn create(server: &TestServer, user: &str) -> String {
    let mut tenants = TenantServiceClient::new(server.channel().await);
    let request = Cred::user(user, &[]).request(CreateTenantRequest { plan: "free".into(), ..Default::default() });
    tenants.create_tenant(request).await.unwrap().into_inner().tenant.unwrap().id
}

async fn delete(server: &TestServer, user: &str, tenant_id: &str) {
    let mut tenants = TenantServiceClient::new(server.channel().await);
    let request = Cred::user(user, &[]).request(DeleteTenantRequest { tenant_id: tenant_id.into() });
    tenants.delete_tenant(request).await.unwrap();
}

/// Two replicas on one PostgreSQL database (SQLite serves one): watchers on
/// either see every change, whichever replica made it, with revisions that
/// increase across replicas and agree on every state.
#[tokio::test]
async fn replicas_share_one_route_revision() {
    let Some(db) = postgres_db().await else { return };
    db.store().await; // migrated once, before the replicas race
    let keys = db.data_dir().join("keys");
    clawplane_tls::files::create_private_dir(&keys).unwrap();
    let key = keys.join("cluster.key");
    clawplane_tls::secrets::create_key_file(&key).unwrap();
    let pki = db.data_dir().join("a/pki");
    clawplane::pki::Pki::load_or_create(&clawplane::pki::PkiConfig {
        dir: pki.clone(),
        ca_cert_file: None,
        ca_key_file: None,
        server_names: vec!["localhost".into()],
        host_cert_ttl: Duration::from_secs(3600),
    })
    .unwrap();
    let replica = |name: &str| {
        let args = ServeArgs {
            data_dir: Some(db.data_dir().join(name)),
            secrets_key_file: Some(key.clone()),
            ..serve_args(&db)
        };
        let pki = pki.clone();
        TestServer::start_with(args, move |config: &mut Config| {
            config.ca_cert_file = Some(pki.join("ca.pem"));
            config.ca_key_file = Some(pki.join("ca.key"));
        })
    };
    let a = replica("a").await;
    let b = replica("b").await;
    let (mut on_a, mut on_b) = (Watcher::start(&a, "watcher on A").await, Watcher::start(&b, "watcher on B").await);
    assert!(on_a.routes.is_empty() && on_b.routes.is_empty());
    assert_eq!(on_a.revision, on_b.revision, "one empty table, one revision");
    assert!(on_a.revision > 0, "the first table is recorded before it is served");

    // One state, one revision, whichever replica made the change.
    let alice = create(&a, "alice").await;
    let revision = on_a.until(&["alice"]).await;
    assert_eq!(on_b.until(&["alice"]).await, revision, "alice through A");
    let bob = create(&b, "bob").await;
    let revision = on_b.until(&["alice", "bob"]).await;
    assert_eq!(on_a.until(&["alice", "bob"]).await, revision, "bob through B");

    // A bridge moving from A to B: B's table (once it has A's change)
    // carries at least the revision A's watcher saw last.
    delete(&a, "alice", &alice).await;
    let seen_on_a = on_a.until(&["bob"]).await;
    let mut moved = Watcher::start(&b, "new watcher on B").await;
    assert_eq!(moved.until(&["bob"]).await, seen_on_a, "the state A sent, at A's revision");
    assert_eq!(on_b.until(&["bob"]).await, seen_on_a);

    // Changes through both at once: each watcher numbers its own changes,
    // still increasing, and all agree once the tables do.
    let (_, _, erin, frank) =
        tokio::join!(create(&a, "carol"), create(&b, "dave"), create(&a, "erin"), create(&b, "frank"));
    let all = ["bob", "carol", "dave", "erin", "frank"];
    let (x, y, z) = (on_a.until(&all).await, on_b.until(&all).await, moved.until(&all).await);
    assert_eq!((x, y), (z, z), "one state, one revision");
    tokio::join!(delete(&b, "erin", &erin), delete(&a, "frank", &frank), delete(&a, "bob", &bob));
    let left = ["carol", "dave"];
    let (x, y, z) = (on_a.until(&left).await, on_b.until(&left).await, moved.until(&left).await);
    assert_eq!((x, y), (z, z), "one state, one revision");
    assert!(x > seen_on_a);

    // A replica started now serves the cluster's revision from its first
    // snapshot on.
    let c = replica("c").await;
    let on_c = Watcher::start(&c, "watcher on C").await;
    assert_eq!(on_c.hostnames(), on_a.hostnames());
    assert_eq!(on_c.revision, x, "the cluster's revision, not a count of its own");
    drop((on_a, on_b, moved, on_c));
    for server in [a, b, c] {
        server.shutdown().await;
    }
}
