//! Configuration, parsed and validated in one place.
//!
//! Precedence: command-line flag > `CLAWPLANE_*` environment variable (clap
//! reads both) > TOML file > built-in default. `Config::load` fails with a
//! message naming the offending setting, so a bad config stops the server at
//! start instead of surfacing later as a confusing runtime error. The SSO
//! and credential settings, and the base domain, are parsed by the identity
//! crate, the way the bridge parses them from this same file.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use clawplane_identity::config::{AuthArgs, AuthConfig, AuthFile, JwtFileConfig};
use serde::Deserialize;

use crate::desired::{api_by_name, default_api, valid_model, valid_provider, PlatformModel};
use clawplane_edge::rate::Rate;

/// The platform model's key, instead of `models.platform.api_key_file`.
const PLATFORM_KEY_ENV: &str = "CLAWPLANE_MODELS_PLATFORM_API_KEY";

/// `clawplane serve` flags. Every flag is also `CLAWPLANE_<FLAG>` and a key
/// of the TOML file.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "CLAWPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database and generated credentials.
    #[arg(long, env = "CLAWPLANE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "CLAWPLANE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Address of the API listener (gRPC, grpc-web, reflection, health).
    #[arg(long, env = "CLAWPLANE_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Address of the agent listener (mutual TLS).
    #[arg(long, env = "CLAWPLANE_AGENT_LISTEN")]
    pub agent_listen: Option<String>,
    /// URL hosts use to reach the agent listener (printed in join commands),
    /// e.g. https://cp.example.com:7701.
    #[arg(long, env = "CLAWPLANE_AGENT_PUBLIC_URL")]
    pub agent_public_url: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "CLAWPLANE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Base domain of tenant URLs: https://<slug>.<base-domain>.
    #[arg(long, env = "CLAWPLANE_BASE_DOMAIN")]
    pub base_domain: Option<String>,
    /// CIDRs tenants' model base URLs may point into although they are
    /// loopback, private or reserved (comma-separated), e.g. 10.0.0.0/8.
    #[arg(long, env = "CLAWPLANE_MODELS_ALLOWED_CIDRS", value_delimiter = ',')]
    pub models_allowed_cidrs: Vec<String>,
    /// The platform model's provider id (`models.platform.provider`).
    #[arg(long, env = "CLAWPLANE_MODELS_PLATFORM_PROVIDER")]
    pub models_platform_provider: Option<String>,
    /// Its API: openai-completions, openai-responses or anthropic-messages
    /// (`models.platform.api`).
    #[arg(long, env = "CLAWPLANE_MODELS_PLATFORM_API")]
    pub models_platform_api: Option<String>,
    /// Its upstream, e.g. https://api.openai.com/v1 (`models.platform.base_url`).
    #[arg(long, env = "CLAWPLANE_MODELS_PLATFORM_BASE_URL")]
    pub models_platform_base_url: Option<String>,
    /// A file holding its key (`models.platform.api_key_file`; or the key
    /// itself in CLAWPLANE_MODELS_PLATFORM_API_KEY, never a flag).
    #[arg(long, env = "CLAWPLANE_MODELS_PLATFORM_API_KEY_FILE")]
    pub models_platform_api_key_file: Option<PathBuf>,
    /// Model ids tenants may use, comma-separated (`models.platform.models`).
    #[arg(long, env = "CLAWPLANE_MODELS_PLATFORM_MODELS", value_delimiter = ',')]
    pub models_platform_models: Vec<String>,
    /// The model of a tenant that chose none (`models.platform.default_model`).
    #[arg(long, env = "CLAWPLANE_MODELS_PLATFORM_DEFAULT_MODEL")]
    pub models_platform_default_model: Option<String>,
    /// Origins whose web pages may call the API with grpc-web
    /// (comma-separated, e.g. https://app.example.com; `*` for any). With
    /// none, cross-origin calls are refused.
    #[arg(long, env = "CLAWPLANE_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Committed memory a host may take, as a multiple of its memory (the sum
    /// of its tenants' plan memory limits; above 1 when most tenants
    /// hibernate); `hosts.memory_overcommit`.
    #[arg(long, env = "CLAWPLANE_HOSTS_MEMORY_OVERCOMMIT")]
    pub hosts_memory_overcommit: Option<f64>,
    /// Requests per second per signed-in caller (0: no limit); `limits.rate_per_caller`.
    #[arg(long, env = "CLAWPLANE_LIMITS_RATE_PER_CALLER")]
    pub limits_rate_per_caller: Option<u32>,
    /// Requests a caller may send at once above that rate; `limits.burst_per_caller`.
    #[arg(long, env = "CLAWPLANE_LIMITS_BURST_PER_CALLER")]
    pub limits_burst_per_caller: Option<u32>,
    /// Requests per second per client address without a valid identity; `limits.rate_per_address`.
    #[arg(long, env = "CLAWPLANE_LIMITS_RATE_PER_ADDRESS")]
    pub limits_rate_per_address: Option<u32>,
    /// Burst above that rate; `limits.burst_per_address`.
    #[arg(long, env = "CLAWPLANE_LIMITS_BURST_PER_ADDRESS")]
    pub limits_burst_per_address: Option<u32>,
    /// Open API connections per client address (0: no limit); `limits.max_connections_per_address`.
    #[arg(long, env = "CLAWPLANE_LIMITS_MAX_CONNECTIONS_PER_ADDRESS")]
    pub limits_max_connections_per_address: Option<usize>,
    /// SendMessage turns one tenant may have in flight at once; `limits.max_turns_per_tenant`.
    #[arg(long, env = "CLAWPLANE_LIMITS_MAX_TURNS_PER_TENANT")]
    pub limits_max_turns_per_tenant: Option<usize>,
    /// The key tenant secrets are sealed with (32 bytes, 0600), the same on
    /// every replica; `secrets.key_file` (default `<data_dir>/secrets.key`,
    /// created there if absent).
    #[arg(long, env = "CLAWPLANE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Earlier keys, which still open what they sealed (comma-separated);
    /// `secrets.previous_key_files`.
    #[arg(long, env = "CLAWPLANE_SECRETS_PREVIOUS_KEY_FILES", value_delimiter = ',')]
    pub secrets_previous_key_files: Vec<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// The TOML file. Unknown keys are errors: a typo must not silently fall
