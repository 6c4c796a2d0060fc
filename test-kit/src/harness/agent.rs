use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::bin;
use crate::processes::end_processes_under;

/// One host's agent: a state directory and, while running, a process.
///
/// Dropping it ends the agent and every process pointing into its state
/// directory or the tenants directory it was given: the tenant gateways,
/// which outlive the agent by design (a restarted agent adopts them), so
/// [`Agent::kill9`] leaves them running and only the drop ends them.
pub struct Agent {
    pub state_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Every --tenants-dir the agent ran with (the default lies under the
    /// state dir).
    tenants_dirs: Vec<PathBuf>,
    /// The metering model proxy's port: one per agent, kept across its
    /// restarts (tenants' configs name it), so agents of parallel tests
    /// never share one.
    pub model_proxy_port: u16,
}

impl Agent {
    pub fn new(dir: &Path, name: &str) -> Agent {
        Agent {
            state_dir: dir.join(name),
            child: None,
            log: dir.join(format!("{name}.log")),
            tenants_dirs: Vec::new(),
            model_proxy_port: crate::free_port(),
        }
    }

    pub fn join(&self, url: &str, token: &str, pin: &str) -> Output {
        Command::new(bin("clawplane-agent"))
            .args(["join", "--control-plane", url, "--token", token, "--ca-pin", pin, "--state-dir"])
            .arg(&self.state_dir)
            .output()
            .unwrap()
    }

    pub fn host_id(&self) -> String {
        let identity: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.state_dir.join("identity.json")).unwrap()).unwrap();
        identity["host_id"].as_str().unwrap().to_string()
    }

    pub fn run(&mut self) {
        self.run_with(&[]);
    }

    pub fn run_with(&mut self, extra: &[&str]) {
        self.run_env(extra, &[]);
    }

    pub fn run_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        if let Some(at) = extra.iter().position(|a| *a == "--tenants-dir") {
            if let Some(dir) = extra.get(at + 1) {
                self.tenants_dirs.push(PathBuf::from(dir));
            }
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(bin("clawplane-agent"))
            .args(["run", "--state-dir"])
            .arg(&self.state_dir)
            .args(extra)
            // OpenClaw only where a test asks for it with --openclaw-bin.
            .env_remove("CLAWPLANE_OPENCLAW_BIN")
            .env("CLAWPLANE_MODEL_PROXY_LISTEN", format!("127.0.0.1:{}", self.model_proxy_port))
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL to the agent alone, as a crash would: its gateways run on.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Exit status once the agent stops on its own, if within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Command ids in the order the agent executed them.
    pub fn executed(&self) -> Vec<String> {
        std::fs::read_to_string(self.state_dir.join("executed.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let mut survivors = Vec::new();
        for root in std::iter::once(&self.state_dir).chain(&self.tenants_dirs) {
            survivors.extend(end_processes_under(root).into_iter().filter(|p| p.still_running));
        }
        // The leak check: nothing this agent started runs on after it.
        if !std::thread::panicking() {
            assert!(
                survivors.is_empty(),
                "processes of the agent {} outlived it: {survivors:#?}",
                self.state_dir.display()
            );
        }
    }
}
