//! The bridge's settings: its own flags and `CLAWPLANE_*` variables, and,
//! from the control plane's TOML file, only the SSO settings and
//! `base_domain`, parsed by the identity crate exactly as the control plane
//! parses them (the file's other keys are the control plane's).
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clawplane_identity::config::{AuthArgs, AuthConfig, AuthFile};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(name = "clawplane-bridge", version, about = "Clawplane gateway bridge")]
pub struct Cli {
    /// The control plane's TOML file: SSO (jwt) settings and base_domain.
    #[arg(long, env = "CLAWPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The control plane's API listener.
    #[arg(long, env = "CLAWPLANE_CONTROL_PLANE", default_value = "http://127.0.0.1:7700")]
    pub control_plane: String,
    /// Where users connect (HTTP/1.1, HTTP/2 with TLS, WebSocket).
    #[arg(long, env = "CLAWPLANE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Health, Prometheus metrics and nginx's `/api/internal/route`; keep it
    /// private (it reveals where tenants run).
    #[arg(long, env = "CLAWPLANE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// Base domain of tenant hostnames (default: the control plane's).
    #[arg(long, env = "CLAWPLANE_BASE_DOMAIN")]
    pub base_domain: Option<String>,
    /// Folder with bridge.key, bridge.pem and ca.pem from
    /// `clawplane ca issue-bridge`.
    #[arg(long, env = "CLAWPLANE_BRIDGE_IDENTITY")]
    pub identity_dir: PathBuf,
    /// TLS certificate (PEM chain) for users; reloaded when it changes.
    /// Without it the bridge speaks plain HTTP (behind a TLS terminator).
    #[arg(long, env = "CLAWPLANE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "CLAWPLANE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body forwarded.
    #[arg(long, env = "CLAWPLANE_MAX_BODY_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How long a tenant's gateway may take to start answering.
    #[arg(long, env = "CLAWPLANE_RESPONSE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub response_timeout: Duration,
    #[arg(long, env = "CLAWPLANE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Open connections one client address (an IPv6 client: its /64) may
    /// hold, WebSockets included (0: no limit; trusted fronts are exempt:
    /// they carry many clients).
    #[arg(long, env = "CLAWPLANE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub max_connections_per_address: usize,
    /// Requests per second one client address may send (0: no limit)...
    #[arg(long, env = "CLAWPLANE_RATE_PER_ADDRESS", default_value_t = 100)]
    pub rate_per_address: u32,
    /// ...and how many it may send at once above that rate.
    #[arg(long, env = "CLAWPLANE_BURST_PER_ADDRESS", default_value_t = 400)]
    pub burst_per_address: u32,
    /// Requests per second to one tenant, from all its users (0: no limit)...
    #[arg(long, env = "CLAWPLANE_RATE_PER_TENANT", default_value_t = 200)]
    pub rate_per_tenant: u32,
    /// ...and how many at once above that rate.
    #[arg(long, env = "CLAWPLANE_BURST_PER_TENANT", default_value_t = 800)]
    pub burst_per_tenant: u32,
    /// Users reach the bridge over https through a TLS front that does not
    /// send X-Forwarded-Proto: session cookies are then marked Secure.
    #[arg(long, env = "CLAWPLANE_PUBLIC_HTTPS")]
    pub public_https: bool,
    /// Address of a load balancer in front whose X-Forwarded-For and
    /// X-Forwarded-Proto are believed (repeatable); from anyone else those
    /// headers are replaced.
    #[arg(long = "trusted-front", env = "CLAWPLANE_TRUSTED_FRONTS", value_delimiter = ',')]
    pub trusted_fronts: Vec<std::net::IpAddr>,
    /// Threads serving traffic (0: one per core). 1 runs a single-threaded
    /// runtime, the cheapest per request where the bridge shares a small
    /// machine with other busy processes.
    #[arg(long, env = "CLAWPLANE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// How long requests in flight at SIGTERM or SIGINT may take to finish
    /// (no new connections are accepted meanwhile).
    #[arg(long, env = "CLAWPLANE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Admin token (for WatchRoutes) and SSO settings.
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// The keys of the control plane's file the bridge reads.
#[derive(Deserialize, Debug, Default)]
struct SharedFile {
    base_domain: Option<String>,
    #[serde(flatten)]
    auth: AuthFile,
}

/// What the bridge shares with the control plane, validated.
#[derive(Debug)]
pub struct Shared {
    pub base_domain: String,
    pub auth: AuthConfig,
}

impl Cli {
    /// The shared settings: flags and variables over the file's.
    pub fn shared(&self) -> anyhow::Result<Shared> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => SharedFile::default(),
        };
        let base_domain = clawplane_identity::host::base_domain(self.base_domain.clone(), file.base_domain)?;
        let auth = AuthConfig::load(&self.auth, file.auth)?;
        Ok(Shared { base_domain, auth })
    }

    /// Settings that are wrong together.
    pub fn check(&self) -> anyhow::Result<()> {
        for (name, rate, burst) in [
            ("address", self.rate_per_address, self.burst_per_address),
            ("tenant", self.rate_per_tenant, self.burst_per_tenant),
        ] {
            if rate > 0 && burst < rate {
                anyhow::bail!("--burst-per-{name} ({burst}) must not be smaller than --rate-per-{name} ({rate})");
            }
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> anyhow::Result<SharedFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("config file {}: cannot read", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_gives_the_sso_settings_and_base_domain_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clawplane.toml");
        let text =
            "base_domain = \"file.test\"\ndatabase_url = \"sqlite://x\"\nadmin_token = \"file-admin-token-0123\"\n\
                    [limits]\nrate_per_caller = 7\n[jwt]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n";
        std::fs::write(&path, text).unwrap();
        let cli = Cli::parse_from(["clawplane-bridge", "--identity-dir", "/x", "--config", path.to_str().unwrap()]);
        let shared = cli.shared().unwrap();
        assert_eq!(shared.base_domain, "file.test");
        assert_eq!(shared.auth.admin_token.as_deref(), Some("file-admin-token-0123"));
        assert!(shared.auth.jwt.is_some());
        let flagged = Cli::parse_from([
            "clawplane-bridge",
            "--identity-dir",
            "/x",
            "--base-domain",
            "flag.test",
            "--config",
            path.to_str().unwrap(),
        ]);
        assert_eq!(flagged.shared().unwrap().base_domain, "flag.test");
        std::fs::write(&path, "[jwt]\nhs256_secret = \"short\"\n").unwrap();
        assert!(format!("{:#}", cli.shared().unwrap_err()).contains("jwt.hs256_secret"));
        std::fs::write(&path, "[jwt]\nkey = 1\n").unwrap();
        assert!(format!("{:#}", cli.shared().unwrap_err()).contains("key"));
    }
}
