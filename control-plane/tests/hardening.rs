//! Hostile and extreme input from signed-in callers, over real sockets: each
//! class of bad input is refused with the right code and a message naming
//! the field and the bound, nothing of it is echoed back at length, and the
//! server still answers afterwards. On SQLite and PostgreSQL.
mod common;

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clawplane_proto::v1::config_service_client::ConfigServiceClient;
use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::route_service_client::RouteServiceClient;
use clawplane_proto::v1::session_service_client::SessionServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::usage_service_client::UsageServiceClient;
use clawplane_proto::v1::*;
use common::*;
use prost_types::{Duration as PbDuration, Timestamp};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// 9999-12-31T23:59:59Z and 0001-01-01T00:00:00Z.
const MAX_SECONDS: i64 = 253_402_300_799;
const MIN_SECONDS: i64 = -62_135_596_800;
const DAY: i64 = 86_400;

fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

/// The answer must be `code` with a message containing `needle`, short
/// enough that no oversized input came back in it.
fn expect<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, code: Code, needle: &str) {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {}", status.message());
            assert!(status.message().contains(needle), "{what}: {:?} lacks {needle:?}", status.message());
            assert!(status.message().len() < 600, "{what}: message of {} bytes", status.message().len());
        }
    }
}

fn ok<T>(what: &str, result: Result<tonic::Response<T>, tonic::Status>) -> T {
    match result {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("{what}: {:?} {}", status.code(), status.message()),
    }
}

async fn assert_serving(server: &TestServer) {
    let mut health = HealthClient::new(server.channel().await);
    let answer = health.check(HealthCheckRequest { service: String::new() }).await.expect("health check answers");
    assert_eq!(answer.into_inner().status, 1, "SERVING");
    assert_memory_bounded();
}

struct Clients {
    tenants: TenantServiceClient<Channel>,
    config: ConfigServiceClient<Channel>,
    sessions: SessionServiceClient<Channel>,
    usage: UsageServiceClient<Channel>,
    hosts: HostServiceClient<Channel>,
    routes: RouteServiceClient<Channel>,
}

async fn clients(server: &TestServer) -> Clients {
    let channel = server.channel().await;
    Clients {
        tenants: TenantServiceClient::new(channel.clone()),
        config: ConfigServiceClient::new(channel.clone()),
        sessions: SessionServiceClient::new(channel.clone()),
        usage: UsageServiceClient::new(channel.clone()),
        hosts: HostServiceClient::new(channel.clone()),
        routes: RouteServiceClient::new(channel),
    }
}

/// Alice's free tenant (no host exists, so it stays pending).
async fn alice_tenant(c: &mut Clients, alice: &Cred) -> Tenant {
    let created =
        c.tenants.create_tenant(alice.request(CreateTenantRequest { plan: "free".into(), ..Default::default() }));
    ok("create", created.await).tenant.unwrap()
}

