//! Property-based fuzzing of every public RPC of the six API services over
//! a real socket, on SQLite: arbitrary and extreme field values (huge,
//! unicode and control-character strings, integer extremes, timestamps far
//! outside the protobuf range, maps and lists of thousands of entries).
//! Every call must answer, within a generous hang-detection timeout, with a
//! well-formed status of an expected code (never INTERNAL or UNKNOWN) and a
//! short message, and the server must still serve afterwards.
//!
//! 48 cases per RPC by default; `PROPTEST_CASES=N` runs more.
mod common;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use clawplane_proto::v1::config_service_client::ConfigServiceClient;
use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::route_service_client::RouteServiceClient;
use clawplane_proto::v1::session_service_client::SessionServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::usage_service_client::UsageServiceClient;
use clawplane_proto::v1::*;
use common::*;
use prop::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use prost_types::{Duration as PbDuration, Timestamp};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Purely hang detection: a healthy call answers in milliseconds.
const HANG: Duration = Duration::from_secs(20);

const MAX_SECONDS: i64 = 253_402_300_799;
const MIN_SECONDS: i64 = -62_135_596_800;
const DAY: i64 = 86_400;

const EXPECTED: &[Code] = &[
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::PermissionDenied,
    Code::Unauthenticated,
    Code::Aborted,
    Code::AlreadyExists,
    Code::ResourceExhausted,
    Code::Unimplemented,
    Code::DeadlineExceeded,
];

fn runner_config() -> RunnerConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(48);
    RunnerConfig { cases, failure_persistence: None, max_shrink_iters: 64, ..RunnerConfig::default() }
}

/// Strings callers might send: plausible ids, arbitrary unicode, control
/// characters, path tricks and sizes up to a few hundred kilobytes.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z][a-z0-9-]{0,20}",
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => vec(any::<char>(), 0..600).prop_map(|chars| chars.into_iter().collect()),
        1 => (0usize..100_000).prop_map(|n| "x".repeat(n)),
        1 => (0usize..20_000).prop_map(|n| "é\u{0}\u{202e}\n".repeat(n)),
        1 => prop::sample::select(vec![
            "../../etc/passwd",
            "%00%2e%2e/\r\n",
            "a.b",
            "*",
            "telegram",
            "free",
            "enterprise",
            "alice",
            "crew",
            "\u{feff}alice",
            "ALICE",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

/// Small strings for map entries, so thousands of them stay well under the
/// message size limit.
fn small_text() -> BoxedStrategy<String> {
    prop_oneof![3 => "[a-z0-9_.-]{1,12}", 1 => "\\PC{0,16}", 1 => any::<String>()].boxed()
}

fn map() -> BoxedStrategy<HashMap<String, String>> {
    prop_oneof![
        3 => hash_map(small_text(), small_text(), 0..8),
        1 => hash_map(small_text(), small_text(), 0..3000),
        1 => hash_map(text(), text(), 0..3),
    ]
    .boxed()
}

fn list() -> BoxedStrategy<Vec<String>> {
    prop_oneof![3 => vec(small_text(), 0..8), 1 => vec(small_text(), 0..3000), 1 => vec(text(), 0..3)].boxed()
}

fn int32() -> BoxedStrategy<i32> {
    prop_oneof![Just(0), Just(-1), Just(1), Just(i32::MIN), Just(i32::MAX), -10..2000i32, any::<i32>(),].boxed()
}

fn int64() -> BoxedStrategy<i64> {
    prop_oneof![Just(0), Just(1), Just(-1), Just(i64::MIN), Just(i64::MAX), -10..100i64, any::<i64>()].boxed()
}

fn timestamp() -> BoxedStrategy<Option<Timestamp>> {
    let seconds = prop_oneof![
        Just(MIN_SECONDS),
        Just(MAX_SECONDS),
        Just(MIN_SECONDS - 1),
        Just(MAX_SECONDS + 1),
        Just(i64::MIN),
        Just(i64::MAX),
        MIN_SECONDS..=MAX_SECONDS,
        (MAX_SECONDS - 400 * DAY)..=MAX_SECONDS,
        MIN_SECONDS..=(MIN_SECONDS + 400 * DAY),
        any::<i64>(),
    ];
    let nanos =
        prop_oneof![Just(0), Just(999_999_999), Just(1_000_000_000), Just(-1), 0..1_000_000_000i32, any::<i32>()];
    prop::option::of((seconds, nanos).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })).boxed()
}

