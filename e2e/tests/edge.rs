//! What an untrusted, signed-in user can do to the bridge, tried from
//! outside over real sockets: probe which tenants exist, flood one host's
//! shared connection with huge headers, hold connections open with a byte
//! a second, send faster than the allowance. Each is refused and the other
//! tenants' traffic goes on; the bridge is alive with bounded memory after.
//! Clients come from their own loopback addresses (127.0.0.0/8), as the
//! bridge's per-address limits see them.
mod common;

use std::time::{Duration, Instant};

use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::CreateTenantRequest;
use clawplane_test_kit::auth::{claims, hs256, Cred};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bridge's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Still serving, and not holding what the attack sent.
async fn alive_and_bounded(bridge: &BridgeProcess) {
    let (status, _, body) = http(bridge.port, "anything.claw.test", "/api/health", &[]).await;
    assert_eq!((status, body.trim()), (200, "ok"), "the bridge answers after the attack");
    let rss = rss_kib(bridge.pid());
    assert!(rss < 256 * 1024, "bridge RSS {rss} KiB after the attack");
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_user_cannot_probe_flood_or_starve_the_bridge() {
    let db = sqlite_db();
    let dir = db.data_dir();
    let (mut cp, mut agent) = host_with_tenant_proxy(&db).await;
    let mut tenants = TenantServiceClient::new(cp.channel().await);
    for user in ["alice", "bob"] {
        let request = CreateTenantRequest { plan: "free".into(), ..Default::default() };
        tenants.create_tenant(Cred::shared(user).request(request)).await.unwrap();
    }
    let alice_tenant = running(&mut tenants, &Cred::shared("alice"), "").await;
    let bob_tenant = running(&mut tenants, &Cred::shared("bob"), "").await;
    assert_eq!(alice_tenant.host_id, bob_tenant.host_id, "both tenants share the host and its bridge connection");
    let (alice_host, bob_host) = (format!("{}.claw.test", alice_tenant.slug), format!("{}.claw.test", bob_tenant.slug));
    let (alice, bob, mallory) = (
        bearer(&hs256(claims("alice", &[]))),
        bearer(&hs256(claims("bob", &[]))),
        bearer(&hs256(claims("mallory", &[]))),
    );

    let bridge = BridgeProcess::start_with(&cp, &dir, &["--max-connections-per-address", "64"]);
    let port = bridge.port;
    // Both routes: the table the bridge got may predate bob's tenant
    // running by one refresh.
    for (who, host, auth) in [("alice", &alice_host, &alice), ("bob", &bob_host, &bob)] {
        eventually(Duration::from_secs(30), &format!("{who}'s route is active"), || {
            let (host, auth) = (host.clone(), auth.clone());
            async move { http(port, &host, "/", &[("Authorization", &auth)]).await.0 == 200 }
        })
        .await;
    }

    // Existence probes: whatever the host name, a stranger learns nothing.
    // Mallory is signed in and owns no tenant; slugs come from owner ids.
    let probes = [alice_host.as_str(), bob_host.as_str(), "carol.claw.test", "nobody.claw.test", "alice.evil.test"];
    let credentials: [(&str, Vec<(&str, &str)>, u16); 4] = [
        ("no credentials", vec![], 401),
        ("a garbage token", vec![("Authorization", "Bearer x.y.z")], 401),
        ("a session cookie from nowhere", vec![("Cookie", "clawplane_session=AAAA")], 401),
        ("mallory's valid token", vec![("Authorization", mallory.as_str())], 404),
    ];
    for (what, headers, expected) in &credentials {
        let mut answers = Vec::new();
        for host in probes {
            let (status, head, body) = http(port, host, "/", headers).await;
            assert_eq!(status, *expected, "{what} on {host}: {head}");
            // Everything but the date is the same whichever tenant was asked.
            let head: Vec<&str> = head.lines().filter(|l| !l.to_ascii_lowercase().starts_with("date:")).collect();
            answers.push((head.join("\n"), body));
        }
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "{what}: answers differ by host: {answers:#?}");
    }

    // A header flood from alice while bob's requests share the bridge's one
    // connection to their host: every one of bob's succeeds.
    let bob_requests = {
        let (host, auth) = (bob_host.clone(), bob.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..60 {
                statuses.push(http_from("127.0.0.5", port, &host, "/", &[("Authorization", &auth)]).await.0);
            }
            statuses
        })
    };
    let huge = "x".repeat(64 * 1024);
    let wide = "y".repeat(200);
    let many: Vec<(String, String)> = (0..90).map(|i| (format!("x-wide-{i}"), wide.clone())).collect();
    let too_many: Vec<(String, String)> = (0..150).map(|i| (format!("x-{i}"), "v".to_string())).collect();
    for _ in 0..10 {
        let floods: [(&str, Vec<(String, String)>); 3] = [
            ("a 64 KiB header", vec![("X-Huge".into(), huge.clone())]),
            ("90 headers of 200 bytes", many.clone()),
            ("150 headers", too_many.clone()),
        ];
        for (what, mut headers) in floods {
            headers.push(("Authorization".into(), alice.clone()));
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (status, head, _) = http_from("127.0.0.4", port, &alice_host, "/", &headers).await;
            // hyper answers a head larger than its buffer with 431 and
            // closes; the unread rest of the header may reset the socket
            // before the client reads the answer (status 0). Never passed on.
            let refused = status == 431 || (status == 0 && what.contains("64 KiB"));
            assert!(refused, "{what}: {status} {head}");
        }
    }
    let statuses = bob_requests.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "bob's requests during the flood: {statuses:?}");

    // Slowloris: 200 connections from one address, each sending a byte a
    // second of a request head that never ends. The address gets its 64;
    // the rest are closed at once, the 64 once the header-read timeout
    // passes; other users are answered all along.
    let slow_started = Instant::now();
    let slow: Vec<_> = (0..200)
        .map(|_| {
            let host = alice_host.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = connect_from("127.0.0.2", port).await else { return Some(Duration::ZERO) };
                let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow: ");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return Some(slow_started.elapsed());
                }
                let mut byte = [0u8; 1];
                // Bounded: 60 bytes, a second each.
                for _ in 0..60 {
                    match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return Some(slow_started.elapsed()),
                        Ok(Ok(_)) => {}
                        Err(_) => {}
                    }
                    if stream.write_all(b"a").await.is_err() {
                        return Some(slow_started.elapsed());
                    }
                }
                None
            })
        })
        .collect();
    let mut answered = Vec::new();
    for _ in 0..20 {
        answered.push(http_from("127.0.0.6", port, &bob_host, "/", &[("Authorization", &bob)]).await.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(answered.iter().all(|s| *s == 200), "others' requests during the slowloris run: {answered:?}");
    let mut closed = Vec::new();
    for task in slow {
        closed.push(task.await.unwrap());
    }
    let held_open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(held_open, 0, "every slow connection was closed by the bridge within 60 s");
    let (_, _, metrics) = http(bridge.admin_port, "127.0.0.1", "/metrics", &[]).await;
    let refused = metric(&metrics, "clawplane_bridge_refused_connections_total");
    assert!(refused >= 100.0, "connections over the per-address cap were refused at accept: {refused}\n{metrics}");
    assert!(metrics.contains("clawplane_bridge_refused_total{status=\"431\"}"), "{metrics}");

    // WebSockets count against their address's connections while they last.
    let mut sockets = Vec::new();
    for _ in 0..64 {
        let mut ws = connect_from("127.0.0.8", port).await.unwrap();
        let upgrade = format!(
            "GET /ws HTTP/1.1\r\nHost: {alice_host}\r\nAuthorization: {alice}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        ws.write_all(upgrade.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(30), ws.read(&mut head)).await.unwrap().unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        sockets.push(ws);
    }
    let (status, _, _) = http_from("127.0.0.8", port, &alice_host, "/", &[("Authorization", &alice)]).await;
    assert_eq!(status, 0, "the address's 64 places are taken by its WebSockets");
    assert_eq!(http_from("127.0.0.9", port, &alice_host, "/", &[("Authorization", &alice)]).await.0, 200);
    drop(sockets);
    eventually(Duration::from_secs(30), "closed WebSockets free their places", || {
        let (host, auth) = (alice_host.clone(), alice.clone());
        async move { http_from("127.0.0.8", port, &host, "/", &[("Authorization", &auth)]).await.0 == 200 }
    })
    .await;

    // A client that connects and sends nothing is dropped once the
    // header-read timeout passes (hyper's own timer starts later).
    let mut silent = connect_from("127.0.0.10", port).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "a silent connection is closed: {closed:?}");
    alive_and_bounded(&bridge).await;
    drop(bridge);

    // Request rates: per client address and per tenant, 429 with
    // Retry-After; other addresses and tenants are not affected. A trusted
    // front's https makes the session cookie Secure.
    let limited = BridgeProcess::start_with(
        &cp,
        &dir,
        &[
            "--rate-per-address",
            "1",
            "--burst-per-address",
            "5",
            "--rate-per-tenant",
            "1",
            "--burst-per-tenant",
            "12",
            "--trusted-front",
            "127.0.0.1",
        ],
    );
    let port = limited.port;
    eventually(Duration::from_secs(30), "routes on the second bridge", || {
        let (host, auth) = (bob_host.clone(), bob.clone());
        async move { http_from("127.0.0.99", port, &host, "/", &[("Authorization", &auth)]).await.0 == 200 }
    })
    .await;
    let until_refused = |source: &'static str, host: String, auth: String| async move {
        for sent in 1..=30 {
            let (status, head, _) = http_from(source, port, &host, "/", &[("Authorization", &auth)]).await;
            if status == 429 {
                let retry =
                    head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after: ").map(String::from));
                return (sent, retry.and_then(|r| r.trim().parse::<u64>().ok()));
            }
            assert_eq!(status, 200, "{source}: {head}");
        }
        panic!("{source}: never refused");
    };
    let (sent, retry) = until_refused("127.0.0.3", alice_host.clone(), alice.clone()).await;
    assert!(sent >= 6, "the address's burst of 5 is served first ({sent})");
    assert!(retry.is_some_and(|r| r >= 1), "Retry-After in seconds: {retry:?}");
    assert_eq!(http_from("127.0.0.7", port, &alice_host, "/", &[("Authorization", &alice)]).await.0, 200);
    // The tenant's allowance, spent from many addresses.
    let mut tenant_refused = false;
    for i in 10..60 {
        let source: &'static str = Box::leak(format!("127.0.0.{i}").into_boxed_str());
        let (status, head, _) = http_from(source, port, &alice_host, "/", &[("Authorization", &alice)]).await;
        if status == 429 {
            assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
            tenant_refused = true;
            break;
        }
        assert_eq!(status, 200, "{head}");
    }
    assert!(tenant_refused, "alice's tenant reached its allowance");
    assert_eq!(http_from("127.0.0.70", port, &bob_host, "/", &[("Authorization", &bob)]).await.0, 200, "bob's tenant");

    // The hand-off answers before the tenant's allowance is counted; bob's
    // is far from spent anyway.
    let bob_jwt = bob.trim_start_matches("Bearer ").to_string();
    let handoff = format!("/_clawplane/session?token={bob_jwt}&next=/");
    for (what, source, proto, secure) in [
        ("behind the trusted TLS front", "127.0.0.1", "https", true),
        ("plain HTTP through the front", "127.0.0.1", "http", false),
        ("an untrusted client claiming https", "127.0.0.80", "https", false),
    ] {
        let (status, head, _) = http_from(source, port, &bob_host, &handoff, &[("X-Forwarded-Proto", proto)]).await;
        assert_eq!(status, 303, "{what}: {head}");
        let cookie = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap().to_string();
        assert_eq!(cookie.contains("; Secure"), secure, "{what}: {cookie}");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && !cookie.contains("Domain"),
            "{cookie}"
        );
    }
    alive_and_bounded(&limited).await;
    drop(limited);
    agent.kill9();
    cp.kill9();
}
