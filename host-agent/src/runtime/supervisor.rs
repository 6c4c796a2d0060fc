//! Keeps each process tenant's `openclaw gateway run` alive: restarts it
//! with backoff when it dies, restarts it on request, stops it (SIGTERM to
//! its process group, SIGKILL after 10 s). With cgroups, the gateway starts
//! in its tenant's cgroup; a death the OOM killer caused is reported as
//! such, and a gateway that stays above its memory soft limit for the
//! window is restarted.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};

use super::limits::{human_bytes, human_duration, join_at_spawn, Limits};
use super::records::Resources;
use super::users::chown;
use crate::openclaw::cli::{kill_group, OpenClawCli, TenantEnv};
use crate::retry::{Backoff, Retries};

/// What a supervisor reports about its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayPhase {
    Starting,
    Running,
    Backoff,
    Stopped,
    Failed,
    /// Stopped after its idle period; starts on the next request.
    Hibernated,
}

#[derive(Debug, Clone)]
pub struct GatewayState {
    pub phase: GatewayPhase,
    pub restarts: u32,
    pub last_error: String,
    pub pid: Option<u32>,
    pub since: SystemTime,
    /// Kills by the kernel at the memory limit, and restarts above the
    /// soft limit, since the supervisor started.
    pub memory_kills: u32,
    /// Stopped restarting after its budget of failed starts; waits to be
    /// asked again.
    pub given_up: bool,
}

/// What it takes to run one tenant's gateway.
#[derive(Debug, Clone)]
pub struct GatewayLaunch {
    pub tenant_id: String,
    pub openclaw: OpenClawCli,
    pub env: TenantEnv,
    /// The tenant's tree: `gateway.pid` and `logs/` are under it.
    pub root: PathBuf,
    /// The tenant's cgroups, and its limits.
    pub limits: Arc<Limits>,
    pub resources: Resources,
    /// Failed starts in a row before the supervisor gives up.
    pub restart_budget: u32,
}

/// A gateway that died and ran this long starts the failure count over.
const STABLE_GATEWAY: Duration = Duration::from_secs(60);

struct Supervisor {
    stop: watch::Sender<bool>,
    restart: Arc<Notify>,
    state: Arc<Mutex<GatewayState>>,
    resources: Arc<Mutex<Resources>>,
    task: tokio::task::JoinHandle<()>,
}

/// The supervisors of this host's gateways, by tenant id.
#[derive(Default)]
pub struct Supervisors {
    running: Mutex<HashMap<String, Supervisor>>,
    /// Set when the agent stops: gateways are left running for the next
    /// agent to adopt, instead of dying with their handles.
    leave_running: Arc<AtomicBool>,
}

impl Supervisors {
    /// Starts the supervisor of a tenant's gateway if none runs; a running
    /// one takes the launch's resources (its soft limit and the reports),
    /// and one that gave up starts again.
    pub fn ensure(&self, launch: GatewayLaunch) {
        let mut running = self.running.lock().unwrap();
        if let Some(supervisor) = running.get(&launch.tenant_id).filter(|s| !s.task.is_finished()) {
            *supervisor.resources.lock().unwrap() = launch.resources;
            if supervisor.state.lock().unwrap().given_up {
                supervisor.restart.notify_one();
            }
            return;
        }
        let (stop, stop_rx) = watch::channel(false);
        let restart = Arc::new(Notify::new());
        let state = Arc::new(Mutex::new(GatewayState {
            phase: GatewayPhase::Starting,
            restarts: 0,
            last_error: String::new(),
            pid: None,
            since: SystemTime::now(),
            memory_kills: 0,
            given_up: false,
        }));
        let tenant_id = launch.tenant_id.clone();
        let resources = Arc::new(Mutex::new(launch.resources.clone()));
        let watch =
            Watch { stop: stop_rx, restart: restart.clone(), state: state.clone(), resources: resources.clone() };
        let task = tokio::spawn(supervise(launch, watch, self.leave_running.clone()));
        running.insert(tenant_id, Supervisor { stop, restart, state, resources, task });
    }

