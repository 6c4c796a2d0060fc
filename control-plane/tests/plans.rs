//! Plans that hold, black-box over real sockets on SQLite and PostgreSQL:
//! the catalogue, subscriptions and their authorization, channel limits,
//! metered usage synced as a host would (a simulated agent with a real
//! certificate on the agent listener), the allowance commands it gets,
//! usage events, and billing lines.
mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use clawplane::store::{IngestItem, NewMessage, NewModelCall, OveragePolicy, PlanSpec, Tokens};
use clawplane_proto::v1::config_service_client::ConfigServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::usage_service_client::UsageServiceClient;
use clawplane_proto::v1::{
    command, sync_record, ChangePlanRequest, CreateTenantRequest, GetOverviewRequest, GetSubscriptionRequest,
    GetUsageRequest, ListBillingLinesRequest, ListPlansRequest, ModelApi, ModelCall, ModelCallOutcome,
    RemoveChannelRequest, SetChannelRequest, SetSubscriptionRequest, Subscription, SubscriptionStatus, SyncRecord,
    SyncSource, TranscriptEvent, UsageEvent, UsageEventKind, UsagePeriod, WatchUsageEventsRequest,
};
use common::fake_agent::FakeAgent;
use common::*;
use tonic::transport::Channel;
use tonic::Code;

/// Long enough for anything that happens at all; never a performance bound.
const WAIT: Duration = Duration::from_secs(30);

fn spec(name: &str, price: i64, messages: i64, tokens: i64, channels: i32, policy: OveragePolicy) -> PlanSpec {
    PlanSpec {
        name: name.into(),
        display_name: name.to_uppercase(),
        price_monthly_minor: price,
        currency: "EUR".into(),
        monthly_message_limit: messages,
        channel_limit: channels,
        features: [("support".to_string(), "email".to_string())].into_iter().collect(),
        monthly_token_limit: tokens,
        requests_per_minute: 30,
        overage_policy: policy,
        overage_per_1k_tokens_minor: 7,
        overage_per_message_minor: 3,
        memory_limit_mib: 1024,
        memory_soft_limit_mib: 0,
        cpu_millis: 0,
        pids_limit: 0,
        hibernate_after_secs: 0,
    }
}

/// tiny: 10 messages, 1,000 tokens, 1 channel, block; metered: the same
/// limits, 2 channels, bill; big: unlimited.
fn catalogue() -> Vec<PlanSpec> {
    vec![
        spec("metered", 500, 10, 1_000, 2, OveragePolicy::Bill),
        spec("tiny", 0, 10, 1_000, 1, OveragePolicy::Block),
        spec("big", 10_000, 0, 0, 0, OveragePolicy::Bill),
    ]
}

async fn start(db: &TestDb) -> TestServer {
    TestServer::start_with(serve_args(db), |config| config.plans = Some(catalogue())).await
}

fn anonymous<T>(message: T) -> tonic::Request<T> {
    tonic::Request::new(message)
}

fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, code: Code, text: &str) {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {}", status.message());
            assert!(status.message().contains(text), "{what}: {:?} lacks {text:?}", status.message());
        }
    }
}

async fn create(channel: &Channel, who: &Cred, plan: &str) -> String {
    let request = CreateTenantRequest { plan: plan.into(), ..Default::default() };
    let response = TenantServiceClient::new(channel.clone()).create_tenant(who.request(request)).await.unwrap();
    response.into_inner().tenant.unwrap().id
}

async fn subscription(usage: &mut UsageServiceClient<Channel>, who: &Cred, tenant_id: &str) -> Subscription {
    let request = GetSubscriptionRequest { tenant_id: tenant_id.into() };
    usage.get_subscription(who.request(request)).await.unwrap().into_inner().subscription.unwrap()
}

fn call(call_id: &str, input: i64, output: i64) -> ModelCall {
    ModelCall {
        call_id: call_id.into(),
        provider: "openai".into(),
        model: "gpt-test".into(),
        api: ModelApi::OpenaiCompletions as i32,
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: 5,
        started_at: Some(prost_types::Timestamp { seconds: Utc::now().timestamp(), nanos: 0 }),
        first_byte_ms: 100,
        total_ms: 900,
        http_status: 200,
        outcome: ModelCallOutcome::Completed as i32,
        platform_key: true,
        ..Default::default()
    }
}

