//! Every call of the `openclaw` CLI goes through here: an argument vector
//! (never a shell), a cleared environment, the tenant's own OS user, a
//! timeout that kills the whole process group, and captured output.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

/// Who a process runs as and where its OpenClaw state lives.
#[derive(Debug, Clone)]
pub struct TenantEnv {
    /// OS user (uid, gid); None runs as the agent's own user.
    pub user: Option<(u32, u32)>,
    pub home: PathBuf,
    pub state_dir: PathBuf,
    pub tmp_dir: PathBuf,
    pub gateway_port: u16,
    /// Keep the agent's own environment (PATH, DOCKER_*) instead of a
    /// cleared one: for `openclaw fleet`, which runs as the agent and drives
    /// the host's container engine, never for calls as a tenant.
    pub inherit_env: bool,
}

/// What a finished CLI call left behind.
#[derive(Debug, Clone)]
pub struct CliOutput {
    pub success: bool,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CliOutput {
    /// The most useful error text: OpenClaw's JSON error message if it
    /// printed one, else the last lines of stderr.
    pub fn error_message(&self) -> String {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(self.stdout.trim()) {
            if let Some(message) = value.pointer("/error/message").and_then(|m| m.as_str()) {
                return message.to_string();
            }
            if let Some(errors) = value.get("errors").and_then(|e| e.as_array()) {
                let messages: Vec<&str> = errors.iter().filter_map(|e| e.get("message")?.as_str()).collect();
                if !messages.is_empty() {
                    return messages.join("; ");
                }
            }
        }
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n");
        if tail.is_empty() {
            format!("openclaw exited with {:?} and printed nothing", self.exit_code)
        } else {
            tail
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot start {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("openclaw {command} did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
}

/// Longest output kept from one call (the rest is cut, marked).
const MAX_OUTPUT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct OpenClawCli {
    bin: PathBuf,
}

impl OpenClawCli {
    pub fn new(bin: &Path) -> Self {
        OpenClawCli { bin: bin.to_path_buf() }
    }

    /// The command for a tenant: cleared environment with only what
    /// OpenClaw needs, the tenant's user, its own process group.
    pub fn command(&self, env: &TenantEnv, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.args(args);
        if !env.inherit_env {
            command.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
        }
        command
            .env("LANG", "C.UTF-8")
            .env("HOME", &env.home)
            .env("OPENCLAW_HOME", &env.home)
            .env("OPENCLAW_STATE_DIR", &env.state_dir)
            .env("TMPDIR", &env.tmp_dir)
            .env("OPENCLAW_OFFLINE", "1")
            .env("OPENCLAW_GATEWAY_PORT", env.gateway_port.to_string())
            .current_dir(&env.home)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if let Some((uid, gid)) = env.user {
            // std drops the supplementary groups (root's) itself when root
            // changes uid, before exec.
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Runs `openclaw <args>` to completion or kills it at `timeout`.
    pub async fn run(&self, env: &TenantEnv, args: &[&str], timeout: Duration) -> Result<CliOutput, CliError> {
        let command = self.command(env, args);
        run_to_end(command, &self.bin.display().to_string(), args, timeout).await
    }

    /// Runs `openclaw <args>` inside a fleet cell's container
    /// (`<engine> exec <container> openclaw <args>`), where paths are the
    /// container's. Runs as the agent, with its environment (the engine's
    /// socket settings), like `openclaw fleet` itself.
    pub async fn run_in_container(
        &self,
        engine: &str,
        container: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<CliOutput, CliError> {
        let mut command = Command::new(engine);
        command
            .args(["exec", container, "openclaw"])
            .args(args)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        run_to_end(command, engine, args, timeout).await
    }

    /// Starts a long-running `openclaw <args>` (e.g. a log follow) with its
    /// stdout piped; dropping the handle kills its whole process group.
    pub fn spawn_streaming(&self, env: &TenantEnv, args: &[&str]) -> Result<StreamingChild, CliError> {
        let mut command = self.command(env, args);
        command.stdout(Stdio::piped()).stderr(Stdio::null());
        let child =
            command.spawn().map_err(|source| CliError::Spawn { bin: self.bin.display().to_string(), source })?;
        Ok(StreamingChild { pid: child.id(), child })
    }
}

/// A running CLI process whose output is read as it comes.
pub struct StreamingChild {
    pid: Option<u32>,
    pub child: tokio::process::Child,
}

impl Drop for StreamingChild {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            kill_group(pid, libc::SIGKILL);
        }
    }
}

async fn run_to_end(mut command: Command, bin: &str, args: &[&str], timeout: Duration) -> Result<CliOutput, CliError> {
    let started = Instant::now();
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().map_err(|source| CliError::Spawn { bin: bin.to_string(), source })?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => Ok(CliOutput {
            success: output.status.success(),
            exit_code: output.status.code(),
            stdout: bounded(&output.stdout),
            stderr: bounded(&output.stderr),
            elapsed: started.elapsed(),
        }),
        Ok(Err(source)) => Err(CliError::Spawn { bin: bin.to_string(), source }),
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid, libc::SIGKILL);
            }
            Err(CliError::Timeout { command: args.first().copied().unwrap_or_default().to_string(), timeout })
        }
    }
}

/// Signals a whole process group (OpenClaw's Node processes spawn helpers).
pub fn kill_group(pid: u32, signal: i32) {
    // SAFETY: plain syscall; a negative pid addresses the process group.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

fn bounded(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= MAX_OUTPUT {
        return text.into_owned();
    }
    let mut cut = MAX_OUTPUT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n[... {} bytes cut]", &text[..cut], text.len() - cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_are_preferred_over_stderr() {
        let output = CliOutput {
            success: false,
            exit_code: Some(1),
            stdout: r#"{"ok":false,"error":{"type":"cli_error","message":"Agent \"x\" already exists."}}"#.into(),
            stderr: "noise".into(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(output.error_message(), "Agent \"x\" already exists.");
    }
}
