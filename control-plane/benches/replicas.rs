//! Replicas benchmark: several `clawplane serve` processes on one
//! PostgreSQL database acting as one cluster (README, "Several replicas"),
//! with simulated hosts (real Joins, real mutual-TLS Connect streams).
//! Prints:
//!
//! 1. PingHost round trips through the replica holding the hosts' streams
//!    and through replicas that do not (the command and its answer cross
//!    between replicas as LISTEN/NOTIFY events), interleaved so all see the
//!    same load; goal: cross-replica within 5 ms of same-replica at p99.
//! 2. Failover of BENCH_FAILOVER_HOSTS hosts, all on replica A and knowing
//!    [A, B], when A is killed with SIGKILL: until every host's hello is
//!    acknowledged by B (timed by the hosts), and until ListHosts through B
//!    shows every host connected on a claim made after the kill; goal:
//!    under 10 s.
//! 3. GetMyTenant throughput with the same callers spread over 1, 2 and 3
//!    replicas, with the CPU the replicas, PostgreSQL and this process used.
//!
//!     cargo bench -p clawplane-control-plane --bench replicas
//!
//! Env: BENCH_PINGS (default 1000), BENCH_FAILOVER_HOSTS (default 1000),
//! BENCH_SECONDS (default 10), BENCH_TENANTS (default 300),
//! BENCH_CONCURRENCY (default 32), CLAWPLANE_TEST_PG_URL. Each part runs
//! on a fresh database of its own.
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clawplane_proto::v1::host_service_client::HostServiceClient;
use clawplane_proto::v1::tenant_service_client::TenantServiceClient;
use clawplane_proto::v1::{CreateTenantRequest, GetMyTenantRequest, ListHostsRequest, PingHostRequest};
use clawplane_test_kit::auth::Cred;
use clawplane_test_kit::{pg_admin_url, postgres_db, process_cpu, ControlPlane, TestDb};
use clawplane_tls::files::{create_private_dir, write_private};
use common::{admin, cpu_ticks, enroll, keep_connected, mean_ms, percentile, session, SimHost, USER_HZ};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Every replica's admin token (a file in each data directory).
const ADMIN_TOKEN: &str = "replicas-bench-admin-token-0123456789";
/// The limiters run (their cost is in the figures) but never bite.
const LIMITS: &str = "[limits]\nrate_per_caller = 1000000000\nburst_per_caller = 1000000000\n\
                      rate_per_address = 1000000000\nburst_per_address = 1000000000\n";
/// Bounds on every wait, so a broken build fails instead of hanging.
const WAIT_LIMIT: Duration = Duration::from_secs(180);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Replicas on one fresh PostgreSQL database. The first generates the CA,
/// the secrets key and its data directory's files; the others are pointed
/// at those (README: a single control plane becomes the first replica),
/// and all share one admin token. Dropped: the replicas are killed, then
/// the database is dropped (also while a panic unwinds).
struct Cluster {
    replicas: Vec<ControlPlane>,
    pids: Vec<u32>,
    db: TestDb,
}

impl Cluster {
    async fn start(names: &[&str]) -> Option<Cluster> {
        let db = postgres_db().await?;
        let dir = db.data_dir();
        for name in names {
            create_private_dir(&dir.join(name)).unwrap();
            write_private(&dir.join(name).join("admin-token"), ADMIN_TOKEN.as_bytes()).unwrap();
        }
        let first = ControlPlane::start_replica(&db, names[0], LIMITS);
        let a = first.data_dir.clone();
        let shared = format!(
            "[pki]\nca_cert_file = {:?}\nca_key_file = {:?}\n[secrets]\nkey_file = {:?}\n{LIMITS}",
            a.join("pki").join("ca.pem"),
            a.join("pki").join("ca.key"),
            a.join("secrets.key"),
        );
        let mut replicas = vec![first];
        for name in &names[1..] {
            replicas.push(ControlPlane::start_replica(&db, name, &shared));
        }
        let pids = replicas.iter().map(pid_of).collect();
        Some(Cluster { replicas, pids, db })
    }

    fn db_name(&self) -> &str {
        self.db.url.rsplit('/').next().unwrap()
    }
}

/// The pid of a replica's `clawplane serve`, found by its data directory.
fn pid_of(cp: &ControlPlane) -> u32 {
    let needle = format!("--data-dir\0{}\0", cp.data_dir.display());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            return pid;
        }
    }
    panic!("no process serves {}", cp.data_dir.display());
}

