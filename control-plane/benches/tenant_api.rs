//! Tenant API benchmark over real gRPC on loopback: CreateTenant and
//! GetMyTenant against SQLite and PostgreSQL, printing requests/s, p50,
//! p99 and this process's CPU per request. Client and server share this
//! process (and the machine's cores), so each figure is also given as a
//! ratio to the floor measured in the same run: `grpc.health.v1.Health/Check`,
//! a trivial unary RPC through the same server stack (CORS, grpc-web, auth,
//! rate limits, deadlines), at the same concurrency.
//!
//!     cargo bench -p clawplane-control-plane --bench tenant_api
//!
//! Env: BENCH_SECONDS (default 5), BENCH_CONCURRENCY (default 32),
//! BENCH_TENANTS (default 1000: that many tenants are created and left
//! pending first, then as many more are created and timed),
//! CLAWPLANE_TEST_PG_URL.
use std::time::{Duration, Instant};

/// What the `clawplane` binary allocates with (src/main.rs), so the server
/// in this process costs what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clawplane::config::{Config, ServeArgs};
use clawplane::Server;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{CreateTenantRequest, GetMyTenantRequest};
use clawplane_test_kit::{pg_admin_url, postgres_db, process_cpu, sqlite_db};
use jsonwebtoken::{EncodingKey, Header};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SECRET: &str = "bench-hs256-secret-0123456789abcdef0123456789";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn token(user: &str) -> MetadataValue<tonic::metadata::Ascii> {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = serde_json::json!({"sub": user, "exp": exp, "email": format!("{user}@bench.test")});
    let jwt = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    MetadataValue::try_from(format!("Bearer {jwt}")).unwrap()
}

struct Stats {
    count: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// This process's CPU (client and server) over the run.
    cpu: Duration,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.count.max(1) as f64
    }
}

fn stats(mut latencies: Vec<Duration>, elapsed: Duration, cpu: Duration) -> Stats {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Stats { count: latencies.len(), elapsed, p50: at(0.50), p99: at(0.99), cpu }
}

/// One line per figure; `floor` is the trivial RPC at the same concurrency.
fn print(backend: &str, rpc: &str, concurrency: usize, s: &Stats, floor: Option<&Stats>) {
    let ratio = floor.map(|f| format!("  {:>5.1}% of floor", 100.0 * s.rate() / f.rate())).unwrap_or_default();
    println!(
        "{backend:<9} {rpc:<18} conc={concurrency:<3} n={:<7} {:>9.0} req/s  p50={:>7.3} ms  p99={:>7.3} ms  cpu={:>6.1} us/req{ratio}",
        s.count,
        s.rate(),
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3,
        s.cpu_us_per_request(),
    );
}