/// back to a default.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    api_listen: Option<String>,
    agent_listen: Option<String>,
    agent_public_url: Option<String>,
    log_format: Option<String>,
    base_domain: Option<String>,
    admin_token: Option<String>,
    shared_secret: Option<String>,
    #[serde(default)]
    jwt: JwtFileConfig,
    #[serde(default)]
    cors: CorsFileConfig,
    #[serde(default)]
    tenants: TenantsFileConfig,
    #[serde(default)]
    limits: LimitsFileConfig,
    #[serde(default)]
    hosts: HostsFileConfig,
    #[serde(default)]
    pki: PkiFileConfig,
    #[serde(default)]
    secrets: SecretsFileConfig,
    #[serde(default)]
    models: ModelsFileConfig,
    /// `[[plans]]`: the plans catalogue (absent: the plans table as seeded).
    plans: Option<Vec<PlanFileConfig>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ModelsFileConfig {
    allowed_cidrs: Option<Vec<String>>,
    platform: Option<PlatformFileConfig>,
}

/// `[models.platform]`: the model the SaaS provides, with its own key.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct PlatformFileConfig {
    provider: Option<String>,
    api: Option<String>,
    base_url: Option<String>,
    /// A file holding the key (the key itself never goes in this file).
    api_key_file: Option<PathBuf>,
    models: Option<Vec<String>>,
    default_model: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct HostsFileConfig {
    heartbeat_interval: Option<String>,
    lease: Option<String>,
    cert_ttl: Option<String>,
    server_names: Option<Vec<String>>,
    max_connections: Option<usize>,
    memory_overcommit: Option<f64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct PkiFileConfig {
    ca_cert_file: Option<PathBuf>,
    ca_key_file: Option<PathBuf>,
}

/// `[secrets]`: the key tenant secrets are sealed with, and earlier ones.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct SecretsFileConfig {
    key_file: Option<PathBuf>,
    previous_key_files: Option<Vec<PathBuf>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct CorsFileConfig {
    allowed_origins: Option<Vec<String>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct TenantsFileConfig {
    purge_after: Option<String>,
    purge_interval: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFileConfig {
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    request_timeout: Option<String>,
    max_request_timeout: Option<String>,
    database_max_connections: Option<u32>,
    tenant_cache_ttl: Option<String>,
    rate_per_caller: Option<u32>,
    burst_per_caller: Option<u32>,
    rate_per_address: Option<u32>,
    burst_per_address: Option<u32>,
    max_turns_per_tenant: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Allowed grpc-web origins: `*` or an explicit list (empty: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

/// Validated configuration of `clawplane serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub api_listen: SocketAddr,
    pub agent_listen: SocketAddr,
    pub log_format: LogFormat,
    pub base_domain: String,
    pub auth: AuthConfig,
    pub cors_origins: CorsOrigins,
    /// How long a soft-deleted tenant is kept before it is purged.
    pub tenant_purge_after: Duration,
    pub tenant_purge_interval: Duration,
    pub max_connections: usize,
    /// Open API connections per client address (IPv6: per /64); 0 is no limit.
    pub max_connections_per_address: usize,
    /// Deadline of a request that does not carry its own `grpc-timeout`.
    pub request_timeout: Duration,
    /// The longest deadline a client's `grpc-timeout` may ask for.
    pub max_request_timeout: Duration,
    pub database_max_connections: u32,
    /// How long GetMyTenant may answer from memory (0 = always the database).
    pub tenant_cache_ttl: Duration,
    /// Requests per signed-in caller (0 rate: no limit).
    pub rate_per_caller: Rate,
    /// Requests per client address without a valid identity.
    pub rate_per_address: Rate,
    /// SendMessage turns in flight per tenant.
    pub max_turns_per_tenant: usize,
    /// URL of the agent listener as hosts reach it.
    pub agent_public_url: String,
    /// Names the agent listener's certificate is valid for.
    pub agent_server_names: Vec<String>,
    pub host_heartbeat_interval: Duration,
    pub host_lease: Duration,
    pub host_cert_ttl: Duration,
    /// Committed memory a host may take, as a multiple of its memory.
    pub host_memory_overcommit: f64,
    pub max_agent_connections: usize,
    pub ca_cert_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
    /// The secrets key; every replica on one database needs the same.
    pub secrets_key_file: PathBuf,
    /// Whether `secrets_key_file` is the default `<data_dir>/secrets.key`,
    /// created if absent; a configured file must exist (a typo must not
    /// make a fresh key that opens nothing).
    pub secrets_key_is_default: bool,
    /// Keys the secrets key replaced, to open what they sealed.
    pub secrets_previous_key_files: Vec<PathBuf>,
    /// Ranges SetModel.base_url may reach although they are not public
    /// (see [`crate::model_url`]).
    pub models_allowed_cidrs: Vec<ipnet::IpNet>,
    /// The platform's model, if the SaaS provides one.
    pub platform_model: Option<PlatformModel>,
    /// The plans catalogue of `[[plans]]`, upserted into the plans table
    /// at start; None keeps the table as it is (the seeded plans).
    pub plans: Option<Vec<crate::store::PlanSpec>>,
}

impl Config {
    /// Reads the TOML file named by the args (if any), applies the args on
    /// top and validates the result.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        Self::merge(args.clone(), file)
    }

    fn merge(args: ServeArgs, file: FileConfig) -> anyhow::Result<Config> {
        let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./clawplane-data"));
        let database_url = args.database_url.or(file.database_url).unwrap_or_else(|| default_sqlite_url(&data_dir));
        validate_database_url(&database_url)?;

        let api_listen =
            parse_addr("api_listen", &args.api_listen.or(file.api_listen).unwrap_or_else(|| "127.0.0.1:7700".into()))?;
        let agent_listen = parse_addr(
            "agent_listen",
            &args.agent_listen.or(file.agent_listen).unwrap_or_else(|| "0.0.0.0:7701".into()),
        )?;
        let log_format = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("log_format: expected \"text\" or \"json\", got {other:?}"),
        };
        let base_domain = clawplane_identity::host::base_domain(args.base_domain, file.base_domain)?;
        let auth = AuthConfig::load(
            &args.auth,
            AuthFile { admin_token: file.admin_token, shared_secret: file.shared_secret, jwt: file.jwt },
        )?;

        let cors_flags = Some(args.cors_allowed_origins).filter(|list| !list.is_empty());
        let cors_origins = match cors_flags.or(file.cors.allowed_origins) {
            None => CorsOrigins::List(Vec::new()),
            Some(list) if list.iter().any(|o| o == "*") => CorsOrigins::Any,
            Some(list) => {
                for origin in &list {
                    http::HeaderValue::from_str(origin)
                        .ok()
                        .filter(|_| origin.starts_with("http://") || origin.starts_with("https://"))
                        .with_context(|| format!("cors.allowed_origins: {origin:?} is not an http(s) origin"))?;
                }
                CorsOrigins::List(list)
            }
        };

        let duration = |name: &str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.to_string());
            humantime::parse_duration(&text)
                .with_context(|| format!("{name}: {text:?} is not a duration like \"30s\" or \"7d\""))
        };
        let tenant_purge_after = duration("tenants.purge_after", file.tenants.purge_after, "7d")?;
        let tenant_purge_interval = duration("tenants.purge_interval", file.tenants.purge_interval, "1h")?;
        if tenant_purge_interval.is_zero() {
            bail!("tenants.purge_interval: must be greater than zero");
        }
        let request_timeout = duration("limits.request_timeout", file.limits.request_timeout, "30s")?;
        let max_request_timeout = duration("limits.max_request_timeout", file.limits.max_request_timeout, "5m")?;
        if request_timeout.is_zero() {
            bail!("limits.request_timeout: must be greater than zero");
        }
        if max_request_timeout < request_timeout {
            bail!("limits.max_request_timeout: must not be shorter than limits.request_timeout");
        }
        let max_connections = file.limits.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            bail!("limits.max_connections: must be greater than zero");
        }
        let max_connections_per_address =
            args.limits_max_connections_per_address.or(file.limits.max_connections_per_address).unwrap_or(512);
        let database_max_connections = file.limits.database_max_connections.unwrap_or(16);
        if database_max_connections == 0 {
            bail!("limits.database_max_connections: must be greater than zero");
        }

        let rate_per_caller = Rate::new(
            args.limits_rate_per_caller.or(file.limits.rate_per_caller).unwrap_or(50),
            args.limits_burst_per_caller.or(file.limits.burst_per_caller).unwrap_or(200),
        );
        let rate_per_address = Rate::new(
            args.limits_rate_per_address.or(file.limits.rate_per_address).unwrap_or(20),
            args.limits_burst_per_address.or(file.limits.burst_per_address).unwrap_or(100),
        );
        for (name, rate) in [("caller", rate_per_caller), ("address", rate_per_address)] {
            if rate.per_second > 0 && rate.burst < rate.per_second {
                bail!("limits.burst_per_{name}: must not be smaller than limits.rate_per_{name}");
            }
        }
        let max_turns_per_tenant = args.limits_max_turns_per_tenant.or(file.limits.max_turns_per_tenant).unwrap_or(4);
        if max_turns_per_tenant == 0 {
            bail!("limits.max_turns_per_tenant: must be greater than zero");
        }
        let tenant_cache_ttl = duration("limits.tenant_cache_ttl", file.limits.tenant_cache_ttl, "1s")?;
        let host_heartbeat_interval = duration("hosts.heartbeat_interval", file.hosts.heartbeat_interval, "5s")?;
        let host_lease = duration("hosts.lease", file.hosts.lease, "20s")?;
        if host_heartbeat_interval.is_zero() || host_lease < host_heartbeat_interval * 2 {
            bail!("hosts.lease: must be at least twice hosts.heartbeat_interval (and that above zero)");
        }
        let host_memory_overcommit = args.hosts_memory_overcommit.or(file.hosts.memory_overcommit).unwrap_or(1.0);
        if !(0.1..=100.0).contains(&host_memory_overcommit) {
            bail!("hosts.memory_overcommit: must be between 0.1 and 100 (got {host_memory_overcommit})");
        }
        let host_cert_ttl = duration("hosts.cert_ttl", file.hosts.cert_ttl, "24h")?;
        if host_cert_ttl < Duration::from_secs(3) {
            bail!("hosts.cert_ttl: must be at least 3s");
        }
        let hostname = system_hostname();
        let agent_public_url = match args.agent_public_url.or(file.agent_public_url) {
            Some(url) => url,
            None if agent_listen.ip().is_unspecified() => format!("https://{hostname}:{}", agent_listen.port()),
            None => format!("https://{}", agent_listen),
        };
        let (public_host, _) =
            clawplane_tls::host_port(&agent_public_url).map_err(|err| anyhow::anyhow!("agent_public_url: {err:#}"))?;
        let mut agent_server_names = file
            .hosts
            .server_names
            .unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), hostname.clone()]);
        if !agent_server_names.contains(&public_host) {
            agent_server_names.push(public_host);
        }
        let max_agent_connections = file.hosts.max_connections.unwrap_or(20_000);
        if max_agent_connections == 0 {
            bail!("hosts.max_connections: must be greater than zero");
        }
        if file.pki.ca_cert_file.is_some() != file.pki.ca_key_file.is_some() {
            bail!("pki: ca_cert_file and ca_key_file must be given together");
        }

        let (secrets_key_file, secrets_key_is_default) = match args.secrets_key_file.or(file.secrets.key_file) {
            Some(path) => (path, false),
            None => (data_dir.join("secrets.key"), true),
        };
        let secrets_previous_key_files = match args.secrets_previous_key_files {
            flags if !flags.is_empty() => flags,
            _ => file.secrets.previous_key_files.unwrap_or_default(),
        };
        if secrets_previous_key_files.contains(&secrets_key_file) {
            bail!("secrets.previous_key_files: lists secrets.key_file ({}) itself", secrets_key_file.display());
        }

        let models_allowed_cidrs = match args.models_allowed_cidrs {
            flags if !flags.is_empty() => parse_cidrs(&flags)?,
            _ => parse_cidrs(&file.models.allowed_cidrs.unwrap_or_default())?,
        };

        // The key comes from a file or the environment, never a flag: a
        // flag would show in every process listing.
        let key_from_env = std::env::var(PLATFORM_KEY_ENV).ok().filter(|key| !key.is_empty());
        // Flags (and their variables) win over the file, key by key.
        let flagged = PlatformFileConfig {
            provider: args.models_platform_provider,
            api: args.models_platform_api,
            base_url: args.models_platform_base_url,
            api_key_file: args.models_platform_api_key_file,
            models: Some(args.models_platform_models).filter(|m| !m.is_empty()),
            default_model: args.models_platform_default_model,
        };
        let platform = match (file.models.platform, flagged.is_empty()) {
            (None, true) => None,
            (file, _) => Some(flagged.over(file.unwrap_or_default())),
        };
        let platform_model = match platform {
            Some(platform) => Some(platform_model(platform, key_from_env)?),
            None if key_from_env.is_some() => {
                bail!("{PLATFORM_KEY_ENV} is set but no platform model is configured ([models.platform] or --models-platform-*)")
            }
            None => None,
        };

        let plans = file.plans.map(plans_catalogue).transpose()?;

        Ok(Config {
            plans,
            platform_model,
            rate_per_caller,
            rate_per_address,
            max_turns_per_tenant,
            models_allowed_cidrs,
            tenant_cache_ttl,
            agent_public_url,
            agent_server_names,
            host_heartbeat_interval,
            host_lease,
            host_cert_ttl,
            host_memory_overcommit,
            max_agent_connections,
            ca_cert_file: file.pki.ca_cert_file,
            ca_key_file: file.pki.ca_key_file,
            secrets_key_file,
            secrets_key_is_default,
            secrets_previous_key_files,
            data_dir,
            database_url,
            api_listen,
            agent_listen,
            log_format,
            base_domain,
            auth,
            cors_origins,
            tenant_purge_after,
            tenant_purge_interval,
            max_connections,
            max_connections_per_address,
            request_timeout,
            max_request_timeout,
            database_max_connections,
        })
    }

    /// Whether the database is the embedded SQLite file.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

