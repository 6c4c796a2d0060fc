//! RouteService: where `https://<slug>.<base domain>` leads, for the gateway
//! bridge's in-memory table (WatchRoutes) and nginx's auth_request lookups
//! (ResolveRoute). The database is the source of truth, so every replica
//! answers the same: a shared task reads the table a few times a second and
//! every watcher streams the difference from what it sent last. Revisions
//! are the cluster's (see [`Store::advance_route_revision`]): a bridge
//! moving from one replica to another sees them keep increasing, and one
//! table state has one revision on every replica.
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use clawplane_identity::host::{BadHost, MAX_HOST_HEADER};
use clawplane_identity::Owner;
use clawplane_proto::v1::route_service_server::RouteService;
use clawplane_proto::v1::{
    watch_routes_response, ResolveRouteRequest, ResolveRouteResponse, Route, RouteChange, RouteChangeType,
    RouteSnapshot, RouteStatus, WatchRoutesRequest, WatchRoutesResponse,
};
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::error::{ApiError, ApiResult};
use super::request::{admin, shown};
use crate::fleet::proxy_endpoint;
use crate::store::{Host, HostState, Store, TenantRecord, TenantStatus};
use clawplane_edge::shutdown::ShutdownSignal;

/// A DNS name's longest form.
const MAX_DOMAIN: usize = 253;

/// How often the shared table is re-read (route changes show up within it).
pub const ROUTE_REFRESH: Duration = Duration::from_millis(250);

/// A route without its hostname (that depends on the caller's domain).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteEntry {
    tenant_id: String,
    slug: String,
    host_id: String,
    agent_endpoint: String,
    status: RouteStatus,
    owner_user_id: String,
    owner_team_id: String,
}

impl RouteEntry {
    fn to_route(&self, base_domain: &str) -> Route {
        Route {
            hostname: format!("{}.{base_domain}", self.slug),
            tenant_id: self.tenant_id.clone(),
            slug: self.slug.clone(),
            host_id: self.host_id.clone(),
            agent_endpoint: self.agent_endpoint.clone(),
            status: self.status as i32,
            owner_user_id: self.owner_user_id.clone(),
            owner_team_id: self.owner_team_id.clone(),
        }
    }
}

/// The table by slug at the cluster's revision for it.
#[derive(Debug, Default, Clone)]
struct Table {
    revision: i64,
    routes: BTreeMap<String, RouteEntry>,
}

fn entry(tenant: &TenantRecord, host: Option<&Host>) -> RouteEntry {
    let (owner_user_id, owner_team_id) = match tenant.owner() {
        Owner::User(id) => (id, String::new()),
        Owner::Team(id) => (String::new(), id),
    };
    let online = host.filter(|h| {
        matches!(h.status, HostState::Active | HostState::Draining)
            && h.lease_expires_at.is_some_and(|t| t > Utc::now())
    });
    let endpoint = online.and_then(proxy_endpoint).unwrap_or_default();
    let status = match tenant.status() {
        TenantStatus::Suspended => RouteStatus::Suspended,
        // A hibernated tenant's host wakes it on the first request.
        TenantStatus::Running | TenantStatus::Hibernated if !endpoint.is_empty() => RouteStatus::Active,
        _ => RouteStatus::Unavailable,
    };
    RouteEntry {
        tenant_id: tenant.tenant.id.clone(),
        slug: tenant.tenant.slug.clone(),
        host_id: tenant.tenant.host_id.clone().unwrap_or_default(),
        agent_endpoint: if status == RouteStatus::Active { endpoint } else { String::new() },
        status,
        owner_user_id,
        owner_team_id,
    }
}

async fn read_table(store: &Store) -> ApiResult<BTreeMap<String, RouteEntry>> {
    let hosts: BTreeMap<String, Host> = store.all_hosts().await?.into_iter().map(|h| (h.id.clone(), h)).collect();
    let tenants = store.live_tenants().await?;
    Ok(tenants
        .iter()
        .map(|t| (t.tenant.slug.clone(), entry(t, t.tenant.host_id.as_ref().and_then(|id| hosts.get(id)))))
        .collect())
}

