//! Every setting of the agent, parsed in one place: the command line and
//! its environment variables (`CLAWPLANE_*`), the `--config` TOML file,
//! and the fixed timings the rest of the agent uses.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// Reconnects to the control plane: capped exponential backoff, full jitter.
pub const RECONNECT_BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const RECONNECT_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A session (or sync stream) that lasted this long resets the backoff.
pub const STABLE_SESSION: Duration = Duration::from_secs(30);
/// Heartbeat period until the control plane's hello ack names its own.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Lines per LogChunk and the pause between polls while following.
pub const LOG_CHUNK_LINES: usize = 200;
pub const LOG_POLL: Duration = Duration::from_millis(200);
/// How long the agent waits, once asked to stop, for its tasks (commands
/// running, a sync batch in flight) to end.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Gateways derive ports up to base+110; tenants' base ports stay apart.
pub const GATEWAY_PORT_STRIDE: u16 = 150;
/// Longest one OpenClaw CLI call may take before it is killed.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a gateway may take to answer `/readyz` after a (re)start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Parser, Debug)]
#[command(name = "clawplane-agent", version, about = "Clawplane host agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enroll this host with a control plane using a join token.
    Join(JoinArgs),
    /// Connect to the control plane and run tenants.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Agent listener of the control plane, e.g. https://cp.example.com:7701.
    #[arg(long, env = "CLAWPLANE_CONTROL_PLANE")]
    pub control_plane: String,
    /// Join token `<id>.<secret>` from `clawplane token create`.
    #[arg(long, env = "CLAWPLANE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Pin of the control plane's CA: `sha256:<hex>` from `clawplane ca show`.
    #[arg(long, env = "CLAWPLANE_CA_PIN")]
    pub ca_pin: String,
    /// Where the agent keeps its key, certificate and state.
    #[arg(long, env = "CLAWPLANE_STATE_DIR", default_value = "/var/lib/clawplane-agent")]
    pub state_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long, env = "CLAWPLANE_STATE_DIR", default_value = "/var/lib/clawplane-agent")]
    state_dir: PathBuf,
    #[arg(long, env = "CLAWPLANE_CONFIG")]
    config: Option<PathBuf>,
    /// The `openclaw` executable (scripts/install-openclaw prints it).
    #[arg(long, env = "CLAWPLANE_OPENCLAW_BIN")]
    openclaw_bin: Option<PathBuf>,
    /// Where tenant state trees live (default: <state-dir>/tenant-homes).
    #[arg(long, env = "CLAWPLANE_TENANTS_DIR")]
    tenants_dir: Option<PathBuf>,
    /// First loopback port for tenant gateways (then every 150).
    #[arg(long, env = "CLAWPLANE_GATEWAY_BASE_PORT", default_value_t = 20000)]
    gateway_base_port: u16,
    /// Run tenants under the agent's own user instead of one OS user
    /// each (development without root only: tenants are not isolated).
    #[arg(long, env = "CLAWPLANE_NO_TENANT_USERS")]
    no_tenant_users: bool,
    /// How long archives of deleted tenants are kept, e.g. 7d.
    #[arg(long, env = "CLAWPLANE_ARCHIVE_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    archive_retention: Duration,
    /// How tenants run: `process` (own OS user and supervised gateway
    /// each) or `fleet` (OpenClaw's own Docker/Podman cells).
    #[arg(long, env = "CLAWPLANE_RUNTIME", default_value = "process", value_enum)]
    runtime: RuntimeKind,
    /// Where gateway bridges reach this host's tenant proxy (mutual TLS,
    /// bridge identities only), e.g. 0.0.0.0:7702; unset disables it.
    #[arg(long, env = "CLAWPLANE_PROXY_LISTEN")]
    proxy_listen: Option<String>,
    /// The `host:port` bridges should dial, when it differs from the
    /// listen address (e.g. behind NAT or when listening on 0.0.0.0).
    #[arg(long, env = "CLAWPLANE_PROXY_ADVERTISE")]
    proxy_advertise: Option<String>,
}

/// How tenants run on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    // Plain comments, not doc comments: clap would list those in --help.
    // Own OS user + supervised `openclaw gateway run` per tenant.
    Process,
    // OpenClaw's own `openclaw fleet` cells (Docker or Podman containers).
    Fleet,
}