/// Tasks aborted when dropped (the simulated agents of one part).
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Waits for `count` items from `rx`, at most `limit`; how many came.
async fn receive<T>(rx: &mut mpsc::UnboundedReceiver<T>, count: usize, limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = 0;
    while got < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
    got
}

/// CPU time (utime + stime) of every process named `postgres`, by pid,
/// and whether it serves `db` (a backend's title names its database).
fn postgres_ticks(db: &str) -> HashMap<u32, (u64, bool)> {
    let mut found = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        if common::proc_value(pid, "comm").trim() != "postgres" {
            continue;
        }
        let title = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .replace('\0', " ");
        let ours = title.split_whitespace().any(|word| word == db);
        found.insert(pid, (cpu_ticks(pid), ours));
    }
    found
}

/// Busy clock ticks of the whole machine (every core), from /proc/stat.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    fields.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum()
}

/// Context switches of every thread of a process so far.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .map(|task| std::fs::read_to_string(task.path().join("status")).unwrap_or_default())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// CPU seconds used over a window.
struct CpuUse {
    wall: f64,
    replicas: Vec<f64>,
    /// Context switches of the replicas' threads, all together.
    switches: u64,
    /// Backends of this run's database, and every `postgres` process.
    pg_ours: f64,
    pg_all: f64,
    bench: f64,
    machine: f64,
}

struct CpuWindow {
    started: Instant,
    replicas: Vec<(u32, u64)>,
    switches: u64,
    postgres: HashMap<u32, (u64, bool)>,
    bench: Duration,
    machine: u64,
    db: String,
}

impl CpuWindow {
    fn start(cluster: &Cluster) -> CpuWindow {
        CpuWindow {
            started: Instant::now(),
            replicas: cluster.pids.iter().map(|&pid| (pid, cpu_ticks(pid))).collect(),
            switches: cluster.pids.iter().map(|&pid| context_switches(pid)).sum(),
            postgres: postgres_ticks(cluster.db_name()),
            bench: process_cpu(),
            machine: machine_busy_ticks(),
            db: cluster.db_name().to_string(),
        }
    }

    fn end(&self) -> CpuUse {
        let seconds = |ticks: u64| ticks as f64 / USER_HZ;
        let (mut pg_ours, mut pg_all) = (0, 0);
        for (pid, (ticks, ours)) in postgres_ticks(&self.db) {
            let used = ticks.saturating_sub(self.postgres.get(&pid).map_or(0, |(before, _)| *before));
            pg_all += used;
            if ours {
                pg_ours += used;
            }
        }
        CpuUse {
            wall: self.started.elapsed().as_secs_f64(),
            // A killed replica counts what it used before it died.
            replicas: self
                .replicas
                .iter()
                .map(|&(pid, before)| seconds(cpu_ticks(pid).saturating_sub(before)))
                .collect(),
            switches: self
                .replicas
                .iter()
                .map(|&(pid, _)| context_switches(pid))
                .sum::<u64>()
                .saturating_sub(self.switches),
            pg_ours: seconds(pg_ours),
            pg_all: seconds(pg_all),
            bench: (process_cpu() - self.bench).as_secs_f64(),
            machine: seconds(machine_busy_ticks().saturating_sub(self.machine)),
        }
    }
}

impl CpuUse {
    /// Another window's use added to this one's.
    fn add(&mut self, other: &CpuUse) {
        self.wall += other.wall;
        for (mine, theirs) in self.replicas.iter_mut().zip(&other.replicas) {
            *mine += theirs;
        }
        self.switches += other.switches;
        self.pg_ours += other.pg_ours;
        self.pg_all += other.pg_all;
        self.bench += other.bench;
        self.machine += other.machine;
    }

    fn describe(&self, names: &[&str]) -> String {
        let replicas: Vec<String> =
            names.iter().zip(&self.replicas).map(|(name, s)| format!("{name} {s:.2}")).collect();
        let tracked = self.replicas.iter().sum::<f64>() + self.pg_all + self.bench;
        format!(
            "cpu s: {}, postgres {:.2} (this db's backends; all postgres {:.2}), bench process {:.2}, other processes {:.2}; machine busy {:.2} of {:.2} core-s",
            replicas.join(", "),
            self.pg_ours,
            self.pg_all,
            self.bench,
            (self.machine - tracked).max(0.0),
            self.machine,
            self.wall * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        )
    }
}

