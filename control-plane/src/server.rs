//! The API listener: binds, wires services and cross-cutting layers, serves
//! until the shutdown signal, then drains. Connections are bounded by a
//! semaphore (a permit per open connection), and every background task holds
//! the one [`ShutdownSignal`] that `run` waits for before closing the store, as in
//! mini-redis.
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clawplane_proto::v1::config_service_server::ConfigServiceServer;
use clawplane_proto::v1::host_service_server::HostServiceServer;
use clawplane_proto::v1::route_service_server::RouteServiceServer;
use clawplane_proto::v1::session_service_server::SessionServiceServer;
use clawplane_proto::v1::tenant_service_server::TenantServiceServer;
use clawplane_proto::v1::usage_service_server::UsageServiceServer;
use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::{
    ConfigApi, DeadlineLayer, GrpcWebBesideRestLayer, HostApi, RateLimitLayer, RestApi, RouteApi, SessionApi,
    TenantApi, UsageApi,
};
use crate::auth::{AuthLayer, Authenticator};
use crate::config::{Config, CorsOrigins};
use crate::desired::DesiredConfigs;
use crate::fleet::{serve_agents, Fleet, FleetConfig, TurnLimits, TurnRelay};
use crate::net::Connection;
use crate::pki::{Pki, PkiConfig};
use crate::store::Store;
use clawplane_edge::shutdown::ShutdownSignal;
use clawplane_tls::files::{create_private_dir, write_private};

/// A bound, migrated, ready-to-serve control plane: the API listener for
/// the web backend and operators, the agent listener (mutual TLS) for hosts.
pub struct Server {
    config: Config,
    store: Store,
    listener: TcpListener,
    agent_listener: TcpListener,
    authenticator: Arc<Authenticator>,
    pki: Arc<Pki>,
    fleet: Arc<Fleet>,
    shutdown: ShutdownSignal,
    /// Held while serving an SQLite database: one replica only.
    _sqlite_lock: Option<std::fs::File>,
}

/// An SQLite database is served by one control plane at a time: another
/// `serve` on it would keep its own streams, caches and sweeps beside this
/// one's (several replicas need PostgreSQL). Held through a lock file beside
/// the database, released when the process ends, however it ends.
fn single_replica(database_url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(rest) = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:")) else {
        return Ok(None);
    };
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(":memory:") {
        return Ok(None);
    }
    let lock_path = format!("{path}.serve-lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("database: cannot open {lock_path}"))?;
    if file.try_lock().is_err() {
        let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
        anyhow::bail!(
            "database: the SQLite database {path} is already served by another clawplane ({}); SQLite runs one \
             control plane at a time: stop that one, or share a PostgreSQL database between replicas",
            match holder.trim() {
                "" => "process unknown".to_string(),
                pid => format!("pid {pid}"),
            }
        );
    }
    use std::io::Write;
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(Some(file))
}