// ---------------------------------------------------------------- plans

/// One `[[plans]]` entry as written. Amounts are integer minor units
/// (cents); limits of 0 (or left out) mean unlimited.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct PlanFileConfig {
    name: String,
    display_name: Option<String>,
    #[serde(default)]
    price_monthly_minor: i64,
    currency: Option<String>,
    #[serde(default)]
    monthly_message_limit: i64,
    #[serde(default)]
    channel_limit: i64,
    #[serde(default)]
    features: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    monthly_token_limit: i64,
    #[serde(default)]
    requests_per_minute: i64,
    overage_policy: Option<String>,
    #[serde(default)]
    overage_per_1k_tokens_minor: i64,
    #[serde(default)]
    overage_per_message_minor: i64,
    #[serde(default)]
    memory_limit_mib: i64,
    #[serde(default)]
    memory_soft_limit_mib: i64,
    #[serde(default)]
    cpu_millis: i64,
    #[serde(default)]
    pids_limit: i64,
    #[serde(default)]
    hibernate_after_secs: i64,
}

/// Most plans a catalogue may hold.
const MAX_PLANS: usize = 100;

/// `[[plans]]`, checked whole; every error names its key, e.g.
/// `plans[1].overage_policy`.
fn plans_catalogue(plans: Vec<PlanFileConfig>) -> anyhow::Result<Vec<crate::store::PlanSpec>> {
    use crate::store::{OveragePolicy, PlanSpec};
    if plans.is_empty() || plans.len() > MAX_PLANS {
        bail!("plans: list 1-{MAX_PLANS} plans (leave [[plans]] out to keep the seeded free, pro and enterprise)");
    }
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(plans.len());
    for (i, plan) in plans.into_iter().enumerate() {
        let key = |field: &str| format!("plans[{i}].{field}");
        let name_ok = (1..=64).contains(&plan.name.len())
            && plan.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            bail!("{}: {:?} must be 1-64 characters of a-z, 0-9 and '-'", key("name"), plan.name);
        }
        if !names.insert(plan.name.clone()) {
            bail!("{}: {:?} is the name of an earlier plan", key("name"), plan.name);
        }
        let display_name = plan.display_name.unwrap_or_else(|| plan.name.clone());
        if display_name.is_empty() || display_name.chars().count() > 128 || display_name.chars().any(char::is_control) {
            bail!("{}: must be 1-128 characters without control characters", key("display_name"));
        }
        let currency = plan.currency.unwrap_or_else(|| "USD".into());
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            bail!("{}: {currency:?} is not 3 uppercase letters (ISO 4217, e.g. \"USD\")", key("currency"));
        }
        let policy = match plan.overage_policy.as_deref() {
            None | Some("block") => OveragePolicy::Block,
            Some("bill") => OveragePolicy::Bill,
            Some(other) => bail!("{}: {other:?} is not \"block\" or \"bill\"", key("overage_policy")),
        };
        if plan.features.len() > 64 || plan.features.iter().any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 1024)
        {
            bail!("{}: at most 64 entries, names 1-64 and values up to 1024 characters", key("features"));
        }
        let number = |field: &str, value: i64, max: i64| -> anyhow::Result<i64> {
            if !(0..=max).contains(&value) {
                bail!("{}: {value} must be between 0 and {max}", key(field));
            }
            Ok(value)
        };
        const BIG: i64 = i64::MAX / 4;
        const SMALL: i64 = i32::MAX as i64;
        out.push(PlanSpec {
            price_monthly_minor: number("price_monthly_minor", plan.price_monthly_minor, BIG)?,
            monthly_message_limit: number("monthly_message_limit", plan.monthly_message_limit, BIG)?,
            channel_limit: number("channel_limit", plan.channel_limit, SMALL)? as i32,
            monthly_token_limit: number("monthly_token_limit", plan.monthly_token_limit, BIG)?,
            requests_per_minute: number("requests_per_minute", plan.requests_per_minute, SMALL)? as i32,
            overage_per_1k_tokens_minor: number("overage_per_1k_tokens_minor", plan.overage_per_1k_tokens_minor, BIG)?,
            overage_per_message_minor: number("overage_per_message_minor", plan.overage_per_message_minor, BIG)?,
            memory_limit_mib: number("memory_limit_mib", plan.memory_limit_mib, 1 << 30)?,
            memory_soft_limit_mib: number("memory_soft_limit_mib", plan.memory_soft_limit_mib, 1 << 30)?,
            cpu_millis: number("cpu_millis", plan.cpu_millis, SMALL)? as i32,
            pids_limit: number("pids_limit", plan.pids_limit, SMALL)? as i32,
            hibernate_after_secs: number("hibernate_after_secs", plan.hibernate_after_secs, BIG)?,
            overage_policy: policy,
            features: plan.features,
            currency,
            display_name,
            name: plan.name,
        });
    }
    Ok(out)
}