fn meter(tenant_id: &str, position: i64, call: ModelCall) -> SyncRecord {
    SyncRecord {
        tenant_id: tenant_id.into(),
        source: SyncSource::Meter as i32,
        position,
        body: Some(sync_record::Body::ModelCall(call)),
        ..Default::default()
    }
}

async fn next_event(events: &mut tonic::Streaming<UsageEvent>) -> UsageEvent {
    tokio::time::timeout(WAIT, events.message()).await.expect("an event").unwrap().expect("stream open")
}

each_backend!(
    #[tokio::test]
    metered_usage_pushes_allowances_and_events
);
async fn metered_usage_pushes_allowances_and_events(db: TestDb) {
    let server = start(&db).await;
    let channel = server.channel().await;
    let mut usage = UsageServiceClient::new(channel.clone());
    let mut agent = FakeAgent::join(&server).await;
    let alice = Cred::user("alice", &[]);
    let tenant = create(&channel, &alice, "tiny").await;

    // Provisioned, then told its allowance.
    let first = agent.next_allowance(&tenant).await;
    assert_eq!(
        (first.message_limit, first.token_limit, first.tokens_used, first.requests_per_minute, first.blocked),
        (10, 1_000, 0, 30, false)
    );
    assert_eq!(first.counted_through, 0);
    assert!(first.platform_key_only);
    let sub = subscription(&mut usage, &alice, &tenant).await;
    assert_eq!(first.period_start, sub.current_period_start);
    assert_eq!(first.period_end, sub.current_period_end);

    let mut events =
        usage.watch_usage_events(alice.request(WatchUsageEventsRequest::default())).await.unwrap().into_inner();

    // 850 of 1,000 tokens: 80%, pushed with the counts and the position.
    let batch = vec![
        meter(&tenant, 10, call("0190c0de-0000-7000-8000-000000000001", 300, 200)),
        meter(&tenant, 20, call("0190c0de-0000-7000-8000-000000000002", 250, 100)),
    ];
    let ack = agent.sync(batch.clone()).await;
    assert_eq!((ack.accepted, ack.rejected), (2, 0), "{:?}", ack.rejections);
    let warned = agent.next_allowance(&tenant).await;
    assert_eq!((warned.tokens_used, warned.counted_through, warned.blocked), (850, 20, false));
    let event = next_event(&mut events).await;
    assert_eq!((event.kind, event.metric.as_str()), (UsageEventKind::Threshold80 as i32, "tokens"));
    assert_eq!(event.tenant_id, tenant);
    assert!(event.message.contains("80% of 1,000"), "{}", event.message);

    // The same batch again counts nothing twice.
    let again = agent.sync(batch).await;
    assert_eq!((again.accepted, again.rejected), (2, 0));
    assert_eq!(subscription(&mut usage, &alice, &tenant).await.tokens_used, 850);
    let month = usage
        .get_usage(alice.request(GetUsageRequest {
            tenant_id: tenant.clone(),
            period: UsagePeriod::Month as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let tokens = month.total.unwrap().tokens.unwrap();
    assert_eq!((tokens.input_tokens, tokens.output_tokens, tokens.total_tokens), (550, 300, 850), "from the meter");
    assert_eq!(tokens.cache_read_tokens, 10);

    // Bad records are refused with a reason; good ones beside them count.
    let bad = |f: fn(&mut ModelCall)| {
        let mut c = call("0190c0de-0000-7000-8000-0000000000ff", 1, 1);
        f(&mut c);
        meter(&tenant, 30, c)
    };
    let cases: Vec<(SyncRecord, &str)> = vec![
        (bad(|c| c.input_tokens = -1), "input_tokens -1"),
        (bad(|c| c.output_tokens = 1_000_000_000_000), "output_tokens"),
        (bad(|c| c.outcome = 99), "unknown outcome 99"),
        (bad(|c| c.call_id = "not-a-uuid".into()), "not a UUID"),
        (bad(|c| c.started_at = None), "started_at is missing"),
        (bad(|c| c.total_ms = -5), "total_ms"),
        (bad(|c| c.started_at = Some(prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 })), "started_at"),
        (
            SyncRecord {
                body: Some(sync_record::Body::Event(TranscriptEvent::default())),
                ..meter(&tenant, 31, call("0190c0de-0000-7000-8000-0000000000fe", 1, 1))
            },
            "must carry a model call",
        ),
    ];
    let count = cases.len();
    let (records, reasons): (Vec<SyncRecord>, Vec<&str>) = cases.into_iter().unzip();
    let ack = agent.sync(records).await;
    assert_eq!((ack.accepted, ack.rejected as usize), (0, count));
    for (rejection, reason) in ack.rejections.iter().zip(reasons) {
        assert_eq!(rejection.reason, "invalid_record");
        assert!(rejection.message.contains(reason), "{:?} lacks {reason:?}", rejection.message);
    }
    assert_eq!(subscription(&mut usage, &alice, &tenant).await.tokens_used, 850);

    // Past 1,000 under BLOCK: calls stop, everywhere it shows.
    let ack = agent.sync(vec![meter(&tenant, 40, call("0190c0de-0000-7000-8000-000000000003", 150, 50))]).await;
    assert_eq!(ack.accepted, 1);
    let blocked = agent.next_allowance(&tenant).await;
    assert_eq!((blocked.tokens_used, blocked.counted_through, blocked.blocked), (1_050, 40, true));
    assert!(blocked.blocked_reason.contains("tokens"), "{}", blocked.blocked_reason);
    let event = next_event(&mut events).await;
    assert_eq!((event.kind, event.metric.as_str()), (UsageEventKind::Threshold100 as i32, "tokens"));
    let sub = subscription(&mut usage, &alice, &tenant).await;
    assert!(sub.quota_exceeded);
    assert_eq!((sub.tokens_used, sub.tokens_remaining), (1_050, 0));
    assert_eq!(sub.quota_reason, blocked.blocked_reason);
    let overview =
        usage.get_overview(alice.request(GetOverviewRequest { tenant_id: tenant.clone() })).await.unwrap().into_inner();
    assert!(overview.quota_exceeded);
    assert_eq!(overview.quota_reason, blocked.blocked_reason);

    // A bigger plan lifts it at once: a new period, closed and lifted events.
    let changed = usage
        .change_plan(alice.request(ChangePlanRequest { tenant_id: tenant.clone(), plan: "big".into() }))
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert!(!changed.quota_exceeded);
    assert_eq!((changed.tokens_used, changed.tokens_remaining), (0, -1), "a new period starts now");
    assert_eq!(changed.plan.unwrap().name, "big");
    let lifted = agent.next_allowance(&tenant).await;
    assert_eq!((lifted.blocked, lifted.token_limit, lifted.message_limit), (false, 0, 0));
    assert_eq!(lifted.counted_through, 40);
    let closed = next_event(&mut events).await;
    assert_eq!(closed.kind, UsageEventKind::PeriodClosed as i32);
    let lift = next_event(&mut events).await;
    assert_eq!(lift.kind, UsageEventKind::QuotaLifted as i32);

    // A watcher that reconnects after the first event gets the rest replayed.
    let first_id = event.id - 1;
    let mut replay = usage
        .watch_usage_events(alice.request(WatchUsageEventsRequest { tenant_id: tenant.clone(), after_id: first_id }))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = [next_event(&mut replay).await, next_event(&mut replay).await, next_event(&mut replay).await]
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [UsageEventKind::Threshold100 as i32, UsageEventKind::PeriodClosed as i32, UsageEventKind::QuotaLifted as i32]
    );
    // Someone else's tenant is not there to watch; a negative id is refused.
    let bob = Cred::user("bob", &[]);
    let other =
        usage.watch_usage_events(bob.request(WatchUsageEventsRequest { tenant_id: tenant.clone(), after_id: 0 })).await;
    expect_code("bob watches alice", other.map(drop), Code::NotFound, "tenant");
    let negative =
        usage.watch_usage_events(alice.request(WatchUsageEventsRequest { after_id: -1, ..Default::default() })).await;
    expect_code("negative after_id", negative.map(drop), Code::InvalidArgument, "after_id");
    server.shutdown().await;
}

each_backend!(
    #[tokio::test]
    plans_and_subscriptions_answer_by_caller
);
async fn plans_and_subscriptions_answer_by_caller(db: TestDb) {
    let server = start(&db).await;
    let channel = server.channel().await;
    let mut usage = UsageServiceClient::new(channel.clone());
    let alice = Cred::user("alice", &[]);
    let bob = Cred::user("bob", &[]);

    // The catalogue, cheapest first; the seeded plans it dropped are not offered.
    let plans = usage.list_plans(alice.request(ListPlansRequest {})).await.unwrap().into_inner().plans;
    let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["tiny", "metered", "big"]);
    let metered = &plans[1];
    assert_eq!((metered.price_monthly_cents, metered.currency.as_str()), (500, "EUR"));
    assert_eq!((metered.monthly_token_limit, metered.requests_per_minute), (1_000, 30));
    assert_eq!(metered.overage_policy, clawplane_proto::v1::OveragePolicy::Bill as i32);
    assert_eq!((metered.overage_per_1k_tokens_minor, metered.overage_per_message_minor), (7, 3));
    assert_eq!(metered.features.get("support").map(String::as_str), Some("email"));
    assert_eq!(metered.resources.unwrap().memory_limit_bytes, 1 << 30);
    let refused = TenantServiceClient::new(channel.clone())
        .create_tenant(alice.request(CreateTenantRequest { plan: "free".into(), ..Default::default() }))
        .await;
    expect_code("a plan no longer offered", refused, Code::InvalidArgument, "unknown plan");

    let tenant = create(&channel, &alice, "tiny").await;
    let sub = subscription(&mut usage, &alice, &tenant).await;
    assert_eq!(sub.status, SubscriptionStatus::Active as i32);
    assert_eq!((sub.messages_remaining, sub.tokens_remaining, sub.quota_exceeded), (10, 1_000, false));
    let start = sub.current_period_start.unwrap();
    let end = sub.current_period_end.unwrap();
    let start = chrono::DateTime::from_timestamp(start.seconds, 0).unwrap();
    let end = chrono::DateTime::from_timestamp(end.seconds, 0).unwrap();
    assert_eq!(start, clawplane::store::month_start(Utc::now()), "a calendar month");
    assert_eq!(end, clawplane::store::next_month_start(Utc::now()));

    // Who may do what: (caller, GetSubscription, ChangePlan, SetSubscription).
    type Caller = Option<Cred>;
    let callers: Vec<(&str, Caller, Code, Code, Code)> = vec![
        ("owner", Some(alice.clone()), Code::Ok, Code::Ok, Code::PermissionDenied),
        ("other user", Some(bob.clone()), Code::NotFound, Code::NotFound, Code::PermissionDenied),
        ("admin", Some(Cred::admin()), Code::Ok, Code::Ok, Code::Ok),
        ("no credential", None, Code::Unauthenticated, Code::Unauthenticated, Code::Unauthenticated),
    ];
    for (who, cred, get_code, change_code, set_code) in callers {
        let request = |message| match &cred {
            Some(cred) => cred.request(message),
            None => anonymous(message),
        };
        let code = |r: Result<_, tonic::Status>| r.map(|_| Code::Ok).unwrap_or_else(|s| s.code());
        let got = usage.get_subscription(request(GetSubscriptionRequest { tenant_id: tenant.clone() })).await;
        assert_eq!(code(got.map(drop)), get_code, "{who}: GetSubscription");
        let change = ChangePlanRequest { tenant_id: tenant.clone(), plan: "tiny".into() };
        let changed = match &cred {
            Some(cred) => usage.change_plan(cred.request(change)).await,
            None => usage.change_plan(anonymous(change)).await,
        };
        assert_eq!(code(changed.map(drop)), change_code, "{who}: ChangePlan");
        let set = SetSubscriptionRequest {
            tenant_id: tenant.clone(),
            status: SubscriptionStatus::Trialing as i32,
            ..Default::default()
        };
        let set = match &cred {
            Some(cred) => usage.set_subscription(cred.request(set)).await,
            None => usage.set_subscription(anonymous(set)).await,
        };
        assert_eq!(code(set.map(drop)), set_code, "{who}: SetSubscription");
    }
    // The same plan changes nothing (the period stays); the status did change.
    let same = subscription(&mut usage, &alice, &tenant).await;
    assert_eq!(
        (same.current_period_start, same.status),
        (sub.current_period_start, SubscriptionStatus::Trialing as i32)
    );

    let unknown =
        usage.change_plan(alice.request(ChangePlanRequest { tenant_id: tenant.clone(), plan: "gold".into() })).await;
    expect_code("unknown plan", unknown, Code::InvalidArgument, "\"gold\"");
    let empty = usage
        .set_subscription(
            Cred::admin().request(SetSubscriptionRequest { tenant_id: tenant.clone(), ..Default::default() }),
        )
        .await;
    expect_code("nothing to set", empty, Code::InvalidArgument, "plan, a status");

    // An admin moves it; the tenant's plan follows the subscription.
    let set = SetSubscriptionRequest {
        tenant_id: tenant.clone(),
        plan: "metered".into(),
        status: SubscriptionStatus::PastDue as i32,
    };
    let moved = usage.set_subscription(Cred::admin().request(set)).await.unwrap().into_inner().subscription.unwrap();
    assert_eq!((moved.plan.unwrap().name.as_str(), moved.status), ("metered", SubscriptionStatus::PastDue as i32));
    let record = server.store.live_tenant(&tenant).await.unwrap().unwrap();
    assert_eq!(record.plan, "metered");

    // Cancelled: the plan holds until the period's end.
    let cancel = SetSubscriptionRequest {
        tenant_id: tenant.clone(),
        status: SubscriptionStatus::Canceled as i32,
        ..Default::default()
    };
    let cancelled =
        usage.set_subscription(Cred::admin().request(cancel)).await.unwrap().into_inner().subscription.unwrap();
    assert!(!cancelled.quota_exceeded, "the period has not ended");
    server.shutdown().await;
}

