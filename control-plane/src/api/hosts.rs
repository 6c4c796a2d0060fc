//! HostService: join tokens and worker hosts, for operators (admin only).
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clawplane_proto::v1::host_service_server::HostService;
use clawplane_proto::v1::{
    self as pb, command, CreateJoinTokenRequest, CreateJoinTokenResponse, DrainHostRequest, DrainHostResponse,
    GetHostRequest, GetHostResponse, ListHostsRequest, ListHostsResponse, ListJoinTokensRequest,
    ListJoinTokensResponse, PingCommand, PingHostRequest, PingHostResponse, RemoveHostRequest, RemoveHostResponse,
    RevokeJoinTokenRequest, RevokeJoinTokenResponse,
};
use serde_json::json;
use tonic::{Request, Response, Status};

use super::deadline::wait_within;
use super::error::{ApiError, ApiResult};
use super::request::{
    admin, check_label, check_text, decode_page_token, next_page_token, page_size, required_id, timestamp,
};
use crate::fleet::{host_status, Fleet};
use crate::store::{Host, HostState, JoinToken, Store, StoreError};

pub struct HostApi {
    store: Store,
    fleet: Arc<Fleet>,
}

impl HostApi {
    pub fn new(store: Store, fleet: Arc<Fleet>) -> Self {
        HostApi { store, fleet }
    }
}

const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_TOKEN_USES: i32 = 1000;
const MAX_TOKEN_LABELS: usize = 64;
const MAX_URL: usize = 512;
/// The longest a ping waits for its answer, whatever the request asks.
const MAX_PING_WAIT: Duration = Duration::from_secs(300);

/// A request duration: unset or zero is None; negative or malformed (nanos
/// outside 0..=999,999,999) is refused, naming the field.
fn std_duration(field: &str, value: Option<&prost_types::Duration>) -> ApiResult<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(d) if d.seconds < 0 || !(0..=999_999_999).contains(&d.nanos) => {
            Err(ApiError::invalid(format!("{field} must not be negative (seconds >= 0, nanos 0..=999999999)")))
        }
        Some(d) if d.seconds == 0 && d.nanos == 0 => Ok(None),
        Some(d) => Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32))),
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn token_message(model: JoinToken) -> pb::JoinToken {
    let now = Utc::now();
    let status = if model.revoked_at.is_some() {
        pb::JoinTokenStatus::Revoked
    } else if model.uses >= model.max_uses {
        pb::JoinTokenStatus::Used
    } else if model.expires_at <= now {
        pb::JoinTokenStatus::Expired
    } else {
        pb::JoinTokenStatus::Active
    };
    pb::JoinToken {
        labels: model
            .labels
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default(),
        id: model.id,
        max_uses: model.max_uses,
        uses: model.uses,
        expires_at: Some(timestamp(model.expires_at)),
        revoked: model.revoked_at.is_some(),
        created_at: Some(timestamp(model.created_at)),
        status: status as i32,
        host_ids: Vec::new(),
    }
}