/// How long `run` waits for background tasks (agent streams, sweeps) once
/// the listeners stopped, before it closes the store anyway.
const TASK_GRACE: Duration = Duration::from_secs(10);
/// A gateway silent this long in the middle of a turn ends it (DEADLINE_EXCEEDED).
const TURN_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Server {
    /// Opens the database (creating the SQLite file under the data directory
    /// if needed), applies migrations and binds the API listener.
    pub async fn bind(mut config: Config) -> anyhow::Result<Server> {
        create_private_dir(&config.data_dir).with_context(|| format!("data_dir {}", config.data_dir.display()))?;
        if config.auth.admin_token.is_none() {
            config.auth.admin_token = Some(load_or_create_admin_token(&config.data_dir)?);
        }
        let authenticator = Authenticator::from_config(&config.auth)?;
        let sqlite_lock = single_replica(&config.database_url)?;
        let store = Store::connect(&config.database_url, config.database_max_connections)
            .await
            .context("database: cannot connect")?
            .with_owner_cache(config.tenant_cache_ttl);
        store.migrate().await.context("database: migrations failed")?;
        if let Some(catalogue) = &config.plans {
            store.sync_catalogue(catalogue).await.context("plans: cannot store the catalogue")?;
        }
        let pki = Pki::load_or_create(&PkiConfig {
            dir: config.data_dir.join("pki"),
            ca_cert_file: config.ca_cert_file.clone(),
            ca_key_file: config.ca_key_file.clone(),
            server_names: config.agent_server_names.clone(),
            host_cert_ttl: config.host_cert_ttl,
        })?;
        let secrets = Arc::new(load_secrets(&config)?);
        crate::cluster::join(
            &store,
            &crate::cluster::Replica {
                ca_sha256: pki.ca_sha256(),
                secrets: &secrets,
                secrets_key_file: &config.secrets_key_file,
                auth: &config.auth,
                single: config.is_sqlite(),
            },
        )
        .await?;
        let listener = TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("api_listen {}: cannot bind", config.api_listen))?;
        let agent_listener = TcpListener::bind(config.agent_listen)
            .await
            .with_context(|| format!("agent_listen {}: cannot bind", config.agent_listen))?;
        let mut fleet_config = FleetConfig {
            heartbeat_interval: config.host_heartbeat_interval,
            lease: config.host_lease,
            public_url: config.agent_public_url.clone(),
            base_domain: config.base_domain.clone(),
            memory_overcommit: config.host_memory_overcommit,
        };
        // An ephemeral agent port (tests) is only known once bound.
        if config.agent_listen.port() == 0 {
            fleet_config.public_url = format!("https://{}", agent_listener.local_addr()?);
        }
        let shutdown = ShutdownSignal::default();
        let desired = DesiredConfigs::new(store.clone(), secrets).with_platform_model(config.platform_model.clone());
        let fleet = Fleet::new(store.clone(), pki.clone(), desired, fleet_config, shutdown.clone());
        Ok(Server {
            config,
            store,
            listener,
            agent_listener,
            authenticator,
            pki,
            fleet,
            shutdown,
            _sqlite_lock: sqlite_lock,
        })
    }

    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_listener.local_addr().expect("bound listener has an address")
    }

    pub fn ca_pin(&self) -> String {
        self.pki.pin().to_string()
    }

    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// in-flight calls finish and closes the database.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Server {
            config,
            store,
            listener,
            agent_listener,
            authenticator,
            pki,
            fleet,
            shutdown: tasks,
            _sqlite_lock,
        } = self;

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<TenantServiceServer<TenantApi>>().await;
        health.set_serving::<UsageServiceServer<UsageApi>>().await;
        health.set_serving::<SessionServiceServer<SessionApi>>().await;
        tasks.spawn(watch_database(store.clone(), health.clone(), tasks.clone()));
        tasks.spawn(purge_deleted_tenants(store.clone(), config.clone(), tasks.clone()));
        tasks.spawn(refresh_owner_cache(store.clone(), tasks.clone()));
        tasks.spawn(fleet.clone().keep_leases());
        let (listener_store, stop) = (store.clone(), tasks.clone());
        tasks.spawn(async move { listener_store.follow_cluster_events(stop.requested()).await });
        tasks.spawn(place_pending_tenants(fleet.clone(), tasks.clone()));
        tasks.spawn(sweep_periods(fleet.clone(), tasks.clone()));
        let agents = tasks.spawn(serve_agents(
            agent_listener,
            pki.agent_server_config()?,
            fleet.clone(),
            config.max_agent_connections,
        ));

        let turns = Arc::new(TurnRelay::new(
            fleet.clone(),
            pki.clone(),
            TurnLimits { per_tenant: config.max_turns_per_tenant, idle_timeout: TURN_IDLE_TIMEOUT },
        )?);
        let reflection = |builder: tonic_reflection::server::Builder<'static>| {
            builder
                .register_encoded_file_descriptor_set(clawplane_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1()?;
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?;

        let incoming = bounded_incoming(
            listener,
            Arc::new(Semaphore::new(config.max_connections)),
            clawplane_edge::connections::AddressCaps::new(config.max_connections_per_address),
        );
        let tenants = Arc::new(TenantApi::new(store.clone(), fleet.clone(), config.base_domain.clone()));
        let hosts = Arc::new(HostApi::new(store.clone(), fleet.clone()));
        let sessions = Arc::new(SessionApi::new(store.clone(), turns, tasks.clone()));
        let usage = Arc::new(UsageApi::new(store.clone(), fleet.clone(), tasks.clone()));
        let rest =
            Arc::new(RestApi::new(store.clone(), tenants.clone(), hosts.clone(), sessions.clone(), usage.clone()));
        let mut routes = tonic::service::Routes::builder();
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(TenantServiceServer::from_arc(tenants))
            .add_service(UsageServiceServer::from_arc(usage))
            .add_service(SessionServiceServer::from_arc(sessions))
            .add_service(RouteServiceServer::new(RouteApi::new(
                store.clone(),
                config.base_domain.clone(),
                tasks.clone(),
            )))
            .add_service(HostServiceServer::from_arc(hosts))
            .add_service(ConfigServiceServer::new(
                ConfigApi::new(store.clone(), fleet.clone())
                    .with_allowed_model_cidrs(config.models_allowed_cidrs.clone()),
            ));
        // The REST endpoints beside the gRPC services, behind the same layers.
        let routes = tonic::service::Routes::from(routes.routes().into_axum_router().merge(rest.router()));

        let stop_serving = tasks.clone();
        let served = tonic::transport::Server::builder()
            .accept_http1(true)
            // Dead peers and half-open connections are found and closed.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(cors_layer(&config.cors_origins))
            .layer(GrpcWebBesideRestLayer)
            .layer(AuthLayer::new(authenticator))
            .layer(RateLimitLayer::new(config.rate_per_caller, config.rate_per_address))
            .layer(DeadlineLayer::new(config.request_timeout, config.max_request_timeout))
            .layer(CatchPanicLayer::custom(panic_status))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move { stop_serving.requested().await });

        let on_signal = tasks.clone();
        let signal = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight calls");
            on_signal.request();
        });
        let result = served.await;
        signal.abort();
        health.set_not_serving::<TenantServiceServer<TenantApi>>().await;
        if !tasks.finish(TASK_GRACE).await {
            tracing::warn!(grace = ?TASK_GRACE, "background tasks still running at shutdown; closing the store anyway");
            agents.abort();
        }
        match agents.await {
            Ok(Err(err)) => tracing::warn!(error = %err, "agent listener failed"),
            Err(err) if !err.is_cancelled() => tracing::warn!(error = %err, "agent listener task failed"),
            _ => {}
        }
        store.close().await;
        result.context("API listener failed")
    }
}

