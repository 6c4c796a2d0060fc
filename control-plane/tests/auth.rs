//! Every way a credential can be wrong, over real gRPC, each with its own
//! UNAUTHENTICATED message; and the key sources (HS256 secret, PEM, JWKS).
mod common;

use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{CreateTenantRequest, GetMyTenantRequest};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tonic::Code;

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// `alg: none`, unsigned.
fn unsigned(claims: &Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// A valid token whose payload was swapped after signing.
fn tampered() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let token = hs256(claims("alice", &[]));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(claims("admin", &[]).to_string());
    format!("{}.{}.{}", parts[0], forged, parts[2])
}

async fn outcome(
    client: &mut TenantServiceClient<tonic::transport::Channel>,
    cred: &Cred,
) -> Result<(), tonic::Status> {
    // GetMyTenant answers NOT_FOUND for an authenticated caller without a
    // tenant, so anything else tells us what authentication decided.
    match client.get_my_tenant(cred.request(GetMyTenantRequest::default())).await {
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(status),
        Ok(_) => Ok(()),
    }
}

async fn check_table(server: &TestServer, cases: Vec<(&str, Cred, Option<&str>)>) {
    let mut client = TenantServiceClient::new(server.channel().await);
    for (what, cred, expected) in cases {
        match (outcome(&mut client, &cred).await, expected) {
            (Ok(()), None) => {}
            (Err(status), Some(text)) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{what}: {}", status.message());
                assert!(status.message().contains(text), "{what}: {:?} lacks {text:?}", status.message());
            }
            (got, expected) => panic!("{what}: got {got:?}, expected failure {expected:?}"),
        }
    }
}

