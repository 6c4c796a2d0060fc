//! SessionService.SendMessage end to end over real sockets: the control
//! plane, a joined host agent and its tenant proxy, and the stand-in
//! gateway's chat-completions stream (the real OpenClaw turn is in
//! openclaw.rs). Bad input, other owners, a gateway that breaks off, a
//! caller that goes away, too many turns, a host that dies mid-turn.
mod common;

use std::path::Path;
use std::time::Duration;

use clawplane_proto::v1::session_service_client::SessionServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{
    send_message_response, CreateTenantRequest, SendMessageRequest, SendMessageResponse, Tenant, TurnDone,
};
use clawplane_test_kit::auth::Cred;
use common::*;
use tonic::Streaming;

fn ask(tenant: &Tenant, text: &str) -> SendMessageRequest {
    SendMessageRequest { tenant_id: tenant.id.clone(), text: text.into(), ..Default::default() }
}

/// Every delta, then `done` or the status the stream ended with.
async fn answer(stream: &mut Streaming<SendMessageResponse>) -> (Vec<String>, Result<TurnDone, tonic::Status>) {
    let mut deltas = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.message()).await.expect("a turn event in 60 s");
        match next {
            Ok(Some(SendMessageResponse { event: Some(send_message_response::Event::Delta(delta)) })) => {
                deltas.push(delta.text)
            }
            Ok(Some(SendMessageResponse { event: Some(send_message_response::Event::Done(done)) })) => {
                assert!(stream.message().await.unwrap().is_none(), "done is the last event");
                return (deltas, Ok(done));
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(status) => return (deltas, Err(status)),
        }
    }
}

/// The first delta of a turn, the stream kept open.
async fn first_delta(stream: &mut Streaming<SendMessageResponse>) -> String {
    match tokio::time::timeout(Duration::from_secs(60), stream.message()).await.expect("a delta in 60 s") {
        Ok(Some(SendMessageResponse { event: Some(send_message_response::Event::Delta(delta)) })) => delta.text,
        other => panic!("expected a delta, got {other:?}"),
    }
}

