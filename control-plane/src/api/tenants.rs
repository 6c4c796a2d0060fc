//! TenantService: one OpenClaw per user or team, scoped to the caller.
use std::pin::Pin;

use clawplane_identity::{slug, Owner, Principal};
use clawplane_proto::v1::tenant_service_server::TenantService;
use clawplane_proto::v1::{
    self as pb, command, owner, CommandOutcome, CreateTenantRequest, CreateTenantResponse, DeleteTenantRequest,
    DeleteTenantResponse, GetMyTenantRequest, GetMyTenantResponse, GetTenantRequest, GetTenantResponse,
    ListTenantsRequest, ListTenantsResponse, RestartTenantCommand, RestartTenantRequest, RestartTenantResponse,
    StreamTenantLogsRequest, StreamTenantLogsResponse, TenantLogLine,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::deadline::wait_within;
use super::error::{ApiError, ApiResult};
use super::request::{caller, check_text, decode_page_token, next_page_token, page_size, shown, timestamp};
use crate::fleet::{Fleet, Placement};
use crate::store::{NewTenant, Store, TenantRecord, TenantStatus};
use std::sync::Arc;
use std::time::Duration;

const MAX_DISPLAY_NAME: usize = 200;
const MAX_PLAN_NAME: usize = 64;
const MAX_TEAM_ID: usize = 256;
const MAX_PLACEMENT_LABELS: usize = 16;
const MAX_EXTRA_AGENTS: usize = 8;
/// StreamTenantLogs: lines sent first when `tail_lines` is 0, and at most.
const DEFAULT_TAIL_LINES: u32 = 100;
const MAX_TAIL_LINES: i32 = 10_000;

pub struct TenantApi {
    store: Store,
    fleet: Arc<Fleet>,
    base_domain: String,
}

impl TenantApi {
    pub fn new(store: Store, fleet: Arc<Fleet>, base_domain: String) -> Self {
        TenantApi { store, fleet, base_domain }
    }

    fn message(&self, record: TenantRecord) -> pb::Tenant {
        let status = match record.status() {
            TenantStatus::Pending => pb::TenantStatus::Pending,
            TenantStatus::Provisioning => pb::TenantStatus::Provisioning,
            TenantStatus::Running => pb::TenantStatus::Running,
            TenantStatus::Failed => pb::TenantStatus::Failed,
            TenantStatus::Suspended => pb::TenantStatus::Suspended,
            TenantStatus::Deleted => pb::TenantStatus::Deleted,
            TenantStatus::Hibernated => pb::TenantStatus::Hibernated,
        };
        let owner = pb::Owner {
            kind: Some(match record.owner() {
                Owner::User(id) => owner::Kind::UserId(id),
                Owner::Team(id) => owner::Kind::TeamId(id),
            }),
        };
        let agent_ids = record.agent_ids();
        let placement_labels = record.placement_labels().into_iter().collect();
        let t = record.tenant;
        pb::Tenant {
            agent_ids,
            placement_labels,
            url: format!("https://{}.{}", t.slug, self.base_domain),
            id: t.id,
            slug: t.slug,
            display_name: t.display_name,
            owner: Some(owner),
            plan: record.plan,
            status: status as i32,
            status_message: t.status_message,
            host_id: t.host_id.unwrap_or_default(),
            created_at: Some(timestamp(t.created_at)),
            updated_at: Some(timestamp(t.updated_at)),
            deleted_at: t.deleted_at.map(timestamp),
        }
    }

    async fn visible_tenant(&self, principal: &Principal, id_or_slug: &str) -> ApiResult<TenantRecord> {
        super::request::visible_tenant(&self.store, principal, id_or_slug).await
    }

    async fn create(&self, principal: Principal, req: CreateTenantRequest) -> ApiResult<CreateTenantResponse> {
        let owner = owner_for(&principal, &req.team_id)?;
        if req.plan.is_empty() {
            return Err(ApiError::invalid("plan is required (see UsageService.ListPlans)"));
        }
        check_text("plan", &req.plan, MAX_PLAN_NAME)?;
        check_text("display_name", &req.display_name, MAX_DISPLAY_NAME)?;
        let (slug_candidates, slug_requested) = if req.slug.is_empty() {
            let (key, id) = match &owner {
                Owner::User(id) => (format!("user:{id}"), id),
                Owner::Team(id) => (format!("team:{id}"), id),
            };
            (slug::candidates(&key, id), false)
        } else {
            slug::validate(&req.slug).map_err(ApiError::InvalidArgument)?;
            (vec![req.slug.clone()], true)
        };
        if req.placement_labels.len() > MAX_PLACEMENT_LABELS {
            return Err(ApiError::invalid(format!("placement_labels: at most {MAX_PLACEMENT_LABELS} labels")));
        }
        for (key, value) in &req.placement_labels {
            super::request::check_label(key, value)?;
        }
        let mut extra_agents: Vec<String> = Vec::new();
        if !req.agent_ids.is_empty() {
            if matches!(owner, Owner::User(_)) {
                return Err(ApiError::invalid("agent_ids: only team tenants hold several agents"));
            }
            if req.agent_ids.len() > MAX_EXTRA_AGENTS {
                return Err(ApiError::invalid(format!("agent_ids: at most {MAX_EXTRA_AGENTS} extra agents")));
            }
            for agent in &req.agent_ids {
                slug::validate(agent)
                    .map_err(|err| ApiError::invalid(format!("agent_ids: {}: {err}", shown(agent))))?;
                if extra_agents.contains(agent) {
                    return Err(ApiError::invalid(format!("agent_ids: {agent:?} is listed twice")));
                }
                extra_agents.push(agent.clone());
            }
        }
        // Looked up only once the request itself is known to be well-formed.
        let plan =
            self.store.plan_by_name(&req.plan).await?.filter(|p| p.offered).ok_or_else(|| {
                ApiError::invalid(format!("unknown plan {:?} (see UsageService.ListPlans)", req.plan))
            })?;
        let display_name = if !req.display_name.is_empty() {
            req.display_name.clone()
        } else if let (Owner::User(_), Some(email)) = (&owner, &principal.email) {
            email.chars().take(MAX_DISPLAY_NAME).collect()
        } else {
            match &owner {
                Owner::User(id) | Owner::Team(id) => id.chars().take(MAX_DISPLAY_NAME).collect(),
            }
        };
        let (record, created) = self
            .store
            .create_tenant(NewTenant {
                owner,
                slug_candidates,
                slug_requested,
                display_name,
                plan,
                placement_labels: req.placement_labels.clone().into_iter().collect(),
                extra_agents,
                actor_user_id: principal.user_id.clone(),
                actor_email: principal.email.clone(),
            })
            .await?;
        if created {
            tracing::info!(tenant = %record.tenant.id, slug = %record.tenant.slug, "tenant created");
            match self.fleet.place(&record).await {
                Ok(Placement::Waiting(reason)) => {
                    let mut waiting = record;
                    waiting.tenant.status_message = reason;
                    return Ok(CreateTenantResponse { tenant: Some(self.message(waiting)), created });
                }
                Ok(_) => {
                    if let Some(placed) = self.store.live_tenant(&record.tenant.id).await? {
                        return Ok(CreateTenantResponse { tenant: Some(self.message(placed)), created });
                    }
                }
                Err(err) => tracing::warn!(error = %err, "placing the new tenant failed; the periodic sweep retries"),
            }
        }
        Ok(CreateTenantResponse { tenant: Some(self.message(record)), created })
    }
}

/// The owner a create/get-mine call acts for.
fn owner_for(principal: &Principal, team_id: &str) -> ApiResult<Owner> {
    if !principal.is_user {
        return Err(ApiError::PermissionDenied(
            "the admin token owns no tenant; call with a user's credentials".into(),
        ));
    }
    if team_id.is_empty() {
        return Ok(Owner::User(principal.user_id.clone()));
    }
    check_text("team_id", team_id, MAX_TEAM_ID)?;
    if principal.is_member_of(team_id) {
        Ok(Owner::Team(team_id.to_string()))
    } else {
        Err(ApiError::NotFound("team"))
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<StreamTenantLogsResponse, Status>> + Send>>;

const NOT_PLACED: &str = "tenant is not placed on a host yet (no host available)";
/// A gateway takes 10-20 s to be ready; leave room for a slow host.
const RESTART_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `produce` with a bounded channel and returns its receiving end as
/// a response stream.
fn async_stream_logs<F, Fut>(produce: F) -> LogStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<StreamTenantLogsResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<CreateTenantRequest>,
    ) -> Result<Response<CreateTenantResponse>, Status> {
        let principal = caller(&request)?;
        Ok(Response::new(self.create(principal, request.into_inner()).await?))
    }

    async fn get_my_tenant(
        &self,
        request: Request<GetMyTenantRequest>,
    ) -> Result<Response<GetMyTenantResponse>, Status> {
        let principal = caller(&request)?;
        let owner = owner_for(&principal, &request.get_ref().team_id)?;
        let record = self.store.live_tenant_of(&owner).await.map_err(ApiError::from)?;
        let record = record.ok_or(ApiError::NotFound("tenant"))?;
        Ok(Response::new(GetMyTenantResponse { tenant: Some(self.message(record)) }))
    }

    async fn get_tenant(&self, request: Request<GetTenantRequest>) -> Result<Response<GetTenantResponse>, Status> {
        let principal = caller(&request)?;
        let record = self.visible_tenant(&principal, &request.get_ref().tenant_id).await?;
        Ok(Response::new(GetTenantResponse { tenant: Some(self.message(record)) }))
    }

    async fn list_tenants(
        &self,
        request: Request<ListTenantsRequest>,
    ) -> Result<Response<ListTenantsResponse>, Status> {
        super::request::admin(&request)?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, 50, 500)?;
        let after = decode_page_token(&req.page_token)?;
        let (records, more) =
            self.store.list_tenants(after.as_deref(), limit, req.include_deleted).await.map_err(ApiError::from)?;
        let next_page_token = next_page_token(more, records.last().map(|last| last.tenant.id.as_str()));
        let tenants = records.into_iter().map(|r| self.message(r)).collect();
        Ok(Response::new(ListTenantsResponse { tenants, next_page_token }))
    }

    async fn delete_tenant(
        &self,
        request: Request<DeleteTenantRequest>,
    ) -> Result<Response<DeleteTenantResponse>, Status> {
        let principal = caller(&request)?;
        let record = self.visible_tenant(&principal, &request.get_ref().tenant_id).await?;
        let deleted =
            self.store.soft_delete_tenant(&record.tenant.id, &principal.user_id).await.map_err(ApiError::from)?;
        tracing::info!(tenant = %deleted.tenant.id, "tenant deleted");
        if let Some(host_id) = &deleted.tenant.host_id {
            self.fleet.delete_on_host(host_id, &deleted.tenant.id).await?;
        }
        Ok(Response::new(DeleteTenantResponse { tenant: Some(self.message(deleted)) }))
    }

    async fn restart_tenant(
        &self,
        request: Request<RestartTenantRequest>,
    ) -> Result<Response<RestartTenantResponse>, Status> {
        let principal = caller(&request)?;
        let wait = wait_within(&request, RESTART_TIMEOUT);
        let record = self.visible_tenant(&principal, &request.get_ref().tenant_id).await?;
        let Some(host_id) = record.tenant.host_id.clone() else {
            return Err(ApiError::FailedPrecondition(NOT_PLACED.into()).into());
        };
        let payload = command::Payload::RestartTenant(RestartTenantCommand {
            tenant_id: record.tenant.id.clone(),
            reason: format!("requested by {}", principal.user_id),
        });
        let command_id = self.fleet.enqueue(&host_id, Some(&record.tenant.id), payload).await?;
        match self.fleet.wait_for_result(&command_id, wait).await? {
            Some(result) if result.outcome == CommandOutcome::Succeeded as i32 => {}
            Some(result) => {
                return Err(ApiError::FailedPrecondition(format!(
                    "restart failed on the host: {}",
                    result.error_message
                ))
                .into())
            }
            None => {
                return Err(ApiError::DeadlineExceeded(format!(
                    "the gateway was not ready again within {:.0}s; the restart stays queued \
                     (a longer grpc-timeout waits longer)",
                    wait.as_secs_f64()
                ))
                .into())
            }
        }
        let record = self
            .store
            .live_tenant(&record.tenant.id)
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("tenant"))?;
        Ok(Response::new(RestartTenantResponse { tenant: Some(self.message(record)) }))
    }

    type StreamTenantLogsStream = LogStream;

    async fn stream_tenant_logs(
        &self,
        request: Request<StreamTenantLogsRequest>,
    ) -> Result<Response<Self::StreamTenantLogsStream>, Status> {
        let principal = caller(&request)?;
        let tail = match request.get_ref().tail_lines {
            n if n < 0 => return Err(ApiError::invalid("tail_lines must not be negative").into()),
            0 => DEFAULT_TAIL_LINES,
            n => n.min(MAX_TAIL_LINES) as u32,
        };
        let record = self.visible_tenant(&principal, &request.get_ref().tenant_id).await?;
        let Some(host_id) = record.tenant.host_id.clone() else {
            return Err(ApiError::FailedPrecondition(NOT_PLACED.into()).into());
        };
        let req = request.into_inner();
        let mut subscription = self.fleet.stream_logs(&host_id, &record.tenant.id, tail, req.follow).await?;
        let stream = async_stream_logs(move |tx| async move {
            while let Some(chunk) = subscription.lines.recv().await {
                if !chunk.error.is_empty() {
                    let _ = tx
                        .send(Err(Status::failed_precondition(format!("host could not read the log: {}", chunk.error))))
                        .await;
                    return;
                }
                let observed_at = chunk.read_at;
                let lines = chunk.lines.into_iter().map(|text| TenantLogLine { observed_at, text }).collect::<Vec<_>>();
                if !lines.is_empty() && tx.send(Ok(StreamTenantLogsResponse { lines })).await.is_err() {
                    return; // caller went away; dropping the subscription cancels the host side
                }
                if chunk.eof {
                    return;
                }
            }
            // The route closed without an end of log: the host's session
            // ended (it disconnected, or this control plane is stopping).
            let _ = tx.send(Err(Status::unavailable("the tenant's host disconnected; call again to resume"))).await;
        });
        Ok(Response::new(stream))
    }
}