each_backend!(
    #[tokio::test]
    channel_limits_hold_at_set_channel_and_change_plan
);
async fn channel_limits_hold_at_set_channel_and_change_plan(db: TestDb) {
    let server = start(&db).await;
    let channel = server.channel().await;
    let mut config = ConfigServiceClient::new(channel.clone());
    let mut usage = UsageServiceClient::new(channel.clone());
    let set = |tenant: &str, name: &str| SetChannelRequest {
        tenant_id: tenant.into(),
        channel: name.into(),
        settings: HashMap::new(),
        secrets: HashMap::new(),
        enabled: true,
        expected_generation: None,
    };
    // (plan, channels it allows: the next one is refused; 0 = no plan limit)
    for (user, plan, allowed) in [("u1", "tiny", 1usize), ("u2", "metered", 2), ("u3", "big", 0)] {
        let owner = Cred::user(user, &[]);
        let tenant = create(&channel, &owner, plan).await;
        let count = if allowed == 0 { 3 } else { allowed };
        for i in 0..count {
            let added = config.set_channel(owner.request(set(&tenant, &format!("chan{i}")))).await;
            assert!(added.is_ok(), "{plan}: channel {i}: {added:?}");
        }
        let extra = config.set_channel(owner.request(set(&tenant, "extra"))).await;
        if allowed == 0 {
            assert!(extra.is_ok(), "{plan}: no plan limit: {extra:?}");
        } else {
            expect_code(plan, extra, Code::FailedPrecondition, &format!("plan allows ({allowed})"));
        }
    }
    // Down to a plan with fewer channels than the tenant has: refused, naming both.
    let owner = Cred::user("u2", &[]);
    let tenant = server.store.live_tenant_of(&clawplane_identity::Owner::User("u2".into())).await.unwrap().unwrap();
    let down = usage
        .change_plan(owner.request(ChangePlanRequest { tenant_id: tenant.tenant.id.clone(), plan: "tiny".into() }))
        .await;
    expect_code("2 channels onto tiny", down, Code::FailedPrecondition, "has 2 channels and plan \"tiny\" allows 1");
    let remove = RemoveChannelRequest {
        tenant_id: tenant.tenant.id.clone(),
        channel: "chan1".into(),
        expected_generation: None,
    };
    config.remove_channel(owner.request(remove)).await.unwrap();
    let down = usage
        .change_plan(owner.request(ChangePlanRequest { tenant_id: tenant.tenant.id.clone(), plan: "tiny".into() }))
        .await;
    assert_eq!(down.unwrap().into_inner().subscription.unwrap().plan.unwrap().name, "tiny");
    server.shutdown().await;
}

