//! Log tails for the control plane, streamed on the command stream rather
//! than queued: the tail first, then new lines while following, in bounded
//! chunks, until cancelled, disconnected or shut down.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use clawplane_proto::v1::{agent_message, command, AgentMessage, Command, LogChunk, StreamLogsCommand};
use tokio::sync::{mpsc, oneshot};

use crate::config::LOG_CHUNK_LINES;
use crate::runtime::Runtime;
use clawplane_edge::shutdown::Shutdown;

/// Log streams in progress, by request id, to cancel them.
#[derive(Default)]
pub struct LogStreams {
    streams: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

/// Whether a command is about log streams (handled here, not executed).
pub fn is_log_command(command: &Command) -> bool {
    matches!(command.payload, Some(command::Payload::StreamLogs(_)) | Some(command::Payload::CancelLogs(_)))
}

impl LogStreams {
    pub fn handle(
        &self,
        command: Command,
        out: mpsc::Sender<AgentMessage>,
        runtime: Option<Arc<dyn Runtime>>,
        shutdown: Shutdown,
    ) {
        match command.payload {
            Some(command::Payload::CancelLogs(cancel)) => {
                if let Some(stop) = self.streams.lock().unwrap().remove(&cancel.request_id) {
                    let _ = stop.send(());
                }
            }
            Some(command::Payload::StreamLogs(request)) => {
                let (stop_tx, stop_rx) = oneshot::channel();
                self.streams.lock().unwrap().insert(request.request_id.clone(), stop_tx);
                tokio::spawn(stream_logs(runtime, request, out, stop_rx, shutdown));
            }
            _ => {}
        }
    }
}

async fn stream_logs(
    runtime: Option<Arc<dyn Runtime>>,
    request: StreamLogsCommand,
    out: mpsc::Sender<AgentMessage>,
    mut stop: oneshot::Receiver<()>,
    mut shutdown: Shutdown,
) {
    let chunk = |lines: Vec<String>, eof: bool, error: String| AgentMessage {
        kind: Some(agent_message::Kind::LogChunk(LogChunk {
            request_id: request.request_id.clone(),
            tenant_id: request.tenant_id.clone(),
            lines,
            read_at: Some(SystemTime::now().into()),
            eof,
            error,
        })),
    };
    let Some(runtime) = runtime else {
        let _ = out.send(chunk(Vec::new(), true, "OpenClaw is not configured on this host".into())).await;
        return;
    };
    let tail = (request.tail_lines as usize).clamp(1, 10_000);
    if !request.follow {
        let (lines, error) = match runtime.log_tail(&request.tenant_id, tail).await {
            Ok(lines) => (lines, String::new()),
            Err(err) => (Vec::new(), err.to_string()),
        };
        for part in lines.chunks(LOG_CHUNK_LINES) {
            if out.send(chunk(part.to_vec(), false, String::new())).await.is_err() {
                return;
            }
        }
        let _ = out.send(chunk(Vec::new(), true, error)).await;
        return;
    }
    let mut follower = match runtime.log_follow(&request.tenant_id, tail).await {
        Ok(follower) => follower,
        Err(err) => {
            let _ = out.send(chunk(Vec::new(), true, err.to_string())).await;
            return;
        }
    };
    loop {
        let batch = tokio::select! {
            _ = &mut stop => return,
            _ = shutdown.requested() => return,
            batch = follower.next() => batch,
        };
        // The source went away: say so with the last lines, and stop.
        if batch.ended {
            let _ = out.send(chunk(batch.lines, true, String::new())).await;
            return;
        }
        for part in batch.lines.chunks(LOG_CHUNK_LINES) {
            if out.send(chunk(part.to_vec(), false, String::new())).await.is_err() {
                return;
            }
        }
    }
}
