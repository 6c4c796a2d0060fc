//! Tenants per host on the real OpenClaw: what a running idle gateway takes
//! (its process group's RSS and its cgroup's memory), what a hibernated
//! tenant leaves resident (no process; the agent's record of it), the
//! tenants a 24 GiB host holds with 10% of them active, always-on versus
//! hibernating, and the wake time: a request at the gateway bridge for a
//! hibernated tenant until the first byte of its gateway's answer, over
//! repeated wakes, with OpenClaw's compile cache kept (Clawplane keeps the
//! tenant's TMPDIR, where OpenClaw puts it, across hibernation) and with it
//! removed before each wake, and the CPU a wake costs the gateway.
//!
//!     eval "$(scripts/install-openclaw)"
//!     cargo build --release --workspace --bins
//!     CLAWPLANE_OPENCLAW_BIN=$OPENCLAW_BIN cargo bench -p clawplane-host-agent --bench tenants_per_host
//!
//! BENCH_WAKES (per variant, default 5). Needs root (cgroups).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

mod common;
use common::{bench_jwt, env, proc_stat, spawn_quiet, start_bridge, Killed, Stage, CLIENT_IP};

/// Resident KiB of a process.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// RSS (KiB) of every process in a process group.
fn group_rss_kib(pgid: i32) -> u64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|stat| stat[2].parse::<i32>().ok() == Some(pgid)))
        .map(rss_kib)
        .sum()
}

/// A tenant's cgroup counter (v1 `controller` file, or the v2 one).
fn cgroup_value(controller: &str, tenant_id: &str, v1: &str, v2: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/clawplane/{tenant_id}/{v1}"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/clawplane/{tenant_id}/{v2}")))
        .ok()?;
    // v2 cpu.stat: "usage_usec N" first; v1 files hold the number alone.
    text.split_whitespace().find_map(|word| word.parse().ok())
}

/// CPU the tenant's cgroup used, in seconds.
fn cgroup_cpu_secs(tenant_id: &str) -> f64 {
    match cgroup_value("cpuacct", tenant_id, "cpuacct.usage", "cpu.stat") {
        Some(v) if Path::new("/sys/fs/cgroup/cpuacct").exists() => v as f64 / 1e9,
        Some(v) => v as f64 / 1e6,
        None => 0.0,
    }
}

fn gateway_pid(tenants: &Path, slug: &str) -> Option<i32> {
    std::fs::read_to_string(tenants.join(slug).join("gateway.pid")).ok()?.trim().parse().ok()
}

fn hibernated(state: &Path, tenant_id: &str) -> bool {
    std::fs::read_to_string(state.join("tenants").join(format!("{tenant_id}.json")))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|record| record["hibernated"] == true)
}