/// Creates `tenants` tenants with `concurrency` callers; every call timed.
async fn bench_create(
    channels: &[Channel],
    tokens: &[MetadataValue<tonic::metadata::Ascii>],
    concurrency: usize,
) -> Stats {
    let started = Instant::now();
    let cpu = process_cpu();
    let per_worker = tokens.len().div_ceil(concurrency);
    let workers = tokens.chunks(per_worker).enumerate().map(|(i, chunk)| {
        let mut client = TenantServiceClient::new(channels[i % channels.len()].clone());
        let chunk = chunk.to_vec();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(chunk.len());
            for auth in chunk {
                let mut request =
                    tonic::Request::new(CreateTenantRequest { plan: "free".into(), ..Default::default() });
                request.metadata_mut().insert("authorization", auth);
                let t = Instant::now();
                let response = client.create_tenant(request).await.expect("create");
                latencies.push(t.elapsed());
                assert!(response.into_inner().created);
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for worker in futures::future::join_all(workers).await {
        all.extend(worker.unwrap());
    }
    stats(all, started.elapsed(), process_cpu() - cpu)
}

/// `concurrency` callers making calls for `duration` (bounded also by a
/// request cap), every call timed; `call(n)` makes one, `n` spreading the
/// callers over channels and owners.
async fn timed_calls<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Stats
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cap_per_worker = 2_000_000 / concurrency;
    let started = Instant::now();
    let cpu = process_cpu();
    let workers = (0..concurrency).map(|worker| {
        let call = call.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut n = worker;
            while started.elapsed() < duration && latencies.len() < cap_per_worker {
                let t = Instant::now();
                call(n).await;
                latencies.push(t.elapsed());
                n = n.wrapping_mul(31).wrapping_add(7);
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for worker in futures::future::join_all(workers).await {
        all.extend(worker.unwrap());
    }
    stats(all, started.elapsed(), process_cpu() - cpu)
}

/// The framework's floor: Health/Check through the same stack.
async fn bench_floor(channels: &[Channel], concurrency: usize, duration: Duration) -> Stats {
    let channels = channels.to_vec();
    timed_calls(concurrency, duration, move |n| {
        let mut client = HealthClient::new(channels[n % channels.len()].clone());
        async move {
            client.check(HealthCheckRequest::default()).await.expect("health");
        }
    })
    .await
}

/// GetMyTenant for existing owners, spread over them.
async fn bench_get(
    channels: &[Channel],
    tokens: &[MetadataValue<tonic::metadata::Ascii>],
    concurrency: usize,
    duration: Duration,
) -> Stats {
    let (channels, tokens) = (channels.to_vec(), std::sync::Arc::new(tokens.to_vec()));
    timed_calls(concurrency, duration, move |n| {
        let mut client = TenantServiceClient::new(channels[n % channels.len()].clone());
        let mut request = tonic::Request::new(GetMyTenantRequest::default());
        request.metadata_mut().insert("authorization", tokens[n % tokens.len()].clone());
        async move {
            client.get_my_tenant(request).await.expect("get");
        }
    })
    .await
}

/// A server on `url` with the given GetMyTenant cache TTL, plus a pool of
/// four HTTP/2 connections to it (like a web backend's client pool).
async fn start(
    url: &str,
    data_dir: &std::path::Path,
    cache_ttl: Duration,
) -> (Vec<Channel>, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let mut args = ServeArgs {
        data_dir: Some(data_dir.to_path_buf()),
        database_url: Some(url.to_string()),
        api_listen: Some("127.0.0.1:0".into()),
        agent_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    args.auth.jwt_hs256_secret = Some(SECRET.into());
    let mut config = Config::load(&args).unwrap();
    config.tenant_cache_ttl = cache_ttl;
    // The limiters run (their cost is in the figures) but never bite.
    config.rate_per_caller = clawplane_edge::rate::Rate::new(1_000_000_000, 1_000_000_000);
    config.rate_per_address = config.rate_per_caller;
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap());
    }
    (channels, stop, task)
}

async fn run_backend(backend: &str, url: String, data_dir: std::path::PathBuf) {
    let seconds = env_number("BENCH_SECONDS", 5);
    let concurrency = env_number("BENCH_CONCURRENCY", 32) as usize;
    let tenants = env_number("BENCH_TENANTS", 1000) as usize;
    let window = Duration::from_secs(seconds);
    let tokens: Vec<_> = (0..2 * tenants).map(|i| token(&format!("bench-user-{i}"))).collect();
    let (backlog, timed) = tokens.split_at(tenants);

    // Every read goes to the database.
    let (channels, stop, task) = start(&url, &data_dir, Duration::ZERO).await;
    let create_conc = concurrency.min(16);
    // No host is connected: every tenant stays pending, as on a full fleet.
    bench_create(&channels, backlog, create_conc).await;
    let floor = bench_floor(&channels, create_conc, window).await;
    print(backend, "floor (Health)", create_conc, &floor, None);
    let created = bench_create(&channels, timed, create_conc).await;
    print(backend, &format!("CreateTenant +{tenants}p"), create_conc, &created, Some(&floor));
    for conc in [concurrency / 4, concurrency] {
        let floor = bench_floor(&channels, conc, window).await;
        print(backend, "floor (Health)", conc, &floor, None);
        let got = bench_get(&channels, &tokens, conc, window).await;
        print(backend, "GetMyTenant", conc, &got, Some(&floor));
    }
    let _ = stop.send(());
    let _ = task.await;

    // The default: GetMyTenant may answer from memory for 1 s.
    let (channels, stop, task) = start(&url, &data_dir, Duration::from_secs(1)).await;
    for conc in [concurrency / 4, concurrency] {
        let floor = bench_floor(&channels, conc, window).await;
        print(backend, "floor (Health)", conc, &floor, None);
        let got = bench_get(&channels, &tokens, conc, window).await;
        print(backend, "GetMyTenant+cache", conc, &got, Some(&floor));
    }
    let _ = stop.send(());
    let _ = task.await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let db = sqlite_db();
        run_backend("sqlite", db.url.clone(), db.data_dir()).await;

        match postgres_db().await {
            Some(db) => run_backend("postgres", db.url.clone(), db.data_dir()).await,
            None => println!("postgres  skipped: {} unreachable", pg_admin_url()),
        }
    });
}
