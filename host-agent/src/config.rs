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
/// Failed starts in a row (each within a minute of the last) after which a
/// gateway's supervisor gives up until a restart, a provision or a wake:
/// a crash loop would otherwise cost the host a gateway start (tens of
/// CPU-seconds) every 16 s for ever.
pub const RESTART_BUDGET: u32 = 8;

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
    Run(Box<RunArgs>),
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Agent listener of the control plane, e.g. https://cp.example.com:7701;
    /// repeat it (or separate with commas) for several replicas: the host
    /// joins through the first that answers and stores them all.
    #[arg(long, env = "CLAWPLANE_CONTROL_PLANE", required = true)]
    pub control_plane: Vec<String>,
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
    /// Control plane replicas to connect to, in order of preference
    /// (repeat it or separate with commas); default: the ones given at
    /// join (config file: control_planes).
    #[arg(long, env = "CLAWPLANE_CONTROL_PLANE")]
    control_plane: Vec<String>,
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
    /// Where tenant cgroups go, under each cgroup hierarchy's root
    /// (default: clawplane; config file: cgroup_parent).
    #[arg(long, env = "CLAWPLANE_CGROUP_PARENT")]
    cgroup_parent: Option<String>,
    /// How long a gateway may stay above its memory soft limit before it
    /// is restarted, e.g. 60s (default; config file: memory_soft_window).
    #[arg(long, env = "CLAWPLANE_MEMORY_SOFT_WINDOW", value_parser = humantime::parse_duration)]
    memory_soft_window: Option<Duration>,
    /// How often idle tenants are looked for to hibernate, e.g. 10s
    /// (default; config file: hibernation_check_interval).
    #[arg(long, env = "CLAWPLANE_HIBERNATION_CHECK_INTERVAL", value_parser = humantime::parse_duration)]
    hibernation_check_interval: Option<Duration>,
    /// How long a request to a hibernated tenant waits for its gateway
    /// before it gets 503 with Retry-After, e.g. 90s (default; config
    /// file: wake_timeout).
    #[arg(long, env = "CLAWPLANE_WAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    wake_timeout: Option<Duration>,
    /// Loopback address of the metering model proxy every tenant's model
    /// calls go through (default 127.0.0.1:18700; config file:
    /// model_proxy_listen). Tenants' configs name its port: keep it fixed.
    #[arg(long, env = "CLAWPLANE_MODEL_PROXY_LISTEN")]
    model_proxy_listen: Option<std::net::SocketAddr>,
    /// How long a model answer may stall mid-stream before the proxy cuts
    /// it, e.g. 120s (default; config file: model_stall_timeout).
    #[arg(long, env = "CLAWPLANE_MODEL_STALL_TIMEOUT", value_parser = humantime::parse_duration)]
    model_stall_timeout: Option<Duration>,
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
    /// As `--control-plane`, which wins over it.
    pub control_planes: Option<Vec<String>>,
    /// As `--cgroup-parent`, which wins over it.
    pub cgroup_parent: Option<String>,
    /// As `--memory-soft-window` (e.g. "60s"), which wins over it.
    #[serde(default, with = "humantime_serde_opt")]
    pub memory_soft_window: Option<Duration>,
    /// As `--hibernation-check-interval`, which wins over it.
    #[serde(default, with = "humantime_serde_opt")]
    pub hibernation_check_interval: Option<Duration>,
    /// As `--wake-timeout`, which wins over it.
    #[serde(default, with = "humantime_serde_opt")]
    pub wake_timeout: Option<Duration>,
    /// As `--model-proxy-listen`, which wins over it.
    pub model_proxy_listen: Option<std::net::SocketAddr>,
    /// As `--model-stall-timeout`, which wins over it.
    #[serde(default, with = "humantime_serde_opt")]
    pub model_stall_timeout: Option<Duration>,
}