/// The secrets key and the keys it replaced. Only the default file is
/// created if absent: a configured one that is missing is a mistake (a
/// fresh key would open nothing sealed before).
fn load_secrets(config: &Config) -> anyhow::Result<clawplane_tls::secrets::SecretBox> {
    let path = &config.secrets_key_file;
    if config.secrets_key_is_default && !path.exists() {
        clawplane_tls::secrets::create_key_file(path).context("secrets.key_file")?;
        tracing::info!(path = %path.display(), "generated a secrets key");
    }
    use clawplane_tls::secrets::{read_key_file, SecretBox};
    let current = read_key_file(path).context("secrets.key_file")?;
    let previous = config
        .secrets_previous_key_files
        .iter()
        .map(|path| read_key_file(path).context("secrets.previous_key_files"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    SecretBox::from_keys(&current, &previous)
}

/// The operator's admin token: from config, or generated once into the data
/// directory (mode 0600) so a fresh install has an operator credential that
/// never appears in a log.
fn load_or_create_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if token.trim().len() >= 16 => return Ok(token.trim().to_string()),
        Ok(_) => anyhow::bail!("{}: admin token is shorter than 16 characters", path.display()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("{}: cannot read", path.display())),
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, token.as_bytes())?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}

fn cors_layer(origins: &CorsOrigins) -> CorsLayer {
    let allow_origin = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().filter_map(|o| http::HeaderValue::from_str(o).ok())),
    };
    let header = http::HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(allow_origin)
        // GET and DELETE for the REST routes.
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::DELETE, http::Method::OPTIONS])
        .allow_headers([
            header("content-type"),
            header("authorization"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header("x-shared-secret"),
            header("x-user-id"),
            header("x-user-email"),
            header("x-user-teams"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            header("retry-after"),
        ])
        .max_age(Duration::from_secs(600))
}

/// A handler that panicked fails its own call, INTERNAL with a reference
/// to the log line; the connection and every other call on it go on.
fn panic_status(panic: Box<dyn std::any::Any + Send + 'static>) -> http::Response<tonic::body::Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    let reference = uuid::Uuid::new_v4();
    tracing::error!(%reference, panic = message, "a request handler panicked");
    tonic::Status::internal(format!("internal error (reference {reference})")).into_http()
}

/// Reports NOT_SERVING through grpc.health.v1 while the database is down.
async fn watch_database(store: Store, health: tonic_health::server::HealthReporter, shutdown: ShutdownSignal) {
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let ok = store.ping().await.is_ok();
        if ok != healthy {
            healthy = ok;
            let status =
                if ok { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            tracing::warn!(database_ok = ok, "database health changed");
            health.set_service_status("", status).await;
        }
    }
}

/// Places pending tenants every few seconds (new hosts, freed capacity,
/// or placements another replica left unfinished).
async fn place_pending_tenants(fleet: Arc<Fleet>, shutdown: ShutdownSignal) {
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if let Err(err) = fleet.place_pending().await {
            tracing::warn!(error = %err, "placing pending tenants failed");
        }
    }
}

