//! Cross-cutting API limits over real sockets: request rates per caller and
//! per client address, and which web origins may call with grpc-web.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use clawplane_edge::rate::Rate;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::GetMyTenantRequest;
use common::*;
use tonic::Code;

each_backend!(
    #[tokio::test]
    each_caller_has_an_allowance_of_their_own
);
async fn each_caller_has_an_allowance_of_their_own(db: TestDb) {
    let server = TestServer::start_with(serve_args(&db), |config| {
        config.rate_per_caller = Rate::new(1, 3);
        config.rate_per_address = Rate::new(1, 2);
    })
    .await;
    let mut client = TenantServiceClient::new(server.channel().await);
    let call = |cred: Cred| {
        let mut client = client.clone();
        async move { client.get_my_tenant(cred.request(GetMyTenantRequest::default())).await }
    };
    // Within the burst: answered (NOT_FOUND: no tenant yet).
    for _ in 0..3 {
        assert_eq!(call(Cred::shared("mallory")).await.unwrap_err().code(), Code::NotFound, "{}", db.backend);
    }
    let refused = call(Cred::shared("mallory")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}: {refused:?}", db.backend);
    assert!(refused.message().contains("rate limit"), "{}", refused.message());
    let retry: u64 = refused.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "retry-after in whole seconds");
    // The same user through a JWT shares the allowance; others do not.
    assert_eq!(call(Cred::user("mallory", &[])).await.unwrap_err().code(), Code::ResourceExhausted);
    for user in ["alice", "bob"] {
        assert_eq!(call(Cred::user(user, &[])).await.unwrap_err().code(), Code::NotFound, "{user}");
    }
    // Without a valid identity the client address is the key.
    for _ in 0..2 {
        assert_eq!(call(Cred::None).await.unwrap_err().code(), Code::Unauthenticated);
    }
    assert_eq!(call(Cred::None).await.unwrap_err().code(), Code::ResourceExhausted);
    assert_eq!(call(Cred::Bearer("forged".into())).await.unwrap_err().code(), Code::ResourceExhausted);
    // The operator's token is not limited.
    for _ in 0..10 {
        let answer = client.get_my_tenant(Cred::admin().request(GetMyTenantRequest::default())).await;
        assert_ne!(answer.map(|_| Code::Ok).unwrap_or_else(|s| s.code()), Code::ResourceExhausted);
    }
    // Still serving, with memory bounded.
    let health = client.get_my_tenant(Cred::admin().request(GetMyTenantRequest::default())).await;
    assert_ne!(health.map(|_| Code::Ok).unwrap_or_else(|s| s.code()), Code::Unavailable, "still serving");
    assert_memory_bounded();
    server.shutdown().await;
}

/// A CORS preflight from `origin`; the Access-Control-Allow-Origin answer.
fn preflight(addr: &str, origin: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let request = format!(
        "OPTIONS /clawplane.v1.TenantService/GetMyTenant HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization,content-type,x-grpc-web\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("access-control-allow-origin").then(|| value.trim().to_string())
    })
}

#[tokio::test]
async fn cross_origin_calls_only_from_configured_origins() {
    let db = sqlite_db();
    let cases: &[(&[&str], &str, Option<&str>)] = &[
        (&[], "https://app.example.com", None),
        (&[], "https://evil.example", None),
        (&["https://app.example.com"], "https://app.example.com", Some("https://app.example.com")),
        (&["https://app.example.com"], "https://evil.example", None),
        (&["*"], "https://anyone.example", Some("*")),
    ];
    for (configured, origin, expected) in cases {
        let mut args = serve_args(&db);
        args.cors_allowed_origins = configured.iter().map(|o| o.to_string()).collect();
        let server = TestServer::start(args).await;
        let addr = server.addr.to_string();
        let origin_owned = origin.to_string();
        let allowed = tokio::task::spawn_blocking(move || preflight(&addr, &origin_owned)).await.unwrap();
        assert_eq!(allowed.as_deref(), *expected, "configured {configured:?}, origin {origin}");
        server.shutdown().await;
    }
}

/// Whether the server closed the connection (within a minute: hang guard).
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(60), stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn one_client_cannot_hold_every_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = sqlite_db();
    let server = TestServer::start_with(serve_args(&db), |config| config.max_connections_per_address = 8).await;
    // Eight silent connections from one address take its share: a ninth is
    // closed at once, while other clients are served.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(connect_from("127.0.0.2", server.addr).await.unwrap());
    }
    let mut ninth = connect_from("127.0.0.2", server.addr).await.unwrap();
    assert!(closed_by_server(&mut ninth).await, "over the per-address cap");
    let mut client = TenantServiceClient::new(server.channel().await);
    let answer = client.get_my_tenant(Cred::shared("alice").request(GetMyTenantRequest::default())).await;
    assert_eq!(answer.unwrap_err().code(), Code::NotFound, "another client is served");
    // A connection that sends nothing is closed once its first bytes are late.
    for stream in &mut silent {
        assert!(closed_by_server(stream).await, "a silent connection is closed");
    }
    // Its places are free again.
    let mut again = connect_from("127.0.0.2", server.addr).await.unwrap();
    again.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), again.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 "), "served: {:?}", String::from_utf8_lossy(&answer));
    assert_memory_bounded();
    server.shutdown().await;
}
