//! The gateway bridge against the alternatives, side by side in one run on
//! loopback, each time against one upstream on the tenant's gateway port:
//! direct; through clawplane-bridge (which includes the mutual-TLS hop to
//! the host agent); through nginx `proxy_pass` straight to the upstream;
//! and through nginx with `auth_request` to the bridge and mTLS to the agent
//! (deploy/nginx). Prints requests/s and p99 for a small response, MB/s for
//! a large one, and the CPU time per small request of every process on the
//! path (read from /proc): the load generator, the gateway, the bridge, the
//! agent, nginx; and how busy the whole machine was (all cores) while each
//! row ran. On a shared machine req/s drifts with the neighbours; the
//! CPU per request is the steadier figure, and the share of direct is taken
//! per round (each round runs every path once), then the median.
//!
//! Two upstreams, one table each:
//! - the real OpenClaw gateway of a tenant the agent provisioned (what users
//!   reach in production): `/healthz`, and the Control UI's largest asset;
//! - a small Rust HTTP server (about 1 us per request), which shows the
//!   proxies' own ceiling rather than what a user would see.
//!
//!     eval "$(scripts/install-openclaw)"     # the real gateway table needs it
//!     cargo build --release --workspace --bins
//!     CLAWPLANE_OPENCLAW_BIN=$OPENCLAW_BIN cargo bench -p clawplane-host-agent --bench bridge
//!
//! Env: BENCH_SECS (default 5), BENCH_CONCURRENCY (connection counts, one
//! table each, default "32,128"), BENCH_REPS
//! (rounds, default 3), BENCH_LARGE_FETCHES (of the large response per
//! path, default 32), BENCH_BRIDGE_THREADS (the bridge's --worker-threads,
//! default 1: this machine's 2 cores also carry the load generator, the
//! agent and the gateway; 0 is one per core), BENCH_STANDIN=0 skips the
//! stand-in table. nginx rows are skipped when nginx is not installed, the
//! OpenClaw table when CLAWPLANE_OPENCLAW_BIN is not set.
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;

mod common;
use common::{bench_jwt, env, free_port, proc_stat, spawn_quiet, start_bridge, wait_port, Killed, Stage, CLIENT_IP};

const SMALL: &[u8] =
    b"{\"ok\":true,\"bench\":\"small response of about one hundred bytes, like a health or status call\"}";
const LARGE_BYTES: usize = 16 * 1024 * 1024;

/// The stand-in gateway: /large is 16 MiB, anything else the small body.
async fn upstream(listener: tokio::net::TcpListener) {
    let large = Bytes::from(vec![b'x'; LARGE_BYTES]);
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let _ = tcp.set_nodelay(true);
        let large = large.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let body = if request.uri().path() == "/large" { large.clone() } else { Bytes::from_static(SMALL) };
                async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Keep-alive HTTP/1.1 load for `secs` from `concurrency` connections, one
/// request at a time on each. Returns (requests/s, p50 ms, p99 ms).
///
/// The load generator shares the 2 cores with what it measures, so it is
/// built to cost little, as wrk is: one thread, one task per connection,
/// the request's bytes written once, responses parsed in place.
async fn load(
    port: u16,
    host: &str,
    path: &'static str,
    token: Option<&str>,
    secs: u64,
    concurrency: usize,
) -> (f64, f64, f64) {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nx-forwarded-for: {CLIENT_IP}\r\n");
    if let Some(token) = token {
        request.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    let generator = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let request = std::rc::Rc::new(request.into_bytes());
            let deadline = Instant::now() + Duration::from_secs(secs);
            let local = tokio::task::LocalSet::new();
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let request = request.clone();
                tasks.push(local.spawn_local(async move {
                    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                    tcp.set_nodelay(true).unwrap();
                    let mut buffer = Vec::with_capacity(64 * 1024);
                    let mut latencies = Vec::with_capacity(200_000);
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        if let Err(err) = tcp.write_all(&request).await {
                            panic!("port {port}: sending a request: {err}");
                        }
                        read_response(&mut tcp, &mut buffer).await;
                        latencies.push(started.elapsed());
                    }
                    latencies
                }));
            }
            local
                .run_until(async move {
                    let mut all = Vec::new();
                    for task in tasks {
                        all.extend(task.await.unwrap());
                    }
                    all
                })
                .await
        })
    });
    let mut all = tokio::task::spawn_blocking(move || generator.join().unwrap()).await.unwrap();
    all.sort();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    (all.len() as f64 / secs as f64, pct(0.5), pct(0.99))
}