/// How often subscription periods are checked for their end.
const PERIOD_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Rolls subscription periods over at their end, pushes the allowances
/// that follow, and drops old usage events.
async fn sweep_periods(fleet: Arc<Fleet>, shutdown: ShutdownSignal) {
    loop {
        if let Err(err) = fleet.sweep_periods(chrono::Utc::now()).await {
            tracing::warn!(error = %err, "sweeping subscription periods failed");
        }
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(PERIOD_SWEEP_INTERVAL) => {}
        }
    }
}

/// Keeps GetMyTenant's cached owners fresh with batched reads (see
/// `store::OwnerCache`).
async fn refresh_owner_cache(store: Store, shutdown: ShutdownSignal) {
    let Some(every) = store.owner_cache_refresh() else { return };
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(err) = store.refresh_owner_cache().await {
            tracing::warn!(error = %err, "refreshing the tenant cache failed");
        }
    }
}

/// Purges soft-deleted tenants once their retention has passed.
async fn purge_deleted_tenants(store: Store, config: Config, shutdown: ShutdownSignal) {
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(config.tenant_purge_interval) => {}
        }
        let Ok(retention) = chrono::Duration::from_std(config.tenant_purge_after) else {
            continue;
        };
        match store.purge_deleted_tenants(chrono::Utc::now() - retention).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged deleted tenants"),
            Err(err) => tracing::warn!(error = %err, "purging deleted tenants failed"),
        }
    }
}

/// A new connection's peer must send its first bytes within this.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections, at most as many open at once as the semaphore has
/// permits (accepting waits while the server is full) and as `per_client`
/// allows one client (an address, an IPv6 /64): more from it are closed at
/// once, so one client cannot hold the server's every place.
fn bounded_incoming(
    listener: TcpListener,
    limit: Arc<Semaphore>,
    per_client: Arc<clawplane_edge::connections::AddressCaps>,
) -> impl Stream<Item = io::Result<Connection<TcpStream, TcpConnectInfo>>> {
    futures::stream::unfold((listener, limit, per_client), |(listener, limit, per_client)| async move {
        let permit = limit.clone().acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Some(client_permit) = per_client.try_acquire(peer.ip()) else {
                        tracing::debug!(%peer, "refused a connection: the client holds its share");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let info = stream.connect_info();
                    let connection =
                        Connection::new(stream, info, permit).with_limits(FIRST_BYTES_TIMEOUT, client_permit);
                    return Some((Ok(connection), (listener, limit, per_client)));
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn a_panicking_handler_fails_only_its_call_with_a_reference() {
        let handler = tower::service_fn(|request: http::Request<()>| async move {
            if request.uri().path() == "/boom" {
                panic!("handler bug");
            }
            Ok::<_, std::convert::Infallible>(tonic::Status::ok("").into_http::<tonic::body::Body>())
        });
        let mut service = CatchPanicLayer::custom(panic_status).layer(handler);
        let call = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
        let answer = service.ready().await.unwrap().call(call("/boom")).await.unwrap();
        assert_eq!(answer.headers()["grpc-status"], "13");
        let message = answer.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("reference"), "{message}");
        assert!(!message.contains("handler bug"), "panic details stay in the log");
        let next = service.ready().await.unwrap().call(call("/fine")).await.unwrap();
        assert_eq!(next.headers()["grpc-status"], "0", "the service goes on");
    }
}
