//! One cluster identity for the replicas on one database: replicas sharing
//! the secrets key and the CA serve together (a secret sealed through one
//! opens through the other); one with another CA, secrets key, admin token
//! or JWT settings refuses to start, saying what differs; the secrets key
//! rotates with the old key among the previous ones. What one replica
//! changes reaches the others at once: a removed host's streams close
//! wherever they are held, a deleted tenant leaves every tenant cache.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clawplane::config::{Config, ServeArgs};
use clawplane::desired::DesiredConfigs;
use clawplane::Server;
use clawplane_proto::v1::config_service_client::ConfigServiceClient;
use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{
    CreateTenantRequest, DeleteTenantRequest, ErrorReason, GetConfigRequest, GetHostRequest, GetMyTenantRequest,
    HostStatus, RemoveHostRequest, SetModelRequest,
};
use clawplane_tls::secrets::{create_key_file, SecretBox};
use common::fake_agent::FakeAgent;
use common::*;

const API_KEY: &str = "sk-cluster-0123456789abcdefgh";

fn new_key(dir: &Path, name: &str) -> PathBuf {
    clawplane_tls::files::create_private_dir(dir).unwrap();
    let path = dir.join(name);
    create_key_file(&path).unwrap();
    path
}

/// A replica's settings: its own data directory, the given secrets keys.
fn replica(db: &TestDb, name: &str, key: &Path, previous: &[&Path]) -> ServeArgs {
    ServeArgs {
        data_dir: Some(db.data_dir().join(name)),
        secrets_key_file: Some(key.to_path_buf()),
        secrets_previous_key_files: previous.iter().map(|p| p.to_path_buf()).collect(),
        ..serve_args(db)
    }
}

/// The CA of `data_dir` for another replica.
fn with_ca(data_dir: PathBuf) -> impl FnOnce(&mut Config) {
    move |config: &mut Config| {
        config.ca_cert_file = Some(data_dir.join("pki/ca.pem"));
        config.ca_key_file = Some(data_dir.join("pki/ca.key"));
    }
}

/// A CA in replica `name`'s data directory, for the others to share.
fn new_ca(db: &TestDb, name: &str) -> PathBuf {
    let dir = db.data_dir().join(name);
    clawplane::pki::Pki::load_or_create(&clawplane::pki::PkiConfig {
        dir: dir.join("pki"),
        ca_cert_file: None,
        ca_key_file: None,
        server_names: vec!["localhost".into()],
        host_cert_ttl: std::time::Duration::from_secs(3600),
    })
    .unwrap();
    dir
}

/// Why the replica refused to start.
async fn refused(args: ServeArgs, adjust: impl FnOnce(&mut Config)) -> String {
    let mut config = Config::load(&args).expect("valid config");
    adjust(&mut config);
    match Server::bind(config).await {
        Ok(_) => panic!("the replica started"),
        Err(err) => format!("{err:#}"),
    }
}

fn set_model(tenant_id: &str, model: &str, api_key: Option<&str>) -> SetModelRequest {
    SetModelRequest {
        tenant_id: tenant_id.into(),
        provider: "openai".into(),
        model: model.into(),
        api_key: api_key.map(String::from),
        ..Default::default()
    }
}

/// The tenant's desired document opened with `keys` (current first): the
/// model key, as a host would get it.
async fn model_key(db: &TestDb, tenant_id: &str, keys: &[&Path]) -> anyhow::Result<Option<String>> {
    let previous: Vec<PathBuf> = keys[1..].iter().map(|p| p.to_path_buf()).collect();
    let secrets = Arc::new(SecretBox::from_files(keys[0], &previous)?);
    let desired = DesiredConfigs::new(db.store().await, secrets);
    let rows = desired.rows(tenant_id).await?;
    Ok(desired.document(&rows)?.model.and_then(|m| m.api_key))
}