fn message(tenant_id: &str, position: i64) -> IngestItem {
    IngestItem::Message(NewMessage {
        tenant_id: tenant_id.into(),
        session_id: "s1".into(),
        agent_id: "main".into(),
        session_key: None,
        position,
        source: "sqlite",
        event_id: None,
        role: "user".into(),
        content: "hi".into(),
        model: None,
        provider: None,
        tokens: Tokens::default(),
        created_at: Utc::now(),
        raw: None,
    })
}

fn metered_call(tenant_id: &str, n: usize, tokens: i64) -> NewModelCall {
    NewModelCall {
        tenant_id: tenant_id.into(),
        call_id: format!("0190c0de-0000-7000-8000-{n:012}"),
        position: n as i64,
        provider: "openai".into(),
        model: "m".into(),
        api: "openai-completions",
        input_tokens: tokens,
        output_tokens: 0,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        started_at: Utc::now(),
        first_byte_ms: 1,
        total_ms: 2,
        http_status: 200,
        outcome: "completed",
        streamed: false,
        platform_key: true,
    }
}

each_backend!(
    #[tokio::test]
    billing_lines_in_integer_minor_units
);
async fn billing_lines_in_integer_minor_units(db: TestDb) {
    let server = start(&db).await;
    let channel = server.channel().await;
    let mut usage = UsageServiceClient::new(channel.clone());
    // (user, plan, messages, tokens, expected (kind, quantity, amount) lines, total)
    let cases: Vec<(&str, &str, i64, i64, Vec<(&str, i64, i64)>, i64)> = vec![
        ("b1", "metered", 0, 0, vec![("base", 1, 500)], 500),
        ("b2", "metered", 0, 1_001, vec![("base", 1, 500), ("overage_tokens", 1, 7)], 507),
        (
            "b3",
            "metered",
            12,
            2_500,
            vec![("base", 1, 500), ("overage_tokens", 1_500, 14), ("overage_messages", 2, 6)],
            520,
        ),
        ("b4", "tiny", 12, 5_000, vec![("base", 1, 0)], 0),
    ];
    let mut expected: HashMap<String, (Vec<(&str, i64, i64)>, i64, i64, i64)> = HashMap::new();
    let mut n = 0;
    for (user, plan, messages, tokens, lines, total) in &cases {
        let tenant = create(&channel, &Cred::user(user, &[]), plan).await;
        let items = (0..*messages).map(|p| message(&tenant, p)).collect();
        server.store.ingest(items).await.unwrap();
        if *tokens > 0 {
            n += 1;
            server.store.ingest_model_calls("some-host", vec![metered_call(&tenant, n, *tokens)]).await.unwrap();
        }
        expected.insert(tenant, (lines.clone(), *total, *messages, *tokens));
    }

    // Admin: every tenant, two per page, in a stable order.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListBillingLinesRequest { page_size: 2, page_token: token.clone(), ..Default::default() };
        let page = usage.list_billing_lines(Cred::admin().request(request)).await.unwrap().into_inner();
        assert!(page.bills.len() <= 2);
        for bill in page.bills {
            let (lines, total, messages, tokens) = &expected[&bill.tenant_id];
            let got: Vec<(&str, i64, i64)> =
                bill.lines.iter().map(|l| (l.kind.as_str(), l.quantity, l.amount_minor)).collect();
            assert_eq!(&got, lines, "{}", bill.plan);
            assert_eq!((bill.total_minor, bill.messages_used, bill.tokens_used), (*total, *messages, *tokens));
            assert_eq!((bill.currency.as_str(), bill.closed), ("EUR", false));
            seen.push(bill.tenant_id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ordered by tenant");
    assert_eq!(seen.len(), cases.len());

    // An owner sees its own; others' answer NOT_FOUND; bad input is refused.
    let b1 = Cred::user("b1", &[]);
    let own = usage.list_billing_lines(b1.request(ListBillingLinesRequest::default())).await.unwrap().into_inner();
    assert_eq!(own.bills.len(), 1);
    let other = ListBillingLinesRequest {
        tenant_id: seen.iter().find(|t| **t != own.bills[0].tenant_id).unwrap().clone(),
        ..Default::default()
    };
    expect_code("another's bill", usage.list_billing_lines(b1.request(other)).await, Code::NotFound, "tenant");
    for (what, request, text) in [
        ("page size", ListBillingLinesRequest { page_size: 501, ..Default::default() }, "page_size"),
        ("page size", ListBillingLinesRequest { page_size: -1, ..Default::default() }, "page_size"),
        ("token", ListBillingLinesRequest { page_token: "bm9wZQ".into(), ..Default::default() }, "page_token"),
        (
            "at",
            ListBillingLinesRequest {
                at: Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }),
                ..Default::default()
            },
            "at must be",
        ),
    ] {
        expect_code(what, usage.list_billing_lines(Cred::admin().request(request)).await, Code::InvalidArgument, text);
    }
    let anonymous_call = usage.list_billing_lines(anonymous(ListBillingLinesRequest::default())).await;
    expect_code("no credential", anonymous_call, Code::Unauthenticated, "");
    server.shutdown().await;
}

