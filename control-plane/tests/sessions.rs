//! Synced conversations through the API, on SQLite and PostgreSQL: what
//! ingestion stores (idempotently) is what SessionService and UsageService
//! answer, scoped to the caller, with paging, filters and exact counters.
mod common;

use chrono::{DateTime, Duration, Utc};
use clawplane::store::{IngestItem, NewMessage, SessionUpdate, Store, Tokens};
use clawplane_proto::v1::session_service_client::SessionServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::usage_service_client::UsageServiceClient;
use clawplane_proto::v1::{
    CreateTenantRequest, GetOverviewRequest, GetSessionRequest, GetUsageRequest, ListMessagesRequest,
    ListSessionsRequest, MessageRole, UsagePeriod,
};
use common::*;
use tonic::Code;

fn message(tenant: &str, session: &str, position: i64, role: &str, at: DateTime<Utc>, tokens: i64) -> IngestItem {
    IngestItem::Message(NewMessage {
        tenant_id: tenant.into(),
        session_id: session.into(),
        agent_id: "main".into(),
        session_key: Some(format!("agent:main:{session}")),
        position,
        source: "sqlite",
        event_id: Some(format!("{session}-{position}")),
        role: role.into(),
        content: format!("{role} says {position}"),
        model: (role == "assistant").then(|| "fake-model".into()),
        provider: (role == "assistant").then(|| "local".into()),
        tokens: Tokens {
            input: tokens,
            output: tokens / 2,
            total: tokens + tokens / 2,
            cost_micros: 1_500,
            ..Default::default()
        },
        created_at: at,
        raw: Some(r#"{"type":"message"}"#.into()),
    })
}

fn meta(tenant: &str, session: &str, channel: &str, at: DateTime<Utc>) -> IngestItem {
    IngestItem::Session(SessionUpdate {
        tenant_id: tenant.into(),
        session_id: session.into(),
        agent_id: "main".into(),
        session_key: Some(format!("agent:main:{channel}:{session}")),
        channel: Some(channel.into()),
        chat_type: Some("direct".into()),
        model: Some("fake-model".into()),
        provider: Some("local".into()),
        started_at: Some(at),
        last_activity_at: Some(at),
    })
}

/// Three sessions: telegram "t1" (user 0 s, assistant 2 s, tool result,
/// assistant), discord "d1" (user, assistant after 4 s), and "old" from 40
/// days ago on telegram.
fn conversation(tenant: &str, now: DateTime<Utc>) -> Vec<IngestItem> {
    let t0 = now - Duration::minutes(10);
    let old = now - Duration::days(40);
    vec![
        meta(tenant, "t1", "telegram", t0),
        message(tenant, "t1", 0, "user", t0, 0),
        message(tenant, "t1", 1, "assistant", t0 + Duration::seconds(2), 100),
        message(tenant, "t1", 2, "toolResult", t0 + Duration::seconds(3), 0),
        message(tenant, "t1", 3, "assistant", t0 + Duration::seconds(5), 10),
        meta(tenant, "d1", "discord", t0 + Duration::minutes(1)),
        message(tenant, "d1", 0, "user", t0 + Duration::minutes(1), 0),
        message(tenant, "d1", 1, "assistant", t0 + Duration::minutes(1) + Duration::seconds(4), 20),
        meta(tenant, "old", "telegram", old),
        message(tenant, "old", 0, "user", old, 0),
    ]
}

each_backend!(
    #[tokio::test]
    synced_conversations_through_the_api
);
async fn synced_conversations_through_the_api(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let channel = server.channel().await;
    let alice = Cred::user("alice", &[]);
    let tenant = TenantServiceClient::new(channel.clone())
        .create_tenant(alice.request(CreateTenantRequest { plan: "pro".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let store: Store = db.store().await;
    let now = Utc::now();
    let first = store.ingest(conversation(&tenant.id, now)).await.unwrap();
    assert_eq!((first.inserted, first.duplicates), (7, 0), "{}", db.backend);
    // Redelivery (and a batch split differently) changes nothing.
    let again = store.ingest(conversation(&tenant.id, now)).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 7), "{}", db.backend);
    let tail = conversation(&tenant.id, now).split_off(5);
    assert_eq!(store.ingest(tail).await.unwrap().inserted, 0);
    // The same event at another offset (a rewritten legacy file) is one row.
    let IngestItem::Message(mut moved) = message(&tenant.id, "t1", 0, "user", now, 0) else { unreachable!() };
    moved.position = 4_096;
    assert_eq!(store.ingest(vec![IngestItem::Message(moved)]).await.unwrap().inserted, 0, "{}", db.backend);

    let mut sessions = SessionServiceClient::new(channel.clone());
    let lister = sessions.clone();
    let list = |request: ListSessionsRequest| {
        let mut sessions = lister.clone();
        let request = alice.request(request);
        async move { sessions.list_sessions(request).await.map(|r| r.into_inner()) }
    };
    // Newest activity first, paged.
    let page =
        list(ListSessionsRequest { tenant_id: tenant.id.clone(), page_size: 2, ..Default::default() }).await.unwrap();
    let ids: Vec<&str> = page.sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["d1", "t1"], "{}", db.backend);
    let rest = list(ListSessionsRequest {
        tenant_id: tenant.slug.clone(),
        page_size: 2,
        page_token: page.next_page_token.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(rest.sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["old"]);
    assert!(rest.next_page_token.is_empty());
    let telegram = list(ListSessionsRequest {
        tenant_id: tenant.id.clone(),
        channel: "telegram".into(),
        active_after: Some(api_time(now - Duration::days(1))),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(telegram.sessions.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["t1"]);

    let t1 = &page.sessions[1];
    assert_eq!((t1.channel.as_str(), t1.chat_type.as_str(), t1.model.as_str()), ("telegram", "direct", "fake-model"));
    assert_eq!(t1.message_count, 4);
    let usage = t1.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens, usage.total_tokens), (110, 55, 165));
    assert!((usage.cost - 0.006).abs() < 1e-9, "{}", usage.cost);

    let one = sessions
        .get_session(alice.request(GetSessionRequest { tenant_id: tenant.id.clone(), session_id: "t1".into() }))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(&one, t1);

    // Messages in transcript order, paged.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = sessions
            .list_messages(alice.request(ListMessagesRequest {
                tenant_id: tenant.id.clone(),
                session_id: "t1".into(),
                page_size: 3,
                page_token: token,
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.messages);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.iter().map(|m| m.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(seen[1].role, MessageRole::Assistant as i32);
    assert_eq!(seen[2].role, MessageRole::ToolResult as i32);
    assert_eq!(seen[1].text, "assistant says 1");
    assert_eq!(seen[1].usage.unwrap().total_tokens, 150);

    // Usage: user and assistant messages are billed; tool results are not.
    let mut usage = UsageServiceClient::new(channel.clone());
    let day = usage
        .get_usage(alice.request(GetUsageRequest {
            tenant_id: tenant.id.clone(),
            period: UsagePeriod::Day as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(day.points.len(), 30, "zero-filled");
    let total = day.total.unwrap();
    assert_eq!(total.messages, 5, "{}", db.backend);
    // Tokens come from the hosts' meters (OpenClaw's own totals are known
    // to be wrong); these transcripts feed none. Sessions keep OpenClaw's.
    assert_eq!(total.tokens.unwrap().total_tokens, 0);
    let months = usage
        .get_usage(alice.request(GetUsageRequest {
            tenant_id: tenant.id.clone(),
            period: UsagePeriod::Month as i32,
            from: Some(api_time(now - Duration::days(60))),
            to: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(months.total.unwrap().messages, 6, "the 40-day-old message counts in its month");

    let overview = usage
        .get_overview(alice.request(GetOverviewRequest { tenant_id: tenant.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overview.active_sessions, 2);
    assert_eq!(overview.monthly_message_limit, 50_000);
    assert_eq!(overview.daily.len(), 30);
    let today = overview.daily.last().unwrap();
    if today.day.as_ref().unwrap().seconds == api_time(now - Duration::minutes(10)).seconds / 86_400 * 86_400 {
        // (Not when the test runs across midnight UTC.)
        assert_eq!((overview.today_messages, today.messages, today.sessions), (5, 5, 2));
    }
    let channels: Vec<(&str, i64, i64)> =
        overview.channels.iter().map(|c| (c.channel.as_str(), c.sessions, c.messages)).collect();
    assert_eq!(channels, [("telegram", 1, 3), ("discord", 1, 2)], "{}", db.backend);
    // Response time: first assistant answer after a user message.
    assert!((overview.channels[0].avg_response_time_ms - 2_000.0).abs() < 1.0, "{:?}", overview.channels[0]);
    assert!((overview.channels[1].avg_response_time_ms - 4_000.0).abs() < 1.0, "{:?}", overview.channels[1]);

    // Nobody else sees any of it; bad input names the problem.
    let bob = Cred::user("bob", &[]);
    let other = sessions
        .list_sessions(bob.request(ListSessionsRequest { tenant_id: tenant.id.clone(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    let cases: Vec<(&str, Result<(), tonic::Status>, &str)> = vec![
        (
            "garbage page token",
            list(ListSessionsRequest { tenant_id: tenant.id.clone(), page_token: "zz".into(), ..Default::default() })
                .await
                .map(drop),
            "page_token",
        ),
        (
            "inverted time range",
            list(ListSessionsRequest {
                tenant_id: tenant.id.clone(),
                active_after: Some(api_time(now)),
                active_before: Some(api_time(now - Duration::days(1))),
                ..Default::default()
            })
            .await
            .map(drop),
            "active_after",
        ),
        (
            "missing session id",
            sessions
                .clone()
                .list_messages(
                    alice.request(ListMessagesRequest { tenant_id: tenant.id.clone(), ..Default::default() }),
                )
                .await
                .map(drop),
            "session_id",
        ),
        (
            "unknown session",
            sessions
                .clone()
                .get_session(
                    alice.request(GetSessionRequest { tenant_id: tenant.id.clone(), session_id: "nope".into() }),
                )
                .await
                .map(drop),
            "session not found",
        ),
        (
            "period unspecified",
            usage
                .clone()
                .get_usage(alice.request(GetUsageRequest { tenant_id: tenant.id.clone(), ..Default::default() }))
                .await
                .map(drop),
            "period",
        ),
        (
            "from after to",
            usage
                .clone()
                .get_usage(alice.request(GetUsageRequest {
                    tenant_id: tenant.id.clone(),
                    period: UsagePeriod::Day as i32,
                    from: Some(api_time(now)),
                    to: Some(api_time(now - Duration::days(2))),
                }))
                .await
                .map(drop),
            "from must be before to",
        ),
        (
            "range too long",
            usage
                .clone()
                .get_usage(alice.request(GetUsageRequest {
                    tenant_id: tenant.id.clone(),
                    period: UsagePeriod::Day as i32,
                    from: Some(api_time(now - Duration::days(400))),
                    to: None,
                }))
                .await
                .map(drop),
            "at most 366",
        ),
    ];
    for (what, result, text) in cases {
        let status = result.expect_err(what);
        let expected = if what == "unknown session" { Code::NotFound } else { Code::InvalidArgument };
        assert_eq!(status.code(), expected, "{what}: {}", status.message());
        assert!(status.message().contains(text), "{what}: {:?}", status.message());
    }
    store.close().await;
    server.shutdown().await;
}

each_backend!(
    #[tokio::test]
    duplicates_inside_a_batch_and_across_batches_count_once
);
/// Large batches (more rows than one statement of either backend's insert
/// takes) with the same position twice, the same event id at two positions,
/// a redelivered overlap, and two tenants sharing a session id and
/// positions: each message is stored and counted once.
async fn duplicates_inside_a_batch_and_across_batches_count_once(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let channel = server.channel().await;
    let mut tenants = Vec::new();
    for user in ["alice", "bob"] {
        let tenant = TenantServiceClient::new(channel.clone())
            .create_tenant(
                Cred::user(user, &[]).request(CreateTenantRequest { plan: "pro".into(), ..Default::default() }),
            )
            .await
            .unwrap()
            .into_inner()
            .tenant
            .unwrap();
        tenants.push(tenant.id);
    }
    let store: Store = db.store().await;
    let at = Utc::now() - Duration::minutes(5);
    let role = |p: i64| if p % 2 == 0 { "user" } else { "assistant" };
    let range = |tenant: &str, from: i64, to: i64| -> Vec<IngestItem> {
        (from..to).map(|p| message(tenant, "s", p, role(p), at + Duration::milliseconds(p), 10)).collect()
    };
    // 0..6000 once, plus position 7 again (other tokens) and the event id of
    // position 8 again at position 9_999.
    let mut first = range(&tenants[0], 0, 6_000);
    let IngestItem::Message(mut again) = message(&tenants[0], "s", 7, "assistant", at, 1_000) else { unreachable!() };
    again.event_id = Some("s-7-other".into());
    first.push(IngestItem::Message(again));
    let IngestItem::Message(mut moved) = message(&tenants[0], "s", 9_999, "user", at, 1_000) else { unreachable!() };
    moved.event_id = Some("s-8".into());
    first.push(IngestItem::Message(moved));
    // The other tenant: same session id and positions, in the same batch.
    first.extend(range(&tenants[1], 0, 3));
    let outcome = store.ingest(first).await.unwrap();
    assert_eq!((outcome.inserted, outcome.duplicates), (6_003, 2), "{}", db.backend);
    // Redelivery of an overlap, split differently.
    let outcome = store.ingest(range(&tenants[0], 5_000, 7_000)).await.unwrap();
    assert_eq!((outcome.inserted, outcome.duplicates), (1_000, 1_000), "{}", db.backend);
    let outcome = store.ingest(range(&tenants[1], 0, 3)).await.unwrap();
    assert_eq!((outcome.inserted, outcome.duplicates), (0, 3), "{}", db.backend);

    assert_eq!(store.message_count(&tenants[0]).await.unwrap(), 7_000);
    assert_eq!(store.message_count(&tenants[1]).await.unwrap(), 3);
    assert_eq!(store.session_message_count(&tenants[0], "s").await.unwrap(), 7_000, "{}", db.backend);
    assert_eq!(store.session_message_count(&tenants[1], "s").await.unwrap(), 3, "{}", db.backend);
    let stored = store.list_messages(&tenants[0], "s", Some(6), 2).await.unwrap();
    assert_eq!(stored.iter().map(|m| (m.position, m.total_tokens)).collect::<Vec<_>>(), [(7, 15), (8, 15)]);
    assert_eq!(stored[0].event_id.as_deref(), Some("s-7"));
    // Tokens and billed messages moved by the stored rows only.
    let session = store.session(&tenants[0], "s").await.unwrap().unwrap();
    assert_eq!(session.total_tokens, 7_000 * 15, "{}", db.backend);
    let from = at.date_naive() - Duration::days(1);
    let usage = store.usage_rows(&tenants[0], "day", from, from + Duration::days(3)).await.unwrap();
    assert_eq!(usage.iter().map(|u| u.messages).sum::<i64>(), 7_000, "{}", db.backend);
    assert_eq!(usage.iter().map(|u| u.total_tokens).sum::<i64>(), 7_000 * 15);
    store.close().await;
    server.shutdown().await;
}

fn api_time(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}