#[tokio::test]
async fn hs256_and_header_failure_modes() {
    let db = sqlite_db();
    let server = TestServer::start(serve_args(&db)).await;
    let valid = claims("alice", &[]);
    let other_secret = EncodingKey::from_secret(b"another-secret-that-is-long-enough-000");
    let shared =
        |secret: &str, user: &str| Cred::Shared { secret: secret.into(), user: user.into(), teams: String::new() };
    let cases = vec![
        ("valid HS256", Cred::user("alice", &[]), None),
        ("within leeway", Cred::Bearer(hs256(with(valid.clone(), "exp", json!(now() - 10)))), None),
        ("no credentials", Cred::None, Some("missing credentials")),
        ("expired", Cred::Bearer(hs256(with(valid.clone(), "exp", json!(now() - 3600)))), Some("token expired")),
        ("not yet valid", Cred::Bearer(hs256(with(valid.clone(), "nbf", json!(now() + 3600)))), Some("not yet valid")),
        (
            "wrong issuer",
            Cred::Bearer(hs256(with(valid.clone(), "iss", json!("https://evil.test")))),
            Some("wrong issuer"),
        ),
        (
            "wrong audience",
            Cred::Bearer(hs256(with(valid.clone(), "aud", json!("someone-else")))),
            Some("wrong audience"),
        ),
        ("no audience", Cred::Bearer(hs256(without(valid.clone(), "aud"))), Some("\"aud\"")),
        ("no expiry", Cred::Bearer(hs256(without(valid.clone(), "exp"))), Some("\"exp\"")),
        ("no subject", Cred::Bearer(hs256(without(valid.clone(), "sub"))), Some("\"sub\"")),
        ("alg none", Cred::Bearer(unsigned(&valid)), Some("\"none\" is not allowed")),
        ("tampered payload", Cred::Bearer(tampered()), Some("bad signature")),
        (
            "signed with another secret",
            Cred::Bearer(sign(Algorithm::HS256, &other_secret, None, &valid)),
            Some("bad signature"),
        ),
        ("RS256 when HS256 is pinned", Cred::Bearer(rs256(&valid, None)), Some("\"RS256\" is not allowed")),
        ("garbage bearer", Cred::Bearer("not-a-jwt".into()), Some("malformed token")),
        ("valid shared secret", shared(SHARED_SECRET, "alice"), None),
        ("wrong shared secret", shared("test-shared-secret-0123456780", "alice"), Some("wrong shared secret")),
        ("shared secret without user", shared(SHARED_SECRET, ""), Some("requires an x-user-id")),
        ("wrong admin token", Cred::Bearer("test-admin-token-0123456780".into()), Some("malformed token")),
    ];
    check_table(&server, cases).await;

    // Basic auth and other schemes are refused by name.
    let mut client = TenantServiceClient::new(server.channel().await);
    let mut request = tonic::Request::new(GetMyTenantRequest::default());
    request.metadata_mut().insert("authorization", "Basic YWxpY2U6cHc=".parse().unwrap());
    let status = client.get_my_tenant(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("Bearer scheme"), "{}", status.message());

    // Health and reflection stay open; everything else needs credentials.
    let status = client
        .create_tenant(Cred::None.request(CreateTenantRequest { plan: "free".into(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    server.shutdown().await;
}

#[tokio::test]
async fn rs256_public_key_pins_its_algorithm() {
    let db = sqlite_db();
    let mut args = serve_args(&db);
    args.auth.jwt_hs256_secret = None;
    args.auth.jwt_public_key_file = Some(fixture("rsa_public.pem"));
    let server = TestServer::start(args).await;
    let valid = claims("alice", &[]);
    // The classic confusion attack: HS256 keyed with the public key's bytes.
    let public_pem = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem), None, &valid);
    let other_rsa = {
        // Our EC key cannot sign RS256, so "another key" is the HS secret path:
        // an RS256 header with a signature from a different key type must fail.
        let token = rs256(&valid, None);
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };
    let cases = vec![
        ("valid RS256", Cred::Bearer(rs256(&valid, None)), None),
        ("HS256 keyed with the public key", Cred::Bearer(confused), Some("\"HS256\" is not allowed")),
        ("ES256 token", Cred::Bearer(es256(&valid, None)), Some("\"ES256\" is not allowed")),
        ("alg none", Cred::Bearer(unsigned(&valid)), Some("\"none\" is not allowed")),
        ("corrupted signature", Cred::Bearer(other_rsa), Some("")),
        (
            "expired RS256",
            Cred::Bearer(rs256(&with(valid.clone(), "exp", json!(now() - 3600)), None)),
            Some("token expired"),
        ),
    ];
    check_table(&server, cases).await;
    server.shutdown().await;
}

#[tokio::test]
async fn jwks_selects_keys_by_kid() {
    let db = sqlite_db();
    let mut args = serve_args(&db);
    args.auth.jwt_hs256_secret = None;
    args.auth.jwks_file = Some(fixture("jwks.json"));
    let server = TestServer::start(args).await;
    let valid = claims("alice", &["team-a"]);
    let cases = vec![
        ("RS256 with kid", Cred::Bearer(rs256(&valid, Some("rsa-1"))), None),
        ("ES256 with kid", Cred::Bearer(es256(&valid, Some("ec-1"))), None),
        ("unknown kid", Cred::Bearer(rs256(&valid, Some("rsa-9"))), Some("not in the configured JWKS")),
        ("kid of the other key", Cred::Bearer(rs256(&valid, Some("ec-1"))), Some("not in the configured JWKS")),
        ("HS256 against a JWKS", Cred::Bearer(hs256(valid.clone())), Some("\"HS256\" is not allowed")),
    ];
    check_table(&server, cases).await;
    server.shutdown().await;
}

#[tokio::test]
async fn admin_role_claim_grants_operator_calls() {
    use clawplane_proto::v1::ListTenantsRequest;
    let db = sqlite_db();
    let server = TestServer::start(serve_args(&db)).await;
    let mut client = TenantServiceClient::new(server.channel().await);
    let operator = Cred::Bearer(hs256(with(claims("olga", &[]), "roles", json!(["admin"]))));
    client.list_tenants(operator.request(ListTenantsRequest::default())).await.expect("admin role lists");
    let user = Cred::Bearer(hs256(with(claims("ursula", &[]), "roles", json!(["viewer"]))));
    let status = client.list_tenants(user.request(ListTenantsRequest::default())).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    server.shutdown().await;
}

/// Verified tokens are remembered (the edge sees the same one on every
/// request), but never past their expiry, and a remembered token never
/// vouches for a different one.
#[tokio::test]
async fn remembered_tokens_still_expire_and_vouch_for_nothing_else() {
    let db = sqlite_db();
    let server = TestServer::start_with(serve_args(&db), |config| {
        config.auth.jwt.as_mut().unwrap().leeway = std::time::Duration::ZERO;
    })
    .await;
    let short = hs256(with(claims("alice", &[]), "exp", json!(now() + 2)));
    let cases = vec![
        ("a token about to expire", Cred::Bearer(short.clone()), None),
        ("the same token again (remembered)", Cred::Bearer(short.clone()), None),
        ("a tampered payload after a valid token", Cred::Bearer(tampered()), Some("bad signature")),
    ];
    check_table(&server, cases).await;
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    check_table(&server, vec![("the remembered token once expired", Cred::Bearer(short), Some("token expired"))]).await;
}