/// A humantime duration string in the config file.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|text| humantime::parse_duration(&text).map_err(serde::de::Error::custom)).transpose()
    }
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
    /// Control plane replicas in order of preference; empty: the ones
    /// stored at join.
    pub control_planes: Vec<ControlPlaneUrl>,
    /// The `--config` file, read.
    pub config: HostConfig,
    /// Unset when no `--openclaw-bin` was given: the host runs no tenants.
    pub tenants: Option<TenantSettings>,
    /// Tenant proxy listen address and the address to advertise.
    pub proxy_listen: Option<String>,
    pub proxy_advertise: Option<String>,
    pub hibernation: HibernationSettings,
    /// The metering model proxy.
    pub model_proxy: ModelProxySettings,
}

/// Where the metering model proxy listens and when it cuts a stalled answer.
#[derive(Debug, Clone, Copy)]
pub struct ModelProxySettings {
    pub listen: std::net::SocketAddr,
    pub stall_timeout: Duration,
}

/// The model proxy's default address: fixed, since tenants' configs name it.
pub const DEFAULT_MODEL_PROXY_LISTEN: &str = "127.0.0.1:18700";

/// When idle tenants are looked for, and how long a request waits for a
/// hibernated one to wake.
#[derive(Debug, Clone, Copy)]
pub struct HibernationSettings {
    pub check_interval: Duration,
    pub wake_timeout: Duration,
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
    /// Failed gateway starts in a row before the supervisor gives up.
    pub restart_budget: u32,
    pub archive_dir: PathBuf,
    /// How long archives of deleted tenants are kept.
    pub archive_retention: Duration,
    /// Tenant cgroups and the memory soft limit's window.
    pub limits: LimitSettings,
}

impl RunArgs {
    /// The settings: flags and environment first, then the config file,
    /// then the defaults.
    pub fn settings(self) -> anyhow::Result<RunSettings> {
        let config = HostConfig::load(self.config.as_deref())?;
        let control_planes = match (&self.control_plane[..], &config.control_planes) {
            ([], None) => Vec::new(),
            ([], Some(file)) => {
                let setting =
                    format!("control_planes (in {})", self.config.as_deref().unwrap_or(Path::new("")).display());
                let urls = control_plane_urls(&setting, file)?;
                if urls.is_empty() {
                    anyhow::bail!("{setting}: names no control plane");
                }
                urls
            }
            (flags, _) => control_plane_urls("--control-plane", flags)?,
        };
        let limits = LimitSettings {
            cgroup_parent: Some(
                self.cgroup_parent
                    .or_else(|| config.cgroup_parent.clone())
                    .unwrap_or_else(|| DEFAULT_CGROUP_PARENT.to_string()),
            ),
            memory_soft_window: self
                .memory_soft_window
                .or(config.memory_soft_window)
                .unwrap_or(DEFAULT_MEMORY_SOFT_WINDOW),
        };
        if limits.memory_soft_window.is_zero() {
            anyhow::bail!("the memory soft window must be longer than zero");
        }
        let hibernation = HibernationSettings {
            check_interval: self
                .hibernation_check_interval
                .or(config.hibernation_check_interval)
                .unwrap_or(Duration::from_secs(10)),
            wake_timeout: self.wake_timeout.or(config.wake_timeout).unwrap_or(Duration::from_secs(90)),
        };
        if hibernation.check_interval.is_zero() || hibernation.wake_timeout.is_zero() {
            anyhow::bail!("the hibernation check interval and the wake timeout must be longer than zero");
        }
        if hibernation.wake_timeout > Duration::from_secs(600) {
            anyhow::bail!("the wake timeout must be at most 10 minutes (a held request holds a connection)");
        }
        let model_proxy = ModelProxySettings {
            listen: self
                .model_proxy_listen
                .or(config.model_proxy_listen)
                .unwrap_or_else(|| DEFAULT_MODEL_PROXY_LISTEN.parse().expect("a socket address")),
            stall_timeout: self.model_stall_timeout.or(config.model_stall_timeout).unwrap_or(Duration::from_secs(120)),
        };
        // Tenants reach it over loopback only; the credential in each
        // tenant's config is all that tells them apart.
        if !model_proxy.listen.ip().is_loopback() {
            anyhow::bail!("the model proxy must listen on a loopback address (got {})", model_proxy.listen);
        }
        if model_proxy.stall_timeout.is_zero() || model_proxy.stall_timeout > Duration::from_secs(3600) {
            anyhow::bail!("the model stall timeout must be between 1 s and 1 h");
        }
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
            restart_budget: RESTART_BUDGET,
            archive_dir: state_dir.join("archives"),
            archive_retention: self.archive_retention,
            state_dir: state_dir.clone(),
            limits,
        });
        Ok(RunSettings {
            state_dir,
            control_planes,
            config,
            tenants,
            proxy_listen: self.proxy_listen,
            proxy_advertise: self.proxy_advertise,
            hibernation,
            model_proxy,
        })
    }
}

