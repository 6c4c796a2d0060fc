//! The gateway bridge end to end, as real processes on 127.0.0.1: control
//! plane, a host agent with its tenant proxy, two tenants' gateways (the
//! stand-in `openclaw`, whose gateway reports what it received), and
//! `clawplane-bridge` in front. Routing by Host, edge authentication,
//! header hygiene, WebSocket upgrades and live route changes.
mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{CreateTenantRequest, DeleteTenantRequest};
use clawplane_test_kit::auth::{claims, hs256, now, Cred, SHARED_SECRET};
use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn gateway_token(agent: &Agent, tenant_id: &str) -> String {
    let path = agent.state_dir.join("tenants").join(format!("{tenant_id}.json"));
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    record["gateway_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_routes_each_host_to_its_own_tenant_only() {
    let db = sqlite_db();
    let dir = db.data_dir();
    let (mut cp, mut agent) = host_with_tenant_proxy(&db).await;

    let mut tenants = TenantServiceClient::new(cp.channel().await);
    let alice = Cred::shared("alice");
    let carol = Cred::Shared { secret: SHARED_SECRET.into(), user: "carol".into(), teams: "team-red".into() };
    tenants
        .create_tenant(alice.request(CreateTenantRequest { plan: "free".into(), ..Default::default() }))
        .await
        .unwrap();
    let team = CreateTenantRequest { plan: "pro".into(), team_id: "team-red".into(), ..Default::default() };
    tenants.create_tenant(carol.request(team)).await.unwrap();
    let a = running(&mut tenants, &alice, "").await;
    let t = running(&mut tenants, &carol, "team-red").await;

    // A bridge identity from the CA, and the bridge.
    let bridge = BridgeProcess::start(&cp, &dir);
    let (port, admin_port, identity) = (bridge.port, bridge.admin_port, bridge.identity.clone());

    let alice_jwt = hs256(claims("alice", &[]));
    let dave_jwt = hs256(claims("dave", &["team-red"]));
    let bob_jwt = hs256(claims("bob", &["team-blue"]));
    let mut expired = claims("alice", &[]);
    expired["exp"] = serde_json::json!(now() - 600);
    expired["iat"] = serde_json::json!(now() - 4000);
    let expired_jwt = hs256(expired);
    let (a_host, t_host) = ("alice.claw.test".to_string(), format!("{}.claw.test", t.slug));
    let started = std::time::Instant::now();
    loop {
        let last = http(port, "alice.claw.test", "/healthz", &[("Authorization", &bearer(&alice_jwt))]).await;
        if last.0 == 200 {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let bridge_log = std::fs::read_to_string(&bridge.log).unwrap_or_default();
            panic!("alice's route never became active: {last:?}\nbridge:\n{bridge_log}\nagent:\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The browser hand-off: an owner's token becomes an HttpOnly cookie,
    // sealed for alice's host only.
    let handoff = format!("/_clawplane/session?token={alice_jwt}&next=/chat");
    let (status, head, _) = http(port, &a_host, &handoff, &[]).await;
    assert_eq!(status, 303, "{head}");
    let session = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().starts_with("set-cookie:").then(|| line[11..].trim().to_string()))
        .and_then(|cookie| cookie.split(';').next().map(String::from))
        .expect("a session cookie");
    assert!(!session.contains(&alice_jwt), "the cookie is not the SSO token");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("location: /chat") && head.contains("set-cookie: clawplane_session="), "{head}");
    assert!(head.contains("httponly") && head.contains("samesite=lax"), "{head}");
    assert!(!head.contains("secure"), "plain HTTP without a trusted TLS front: {head}");
    assert!(!head.contains("domain="), "the cookie is for this host only: {head}");

    // Who gets through, on plain HTTP.
    let a_port = serde_json::from_str::<serde_json::Value>(
        &http(port, &a_host, "/healthz", &[("Authorization", &bearer(&alice_jwt))]).await.2,
    )
    .unwrap()["port"]
        .clone();
    let cases: Vec<(&str, &str, Vec<(&str, String)>, u16)> = vec![
        ("no token", &a_host, vec![], 401),
        ("expired token", &a_host, vec![("Authorization", bearer(&expired_jwt))], 401),
        ("garbage token", &a_host, vec![("Authorization", "Bearer abc.def.ghi".into())], 401),
        ("another user's token", &a_host, vec![("Authorization", bearer(&bob_jwt))], 404),
        ("a team member on a personal tenant", &a_host, vec![("Authorization", bearer(&dave_jwt))], 404),
        ("forged x-forwarded-user", &a_host, vec![("X-Forwarded-User", "alice".into())], 401),
        ("the owner", &a_host, vec![("Authorization", bearer(&alice_jwt))], 200),
        ("the owner by session cookie", &a_host, vec![("Cookie", format!("{session}; theme=dark"))], 200),
        ("the SSO token as a cookie", &a_host, vec![("Cookie", format!("clawplane_session={alice_jwt}"))], 401),
        (
            "a cookie a sibling host planted, first",
            &a_host,
            vec![("Cookie", format!("clawplane_session=x; {session}"))],
            200,
        ),
        ("alice's session cookie on another host", &t_host, vec![("Cookie", session.clone())], 401),
        ("a team member", &t_host, vec![("Authorization", bearer(&dave_jwt))], 200),
        ("the owner of another tenant", &t_host, vec![("Authorization", bearer(&alice_jwt))], 404),
        ("an unknown tenant", "nobody.claw.test", vec![("Authorization", bearer(&alice_jwt))], 404),
        ("an unknown tenant without a token", "nobody.claw.test", vec![], 401),
        ("outside the base domain", "alice.evil.test", vec![("Authorization", bearer(&alice_jwt))], 404),
        ("outside the base domain without a token", "alice.evil.test", vec![], 401),
    ];
    for (what, host, headers, expected) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, body) = http(port, host, "/healthz", &headers).await;
        assert_eq!(status, *expected, "{what}: {body}");
        if status != 200 {
            assert!(!body.contains("alice") && !body.contains(&t.slug), "{what} leaks a tenant name: {body}");
        }
    }

    for (what, query, expected) in [
        ("someone else's token", format!("token={bob_jwt}&next=/"), 404),
        ("an open redirect", format!("token={alice_jwt}&next=//evil.test/"), 400),
        ("no token", "next=/".to_string(), 400),
        ("an expired token", format!("token={expired_jwt}"), 401),
    ] {
        let (status, head, _) = http(port, &a_host, &format!("/_clawplane/session?{query}"), &[]).await;
        assert_eq!(status, expected, "{what}: {head}");
        assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{what}");
    }

    // What reached alice's gateway: her gateway's token (added by the agent),
    // not her SSO token, no forged identity, the session cookie stripped,
    // nor a header the client's Connection header names as hop-by-hop.
    let forged = [
        ("Cookie", format!("{session}; theme=dark")),
        ("X-Forwarded-User", "root".to_string()),
        ("X-Clawplane-Tenant", t.id.clone()),
        ("Connection", "X-Hop".to_string()),
        ("X-Hop", "for the bridge only".to_string()),
    ];
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, body) = http(port, &a_host, "/some/path?x=1", &forged).await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["port"], a_port, "a forged tenant header does not redirect the request");
    assert_eq!(seen["path"], "/some/path?x=1");
    let expected_auth = hex::encode(Sha256::digest(bearer(&gateway_token(&agent, &a.id)).as_bytes()));
    assert_eq!(seen["auth_sha256"], expected_auth.as_str(), "the gateway got its own token");
    assert_eq!(seen["x_forwarded_user"], "");
    assert_eq!(seen["x_forwarded_for"], "127.0.0.1");
    assert_eq!(seen["cookie"], "theme=dark");
    assert_eq!(seen["x_hop"], "", "a header named in Connection went past its hop");
    let (_, _, team_body) = http(port, &t_host, "/", &[("Authorization", &bearer(&dave_jwt))]).await;
    let team_seen: serde_json::Value = serde_json::from_str(&team_body).unwrap();
    assert_ne!(team_seen["port"], a_port, "each hostname reaches its own gateway");

    // WebSocket upgrade: relayed both ways, with the same edge checks.
    for (token, expected) in [(None, "401"), (Some(&bob_jwt), "404"), (Some(&alice_jwt), "101")] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {a_host}\r\n{auth}Connection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head)).await.unwrap().unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_string();
        assert!(head.starts_with(&format!("HTTP/1.1 {expected}")), "{head}");
        if expected == "101" {
            stream.write_all(b"frame-1").await.unwrap();
            let mut echo = vec![0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut echo)).await.unwrap().unwrap();
            assert_eq!(&echo[..n], b"echo:frame-1");
        }
    }

    // The admin listener: metrics per tenant, and the lookup nginx uses.
    let (status, _, metrics) = http(admin_port, "127.0.0.1", "/metrics", &[]).await;
    assert_eq!(status, 200);
    let line = format!("clawplane_bridge_requests_total{{tenant=\"{}\"}}", a.id);
    let count: f64 =
        metrics.lines().find(|l| l.starts_with(&line)).unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{metrics}");
    assert!(metrics.contains("clawplane_bridge_refused_total{status=\"401\"}"), "{metrics}");
    let (status, head, _) = http(
        admin_port,
        "127.0.0.1",
        "/api/internal/route",
        &[("X-Original-Host", &a_host), ("Authorization", &bearer(&alice_jwt))],
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains(&format!("x-clawplane-tenant: {}", a.id)), "{head}");
    // Refusals nginx would turn into 500 come as 403 with the real status.
    let (status, head, _) = http(
        admin_port,
        "127.0.0.1",
        "/api/internal/route",
        &[("X-Original-Host", "nobody.claw.test"), ("Authorization", &bearer(&alice_jwt))],
    )
    .await;
    assert_eq!(status, 403, "{head}");
    assert!(head.to_ascii_lowercase().contains("x-clawplane-status: 404"), "{head}");

    // nginx in front, with the shipped deploy/nginx config and auth_request.
    let nginx = match nginx_bin() {
        Some(nginx) => Some(
            through_nginx(
                &nginx,
                &dir,
                &identity,
                admin_port,
                &[
                    (&a_host, bearer(&alice_jwt), 200),
                    (&a_host, bearer(&bob_jwt), 404),
                    (&a_host, String::new(), 401),
                    (&t_host, bearer(&dave_jwt), 200),
                    (&"nobody.claw.test".to_string(), bearer(&alice_jwt), 404),
                ],
                &a_port,
                &expected_auth,
                &session,
            )
            .await,
        ),
        None => {
            eprintln!("\n!!! SKIPPING the nginx part: nginx is not installed (scripts/test installs it) !!!\n");
            None
        }
    };

    // TLS termination in the bridge, with the certificate reloaded when its
    // files change.
    tls_termination_reloads(&cp, &dir, &a_host, &bearer(&alice_jwt)).await;

    // The control plane goes away: the bridge keeps routing from its table.
    cp.kill9();
    let (status, _, _) = http(port, &a_host, "/", &[("Authorization", &bearer(&alice_jwt))]).await;
    assert_eq!(status, 200, "routing survives a control plane outage");
    cp.restart();

    // A deleted tenant is gone from the bridge within a second or two.
    tenants = TenantServiceClient::new(cp.channel().await);
    tenants.delete_tenant(carol.request(DeleteTenantRequest { tenant_id: t.id.clone() })).await.unwrap();
    let deleted = std::time::Instant::now();
    eventually(Duration::from_secs(10), "deleted tenant answers 404", || {
        let (host, auth) = (t_host.clone(), bearer(&dave_jwt));
        async move { http(port, &host, "/", &[("Authorization", &auth)]).await.0 == 404 }
    })
    .await;
    eprintln!("deleted tenant unroutable after {:?}", deleted.elapsed());

    // The host goes offline: 503 with Retry-After, once its lease runs out.
    agent.kill9();
    eventually(Duration::from_secs(20), "offline host answers 503", || {
        let (host, auth) = (a_host.clone(), bearer(&alice_jwt));
        async move {
            let (status, head, _) = http(port, &host, "/", &[("Authorization", &auth)]).await;
            status == 503 && head.to_ascii_lowercase().contains("retry-after: 5")
        }
    })
    .await;
    if let Some(nginx) = &nginx {
        // nginx says 503 too: first because the agent does not answer, then
        // because the route says the host is offline (not nginx's 500).
        let offline = || async {
            let (status, head, body) = http(nginx.port, &a_host, "/", &[("Authorization", &bearer(&alice_jwt))]).await;
            assert_eq!(status, 503, "nginx, host offline: {head}{body}");
            assert!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
            assert!(!body.contains("alice"), "{body}");
        };
        offline().await;
        eventually(Duration::from_secs(30), "the route says the host is unavailable", || {
            let (host, auth) = (a_host.clone(), bearer(&alice_jwt));
            async move {
                let lookup = [("X-Original-Host", host.as_str()), ("Authorization", auth.as_str())];
                let (_, head, _) = http(admin_port, "127.0.0.1", "/api/internal/route", &lookup).await;
                head.to_ascii_lowercase().contains("x-clawplane-status: 503")
            }
        })
        .await;
        offline().await;
    }
    let health = http(port, "10.0.0.1", "/api/health", &[]).await;
    assert_eq!(health.0, 200, "{health:?}");
    drop(bridge);
}