/// SHA-256 (hex) of every field of every route in slug order, each
/// length-prefixed: equal exactly when the tables are.
fn digest(routes: &BTreeMap<String, RouteEntry>) -> String {
    let mut hash = Sha256::new();
    hash.update((routes.len() as u64).to_be_bytes());
    for (slug, route) in routes {
        // Destructured: a new field cannot be left out.
        let RouteEntry { tenant_id, slug: route_slug, host_id, agent_endpoint, status, owner_user_id, owner_team_id } =
            route;
        for field in [slug, tenant_id, route_slug, host_id, agent_endpoint, owner_user_id, owner_team_id] {
            hash.update((field.len() as u64).to_be_bytes());
            hash.update(field.as_bytes());
        }
        hash.update((*status as i32).to_be_bytes());
    }
    hex::encode(hash.finalize())
}

/// The table this replica serves and its digest.
struct Published {
    table: Table,
    digest: String,
}

/// After this many refreshes in a row lost to other replicas' records, a
/// replica records its state anyway (see [`refresh`]).
const MAX_LOST_RECORDS: u32 = 4;

/// What one refresh found.
enum Refreshed {
    /// The served table stands.
    Unchanged,
    /// Another replica recorded a state between this one's reads; read
    /// again.
    Lost,
    /// Serve this table.
    New(Published),
}

/// One refresh: the table as read now at the cluster's revision for it.
///
/// The recorded state is read first, then the table: a table that differs
/// from `published` is recorded only if no other state was recorded in
/// between, so replicas record states in the order they read them and a
/// state read by several gets one revision (it takes the revision another
/// replica recorded it with). After [`MAX_LOST_RECORDS`] such losses in a
/// row (`insist`) it is recorded anyway, so a busy cluster cannot starve a
/// replica; a state recorded out of order only costs revision numbers, the
/// next read records the newer one again. An unchanged table takes a higher
/// revision another replica recorded it with since. Revisions never go
/// down.
async fn refresh(store: &Store, published: Option<&Published>, insist: bool) -> ApiResult<Refreshed> {
    let stored = store.route_revision().await?;
    let routes = read_table(store).await?;
    if let Some(published) = published.filter(|p| p.table.routes == routes) {
        if stored.digest != published.digest || stored.revision <= published.table.revision {
            return Ok(Refreshed::Unchanged);
        }
        let table = Table { revision: stored.revision, routes };
        return Ok(Refreshed::New(Published { table, digest: published.digest.clone() }));
    }
    let digest = digest(&routes);
    let count = routes.len() as i64;
    let revision = if stored.digest == digest {
        stored.revision
    } else if insist {
        store.advance_route_revision(&digest, count).await?
    } else {
        match store.advance_route_revision_from(stored.revision, &digest, count).await? {
            Some(revision) => revision,
            None => return Ok(Refreshed::Lost),
        }
    };
    let revision = revision.max(published.map_or(0, |p| p.table.revision));
    Ok(Refreshed::New(Published { table: Table { revision, routes }, digest }))
}

pub struct RouteApi {
    store: Store,
    base_domain: String,
    /// None until the first table is read (watchers wait for it).
    table: watch::Receiver<Option<Arc<Table>>>,
}

impl RouteApi {
    /// Starts the shared table refresher; it stops at shutdown, and with it
    /// every WatchRoutes stream.
    pub fn new(store: Store, base_domain: String, shutdown: ShutdownSignal) -> Self {
        let (tx, table) = watch::channel(None);
        let reader = store.clone();
        shutdown.clone().spawn(async move {
            let mut published: Option<Published> = None;
            let mut lost = 0;
            loop {
                // On an error the served table stays as it is (never one
                // without the cluster's revision); the next tick retries.
                match refresh(&reader, published.as_ref(), lost >= MAX_LOST_RECORDS).await {
                    Ok(Refreshed::New(next)) => {
                        let _ = tx.send(Some(Arc::new(next.table.clone())));
                        published = Some(next);
                        lost = 0;
                    }
                    Ok(Refreshed::Unchanged) => lost = 0,
                    Ok(Refreshed::Lost) => lost += 1,
                    Err(err) => tracing::warn!(error = %err, "cannot refresh the route table"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(ROUTE_REFRESH) => {}
                    _ = shutdown.requested() => return,
                }
            }
        });
        RouteApi { store, base_domain, table }
    }

    fn domain(&self, requested: &str) -> ApiResult<String> {
        if requested.is_empty() {
            return Ok(self.base_domain.clone());
        }
        // Length first: nothing proportional to an oversized input is built.
        if requested.len() > MAX_DOMAIN {
            return Err(ApiError::invalid(format!("base_domain must be at most {MAX_DOMAIN} characters")));
        }
        let domain = requested.trim_end_matches('.').to_ascii_lowercase();
        let valid = domain.split('.').count() >= 1
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
            });
        if !valid {
            return Err(ApiError::invalid(format!("base_domain {} is not a domain name", shown(requested))));
        }
        Ok(domain)
    }
}

