//! The in-memory route table, fed by `RouteService/WatchRoutes`: a snapshot,
//! then changes. When the control plane is away the bridge keeps serving
//! the last table it had and reconnects with backoff; the next snapshot
//! replaces the table whole.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clawplane_edge::shutdown::Shutdown;
use clawplane_proto::v1::route_service_client::RouteServiceClient;
use clawplane_proto::v1::{watch_routes_response, Route, RouteChangeType, WatchRoutesRequest};
use tonic::metadata::MetadataValue;

#[derive(Default)]
pub struct RouteTable {
    /// By hostname.
    routes: RwLock<HashMap<String, Arc<Route>>>,
}

impl RouteTable {
    pub fn get(&self, hostname: &str) -> Option<Arc<Route>> {
        self.routes.read().unwrap().get(hostname).cloned()
    }

    pub fn len(&self) -> usize {
        self.routes.read().unwrap().len()
    }

    pub(crate) fn replace(&self, routes: Vec<Route>) {
        *self.routes.write().unwrap() = routes.into_iter().map(|r| (r.hostname.clone(), Arc::new(r))).collect();
    }

    fn apply(&self, kind: RouteChangeType, route: Route) {
        let mut routes = self.routes.write().unwrap();
        match kind {
            RouteChangeType::Delete => {
                routes.remove(&route.hostname);
            }
            _ => {
                routes.insert(route.hostname.clone(), Arc::new(route));
            }
        }
    }
}

/// Keeps `table` in sync with the control plane until shutdown.
pub async fn watch(
    table: Arc<RouteTable>,
    control_plane: String,
    admin_token: String,
    base_domain: String,
    mut shutdown: Shutdown,
) {
    let mut attempt = 0u32;
    loop {
        let watched = tokio::select! {
            _ = shutdown.requested() => return,
            watched = watch_once(&table, &control_plane, &admin_token, &base_domain) => watched,
        };
        match watched {
            Ok(()) => attempt = 0,
            Err(err) => tracing::warn!(error = %err, routes = table.len(), "route watch lost; serving the last table"),
        }
        let delay = Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5));
        attempt += 1;
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(delay.mul_f64(0.5 + rand_unit() / 2.0)) => {}
        }
    }
}

fn rand_unit() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    f64::from(nanos % 1000) / 1000.0
}

async fn watch_once(
    table: &RouteTable,
    control_plane: &str,
    admin_token: &str,
    base_domain: &str,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(control_plane.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut request = tonic::Request::new(WatchRoutesRequest { base_domain: base_domain.to_string() });
    request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {admin_token}"))?);
    let mut stream = RouteServiceClient::new(channel).watch_routes(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(watch_routes_response::Event::Snapshot(snapshot)) => {
                tracing::info!(routes = snapshot.routes.len(), revision = snapshot.revision, "route table loaded");
                table.replace(snapshot.routes);
            }
            Some(watch_routes_response::Event::Change(change)) => {
                let kind = RouteChangeType::try_from(change.r#type).unwrap_or(RouteChangeType::Upsert);
                if let Some(route) = change.route {
                    tracing::debug!(host = %route.hostname, ?kind, revision = change.revision, "route changed");
                    table.apply(kind, route);
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// The agent endpoint of a host, from any of its active routes.
impl clawplane_edge::agents::Endpoints for RouteTable {
    fn endpoint_of(&self, host_id: &str) -> Option<String> {
        self.routes
            .read()
            .unwrap()
            .values()
            .find(|r| r.host_id == host_id && !r.agent_endpoint.is_empty())
            .map(|r| r.agent_endpoint.clone())
    }
}
