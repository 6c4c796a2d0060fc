//! The seed's REST endpoints, tried as the seed's own integration code
//! calls them (plain HTTP/1.1 `fetch` shapes, both auth forms) against the
//! real `clawplane` and a joined host: every route, and every refusal with
//! its status and `{code, message}`.
mod common;

use clawplane_test_kit::auth::{claims, hs256, SHARED_SECRET};
use common::*;

/// One request with `Connection: close`; (status, content type, body).
async fn call(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let addr = format!("127.0.0.1:{port}");
    let (status, headers, body) = tokio::task::spawn_blocking(move || http1(&addr, request.as_bytes())).await.unwrap();
    let code = status.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let content_type = headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.clone()).unwrap_or_default();
    (code, content_type, String::from_utf8_lossy(&body).to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|err| panic!("not JSON ({err}): {body}"))
}

/// The seed's headers for a user.
fn seed_headers<'a>(user: &'a str, email: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("X-User-ID", user),
        ("X-User-Email", email),
        ("X-Shared-Secret", SHARED_SECRET),
        ("Content-Type", "application/json"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_rest_calls_work_as_written_and_every_refusal_is_json() {
    let db = sqlite_db();
    let (mut cp, mut agent) = host_with_tenant_proxy(&db).await;
    let port = cp.api_port;
    let alice = seed_headers("alice", "alice@example.com");

    // The seed's own code: POST /api/tenants {email, plan}, then GET /api/tenants/me.
    let (status, content_type, body) =
        call(port, "POST", "/api/tenants", &alice, r#"{"email": "alice@example.com", "plan": "free"}"#).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"), "{body}");
    let created = json(&body);
    assert_eq!(created["created"], true, "{body}");
    let tenant_id = created["tenant"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["tenant"]["plan"], "free");
    assert_eq!(created["tenant"]["owner"]["userId"], "alice");
    let (status, _, body) = call(port, "POST", "/api/tenants", &alice, r#"{"plan": "free"}"#).await;
    assert_eq!((status, json(&body)["created"].clone()), (200, serde_json::json!(false)), "idempotent: {body}");
    assert_eq!(json(&body)["tenant"]["id"], tenant_id.as_str());

    eventually(std::time::Duration::from_secs(60), "alice's tenant runs", || {
        let alice = alice.clone();
        async move {
            let (_, _, body) = call(port, "GET", "/api/tenants/me", &alice, "").await;
            json(&body)["tenant"]["status"] == "TENANT_STATUS_RUNNING"
        }
    })
    .await;
    // The bearer form reads the same tenant.
    let token = format!("Bearer {}", hs256(claims("alice", &[])));
    let (status, _, body) = call(port, "GET", "/api/tenants/me", &[("Authorization", &token)], "").await;
    assert_eq!((status, json(&body)["tenant"]["id"].clone()), (200, serde_json::json!(tenant_id)), "{body}");

    // Logs: the tail as JSON, and a turn as Server-Sent Events.
    let (status, _, body) = call(port, "GET", "/api/tenants/me/logs?tail_lines=20", &alice, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["lines"].is_array(), "{body}");
    let (status, content_type, body) =
        call(port, "POST", "/api/tenants/me/messages", &alice, r#"{"text": "hello over rest"}"#).await;
    assert_eq!((status, content_type.as_str()), (200, "text/event-stream"), "{body}");
    let events: Vec<(&str, serde_json::Value)> = body
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (event, data) = e.split_once('\n').unwrap();
            (event.trim_start_matches("event: "), json(data.trim_start_matches("data: ")))
        })
        .collect();
    let deltas: String =
        events.iter().filter(|(e, _)| *e == "delta").map(|(_, d)| d["text"].as_str().unwrap()).collect();
    assert_eq!(deltas, "echo: hello over rest", "{body}");
    let (last, done) = events.last().unwrap();
    assert_eq!((*last, done["text"].as_str()), ("done", Some("echo: hello over rest")), "{body}");
    // Restart, both spellings.
    for path in ["/api/tenants/me/restart", "/api/tenants/me"] {
        let (status, _, body) = call(port, "POST", path, &alice, "").await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(json(&body)["tenant"]["status"], "TENANT_STATUS_RUNNING", "{path}: {body}");
    }

    // Every refusal: the HTTP status of the gRPC class, and {code, message}.
    let bob = seed_headers("bob", "bob@example.com");
    let wrong_secret = vec![("X-User-ID", "alice"), ("X-User-Email", "alice@example.com"), ("X-Shared-Secret", "nope")];
    let admin = format!("Bearer {}", cp.admin_token());
    let huge = format!(r#"{{"plan": "free", "displayName": "{}"}}"#, "x".repeat(70 * 1024));
    let table: Vec<(&str, &str, &str, Vec<(&str, &str)>, &str, u16, &str, &str)> = vec![
        ("no credentials", "GET", "/api/tenants/me", vec![], "", 401, "UNAUTHENTICATED", ""),
        ("a wrong shared secret", "GET", "/api/tenants/me", wrong_secret.clone(), "", 401, "UNAUTHENTICATED", ""),
        ("bob has no tenant", "GET", "/api/tenants/me", bob.clone(), "", 404, "NOT_FOUND", "tenant not found"),
        ("bob deletes nothing", "DELETE", "/api/tenants/me", bob.clone(), "", 404, "NOT_FOUND", "tenant not found"),
        (
            "a body that is not JSON",
            "POST",
            "/api/tenants",
            bob.clone(),
            "plan=free",
            400,
            "INVALID_ARGUMENT",
            "not JSON",
        ),
        ("a body that is a list", "POST", "/api/tenants", bob.clone(), "[]", 400, "INVALID_ARGUMENT", "JSON object"),
        (
            "a misspelt field",
            "POST",
            "/api/tenants",
            bob.clone(),
            r#"{"plna": "free"}"#,
            400,
            "INVALID_ARGUMENT",
            "plna",
        ),
        (
            "someone else's email",
            "POST",
            "/api/tenants",
            bob.clone(),
            r#"{"email": "alice@example.com", "plan": "free"}"#,
            400,
            "INVALID_ARGUMENT",
            "email",
        ),
        (
            "an unknown plan",
            "POST",
            "/api/tenants",
            bob.clone(),
            r#"{"plan": "platinum"}"#,
            400,
            "INVALID_ARGUMENT",
            "plan",
        ),
        (
            "a body over 64 KiB",
            "POST",
            "/api/tenants",
            bob.clone(),
            &huge,
            400,
            "INVALID_ARGUMENT",
            "at most 65536 bytes",
        ),
        (
            "an unknown parameter",
            "GET",
            "/api/tenants/me?teamid=x",
            alice.clone(),
            "",
            400,
            "INVALID_ARGUMENT",
            "teamid",
        ),
        (
            "a bad tail",
            "GET",
            "/api/tenants/me/logs?tail_lines=lots",
            alice.clone(),
            "",
            400,
            "INVALID_ARGUMENT",
            "tail_lines",
        ),
        (
            "a bad follow",
            "GET",
            "/api/tenants/me/logs?follow=maybe",
            alice.clone(),
            "",
            400,
            "INVALID_ARGUMENT",
            "follow",
        ),
        (
            "an empty message",
            "POST",
            "/api/tenants/me/messages",
            alice.clone(),
            r#"{"text": ""}"#,
            400,
            "INVALID_ARGUMENT",
            "text is required",
        ),
        (
            "a message naming a tenant",
            "POST",
            "/api/tenants/me/messages",
            alice.clone(),
            r#"{"text": "hi", "tenantId": "t"}"#,
            400,
            "INVALID_ARGUMENT",
            "tenantId",
        ),
        (
            "a restart with a body",
            "POST",
            "/api/tenants/me/restart",
            alice.clone(),
            r#"{"now": true}"#,
            400,
            "INVALID_ARGUMENT",
            "no request body",
        ),
        ("hosts for a user", "GET", "/api/hosts", alice.clone(), "", 403, "PERMISSION_DENIED", "admin"),
        ("no such route", "GET", "/api/tenant", alice.clone(), "", 404, "NOT_FOUND", "no REST route"),
    ];
    for (what, method, path, headers, body, status, code, says) in table {
        let (got, content_type, answer) = call(port, method, path, &headers, body).await;
        assert_eq!((got, content_type.as_str()), (status, "application/json"), "{what}: {answer}");
        let answer = json(&answer);
        assert_eq!(answer["code"], code, "{what}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(says), "{what}: {answer}");
    }

    // The operator's view, health and the document.
    let (status, _, body) = call(port, "GET", "/api/hosts", &[("Authorization", &admin)], "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["hosts"].as_array().map(Vec::len), Some(1), "{body}");
    let (status, _, body) = call(port, "GET", "/api/health", &[], "").await;
    assert_eq!((status, json(&body)["status"].clone()), (200, serde_json::json!("SERVING")));
    let (status, _, body) = call(port, "GET", "/api/openapi.json", &[], "").await;
    assert_eq!((status, json(&body)["openapi"].clone()), (200, serde_json::json!("3.1.0")));

    // Delete, and the tenant is gone.
    let (status, _, body) = call(port, "DELETE", "/api/tenants/me", &alice, "").await;
    assert_eq!((status, json(&body)["tenant"]["id"].clone()), (200, serde_json::json!(tenant_id)), "{body}");
    let (status, _, body) = call(port, "GET", "/api/tenants/me", &alice, "").await;
    assert_eq!((status, json(&body)["code"].clone()), (404, serde_json::json!("NOT_FOUND")), "{body}");
    agent.kill9();
    cp.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_tenant_has_no_logs_or_restart_yet() {
    let db = sqlite_db();
    let mut cp = ControlPlane::start(&db, "");
    let carol = seed_headers("carol", "carol@example.com");
    let (status, _, body) = call(cp.api_port, "POST", "/api/tenants", &carol, r#"{"plan": "free"}"#).await;
    assert_eq!(status, 200, "{body}");
    for (method, path) in [("GET", "/api/tenants/me/logs"), ("POST", "/api/tenants/me/restart")] {
        let (status, _, body) = call(cp.api_port, method, path, &carol, "").await;
        assert_eq!(status, 412, "{path}: {body}");
        assert_eq!(json(&body)["code"], "FAILED_PRECONDITION", "{path}: {body}");
    }
    cp.kill9();
}