    pub fn state(&self, tenant_id: &str) -> Option<GatewayState> {
        self.running.lock().unwrap().get(tenant_id).map(|s| s.state.lock().unwrap().clone())
    }

    /// The gateway answered its readiness check.
    pub fn mark_running(&self, tenant_id: &str) {
        if let Some(supervisor) = self.running.lock().unwrap().get(tenant_id) {
            let mut state = supervisor.state.lock().unwrap();
            if state.phase == GatewayPhase::Starting {
                state.phase = GatewayPhase::Running;
                state.since = SystemTime::now();
            }
        }
    }

    /// Asks a running supervisor for a fresh gateway; false if there is none.
    pub fn request_restart(&self, tenant_id: &str) -> bool {
        let restart = self.running.lock().unwrap().get(tenant_id).map(|s| s.restart.clone());
        match restart {
            Some(restart) => {
                restart.notify_one();
                true
            }
            None => false,
        }
    }

    /// Stops a gateway (SIGTERM to its process group, SIGKILL after 10 s).
    pub async fn stop(&self, tenant_id: &str) {
        let supervisor = self.running.lock().unwrap().remove(tenant_id);
        if let Some(supervisor) = supervisor {
            let _ = supervisor.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(15), supervisor.task).await;
        }
    }

    /// From now on, a supervisor dropped with the agent's runtime leaves
    /// its gateway running.
    pub fn leave_running(&self) {
        self.leave_running.store(true, Ordering::SeqCst);
    }
}

/// What a supervisor task listens to and reports into.
struct Watch {
    stop: watch::Receiver<bool>,
    restart: Arc<Notify>,
    state: Arc<Mutex<GatewayState>>,
    /// The tenant's current resources (a re-provision updates them).
    resources: Arc<Mutex<Resources>>,
}

/// The gateway's process handle: dropped with the task, it kills the
/// gateway (kill_on_drop), unless the agent is stopping and leaves it.
struct GatewayChild {
    child: Option<tokio::process::Child>,
    leave_running: Arc<AtomicBool>,
}

impl Drop for GatewayChild {
    fn drop(&mut self) {
        if self.leave_running.load(Ordering::SeqCst) {
            // The next agent run finds it by gateway.pid (adopt_all).
            std::mem::forget(self.child.take());
        }
    }
}