/// Time to the first byte of the answer to `GET /healthz` through the bridge.
async fn first_byte(port: u16, host: &str, jwt: &str) -> (Duration, u16) {
    let started = Instant::now();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/healthz")
        .header("host", host)
        .header("authorization", format!("Bearer {jwt}"))
        .header("x-forwarded-for", CLIENT_IP)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    (started.elapsed(), response.status().as_u16())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let Ok(openclaw) = std::env::var("CLAWPLANE_OPENCLAW_BIN") else {
        println!("skipped: set CLAWPLANE_OPENCLAW_BIN (eval \"$(scripts/install-openclaw)\")");
        return;
    };
    let wakes = env("BENCH_WAKES", 5) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        // Dropped at the end: ends what this bench left running.
        let dir = clawplane_test_kit::TestDir::new();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let stage = Stage::start(dir.path(), None, Some("bench.test")).await;
        // The bench's plan hibernates after 3 idle seconds.
        let db = sea_orm::Database::connect(format!("sqlite://{}?mode=rwc", stage.data_dir.join("clawplane.db").display()))
            .await
            .unwrap();
        sea_orm::ConnectionTrait::execute_unprepared(&db, "UPDATE plans SET hibernate_after_secs = 3 WHERE name = 'pro'")
            .await
            .unwrap();
        let bins = PathBuf::from(env!("CARGO_BIN_EXE_clawplane-agent")).parent().unwrap().to_path_buf();
        let agent_command = stage.agent_command_with(
            Path::new(&openclaw),
            &["--proxy-listen", "127.0.0.1:0", "--hibernation-check-interval", "500ms", "--wake-timeout", "300s"],
        );
        let agent = Killed(spawn_quiet(&agent_command));
        let tenant = stage.running_tenant().await;
        let bridge = start_bridge(&stage, dir.path(), &bins, 1);
        let (jwt, host) = (bench_jwt(), format!("{}.bench.test", tenant.slug));

        // A running idle gateway, settled: 10 s after it answered, before
        // its idle period ends (the bench keeps it busy meanwhile; the first
        // requests may wake it, if it fell asleep while the bridge started).
        for _ in 0..10 {
            first_byte(bridge.port, &host, &jwt).await;
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let pid = gateway_pid(&stage.tenants_dir, &tenant.slug).expect("a gateway");
        let idle_rss = group_rss_kib(pid) << 10;
        let idle_cgroup = cgroup_value("memory", &tenant.id, "memory.usage_in_bytes", "memory.current").unwrap_or(0);
        let agent_rss_running = rss_kib(agent.0.id() as i32) << 10;

        let mut variants = Vec::new();
        for (label, keep_cache) in [("compile cache kept", true), ("compile cache removed before each wake", false)] {
            let mut times = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..wakes {
                let slept = Instant::now();
                while !hibernated(&stage.agent_state, &tenant.id) || gateway_pid(&stage.tenants_dir, &tenant.slug).is_some() {
                    assert!(slept.elapsed() < Duration::from_secs(120), "the tenant never hibernated");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if !keep_cache {
                    // OpenClaw keeps Node's compile cache under the
                    // tenant's TMPDIR (`node-compile-cache`).
                    for entry in walk(&stage.tenants_dir.join(&tenant.slug)) {
                        if entry.file_name().is_some_and(|n| n == "node-compile-cache") {
                            let _ = std::fs::remove_dir_all(&entry);
                        }
                    }
                }
                let cpu_before = cgroup_cpu_secs(&tenant.id);
                let (took, status) = first_byte(bridge.port, &host, &jwt).await;
                assert_eq!(status, 200, "the woken gateway's answer");
                times.push(took);
                cpu.push(cgroup_cpu_secs(&tenant.id) - cpu_before);
            }
            times.sort();
            let cpu_mean = cpu.iter().sum::<f64>() / cpu.len() as f64;
            variants.push((label, times, cpu_mean));
        }
        let agent_rss_hibernated = rss_kib(agent.0.id() as i32) << 10;
        let record_bytes =
            std::fs::metadata(stage.agent_state.join("tenants").join(format!("{}.json", tenant.id))).unwrap().len();

        let gib = |bytes: u64| bytes as f64 / (1u64 << 30) as f64;
        let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
        println!("running idle gateway: {:.0} MiB RSS (process group), {:.0} MiB in its cgroup (page cache included)", mib(idle_rss), mib(idle_cgroup));
        println!(
            "hibernated tenant: 0 processes, 0 bytes in its cgroup; the agent keeps a {record_bytes}-byte record on disk and one map entry (agent RSS {:.1} MiB with the tenant running, {:.1} MiB after {} wakes)",
            mib(agent_rss_running),
            mib(agent_rss_hibernated),
            2 * wakes
        );
        // A 24 GiB host, 10% of tenants active at a time. Always-on: every
        // tenant holds an idle gateway. Hibernating: the active tenth does;
        // the others hold their record (4 KiB rounded up, with the map entry).
        let host = 24u64 << 30;
        let per_hibernated = 4096u64;
        let always_on = host / idle_rss.max(1);
        let hibernating = (host as f64 / (0.1 * idle_rss as f64 + 0.9 * per_hibernated as f64)) as u64;
        println!(
            "tenants on a {:.0} GiB host at 10% activity: always-on {always_on}, hibernating {hibernating} ({:.1}x)",
            gib(host),
            hibernating as f64 / always_on.max(1) as f64
        );
        for (label, times, cpu) in &variants {
            println!(
                "wake, request at the bridge to the gateway's first byte, {label}: p50 {:.1} s, p99 {:.1} s over {} wakes; gateway CPU per wake {:.1} s",
                percentile(times, 0.5).as_secs_f64(),
                percentile(times, 0.99).as_secs_f64(),
                times.len(),
                cpu
            );
        }
        drop(bridge);
        drop(agent);
        // The agent leaves gateways running when it stops, for its next run.
        stage.kill_gateway(&tenant.slug);
    });
}

/// Every path under `root` (directories included), not following links.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}