fn nginx_bin() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() && std::env::var("CLAWPLANE_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("nginx is required (scripts/test installs the Debian package nginx-light)");
    }
    found
}

/// Real nginx with deploy/nginx/*.conf (paths and ports substituted) on a
/// plain-HTTP test port; checks who gets through and what the gateway saw.
async fn through_nginx(
    nginx: &std::path::Path,
    dir: &std::path::Path,
    identity: &std::path::Path,
    admin_port: u16,
    cases: &[(&String, String, u16)],
    alice_gateway_port: &serde_json::Value,
    expected_auth: &str,
    session: &str,
) -> Nginx {
    let root = dir.join("nginx");
    std::fs::create_dir_all(root.join("logs")).unwrap();
    let shipped = |name: &str| {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx/").to_string() + name).unwrap()
    };
    let http_conf = shipped("clawplane-http.conf").replace("127.0.0.1:9090", &format!("127.0.0.1:{admin_port}"));
    let locations = shipped("clawplane-tenant-locations.conf")
        .replace("/etc/clawplane/bridge/", &format!("{}/", identity.display()));
    std::fs::write(root.join("clawplane-http.conf"), http_conf).unwrap();
    std::fs::write(root.join("clawplane-tenant-locations.conf"), locations).unwrap();
    let port = free_port();
    let r = root.display();
    let conf = format!(
        "user root;\ndaemon off;\nworker_processes 1;\npid {r}/nginx.pid;\nerror_log {r}/logs/error.log;\n\
         events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {r}/body;\n  proxy_temp_path {r}/proxy;\n\
         fastcgi_temp_path {r}/fastcgi;\n  uwsgi_temp_path {r}/uwsgi;\n  scgi_temp_path {r}/scgi;\n\
         include {r}/clawplane-http.conf;\n  server {{\n    listen 127.0.0.1:{port};\n\
         server_name ~^(?<clawplane_slug>[a-z0-9-]+)\\.claw\\.test$;\n    include {r}/clawplane-tenant-locations.conf;\n  }}\n}}\n"
    );
    std::fs::write(root.join("nginx.conf"), conf).unwrap();
    let mut child = Command::new(nginx)
        .arg("-p")
        .arg(&root)
        .arg("-c")
        .arg(root.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child);
    for (host, auth, expected) in cases {
        let headers: Vec<(&str, &str)> = if auth.is_empty() { vec![] } else { vec![("Authorization", auth.as_str())] };
        let (status, _, body) = http(port, host, "/healthz", &headers).await;
        assert_eq!(
            status,
            *expected,
            "nginx {host} {}: {body}\n{}",
            !auth.is_empty(),
            std::fs::read_to_string(root.join("logs/error.log")).unwrap_or_default()
        );
    }
    let cookie = format!("{session}; theme=dark");
    let (status, _, body) =
        http(port, cases[0].0, "/p?q=1", &[("Cookie", &cookie), ("X-Forwarded-User", "root")]).await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(&seen["port"], alice_gateway_port);
    assert_eq!(seen["auth_sha256"], expected_auth);
    assert_eq!(seen["x_forwarded_user"], "");
    assert_eq!(seen["cookie"], "theme=dark", "nginx drops the session cookie");
    Nginx { port, child }
}

