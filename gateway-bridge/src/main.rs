//! `clawplane-bridge`: routes `https://<tenant>.<domain>` to the tenant's
//! OpenClaw gateway, wherever it runs: bridge -> mutual TLS -> the host
//! agent's tenant proxy -> the gateway on that host's loopback.
//!
//! The route table comes from the control plane (`WatchRoutes`, admin
//! token) and stays in memory; users are authenticated at the edge with the
//! same SSO JWT settings as the control plane (its TOML file or the
//! `CLAWPLANE_JWT_*` variables); the gateway's own credential is added by
//! the host agent, never by or for the user.
/// Proxying allocates and frees small buffers on every request: under the
/// bridge bench, glibc's malloc took about 8% of the bridge's and the
/// agent's CPU, mimalloc about 3% (perf; benches/bridge.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod metrics;
mod routes;
mod server;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clawplane::config::{AuthArgs, Config, ServeArgs};
use clawplane::rate::{KeyedRate, Rate};
use clawplane_tls::edge::{self, Activity, AddressCaps};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(name = "clawplane-bridge", version, about = "Clawplane gateway bridge")]
struct Cli {
    /// The control plane's TOML file: SSO (jwt) settings and base_domain.
    #[arg(long, env = "CLAWPLANE_CONFIG")]
    config: Option<PathBuf>,
    /// The control plane's API listener.
    #[arg(long, env = "CLAWPLANE_CONTROL_PLANE", default_value = "http://127.0.0.1:7700")]
    control_plane: String,
    /// Where users connect (HTTP/1.1, HTTP/2 with TLS, WebSocket).
    #[arg(long, env = "CLAWPLANE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    /// Health, Prometheus metrics and nginx's `/api/internal/route`; keep it
    /// private (it reveals where tenants run).
    #[arg(long, env = "CLAWPLANE_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    admin_listen: String,
    /// Base domain of tenant hostnames (default: the control plane's).
    #[arg(long, env = "CLAWPLANE_BASE_DOMAIN")]
    base_domain: Option<String>,
    /// Folder with bridge.key, bridge.pem and ca.pem from
    /// `clawplane ca issue-bridge`.
    #[arg(long, env = "CLAWPLANE_BRIDGE_IDENTITY")]
    identity_dir: PathBuf,
    /// TLS certificate (PEM chain) for users; reloaded when it changes.
    /// Without it the bridge speaks plain HTTP (behind a TLS terminator).
    #[arg(long, env = "CLAWPLANE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "CLAWPLANE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest request body forwarded.
    #[arg(long, env = "CLAWPLANE_MAX_BODY_BYTES", default_value_t = 20 * 1024 * 1024)]
    max_body_bytes: usize,
    /// How long a tenant's gateway may take to start answering.
    #[arg(long, env = "CLAWPLANE_RESPONSE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    response_timeout: Duration,
    #[arg(long, env = "CLAWPLANE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Open connections one client address (an IPv6 client: its /64) may
    /// hold, WebSockets included (0: no limit; trusted fronts are exempt:
    /// they carry many clients).
    #[arg(long, env = "CLAWPLANE_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    max_connections_per_address: usize,
    /// Requests per second one client address may send (0: no limit)...
    #[arg(long, env = "CLAWPLANE_RATE_PER_ADDRESS", default_value_t = 100)]
    rate_per_address: u32,
    /// ...and how many it may send at once above that rate.
    #[arg(long, env = "CLAWPLANE_BURST_PER_ADDRESS", default_value_t = 400)]
    burst_per_address: u32,
    /// Requests per second to one tenant, from all its users (0: no limit)...
    #[arg(long, env = "CLAWPLANE_RATE_PER_TENANT", default_value_t = 200)]
    rate_per_tenant: u32,
    /// ...and how many at once above that rate.
    #[arg(long, env = "CLAWPLANE_BURST_PER_TENANT", default_value_t = 800)]
    burst_per_tenant: u32,
    /// Users reach the bridge over https through a TLS front that does not
    /// send X-Forwarded-Proto: session cookies are then marked Secure.
    #[arg(long, env = "CLAWPLANE_PUBLIC_HTTPS")]
    public_https: bool,
    /// Address of a load balancer in front whose X-Forwarded-For and
    /// X-Forwarded-Proto are believed (repeatable); from anyone else those
    /// headers are replaced.
    #[arg(long = "trusted-front", env = "CLAWPLANE_TRUSTED_FRONTS", value_delimiter = ',')]
    trusted_fronts: Vec<std::net::IpAddr>,
    /// Threads serving traffic (0: one per core). 1 runs a single-threaded
    /// runtime, the cheapest per request where the bridge shares a small
    /// machine with other busy processes.
    #[arg(long, env = "CLAWPLANE_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    /// Admin token (for WatchRoutes) and SSO settings.
    #[command(flatten)]
    auth: AuthArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match cli.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn read(dir: &std::path::Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (from `clawplane ca issue-bridge`)", path.display()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // One parser for the shared settings: the control plane's own.
    let config = Config::load(&ServeArgs {
        config: cli.config.clone(),
        base_domain: cli.base_domain.clone(),
        auth: cli.auth.clone(),
        ..Default::default()
    })?;
    let admin_token = config
        .auth
        .admin_token
        .clone()
        .context("an admin token is required to watch routes (CLAWPLANE_ADMIN_TOKEN or admin_token in the file)")?;
    let jwt = match &config.auth.jwt {
        Some(jwt) => Some(clawplane::auth::JwtVerifier::from_config(jwt)?),
        None => {
            tracing::warn!("no SSO (jwt) settings: every tenant request will be refused");
            None
        }
    };
    let (ca, cert, key) = (
        read(&cli.identity_dir, "ca.pem")?,
        read(&cli.identity_dir, "bridge.pem")?,
        read(&cli.identity_dir, "bridge.key")?,
    );
    let table = Arc::new(routes::RouteTable::default());
    tokio::spawn(routes::watch(table.clone(), cli.control_plane.clone(), admin_token, config.base_domain.clone()));
    let pooled = upstream::AgentConnector::new(upstream::client_config(&ca, &cert, &key, &[b"h2"])?, table.clone());
    let upgrades =
        upstream::AgentConnector::new(upstream::client_config(&ca, &cert, &key, &[b"http/1.1"])?, table.clone());
    for (name, rate, burst) in [
        ("address", cli.rate_per_address, cli.burst_per_address),
        ("tenant", cli.rate_per_tenant, cli.burst_per_tenant),
    ] {
        if rate > 0 && burst < rate {
            anyhow::bail!("--burst-per-{name} ({burst}) must not be smaller than --rate-per-{name} ({rate})");
        }
    }
    let sessions = clawplane::secrets::SecretBox::load_or_create(&cli.identity_dir.join("session.key"))
        .context("session cookie key")?;
    let limits = clawplane_tls::edge::ConnectionLimits::bridge();
    let bridge = Arc::new(server::Bridge {
        table,
        base_domain: config.base_domain.clone(),
        jwt,
        agents: upstream::AgentPool::new(pooled),
        upgrades,
        max_body_bytes: cli.max_body_bytes,
        response_timeout: cli.response_timeout,
        metrics: Default::default(),
        trusted_fronts: cli.trusted_fronts.clone(),
        public_https: cli.public_https,
        sessions,
        limits,
        address_rate: KeyedRate::new(Rate::new(cli.rate_per_address, cli.burst_per_address)),
        tenant_rate: KeyedRate::new(Rate::new(cli.rate_per_tenant, cli.burst_per_tenant)),
    });
    let admin =
        TcpListener::bind(&cli.admin_listen).await.with_context(|| format!("admin_listen {}", cli.admin_listen))?;
    tracing::info!(admin = %admin.local_addr()?, "admin listener (health, metrics, internal route)");
    tokio::spawn(serve_admin(admin, bridge.clone()));
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert.clone(), key.clone())?),
        _ => None,
    };
    let listener = TcpListener::bind(&cli.listen).await.with_context(|| format!("listen {}", cli.listen))?;
    tracing::info!(listen = %listener.local_addr()?, base_domain = %config.base_domain, tls = tls.is_some(), "bridge serving");
    let permits = Arc::new(Semaphore::new(cli.max_connections));
    let per_address = AddressCaps::new(cli.max_connections_per_address);
    loop {
        let permit = permits.clone().acquire_owned().await?;
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let address_permit = match bridge.trusted_fronts.contains(&peer.ip()) {
            true => None,
            false => match per_address.try_acquire(peer.ip()) {
                Some(permit) => permit,
                None => {
                    tracing::debug!(%peer, "refused: the address holds its share of connections");
                    bridge.metrics.refused_connection();
                    continue;
                }
            },
        };
        let (bridge, tls) = (bridge.clone(), tls.clone());
        tokio::spawn(async move {
            let permits = Activity::holding((permit, address_permit));
            let _ = tcp.set_nodelay(true);
            match tls {
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(TokioIo::new(stream), bridge, peer, true, permits).await,
                    _ => tracing::debug!(%peer, "TLS handshake failed"),
                },
                None => serve_connection(TokioIo::new(tcp), bridge, peer, false, permits).await,
            }
        });
    }
}