/// Reads one HTTP/1.1 response (Content-Length or chunked body), asserting
/// it is a 200. `buffer` is reused from response to response.
async fn read_response(tcp: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) {
    use tokio::io::AsyncReadExt;
    buffer.clear();
    // Reads until the buffer holds as many bytes as the response has.
    loop {
        if let Some(length) = response_length(buffer) {
            if buffer.len() >= length {
                assert_eq!(buffer.len(), length, "the server sent more than one response");
                return;
            }
        }
        if buffer.capacity() - buffer.len() < 16 * 1024 {
            buffer.reserve(64 * 1024);
        }
        let read = tcp.read_buf(buffer).await.unwrap_or_else(|err| panic!("reading a response: {err}"));
        assert!(read > 0, "the server closed the connection mid-response: {}", String::from_utf8_lossy(buffer));
    }
}

/// The whole response's length once its head (and, for a chunked body, the
/// last chunk) has arrived.
fn response_length(buffer: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buffer).unwrap() {
        httparse::Status::Complete(head) => head,
        httparse::Status::Partial => return None,
    };
    assert_eq!(response.code, Some(200), "{}", String::from_utf8_lossy(&buffer[..buffer.len().min(300)]));
    let header = |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    if let Some(length) = header("content-length") {
        return Some(head + std::str::from_utf8(length).unwrap().trim().parse::<usize>().unwrap());
    }
    assert!(header("transfer-encoding").is_some(), "a response with neither Content-Length nor chunking");
    let mut at = head;
    loop {
        let line = buffer[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&buffer[at..at + line]).unwrap().split(';').next().unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        at += line + 2 + size + 2;
        if size == 0 {
            return Some(at);
        }
        if at > buffer.len() {
            return None;
        }
    }
}