/// The stand-in gateway's record of the turns it was asked.
fn turns_asked(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("fake/turns.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn aborted_turns(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("fake"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("aborted-"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_streams_back_and_every_bad_request_is_refused_by_name() {
    let db = sqlite_db();
    let dir = db.data_dir();
    let (mut cp, mut agent) = host_with_tenant_proxy_config(&db, "[limits]\nmax_turns_per_tenant = 2").await;
    let mut tenants = TenantServiceClient::new(cp.channel().await);
    for user in ["alice", "bob"] {
        let request = CreateTenantRequest { plan: "free".into(), ..Default::default() };
        tenants.create_tenant(Cred::shared(user).request(request)).await.unwrap();
    }
    let (alice, bob) = (Cred::shared("alice"), Cred::shared("bob"));
    let a = running(&mut tenants, &alice, "").await;
    let b = running(&mut tenants, &bob, "").await;
    let mut sessions = SessionServiceClient::new(cp.channel().await);

    // The answer streams as the gateway writes it, then `done` sums it up.
    let mut stream = sessions.send_message(alice.request(ask(&a, "hello there"))).await.unwrap().into_inner();
    let (deltas, done) = answer(&mut stream).await;
    let done = done.unwrap();
    assert_eq!(deltas, ["echo:", " hello", " there"], "one delta per piece the gateway sent");
    assert_eq!(done.text, "echo: hello there");
    assert_eq!((done.finish_reason.as_str(), done.agent_id.as_str()), ("stop", a.slug.as_str()));
    let usage = done.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens, usage.total_tokens), (11, 3, 14));
    let prefix = format!("agent:{}:clawplane:", a.slug);
    assert!(done.session_key.starts_with(&prefix), "{}", done.session_key);
    // The stand-in keeps no transcript, so nothing synced to name.
    assert_eq!((done.session_id.as_str(), done.model.as_str()), ("", ""));
    let asked = turns_asked(&dir);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["session_key"], done.session_key.as_str());
    assert_eq!(asked[0]["agent_id"], a.slug.as_str());
    assert_eq!(asked[0]["model"], format!("openclaw/{}", a.slug).as_str());
    assert_eq!((asked[0]["text"].as_str(), asked[0]["stream"].as_bool()), (Some("hello there"), Some(true)));
    assert_eq!(asked[0]["authorized"], true, "the agent adds the gateway's token");

    // The same over grpc-web, as a browser sends it (HTTP/1.1, framed).
    let message = prost::Message::encode_to_vec(&ask(&a, "from a browser"));
    let mut request = format!(
        "POST /clawplane.v1.SessionService/SendMessage HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nX-Shared-Secret: {}\r\n\
         X-User-Id: alice\r\nX-User-Email: alice@example.com\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        cp.api_port,
        clawplane_test_kit::auth::SHARED_SECRET,
        message.len() + 5
    )
    .into_bytes();
    request.push(0);
    request.extend_from_slice(&(message.len() as u32).to_be_bytes());
    request.extend_from_slice(&message);
    let addr = format!("127.0.0.1:{}", cp.api_port);
    let (status, _, body) = tokio::task::spawn_blocking(move || http1(&addr, &request)).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let frames = grpc_web_frames(&body);
    let (trailer, data) = frames.split_last().unwrap();
    let events: Vec<_> = data
        .iter()
        .map(|(_, bytes)| <SendMessageResponse as prost::Message>::decode(bytes.as_slice()).unwrap().event.unwrap())
        .collect();
    let deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            send_message_response::Event::Delta(d) => Some(d.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas.concat(), "echo: from a browser");
    assert!(matches!(events.last(), Some(send_message_response::Event::Done(d)) if d.text == "echo: from a browser"));
    assert_eq!(trailer.0, 0x80);
    assert!(String::from_utf8_lossy(&trailer.1).contains("grpc-status:0"), "{:?}", String::from_utf8_lossy(&trailer.1));

    // Bad input and other owners: each refused before any turn, by name.
    let too_long = "x".repeat(32 * 1024 + 1);
    let with = |f: &dyn Fn(&mut SendMessageRequest)| {
        let mut request = ask(&a, "hi");
        f(&mut request);
        request
    };
    let table: Vec<(&str, Cred, SendMessageRequest, tonic::Code, &str)> = vec![
        ("no credentials", Cred::None, ask(&a, "hi"), tonic::Code::Unauthenticated, ""),
        (
            "no tenant",
            alice.clone(),
            with(&|r| r.tenant_id.clear()),
            tonic::Code::InvalidArgument,
            "tenant_id is required",
        ),
        ("no text", alice.clone(), with(&|r| r.text = " \n ".into()), tonic::Code::InvalidArgument, "text is required"),
        (
            "32 KiB and a byte",
            alice.clone(),
            with(&|r| r.text = too_long.clone()),
            tonic::Code::InvalidArgument,
            "at most 32768",
        ),
        (
            "a key with a space",
            alice.clone(),
            with(&|r| r.session_key = "agent:x main".into()),
            tonic::Code::InvalidArgument,
            "session_key",
        ),
        (
            "a malformed agent",
            alice.clone(),
            with(&|r| r.agent_id = "Main Agent".into()),
            tonic::Code::InvalidArgument,
            "agent_id",
        ),
        (
            "an unknown session",
            alice.clone(),
            with(&|r| r.session_key = format!("{prefix}nope")),
            tonic::Code::NotFound,
            "session not found",
        ),
        (
            "an unknown agent",
            alice.clone(),
            with(&|r| r.agent_id = "ghost".into()),
            tonic::Code::NotFound,
            "agent not found",
        ),
        ("bob on alice's tenant", bob.clone(), ask(&a, "hi"), tonic::Code::NotFound, "tenant not found"),
        (
            "a tenant nobody has",
            alice.clone(),
            with(&|r| r.tenant_id = "t-missing".into()),
            tonic::Code::NotFound,
            "tenant not found",
        ),
    ];
    for (what, cred, request, code, says) in table {
        let status =
            sessions.send_message(cred.request(request)).await.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(says), "{what}: {}", status.message());
    }
    assert_eq!(turns_asked(&dir).len(), 2, "no refused request reached the gateway");

    // A gateway that breaks off: UNAVAILABLE after the text so far, never `done`.
    for (marker, says) in [("[die]", "ended before the turn was complete"), ("[fail]", "the model provider failed")] {
        let mut stream = sessions.send_message(alice.request(ask(&a, marker))).await.unwrap().into_inner();
        let (deltas, ended) = answer(&mut stream).await;
        let status = ended.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{marker}: {status:?}");
        assert!(status.message().contains(says) && status.message().contains("not a complete answer"), "{status:?}");
        assert_eq!(deltas, ["echo:"], "{marker}");
    }

    // Two turns in flight is alice's limit; bob's tenant is not held up.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = sessions.send_message(alice.request(ask(&a, "[hold]"))).await.unwrap().into_inner();
        assert_eq!(first_delta(&mut stream).await, "echo:");
        held.push(stream);
    }
    let busy = sessions.send_message(alice.request(ask(&a, "one more"))).await.unwrap_err();
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted, "{busy:?}");
    assert!(busy.message().contains("2 turns in flight"), "{}", busy.message());
    let mut stream = sessions.send_message(bob.request(ask(&b, "hi from bob"))).await.unwrap().into_inner();
    assert_eq!(answer(&mut stream).await.1.unwrap().text, "echo: hi from bob");

    // The caller going away aborts the turn in the gateway and frees its slot.
    drop(held);
    eventually(Duration::from_secs(30), "both held turns aborted in the gateway", || {
        std::future::ready(aborted_turns(&dir) == 2)
    })
    .await;
    let mut stream = sessions.send_message(alice.request(ask(&a, "again"))).await.unwrap().into_inner();
    assert_eq!(answer(&mut stream).await.1.unwrap().text, "echo: again");

    // The host dying mid-turn ends the call with UNAVAILABLE; while it is
    // away, new turns are UNAVAILABLE at once.
    let mut stream = sessions.send_message(alice.request(ask(&a, "[hold]"))).await.unwrap().into_inner();
    assert_eq!(first_delta(&mut stream).await, "echo:");
    agent.kill9();
    let (_, ended) = answer(&mut stream).await;
    let status = ended.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("not a complete answer"), "{}", status.message());
    let status = sessions.send_message(alice.request(ask(&a, "anyone?"))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("host"), "{}", status.message());
    cp.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_that_is_not_running_is_refused_with_its_state() {
    let db = sqlite_db();
    let mut cp = ControlPlane::start(&db, "");
    let mut tenants = TenantServiceClient::new(cp.channel().await);
    let carol = Cred::shared("carol");
    let request = CreateTenantRequest { plan: "free".into(), ..Default::default() };
    let tenant = tenants.create_tenant(carol.request(request)).await.unwrap().into_inner().tenant.unwrap();
    let mut sessions = SessionServiceClient::new(cp.channel().await);
    let status = sessions.send_message(carol.request(ask(&tenant, "hello"))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("PENDING, not RUNNING"), "{}", status.message());
    cp.kill9();
}