/// `activity` holds the connection's permits.
async fn serve_connection<I>(io: I, bridge: Arc<server::Bridge>, peer: SocketAddr, tls: bool, activity: Activity)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Arc::new(activity);
    let limits = bridge.limits;
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let (bridge, in_flight) = (bridge.clone(), requests.begin());
        async move { Ok::<_, std::convert::Infallible>(bridge.handle(request, peer, tls, in_flight).await) }
    });
    if let Err(err) = edge::serve(&limits, io, &activity, service).await {
        tracing::debug!(%peer, error = %err, "connection ended");
    }
}

async fn serve_admin(listener: TcpListener, bridge: Arc<server::Bridge>) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let bridge = bridge.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let bridge = bridge.clone();
                async move { Ok::<_, std::convert::Infallible>(bridge.admin(request).await) }
            });
            let builder = clawplane_tls::edge::ConnectionLimits::bridge().builder();
            if let Err(err) = builder.serve_connection(TokioIo::new(tcp), service).await {
                tracing::debug!(%peer, error = %err, "admin connection ended");
            }
        });
    }
}

/// TLS for users, with the certificate reloaded when its files change.
fn tls_acceptor(cert: PathBuf, key: PathBuf) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let load = |cert: &PathBuf, key: &PathBuf| -> anyhow::Result<(String, String)> {
        Ok((
            std::fs::read_to_string(cert).with_context(|| format!("tls_cert {}", cert.display()))?,
            std::fs::read_to_string(key).with_context(|| format!("tls_key {}", key.display()))?,
        ))
    };
    let (cert_pem, key_pem) = load(&cert, &key)?;
    let identity = clawplane_tls::ReloadableIdentity::from_pem(&cert_pem, &key_pem)?;
    let mut config = rustls::ServerConfig::builder_with_provider(clawplane_tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(identity.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    tokio::spawn(async move {
        let mut seen = (modified(&cert), modified(&key));
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = (modified(&cert), modified(&key));
            if now == seen {
                continue;
            }
            match load(&cert, &key).and_then(|(c, k)| identity.replace(&c, &k)) {
                Ok(()) => {
                    tracing::info!("TLS certificate reloaded");
                    seen = now;
                }
                Err(err) => tracing::warn!(error = %err, "new TLS certificate not usable; keeping the old one"),
            }
        }
    });
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
