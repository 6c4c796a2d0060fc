//! Events between the replicas on one database: a command was queued or
//! answered, a host's stream was claimed, a host was removed, an owner's
//! tenant changed. The tables stay the truth; an event only says "look
//! again now", so a lost one costs latency, never correctness.
//!
//! On PostgreSQL events travel by `NOTIFY` on one channel, heard by one
//! `LISTEN` connection per replica ([`Store::follow_cluster_events`]);
//! SQLite serves one replica, so there they stay in the process. Either
//! way an event reaches this replica's own subscribers at once, without a
//! round trip. When the listening connection drops, the events sent
//! meanwhile are lost: subscribers get one [`ClusterEvent::Resync`] and
//! look at everything again.
use std::future::Future;
use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::Store;

/// The one NOTIFY channel of a cluster.
const CHANNEL: &str = "clawplane_cluster";
/// Events a slow subscriber may fall behind by before it is told to resync.
const LOCAL_BUFFER: usize = 4096;
/// PostgreSQL refuses NOTIFY payloads from 8000 bytes on.
const MAX_PAYLOAD: usize = 7900;
/// Bytes of log lines one event carries (base64 and the envelope fit in
/// [`MAX_PAYLOAD`]).
pub const MAX_LOG_EVENT_BYTES: usize = 5_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A command for this host is in its queue.
    CommandQueued { host_id: String },
    /// This command's result is stored.
    CommandAnswered { command_id: String },
    /// A replica opened the host's stream under this generation; a stream
    /// of an older generation must close.
    StreamClaimed { host_id: String, generation: i64 },
    /// The host was removed: every stream of it closes.
    HostRemoved { host_id: String },
    /// This owner's live tenant changed (cached copies are stale).
    OwnerChanged { owner_key: String },
    /// A caller on the sending replica wants a tenant's log lines from the
    /// replica holding the host's stream.
    LogsWanted { request_id: String, host_id: String, tenant_id: String, tail_lines: u32, follow: bool },
    /// Lines for a `LogsWanted` request: a `LogChunk`, protobuf in base64.
    LogLines { request_id: String, chunk: String },
    /// The host's stream ended on the holding replica; no more lines come.
    LogsEnded { request_id: String },
    /// The caller went away: stop relaying.
    LogsStopped { request_id: String },
    /// Events may have been lost: look at everything again. Never sent.
    #[serde(skip)]
    Resync,
}

/// One event as it travels: which replica sent it, so the sender does not
/// hear it twice.
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    event: ClusterEvent,
}

pub(super) struct Bus {
    /// This replica's id, fresh at every start.
    replica_id: String,
    local: broadcast::Sender<ClusterEvent>,
}

impl Bus {
    pub(super) fn new() -> Self {
        Bus { replica_id: uuid::Uuid::new_v4().simple().to_string(), local: broadcast::channel(LOCAL_BUFFER).0 }
    }
}

impl Store {
    /// This replica's id in the cluster (host stream claims name it).
    pub fn replica_id(&self) -> &str {
        &self.bus.replica_id
    }

    /// Every event from now on, from this replica and the others. A
    /// receiver that falls behind gets `Lagged`; treat it as a resync.
    pub fn cluster_events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.bus.local.subscribe()
    }

    /// Tells this replica at once and the others through the database. A
    /// failure to tell the others is logged, not returned: the change is
    /// already stored, and they see it at their next poll.
    pub async fn publish(&self, event: ClusterEvent) {
        let _ = self.bus.local.send(event.clone());
        if self.backend() != DbBackend::Postgres {
            return;
        }
        let payload = match serde_json::to_string(&Envelope { from: self.bus.replica_id.clone(), event }) {
            Ok(payload) if payload.len() <= MAX_PAYLOAD => payload,
            Ok(_) => {
                tracing::warn!("cluster event too large to send; other replicas see the change at their next poll");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cluster event not encoded");
                return;
            }
        };
        let notify = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [CHANNEL.into(), payload.into()],
        );
        if let Err(err) = self.db.execute(notify).await {
            tracing::warn!(error = %err, "cluster event not sent; other replicas see the change at their next poll");
        }
    }

    /// Hears the other replicas' events until `stop` resolves (PostgreSQL
    /// only; on SQLite it just waits). Reconnects after a lost connection,
    /// and then tells subscribers to resync.
    pub async fn follow_cluster_events(&self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        if self.backend() != DbBackend::Postgres {
            return stop.await;
        }
        let pool = self.db.get_postgres_connection_pool().clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut listener = tokio::select! {
                _ = &mut stop => return,
                connected = listen(&pool) => match connected {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot listen for cluster events; retrying");
                        tokio::select! {
                            _ = &mut stop => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            // Whatever was sent before this connection listened is unheard.
            let _ = self.bus.local.send(ClusterEvent::Resync);
            backoff = Duration::from_millis(100);
            loop {
                let received = tokio::select! {
                    _ = &mut stop => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => self.deliver(notification.payload()),
                    Ok(None) => {
                        tracing::warn!("cluster event connection lost; reconnecting");
                        let _ = self.bus.local.send(ClusterEvent::Resync);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cluster event connection failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }

    fn deliver(&self, payload: &str) {
        match serde_json::from_str::<Envelope>(payload) {
            Ok(envelope) if envelope.from == self.bus.replica_id => {}
            Ok(envelope) => {
                if let ClusterEvent::OwnerChanged { owner_key } = &envelope.event {
                    self.owner_cache.forget(owner_key);
                }
                let _ = self.bus.local.send(envelope.event);
            }
            Err(err) => tracing::warn!(error = %err, "unreadable cluster event ignored"),
        }
    }

    /// Forgets an owner's cached tenant here and on every other replica.
    pub(super) async fn owner_changed(&self, owner_key: &str) {
        self.owner_cache.forget(owner_key);
        self.publish(ClusterEvent::OwnerChanged { owner_key: owner_key.to_string() }).await;
    }
}

async fn listen(pool: &sea_orm::sqlx::PgPool) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_travels_as_it_was_sent() {
        let events = [
            ClusterEvent::CommandQueued { host_id: "h".into() },
            ClusterEvent::CommandAnswered { command_id: "c".into() },
            ClusterEvent::StreamClaimed { host_id: "h".into(), generation: 7 },
            ClusterEvent::HostRemoved { host_id: "h".into() },
            ClusterEvent::OwnerChanged { owner_key: "user:alice".into() },
            ClusterEvent::LogsWanted {
                request_id: "r".into(),
                host_id: "h".into(),
                tenant_id: "t".into(),
                tail_lines: 20,
                follow: true,
            },
            ClusterEvent::LogLines { request_id: "r".into(), chunk: "AAEC".into() },
            ClusterEvent::LogsEnded { request_id: "r".into() },
            ClusterEvent::LogsStopped { request_id: "r".into() },
        ];
        for event in events {
            let text = serde_json::to_string(&Envelope { from: "me".into(), event: event.clone() }).unwrap();
            let back: Envelope = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert_eq!((back.from.as_str(), back.event), ("me", event), "{text}");
        }
    }
}