impl HostApi {
    async fn create_token(&self, actor: &str, req: CreateJoinTokenRequest) -> ApiResult<CreateJoinTokenResponse> {
        let ttl = std_duration("ttl", req.ttl.as_ref())?.unwrap_or(DEFAULT_TOKEN_TTL);
        if ttl > MAX_TOKEN_TTL {
            return Err(ApiError::invalid("ttl must be at most 7 days; join tokens are meant to be short-lived"));
        }
        let max_uses = match req.max_uses {
            0 => 1,
            n if (1..=MAX_TOKEN_USES).contains(&n) => n,
            _ => return Err(ApiError::invalid(format!("max_uses must be between 1 and {MAX_TOKEN_USES}"))),
        };
        if req.labels.len() > MAX_TOKEN_LABELS {
            return Err(ApiError::invalid(format!("labels: at most {MAX_TOKEN_LABELS} labels")));
        }
        for (key, value) in &req.labels {
            check_label(key, value)?;
        }
        check_text("control_plane_url", &req.control_plane_url, MAX_URL)?;
        let url = if req.control_plane_url.is_empty() {
            self.fleet.config().public_url.clone()
        } else {
            req.control_plane_url
        };
        clawplane_tls::host_port(&url).map_err(|err| ApiError::invalid(format!("control_plane_url: {err:#}")))?;

        let id = hex::encode(rand::random::<[u8; 6]>());
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let now = Utc::now();
        let model = JoinToken {
            id: id.clone(),
            secret_hash: crate::fleet::hash_secret(&secret),
            labels: json!(req.labels),
            max_uses,
            uses: 0,
            expires_at: now + chrono::Duration::from_std(ttl).unwrap_or_default(),
            revoked_at: None,
            created_by: actor.to_string(),
            created_at: now,
        };
        self.store.create_join_token(model.clone()).await?;
        tracing::info!(token = %id, ttl_secs = ttl.as_secs(), max_uses, "join token created");
        let token = format!("{id}.{secret}");
        let pin = self.fleet.pki().pin().to_string();
        Ok(CreateJoinTokenResponse {
            join_command: format!("clawplane-agent join --control-plane {url} --token {token} --ca-pin {pin}"),
            join_token: Some(token_message(model)),
            token,
            ca_pin: pin,
        })
    }

    async fn host_for_admin(&self, host_id: &str) -> ApiResult<Host> {
        let host_id = required_id("host_id", host_id)?;
        self.store.host(host_id).await?.ok_or(ApiError::NotFound("host"))
    }

    /// Pings the host, waiting for its answer up to the request's `timeout`
    /// (10 s when unset) or `deadline_wait`, whichever ends first.
    async fn ping(&self, req: PingHostRequest, deadline_wait: Duration) -> ApiResult<PingHostResponse> {
        let asked = std_duration("timeout", req.timeout.as_ref())?.unwrap_or(Duration::from_secs(10));
        let host = self.host_for_admin(&req.host_id).await?;
        if host.status == HostState::Removed {
            return Err(ApiError::FailedPrecondition("host was removed".into()));
        }
        let timeout = asked.min(deadline_wait);
        let cut_short =
            if timeout < asked { " (the request's deadline; a longer grpc-timeout waits longer)" } else { "" };
        let started = Instant::now();
        let command_id = self.fleet.enqueue(&host.id, None, command::Payload::Ping(PingCommand {})).await?;
        if req.no_wait {
            return Ok(PingHostResponse { command_id, ..Default::default() });
        }
        let Some(result) = self.fleet.wait_for_result(&command_id, timeout).await? else {
            return Err(ApiError::DeadlineExceeded(format!(
                "host did not answer within {:.0}s{cut_short}; the ping stays queued as command {command_id}",
                timeout.as_secs_f64()
            )));
        };
        let round_trip = started.elapsed();
        let (agent_version, agent_time) = match result.payload {
            Some(pb::command_result::Payload::Ping(ping)) => (ping.agent_version, ping.agent_time),
            _ => (String::new(), None),
        };
        Ok(PingHostResponse {
            command_id,
            answered: true,
            round_trip: Some(proto_duration(round_trip)),
            agent_version,
            agent_time,
        })
    }
}

