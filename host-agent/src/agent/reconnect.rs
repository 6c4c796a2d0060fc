//! Keeps one session with the control plane at a time, for as long as the
//! agent runs: lost sessions are retried with capped exponential backoff
//! and full jitter; a refusal ends the agent.
use std::time::Instant;

use anyhow::anyhow;

use super::session::{Ended, Sessions};
use crate::config::STABLE_SESSION;
use crate::retry::{Backoff, Retries};
use clawplane_edge::shutdown::Shutdown;

/// Until shutdown (Ok) or the control plane refuses this host (Err).
pub async fn run(sessions: &Sessions, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let mut retries = Retries::new(Backoff::RECONNECT, STABLE_SESSION);
    loop {
        let started = Instant::now();
        match sessions.run_one(&mut shutdown).await {
            Ended::Stopped => return Ok(()),
            Ended::Refused(reason) => return Err(anyhow!("{reason}")),
            Ended::Retry(reason) => {
                let delay = retries.after(started.elapsed());
                tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "connection to the control plane lost");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.requested() => return Ok(()),
                }
            }
        }
    }
}