/// Part 1: PingHost through the holder of the streams and through the others.
async fn cross_replica_pings(pings: usize) {
    let names = ["A", "B", "C"];
    let Some(cluster) = Cluster::start(&["cp-a", "cp-b", "cp-c"]).await else {
        return println!("pings     skipped: {} unreachable", pg_admin_url());
    };
    let mut apis = Vec::new();
    for cp in &cluster.replicas {
        apis.push(cp.hosts().await);
    }
    let hosts_count = 20;
    let a = &cluster.replicas[0];
    let hosts = enroll(&mut apis[0], ADMIN_TOKEN, &a.url(), 0, hosts_count, &Arc::new(Semaphore::new(16))).await;
    let ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
    // HelloAcks, and when each command reached its agent.
    let (acked_tx, mut acked) = mpsc::unbounded_channel();
    let (received_tx, mut received) = mpsc::unbounded_channel::<Instant>();
    let _agents = Tasks(
        hosts
            .into_iter()
            .map(|host| {
                let (url, acked, received) = (a.url(), acked_tx.clone(), received_tx.clone());
                tokio::spawn(async move {
                    let ready = move || {
                        let _ = acked.send(());
                    };
                    session(&host, &url, ready, move |at| {
                        let _ = received.send(at);
                    })
                    .await;
                })
            })
            .collect(),
    );
    assert_eq!(receive(&mut acked, hosts_count, WAIT_LIMIT).await, hosts_count, "every host connected to A");

    // One ping, sequential (so the command the agents saw is this one's):
    // the whole call, the leg to the agent and the leg back from it.
    let mut ping = async |api: &HostServiceClient<Channel>, host_id: &str| {
        let mut request = admin(ADMIN_TOKEN, PingHostRequest { host_id: host_id.to_string(), ..Default::default() });
        request.set_timeout(Duration::from_secs(15));
        while received.try_recv().is_ok() {}
        let t = Instant::now();
        let answer = api.clone().ping_host(request).await.expect("PingHost").into_inner();
        let total = t.elapsed();
        assert!(answer.answered, "the host answered");
        let at = received.try_recv().ok().filter(|_| received.is_empty());
        (total, at.map(|at| (at - t, t + total - at)))
    };
    // A NOTIFY from one connection heard on another, the hop every
    // cross-replica command and answer takes, under the same load.
    let pool = sea_orm::sqlx::PgPool::connect(&cluster.db.url).await.unwrap();
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(&pool).await.unwrap();
    listener.listen("bench_probe").await.unwrap();
    let mut notify = async || {
        let t = Instant::now();
        sea_orm::sqlx::query("SELECT pg_notify('bench_probe', 'x')").execute(&pool).await.unwrap();
        tokio::time::timeout(Duration::from_secs(15), listener.recv()).await.expect("NOTIFY heard").unwrap();
        t.elapsed()
    };

    // Warm-up: connections, statement caches.
    for i in 0..20 {
        for api in &apis {
            ping(api, &ids[i % ids.len()]).await;
        }
        notify().await;
    }
    let mut latencies = vec![Vec::with_capacity(pings); apis.len()];
    let mut legs = vec![(Vec::with_capacity(pings), Vec::with_capacity(pings)); apis.len()];
    // Every ping whose legs are known: (total, to the agent, back).
    let mut timed: Vec<Vec<(Duration, Duration, Duration)>> = vec![Vec::with_capacity(pings); apis.len()];
    let mut hops = Vec::with_capacity(pings);
    let started = Instant::now();
    let mut rounds = 0;
    for i in 0..pings {
        if started.elapsed() > WAIT_LIMIT {
            println!("pings: stopped after {i} rounds ({WAIT_LIMIT:?})");
            break;
        }
        // Each round pings through every replica, starting at another one,
        // and sends one bare NOTIFY.
        for k in 0..apis.len() {
            let r = (i + k) % apis.len();
            let (total, leg) = ping(&apis[r], &ids[(i * 7 + k) % ids.len()]).await;
            latencies[r].push(total);
            if let Some((to, back)) = leg {
                legs[r].0.push(to);
                legs[r].1.push(back);
                timed[r].push((total, to, back));
            }
        }
        hops.push(notify().await);
        rounds += 1;
    }
    drop(listener);
    pool.close().await;
    println!(
        "PingHost, {hosts_count} hosts on replica A, {rounds} rounds of one ping through each of A, B, C (B and C hold no stream):"
    );
    for r in 0..apis.len() {
        latencies[r].sort();
        legs[r].0.sort();
        legs[r].1.sort();
        let role = if r == 0 { "same replica " } else { "cross-replica" };
        println!(
            "  via {} ({role}): p50={:>6.2} ms  p99={:>6.2} ms  mean={:>6.2} ms | call->agent p50={:>5.2} p99={:>6.2} ms | agent->answer p50={:>5.2} p99={:>6.2} ms",
            names[r],
            percentile(&latencies[r], 0.5),
            percentile(&latencies[r], 0.99),
            mean_ms(&latencies[r]),
            percentile(&legs[r].0, 0.5),
            percentile(&legs[r].0, 0.99),
            percentile(&legs[r].1, 0.5),
            percentile(&legs[r].1, 0.99),
        );
    }
    // Where the tail is: the legs of the slowest 1% of each replica's pings.
    for r in 0..apis.len() {
        if timed[r].is_empty() {
            continue;
        }
        timed[r].sort();
        let tail = &timed[r][timed[r].len() - (timed[r].len() / 100).max(1)..];
        let mean = |leg: fn(&(Duration, Duration, Duration)) -> Duration| {
            tail.iter().map(leg).sum::<Duration>().as_secs_f64() * 1e3 / tail.len() as f64
        };
        println!(
            "  via {}, slowest 1% ({} pings): mean {:.2} ms = call->agent {:.2} ms + agent->answer {:.2} ms",
            names[r],
            tail.len(),
            mean(|t| t.0),
            mean(|t| t.1),
            mean(|t| t.2),
        );
    }
    hops.sort();
    println!(
        "  a bare NOTIFY heard on another connection: p50={:.2} ms p99={:.2} ms (a cross-replica ping takes two such hops, one each way)",
        percentile(&hops, 0.5),
        percentile(&hops, 0.99)
    );
    let same = percentile(&latencies[0], 0.99);
    for r in 1..apis.len() {
        let diff = percentile(&latencies[r], 0.99) - same;
        let verdict = if diff <= 5.0 { "met" } else { "MISSED" };
        println!(
            "  p99 via {} - via A = {diff:+.2} ms (goal: within 5 ms: {verdict}); p50 difference {:+.2} ms",
            names[r],
            percentile(&latencies[r], 0.5) - percentile(&latencies[0], 0.5)
        );
    }
}