/// A control plane's agent listener, checked when the setting is read:
/// `https://host:port` and nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ControlPlaneUrl {
    /// Without the brackets of an IPv6 literal; TLS checks this name.
    host: String,
    port: u16,
}

impl ControlPlaneUrl {
    /// A URL from a flag, the environment or the config file; the reason
    /// it is unusable otherwise.
    pub fn parse(value: &str) -> Result<Self, String> {
        Self::parse_with(value, None)
    }

    /// A URL stored at join by an agent that did not require the port
    /// (the TLS default, 443, then applied): such hosts keep working.
    pub fn stored(value: &str) -> Result<Self, String> {
        Self::parse_with(value, Some(443))
    }

    fn parse_with(value: &str, default_port: Option<u16>) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() {
            return Err("an empty URL".into());
        }
        let uri: http::Uri = value.parse().map_err(|_| "is not a URL like https://cp.example.com:7701".to_string())?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => return Err(format!("must be https:// (the agent channel is mutual TLS), not {other}://")),
            None => return Err("must start with https://".into()),
        }
        let authority = uri.authority().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not carry a user name".into());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("has no host".into());
        }
        // After an IPv6 literal's bracket; http's own port() hides a port
        // that is out of range.
        let tail = authority.as_str().rsplit(']').next().unwrap_or_default();
        let port = match (tail.rsplit_once(':'), default_port) {
            (Some((_, port)), _) => match port.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("port {port} is not a port (1-65535)")),
                Ok(port) => port,
            },
            (None, Some(port)) => port,
            (None, None) => return Err("has no port (e.g. https://cp.example.com:7701)".into()),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err("must be https://host:port alone, without a path".into());
        }
        Ok(ControlPlaneUrl { host: host.to_ascii_lowercase(), port })
    }

    /// The host name (or address) the control plane's certificate names.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Display for ControlPlaneUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "https://[{}]:{}", self.host, self.port),
            false => write!(f, "https://{}:{}", self.host, self.port),
        }
    }
}

/// The control plane URLs of one setting (each value may hold several,
/// separated by commas), in order, without repeats. An error names the
/// setting and the value.
pub fn control_plane_urls(setting: &str, values: &[String]) -> anyhow::Result<Vec<ControlPlaneUrl>> {
    let mut urls = Vec::new();
    for value in values.iter().flat_map(|value| value.split(',')) {
        let url = ControlPlaneUrl::parse(value).map_err(|reason| anyhow::anyhow!("{setting} {value:?}: {reason}"))?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

/// Where tenant cgroups go by default, under each hierarchy's root.
pub const DEFAULT_CGROUP_PARENT: &str = "clawplane";
/// How long a gateway may stay above its memory soft limit by default.
pub const DEFAULT_MEMORY_SOFT_WINDOW: Duration = Duration::from_secs(60);
/// How the agent's limits settings ask for cgroups.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Tenant cgroups go under this path in each hierarchy; `None` turns
    /// limits off (tests that do not exercise them).
    pub cgroup_parent: Option<String>,
    /// How long a gateway may stay above its memory soft limit.
    pub memory_soft_window: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            cgroup_parent: Some(DEFAULT_CGROUP_PARENT.into()),
            memory_soft_window: DEFAULT_MEMORY_SOFT_WINDOW,
        }
    }
}

