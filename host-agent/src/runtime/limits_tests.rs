//! Limits on real cgroups: they run where the agent may manage cgroups (as
//! root, with v1 or v2 writable) and say why they skip elsewhere. Every
//! process they start ends with them, panics included (guards kill what is
//! left in the test's cgroups, then remove them).
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{TenantSettings, DEFAULT_MEMORY_SOFT_WINDOW};
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{Runtime, TenantRecord};

/// Limits under a parent of the test's own, removed with it.
struct TestCgroups {
    limits: Limits,
    parent: String,
}

impl TestCgroups {
    fn new(soft_window: Duration) -> Option<TestCgroups> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: cgroup tests need root");
            return None;
        }
        let parent = format!("clawplane-test/{}", uuid());
        let settings = LimitSettings { cgroup_parent: Some(parent.clone()), memory_soft_window: soft_window };
        let limits = Limits::detect(&settings);
        if let Some(reason) = limits.unavailable() {
            eprintln!("skipped: cgroups are not writable here: {reason}");
            return None;
        }
        Some(TestCgroups { limits, parent })
    }

    fn tenant(&self) -> TestTenant<'_> {
        TestTenant { limits: &self.limits, id: uuid() }
    }
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        for dir in self.limits.dirs(&uuid()).unwrap_or_default() {
            let parent = dir.parent().unwrap();
            let tenants = std::fs::read_dir(parent).into_iter().flatten().flatten();
            for tenant in tenants.filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir())) {
                kill_and_remove(&tenant.path());
            }
            kill_and_remove(parent);
            // `clawplane-test` itself, unless another test still uses it.
            let _ = std::fs::remove_dir(parent.parent().unwrap());
        }
    }
}

/// A tenant cgroup, emptied and removed when the test ends.
struct TestTenant<'a> {
    limits: &'a Limits,
    id: String,
}

impl TestTenant<'_> {
    fn apply(&self, resources: &Resources) {
        self.limits.apply(&self.id, resources).unwrap();
    }

    /// Spawns `python3 -c <script>` in the tenant's cgroup.
    fn spawn_python(&self, script: &str) -> Reaped {
        let mut command = std::process::Command::new("python3");
        command.args(["-c", script]).stdout(std::process::Stdio::piped());
        let procs = self.limits.procs_files(&self.id).unwrap();
        join_at_spawn(&mut command, &procs, None);
        Reaped(Some(command.spawn().unwrap()))
    }

    /// A file of the tenant's cgroup, of the controller it starts with.
    fn file(&self, name: &str) -> String {
        let relative = self.limits.relative(&self.id).unwrap();
        let root = match &self.limits.support {
            Support::V1 { memory, cpu, pids, .. } => match name.split('.').next().unwrap() {
                "cpu" => cpu,
                "pids" => pids,
                _ => memory,
            }
            .clone(),
            _ => Path::new(CGROUP_ROOT).to_path_buf(),
        };
        std::fs::read_to_string(root.join(relative).join(name)).unwrap().trim().to_string()
    }
}

impl Drop for TestTenant<'_> {
    fn drop(&mut self) {
        for dir in self.limits.dirs(&self.id).unwrap_or_default() {
            kill_and_remove(&dir);
        }
    }
}