fn duration() -> BoxedStrategy<Option<PbDuration>> {
    let seconds = prop_oneof![Just(0), Just(-1), Just(i64::MAX), Just(i64::MIN), 0..100i64, any::<i64>()];
    let nanos = prop_oneof![Just(0), Just(-1), Just(999_999_999), Just(i32::MAX), 0..1_000_000_000i32, any::<i32>()];
    prop::option::of((seconds, nanos).prop_map(|(seconds, nanos)| PbDuration { seconds, nanos })).boxed()
}

/// Base URLs: real shapes (that need no network to answer) and junk.
fn base_url() -> BoxedStrategy<Option<String>> {
    let shaped = prop_oneof![
        (prop::sample::select(vec!["http", "https", "ftp", "HTTP", "javascript"]), "[a-z0-9.:@\\[\\]%-]{0,30}")
            .prop_map(|(scheme, rest)| format!("{scheme}://{rest}/v1")),
        prop::sample::select(vec![
            "http://169.254.169.254/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://10.0.0.1/",
            "http://localhost/",
            "http://user:pw@example.com/",
            "https://93.184.215.14/v1",
            "http://name.invalid/",
            "http://2130706433/",
        ])
        .prop_map(String::from),
    ];
    prop::option::of(prop_oneof![3 => shaped, 1 => text()]).boxed()
}

/// Who calls: the tenant's owner most often, else another user, an
/// operator or nobody.
#[derive(Clone)]
struct Callers {
    alice: Cred,
    bob: Cred,
    admin: Cred,
    none: Cred,
}

impl Callers {
    fn pick(&self, who: u8) -> &Cred {
        match who % 6 {
            0..=2 => &self.alice,
            3 => &self.bob,
            4 => &self.admin,
            _ => &self.none,
        }
    }
}

fn who() -> BoxedStrategy<u8> {
    any::<u8>().boxed()
}

struct Rig {
    server: TestServer,
    channel: Channel,
    callers: Callers,
    /// Alice's tenant id and slug, and Bob's tenant id.
    alice_id: String,
    alice_slug: String,
    bob_id: String,
}

impl Rig {
    fn tenant_ref(&self) -> BoxedStrategy<String> {
        prop_oneof![
            3 => Just(self.alice_id.clone()),
            1 => Just(self.alice_slug.clone()),
            1 => Just(self.bob_id.clone()),
            2 => text(),
        ]
        .boxed()
    }
}

/// The answer must be well-formed and of an expected code.
fn judge(what: &str, outcome: Result<Result<(), Status>, tokio::time::error::Elapsed>) -> Result<(), TestCaseError> {
    let Ok(result) = outcome else {
        return Err(TestCaseError::fail(format!("{what}: no answer within {HANG:?} (hang)")));
    };
    let Err(status) = result else { return Ok(()) };
    if !EXPECTED.contains(&status.code()) {
        return Err(TestCaseError::fail(format!("{what}: {:?}: {}", status.code(), status.message())));
    }
    if status.message().is_empty() || status.message().len() > 1024 {
        return Err(TestCaseError::fail(format!(
            "{what}: {:?} with a message of {} bytes",
            status.code(),
            status.message().len()
        )));
    }
    Ok(())
}

