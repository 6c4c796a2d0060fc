//! Keeps each process tenant's `openclaw gateway run` alive: restarts it
//! with backoff when it dies, restarts it on request, stops it (SIGTERM to
//! its process group, SIGKILL after 10 s).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};

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
}

#[derive(Debug, Clone)]
pub struct GatewayState {
    pub phase: GatewayPhase,
    pub restarts: u32,
    pub last_error: String,
    pub pid: Option<u32>,
    pub since: SystemTime,
}

/// What it takes to run one tenant's gateway.
#[derive(Debug, Clone)]
pub struct GatewayLaunch {
    pub tenant_id: String,
    pub openclaw: OpenClawCli,
    pub env: TenantEnv,
    /// The tenant's tree: `gateway.pid` and `logs/` are under it.
    pub root: PathBuf,
}

/// A gateway that died and ran this long starts the failure count over.
const STABLE_GATEWAY: Duration = Duration::from_secs(60);

struct Supervisor {
    stop: watch::Sender<bool>,
    restart: Arc<Notify>,
    state: Arc<Mutex<GatewayState>>,
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
    /// Starts the supervisor of a tenant's gateway if none runs.
    pub fn ensure(&self, launch: GatewayLaunch) {
        let mut running = self.running.lock().unwrap();
        if running.get(&launch.tenant_id).is_some_and(|s| !s.task.is_finished()) {
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
        }));
        let tenant_id = launch.tenant_id.clone();
        let watch = Watch { stop: stop_rx, restart: restart.clone(), state: state.clone() };
        let task = tokio::spawn(supervise(launch, watch, self.leave_running.clone()));
        running.insert(tenant_id, Supervisor { stop, restart, state, task });
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
    let GatewayLaunch { tenant_id, openclaw, env, root } = launch;
    let mut failures = Retries::new(Backoff::GATEWAY_RESTART, STABLE_GATEWAY);
    let port = env.gateway_port.to_string();
    let state = watch.state.clone();
    loop {
        if *watch.stop.borrow() {
            break;
        }
        let mut command =
            openclaw.command(&env, &["gateway", "run", "--bind", "loopback", "--port", &port, "--auth", "token"]);
        let stderr_path = root.join("logs").join("gateway.stderr.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&stderr_path).ok();
        if let Some(file) = &stderr {
            let _ = chown(&stderr_path, env.user);
            command.stderr(
                file.try_clone().map(std::process::Stdio::from).unwrap_or_else(|_| std::process::Stdio::null()),
            );
        }
        command.stdout(std::process::Stdio::null());
        let started = Instant::now();
        let child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                {
                    let mut s = state.lock().unwrap();
                    s.phase = GatewayPhase::Failed;
                    s.last_error = format!("cannot start the gateway: {err}");
                }
                if wait_or_stop(&mut watch.stop, failures.next_delay()).await {
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
        let mut requested = false;
        let exit = tokio::select! {
            exit = process.wait() => exit.ok(),
            _ = watch.stop.changed() => { requested = true; None }
            _ = watch.restart.notified() => { requested = true; None }
        };
        if requested {
            if let Some(pid) = pid {
                kill_group(pid, libc::SIGTERM);
                if tokio::time::timeout(Duration::from_secs(10), process.wait()).await.is_err() {
                    kill_group(pid, libc::SIGKILL);
                    let _ = process.wait().await;
                }
            }
            let _ = std::fs::remove_file(root.join("gateway.pid"));
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
        {
            let mut s = state.lock().unwrap();
            s.phase = GatewayPhase::Backoff;
            s.restarts += 1;
            s.pid = None;
            s.last_error = format!(
                "gateway exited with {:?}: {}",
                exit.and_then(|e| e.code()),
                last.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
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

/// Sleeps `delay`; true if asked to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