/// Runs a tenant's gateway, restarting it with backoff when it dies, until
/// told to stop.
async fn supervise(launch: GatewayLaunch, mut watch: Watch, leave_running: Arc<AtomicBool>) {
    let GatewayLaunch { tenant_id, openclaw, env, root, limits, resources: _, restart_budget } = launch;
    let mut failures = Retries::new(Backoff::GATEWAY_RESTART, STABLE_GATEWAY);
    let port = env.gateway_port.to_string();
    let state = watch.state.clone();
    loop {
        if *watch.stop.borrow() {
            break;
        }
        // The child becomes the tenant's user itself, after joining its
        // cgroup as root (join_at_spawn).
        let as_root = TenantEnv { user: None, ..env.clone() };
        let mut command =
            openclaw.command(&as_root, &["gateway", "run", "--bind", "loopback", "--port", &port, "--auth", "token"]);
        let stderr_path = root.join("logs").join("gateway.stderr.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&stderr_path).ok();
        if let Some(file) = &stderr {
            let _ = chown(&stderr_path, env.user);
            command.stderr(
                file.try_clone().map(std::process::Stdio::from).unwrap_or_else(|_| std::process::Stdio::null()),
            );
        }
        command.stdout(std::process::Stdio::null());
        let resources = watch.resources.lock().unwrap().clone();
        // The cgroup is (re)made before every start: a host reboot empties
        // them. A limited gateway never runs outside it.
        let procs = match cgroup_files(&limits, &tenant_id, &resources) {
            Ok(procs) => Ok(procs),
            Err(err) if resources.limited() => Err(err),
            Err(err) => {
                tracing::warn!(tenant = %tenant_id, error = %err, "gateway starts outside a cgroup (no limits)");
                Ok(Vec::new())
            }
        };
        let oom_kills_before = limits.usage(&tenant_id).map(|usage| usage.oom_kills).unwrap_or(0);
        let spawned = procs.map_err(|err| err.to_string()).and_then(|procs| {
            join_at_spawn(command.as_std_mut(), &procs, env.user);
            command.spawn().map_err(|err| err.to_string())
        });
        let started = Instant::now();
        let child = match spawned {
            Ok(child) => child,
            Err(err) => {
                {
                    let mut s = state.lock().unwrap();
                    s.phase = GatewayPhase::Failed;
                    s.last_error = format!("cannot start the gateway: {err}");
                }
                let delay = failures.next_delay();
                if failures.count() >= restart_budget {
                    match give_up(&tenant_id, &state, &mut watch, restart_budget).await {
                        Some(fresh) => {
                            failures = fresh;
                            continue;
                        }
                        None => break,
                    }
                }
                if wait_or_stop(&mut watch.stop, delay).await {
                    break;
                }
                continue;
            }
        };
        let mut child = GatewayChild { child: Some(child), leave_running: leave_running.clone() };
        let process = child.child.as_mut().expect("just spawned");
        let pid = process.id();
        if let Some(pid) = pid {
            let _ = std::fs::write(root.join("gateway.pid"), pid.to_string());
        }
        {
            let mut s = state.lock().unwrap();
            s.phase = GatewayPhase::Starting;
            s.pid = pid;
            s.since = SystemTime::now();
        }
        // Running once it answers /readyz, whoever started it (a crash
        // restart, an adopted tenant): hibernation and reports go by it.
        let readiness = tokio::spawn(mark_when_ready(env.gateway_port, pid, state.clone()));
        let mut requested = false;
        let mut above_soft_limit = None;
        let exit = tokio::select! {
            exit = process.wait() => exit.ok(),
            _ = watch.stop.changed() => { requested = true; None }
            _ = watch.restart.notified() => { requested = true; None }
            soft = above_soft_limit_for_window(&limits, &tenant_id, &watch.resources) => {
                above_soft_limit = Some(soft);
                None
            }
        };
        readiness.abort();
        if let Some(soft) = above_soft_limit {
            // As on request, and then as a death: counted, with backoff.
            stop_gateway(process, pid, &root).await;
            let delay = failures.after(started.elapsed());
            let reason = format!(
                "restarted: above the {} memory soft limit for {}",
                human_bytes(soft),
                human_duration(limits.soft_window)
            );
            tracing::warn!(tenant = %tenant_id, soft_limit = %human_bytes(soft), window = %human_duration(limits.soft_window), "gateway stayed above its memory soft limit; restarting it");
            {
                let mut s = state.lock().unwrap();
                s.phase = GatewayPhase::Backoff;
                s.restarts += 1;
                s.memory_kills += 1;
                s.pid = None;
                s.last_error = reason;
            }
            if wait_or_stop(&mut watch.stop, delay).await {
                break;
            }
            continue;
        }
        if requested {
            stop_gateway(process, pid, &root).await;
            if *watch.stop.borrow() {
                break;
            }
            state.lock().unwrap().restarts += 1;
            continue;
        }
        // The gateway died on its own.
        let _ = std::fs::remove_file(root.join("gateway.pid"));
        if let Some(pid) = pid {
            kill_group(pid, libc::SIGKILL);
        }
        let delay = failures.after(started.elapsed());
        let tail = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let last: Vec<&str> = tail.lines().rev().take(3).collect();
        let oom_killed = limits.usage(&tenant_id).is_some_and(|usage| usage.oom_kills > oom_kills_before);
        let limit = watch.resources.lock().unwrap().memory_bytes;
        if oom_killed {
            tracing::warn!(tenant = %tenant_id, limit = %human_bytes(limit), "gateway killed at its memory limit (out of memory)");
        }
        {
            let mut s = state.lock().unwrap();
            s.phase = GatewayPhase::Backoff;
            s.restarts += 1;
            s.pid = None;
            s.last_error = if oom_killed {
                s.memory_kills += 1;
                format!("restarted: out of memory at the {} limit", human_bytes(limit))
            } else {
                format!(
                    "gateway exited with {:?}: {}",
                    exit.and_then(|e| e.code()),
                    last.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )
            };
        }
        if failures.count() >= restart_budget {
            match give_up(&tenant_id, &state, &mut watch, restart_budget).await {
                Some(fresh) => {
                    failures = fresh;
                    continue;
                }
                None => break,
            }
        }
        tracing::warn!(tenant = %tenant_id, failures = failures.count(), "gateway died; restarting with backoff");
        if wait_or_stop(&mut watch.stop, delay).await {
            break;
        }
    }
    let mut s = state.lock().unwrap();
    s.phase = GatewayPhase::Stopped;
    s.pid = None;
}

/// The tenant cgroup's `cgroup.procs` files, with its limits set; none
/// when the host has no cgroups and the tenant no limits.
fn cgroup_files(limits: &Limits, tenant_id: &str, resources: &Resources) -> super::RuntimeResult<Vec<std::fs::File>> {
    if !limits.available() && !resources.limited() {
        return Ok(Vec::new());
    }
    limits.check(resources)?;
    limits.apply(tenant_id, resources)?;
    limits.procs_files(tenant_id)
}

/// Returns the soft limit once the gateway's memory stayed above it for a
/// whole window; never without a soft limit or cgroups. Samples a few
/// times per window (one file read each).
async fn above_soft_limit_for_window(limits: &Limits, tenant_id: &str, resources: &Mutex<Resources>) -> u64 {
    let window = limits.soft_window;
    let every = (window / 10).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut above_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(every).await;
        let soft = resources.lock().unwrap().memory_soft_bytes;
        let used = if soft > 0 { limits.usage(tenant_id).map(|usage| usage.memory_bytes) } else { None };
        match used {
            Some(used) if used > soft => {
                let since = *above_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= window {
                    return soft;
                }
            }
            _ => above_since = None,
        }
    }
}