#[tonic::async_trait]
impl HostService for HostApi {
    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let principal = admin(&request)?;
        Ok(Response::new(self.create_token(&principal.user_id, request.into_inner()).await?))
    }

    async fn list_join_tokens(
        &self,
        request: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        admin(&request)?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, 50, 500)?;
        let after = decode_page_token(&req.page_token)?;
        let (rows, more) = self.store.list_join_tokens(after.as_deref(), limit).await.map_err(ApiError::from)?;
        let next_page_token = next_page_token(more, rows.last().map(|last| last.id.as_str()));
        let join_tokens = rows
            .into_iter()
            .map(token_message)
            .filter(|t| req.include_inactive || t.status == pb::JoinTokenStatus::Active as i32)
            .collect();
        Ok(Response::new(ListJoinTokensResponse { join_tokens, next_page_token }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<RevokeJoinTokenRequest>,
    ) -> Result<Response<RevokeJoinTokenResponse>, Status> {
        admin(&request)?;
        // A whole `<id>.<secret>` names its token by the part before the dot.
        let token = request.get_ref().token_id.as_str();
        let id = required_id("token_id", token.split_once('.').map_or(token, |(id, _)| id))?;
        let model = self.store.revoke_join_token(id).await.map_err(ApiError::from)?;
        tracing::info!(token = %id, "join token revoked");
        Ok(Response::new(RevokeJoinTokenResponse { join_token: Some(token_message(model)) }))
    }

    async fn list_hosts(&self, request: Request<ListHostsRequest>) -> Result<Response<ListHostsResponse>, Status> {
        admin(&request)?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, 100, 1000)?;
        let after = decode_page_token(&req.page_token)?;
        if pb::HostStatus::try_from(req.status).is_err() {
            return Err(ApiError::invalid("status must be a HostStatus value").into());
        }
        let (rows, more) = self.store.list_hosts(after.as_deref(), limit).await.map_err(ApiError::from)?;
        let next_page_token = next_page_token(more, rows.last().map(|last| last.id.as_str()));
        let now = Utc::now();
        let rows = rows.into_iter().filter(|row| req.status == 0 || host_status(row, now) as i32 == req.status);
        let hosts = self.fleet.host_messages(rows.collect()).await?;
        Ok(Response::new(ListHostsResponse { hosts, next_page_token }))
    }

    async fn get_host(&self, request: Request<GetHostRequest>) -> Result<Response<GetHostResponse>, Status> {
        admin(&request)?;
        let host = self.host_for_admin(&request.get_ref().host_id).await?;
        Ok(Response::new(GetHostResponse { host: Some(self.fleet.host_message(host).await?), tenants: Vec::new() }))
    }

    async fn drain_host(&self, request: Request<DrainHostRequest>) -> Result<Response<DrainHostResponse>, Status> {
        admin(&request)?;
        let req = request.into_inner();
        let host = self.host_for_admin(&req.host_id).await?;
        let state = if req.undrain { HostState::Active } else { HostState::Draining };
        let host = self.store.set_host_state(&host.id, state).await.map_err(ApiError::from)?;
        tracing::info!(host = %host.id, state = ?state, "host state changed");
        Ok(Response::new(DrainHostResponse { host: Some(self.fleet.host_message(host).await?) }))
    }

    async fn remove_host(&self, request: Request<RemoveHostRequest>) -> Result<Response<RemoveHostResponse>, Status> {
        admin(&request)?;
        let req = request.into_inner();
        let host = self.host_for_admin(&req.host_id).await?;
        if host.status != HostState::Removed {
            let tenants = self.store.host_load(&host.id).await.map_err(ApiError::from)?.tenants;
            if tenants > 0 && !req.force {
                return Err(ApiError::FailedPrecondition(format!(
                    "host {} still has {tenants} tenant(s); move them off (DrainHost) or pass force",
                    host.id
                ))
                .into());
            }
        }
        let host = match self.store.set_host_state(&host.id, HostState::Removed).await {
            Ok(host) => host,
            // Removed already (maybe by another call just now): success.
            Err(StoreError::NotFound(_)) => self.host_for_admin(&host.id).await?,
            Err(err) => return Err(ApiError::from(err).into()),
        };
        // Again for a removed host too: a stream must not outlive removal.
        self.fleet.revoke(&host.id).await;
        tracing::info!(host = %host.id, "host removed; its certificates are revoked and its streams closed");
        Ok(Response::new(RemoveHostResponse { host: Some(self.fleet.host_message(host).await?) }))
    }

    async fn ping_host(&self, request: Request<PingHostRequest>) -> Result<Response<PingHostResponse>, Status> {
        admin(&request)?;
        let deadline_wait = wait_within(&request, MAX_PING_WAIT);
        Ok(Response::new(self.ping(request.into_inner(), deadline_wait).await?))
    }
}