/// Kills what runs in a cgroup directory and removes it (a few tries: the
/// kernel lets go of the dead asynchronously).
fn kill_and_remove(dir: &Path) {
    for _ in 0..50 {
        if !dir.exists() {
            return;
        }
        for pid in read_pids(&dir.join("cgroup.procs")) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child killed and waited for when the test ends.
struct Reaped(Option<std::process::Child>);

impl Reaped {
    fn wait_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

const MIB: u64 = 1 << 20;

#[test]
fn a_process_above_its_memory_limit_is_oom_killed_and_counted() {
    let Some(cgroups) = TestCgroups::new(DEFAULT_MEMORY_SOFT_WINDOW) else { return };
    let tenant = cgroups.tenant();
    tenant.apply(&Resources { memory_bytes: 64 * MIB, ..Default::default() });
    assert_eq!(cgroups.limits.usage(&tenant.id).unwrap().oom_kills, 0);
    let output = tenant.spawn_python("blob = b'x' * (256 << 20)\nprint('survived')").wait_output();
    assert_eq!(output.status.signal(), Some(libc::SIGKILL), "{output:?}");
    assert!(output.stdout.is_empty());
    assert_eq!(cgroups.limits.usage(&tenant.id).unwrap().oom_kills, 1);
    // Below the limit, the same process lives.
    let output = tenant.spawn_python("blob = b'x' * (16 << 20)\nprint('survived')").wait_output();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(cgroups.limits.usage(&tenant.id).unwrap().oom_kills, 1);
}

#[test]
fn a_fork_loop_stops_at_the_pids_limit() {
    let Some(cgroups) = TestCgroups::new(DEFAULT_MEMORY_SOFT_WINDOW) else { return };
    let tenant = cgroups.tenant();
    tenant.apply(&Resources { pids: 16, ..Default::default() });
    assert_eq!(tenant.file("pids.max"), "16");
    // Children wait on a pipe the parent holds: they exit with it.
    let script = "import os\n\
                  r, w = os.pipe()\n\
                  n, err = 0, 0\n\
                  for _ in range(64):\n\
                  \x20   try:\n\
                  \x20       pid = os.fork()\n\
                  \x20   except OSError as e:\n\
                  \x20       err = e.errno\n\
                  \x20       break\n\
                  \x20   if pid == 0:\n\
                  \x20       os.close(w)\n\
                  \x20       os.read(r, 1)\n\
                  \x20       os._exit(0)\n\
                  \x20   n += 1\n\
                  print(n, err)\n";
    let output = tenant.spawn_python(script).wait_output();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (forks, errno) = text.trim().split_once(' ').unwrap();
    let forks: u32 = forks.parse().unwrap();
    assert!(forks < 16, "{forks} children besides the parent under pids.max 16");
    assert_eq!(errno.parse::<i32>().unwrap(), libc::EAGAIN, "fork was refused");
}

#[test]
fn cpu_memory_and_pids_limits_are_written_and_updated_live() {
    let Some(cgroups) = TestCgroups::new(DEFAULT_MEMORY_SOFT_WINDOW) else { return };
    let tenant = cgroups.tenant();
    let v2 = cgroups.limits.version() == "v2";
    let cpu = |tenant: &TestTenant| {
        if v2 {
            tenant.file("cpu.max")
        } else {
            format!("{} {}", tenant.file("cpu.cfs_quota_us"), tenant.file("cpu.cfs_period_us"))
        }
    };
    let memory = |tenant: &TestTenant| tenant.file(if v2 { "memory.max" } else { "memory.limit_in_bytes" });
    tenant.apply(&Resources { cpus: 1.5, memory_bytes: 256 * MIB, pids: 64, ..Default::default() });
    assert_eq!(cpu(&tenant), "150000 100000");
    assert_eq!(memory(&tenant), (256 * MIB).to_string());
    assert_eq!(tenant.file("pids.max"), "64");
    // A process in it stays while the limits change.
    let sleeper = tenant.spawn_python("import time; time.sleep(600)");
    let pid = sleeper.0.as_ref().unwrap().id();
    tenant.apply(&Resources { cpus: 0.5, memory_bytes: 128 * MIB, pids: 32, ..Default::default() });
    assert_eq!(cpu(&tenant), "50000 100000");
    assert_eq!(memory(&tenant), (128 * MIB).to_string());
    assert_eq!(tenant.file("pids.max"), "32");
    assert!(read_pids(&cgroups.limits.dirs(&tenant.id).unwrap()[0].join("cgroup.procs")).contains(&(pid as i32)));
    let usage = cgroups.limits.usage(&tenant.id).unwrap();
    assert!(usage.memory_bytes > 0, "{usage:?}");
    tenant.apply(&Resources::default());
    assert_eq!(cpu(&tenant), if v2 { "max 100000".to_string() } else { "-1 100000".to_string() });
    assert_eq!(tenant.file("pids.max"), "max");
    drop(sleeper);
}

#[tokio::test]
async fn removing_a_tenant_cgroup_kills_what_is_left_and_deletes_its_dirs() {
    let Some(cgroups) = TestCgroups::new(DEFAULT_MEMORY_SOFT_WINDOW) else { return };
    let tenant = cgroups.tenant();
    tenant.apply(&Resources { memory_bytes: 128 * MIB, ..Default::default() });
    let dirs = cgroups.limits.dirs(&tenant.id).unwrap();
    assert!(dirs.iter().all(|dir| dir.is_dir()));
    let mut sleeper = tenant.spawn_python("import time; time.sleep(600)");
    cgroups.limits.remove(&tenant.id).await.unwrap();
    assert!(dirs.iter().all(|dir| !dir.exists()), "{dirs:?}");
    let status = sleeper.0.take().unwrap().wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    cgroups.limits.remove(&tenant.id).await.unwrap();
}

#[test]
fn limits_are_refused_where_they_cannot_be_enforced() {
    let off = Limits::detect(&LimitSettings::off());
    assert_eq!(off.version(), "");
    off.check(&Resources::default()).unwrap();
    let err = off.check(&Resources { memory_bytes: 64 * MIB, ..Default::default() }).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Invalid(m) if m.starts_with("this host cannot enforce memory limits: ")),
        "{err}"
    );
    let err = off.check(&Resources { pids: 8, ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("cannot enforce process limits"), "{err}");
    let bad = Limits::detect(&LimitSettings { cgroup_parent: Some("../etc".into()), ..Default::default() });
    assert!(bad.unavailable().unwrap().contains("not a relative path"));
    assert!(off.relative("../../x").is_err());
}

#[test]
fn sizes_and_windows_read_as_people_write_them() {
    assert_eq!(human_bytes(1536 * MIB), "1.5 GiB");
    assert_eq!(human_bytes(64 * MIB), "64 MiB");
    assert_eq!(human_bytes(1288490189), "1.2 GiB");
    assert_eq!(human_bytes(2 << 30), "2 GiB");
    assert_eq!(human_duration(Duration::from_secs(60)), "60 s");
    assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
}

// The process runtime and its supervisor, with the stand-in gateway.

/// A process runtime in a temp dir with its own cgroup parent.
struct Host {
    dir: tempfile::TempDir,
    runtime: Arc<ProcessRuntime>,
    cgroups: TestCgroups,
}

impl Host {
    fn new(soft_window: Duration) -> Option<Host> {
        let cgroups = TestCgroups::new(soft_window)?;
        let dir = tempfile::tempdir().unwrap();
        let runtime = ProcessRuntime::new(TenantSettings {
            limits: LimitSettings { cgroup_parent: Some(cgroups.parent.clone()), memory_soft_window: soft_window },
            ..TenantSettings::stand_in(dir.path())
        })
        .unwrap();
        Some(Host { dir, runtime, cgroups })
    }

    /// The next gateway to start holds `mib` MiB.
    fn next_gateway_holds(&self, mib: u64) {
        std::fs::write(self.dir.path().join("gateway-alloc-mib"), mib.to_string()).unwrap();
    }

    fn record(&self, tenant_id: &str) -> TenantRecord {
        self.runtime.records().get(tenant_id).unwrap()
    }
}

/// The gateway's pid, from its pid file.
fn gateway_pid(host: &Host) -> String {
    std::fs::read_to_string(host.dir.path().join("tenants/alice/gateway.pid")).unwrap()
}

// On a panic, the test's cgroups go with `TestCgroups` (what runs in them
// is killed) and each gateway with its supervisor task (kill on drop).

#[tokio::test]
async fn a_gateway_killed_at_its_memory_limit_is_restarted_with_the_reason() {
    let Some(host) = Host::new(DEFAULT_MEMORY_SOFT_WINDOW) else { return };
    let tenant_id = uuid();
    let limited = Resources { memory_bytes: 64 * MIB, ..Default::default() };
    host.next_gateway_holds(256);
    // The first gateway dies at the limit; the restarted one answers.
    host.runtime.provision(&tenant_id, "alice", &[], "", &limited).await.unwrap();
    let report = host.runtime.gateway(&host.record(&tenant_id));
    assert_eq!(report.last_error, "restarted: out of memory at the 64 MiB limit");
    assert_eq!(report.restarts, 1);
    assert_eq!(report.usage.memory_kills, 1);
    assert_eq!(report.usage.memory_limit_bytes, 64 * MIB);
    assert!(report.usage.memory_used_bytes > 0, "{:?}", report.usage);
    assert_eq!(host.cgroups.limits.usage(&tenant_id).unwrap().oom_kills, 1);

    // A re-provision with other resources: record and cgroup, live.
    let pid = gateway_pid(&host);
    let more = Resources { memory_bytes: 128 * MIB, cpus: 1.0, pids: 64, ..Default::default() };
    host.runtime.provision(&tenant_id, "alice", &[], "", &more).await.unwrap();
    assert_eq!(host.record(&tenant_id).resources, more);
    let memory_dir = host.cgroups.limits.dirs(&tenant_id).unwrap()[0].clone();
    let limit_file = if host.cgroups.limits.version() == "v2" { "memory.max" } else { "memory.limit_in_bytes" };
    assert_eq!(std::fs::read_to_string(memory_dir.join(limit_file)).unwrap().trim(), (128 * MIB).to_string());
    assert_eq!(gateway_pid(&host), pid, "no restart");
    assert_eq!(host.runtime.gateway(&host.record(&tenant_id)).usage.memory_limit_bytes, 128 * MIB);

    host.runtime.delete(&tenant_id, false).await.unwrap();
    let dirs = host.cgroups.limits.dirs(&tenant_id).unwrap();
    assert!(dirs.iter().all(|dir| !dir.exists()), "deleting the tenant removes its cgroup: {dirs:?}");
}

#[tokio::test]
async fn a_gateway_above_its_soft_limit_for_the_window_is_restarted() {
    let window = Duration::from_secs(1);
    let Some(host) = Host::new(window) else { return };
    let tenant_id = uuid();
    let soft = Resources { memory_soft_bytes: 48 * MIB, ..Default::default() };
    host.next_gateway_holds(96);
    host.runtime.provision(&tenant_id, "alice", &[], "", &soft).await.unwrap();
    // Bounded only so a broken watchdog fails instead of hanging.
    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        let report = host.runtime.gateway(&host.record(&tenant_id));
        if report.usage.memory_kills > 0 {
            break report;
        }
        assert!(Instant::now() < deadline, "never restarted: {report:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(report.last_error, "restarted: above the 48 MiB memory soft limit for 1 s");
    assert_eq!(report.usage.memory_kills, 1);
    assert_eq!(report.usage.memory_limit_bytes, 0, "no hard limit");
    // The restarted gateway (without the ballast) stays.
    host.runtime.restart(&tenant_id).await.unwrap();
    assert_eq!(host.runtime.gateway(&host.record(&tenant_id)).usage.memory_kills, 1);
    host.runtime.delete(&tenant_id, false).await.unwrap();
}

#[tokio::test]
async fn a_host_without_cgroups_refuses_limited_tenants_and_reports_rss() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(TenantSettings::stand_in(dir.path())).unwrap();
    let tenant_id = uuid();
    let limited = Resources { memory_bytes: 256 * MIB, ..Default::default() };
    let err = runtime.provision(&tenant_id, "alice", &[], "", &limited).await.err().expect("refused");
    assert!(err.to_string().starts_with("this host cannot enforce memory limits: "), "{err}");
    assert!(runtime.records().get(&tenant_id).is_none(), "nothing was created");
    assert_eq!(runtime.limits_support().0, "");

    runtime.provision(&tenant_id, "alice", &[], "", &Resources::default()).await.unwrap();
    let report = runtime.gateway(&runtime.records().get(&tenant_id).unwrap());
    runtime.delete(&tenant_id, false).await.unwrap();
    assert!(report.usage.memory_used_bytes > 0, "the gateway group's RSS: {:?}", report.usage);
    assert_eq!(report.usage.memory_limit_bytes, 0);
}