/// Lists every host through `api` (pages of 500); how many there are and
/// how many are connected on a claim made after `since` (their last
/// heartbeat, which a hello sets, is later: a dead replica's claim stays
/// "connected" until its lease runs out, but its heartbeats stop).
async fn connected_since(api: &mut HostServiceClient<Channel>, since: SystemTime) -> (usize, usize) {
    let (mut all, mut fresh, mut page_token) = (0, 0, String::new());
    for _ in 0..1000 {
        let request = ListHostsRequest { page_size: 500, page_token: page_token.clone(), ..Default::default() };
        let mut request = admin(ADMIN_TOKEN, request);
        request.set_timeout(Duration::from_secs(30));
        let Ok(page) = api.list_hosts(request).await.map(|r| r.into_inner()) else { return (all, 0) };
        for host in &page.hosts {
            all += 1;
            let heard = host.last_heartbeat_at.and_then(|t| SystemTime::try_from(t).ok());
            if host.connected && heard.is_some_and(|heard| heard > since) {
                fresh += 1;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    (all, fresh)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Part 2: every host on A, A killed, until all are on B.
async fn failover(count: usize) {
    let Some(mut cluster) = Cluster::start(&["cp-a", "cp-b"]).await else {
        return println!("failover  skipped: {} unreachable", pg_admin_url());
    };
    let mut api_a = cluster.replicas[0].hosts().await;
    let api_b = cluster.replicas[1].hosts().await;
    let urls: Vec<String> = cluster.replicas.iter().map(ControlPlane::url).collect();
    let joining = Instant::now();
    let hosts: Vec<SimHost> = enroll(&mut api_a, ADMIN_TOKEN, &urls[0], 0, count, &Arc::new(Semaphore::new(64))).await;
    let joined_in = joining.elapsed();

    // Every HelloAck: which host, from which replica, when.
    let (acked_tx, mut acked) = mpsc::unbounded_channel::<(usize, usize, Instant)>();
    let connecting = Instant::now();
    let _agents = Tasks(
        hosts
            .into_iter()
            .enumerate()
            .map(|(n, host)| {
                let (urls, acked) = (urls.clone(), acked_tx.clone());
                tokio::spawn(keep_connected(host, urls, move |replica| {
                    let _ = acked.send((n, replica, Instant::now()));
                }))
            })
            .collect(),
    );
    let mut on_a = vec![false; count];
    let mut connected = 0;
    while connected < count {
        let Ok(Some((n, replica, _))) = tokio::time::timeout(WAIT_LIMIT, acked.recv()).await else {
            panic!("only {connected} of {count} hosts connected to A within {WAIT_LIMIT:?}");
        };
        if replica == 0 && !on_a[n] {
            on_a[n] = true;
            connected += 1;
        }
    }
    let connected_in = connecting.elapsed();
    // Settle: leases renewed, every hello's follow-up work done.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let cpu = CpuWindow::start(&cluster);
    let killed_wall = SystemTime::now();
    let killed = Instant::now();
    cluster.replicas[0].kill9();

    // ListHosts through B, polled (bounded) while the hosts move.
    let poller = {
        let mut api = api_b.clone();
        tokio::spawn(async move {
            let (mut polls, mut longest) = (0, Duration::ZERO);
            while killed.elapsed() < WAIT_LIMIT {
                let t = Instant::now();
                let (all, fresh) = connected_since(&mut api, killed_wall).await;
                polls += 1;
                longest = longest.max(t.elapsed());
                if all == count && fresh == count {
                    return Some((killed.elapsed(), polls, longest));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        })
    };
    let mut on_b: Vec<Option<Duration>> = vec![None; count];
    let mut moved = 0;
    while moved < count {
        let left = WAIT_LIMIT.saturating_sub(killed.elapsed());
        match tokio::time::timeout(left, acked.recv()).await {
            Ok(Some((n, 1, at))) if on_b[n].is_none() => {
                on_b[n] = Some(at.saturating_duration_since(killed));
                moved += 1;
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let all_acked = killed.elapsed();
    let used = cpu.end();
    let listed = poller.await.unwrap();

    let mut times: Vec<Duration> = on_b.iter().flatten().copied().collect();
    times.sort();
    println!(
        "failover of {count} hosts from A to B (joined in {:.1} s, all connected to A in {:.2} s, agents reconnect after 0-0.5 s of jitter like the real one):",
        secs(joined_in),
        secs(connected_in)
    );
    if moved < count {
        println!("  only {moved} of {count} hosts were acked by B within {WAIT_LIMIT:?} of the kill");
    }
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        let verdict = if moved == count && *last < Duration::from_secs(10) { "met" } else { "MISSED" };
        println!(
            "  hello acked by B, from the kill -9 of A: first {:.3} s, p50 {:.3} s, p99 {:.3} s, all {:.3} s (goal: under 10 s: {verdict})",
            secs(*first),
            percentile(&times, 0.5) / 1e3,
            percentile(&times, 0.99) / 1e3,
            secs(*last),
        );
    }
    match listed {
        Some((at, polls, longest)) => {
            let verdict = if at < Duration::from_secs(10) { "met" } else { "MISSED" };
            println!(
                "  ListHosts through B shows all {count} connected on a claim after the kill: {:.3} s after it ({polls} polls, a full listing took up to {:.0} ms) (goal: under 10 s: {verdict})",
                secs(at),
                longest.as_secs_f64() * 1e3,
            );
        }
        None => println!("  ListHosts through B did not show all {count} connected within {WAIT_LIMIT:?}"),
    }
    println!("  from the kill until all were acked ({:.2} s): {}", secs(all_acked), used.describe(&["A", "B"]));
}

/// Part 3: GetMyTenant over 1, 2 and 3 replicas.
async fn tenant_reads(seconds: u64, tenants: usize, concurrency: usize) {
    let names = ["A", "B", "C"];
    let Some(cluster) = Cluster::start(&["cp-a", "cp-b", "cp-c"]).await else {
        return println!("GetMyTenant skipped: {} unreachable", pg_admin_url());
    };
    // Four HTTP/2 connections per replica (a web backend's pool).
    let mut pools: Vec<Vec<Channel>> = Vec::new();
    for cp in &cluster.replicas {
        let mut pool = Vec::new();
        for _ in 0..4 {
            pool.push(cp.channel().await);
        }
        pools.push(pool);
    }
    let creds: Arc<Vec<Cred>> = Arc::new((0..tenants).map(|i| Cred::shared(&format!("bench-user-{i}"))).collect());
    // Created through A, 16 at once; pending (no host), as on a full fleet.
    let creates = (0..16).map(|worker| {
        let (creds, channel) = (creds.clone(), pools[0][worker % 4].clone());
        tokio::spawn(async move {
            let mut client = TenantServiceClient::new(channel);
            for cred in creds.iter().skip(worker).step_by(16) {
                let request = cred.request(CreateTenantRequest { plan: "free".into(), ..Default::default() });
                assert!(client.create_tenant(request).await.expect("CreateTenant").into_inner().created);
            }
        })
    });
    for created in futures::future::join_all(creates).await {
        created.unwrap();
    }

    println!(
        "GetMyTenant, {tenants} owners (shared-secret headers), {concurrency} callers spread over the first k replicas, owner cache TTL at its default; {seconds} slices of 1 s per k, interleaved:"
    );
    let callers = |k: usize| -> Arc<Vec<Channel>> {
        Arc::new((0..concurrency).map(|w| pools[w % k][(w / k) % 4].clone()).collect())
    };
    // Warm-up (connections, caches), not counted.
    get_my_tenant(&callers(3), &creds, Duration::from_secs(1)).await;
    let count = cluster.replicas.len();
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); count];
    let mut elapsed = vec![Duration::ZERO; count];
    let mut used: Vec<Option<CpuUse>> = (0..count).map(|_| None).collect();
    for round in 0..seconds as usize {
        for j in 0..count {
            let k = (round + j) % count + 1;
            let cpu = CpuWindow::start(&cluster);
            let (got, took) = get_my_tenant(&callers(k), &creds, Duration::from_secs(1)).await;
            let slice = cpu.end();
            latencies[k - 1].extend(got);
            elapsed[k - 1] += took;
            match &mut used[k - 1] {
                Some(total) => total.add(&slice),
                none => *none = Some(slice),
            }
        }
    }
    let mut rates = Vec::new();
    for k in 1..=count {
        let (latencies, used) = (&mut latencies[k - 1], used[k - 1].as_ref().unwrap());
        latencies.sort();
        let n = latencies.len().max(1) as f64;
        let rate = latencies.len() as f64 / elapsed[k - 1].as_secs_f64();
        rates.push(rate);
        let replicas = used.replicas.iter().sum::<f64>();
        println!(
            "  k={k}: {rate:>7.0} req/s  p50={:>6.2} ms  p99={:>6.2} ms  n={:<7} cpu per request: replicas {:.0} us, postgres {:.1} us, bench (callers) {:.0} us; replica context switches per request {:.2}",
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            latencies.len(),
            replicas * 1e6 / n,
            used.pg_all * 1e6 / n,
            used.bench * 1e6 / n,
            used.switches as f64 / n,
        );
        println!("        {}", used.describe(&names));
    }
    println!(
        "  throughput k=2/k=1 = {:.2}, k=3/k=1 = {:.2} (one machine: more replicas add no cores; the callers run on it too)",
        rates[1] / rates[0],
        rates[2] / rates[0]
    );
}

/// Calls GetMyTenant for `duration` (and at most 2,000,000 times), one
/// caller per channel, each cycling over the owners; every call timed.
async fn get_my_tenant(
    channels: &Arc<Vec<Channel>>,
    creds: &Arc<Vec<Cred>>,
    duration: Duration,
) -> (Vec<Duration>, Duration) {
    let cap = 2_000_000 / channels.len();
    let started = Instant::now();
    let workers = (0..channels.len()).map(|worker| {
        let mut client = TenantServiceClient::new(channels[worker].clone());
        let creds = creds.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut n = worker;
            while started.elapsed() < duration && latencies.len() < cap {
                let request = creds[n % creds.len()].request(GetMyTenantRequest::default());
                let t = Instant::now();
                client.get_my_tenant(request).await.expect("GetMyTenant");
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
    (all, started.elapsed())
}

fn main() {
    let pings = env_number("BENCH_PINGS", 1000) as usize;
    let failover_hosts = env_number("BENCH_FAILOVER_HOSTS", 1000) as usize;
    let seconds = env_number("BENCH_SECONDS", 10);
    let tenants = env_number("BENCH_TENANTS", 300) as usize;
    let concurrency = env_number("BENCH_CONCURRENCY", 32) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        cross_replica_pings(pings).await;
        failover(failover_hosts).await;
        tenant_reads(seconds, tenants, concurrency).await;
    });
}