/// This machine's host name, for default certificate names and URLs.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("config file {}: cannot read", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// The SQLite URL for a data directory (`mode=rwc` creates the file).
pub fn default_sqlite_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("clawplane.db").display())
}

fn validate_database_url(url: &str) -> anyhow::Result<()> {
    if url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        // Never echo the URL: it may carry a password.
        bail!("database_url: must start with sqlite:, postgres:// or postgresql://")
    }
}

impl PlatformFileConfig {
    fn is_empty(&self) -> bool {
        self.provider.is_none()
            && self.api.is_none()
            && self.base_url.is_none()
            && self.api_key_file.is_none()
            && self.models.is_none()
            && self.default_model.is_none()
    }

    /// Each setting of `self`, else of `file`.
    fn over(self, file: PlatformFileConfig) -> PlatformFileConfig {
        PlatformFileConfig {
            provider: self.provider.or(file.provider),
            api: self.api.or(file.api),
            base_url: self.base_url.or(file.base_url),
            api_key_file: self.api_key_file.or(file.api_key_file),
            models: self.models.or(file.models),
            default_model: self.default_model.or(file.default_model),
        }
    }
}

/// `[models.platform]`, checked whole: every model call of a tenant on it
/// goes to `base_url` with the operator's key, added by the host's metering
/// proxy.
fn platform_model(file: PlatformFileConfig, key_from_env: Option<String>) -> anyhow::Result<PlatformModel> {
    let provider = file.provider.unwrap_or_else(|| "platform".into());
    if !valid_provider(&provider) {
        bail!("models.platform.provider: {provider:?} must be 1-40 letters, digits, '-' or '_'");
    }
    let api = match file.api.as_deref() {
        None => default_api(&provider),
        Some(name) => api_by_name(name).with_context(|| {
            format!("models.platform.api: {name:?} is not openai-completions, openai-responses or anthropic-messages")
        })?,
    };
    let base_url =
        file.base_url.context("models.platform.base_url: required (the upstream, e.g. https://api.openai.com/v1)")?;
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) || base_url.len() > 512 {
        bail!("models.platform.base_url: {base_url:?} must be an http(s) URL of at most 512 characters");
    }
    let api_key = match (key_from_env, file.api_key_file) {
        (Some(key), _) => key,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("models.platform.api_key_file: cannot read {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => bail!("models.platform: api_key_file (or {PLATFORM_KEY_ENV}) is required"),
    };
    if api_key.is_empty() || api_key.len() > 4096 || api_key.chars().any(char::is_control) {
        bail!("models.platform: the API key must be 1-4096 characters without control characters");
    }
    let models = file.models.unwrap_or_default();
    if models.is_empty() || models.len() > 64 {
        bail!("models.platform.models: list 1-64 model ids the tenants may use");
    }
    if let Some(bad) = models.iter().find(|m| !valid_model(m)) {
        bail!("models.platform.models: {bad:?} must be 1-128 letters, digits, '-', '_', '.', ':' or '/'");
    }
    let default_model = file.default_model.unwrap_or_else(|| models[0].clone());
    if !models.contains(&default_model) {
        bail!("models.platform.default_model: {default_model:?} is not in models.platform.models");
    }
    Ok(PlatformModel { provider, api, base_url, api_key, models, default_model })
}