impl LimitSettings {
    /// Settings without cgroups.
    #[cfg(test)]
    pub fn off() -> Self {
        LimitSettings { cgroup_parent: None, ..Default::default() }
    }
}

#[cfg(test)]
impl TenantSettings {
    /// Settings for a runtime driving the stand-in `openclaw` (copied into
    /// `dir`, in mode "ok") under `dir`, without tenant users or limits.
    pub fn stand_in(dir: &Path) -> TenantSettings {
        let bin = dir.join("openclaw");
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-openclaw"), &bin).unwrap();
        std::fs::write(dir.join("fake-mode"), "ok").unwrap();
        TenantSettings {
            kind: RuntimeKind::Process,
            openclaw_bin: bin,
            state_dir: dir.join("agent"),
            tenants_dir: dir.join("tenants"),
            tenant_users: false,
            base_port: 40000 + (rand::random::<u16>() % 20000),
            port_stride: 150,
            cli_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(60),
            restart_budget: RESTART_BUDGET,
            archive_dir: dir.join("archives"),
            archive_retention: Duration::from_secs(3600),
            limits: LimitSettings::off(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_urls_are_https_with_host_and_port() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("https://cp.example.com:7701", Ok("https://cp.example.com:7701")),
            (" https://CP.Example.com:7701/ ", Ok("https://cp.example.com:7701")),
            ("https://10.0.0.7:7701", Ok("https://10.0.0.7:7701")),
            ("https://[::1]:7701", Ok("https://[::1]:7701")),
            ("http://cp.example.com:7701", Err("must be https://")),
            ("cp.example.com:7701", Err("must start with https://")),
            ("https://cp.example.com", Err("has no port")),
            ("https://cp.example.com:0", Err("port 0 is not a port")),
            ("https://cp.example.com:99999", Err("port 99999 is not a port")),
            ("https://:7701", Err("")),
            ("https://admin@cp.example.com:7701", Err("user name")),
            ("https://cp.example.com:7701/api", Err("without a path")),
            ("https://cp.example.com:7701?x=1", Err("without a path")),
            ("", Err("an empty URL")),
            ("not a url", Err("is not a URL")),
        ];
        for (input, expected) in cases {
            let parsed = ControlPlaneUrl::parse(input).map(|url| url.to_string());
            match (parsed, expected) {
                (Ok(url), Ok(want)) => assert_eq!(&url, want, "{input:?}"),
                (Err(reason), Err(want)) => assert!(reason.contains(want), "{input:?}: {reason:?} lacks {want:?}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
        // What older agents stored at join may leave the port out.
        assert_eq!(ControlPlaneUrl::stored("https://cp.example.com").unwrap().port(), 443);
        assert!(ControlPlaneUrl::stored("http://cp.example.com").is_err());
    }

    #[test]
    fn control_plane_settings_split_on_commas_keep_order_and_name_bad_input() {
        let values = |list: &[&str]| list.iter().map(|v| v.to_string()).collect::<Vec<_>>();
        let urls = control_plane_urls("--control-plane", &values(&["https://b:2,https://a:1", "https://b:2"])).unwrap();
        let urls: Vec<String> = urls.iter().map(ToString::to_string).collect();
        assert_eq!(urls, ["https://b:2", "https://a:1"]);
        let cases: &[(&[&str], &str)] = &[
            (&["https://a:1,http://b:2"], "--control-plane \"http://b:2\": must be https://"),
            (&["https://a:1,,https://b:2"], "--control-plane \"\": an empty URL"),
            (&["https://a"], "--control-plane \"https://a\": has no port"),
        ];
        for (input, message) in cases {
            let err = control_plane_urls("--control-plane", &values(input)).unwrap_err().to_string();
            assert!(err.starts_with(message), "{input:?}: {err:?}");
        }
    }

    #[test]
    fn control_planes_come_from_flags_then_the_config_file_then_the_join() {
        let unset = |name: &str| std::env::var_os(name).is_none();
        if !(unset("CLAWPLANE_CONTROL_PLANE") && unset("CLAWPLANE_CONFIG")) {
            return;
        }
        let run = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["clawplane-agent", "run", "--state-dir", "/s"], args].concat()).unwrap();
            let Command::Run(args) = cli.command else { panic!("run") };
            args.settings().map(|s| s.control_planes.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(run(&[]).unwrap(), Vec::<String>::new(), "none given: the ones stored at join");
        let flags = run(&["--control-plane", "https://a:1", "--control-plane", "https://b:2,https://c:3"]).unwrap();
        assert_eq!(flags, ["https://a:1", "https://b:2", "https://c:3"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "control_planes = [\"https://f:1\", \"https://g:2\"]\n").unwrap();
        let file = file.to_str().unwrap();
        assert_eq!(run(&["--config", file]).unwrap(), ["https://f:1", "https://g:2"]);
        assert_eq!(run(&["--config", file, "--control-plane", "https://a:1"]).unwrap(), ["https://a:1"]);
        std::fs::write(file, "control_planes = [\"https://f\"]\n").unwrap();
        let err = run(&["--config", file]).unwrap_err().to_string();
        assert!(err.starts_with("control_planes (in ") && err.contains("\"https://f\": has no port"), "{err}");
        std::fs::write(file, "control_planes = []\n").unwrap();
        assert!(run(&["--config", file]).unwrap_err().to_string().contains("names no control plane"));
        let err = run(&["--control-plane", "ftp://x:1"]).unwrap_err().to_string();
        assert!(err.starts_with("--control-plane \"ftp://x:1\""), "{err}");
    }

    #[test]
    fn run_flags_keep_their_names_and_defaults() {
        let run = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["clawplane-agent", "run", "--state-dir", "/s"], args].concat()).unwrap();
            let Command::Run(args) = cli.command else { panic!("run") };
            args.settings().unwrap()
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

    #[test]
    fn limit_settings_come_from_flags_then_the_config_file_then_defaults() {
        let run = |args: &[&str]| {
            let base = ["clawplane-agent", "run", "--state-dir", "/s", "--openclaw-bin", "/o"];
            let cli = Cli::try_parse_from([&base[..], args].concat()).unwrap();
            let Command::Run(args) = cli.command else { panic!("run") };
            args.settings().map(|settings| settings.tenants.unwrap().limits)
        };
        let unset = |name: &str| std::env::var_os(name).is_none();
        if unset("CLAWPLANE_CGROUP_PARENT") && unset("CLAWPLANE_MEMORY_SOFT_WINDOW") && unset("CLAWPLANE_CONFIG") {
            assert_eq!(run(&[]).unwrap(), LimitSettings::default());
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("agent.toml");
            std::fs::write(&file, "cgroup_parent = \"from-file\"\nmemory_soft_window = \"2m\"\n").unwrap();
            let file = file.to_str().unwrap();
            let from_file = run(&["--config", file]).unwrap();
            assert_eq!(from_file.cgroup_parent.as_deref(), Some("from-file"));
            assert_eq!(from_file.memory_soft_window, Duration::from_secs(120));
            let flags = run(&["--config", file, "--cgroup-parent", "a/b", "--memory-soft-window", "5s"]).unwrap();
            assert_eq!(flags.cgroup_parent.as_deref(), Some("a/b"));
            assert_eq!(flags.memory_soft_window, Duration::from_secs(5));
            assert!(run(&["--memory-soft-window", "0s"]).is_err());
        }
    }
}