each_backend!(
    #[tokio::test]
    the_platform_model_reaches_hosts_as_a_route_with_its_key
);
/// The platform's model: a tenant that chose none has it, applied on its
/// host as a route for the host's metering proxy with the platform key in
/// the route alone (never in the config operations or the tenant's secrets
/// file); SetModel picks among its models and refuses a key, a base URL or
/// a model it does not offer.
async fn the_platform_model_reaches_hosts_as_a_route_with_its_key(db: TestDb) {
    use clawplane::desired::PlatformModel;
    use clawplane_proto::v1::{GetConfigRequest, SetModelRequest};
    let b = db.backend;
    let key = "sk-platform-route-0123456789";
    let platform = PlatformModel {
        provider: "saas".into(),
        api: ModelApi::OpenaiResponses,
        base_url: "https://llm.example.com/v1".into(),
        api_key: key.into(),
        models: vec!["small".into(), "large".into()],
        default_model: "small".into(),
    };
    let server = TestServer::start_with(serve_args(&db), |config| config.platform_model = Some(platform)).await;
    let channel = server.channel().await;
    let mut agent = FakeAgent::join(&server).await;
    let alice = Cred::user("alice", &[]);
    let tenant = create(&channel, &alice, "free").await;
    let route = loop {
        let command = tokio::time::timeout(WAIT, agent.commands.recv()).await.expect("a command").expect("stream");
        if let Some(command::Payload::ApplyConfig(apply)) = command.payload {
            assert_eq!(apply.tenant_id, tenant, "{b}");
            let ops = format!("{:?} {:?}", apply.ops, apply.secrets);
            assert!(!ops.contains(key), "{b}: the key only travels in the route: {ops}");
            assert!(ops.contains("saas/small"), "{b}: the default model is the agents' primary: {ops}");
            break apply.model_route.expect("a route");
        }
    };
    assert_eq!((route.provider.as_str(), route.api), ("saas", ModelApi::OpenaiResponses as i32), "{b}");
    assert_eq!((route.upstream_base_url.as_str(), route.api_key.as_slice()), (platform_url(), key.as_bytes()), "{b}");
    assert_eq!(route.models, ["small", "large"], "{b}");
    assert!(route.platform_key, "{b}");

    let mut config = ConfigServiceClient::new(channel.clone());
    let shown = config.get_config(alice.request(GetConfigRequest { tenant_id: tenant.clone() })).await.unwrap();
    let model = shown.into_inner().config.unwrap().model.unwrap();
    assert_eq!((model.provider.as_str(), model.model.as_str(), model.platform), ("saas", "small", true), "{b}");
    let set = |model: &str, f: fn(&mut SetModelRequest)| {
        let mut request = SetModelRequest {
            tenant_id: tenant.clone(),
            provider: "saas".into(),
            model: model.into(),
            ..Default::default()
        };
        f(&mut request);
        request
    };
    for (what, request, needle) in [
        ("a key", set("large", |r| r.api_key = Some("sk-mine-0123456789".into())), "takes no api_key or base_url"),
        ("a base url", set("large", |r| r.base_url = Some("https://x.example.com".into())), "takes no api_key"),
        ("another model", set("huge", |_| {}), "choose one of small, large"),
        ("another api", set("large", |r| r.api = ModelApi::AnthropicMessages as i32), "speaks openai-responses"),
        ("an unknown api", set("large", |r| r.api = 99), "api: 99"),
    ] {
        let answer = config.set_model(alice.request(request)).await;
        expect_code(&format!("{b}: {what}"), answer, Code::InvalidArgument, needle);
    }
    let picked = config.set_model(alice.request(set("large", |_| {}))).await.unwrap();
    let model = picked.into_inner().config.unwrap().model.unwrap();
    assert_eq!((model.model.as_str(), model.platform, model.api_key_hint.as_str()), ("large", true, ""), "{b}");
    // A tenant's own key goes to the proxy too, never into the tenant's tree.
    let own = SetModelRequest {
        tenant_id: tenant.clone(),
        provider: "anthropic".into(),
        model: "claude-x".into(),
        api_key: Some("sk-ant-own-0123456789".into()),
        ..Default::default()
    };
    config.set_model(alice.request(own)).await.unwrap();
    let route = loop {
        let command = tokio::time::timeout(WAIT, agent.commands.recv()).await.expect("a command").expect("stream");
        if let Some(command::Payload::ApplyConfig(apply)) = command.payload {
            if apply.model_route.as_ref().is_some_and(|r| r.provider == "anthropic") {
                assert!(!format!("{:?} {:?}", apply.ops, apply.secrets).contains("sk-ant-own"), "{b}");
                break apply.model_route.unwrap();
            }
        }
    };
    assert_eq!(
        (route.api, route.upstream_base_url.as_str()),
        (ModelApi::AnthropicMessages as i32, "https://api.anthropic.com")
    );
    assert_eq!((route.api_key.as_slice(), route.platform_key), (b"sk-ant-own-0123456789".as_slice(), false), "{b}");
    server.shutdown().await;
}

