//! SessionService: a tenant's synced conversations, read-only.
use chrono::{DateTime, Utc};
use clawplane_proto::v1::session_service_server::SessionService;
use clawplane_proto::v1::{
    GetSessionRequest, GetSessionResponse, ListMessagesRequest, ListMessagesResponse, ListSessionsRequest,
    ListSessionsResponse, Message, MessageRole, Session, TokenUsage,
};
use tonic::{Request, Response, Status};

use super::{
    caller, check_text, decode_page_token, next_page_token, optional_timestamp, page_size, required_id, timestamp,
    visible_tenant, ApiError, ApiResult, MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS,
};
use crate::store::entities::{message, session};
use crate::store::{SessionFilter, Store};

pub struct SessionApi {
    store: Store,
}

impl SessionApi {
    pub fn new(store: Store) -> Self {
        SessionApi { store }
    }
}

/// Token totals as the API reports them.
pub fn token_usage(
    input: i64,
    output: i64,
    cache_read: i64,
    cache_write: i64,
    total: i64,
    cost_micros: i64,
) -> TokenUsage {
    TokenUsage {
        input_tokens: input,
        output_tokens: output,
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        total_tokens: total,
        cost: cost_micros as f64 / 1e6,
    }
}

fn session_message(row: session::Model) -> Session {
    Session {
        usage: Some(token_usage(
            row.input_tokens,
            row.output_tokens,
            row.cache_read_tokens,
            row.cache_write_tokens,
            row.total_tokens,
            row.cost_micros,
        )),
        id: row.session_id,
        tenant_id: row.tenant_id,
        agent_id: row.agent_id,
        session_key: row.session_key.unwrap_or_default(),
        channel: row.channel.unwrap_or_default(),
        chat_type: row.chat_type.unwrap_or_default(),
        model: row.model.unwrap_or_default(),
        provider: row.provider.unwrap_or_default(),
        started_at: row.started_at.map(timestamp),
        last_activity_at: row.last_activity_at.map(timestamp),
        message_count: row.message_count,
    }
}

fn role(name: &str) -> MessageRole {
    match name {
        "user" => MessageRole::User,
        "assistant" => MessageRole::Assistant,
        "toolResult" => MessageRole::ToolResult,
        "system" => MessageRole::System,
        _ => MessageRole::Unspecified,
    }
}

fn message_message(row: message::Model) -> Message {
    Message {
        usage: Some(token_usage(
            row.input_tokens,
            row.output_tokens,
            row.cache_read_tokens,
            row.cache_write_tokens,
            row.total_tokens,
            row.cost_micros,
        )),
        id: row.event_id.unwrap_or_default(),
        session_id: row.session_id,
        seq: row.position,
        role: role(&row.role) as i32,
        text: row.content,
        model: row.model.unwrap_or_default(),
        provider: row.provider.unwrap_or_default(),
        created_at: Some(timestamp(row.created_at)),
    }
}

/// Page cursor of ListSessions: `<last_activity ms>/<session id>`.
fn session_cursor(token: &str) -> ApiResult<Option<(DateTime<Utc>, String)>> {
    let Some(key) = decode_page_token(token)? else { return Ok(None) };
    let invalid = || ApiError::invalid("page_token is not a token returned by this API");
    let (millis, id) = key.split_once('/').ok_or_else(invalid)?;
    // Within the Timestamp range, as every stored activity time is.
    let at = millis
        .parse::<i64>()
        .ok()
        .filter(|ms| (MIN_TIMESTAMP_SECONDS * 1000..=MAX_TIMESTAMP_SECONDS * 1000).contains(ms))
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(invalid)?;
    Ok(Some((at, id.to_string())))
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        // Everything the request carries is checked before the first query.
        required_id("tenant_id", &request.tenant_id)?;
        let limit = page_size(request.page_size, 50, 500)?;
        check_text("channel", &request.channel, 64)?;
        check_text("agent_id", &request.agent_id, 64)?;
        let active_after = optional_timestamp("active_after", request.active_after.as_ref())?;
        let active_before = optional_timestamp("active_before", request.active_before.as_ref())?;
        if let (Some(after), Some(before)) = (active_after, active_before) {
            if after > before {
                return Err(ApiError::invalid("active_after is later than active_before").into());
            }
        }
        let page_after = session_cursor(&request.page_token)?;
        let tenant = visible_tenant(&self.store, &principal, &request.tenant_id).await?;
        let filter = SessionFilter {
            tenant_id: tenant.tenant.id,
            channel: (!request.channel.is_empty()).then_some(request.channel),
            agent_id: (!request.agent_id.is_empty()).then_some(request.agent_id),
            active_after,
            active_before,
            page_after,
        };
        let mut rows = self.store.list_sessions(&filter, limit + 1).await.map_err(ApiError::from)?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let last_key = rows
            .last()
            .map(|s| format!("{}/{}", s.last_activity_at.map(|t| t.timestamp_millis()).unwrap_or(0), s.session_id));
        Ok(Response::new(ListSessionsResponse {
            next_page_token: next_page_token(more, last_key.as_deref()),
            sessions: rows.into_iter().map(session_message).collect(),
        }))
    }

    async fn get_session(&self, request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        required_id("tenant_id", &request.tenant_id)?;
        let session_id = required_id("session_id", &request.session_id)?;
        let tenant = visible_tenant(&self.store, &principal, &request.tenant_id).await?;
        let row = self
            .store
            .session(&tenant.tenant.id, session_id)
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("session"))?;
        Ok(Response::new(GetSessionResponse { session: Some(session_message(row)) }))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        required_id("tenant_id", &request.tenant_id)?;
        let session_id = required_id("session_id", &request.session_id)?;
        let limit = page_size(request.page_size, 100, 1000)?;
        let after = match decode_page_token(&request.page_token)? {
            Some(key) => Some(
                key.parse::<i64>().map_err(|_| ApiError::invalid("page_token is not a token returned by this API"))?,
            ),
            None => None,
        };
        let tenant = visible_tenant(&self.store, &principal, &request.tenant_id).await?;
        if self.store.session(&tenant.tenant.id, session_id).await.map_err(ApiError::from)?.is_none() {
            return Err(ApiError::NotFound("session").into());
        }
        let mut rows =
            self.store.list_messages(&tenant.tenant.id, session_id, after, limit + 1).await.map_err(ApiError::from)?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let last_key = rows.last().map(|m| m.position.to_string());
        Ok(Response::new(ListMessagesResponse {
            next_page_token: next_page_token(more, last_key.as_deref()),
            messages: rows.into_iter().map(message_message).collect(),
        }))
    }
}
