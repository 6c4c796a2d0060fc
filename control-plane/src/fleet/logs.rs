//! Tenant log streams: a StreamTenantLogs call asks the host over its
//! stream and gets the lines back on it, not queued. When another replica
//! holds the host's stream, that replica asks and relays the lines as
//! cluster events (`LogsWanted` -> `LogLines`... -> `LogsEnded`), and the
//! caller's `LogsStopped` ends the relay.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clawplane_proto::v1::{self as pb, command};
use prost::Message;

use clawplane_edge::shutdown::ShutdownSignal;

use super::error::{FleetError, FleetResult};
use super::peer::Outbound;
use crate::store::{ClusterEvent, Store, MAX_LOG_EVENT_BYTES};

/// What one StreamTenantLogs call asks of a host.
pub(super) struct LogAsk {
    pub(super) host_id: String,
    pub(super) tenant_id: String,
    pub(super) tail_lines: u32,
    pub(super) follow: bool,
}

/// Where the log lines of one StreamTenantLogs call go.
struct LogRoute {
    host_id: String,
    tenant_id: String,
    sink: tokio::sync::mpsc::Sender<pb::LogChunk>,
    /// The lines come from another replica (which holds the host's stream).
    relayed: bool,
}

/// Chunks buffered per log stream; a reader further behind loses chunks.
const LOG_BUFFER: usize = 16;

/// The log streams of this replica, by request id.
pub(super) struct LogRoutes {
    /// Tells the other replicas (relays).
    store: Store,
    /// Relays end with it.
    shutdown: ShutdownSignal,
    /// To callers here.
    routes: Mutex<HashMap<String, LogRoute>>,
    /// Relayed from hosts held here to callers on other replicas.
    relays: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

impl LogRoutes {
    pub(super) fn new(store: Store, shutdown: ShutdownSignal) -> Arc<LogRoutes> {
        Arc::new(LogRoutes { store, shutdown, routes: Mutex::default(), relays: Mutex::default() })
    }

    /// A new stream for `ask`: its request id and where its lines arrive.
    fn add(&self, ask: &LogAsk, relayed: bool) -> (String, tokio::sync::mpsc::Receiver<pb::LogChunk>) {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (sink, lines) = tokio::sync::mpsc::channel(LOG_BUFFER);
        let route = LogRoute { host_id: ask.host_id.clone(), tenant_id: ask.tenant_id.clone(), sink, relayed };
        self.routes.lock().unwrap().insert(request_id.clone(), route);
        (request_id, lines)
    }

    /// Ends one stream: its caller sees the end.
    pub(super) fn end(&self, request_id: &str) {
        self.routes.lock().unwrap().remove(request_id);
    }

    /// Ends the streams whose lines came over a host's stream that ended.
    pub(super) fn end_host(&self, host_id: &str) {
        self.routes.lock().unwrap().retain(|_, route| route.host_id != host_id);
    }

    /// Ends relayed streams (of one host, or all when lines may be lost).
    pub(super) fn end_relayed(&self, host_id: Option<&str>) {
        self.routes.lock().unwrap().retain(|_, route| !(route.relayed && host_id.is_none_or(|h| h == route.host_id)));
    }

    /// Stops relaying to a caller that went away.
    pub(super) fn stop_relay(&self, request_id: &str) {
        if let Some(relay) = self.relays.lock().unwrap().remove(request_id) {
            relay.abort();
        }
    }
}

impl LogRoutes {
    /// Asks the host over its stream, held here, for the log lines.
    pub(super) async fn open_here(self: &Arc<Self>, outbound: Outbound, ask: LogAsk) -> FleetResult<LogSubscription> {
        let (request_id, lines) = self.add(&ask, false);
        let command = pb::Command {
            id: uuid::Uuid::now_v7().to_string(),
            payload: Some(command::Payload::StreamLogs(pb::StreamLogsCommand {
                request_id: request_id.clone(),
                tenant_id: ask.tenant_id,
                tail_lines: ask.tail_lines,
                follow: ask.follow,
            })),
            ..Default::default()
        };
        let message = pb::ControlMessage { kind: Some(pb::control_message::Kind::Command(command)) };
        if outbound.send(Box::new(Ok(message))).await.is_err() {
            self.end(&request_id);
            return Err(FleetError::NotConnected("the tenant's host disconnected"));
        }
        let cancel = LogCancel::Local(outbound);
        Ok(LogSubscription { routes: self.clone(), host_id: ask.host_id, request_id, lines, cancel })
    }

    /// Asks whichever replica holds the host's stream to relay the lines.
    pub(super) async fn open_relayed(self: &Arc<Self>, ask: LogAsk) -> LogSubscription {
        let (request_id, lines) = self.add(&ask, true);
        let wanted = ClusterEvent::LogsWanted {
            request_id: request_id.clone(),
            host_id: ask.host_id.clone(),
            tenant_id: ask.tenant_id,
            tail_lines: ask.tail_lines,
            follow: ask.follow,
        };
        self.store.publish(wanted).await;
        LogSubscription { routes: self.clone(), host_id: ask.host_id, request_id, lines, cancel: LogCancel::Relayed }
    }