fn platform_url() -> &'static str {
    "https://llm.example.com/v1"
}

each_backend!(
    #[tokio::test]
    a_new_period_lifts_a_used_up_allowance
);
/// A tenant blocked at 100% of its token allowance is let through again
/// when its period rolls over: the sweep closes the period and pushes the
/// new one's allowance, counted from zero.
async fn a_new_period_lifts_a_used_up_allowance(db: TestDb) {
    let b = db.backend;
    let server = start(&db).await;
    let channel = server.channel().await;
    let mut usage = UsageServiceClient::new(channel.clone());
    let mut agent = FakeAgent::join(&server).await;
    let alice = Cred::user("alice", &[]);
    let tenant = create(&channel, &alice, "tiny").await;
    let first = agent.next_allowance(&tenant).await;
    let ack = agent.sync(vec![meter(&tenant, 10, call("0190c0de-0000-7000-8000-0000000000a1", 700, 300))]).await;
    assert_eq!(ack.accepted, 1, "{b}: {:?}", ack.rejections);
    let blocked = agent.next_allowance(&tenant).await;
    assert!(blocked.blocked && blocked.blocked_reason.contains("used up"), "{b}: {blocked:?}");
    assert!(subscription(&mut usage, &alice, &tenant).await.quota_exceeded, "{b}");

    let end = first.period_end.clone().unwrap();
    let after_end = chrono::DateTime::from_timestamp(end.seconds + 1, 0).unwrap();
    assert_eq!(server.fleet.sweep_periods(after_end).await.unwrap(), 1, "{b}: one period rolled");
    let lifted = agent.next_allowance(&tenant).await;
    assert_eq!((lifted.blocked, lifted.tokens_used), (false, 0), "{b}: {lifted:?}");
    assert_eq!(lifted.period_start, Some(end), "{b}: the new period starts where the old one ended");
    server.shutdown().await;
}