impl RuntimeKind {
    /// The kind as the control plane's protocol names it.
    pub fn wire(self) -> clawplane_proto::v1::Runtime {
        match self {
            RuntimeKind::Process => clawplane_proto::v1::Runtime::Process,
            RuntimeKind::Fleet => clawplane_proto::v1::Runtime::Fleet,
        }
    }
}

/// `clawplane-agent run --config FILE` (TOML).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub labels: HashMap<String, String>,
    pub max_tenants: Option<u32>,
}

impl HostConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else { return Ok(HostConfig::default()) };
        let text = std::fs::read_to_string(path).map_err(|err| anyhow::anyhow!("config {}: {err}", path.display()))?;
        toml::from_str(&text).map_err(|err| anyhow::anyhow!("config {}: {err}", path.display()))
    }
}

/// Everything `clawplane-agent run` works with.
#[derive(Debug)]
pub struct RunSettings {
    pub state_dir: PathBuf,
    pub config_file: Option<PathBuf>,
    /// Unset when no `--openclaw-bin` was given: the host runs no tenants.
    pub tenants: Option<TenantSettings>,
    /// Tenant proxy listen address and the address to advertise.
    pub proxy_listen: Option<String>,
    pub proxy_advertise: Option<String>,
}

/// How this host runs tenants.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    pub kind: RuntimeKind,
    pub openclaw_bin: PathBuf,
    /// The agent's state directory (tenant records go under it).
    pub state_dir: PathBuf,
    /// Where tenant trees live.
    pub tenants_dir: PathBuf,
    /// Run each tenant as its own OS user (needs root). Off only for
    /// development without root.
    pub tenant_users: bool,
    pub base_port: u16,
    pub port_stride: u16,
    pub cli_timeout: Duration,
    pub ready_timeout: Duration,
    pub archive_dir: PathBuf,
    /// How long archives of deleted tenants are kept.
    pub archive_retention: Duration,
}

impl RunArgs {
    pub fn settings(self) -> RunSettings {
        let state_dir = self.state_dir;
        let tenants = self.openclaw_bin.map(|openclaw_bin| TenantSettings {
            kind: self.runtime,
            openclaw_bin,
            tenants_dir: self.tenants_dir.unwrap_or_else(|| state_dir.join("tenant-homes")),
            tenant_users: !self.no_tenant_users,
            base_port: self.gateway_base_port,
            port_stride: GATEWAY_PORT_STRIDE,
            cli_timeout: CLI_TIMEOUT,
            ready_timeout: READY_TIMEOUT,
            archive_dir: state_dir.join("archives"),
            archive_retention: self.archive_retention,
            state_dir: state_dir.clone(),
        });
        RunSettings {
            state_dir,
            config_file: self.config,
            tenants,
            proxy_listen: self.proxy_listen,
            proxy_advertise: self.proxy_advertise,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_flags_keep_their_names_and_defaults() {
        let run = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["clawplane-agent", "run", "--state-dir", "/s"], args].concat()).unwrap();
            let Command::Run(args) = cli.command else { panic!("run") };
            args.settings()
        };
        // Defaults apply where the test's environment sets none.
        let unset = |name: &str| std::env::var_os(name).is_none();
        let tenants = run(&["--openclaw-bin", "/bin/openclaw"]).tenants.expect("tenants");
        if unset("CLAWPLANE_RUNTIME") {
            assert_eq!(tenants.kind, RuntimeKind::Process);
        }
        if unset("CLAWPLANE_GATEWAY_BASE_PORT") {
            assert_eq!(tenants.base_port, 20000);
        }
        if unset("CLAWPLANE_ARCHIVE_RETENTION") {
            assert_eq!(tenants.archive_retention, Duration::from_secs(7 * 24 * 3600));
        }
        if unset("CLAWPLANE_TENANTS_DIR") {
            assert_eq!(tenants.tenants_dir, Path::new("/s/tenant-homes"));
        }
        assert_eq!(tenants.archive_dir, Path::new("/s/archives"));
        let tenants = run(&["--openclaw-bin", "/o", "--runtime", "fleet", "--no-tenant-users"]).tenants.unwrap();
        assert_eq!((tenants.kind, tenants.tenant_users), (RuntimeKind::Fleet, false));
        assert!(Cli::try_parse_from(["clawplane-agent", "run", "--runtime", "docker"]).is_err());
    }
}