/// `n` distinct small entries for a map field.
fn labels(n: usize) -> HashMap<String, String> {
    (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()
}

fn usage(tenant: &str, period: UsagePeriod, from: Option<Timestamp>, to: Option<Timestamp>) -> GetUsageRequest {
    GetUsageRequest { tenant_id: tenant.into(), period: period as i32, from, to }
}

each_backend!(
    #[tokio::test]
    get_usage_extremes_answer_without_hanging_or_panicking
);
async fn get_usage_extremes_answer_without_hanging_or_panicking(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let mut c = clients(&server).await;
    let alice = Cred::user("alice", &[]);
    let tenant = alice_tenant(&mut c, &alice).await;
    let id = tenant.id.as_str();
    let b = db.backend;
    use UsagePeriod::{Day, Month};

    // Accepted extremes, with the period count the range implies.
    let accepted: &[(&str, GetUsageRequest, usize, i64)] = &[
        ("DAY to the max date", usage(id, Day, None, ts(MAX_SECONDS, 999_999_999)), 30, MAX_SECONDS - DAY + 1),
        ("DAY, a year to the max date", usage(id, Day, ts(MAX_SECONDS - 364 * DAY, 0), ts(MAX_SECONDS, 0)), 365, 0),
        ("MONTH to the max date", usage(id, Month, None, ts(MAX_SECONDS, 0)), 12, 0),
        ("MONTH in the max month", usage(id, Month, ts(MAX_SECONDS - DAY, 0), ts(MAX_SECONDS, 0)), 1, 0),
        ("DAY near the min date (default shortened)", usage(id, Day, None, ts(MIN_SECONDS + 4 * DAY, 0)), 4, 0),
        ("MONTH near the min date", usage(id, Month, None, ts(MIN_SECONDS + 59 * DAY, 0)), 2, 0),
        ("DAY from the min date", usage(id, Day, ts(MIN_SECONDS, 0), ts(MIN_SECONDS + 366 * DAY, 0)), 366, 0),
    ];
    for (what, request, points, last_start) in accepted {
        let answer = ok(what, c.usage.get_usage(alice.request(request.clone())).await);
        assert_eq!(answer.points.len(), *points, "{b}: {what}");
        if *last_start != 0 {
            assert_eq!(answer.points.last().unwrap().period_start.unwrap().seconds, *last_start, "{b}: {what}");
        }
    }

    let refused: &[(&str, GetUsageRequest, &str)] = &[
        ("DAY from 0001-01-01", usage(id, Day, ts(MIN_SECONDS, 0), None), "at most 366 days"),
        ("MONTH from 0001-01-01", usage(id, Month, ts(MIN_SECONDS, 0), None), "at most 120 months"),
        ("DAY over the whole range", usage(id, Day, ts(MIN_SECONDS, 0), ts(MAX_SECONDS, 0)), "at most 366 days"),
        ("367 days", usage(id, Day, ts(MIN_SECONDS, 0), ts(MIN_SECONDS + 367 * DAY, 0)), "spans 367 days"),
        ("121 months", usage(id, Month, ts(0, 0), ts(121 * 31 * DAY, 0)), "at most 120 months"),
        ("nanos below 0", usage(id, Day, ts(0, -1), None), "from must be between 0001-01-01"),
        ("nanos of a second", usage(id, Day, None, ts(0, 1_000_000_000)), "to must be between"),
        ("seconds beyond 9999", usage(id, Day, None, ts(MAX_SECONDS + 1, 0)), "to must be between"),
        ("seconds before year 1", usage(id, Day, ts(MIN_SECONDS - 1, 0), None), "from must be between"),
        ("i64::MAX", usage(id, Month, None, ts(i64::MAX, i32::MAX)), "to must be between"),
        ("i64::MIN", usage(id, Month, ts(i64::MIN, i32::MIN), None), "from must be between"),
        ("from equals to", usage(id, Day, ts(DAY, 0), ts(DAY, 0)), "from must be before to"),
        ("to at the min instant", usage(id, Day, None, ts(MIN_SECONDS, 0)), "from must be before to"),
        ("from after to", usage(id, Month, ts(MAX_SECONDS, 0), ts(0, 0)), "from must be before to"),
        ("period unset", usage(id, UsagePeriod::Unspecified, None, None), "period"),
        ("unknown period", GetUsageRequest { tenant_id: id.into(), period: 99, ..Default::default() }, "period"),
        ("tenant_id too long", usage(&"t".repeat(129), Day, None, None), "tenant_id must be at most 128"),
    ];
    for (what, request, needle) in refused {
        let answer = c.usage.get_usage(alice.request(request.clone())).await;
        expect(&format!("{b}: {what}"), answer, Code::InvalidArgument, needle);
    }
    assert_serving(&server).await;
    server.shutdown().await;
}

each_backend!(
    #[tokio::test]
    oversized_and_malformed_fields_are_refused_naming_the_bound
);
async fn oversized_and_malformed_fields_are_refused_naming_the_bound(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let mut c = clients(&server).await;
    let b = db.backend;
    let alice = Cred::user("alice", &[]);
    let team = Cred::user("tina", &["crew"]);
    let admin = Cred::admin();
    let tenant = alice_tenant(&mut c, &alice).await;
    let id = tenant.id.clone();
    let huge = "x".repeat(300_000);
    let create = |f: fn(&mut CreateTenantRequest)| {
        let mut request = CreateTenantRequest { plan: "free".into(), ..Default::default() };
        f(&mut request);
        request
    };

    // TenantService.
    let tenant_cases: Vec<(&str, &Cred, CreateTenantRequest, &str)> = vec![
        ("display_name", &alice, create(|r| r.display_name = "d".repeat(201)), "display_name must be at most 200"),
        ("plan", &alice, create(|r| r.plan = "p".repeat(65)), "plan must be at most 64"),
        ("plan control", &alice, create(|r| r.plan = "fr\u{0}ee".into()), "plan must not contain control"),
        ("slug", &alice, create(|r| r.slug = "s".repeat(41)), "slug must be 3 to 40"),
        ("team_id", &team, create(|r| r.team_id = "t".repeat(257)), "team_id must be at most 256"),
        ("labels", &alice, create(|r| r.placement_labels = labels(17)), "placement_labels: at most 16"),
        ("label key", &alice, create(|r| r.placement_labels = [("k".repeat(64), "v".into())].into()), "label key"),
        (
            "label value",
            &alice,
            create(|r| r.placement_labels = [("zone".into(), "v".repeat(254))].into()),
            "label value must be at most 253",
        ),
        (
            "agent_ids",
            &team,
            create(|r| {
                r.team_id = "crew".into();
                r.agent_ids = (0..9).map(|i| format!("agent-{i}")).collect();
            }),
            "agent_ids: at most 8",
        ),
    ];
    for (what, cred, request, needle) in tenant_cases {
        let answer = c.tenants.create_tenant(cred.request(request)).await;
        expect(&format!("{b}: CreateTenant {what}"), answer, Code::InvalidArgument, needle);
    }
    let mut huge_key = create(|r| r.team_id = "crew".into());
    huge_key.placement_labels = [(huge.clone(), "v".into())].into();
    expect("huge label key", c.tenants.create_tenant(team.request(huge_key)).await, Code::InvalidArgument, "label key");
    let mut huge_agent = create(|r| r.team_id = "crew".into());
    huge_agent.agent_ids = vec![huge.clone()];
    expect(
        "huge agent id",
        c.tenants.create_tenant(team.request(huge_agent)).await,
        Code::InvalidArgument,
        "agent_ids",
    );
    let get = |id: &str| GetTenantRequest { tenant_id: id.into() };
    expect(
        "tenant_id",
        c.tenants.get_tenant(alice.request(get(&"t".repeat(129)))).await,
        Code::InvalidArgument,
        "tenant_id must be at most 128",
    );
    expect(
        "tenant_id control",
        c.tenants.get_tenant(alice.request(get("a\nb"))).await,
        Code::InvalidArgument,
        "control characters",
    );
    expect("huge tenant_id", c.tenants.get_tenant(alice.request(get(&huge))).await, Code::InvalidArgument, "tenant_id");
    let list = |page_size: i32, page_token: &str| ListTenantsRequest {
        page_size,
        page_token: page_token.into(),
        include_deleted: false,
    };
    for (what, request, needle) in [
        ("page_size", list(-1, ""), "page_size must not be negative"),
        ("page_size min", list(i32::MIN, ""), "page_size"),
        ("page_token length", list(0, &"A".repeat(513)), "page_token must be at most 512"),
        ("page_token garbage", list(0, "!!!"), "page_token is not a token"),
    ] {
        let answer = c.tenants.list_tenants(admin.request(request)).await;
        expect(&format!("{b}: ListTenants {what}"), answer, Code::InvalidArgument, needle);
    }
    ok("ListTenants page_size max", c.tenants.list_tenants(admin.request(list(i32::MAX, ""))).await);
    // Forged tokens: well-formed ones page from wherever they say, the
    // rest is refused before it reaches the database.
    let forged = |key: &str| URL_SAFE_NO_PAD.encode(format!("v1:{key}"));
    ok("forged tenant token", c.tenants.list_tenants(admin.request(list(0, &forged("zzz")))).await);
    let nul = c.tenants.list_tenants(admin.request(list(0, &forged("a\u{0}b")))).await;
    expect(&format!("{b}: NUL in a page token"), nul, Code::InvalidArgument, "page_token is not a token");
    let cursor = |token: String| ListSessionsRequest { tenant_id: id.clone(), page_token: token, ..Default::default() };
    ok("forged session cursor", c.sessions.list_sessions(alice.request(cursor(forged("0/x")))).await);
    for key in ["9223372036854775807/x", "-9223372036854775808/x", "253402300800000/x", "x/y", "1"] {
        let answer = c.sessions.list_sessions(alice.request(cursor(forged(key)))).await;
        expect(&format!("{b}: session cursor {key}"), answer, Code::InvalidArgument, "page_token is not a token");
    }
    let logs = StreamTenantLogsRequest { tenant_id: id.clone(), tail_lines: -1, follow: false };
    expect("tail_lines", c.tenants.stream_tenant_logs(alice.request(logs)).await, Code::InvalidArgument, "tail_lines");

    // ConfigService.
    let profile = |f: fn(&mut SetAgentProfileRequest)| {
        let mut request = SetAgentProfileRequest { tenant_id: tenant.id.clone(), ..Default::default() };
        f(&mut request);
        request
    };
    for (what, request, needle) in [
        ("style", profile(|r| r.style = Some("s".repeat(2001))), "style must be at most 2000"),
        (
            "system_prompt",
            profile(|r| r.system_prompt = Some("p".repeat(65_537))),
            "system_prompt must be at most 65536",
        ),
        ("name", profile(|r| r.name = Some("n".repeat(101))), "name must be at most 100"),
        ("prompt control", profile(|r| r.system_prompt = Some("a\u{7}b".into())), "system_prompt must not contain"),
    ] {
        let answer = c.config.set_agent_profile(alice.request(request)).await;
        expect(&format!("{b}: SetAgentProfile {what}"), answer, Code::InvalidArgument, needle);
    }
    let longest = profile(|r| {
        r.style = Some("s".repeat(2000));
        r.system_prompt = Some("p\n".repeat(32_768));
    });
    let answer = ok("the longest profile", c.config.set_agent_profile(alice.request(longest)).await);
    assert_eq!(answer.config.unwrap().agent_profile.unwrap().system_prompt.chars().count(), 65_536);

    let tools = |allow: Vec<String>| SetToolsRequest { tenant_id: id.clone(), allow, ..Default::default() };
    for (what, request, needle) in [
        ("count", tools(vec!["read".into(); 201]), "allow lists more than 200"),
        ("name", tools(vec!["t".repeat(101)]), "allow:"),
        ("huge name", tools(vec![huge.clone()]), "is not a tool name"),
        ("bad name", tools(vec!["rm -rf".into()]), "is not a tool name"),
    ] {
        let answer = c.config.set_tools(alice.request(request)).await;
        expect(&format!("{b}: SetTools {what}"), answer, Code::InvalidArgument, needle);
    }

    let channel = |name: &str, settings: HashMap<String, String>, secrets: HashMap<String, String>| SetChannelRequest {
        tenant_id: id.clone(),
        channel: name.into(),
        settings,
        secrets,
        enabled: true,
        expected_generation: None,
    };
    let one = |k: &str, v: String| [(k.to_string(), v)].into_iter().collect::<HashMap<_, _>>();
    for (what, request, needle) in [
        ("name", channel(&"c".repeat(33), HashMap::new(), HashMap::new()), "channel must be 1-32"),
        ("settings", channel("telegram", labels(65), HashMap::new()), "at most 64 entries"),
        (
            "setting value",
            channel("telegram", one("dm", "v".repeat(1025)), HashMap::new()),
            "setting value must be at most 1024",
        ),
        ("setting name", channel("telegram", one(&huge, "v".into()), HashMap::new()), "setting name must be 1-64"),
        ("secret", channel("telegram", HashMap::new(), one("token", "s".repeat(4097))), "token must be 1-4096"),
    ] {
        let answer = c.config.set_channel(alice.request(request)).await;
        expect(&format!("{b}: SetChannel {what}"), answer, Code::InvalidArgument, needle);
    }
    // The free plan allows one channel: a second one needs the first gone.
    ok("first channel", c.config.set_channel(alice.request(channel("telegram", HashMap::new(), HashMap::new()))).await);
    ok(
        "same channel again",
        c.config.set_channel(alice.request(channel("telegram", HashMap::new(), HashMap::new()))).await,
    );
    let second = c.config.set_channel(alice.request(channel("discord", HashMap::new(), HashMap::new()))).await;
    expect(&format!("{b}: plan channel limit"), second, Code::FailedPrecondition, "plan allows (1)");
    let remove = RemoveChannelRequest { tenant_id: id.clone(), channel: "telegram".into(), expected_generation: None };
    ok("remove", c.config.remove_channel(alice.request(remove)).await);
    ok(
        "another channel",
        c.config.set_channel(alice.request(channel("discord", HashMap::new(), HashMap::new()))).await,
    );

    let model = |f: fn(&mut SetModelRequest)| {
        let mut request = SetModelRequest {
            tenant_id: tenant.id.clone(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            ..Default::default()
        };
        f(&mut request);
        request
    };
    for (what, request, needle) in [
        ("provider", model(|r| r.provider = "p".repeat(41)), "provider must be 1-40"),
        ("model", model(|r| r.model = "m".repeat(129)), "model must be 1-128"),
        (
            "base_url",
            model(|r| r.base_url = Some(format!("https://{}.com/", "a".repeat(600)))),
            "base_url must be at most 512",
        ),
        ("api_key", model(|r| r.api_key = Some("k".repeat(4097))), "api_key must be 1-4096"),
    ] {
        let answer = c.config.set_model(alice.request(request)).await;
        expect(&format!("{b}: SetModel {what}"), answer, Code::InvalidArgument, needle);
    }

    // SessionService.
    let sessions = |f: fn(&mut ListSessionsRequest)| {
        let mut request = ListSessionsRequest { tenant_id: tenant.id.clone(), ..Default::default() };
        f(&mut request);
        request
    };
    for (what, request, needle) in [
        ("channel", sessions(|r| r.channel = "c".repeat(65)), "channel must be at most 64"),
        ("agent_id", sessions(|r| r.agent_id = "a".repeat(65)), "agent_id must be at most 64"),
        ("page_size", sessions(|r| r.page_size = -5), "page_size"),
        ("page_token", sessions(|r| r.page_token = "A".repeat(10_000)), "page_token must be at most 512"),
        ("active_after nanos", sessions(|r| r.active_after = ts(0, -1)), "active_after must be between"),
        ("active_before seconds", sessions(|r| r.active_before = ts(i64::MAX, 0)), "active_before must be between"),
        (
            "after > before",
            sessions(|r| {
                r.active_after = ts(MAX_SECONDS, 0);
                r.active_before = ts(MIN_SECONDS, 0);
            }),
            "active_after is later",
        ),
    ] {
        let answer = c.sessions.list_sessions(alice.request(request)).await;
        expect(&format!("{b}: ListSessions {what}"), answer, Code::InvalidArgument, needle);
    }
    let get_session = GetSessionRequest { tenant_id: id.clone(), session_id: "s".repeat(129) };
    expect("session_id", c.sessions.get_session(alice.request(get_session)).await, Code::InvalidArgument, "session_id");
    let messages = ListMessagesRequest {
        tenant_id: id.clone(),
        session_id: "s1".into(),
        page_size: 0,
        page_token: "bm90LWEtdG9rZW4".into(),
    };
    expect(
        "messages page_token",
        c.sessions.list_messages(alice.request(messages)).await,
        Code::InvalidArgument,
        "page_token",
    );

    // HostService (admin).
    let token = |f: fn(&mut CreateJoinTokenRequest)| {
        let mut request = CreateJoinTokenRequest::default();
        f(&mut request);
        request
    };
    for (what, request, needle) in [
        (
            "labels",
            token(|r| r.labels = (0..65).map(|i| (format!("k{i}"), "v".into())).collect()),
            "labels: at most 64",
        ),
        ("ttl", token(|r| r.ttl = Some(PbDuration { seconds: 8 * DAY, nanos: 0 })), "ttl must be at most 7 days"),
        ("ttl nanos", token(|r| r.ttl = Some(PbDuration { seconds: 1, nanos: -5 })), "ttl must not be negative"),
        (
            "ttl max",
            token(|r| r.ttl = Some(PbDuration { seconds: i64::MAX, nanos: 999_999_999 })),
            "ttl must be at most",
        ),
        ("max_uses", token(|r| r.max_uses = 1001), "max_uses must be between 1 and 1000"),
        ("max_uses min", token(|r| r.max_uses = i32::MIN), "max_uses"),
        (
            "url",
            token(|r| r.control_plane_url = format!("https://{}:1", "h".repeat(600))),
            "control_plane_url must be at most 512",
        ),
    ] {
        let answer = c.hosts.create_join_token(admin.request(request)).await;
        expect(&format!("{b}: CreateJoinToken {what}"), answer, Code::InvalidArgument, needle);
    }
    let hosts = ListHostsRequest { status: 99, ..Default::default() };
    expect("hosts status", c.hosts.list_hosts(admin.request(hosts)).await, Code::InvalidArgument, "status");
    let get_host = GetHostRequest { host_id: "h".repeat(129) };
    expect("host_id", c.hosts.get_host(admin.request(get_host)).await, Code::InvalidArgument, "host_id");
    let ping =
        PingHostRequest { host_id: "h1".into(), timeout: Some(PbDuration { seconds: -1, nanos: 0 }), no_wait: false };
    expect("ping timeout", c.hosts.ping_host(admin.request(ping)).await, Code::InvalidArgument, "timeout");
    // RevokeJoinToken takes the whole `<id>.<secret>` too, as documented.
    let created = ok("token", c.hosts.create_join_token(admin.request(CreateJoinTokenRequest::default())).await);
    let revoke = RevokeJoinTokenRequest { token_id: created.token.clone() };
    let revoked = ok("revoke by full token", c.hosts.revoke_join_token(admin.request(revoke)).await);
    assert!(revoked.join_token.unwrap().revoked);

    // RouteService (admin).
    let resolve = |host: String, base_domain: String| ResolveRouteRequest { host, base_domain };
    for (what, request, needle) in [
        ("host", resolve(format!("{}.claw.test", "a".repeat(260)), String::new()), "host must be at most 260"),
        ("base_domain", resolve("alice.claw.test".into(), "d".repeat(254)), "base_domain must be at most 253"),
        ("base_domain junk", resolve("alice.claw.test".into(), "bad domain!".into()), "is not a domain name"),
    ] {
        let answer = c.routes.resolve_route(admin.request(request)).await;
        expect(&format!("{b}: ResolveRoute {what}"), answer, Code::InvalidArgument, needle);
    }
    let watch = WatchRoutesRequest { base_domain: huge.clone() };
    expect(
        "watch base_domain",
        c.routes.watch_routes(admin.request(watch)).await,
        Code::InvalidArgument,
        "base_domain",
    );

    // Every tenant-scoped RPC checks tenant_id the same way.
    let long = "t".repeat(129);
    let needle = "tenant_id must be at most 128";
    let t = || long.clone();
    expect(
        "DeleteTenant",
        c.tenants.delete_tenant(alice.request(DeleteTenantRequest { tenant_id: t() })).await,
        Code::InvalidArgument,
        needle,
    );
    expect(
        "RestartTenant",
        c.tenants.restart_tenant(alice.request(RestartTenantRequest { tenant_id: t() })).await,
        Code::InvalidArgument,
        needle,
    );
    let logs = StreamTenantLogsRequest { tenant_id: t(), tail_lines: 0, follow: true };
    expect("StreamTenantLogs", c.tenants.stream_tenant_logs(alice.request(logs)).await, Code::InvalidArgument, needle);
    expect(
        "GetConfig",
        c.config.get_config(alice.request(GetConfigRequest { tenant_id: t() })).await,
        Code::InvalidArgument,
        needle,
    );
    let remove = RemoveChannelRequest { tenant_id: t(), channel: "telegram".into(), expected_generation: None };
    expect("RemoveChannel", c.config.remove_channel(alice.request(remove)).await, Code::InvalidArgument, needle);
    let remove = RemoveChannelRequest { tenant_id: id.clone(), channel: "c".repeat(33), expected_generation: None };
    expect(
        "RemoveChannel channel",
        c.config.remove_channel(alice.request(remove)).await,
        Code::InvalidArgument,
        "channel must be 1-32",
    );
    expect(
        "GetOverview",
        c.usage.get_overview(alice.request(GetOverviewRequest { tenant_id: t() })).await,
        Code::InvalidArgument,
        needle,
    );
    let mine = GetMyTenantRequest { team_id: "t".repeat(257) };
    expect(
        "GetMyTenant team_id",
        c.tenants.get_my_tenant(alice.request(mine)).await,
        Code::InvalidArgument,
        "team_id must be at most 256",
    );
    let tokens = ListJoinTokensRequest { page_token: "A".repeat(513), ..Default::default() };
    expect(
        "ListJoinTokens",
        c.hosts.list_join_tokens(admin.request(tokens)).await,
        Code::InvalidArgument,
        "page_token must be at most 512",
    );
    let drain = DrainHostRequest { host_id: "h".repeat(129), undrain: false };
    expect(
        "DrainHost",
        c.hosts.drain_host(admin.request(drain)).await,
        Code::InvalidArgument,
        "host_id must be at most 128",
    );
    let remove = RemoveHostRequest { host_id: "h".repeat(129), force: false };
    expect(
        "RemoveHost",
        c.hosts.remove_host(admin.request(remove)).await,
        Code::InvalidArgument,
        "host_id must be at most 128",
    );
    let revoke = RevokeJoinTokenRequest { token_id: "h".repeat(129) };
    expect(
        "RevokeJoinToken",
        c.hosts.revoke_join_token(admin.request(revoke)).await,
        Code::InvalidArgument,
        "token_id must be at most 128",
    );

    // The tenant is intact and the server serves.
    ok("still there", c.tenants.get_tenant(alice.request(get(&id))).await);
    assert_serving(&server).await;
    server.shutdown().await;
}

each_backend!(
    #[tokio::test]
    an_expected_generation_mismatch_is_aborted
);
async fn an_expected_generation_mismatch_is_aborted(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let mut c = clients(&server).await;
    let b = db.backend;
    let alice = Cred::user("alice", &[]);
    let tenant = alice_tenant(&mut c, &alice).await;
    let tools = |generation: i64| SetToolsRequest {
        tenant_id: tenant.id.clone(),
        allow: vec!["read".into()],
        deny: vec![],
        expected_generation: Some(generation),
    };
    let first = ok("generation 0 -> 1", c.config.set_tools(alice.request(tools(0))).await);
    assert_eq!(first.config.unwrap().desired_generation, 1, "{b}");
    for stale in [0, 2, -1, i64::MAX, i64::MIN] {
        let answer = c.config.set_tools(alice.request(tools(stale))).await;
        expect(&format!("{b}: expected_generation {stale}"), answer, Code::Aborted, "expected_generation");
    }
    let profile = SetAgentProfileRequest {
        tenant_id: tenant.id.clone(),
        name: Some("Claw".into()),
        expected_generation: Some(7),
        ..Default::default()
    };
    expect("profile", c.config.set_agent_profile(alice.request(profile)).await, Code::Aborted, "read it again");
    let second = ok("generation 1 -> 2", c.config.set_tools(alice.request(tools(1))).await);
    assert_eq!(second.config.unwrap().desired_generation, 2, "{b}");
    assert_serving(&server).await;
    server.shutdown().await;
}

fn set_model(tenant_id: &str, base_url: &str) -> SetModelRequest {
    SetModelRequest {
        tenant_id: tenant_id.into(),
        provider: "local".into(),
        model: "fake-model".into(),
        api_key: Some("sk-0123456789abcdefghijklmn".into()),
        base_url: Some(base_url.into()),
        expected_generation: None,
        ..Default::default()
    }
}

each_backend!(
    #[tokio::test]
    model_base_urls_cannot_reach_internal_addresses
);
async fn model_base_urls_cannot_reach_internal_addresses(db: TestDb) {
    let server = TestServer::start(serve_args(&db)).await;
    let mut c = clients(&server).await;
    let b = db.backend;
    let alice = Cred::user("alice", &[]);
    let tenant = alice_tenant(&mut c, &alice).await;
    for (url, needle) in [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://127.0.0.1:9/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.0.10:11434/v1", "private"),
        ("http://100.64.1.1/", "CGNAT"),
        ("http://[fd12::1]/", "private"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://240.0.0.1/", "reserved"),
        ("http://localhost/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("ftp://x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http://user:pw@example.com/", "user name"),
        ("http://example.com\\@127.0.0.1/", "backslash"),
        ("http://%6c%6f%63%61%6c%68%6f%73%74/", "DNS name"),
        ("http://no-such-host.invalid/", "resolve"),
        ("not a url", "spaces"),
    ] {
        let answer = c.config.set_model(alice.request(set_model(&tenant.id, url))).await;
        let named = answer.as_ref().err().is_some_and(|status| status.message().contains("base_url"));
        expect(&format!("{b}: {url}"), answer, Code::InvalidArgument, needle);
        assert!(named, "{b}: {url}: the message names base_url");
    }
    // A public address is accepted; with no host the change just waits
    // in the desired config (nothing is applied yet).
    let answer =
        ok("public", c.config.set_model(alice.request(set_model(&tenant.id, "https://93.184.215.14/v1"))).await);
    let config = answer.config.unwrap();
    let model = config.model.unwrap();
    assert_eq!(model.base_url, "https://93.184.215.14/v1", "{b}");
    assert_eq!(model.api_key_hint, "sk-...klmn", "{b}");
    assert_eq!((config.desired_generation, config.applied_generation), (1, 0), "{b}: queued, not applied");
    // Unset keeps the stored URL (and key); empty clears it.
    let keep = SetModelRequest { base_url: None, api_key: None, ..set_model(&tenant.id, "") };
    let kept = ok("keep", c.config.set_model(alice.request(keep)).await).config.unwrap().model.unwrap();
    assert_eq!((kept.base_url.as_str(), kept.api_key_hint.as_str()), ("https://93.184.215.14/v1", "sk-...klmn"), "{b}");
    // The host's proxy needs an upstream: only providers whose public
    // upstream Clawplane knows go without a base_url.
    let clear = SetModelRequest { api_key: Some(String::new()), ..set_model(&tenant.id, "") };
    let refused = c.config.set_model(alice.request(clear)).await;
    expect(&format!("{b}: no upstream"), refused, Code::InvalidArgument, "base_url is required for provider \"local\"");
    let clear =
        SetModelRequest { provider: "openai".into(), api_key: Some(String::new()), ..set_model(&tenant.id, "") };
    let cleared = ok("clear", c.config.set_model(alice.request(clear)).await).config.unwrap().model.unwrap();
    assert_eq!((cleared.base_url.as_str(), cleared.api_key_hint.as_str()), ("", ""), "{b}");
    assert_serving(&server).await;
    server.shutdown().await;

    // An operator's allowed range admits its addresses, whatever their class.
    let mut args = serve_args(&db);
    args.models_allowed_cidrs = vec!["10.0.0.0/8".into(), "127.0.0.0/8".into()];
    let server = TestServer::start(args).await;
    let mut c = clients(&server).await;
    for url in ["http://10.0.0.1/v1", "http://127.0.0.1:9/v1", "http://[::ffff:10.1.2.3]:8000/"] {
        let answer = ok(url, c.config.set_model(alice.request(set_model(&tenant.id, url))).await);
        assert_eq!(answer.config.unwrap().model.unwrap().base_url, url, "{b}");
    }
    for (url, needle) in [("http://192.168.0.1/", "private"), ("http://169.254.169.254/", "link-local")] {
        let answer = c.config.set_model(alice.request(set_model(&tenant.id, url))).await;
        expect(&format!("{b}: {url} outside the allowed ranges"), answer, Code::InvalidArgument, needle);
    }
    assert_serving(&server).await;
    server.shutdown().await;
}