/// Two replicas on one PostgreSQL database (SQLite serves one at a time).
#[tokio::test]
async fn replicas_on_one_database_share_one_identity() {
    let Some(db) = postgres_db().await else { return };
    db.store().await; // migrated once, before the replicas race
    let keys = db.data_dir().join("keys");
    let (key, other_key) = (new_key(&keys, "cluster.key"), new_key(&keys, "other.key"));

    // The first start of two at once: one writes the record, both agree.
    // The CA is made first so both can be given it.
    let a_dir = new_ca(&db, "a");
    let (a, b) = tokio::join!(
        TestServer::start_with(replica(&db, "a", &key, &[]), with_ca(a_dir.clone())),
        TestServer::start_with(replica(&db, "b", &key, &[]), with_ca(a_dir.clone())),
    );
    assert_eq!(a.ca_pin, b.ca_pin);

    // A model key set through one replica is used through the other.
    let alice = Cred::user("alice", &[]);
    let mut tenants = TenantServiceClient::new(a.channel().await);
    let create = CreateTenantRequest { plan: "free".into(), ..Default::default() };
    let tenant = tenants.create_tenant(alice.request(create)).await.unwrap().into_inner().tenant.unwrap();
    let (mut config_a, mut config_b) =
        (ConfigServiceClient::new(a.channel().await), ConfigServiceClient::new(b.channel().await));
    config_a.set_model(alice.request(set_model(&tenant.id, "gpt-a", Some(API_KEY)))).await.unwrap();
    let seen = config_b.get_config(alice.request(GetConfigRequest { tenant_id: tenant.id.clone() })).await.unwrap();
    assert_eq!(seen.into_inner().config.unwrap().model.unwrap().api_key_hint, "sk-...efgh");
    // No api_key keeps the stored one: replica B opens what A sealed.
    let kept = config_b.set_model(alice.request(set_model(&tenant.id, "gpt-b", None))).await;
    let model = kept.expect("B opens A's secret").into_inner().config.unwrap().model.unwrap();
    assert_eq!((model.model.as_str(), model.api_key_hint.as_str()), ("gpt-b", "sk-...efgh"));
    assert_eq!(model_key(&db, &tenant.id, &[&key]).await.unwrap().as_deref(), Some(API_KEY), "the document opens");
    assert!(model_key(&db, &tenant.id, &[&other_key]).await.is_err(), "and only under the cluster's key");

    // Replicas that differ are refused, naming what differs and the fix.
    let own_ca = refused(replica(&db, "c", &key, &[]), |_| {}).await;
    assert!(own_ca.contains("the CA (sha256:") && own_ca.contains("[pki] ca_cert_file and ca_key_file"), "{own_ca}");
    assert!(!own_ca.contains("secrets key"), "only the CA differs: {own_ca}");
    let own_key = refused(replica(&db, "d", &other_key, &[]), with_ca(a_dir.clone())).await;
    let key_id = SecretBox::from_files(&key, &[]).unwrap().key_id().to_string();
    for needle in ["the secrets key (id", &other_key.display().to_string(), &format!("cluster's (id {key_id})")] {
        assert!(own_key.contains(needle), "{needle}: {own_key}");
    }
    assert!(!own_key.contains("the CA"), "{own_key}");
    let mut token = replica(&db, "e", &key, &[]);
    token.auth.admin_token = Some("another-admin-token-0123456789".into());
    let token = refused(token, with_ca(a_dir.clone())).await;
    assert!(token.contains("the admin token is not the cluster's") && !token.contains("JWT"), "{token}");
    let mut jwt = replica(&db, "f", &key, &[]);
    jwt.auth.jwt_issuer = Some("https://other-issuer.example".into());
    let jwt = refused(jwt, with_ca(a_dir.clone())).await;
    assert!(jwt.contains("the JWT settings are not the cluster's") && !jwt.contains("admin token"), "{jwt}");
    for message in [&own_ca, &own_key, &token, &jwt] {
        assert!(!message.contains(ADMIN_TOKEN) && !message.contains(HS_SECRET), "no secret in {message}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

each_backend!(
    #[tokio::test]
    the_secrets_key_rotates
);
async fn the_secrets_key_rotates(db: TestDb) {
    let b = db.backend;
    let keys = db.data_dir().join("keys");
    let (old, new) = (new_key(&keys, "old.key"), new_key(&keys, "new.key"));
    let alice = Cred::user("alice", &[]);
    let server = TestServer::start(replica(&db, "a", &old, &[])).await;
    let mut tenants = TenantServiceClient::new(server.channel().await);
    let create = CreateTenantRequest { plan: "free".into(), ..Default::default() };
    let tenant = tenants.create_tenant(alice.request(create)).await.unwrap().into_inner().tenant.unwrap();
    let mut config = ConfigServiceClient::new(server.channel().await);
    config.set_model(alice.request(set_model(&tenant.id, "gpt-a", Some(API_KEY)))).await.unwrap();
    server.shutdown().await;

    // The new key alone knows nothing of the cluster's.
    let unknown = refused(replica(&db, "a", &new, &[]), |_| {}).await;
    assert!(unknown.contains(&new.display().to_string()) && unknown.contains("previous_key_files"), "{b}: {unknown}");

    // With the old key among the previous ones it moves the cluster to the new key.
    let server = TestServer::start(replica(&db, "a", &new, &[&old])).await;
    let new_id = SecretBox::from_files(&new, &[]).unwrap().key_id().to_string();
    let record = server.store.cluster().await.unwrap().unwrap();
    assert_eq!(record.secrets_key_id, new_id, "{b}");
    assert_eq!(record.retired_key_ids, [SecretBox::from_files(&old, &[]).unwrap().key_id()], "{b}");
    let mut config = ConfigServiceClient::new(server.channel().await);
    let kept = config.set_model(alice.request(set_model(&tenant.id, "gpt-b", None))).await;
    assert_eq!(
        kept.expect("the old seal opens").into_inner().config.unwrap().model.unwrap().api_key_hint,
        "sk-...efgh"
    );
    // Rewritten, the secret is sealed under the new key alone.
    config.set_model(alice.request(set_model(&tenant.id, "gpt-c", Some(API_KEY)))).await.unwrap();
    assert_eq!(model_key(&db, &tenant.id, &[&new]).await.unwrap().as_deref(), Some(API_KEY), "{b}");
    assert!(model_key(&db, &tenant.id, &[&old]).await.is_err(), "{b}: the old key cannot open it");
    server.shutdown().await;

    // A replica still on the old key is not let back in, previous keys or not.
    let rolled_back = refused(replica(&db, "a", &old, &[&new]), |_| {}).await;
    assert!(rolled_back.contains("rotated out") && rolled_back.contains(&new_id), "{b}: {rolled_back}");

    // The new key alone serves now. On SQLite the one replica's other
    // settings are the cluster's; on PostgreSQL a change is refused.
    let mut changed = replica(&db, "a", &new, &[]);
    changed.auth.admin_token = Some("another-admin-token-0123456789".into());
    if b == "sqlite" {
        TestServer::start(changed).await.shutdown().await;
    } else {
        assert!(refused(changed, |_| {}).await.contains("admin token"), "{b}");
        TestServer::start(replica(&db, "a", &new, &[])).await.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn what_one_replica_changes_reaches_the_other_at_once() {
    let Some(db) = postgres_db().await else { return };
    db.store().await;
    let key = new_key(&db.data_dir().join("keys"), "cluster.key");
    let a_dir = new_ca(&db, "a");
    // A day-long tenant cache: only the other replica's event can make a
    // replica forget a tenant in time.
    let replica_with_long_cache = |name: &str| {
        let ca = with_ca(a_dir.clone());
        TestServer::start_with(replica(&db, name, &key, &[]), move |config| {
            ca(config);
            config.tenant_cache_ttl = std::time::Duration::from_secs(86_400);
        })
    };
    let a = replica_with_long_cache("a").await;
    let b = replica_with_long_cache("b").await;

    // B serves alice's tenant from its cache; A deletes it; B forgets it.
    let alice = Cred::user("alice", &[]);
    let (mut tenants_a, mut tenants_b) =
        (TenantServiceClient::new(a.channel().await), TenantServiceClient::new(b.channel().await));
    let create = CreateTenantRequest { plan: "free".into(), ..Default::default() };
    let tenant = tenants_a.create_tenant(alice.request(create)).await.unwrap().into_inner().tenant.unwrap();
    for _ in 0..2 {
        let mine = tenants_b.get_my_tenant(alice.request(GetMyTenantRequest::default())).await.unwrap();
        assert_eq!(mine.into_inner().tenant.unwrap().id, tenant.id);
    }
    tenants_a.delete_tenant(alice.request(DeleteTenantRequest { tenant_id: tenant.id.clone() })).await.unwrap();
    let tenants = tenants_b.clone();
    clawplane_test_kit::eventually(std::time::Duration::from_secs(10), "B forgets the tenant A deleted", || {
        let (mut tenants, alice) = (tenants.clone(), alice.clone());
        async move {
            let seen = tenants.get_my_tenant(alice.request(GetMyTenantRequest::default())).await;
            matches!(seen, Err(status) if status.code() == tonic::Code::NotFound)
        }
    })
    .await;

    // A host with its Connect and Sync streams on A, removed through B:
    // both streams end, each saying why, and both replicas agree.
    let mut agent = FakeAgent::join(&a).await;
    let (_batches, mut acks) = agent.open_sync().await;
    let host_id = agent.host_id.clone();
    let (mut hosts_a, mut hosts_b) =
        (HostServiceClient::new(a.channel().await), HostServiceClient::new(b.channel().await));
    for hosts in [&mut hosts_a, &mut hosts_b] {
        let host = hosts.get_host(Cred::admin().request(GetHostRequest { host_id: host_id.clone() })).await.unwrap();
        let host = host.into_inner().host.unwrap();
        assert_eq!((host.status, host.connected), (HostStatus::Online as i32, true), "both say connected");
    }
    let removed = RemoveHostRequest { host_id: host_id.clone(), force: false };
    hosts_b.remove_host(Cred::admin().request(removed)).await.unwrap();
    let closed = agent.connect_closed.take().unwrap();
    let close = tokio::time::timeout(std::time::Duration::from_secs(10), closed).await.expect("Connect closed");
    let close = close.unwrap().expect("a CloseConnection before the end");
    assert_eq!(close.cause, ErrorReason::HostRevoked as i32, "{close:?}");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), acks.message()).await.expect("Sync ended");
    let status = ended.expect_err("Sync ends with an error");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("removed"), "{status:?}");
    for hosts in [&mut hosts_a, &mut hosts_b] {
        let host = hosts.get_host(Cred::admin().request(GetHostRequest { host_id: host_id.clone() })).await.unwrap();
        let host = host.into_inner().host.unwrap();
        assert_eq!((host.status, host.connected), (HostStatus::Removed as i32, false), "both say removed");
    }
    a.shutdown().await;
    b.shutdown().await;
}
