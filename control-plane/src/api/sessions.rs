//! SessionService: a tenant's synced conversations, and a turn with its
//! agent (SendMessage, relayed by the fleet's [`TurnRelay`]).
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clawplane_proto::v1::session_service_server::SessionService;
use clawplane_proto::v1::{
    send_message_response, GetSessionRequest, GetSessionResponse, ListMessagesRequest, ListMessagesResponse,
    ListSessionsRequest, ListSessionsResponse, Message, MessageRole, SendMessageRequest, SendMessageResponse, Session,
    TextDelta, TokenUsage, TurnDone,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::error::{ApiError, ApiResult};
use super::request::{
    caller, check_text, decode_page_token, next_page_token, optional_timestamp, page_size, required_id, shown,
    timestamp, visible_tenant, MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS,
};
use crate::fleet::{Turn, TurnEvent, TurnRelay, TurnRequest};
use crate::store::{self, SessionFilter, Store, TenantStatus};
use clawplane_edge::shutdown::ShutdownSignal;

/// The largest message a user may send in one turn.
pub const MAX_TURN_TEXT_BYTES: usize = 32 * 1024;
const MAX_SESSION_KEY: usize = 256;
/// How long `done` waits for the turn's transcript to sync (normally
/// milliseconds), so it can name the session id and the model.
const SYNC_WAIT: Duration = Duration::from_secs(5);

pub struct SessionApi {
    store: Store,
    turns: Arc<TurnRelay>,
    /// Turns in flight end (UNAVAILABLE) when shutdown is requested.
    shutdown: ShutdownSignal,
}

impl SessionApi {
    pub fn new(store: Store, turns: Arc<TurnRelay>, shutdown: ShutdownSignal) -> Self {
        SessionApi { store, turns, shutdown }
    }
}

/// An OpenClaw agent id as the gateway normalises them.
fn check_agent_id(agent_id: &str) -> ApiResult<()> {
    let valid = !agent_id.is_empty()
        && agent_id.len() <= 64
        && agent_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(ApiError::invalid(format!(
            "agent_id {} must be 1-64 characters of a-z, 0-9, '-' and '_'",
            shown(agent_id)
        )));
    }
    Ok(())
}

/// A session key as OpenClaw writes them (`agent:<id>:<channel>:...`,
/// lower case), which goes into a header to the gateway.
fn check_session_key(key: &str) -> ApiResult<()> {
    let valid = key.len() <= MAX_SESSION_KEY && key.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(ApiError::invalid(format!(
            "session_key {} must be at most {MAX_SESSION_KEY} printable ASCII characters without spaces",
            shown(key)
        )));
    }
    Ok(())
}

type TurnStream = Pin<Box<dyn Stream<Item = Result<SendMessageResponse, Status>> + Send>>;

/// Where the turn's transcript will be: the session key, and how many
/// messages the session held before it.
struct Conversation {
    agent_id: String,
    session_key: String,
    messages_before: i64,
}

/// Relays the turn's events to the caller. When the caller goes away the
/// turn is dropped, which aborts it in the gateway.
async fn relay_turn(
    store: Store,
    shutdown: ShutdownSignal,
    tenant_id: String,
    conversation: Conversation,
    mut turn: Turn,
    out: tokio::sync::mpsc::Sender<Result<SendMessageResponse, Status>>,
) {
    let event = |event| Ok(SendMessageResponse { event: Some(event) });
    loop {
        let next = tokio::select! {
            next = turn.next() => next,
            _ = out.closed() => {
                tracing::info!(tenant = %tenant_id, "turn: the caller went away; aborting the turn");
                return;
            }
            _ = shutdown.requested() => {
                let status = Status::unavailable("the control plane is shutting down; the turn was aborted");
                let _ = out.send(Err(status)).await;
                return;
            }
        };
        let done = match next {
            Some(Ok(TurnEvent::Delta(text))) => {
                if out.send(event(send_message_response::Event::Delta(TextDelta { text }))).await.is_err() {
                    return;
                }
                continue;
            }
            Some(Ok(TurnEvent::Done { text, finish_reason, usage })) => (text, finish_reason, usage),
            Some(Err(err)) => {
                let _ = out.send(Err(ApiError::from(err).into())).await;
                return;
            }
            None => return,
        };
        drop(turn);
        let (text, finish_reason, usage) = done;
        // A caller that has what it came for (the text) may leave now.
        let synced = tokio::select! {
            synced = synced_session(&store, &tenant_id, &conversation) => synced,
            _ = out.closed() => return,
        };
        let usage = usage.map(|u| token_usage(u.input, u.output, u.cache_read, 0, u.total, 0));
        let done = TurnDone {
            text,
            session_key: conversation.session_key,
            session_id: synced.as_ref().map(|s| s.session_id.clone()).unwrap_or_default(),
            agent_id: conversation.agent_id,
            model: synced.and_then(|s| s.model).unwrap_or_default(),
            usage,
            finish_reason,
        };
        let _ = out.send(event(send_message_response::Event::Done(done))).await;
        return;
    }
}