async fn assert_serving(rig: &Rig) {
    let mut health = HealthClient::new(rig.channel.clone());
    let answer = tokio::time::timeout(HANG, health.check(HealthCheckRequest { service: String::new() })).await;
    assert_eq!(answer.expect("health answers").expect("health check").into_inner().status, 1, "SERVING");
    assert_memory_bounded();
    let mut tenants = TenantServiceClient::new(rig.channel.clone());
    let get = rig.callers.alice.request(GetTenantRequest { tenant_id: rig.alice_id.clone() });
    // NOT_FOUND once DeleteTenant deleted it: storage answered either way.
    match tokio::time::timeout(HANG, tenants.get_tenant(get)).await.expect("answers") {
        Ok(_) => {}
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => panic!("storage no longer serves: {status:?}"),
    }
}

/// Runs one RPC's property: `call` sends one generated request.
fn fuzz<S, F, Fut>(rt: &tokio::runtime::Runtime, rig: &Rig, name: &str, strategy: S, call: F)
where
    S: Strategy,
    S::Value: Debug,
    F: Fn(S::Value) -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    let mut runner = TestRunner::new(runner_config());
    let result = runner
        .run(&strategy, |input| rt.block_on(async { judge(name, tokio::time::timeout(HANG, call(input)).await) }));
    if let Err(err) = result {
        let mut text = err.to_string();
        text.truncate(4000);
        panic!("{name}: {text}");
    }
    rt.block_on(assert_serving(rig));
}

async fn setup() -> (Rig, TestDb) {
    let db = sqlite_db();
    // The per-caller rate limit would answer most calls before they reach
    // the handlers under test.
    let mut args = serve_args(&db);
    let file = db.data_dir().join("no-rate-limit.toml");
    std::fs::write(&file, "[limits]\nrate_per_caller = 0\nrate_per_address = 0\n").unwrap();
    args.config = Some(file);
    let server = TestServer::start(args).await;
    let channel = server.channel().await;
    let callers = Callers {
        alice: Cred::user("alice", &["crew"]),
        bob: Cred::user("bob", &[]),
        admin: Cred::admin(),
        none: Cred::None,
    };
    let mut tenants = TenantServiceClient::new(channel.clone());
    let create = |cred: &Cred| cred.request(CreateTenantRequest { plan: "free".into(), ..Default::default() });
    let alice = tenants.create_tenant(create(&callers.alice)).await.unwrap().into_inner().tenant.unwrap();
    let bob = tenants.create_tenant(create(&callers.bob)).await.unwrap().into_inner().tenant.unwrap();
    let rig = Rig { server, channel, callers, alice_id: alice.id, alice_slug: alice.slug, bob_id: bob.id };
    (rig, db)
}

