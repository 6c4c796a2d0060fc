//! Tenant API benchmark over real gRPC on loopback: CreateTenant and
//! GetMyTenant against SQLite and PostgreSQL, printing requests/s, p50 and
//! p99. Client and server share this process (and the machine's cores).
//!
//!     cargo bench -p clawplane-control-plane --bench tenant_api
//!
//! Env: BENCH_SECONDS (default 5), BENCH_CONCURRENCY (default 32),
//! BENCH_TENANTS (default 1000), CLAWPLANE_TEST_PG_URL.
use std::time::{Duration, Instant};

use clawplane::config::{Config, ServeArgs};
use clawplane::Server;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{CreateTenantRequest, GetMyTenantRequest};
use clawplane_test_kit::{pg_admin_url, postgres_db, sqlite_db};
use jsonwebtoken::{EncodingKey, Header};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

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
}

fn stats(mut latencies: Vec<Duration>, elapsed: Duration) -> Stats {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Stats { count: latencies.len(), elapsed, p50: at(0.50), p99: at(0.99) }
}

fn print(backend: &str, rpc: &str, concurrency: usize, s: &Stats) {
    println!(
        "{backend:<9} {rpc:<18} conc={concurrency:<3} n={:<7} {:>9.0} req/s  p50={:>7.3} ms  p99={:>7.3} ms",
        s.count,
        s.count as f64 / s.elapsed.as_secs_f64(),
        s.p50.as_secs_f64() * 1e3,
        s.p99.as_secs_f64() * 1e3,
    );
}

/// Creates `tenants` tenants with `concurrency` callers; every call timed.
async fn bench_create(
    channels: &[Channel],
    tokens: &[MetadataValue<tonic::metadata::Ascii>],
    concurrency: usize,
) -> Stats {
    let started = Instant::now();
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
    stats(all, started.elapsed())
}

/// GetMyTenant for random existing owners, for a fixed time (bounded also
/// by a request cap).
async fn bench_get(
    channels: &[Channel],
    tokens: &[MetadataValue<tonic::metadata::Ascii>],
    concurrency: usize,
    duration: Duration,
) -> Stats {
    let cap_per_worker = 2_000_000 / concurrency;
    let started = Instant::now();
    let workers = (0..concurrency).map(|i| {
        let mut client = TenantServiceClient::new(channels[i % channels.len()].clone());
        let tokens = tokens.to_vec();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut n = i;
            while started.elapsed() < duration && latencies.len() < cap_per_worker {
                let mut request = tonic::Request::new(GetMyTenantRequest::default());
                request.metadata_mut().insert("authorization", tokens[n % tokens.len()].clone());
                n = n.wrapping_mul(31).wrapping_add(7);
                let t = Instant::now();
                client.get_my_tenant(request).await.expect("get");
                latencies.push(t.elapsed());
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for worker in futures::future::join_all(workers).await {
        all.extend(worker.unwrap());
    }
    stats(all, started.elapsed())
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
    config.rate_per_caller = clawplane::rate::Rate::new(1_000_000_000, 1_000_000_000);
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
    let tokens: Vec<_> = (0..tenants).map(|i| token(&format!("bench-user-{i}"))).collect();

    // Every read goes to the database.
    let (channels, stop, task) = start(&url, &data_dir, Duration::ZERO).await;
    let created = bench_create(&channels, &tokens, concurrency.min(16)).await;
    print(backend, "CreateTenant", concurrency.min(16), &created);
    for conc in [concurrency / 4, concurrency] {
        let got = bench_get(&channels, &tokens, conc, Duration::from_secs(seconds)).await;
        print(backend, "GetMyTenant", conc, &got);
    }
    let _ = stop.send(());
    let _ = task.await;

    // The default: GetMyTenant may answer from memory for 1 s.
    let (channels, stop, task) = start(&url, &data_dir, Duration::from_secs(1)).await;
    for conc in [concurrency / 4, concurrency] {
        let got = bench_get(&channels, &tokens, conc, Duration::from_secs(seconds)).await;
        print(backend, "GetMyTenant+cache", conc, &got);
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