/// MB/s fetching `path` (`size` bytes) `times` times over one connection.
async fn throughput(port: u16, host: &str, path: &str, size: usize, token: Option<&str>, times: usize) -> f64 {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(connection);
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..times {
        let mut builder = http::Request::get(path).header("host", host).header("x-forwarded-for", CLIENT_IP);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        sender.ready().await.unwrap();
        let response = sender.send_request(builder.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            status,
            200,
            "{path} through port {port}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        bytes += body.len();
    }
    assert_eq!(bytes, size * times);
    bytes as f64 / 1e6 / started.elapsed().as_secs_f64()
}

fn nginx_conf(root: &Path, port: u16, mode: &str, upstream_port: u16, admin_port: u16, identity: &Path) -> PathBuf {
    std::fs::create_dir_all(root.join("logs")).unwrap();
    let r = root.display();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx");
    let server_body = if mode == "plain" {
        format!(
            "location / {{ proxy_pass http://bench_upstream; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}"
        )
    } else {
        let http_conf = std::fs::read_to_string(repo.join("clawplane-http.conf"))
            .unwrap()
            .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin_port}"));
        let locations = std::fs::read_to_string(repo.join("clawplane-tenant-locations.conf"))
            .unwrap()
            .replace("/etc/clawplane/bridge/", &format!("{}/", identity.display()));
        std::fs::write(root.join("clawplane-http.conf"), http_conf).unwrap();
        std::fs::write(root.join("locations.conf"), locations).unwrap();
        format!("include {r}/locations.conf;")
    };
    let include_http = if mode == "plain" { String::new() } else { format!("include {r}/clawplane-http.conf;") };
    let conf = format!(
        "user root; daemon off; worker_processes 2; pid {r}/nginx.pid; error_log {r}/logs/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; client_body_temp_path {r}/body; proxy_temp_path {r}/proxy;\n\
         set_real_ip_from 127.0.0.1; real_ip_header X-Forwarded-For;\n\
         fastcgi_temp_path {r}/fastcgi; uwsgi_temp_path {r}/uwsgi; scgi_temp_path {r}/scgi;\n\
         upstream bench_upstream {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n\
         {include_http}\n\
         server {{ listen 127.0.0.1:{port}; server_name _; keepalive_requests 1000000; {server_body} }} }}\n"
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// The upstream a table is measured against.
struct Upstream {
    label: &'static str,
    small: &'static str,
    large: String,
    large_bytes: usize,
}

/// The Control UI's largest asset in the OpenClaw install that
/// `openclaw_bin` (scripts/install-openclaw's wrapper) runs.
fn largest_control_ui_asset(openclaw_bin: &Path) -> (String, usize) {
    let assets = openclaw_bin
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("openclaw/node_modules/openclaw/dist/control-ui/assets");
    let largest = std::fs::read_dir(&assets)
        .unwrap_or_else(|e| panic!("{}: {e}", assets.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".js"))
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .unwrap();
    (format!("/assets/{}", largest.file_name().to_string_lossy()), largest.metadata().unwrap().len() as usize)
}

/// One path's figures: medians over the rounds.
struct Row {
    label: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Of direct's req/s in the same round: a round's drift in the
    /// machine's speed hits both sides of the ratio.
    share_of_direct: f64,
    large_mbs: f64,
    cpu: CpuShare,
    /// Of the machine's CPU time while the row ran: near 100% the row is
    /// bound by the machine, not by any one process on the path.
    machine_busy: f64,
}

/// SIGKILL to the process group of the tenant's running gateway, if any.
/// CPU time (user + system) a process has used so far; with `group`, every
/// live process of the process group `pid` leads (a gateway and its
/// children), or of the processes `pid` started (nginx and its workers).
fn cpu_time(pid: u32, group: bool) -> Duration {
    let ticks = |fields: &[String]| -> u64 {
        // utime and stime are fields 14 and 15 of proc(5).
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
    };
    let mut total = proc_stat(pid as i32).map(|f| ticks(&f)).unwrap_or(0);
    if group {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(other) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            // ppid and pgrp are fields 4 and 5.
            match proc_stat(other) {
                Some(f) if other != pid as i32 && (f[1] == pid.to_string() || f[2] == pid.to_string()) => {
                    total += ticks(&f)
                }
                _ => {}
            }
        }
    }
    Duration::from_secs_f64(total as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// The whole machine's busy and total CPU time so far (the first line of
/// /proc/stat: every core, every process, interrupts included).
fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let ticks: Vec<u64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|t| t.parse().unwrap()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already
    // in user). Steal counts as busy: the hypervisor gave it to others.
    let total: u64 = ticks.iter().take(8).sum();
    (total - ticks[3] - ticks[4], total)
}

/// CPU per request of each part of a path, in microseconds.
#[derive(Clone, Copy, Default)]
struct CpuShare {
    /// This process: the load generator (and the stand-in upstream, which
    /// runs in it).
    client: f64,
    gateway: f64,
    bridge: f64,
    agent: f64,
    nginx: f64,
}

/// One table: a control plane, an agent with its tenant proxy and one
/// running tenant, the bridge, and the rows against `upstream`. With
/// `openclaw` the tenant is provisioned and served by the real OpenClaw;
/// without, its stand-in gateway is swapped for the Rust upstream.
async fn measure(openclaw: Option<&Path>, secs: u64, concurrencies: &[usize]) -> (Upstream, Vec<(usize, Vec<Row>)>) {
    // Dropped at the end: ends what this table left running.
    let dir = clawplane_test_kit::TestDir::new();
    let stage = Stage::start(dir.path(), None, Some("bench.test")).await;
    let bins = PathBuf::from(env!("CARGO_BIN_EXE_clawplane-agent")).parent().unwrap().to_path_buf();
    let agent_command = match openclaw {
        Some(openclaw) => stage.agent_command_with(openclaw, &["--proxy-listen", "127.0.0.1:0"]),
        None => stage.agent_command(&["--proxy-listen", "127.0.0.1:0"]),
    };
    let agent = Killed(spawn_quiet(&agent_command));
    let tenant = stage.running_tenant().await;
    let state = stage.agent_state.clone();
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("tenants").join(format!("{}.json", tenant.id))).unwrap(),
    )
    .unwrap();
    let gateway_port = record["port"].as_u64().unwrap() as u16;
    let upstream_kind = match openclaw {
        Some(openclaw) => {
            let (large, large_bytes) = largest_control_ui_asset(openclaw);
            Upstream { label: "the tenant's real OpenClaw gateway", small: "/healthz", large, large_bytes }
        }
        None => {
            // Swap the stand-in gateway for the fast Rust upstream on its port.
            tokio::spawn(upstream(stage.take_gateway_port(&tenant.slug, gateway_port).await));
            Upstream {
                label: "a Rust stand-in upstream (proxy ceiling)",
                small: "/small",
                large: "/large".into(),
                large_bytes: LARGE_BYTES,
            }
        }
    };

    // The bridge.
    let bridge = start_bridge(&stage, dir.path(), &bins, env("BENCH_BRIDGE_THREADS", 1));
    let (bridge_port, admin_port, identity) = (bridge.port, bridge.admin_port, bridge.identity.clone());
    let jwt = bench_jwt();
    let host = format!("{}.bench.test", tenant.slug);
    let started = Instant::now();
    loop {
        let probe = tokio::net::TcpStream::connect(("127.0.0.1", bridge_port)).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(probe)).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::get(upstream_kind.small)
            .header("host", &host)
            .header("authorization", format!("Bearer {jwt}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        if sender.send_request(request).await.map(|r| r.status() == 200).unwrap_or(false) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the bridge never routed the tenant");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let u = &upstream_kind;
    // Every path to measure: (label, port, Host header, SSO token).
    let mut paths: Vec<(&str, u16, String, Option<String>)> = vec![
        ("direct to the gateway port", gateway_port, "127.0.0.1".into(), None),
        ("clawplane-bridge (+ agent mTLS hop)", bridge_port, host.clone(), Some(jwt.clone())),
    ];
    let mut nginxes = Vec::new();
    match ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists()) {
        Some(nginx) => {
            for mode in ["plain", "auth_request"] {
                let port = free_port();
                let root = dir.path().join(format!("nginx-{mode}"));
                let conf = nginx_conf(&root, port, mode, gateway_port, admin_port, &identity);
                nginxes.push(Killed(
                    Command::new(&nginx)
                        .arg("-p")
                        .arg(&root)
                        .arg("-c")
                        .arg(&conf)
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                ));
                wait_port(port);
                let (label, token) = match mode {
                    "plain" => ("nginx proxy_pass (no auth)", None),
                    _ => ("nginx + auth_request + agent mTLS", Some(jwt.clone())),
                };
                paths.push((label, port, host.clone(), token));
            }
        }
        None => println!("nginx not installed: nginx rows skipped"),
    }
    // Warm up (a just-started Node gateway is still compiling its code),
    // then rounds that take each path in turn, so drift in the machine's
    // load hits every path alike; each row is the median over rounds.
    load(gateway_port, "127.0.0.1", u.small, None, 3, concurrencies[0]).await;
    let reps = env("BENCH_REPS", 3) as usize;
    let gateway_pid = std::fs::read_to_string(stage.tenants_dir.join(&tenant.slug).join("gateway.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .filter(|_| openclaw.is_some());
    let nginx_pids: Vec<u32> = nginxes.iter().map(|n| n.0.id()).collect();
    let cpu_now = || {
        let sum = |pids: &[u32]| pids.iter().map(|pid| cpu_time(*pid, true)).sum::<Duration>();
        [
            cpu_time(std::process::id(), false),
            gateway_pid.map(|pid| cpu_time(pid, true)).unwrap_or_default(),
            cpu_time(bridge.process.0.id(), false),
            cpu_time(agent.0.id(), false),
            sum(&nginx_pids),
        ]
    };
    let large_fetches = env("BENCH_LARGE_FETCHES", 32) as usize;
    let mut mbs = Vec::new();
    for (label, port, host, token) in &paths {
        eprintln!("measuring against {}: {label}, {} fetches of {}", u.label, large_fetches, u.large);
        mbs.push(throughput(*port, host, &u.large, u.large_bytes, token.as_deref(), large_fetches).await);
    }
    let mut tables = Vec::new();
    for &concurrency in concurrencies {
        let mut cpu = vec![[Duration::ZERO; 5]; paths.len()];
        let mut requests = vec![0.0; paths.len()];
        let mut machine = vec![(0, 0); paths.len()];
        let mut runs: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); paths.len()];
        for round in 0..reps {
            for (i, (label, port, host, token)) in paths.iter().enumerate() {
                eprintln!("measuring against {}: {label}, {concurrency} connections (round {})", u.label, round + 1);
                let (before, machine_before) = (cpu_now(), machine_cpu());
                let run = load(*port, host, u.small, token.as_deref(), secs, concurrency).await;
                let (after, machine_after) = (cpu_now(), machine_cpu());
                machine[i].0 += machine_after.0 - machine_before.0;
                machine[i].1 += machine_after.1 - machine_before.1;
                for k in 0..5 {
                    cpu[i][k] += after[k] - before[k];
                }
                requests[i] += run.0 * secs as f64;
                runs[i].push(run);
            }
        }
        let mut rows: Vec<Row> = Vec::new();
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (i, ((label, ..), path_runs)) in paths.iter().zip(&runs).enumerate() {
            let mid = |f: fn(&(f64, f64, f64)) -> f64| median(path_runs.iter().map(f).collect());
            let us = cpu[i].map(|c| c.as_secs_f64() * 1e6 / requests[i]);
            rows.push(Row {
                label: label.to_string(),
                rps: mid(|r| r.0),
                p50_ms: mid(|r| r.1),
                p99_ms: mid(|r| r.2),
                share_of_direct: median(path_runs.iter().zip(&runs[0]).map(|(run, direct)| run.0 / direct.0).collect()),
                large_mbs: mbs[i],
                cpu: CpuShare { client: us[0], gateway: us[1], bridge: us[2], agent: us[3], nginx: us[4] },
                machine_busy: machine[i].0 as f64 / machine[i].1.max(1) as f64,
            });
        }
        tables.push((concurrency, rows));
    }
    drop(nginxes);
    // The agent leaves gateways running when it stops (they outlive agent
    // restarts): stop this table's one before the next table.
    drop(agent);
    stage.kill_gateway(&tenant.slug);
    (upstream_kind, tables)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let secs = env("BENCH_SECS", 5);
        let concurrencies: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
            .unwrap_or_else(|_| "32,128".into())
            .split(',')
            .map(|n| n.trim().parse().expect("BENCH_CONCURRENCY: a comma-separated list of connection counts"))
            .collect();
        let openclaw = std::env::var_os("CLAWPLANE_OPENCLAW_BIN").map(PathBuf::from);
        println!(
            "{concurrencies:?} connections, median of {} rounds of {secs} s per row, bridge --worker-threads {}",
            env("BENCH_REPS", 3),
            env("BENCH_BRIDGE_THREADS", 1)
        );
        let mut tables = Vec::new();
        match &openclaw {
            Some(openclaw) => tables.push(measure(Some(openclaw), secs, &concurrencies).await),
            None => println!("CLAWPLANE_OPENCLAW_BIN is not set: the real gateway table is skipped"),
        }
        if env("BENCH_STANDIN", 1) == 1 {
            tables.push(measure(None, secs, &concurrencies).await);
        }
        for (upstream, rows, concurrency) in tables.iter().flat_map(|(u, t)| t.iter().map(move |(c, r)| (u, r, c))) {
            println!(
                "\nupstream: {} (small: GET {}; large: {}, {:.1} MB); {concurrency} connections",
                upstream.label,
                upstream.small,
                upstream.large,
                upstream.large_bytes as f64 / 1e6
            );
            println!(
                "{:<38} {:>7} {:>7} {:>7} {:>7} {:>10} {:>5} | CPU us per request",
                "path", "req/s", "p50 ms", "p99 ms", "direct", "large MB/s", "busy"
            );
            for Row { label, rps, p50_ms, p99_ms, share_of_direct, large_mbs, cpu, machine_busy } in rows {
                let share = format!("{:.0}%", share_of_direct * 100.0);
                let busy = format!("{:.0}%", machine_busy * 100.0);
                let parts =
                    [("gateway", cpu.gateway), ("bridge", cpu.bridge), ("agent", cpu.agent), ("nginx", cpu.nginx)]
                        .iter()
                        .filter(|(_, us)| *us >= 0.5)
                        .map(|(name, us)| format!(", {name} {us:.1}"))
                        .collect::<String>();
                println!(
                    "{label:<38} {rps:>7.0} {p50_ms:>7.2} {p99_ms:>7.2} {share:>7} {large_mbs:>10.0} {busy:>5} | client {:.1}{parts}",
                    cpu.client
                );
            }
        }
    });
}