/// The slug a requested host names under `base_domain` (see
/// [`clawplane_identity::host::slug_of`]); a malformed host is
/// INVALID_ARGUMENT naming the rule.
fn slug_of(host: &str, base_domain: &str) -> ApiResult<Option<String>> {
    clawplane_identity::host::slug_of(host, base_domain).map_err(|bad| match bad {
        BadHost::Missing => ApiError::invalid("host is required"),
        BadHost::TooLong => ApiError::invalid(format!("host must be at most {MAX_HOST_HEADER} characters")),
        BadHost::NotAHostname => ApiError::invalid(format!("host {} is not a hostname", shown(host.trim()))),
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchRoutesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RouteService for RouteApi {
    async fn resolve_route(
        &self,
        request: Request<ResolveRouteRequest>,
    ) -> Result<Response<ResolveRouteResponse>, Status> {
        admin(&request)?;
        let request = request.into_inner();
        let domain = self.domain(&request.base_domain)?;
        let slug = slug_of(&request.host, &domain)?.ok_or(ApiError::NotFound("route"))?;
        let tenant = self.store.live_tenant(&slug).await.map_err(ApiError::from)?;
        let tenant = tenant.filter(|t| t.tenant.slug == slug).ok_or(ApiError::NotFound("route"))?;
        let host = match &tenant.tenant.host_id {
            Some(id) => self.store.host(id).await.map_err(ApiError::from)?,
            None => None,
        };
        Ok(Response::new(ResolveRouteResponse { route: Some(entry(&tenant, host.as_ref()).to_route(&domain)) }))
    }

    type WatchRoutesStream = WatchStream;

    async fn watch_routes(&self, request: Request<WatchRoutesRequest>) -> Result<Response<WatchStream>, Status> {
        admin(&request)?;
        let domain = self.domain(&request.into_inner().base_domain)?;
        let mut table = self.table.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            // The first table after start-up may not be read yet: an empty
            // snapshot would empty the caller's table.
            let first = tokio::select! {
                first = table.wait_for(Option::is_some) => first.ok().and_then(|t| t.clone()),
                _ = tx.closed() => return,
            };
            let Some(current) = first else {
                let _ = tx.send(Err(Status::unavailable("the control plane is shutting down; reconnect"))).await;
                return;
            };
            let mut sent = {
                let snapshot = RouteSnapshot {
                    routes: current.routes.values().map(|r| r.to_route(&domain)).collect(),
                    revision: current.revision,
                };
                let message = watch_routes_response::Event::Snapshot(snapshot);
                if tx.send(Ok(WatchRoutesResponse { event: Some(message) })).await.is_err() {
                    return;
                }
                current
            };
            let mut revision = sent.revision;
            while table.changed().await.is_ok() {
                let Some(current) = table.borrow_and_update().clone() else { continue };
                let mut changes = Vec::new();
                for (slug, route) in &current.routes {
                    if sent.routes.get(slug) != Some(route) {
                        changes.push((RouteChangeType::Upsert, route.to_route(&domain)));
                    }
                }
                for (slug, route) in &sent.routes {
                    if !current.routes.contains_key(slug) {
                        let mut gone = route.to_route(&domain);
                        gone.status = RouteStatus::Deleted as i32;
                        changes.push((RouteChangeType::Delete, gone));
                    }
                }
                // Numbered up to the table's revision, so the last change
                // carries it, as every watcher's does: one state, one
                // revision. The table's revision is at least the previous
                // one plus both tables' route counts (see
                // `Store::advance_route_revision`), so they stay above the
                // revision sent last.
                revision = revision.max(current.revision - changes.len() as i64);
                for (kind, route) in changes {
                    revision += 1;
                    let change = RouteChange { r#type: kind as i32, route: Some(route), revision };
                    let message = watch_routes_response::Event::Change(change);
                    if tx.send(Ok(WatchRoutesResponse { event: Some(message) })).await.is_err() {
                        return;
                    }
                }
                revision = revision.max(current.revision);
                sent = current;
            }
            let _ = tx.send(Err(Status::unavailable("the control plane is shutting down; reconnect"))).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
