//! `clawplane-bridge`: routes `https://<tenant>.<domain>` to the tenant's
//! OpenClaw gateway, wherever it runs: bridge -> mutual TLS -> the host
//! agent's tenant proxy -> the gateway on that host's loopback.
//!
//! The route table comes from the control plane (`WatchRoutes`, admin
//! token) and stays in memory; users are authenticated at the edge with the
//! same SSO JWT settings as the control plane (its TOML file or the
//! `CLAWPLANE_JWT_*` variables, read by `config` through the identity
//! crate); the gateway's own credential is added by the host agent, never
//! by or for the user.
//!
//! Shutdown: every task this file spawns holds a handle of one
//! [`ShutdownSignal`]. At SIGTERM or SIGINT the listeners stop accepting,
//! connections finish the requests in flight and close, and the bridge
//! exits once all are done or `--shutdown-grace` has passed. What only
//! carries a tracked connection's requests (HTTP/2 connections to agents,
//! WebSocket relays) holds no handle: it ends with them or with the
//! process.
/// Proxying allocates and frees small buffers on every request: under the
/// bridge bench, glibc's malloc took about 8% of the bridge's and the
/// agent's CPU, mimalloc about 3% (perf; benches/bridge.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod config;
mod metrics;
mod routes;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clawplane_edge::agents;
use clawplane_edge::connections::{self as edge, Activity, AddressCaps, ConnectionLimits};
use clawplane_edge::rate::{KeyedRate, Rate};
use clawplane_edge::shutdown::{signalled, Shutdown, ShutdownSignal};
use clawplane_identity::JwtVerifier;
use config::Cli;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
    let shared = cli.shared()?;
    let admin_token = shared
        .auth
        .admin_token
        .clone()
        .context("an admin token is required to watch routes (CLAWPLANE_ADMIN_TOKEN or admin_token in the file)")?;
    let jwt = match &shared.auth.jwt {
        Some(jwt) => Some(JwtVerifier::from_config(jwt)?),
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
    let signal = ShutdownSignal::default();
    let table = Arc::new(routes::RouteTable::default());
    tokio::spawn(routes::watch(
        table.clone(),
        cli.control_plane.clone(),
        admin_token,
        shared.base_domain.clone(),
        signal.handle(),
    ));
    let identity = clawplane_tls::ReloadableIdentity::from_pem(&cert, &key)?;
    let pooled = agents::AgentConnector::new(agents::client_config(&ca, identity.clone(), &[b"h2"])?, table.clone());
    let upgrades = agents::AgentConnector::new(agents::client_config(&ca, identity, &[b"http/1.1"])?, table.clone());
    cli.check()?;
    let sessions = clawplane_tls::secrets::SecretBox::load_or_create(&cli.identity_dir.join("session.key"))
        .context("session cookie key")?;
    let bridge = Arc::new(server::Bridge {
        table,
        base_domain: shared.base_domain.clone(),
        jwt,
        agents: agents::AgentPool::new(pooled),
        upgrades,
        max_body_bytes: cli.max_body_bytes,
        response_timeout: cli.response_timeout,
        metrics: Default::default(),
        trusted_fronts: cli.trusted_fronts.clone(),
        public_https: cli.public_https,
        sessions,
        limits: ConnectionLimits::bridge(),
        address_rate: KeyedRate::new(Rate::new(cli.rate_per_address, cli.burst_per_address)),
        tenant_rate: KeyedRate::new(Rate::new(cli.rate_per_tenant, cli.burst_per_tenant)),
    });
    let admin =
        TcpListener::bind(&cli.admin_listen).await.with_context(|| format!("admin_listen {}", cli.admin_listen))?;
    tracing::info!(admin = %admin.local_addr()?, "admin listener (health, metrics, internal route)");
    tokio::spawn(serve_admin(admin, bridge.clone(), signal.handle()));
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert.clone(), key.clone(), signal.handle())?),
        _ => None,
    };
    let listener = TcpListener::bind(&cli.listen).await.with_context(|| format!("listen {}", cli.listen))?;
    tracing::info!(listen = %listener.local_addr()?, base_domain = %shared.base_domain, tls = tls.is_some(), "bridge serving");
    let caps = (Arc::new(Semaphore::new(cli.max_connections)), AddressCaps::new(cli.max_connections_per_address));
    tokio::spawn(serve_users(listener, bridge, tls, caps, signal.handle()));
    let name = signalled().await;
    tracing::info!(
        signal = name,
        grace_s = cli.shutdown_grace.as_secs(),
        "stopping: no new connections; requests in flight finish"
    );
    if !signal.finish(cli.shutdown_grace).await {
        tracing::warn!(grace_s = cli.shutdown_grace.as_secs(), "requests were still in flight at the end of the grace");
    }
    Ok(())
}

/// Accepts users' connections until shutdown; each connection's task holds
/// a handle until its requests are done.
async fn serve_users(
    listener: TcpListener,
    bridge: Arc<server::Bridge>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    (permits, per_address): (Arc<Semaphore>, Arc<AddressCaps>),
    mut shutdown: Shutdown,
) {
    let limits = bridge.limits;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.requested() => return,
            accepted = async { (permits.clone().acquire_owned().await, listener.accept().await) } => accepted,
        };
        let (permit, (tcp, peer)) = match accepted {
            (Ok(permit), Ok(accepted)) => (permit, accepted),
            (_, Err(err)) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // The semaphore is never closed.
            (Err(_), _) => return,
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
        let (bridge, tls, shutdown) = (bridge.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let permits = Activity::holding((permit, address_permit));
            let _ = tcp.set_nodelay(true);
            match tls {
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        serve_connection(TokioIo::new(stream), bridge, peer, true, permits, shutdown).await
                    }
                    _ => tracing::debug!(%peer, "TLS handshake failed"),
                },
                None => serve_connection(TokioIo::new(tcp), bridge, peer, false, permits, shutdown).await,
            }
        });
    }
}

/// `activity` holds the connection's permits; `shutdown` asks it to finish
/// its requests in flight and close.
async fn serve_connection<I>(
    io: I,
    bridge: Arc<server::Bridge>,
    peer: SocketAddr,
    tls: bool,
    activity: Activity,
    mut shutdown: Shutdown,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Arc::new(activity);
    let limits = bridge.limits;
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        let (bridge, in_flight) = (bridge.clone(), requests.begin());
        async move { Ok::<_, std::convert::Infallible>(bridge.handle(request, peer, tls, in_flight).await) }
    });
    if let Err(err) = edge::serve(&limits, io, &activity, shutdown.requested(), service).await {
        tracing::debug!(%peer, error = %err, "connection ended");
    }
}

async fn serve_admin(listener: TcpListener, bridge: Arc<server::Bridge>, mut shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.requested() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, peer)) = accepted else { continue };
        let (bridge, mut shutdown) = (bridge.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let bridge = bridge.clone();
                async move { Ok::<_, std::convert::Infallible>(bridge.admin(request).await) }
            });
            let builder = ConnectionLimits::bridge().builder();
            let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(tcp), service));
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = shutdown.requested() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = ended {
                tracing::debug!(%peer, error = %err, "admin connection ended");
            }
        });
    }
}

/// TLS for users, with the certificate reloaded when its files change
/// (until shutdown).
fn tls_acceptor(cert: PathBuf, key: PathBuf, mut shutdown: Shutdown) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
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
            tokio::select! {
                _ = shutdown.requested() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
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