/// Ends a running gateway: SIGTERM to its process group, SIGKILL after
/// 10 s; then its pid file goes.
async fn stop_gateway(process: &mut tokio::process::Child, pid: Option<u32>, root: &std::path::Path) {
    if let Some(pid) = pid {
        kill_group(pid, libc::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(10), process.wait()).await.is_err() {
            kill_group(pid, libc::SIGKILL);
            let _ = process.wait().await;
        }
    }
    let _ = std::fs::remove_file(root.join("gateway.pid"));
}

/// A gateway that failed `budget` starts in a row: FAILED with its last
/// reason until a restart is asked for (a fresh count then), or None when
/// asked to stop.
async fn give_up(tenant_id: &str, state: &Mutex<GatewayState>, watch: &mut Watch, budget: u32) -> Option<Retries> {
    let reason = {
        let mut s = state.lock().unwrap();
        s.phase = GatewayPhase::Failed;
        s.given_up = true;
        s.last_error = format!("gave up after {budget} failed starts in a row; the last: {}", s.last_error);
        s.last_error.clone()
    };
    tracing::error!(tenant = %tenant_id, %reason, "gateway keeps failing; not restarting it");
    let again = tokio::select! {
        _ = watch.stop.changed() => None,
        _ = watch.restart.notified() => Some(Retries::new(Backoff::GATEWAY_RESTART, STABLE_GATEWAY)),
    };
    state.lock().unwrap().given_up = false;
    again
}

/// Marks the gateway `pid` Running once its port answers `/readyz`.
async fn mark_when_ready(port: u16, pid: Option<u32>, state: Arc<Mutex<GatewayState>>) {
    loop {
        if super::readiness::http_status(port, "/readyz").await == Some(200) {
            let mut s = state.lock().unwrap();
            if s.pid == pid && s.phase == GatewayPhase::Starting {
                s.phase = GatewayPhase::Running;
                s.since = SystemTime::now();
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sleeps `delay`; true if asked to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