#[test]
fn every_rpc_answers_arbitrary_input_with_an_expected_status() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (rig, _db) = rt.block_on(setup());
    let c = &rig.callers;
    let ch = rig.channel.clone();
    let tenants = TenantServiceClient::new(ch.clone());
    let config = ConfigServiceClient::new(ch.clone());
    let sessions = SessionServiceClient::new(ch.clone());
    let usage = UsageServiceClient::new(ch.clone());
    let hosts = HostServiceClient::new(ch.clone());
    let routes = RouteServiceClient::new(ch);
    let started = std::time::Instant::now();

    // TenantService.
    fuzz(
        &rt,
        &rig,
        "CreateTenant",
        (who(), text(), text(), text(), text(), map(), list()),
        |(w, plan, slug, name, team, labels, agents)| {
            let mut client = tenants.clone();
            let request = CreateTenantRequest {
                plan,
                slug,
                display_name: name,
                team_id: team,
                placement_labels: labels,
                agent_ids: agents,
            };
            let request = c.pick(w).request(request);
            async move { client.create_tenant(request).await.map(drop) }
        },
    );
    fuzz(&rt, &rig, "GetMyTenant", (who(), text()), |(w, team_id)| {
        let mut client = tenants.clone();
        let request = c.pick(w).request(GetMyTenantRequest { team_id });
        async move { client.get_my_tenant(request).await.map(drop) }
    });
    fuzz(&rt, &rig, "GetTenant", (who(), rig.tenant_ref()), |(w, tenant_id)| {
        let mut client = tenants.clone();
        let request = c.pick(w).request(GetTenantRequest { tenant_id });
        async move { client.get_tenant(request).await.map(drop) }
    });
    fuzz(
        &rt,
        &rig,
        "ListTenants",
        (who(), int32(), text(), any::<bool>()),
        |(w, page_size, page_token, include_deleted)| {
            let mut client = tenants.clone();
            let request = c.pick(w).request(ListTenantsRequest { page_size, page_token, include_deleted });
            async move { client.list_tenants(request).await.map(drop) }
        },
    );
    fuzz(&rt, &rig, "RestartTenant", (who(), rig.tenant_ref()), |(w, tenant_id)| {
        let mut client = tenants.clone();
        let request = c.pick(w).request(RestartTenantRequest { tenant_id });
        async move { client.restart_tenant(request).await.map(drop) }
    });
    fuzz(
        &rt,
        &rig,
        "StreamTenantLogs",
        (who(), rig.tenant_ref(), int32(), any::<bool>()),
        |(w, tenant_id, tail_lines, follow)| {
            let mut client = tenants.clone();
            let request = c.pick(w).request(StreamTenantLogsRequest { tenant_id, tail_lines, follow });
            async move {
                let mut stream = client.stream_tenant_logs(request).await?.into_inner();
                stream.message().await.map(drop)
            }
        },
    );

    // ConfigService.
    fuzz(&rt, &rig, "GetConfig", (who(), rig.tenant_ref()), |(w, tenant_id)| {
        let mut client = config.clone();
        let request = c.pick(w).request(GetConfigRequest { tenant_id });
        async move { client.get_config(request).await.map(drop) }
    });
    let channel_name = || prop_oneof![3 => "[a-z]{1,4}", 1 => text()];
    fuzz(
        &rt,
        &rig,
        "SetChannel",
        (who(), rig.tenant_ref(), channel_name(), map(), map(), any::<bool>(), prop::option::of(int64())),
        |(w, tenant_id, channel, settings, secrets, enabled, expected_generation)| {
            let mut client = config.clone();
            let request = SetChannelRequest { tenant_id, channel, settings, secrets, enabled, expected_generation };
            let request = c.pick(w).request(request);
            async move { client.set_channel(request).await.map(drop) }
        },
    );
    fuzz(
        &rt,
        &rig,
        "RemoveChannel",
        (who(), rig.tenant_ref(), channel_name(), prop::option::of(int64())),
        |(w, tenant_id, channel, expected_generation)| {
            let mut client = config.clone();
            let request = c.pick(w).request(RemoveChannelRequest { tenant_id, channel, expected_generation });
            async move { client.remove_channel(request).await.map(drop) }
        },
    );
    let model_name = || prop_oneof![3 => "[a-z0-9-]{1,12}", 1 => text()];
    fuzz(
        &rt,
        &rig,
        "SetModel",
        (
            who(),
            rig.tenant_ref(),
            model_name(),
            model_name(),
            prop::option::of(text()),
            base_url(),
            prop::option::of(int64()),
        ),
        |(w, tenant_id, provider, model, api_key, base_url, expected_generation)| {
            let mut client = config.clone();
            let request = SetModelRequest {
                tenant_id,
                provider,
                model,
                api_key,
                base_url,
                expected_generation,
                ..Default::default()
            };
            let request = c.pick(w).request(request);
            async move { client.set_model(request).await.map(drop) }
        },
    );
    fuzz(
        &rt,
        &rig,
        "SetTools",
        (who(), rig.tenant_ref(), list(), list(), prop::option::of(int64())),
        |(w, tenant_id, allow, deny, expected_generation)| {
            let mut client = config.clone();
            let request = c.pick(w).request(SetToolsRequest { tenant_id, allow, deny, expected_generation });
            async move { client.set_tools(request).await.map(drop) }
        },
    );
    fuzz(
        &rt,
        &rig,
        "SetAgentProfile",
        (
            who(),
            rig.tenant_ref(),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(int64()),
        ),
        |(w, tenant_id, name, system_prompt, style, expected_generation)| {
            let mut client = config.clone();
            let request = SetAgentProfileRequest { tenant_id, name, system_prompt, style, expected_generation };
            let request = c.pick(w).request(request);
            async move { client.set_agent_profile(request).await.map(drop) }
        },
    );

    // SessionService.
    fuzz(
        &rt,
        &rig,
        "ListSessions",
        (who(), rig.tenant_ref(), int32(), text(), text(), timestamp(), timestamp(), text()),
        |(w, tenant_id, page_size, page_token, channel, active_after, active_before, agent_id)| {
            let mut client = sessions.clone();
            let request = ListSessionsRequest {
                tenant_id,
                page_size,
                page_token,
                channel,
                active_after,
                active_before,
                agent_id,
            };
            let request = c.pick(w).request(request);
            async move { client.list_sessions(request).await.map(drop) }
        },
    );
    fuzz(&rt, &rig, "GetSession", (who(), rig.tenant_ref(), text()), |(w, tenant_id, session_id)| {
        let mut client = sessions.clone();
        let request = c.pick(w).request(GetSessionRequest { tenant_id, session_id });
        async move { client.get_session(request).await.map(drop) }
    });
    fuzz(
        &rt,
        &rig,
        "ListMessages",
        (who(), rig.tenant_ref(), text(), int32(), text()),
        |(w, tenant_id, session_id, page_size, page_token)| {
            let mut client = sessions.clone();
            let request = c.pick(w).request(ListMessagesRequest { tenant_id, session_id, page_size, page_token });
            async move { client.list_messages(request).await.map(drop) }
        },
    );

    // UsageService.
    let period = || prop_oneof![3 => 1..=2i32, 1 => int32()];
    fuzz(
        &rt,
        &rig,
        "GetUsage",
        (who(), rig.tenant_ref(), period(), timestamp(), timestamp()),
        |(w, tenant_id, period, from, to)| {
            let mut client = usage.clone();
            let request = c.pick(w).request(GetUsageRequest { tenant_id, period, from, to });
            async move { client.get_usage(request).await.map(drop) }
        },
    );
    fuzz(&rt, &rig, "GetOverview", (who(), rig.tenant_ref()), |(w, tenant_id)| {
        let mut client = usage.clone();
        let request = c.pick(w).request(GetOverviewRequest { tenant_id });
        async move { client.get_overview(request).await.map(drop) }
    });
    fuzz(&rt, &rig, "ListPlans", who(), |w| {
        let mut client = usage.clone();
        let request = c.pick(w).request(ListPlansRequest {});
        async move { client.list_plans(request).await.map(drop) }
    });
    fuzz(&rt, &rig, "GetSubscription", (who(), rig.tenant_ref()), |(w, tenant_id)| {
        let mut client = usage.clone();
        let request = c.pick(w).request(GetSubscriptionRequest { tenant_id });
        async move { client.get_subscription(request).await.map(drop) }
    });
    fuzz(&rt, &rig, "ChangePlan", (who(), rig.tenant_ref(), text()), |(w, tenant_id, plan)| {
        let mut client = usage.clone();
        let request = c.pick(w).request(ChangePlanRequest { tenant_id, plan });
        async move { client.change_plan(request).await.map(drop) }
    });

    // HostService (admin; others are refused).
    let admin_mostly = || prop_oneof![4 => Just(4u8), 1 => any::<u8>()];
    fuzz(
        &rt,
        &rig,
        "CreateJoinToken",
        (admin_mostly(), duration(), map(), int32(), prop_oneof![2 => Just(String::new()), 1 => text()]),
        |(w, ttl, labels, max_uses, control_plane_url)| {
            let mut client = hosts.clone();
            let request = c.pick(w).request(CreateJoinTokenRequest { ttl, labels, max_uses, control_plane_url });
            async move { client.create_join_token(request).await.map(drop) }
        },
    );
    fuzz(
        &rt,
        &rig,
        "ListJoinTokens",
        (admin_mostly(), int32(), text(), any::<bool>()),
        |(w, page_size, page_token, include_inactive)| {
            let mut client = hosts.clone();
            let request = c.pick(w).request(ListJoinTokensRequest { page_size, page_token, include_inactive });
            async move { client.list_join_tokens(request).await.map(drop) }
        },
    );
    fuzz(&rt, &rig, "RevokeJoinToken", (admin_mostly(), text()), |(w, token_id)| {
        let mut client = hosts.clone();
        let request = c.pick(w).request(RevokeJoinTokenRequest { token_id });
        async move { client.revoke_join_token(request).await.map(drop) }
    });
    fuzz(&rt, &rig, "ListHosts", (admin_mostly(), int32(), text(), int32()), |(w, page_size, page_token, status)| {
        let mut client = hosts.clone();
        let request = c.pick(w).request(ListHostsRequest { page_size, page_token, status });
        async move { client.list_hosts(request).await.map(drop) }
    });
    fuzz(&rt, &rig, "GetHost", (admin_mostly(), text()), |(w, host_id)| {
        let mut client = hosts.clone();
        let request = c.pick(w).request(GetHostRequest { host_id });
        async move { client.get_host(request).await.map(drop) }
    });
    fuzz(&rt, &rig, "DrainHost", (admin_mostly(), text(), any::<bool>()), |(w, host_id, undrain)| {
        let mut client = hosts.clone();
        let request = c.pick(w).request(DrainHostRequest { host_id, undrain });
        async move { client.drain_host(request).await.map(drop) }
    });
    fuzz(&rt, &rig, "RemoveHost", (admin_mostly(), text(), any::<bool>()), |(w, host_id, force)| {
        let mut client = hosts.clone();
        let request = c.pick(w).request(RemoveHostRequest { host_id, force });
        async move { client.remove_host(request).await.map(drop) }
    });
    fuzz(
        &rt,
        &rig,
        "PingHost",
        (admin_mostly(), text(), duration(), any::<bool>()),
        |(w, host_id, timeout, no_wait)| {
            let mut client = hosts.clone();
            let request = c.pick(w).request(PingHostRequest { host_id, timeout, no_wait });
            async move { client.ping_host(request).await.map(drop) }
        },
    );

    // RouteService (admin).
    let host_header = || prop_oneof![2 => "[a-z0-9-]{1,12}\\.claw\\.test(:[0-9]{1,6})?", 1 => text()];
    fuzz(
        &rt,
        &rig,
        "ResolveRoute",
        (admin_mostly(), host_header(), prop_oneof![2 => Just(String::new()), 1 => text()]),
        |(w, host, base_domain)| {
            let mut client = routes.clone();
            let request = c.pick(w).request(ResolveRouteRequest { host, base_domain });
            async move { client.resolve_route(request).await.map(drop) }
        },
    );
    fuzz(
        &rt,
        &rig,
        "WatchRoutes",
        (admin_mostly(), prop_oneof![1 => Just(String::new()), 2 => text()]),
        |(w, base_domain)| {
            let mut client = routes.clone();
            let request = c.pick(w).request(WatchRoutesRequest { base_domain });
            async move {
                // The first message (the snapshot) is enough; dropping the stream
                // cancels the watch.
                let mut stream = client.watch_routes(request).await?.into_inner();
                stream.message().await.map(drop)
            }
        },
    );

    // Last, as it may delete the tenants the others use.
    fuzz(&rt, &rig, "DeleteTenant", (who(), rig.tenant_ref()), |(w, tenant_id)| {
        let mut client = tenants.clone();
        let request = c.pick(w).request(DeleteTenantRequest { tenant_id });
        async move { client.delete_tenant(request).await.map(drop) }
    });
    eprintln!("fuzzed every RPC in {:.1}s", started.elapsed().as_secs_f64());

    let mut health = HealthClient::new(rig.channel.clone());
    let answer = rt.block_on(health.check(HealthCheckRequest { service: String::new() }));
    assert_eq!(answer.expect("health check").into_inner().status, 1, "SERVING at the end");
    rt.block_on(async move {
        rig.server.shutdown().await;
    });
}