/// The turn's session once sync has stored the turn (two more messages),
/// or None after [`SYNC_WAIT`].
async fn synced_session(store: &Store, tenant_id: &str, conversation: &Conversation) -> Option<store::Session> {
    let deadline = Instant::now() + SYNC_WAIT;
    loop {
        match store.session_by_key(tenant_id, &conversation.session_key).await {
            Ok(Some(row)) if row.message_count >= conversation.messages_before + 2 => return Some(row),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(tenant = %tenant_id, error = %err, "turn: cannot read the synced session");
                return None;
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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

fn session_message(row: store::Session) -> Session {
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

fn message_message(row: store::Message) -> Message {
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

    type SendMessageStream = TurnStream;

    async fn send_message(&self, request: Request<SendMessageRequest>) -> Result<Response<TurnStream>, Status> {
        let principal = caller(&request)?;
        let request = request.into_inner();
        // Everything the request carries is checked before the first query.
        required_id("tenant_id", &request.tenant_id)?;
        if request.text.trim().is_empty() {
            return Err(ApiError::invalid("text is required").into());
        }
        if request.text.len() > MAX_TURN_TEXT_BYTES {
            return Err(ApiError::invalid(format!(
                "text is {} bytes; a message may be at most {MAX_TURN_TEXT_BYTES}",
                request.text.len()
            ))
            .into());
        }
        if !request.session_key.is_empty() {
            check_session_key(&request.session_key)?;
        }
        if !request.agent_id.is_empty() {
            check_agent_id(&request.agent_id)?;
        }
        let tenant = visible_tenant(&self.store, &principal, &request.tenant_id).await?;
        let status = tenant.status();
        let host_id = match (&tenant.tenant.host_id, status) {
            // A hibernated tenant's host wakes it for the turn.
            (Some(host_id), TenantStatus::Running | TenantStatus::Hibernated) => host_id.clone(),
            _ => {
                return Err(ApiError::FailedPrecondition(format!(
                    "the tenant is {}, not RUNNING ({})",
                    status.as_str().to_uppercase(),
                    shown(&tenant.tenant.status_message)
                ))
                .into())
            }
        };
        let conversation = if request.session_key.is_empty() {
            let agents = tenant.agent_ids();
            let agent_id = match request.agent_id.as_str() {
                "" => agents.first().cloned().unwrap_or_else(|| tenant.tenant.slug.clone()),
                asked if agents.iter().any(|a| a == asked) => asked.to_string(),
                _ => return Err(ApiError::NotFound("agent").into()),
            };
            let session_key = format!("agent:{agent_id}:clawplane:{}", uuid::Uuid::new_v4().simple());
            Conversation { agent_id, session_key, messages_before: 0 }
        } else {
            let session = self
                .store
                .session_by_key(&tenant.tenant.id, &request.session_key)
                .await
                .map_err(ApiError::from)?
                .ok_or(ApiError::NotFound("session"))?;
            if !request.agent_id.is_empty() && request.agent_id != session.agent_id {
                return Err(ApiError::invalid(format!(
                    "agent_id {} is not the session's agent {}",
                    shown(&request.agent_id),
                    shown(&session.agent_id)
                ))
                .into());
            }
            Conversation {
                agent_id: session.agent_id,
                session_key: request.session_key.clone(),
                messages_before: session.message_count,
            }
        };
        let turn = self
            .turns
            .start(TurnRequest {
                tenant_id: &tenant.tenant.id,
                host_id: &host_id,
                agent_id: &conversation.agent_id,
                session_key: &conversation.session_key,
                text: &request.text,
            })
            .await
            .map_err(ApiError::from)?;
        let (out, events) = tokio::sync::mpsc::channel(16);
        let relay =
            relay_turn(self.store.clone(), self.shutdown.clone(), tenant.tenant.id.clone(), conversation, turn, out);
        self.shutdown.spawn(relay);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(events))))
    }
}