/// `models.allowed_cidrs`: CIDRs, or single addresses meaning just that one.
fn parse_cidrs(values: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    values
        .iter()
        .map(|value| {
            let text = value.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| anyhow::anyhow!("models.allowed_cidrs: {value:?} is not a CIDR like 10.0.0.0/8"))
        })
        .collect()
}

fn parse_addr(name: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value.parse().with_context(|| format!("{name}: {value:?} is not an address like 127.0.0.1:7700"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: ServeArgs, toml_text: &str) -> anyhow::Result<Config> {
        let file: FileConfig = toml::from_str(toml_text)?;
        Config::merge(args, file)
    }

    #[test]
    fn defaults_serve_sqlite_on_loopback() {
        let config = load(ServeArgs::default(), "").unwrap();
        assert!(config.is_sqlite());
        assert_eq!(config.api_listen.to_string(), "127.0.0.1:7700");
        assert!(config.auth.jwt.is_none());
        assert_eq!(config.cors_origins, CorsOrigins::List(vec![]), "no cross-origin calls unless configured");
    }

    #[test]
    fn limits_come_from_the_flag_or_the_file() {
        let file = "[limits]\nrate_per_caller = 7\nburst_per_caller = 9\nmax_connections_per_address = 3";
        let config = load(ServeArgs::default(), file).unwrap();
        assert_eq!((config.rate_per_caller, config.max_connections_per_address), (Rate::new(7, 9), 3));
        let args = ServeArgs {
            limits_rate_per_caller: Some(0),
            limits_rate_per_address: Some(5),
            limits_burst_per_address: Some(6),
            limits_max_connections_per_address: Some(0),
            ..Default::default()
        };
        let config = load(args, file).unwrap();
        assert_eq!(config.rate_per_caller, Rate::new(0, 9), "a flag wins over the file");
        assert_eq!((config.rate_per_address, config.max_connections_per_address), (Rate::new(5, 6), 0));
    }

    #[test]
    fn the_secrets_keys_come_from_the_flag_or_the_file() {
        let config = load(ServeArgs { data_dir: Some("/d".into()), ..Default::default() }, "").unwrap();
        assert_eq!(config.secrets_key_file, PathBuf::from("/d/secrets.key"));
        assert!(config.secrets_key_is_default && config.secrets_previous_key_files.is_empty());
        let file = "[secrets]\nkey_file = \"/k/new.key\"\nprevious_key_files = [\"/k/old.key\"]";
        let config = load(ServeArgs::default(), file).unwrap();
        assert_eq!(config.secrets_key_file, PathBuf::from("/k/new.key"));
        assert!(!config.secrets_key_is_default, "a configured key is never created");
        assert_eq!(config.secrets_previous_key_files, [PathBuf::from("/k/old.key")]);
        let args = ServeArgs {
            secrets_key_file: Some("/f/a.key".into()),
            secrets_previous_key_files: vec!["/f/b.key".into(), "/f/c.key".into()],
            ..Default::default()
        };
        let config = load(args, file).unwrap();
        assert_eq!(config.secrets_key_file, PathBuf::from("/f/a.key"), "a flag wins over the file");
        assert_eq!(config.secrets_previous_key_files, [PathBuf::from("/f/b.key"), PathBuf::from("/f/c.key")]);
    }

    #[test]
    fn cors_origins_come_from_the_flag_or_the_file() {
        let file = "[cors]\nallowed_origins = [\"https://file.example\"]";
        assert_eq!(
            load(ServeArgs::default(), file).unwrap().cors_origins,
            CorsOrigins::List(vec!["https://file.example".into()])
        );
        let args = ServeArgs { cors_allowed_origins: vec!["https://flag.example".into()], ..Default::default() };
        assert_eq!(load(args, file).unwrap().cors_origins, CorsOrigins::List(vec!["https://flag.example".into()]));
        let any = ServeArgs { cors_allowed_origins: vec!["*".into()], ..Default::default() };
        assert_eq!(load(any, "").unwrap().cors_origins, CorsOrigins::Any);
        let bad = ServeArgs { cors_allowed_origins: vec!["app.example".into()], ..Default::default() };
        assert!(format!("{:#}", load(bad, "").unwrap_err()).contains("cors.allowed_origins"));
    }

    #[test]
    fn flags_override_the_file() {
        let args = ServeArgs { api_listen: Some("127.0.0.1:9000".into()), ..Default::default() };
        let config = load(args, "api_listen = \"127.0.0.1:8000\"").unwrap();
        assert_eq!(config.api_listen.port(), 9000);
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let cases: &[(&str, &str)] = &[
            ("api_listen = \"nowhere\"", "api_listen"),
            ("log_format = \"xml\"", "log_format"),
            ("database_url = \"mysql://x\"", "database_url"),
            ("base_domain = \"bad domain\"", "base_domain"),
            ("admin_token = \"short\"", "admin_token"),
            ("[jwt]\nhs256_secret = \"short\"", "jwt.hs256_secret"),
            ("[jwt]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\njwks_file = \"/x\"", "exactly one"),
            ("[jwt]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\nalgorithms = [\"none\"]", "jwt.algorithms"),
            ("[tenants]\npurge_after = \"soon\"", "tenants.purge_after"),
            ("[cors]\nallowed_origins = [\"ftp://x\"]", "cors.allowed_origins"),
            ("[limits]\nrate_per_caller = 10\nburst_per_caller = 5", "limits.burst_per_caller"),
            ("[limits]\nmax_connections = 0", "limits.max_connections"),
            ("[limits]\nrequest_timeout = \"0s\"", "limits.request_timeout"),
            ("[limits]\nmax_request_timeout = \"10s\"", "limits.max_request_timeout"),
            ("[limits]\nmax_turns_per_tenant = 0", "limits.max_turns_per_tenant"),
            ("[limits]\nmax_request_timeout = \"later\"", "limits.max_request_timeout"),
            ("[hosts]\nheartbeat_interval = \"10s\"\nlease = \"5s\"", "hosts.lease"),
            ("[hosts]\nmemory_overcommit = 0.0", "hosts.memory_overcommit"),
            ("[hosts]\nmemory_overcommit = 1000.0", "hosts.memory_overcommit"),
            ("[hosts]\ncert_ttl = \"1s\"", "hosts.cert_ttl"),
            ("agent_public_url = \"http://x:1\"", "agent_public_url"),
            ("[pki]\nca_cert_file = \"/x\"", "together"),
            ("[secrets]\nkey_file = \"/k\"\nprevious_key_files = [\"/k\"]", "secrets.previous_key_files"),
            ("[models]\nallowed_cidrs = [\"10.0.0.0/33\"]", "models.allowed_cidrs"),
            ("[models]\nallowed_cidrs = [\"intranet\"]", "models.allowed_cidrs"),
        ];
        for (text, expected) in cases {
            let err = load(ServeArgs::default(), text).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{text}: {err:#}");
        }
    }

    #[test]
    fn the_platform_model_is_checked_and_its_key_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("platform.key");
        std::fs::write(&key, "sk-platform-secret-0123\n").unwrap();
        let section = |extra: &str| {
            format!("[models.platform]\nbase_url = \"https://llm.example.com/v1\"\nmodels = [\"m1\", \"m2\"]\n{extra}")
        };
        let with_key = |extra: &str| section(&format!("api_key_file = {:?}\n{extra}", key.display().to_string()));
        let config = load(ServeArgs::default(), &with_key("default_model = \"m2\"")).unwrap();
        let platform = config.platform_model.unwrap();
        assert_eq!((platform.provider.as_str(), platform.default_model.as_str()), ("platform", "m2"));
        assert_eq!(platform.api_key, "sk-platform-secret-0123", "read from the file, trimmed");
        assert!(!format!("{platform:?}").contains("sk-platform"), "Debug hides the key");
        let cases: &[(String, &str)] = &[
            (section(""), "api_key_file"),
            (with_key("provider = \"a.b\""), "models.platform.provider"),
            (with_key("api = \"grpc\""), "models.platform.api"),
            (with_key("default_model = \"m3\""), "models.platform.default_model"),
            (with_key("").replace("https://llm.example.com/v1", "ftp://x"), "models.platform.base_url"),
            (with_key("").replace("[\"m1\", \"m2\"]", "[]"), "models.platform.models"),
            (with_key("").replace("[\"m1\", \"m2\"]", "[\"m 1\"]"), "models.platform.models"),
            (section("api_key_file = \"/no/such/key\""), "models.platform.api_key_file"),
        ];
        for (text, expected) in cases {
            let err = load(ServeArgs::default(), text).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{text}: {err:#}");
        }
        // Flags win over the file key by key, and configure it alone too.
        let args = ServeArgs {
            models_platform_models: vec!["m9".into()],
            models_platform_default_model: Some("m9".into()),
            ..Default::default()
        };
        let platform = load(args, &with_key("")).unwrap().platform_model.unwrap();
        assert_eq!((platform.models, platform.default_model.as_str()), (vec!["m9".to_string()], "m9"));
        let args = ServeArgs {
            models_platform_base_url: Some("https://llm.example.com/v1".into()),
            models_platform_api_key_file: Some(key.clone()),
            models_platform_models: vec!["m1".into()],
            ..Default::default()
        };
        assert_eq!(load(args, "").unwrap().platform_model.unwrap().default_model, "m1");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../deploy/clawplane.example.toml").replace("/etc/clawplane/sso-jwks.json", "x");
        let file: FileConfig = toml::from_str(&text).unwrap();
        let config = Config::merge(ServeArgs::default(), file).unwrap();
        assert_eq!(config.agent_public_url, "https://cp.example.com:7701");
        assert!(config.agent_server_names.contains(&"cp.example.com".to_string()));
        assert_eq!(config.cors_origins, CorsOrigins::List(vec!["https://app.example.com".into()]));
    }

    #[test]
    fn model_cidrs_come_from_the_flag_or_the_file() {
        let config = load(ServeArgs::default(), "[models]\nallowed_cidrs = [\"127.0.0.0/8\", \"fd00::1\"]").unwrap();
        let shown: Vec<String> = config.models_allowed_cidrs.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["127.0.0.0/8", "fd00::1/128"]);
        let args = ServeArgs { models_allowed_cidrs: vec!["10.1.2.3/8".into()], ..Default::default() };
        let config = load(args, "[models]\nallowed_cidrs = [\"127.0.0.0/8\"]").unwrap();
        assert_eq!(config.models_allowed_cidrs, vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]);
        assert!(load(ServeArgs::default(), "").unwrap().models_allowed_cidrs.is_empty());
    }

    #[test]
    fn the_plans_catalogue_is_checked_and_names_the_key() {
        use crate::store::OveragePolicy;
        assert!(load(ServeArgs::default(), "").unwrap().plans.is_none(), "no [[plans]]: the seeded table stays");
        let good = "[[plans]]\nname = \"free\"\nmonthly_token_limit = 1000\n\n[[plans]]\nname = \"team-2\"\n\
                    display_name = \"Team\"\nprice_monthly_minor = 4900\ncurrency = \"EUR\"\n\
                    overage_policy = \"bill\"\noverage_per_1k_tokens_minor = 2\nfeatures = { agents = \"5\" }";
        let plans = load(ServeArgs::default(), good).unwrap().plans.unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!((plans[0].currency.as_str(), plans[0].overage_policy), ("USD", OveragePolicy::Block));
        assert_eq!((plans[1].price_monthly_minor, plans[1].overage_policy), (4900, OveragePolicy::Bill));
        assert_eq!(plans[1].features.get("agents").map(String::as_str), Some("5"));
        let plan = |body: &str| format!("[[plans]]\nname = \"free\"\n\n[[plans]]\n{body}");
        let cases: Vec<(String, &str)> = vec![
            (
                plan("name = \"pro\"\noverage_policy = \"charge\""),
                "plans[1].overage_policy: \"charge\" is not \"block\" or \"bill\"",
            ),
            (plan("name = \"free\""), "plans[1].name: \"free\" is the name of an earlier plan"),
            (plan("name = \"Pro\""), "plans[1].name"),
            (plan("name = \"pro plan\""), "plans[1].name"),
            (plan("name = \"\""), "plans[1].name"),
            (plan("name = \"pro\"\nprice_monthly_minor = -1"), "plans[1].price_monthly_minor: -1"),
            (plan("name = \"pro\"\nmonthly_token_limit = -5"), "plans[1].monthly_token_limit"),
            (plan("name = \"pro\"\nrequests_per_minute = -1"), "plans[1].requests_per_minute"),
            (plan("name = \"pro\"\nchannel_limit = -1"), "plans[1].channel_limit"),
            (plan("name = \"pro\"\noverage_per_message_minor = -1"), "plans[1].overage_per_message_minor"),
            (plan("name = \"pro\"\nmemory_limit_mib = -1"), "plans[1].memory_limit_mib"),
            (plan("name = \"pro\"\ncurrency = \"usd\""), "plans[1].currency"),
            (plan("name = \"pro\"\ncurrency = \"EURO\""), "plans[1].currency"),
            (plan("name = \"pro\"\ndisplay_name = \"\""), "plans[1].display_name"),
        ];
        for (text, expected) in cases {
            let err = load(ServeArgs::default(), &text).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{text}: {err:#}");
        }
        let unknown = toml::from_str::<FileConfig>("[[plans]]\nname = \"x\"\nprice = 5").unwrap_err();
        assert!(unknown.to_string().contains("price"), "{unknown}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<FileConfig>("api_lsten = \"x\"").unwrap_err();
        assert!(err.to_string().contains("api_lsten"), "{err}");
    }
}