/// A running nginx, stopped when dropped.
struct Nginx {
    port: u16,
    child: std::process::Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master takes its workers down (SIGKILL would orphan them).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Accepts any server certificate and keeps the last one seen.
#[derive(Debug, Default)]
struct SeenCertificate(std::sync::Mutex<Vec<u8>>);

impl rustls::client::danger::ServerCertVerifier for SeenCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = end_entity.to_vec();
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        clawplane_tls::provider().signature_verification_algorithms.supported_schemes()
    }
}

fn wildcard_cert(dir: &std::path::Path) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["*.claw.test".to_string()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.pem"), cert.pem()).unwrap();
    cert.der().to_vec()
}

/// One HTTPS GET through the bridge; returns (status, certificate served).
async fn https_get(port: u16, host: &str, auth: &str) -> (u16, Vec<u8>) {
    let seen = Arc::new(SeenCertificate::default());
    let mut config = rustls::ClientConfig::builder_with_provider(clawplane_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(seen.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let served = seen.0.lock().unwrap().clone();
    (status, served)
}

async fn tls_termination_reloads(cp: &ControlPlane, dir: &std::path::Path, host: &str, auth: &str) {
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let first = wildcard_cert(&tls_dir);
    let (cert, key) = (tls_dir.join("tls.pem"), tls_dir.join("tls.key"));
    let bridge =
        BridgeProcess::start_with(cp, dir, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let mut served = (0, Vec::new());
    for _ in 0..100 {
        served = https_get(bridge.port, host, auth).await;
        if served.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, (200, first.clone()), "HTTPS through the bridge with the first certificate");
    // Mtime granularity: make sure the files look changed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = wildcard_cert(&tls_dir);
    let started = std::time::Instant::now();
    loop {
        let (status, cert) = https_get(bridge.port, host, auth).await;
        assert_eq!(status, 200);
        if cert == second {
            break;
        }
        assert_eq!(cert, first);
        assert!(started.elapsed() < Duration::from_secs(20), "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A host enrolled before host certificates named the host gets one that
/// does as soon as it runs the tenant proxy, not at two thirds of the old
/// certificate's life: bridges verify the proxy by that name.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_certificate_without_the_host_name_is_renewed_at_once() {
    let db = sqlite_db();
    let cp = ControlPlane::start(&db, "");
    let dir = db.data_dir();
    let fake = fake_openclaw(&dir);
    let (token, pin) = cp.join_token(600, 1).await;
    let mut agent = Agent::new(&dir, "agent");
    assert!(agent.join(&cp.url(), &token, &pin).status.success());
    let host_id = agent.host_id();
    let name = format!("{host_id}.hosts.clawplane.internal");
    let cert_of = |agent: &Agent| {
        let pem = std::fs::read_to_string(agent.state_dir.join("cert.pem")).unwrap();
        clawplane_tls::cert_info(&clawplane_tls::certs_from_pem(&pem).unwrap()[0]).unwrap()
    };
    assert_eq!(cert_of(&agent).dns_names, vec![name.clone()], "a new host's certificate names the host");

    // The agent's key re-signed as host certificates were before: the host
    // id as subject, no names, valid for a day.
    let pki = cp.data_dir.join("pki");
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.join("ca.pem")).unwrap(), ca_key).unwrap();
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(agent.state_dir.join("key.pem")).unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, host_id.clone());
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = (std::time::SystemTime::now() - Duration::from_secs(60)).into();
    params.not_after = (std::time::SystemTime::now() + Duration::from_secs(86_400)).into();
    let old = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(agent.state_dir.join("cert.pem"), old.pem()).unwrap();
    let info = cert_of(&agent);
    assert!(info.dns_names.is_empty());
    // Recorded as issued, as it would have been: the control plane accepts
    // only certificates it knows.
    let store = clawplane::store::Store::connect(&db.url, 1).await.unwrap();
    let utc = sea_orm::prelude::DateTimeUtc::from;
    let record = clawplane::store::NewHostCert {
        serial: info.serial_hex,
        fingerprint: info.fingerprint,
        not_before: utc(info.not_before),
        not_after: utc(info.not_after),
    };
    store.add_host_certificate(&host_id, record).await.unwrap();
    store.close().await;

    // Without the tenant proxy the name is not needed: the old certificate
    // serves on (the agent connects with it).
    let fake_bin = fake.join("openclaw").display().to_string();
    let tenants = dir.join("tenants").display().to_string();
    let args = ["--openclaw-bin", fake_bin.as_str(), "--tenants-dir", &tenants, "--no-tenant-users"];
    agent.run_with(&args);
    eventually(Duration::from_secs(20), "the agent online", || async {
        cp.host_status(&host_id).await == Some((clawplane_proto::v1::HostStatus::Online, true))
    })
    .await;
    assert!(!agent.log().contains("certificate renewed"), "{}", agent.log());
    assert!(cert_of(&agent).dns_names.is_empty());
    agent.kill9();

    // With the proxy: renewed at once, and once.
    let mut with_proxy = args.to_vec();
    with_proxy.extend(["--proxy-listen", "127.0.0.1:0"]);
    agent.run_with(&with_proxy);
    eventually(Duration::from_secs(20), "the early renewal", || {
        let renewed = agent.log().contains("certificate renewed");
        async move { renewed }
    })
    .await;
    assert_eq!(cert_of(&agent).dns_names, vec![name], "{}", agent.log());
    assert_eq!(agent.log().matches("renewing it now").count(), 1, "{}", agent.log());
}

/// SIGTERM while a request is in flight: the bridge stops accepting, the
/// request gets its whole answer, then the bridge exits 0. The grace is
/// far longer than the test, so the exit shows the bridge waited for the
/// request and no longer, not that the grace ran out.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let db = sqlite_db();
    let dir = db.data_dir();
    let (cp, _agent) = host_with_tenant_proxy(&db).await;
    let mut tenants = TenantServiceClient::new(cp.channel().await);
    let alice = Cred::shared("alice");
    let create = CreateTenantRequest { plan: "free".into(), ..Default::default() };
    tenants.create_tenant(alice.request(create)).await.unwrap();
    running(&mut tenants, &alice, "").await;
    let mut bridge = BridgeProcess::start_with(&cp, &dir, &["--shutdown-grace", "1h"]);
    let port = bridge.port;
    let auth = bearer(&hs256(claims("alice", &[])));
    let route_active = || {
        let auth = auth.clone();
        async move { http(port, "alice.claw.test", "/healthz", &[("Authorization", &auth)]).await.0 == 200 }
    };
    eventually(Duration::from_secs(30), "alice's route is active", route_active).await;

    // The gateway holds this request until the test releases it.
    let fake = dir.join("fake");
    let held = {
        let auth = auth.clone();
        tokio::spawn(async move { http(port, "alice.claw.test", "/_hold", &[("Authorization", &auth)]).await })
    };
    let reached = || std::future::ready(fake.join("held").exists());
    eventually(Duration::from_secs(30), "the request reaches the gateway", reached).await;

    bridge.terminate();
    let refused = || async { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() };
    eventually(Duration::from_secs(30), "the bridge stops accepting", refused).await;
    assert!(!held.is_finished(), "the gateway has not answered yet");
    assert_eq!(bridge.exited(), None, "the bridge waits for the request in flight");

    std::fs::write(fake.join("release"), "").unwrap();
    let (status, _, body) = held.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/_hold"), "the gateway's whole answer: {body}");
    let mut status = None;
    eventually(Duration::from_secs(60), "the bridge exits", || {
        status = status.or_else(|| bridge.exited());
        std::future::ready(status.is_some())
    })
    .await;
    let status = status.unwrap();
    assert!(status.success(), "exit status {status}; bridge log:\n{}", std::fs::read_to_string(&bridge.log).unwrap());
}