    /// Streams a tenant's log lines from a host whose stream this replica
    /// holds (`outbound`) to a caller on another replica, as `LogLines`
    /// events, until the log ends, the host's stream does, or the caller
    /// stops. Never relayed on again: without the stream here it just ends.
    pub(super) fn relay(self: &Arc<Self>, request_id: String, outbound: Option<Outbound>, ask: LogAsk) {
        let routes = self.clone();
        let id = request_id.clone();
        let relay = self.shutdown.spawn(async move {
            let subscription = match outbound {
                Some(outbound) => routes.open_here(outbound, ask).await.ok(),
                None => None,
            };
            if let Some(mut subscription) = subscription {
                while let Some(chunk) = subscription.lines.recv().await {
                    let last = chunk.eof;
                    for piece in relay_pieces(chunk) {
                        let chunk = STANDARD.encode(piece.encode_to_vec());
                        routes.store.publish(ClusterEvent::LogLines { request_id: id.clone(), chunk }).await;
                    }
                    if last {
                        routes.relays.lock().unwrap().remove(&id);
                        return;
                    }
                }
            }
            routes.store.publish(ClusterEvent::LogsEnded { request_id: id.clone() }).await;
            routes.relays.lock().unwrap().remove(&id);
        });
        self.relays.lock().unwrap().insert(request_id, relay.abort_handle());
    }

    /// Hands a log chunk to its subscriber, if it came from the right host
    /// for the right tenant.
    pub(super) fn route(&self, host_id: &str, chunk: pb::LogChunk) {
        let sink = {
            let routes = self.routes.lock().unwrap();
            match routes.get(&chunk.request_id) {
                Some(route) if route.host_id == host_id && route.tenant_id == chunk.tenant_id => {
                    Some(route.sink.clone())
                }
                _ => None,
            }
        };
        if let Some(sink) = sink {
            // A slow reader drops chunks rather than growing memory.
            if sink.try_send(chunk).is_err() {
                tracing::debug!(host = %host_id, "log subscriber is behind; chunk dropped");
            }
        }
    }

    /// Lines relayed by the replica holding the host's stream.
    pub(super) fn relayed_lines(&self, request_id: String, chunk: &str) {
        let host_id = self.routes.lock().unwrap().get(&request_id).map(|r| r.host_id.clone());
        let chunk = STANDARD.decode(chunk).ok().and_then(|b| pb::LogChunk::decode(b.as_slice()).ok());
        if let (Some(host_id), Some(mut chunk)) = (host_id, chunk) {
            // The holder asked its host under a request id of its own.
            chunk.request_id = request_id;
            self.route(&host_id, chunk);
        }
    }
}

/// Log lines of one tenant; cancels the stream on the host when dropped.
pub struct LogSubscription {
    routes: Arc<LogRoutes>,
    host_id: String,
    request_id: String,
    pub lines: tokio::sync::mpsc::Receiver<pb::LogChunk>,
    cancel: LogCancel,
}

/// How a log stream is stopped.
enum LogCancel {
    /// Over the host's stream, held here.
    Local(Outbound),
    /// By telling the replica that relays it.
    Relayed,
}

impl Drop for LogSubscription {
    fn drop(&mut self) {
        self.routes.end(&self.request_id);
        match &self.cancel {
            LogCancel::Local(outbound) => {
                let cancel = pb::Command {
                    id: uuid::Uuid::now_v7().to_string(),
                    payload: Some(command::Payload::CancelLogs(pb::CancelLogsCommand {
                        request_id: self.request_id.clone(),
                    })),
                    ..Default::default()
                };
                let message = pb::ControlMessage { kind: Some(pb::control_message::Kind::Command(cancel)) };
                if outbound.try_send(Box::new(Ok(message))).is_err() {
                    tracing::debug!(host = %self.host_id, "could not cancel a log stream; the host stops it on disconnect");
                }
            }
            LogCancel::Relayed => {
                let (store, request_id) = (self.routes.store.clone(), self.request_id.clone());
                self.routes.shutdown.spawn(async move {
                    store.publish(ClusterEvent::LogsStopped { request_id }).await;
                });
            }
        }
    }
}

/// A chunk cut to fit cluster events: at most [`MAX_LOG_EVENT_BYTES`] of
/// lines each, a longer line cut short and marked. The end (`eof`, the
/// error) rides on the last piece.
fn relay_pieces(chunk: pb::LogChunk) -> Vec<pb::LogChunk> {
    const CUT: &str = " [cut by the replica relay]";
    let piece = |lines: Vec<String>| pb::LogChunk { lines, eof: false, error: String::new(), ..chunk.clone() };
    let (mut pieces, mut lines, mut bytes) = (Vec::new(), Vec::new(), 0usize);
    for mut line in chunk.lines.iter().cloned() {
        let limit = MAX_LOG_EVENT_BYTES - CUT.len();
        if line.len() > limit {
            let mut end = limit;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str(CUT);
        }
        if bytes + line.len() > MAX_LOG_EVENT_BYTES && !lines.is_empty() {
            pieces.push(piece(std::mem::take(&mut lines)));
            bytes = 0;
        }
        bytes += line.len() + 2;
        lines.push(line);
    }
    pieces.push(piece(lines));
    if let Some(last) = pieces.last_mut() {
        last.eof = chunk.eof;
        last.error = chunk.error.clone();
    }
    pieces
}
