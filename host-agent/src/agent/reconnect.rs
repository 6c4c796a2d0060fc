//! Keeps one session with the control plane at a time, for as long as the
//! agent runs, failing over between its replicas: each round tries the
//! endpoints in order and moves on at once when one cannot be reached;
//! only a round that failed everywhere waits (capped exponential backoff,
//! full jitter). A session that was up is retried on its own endpoint
//! first, so a blip does not move the host. A refusal ends the agent.
use std::time::Instant;

use anyhow::anyhow;

use super::endpoints::{resolve, round, Endpoint};
use super::session::{Ended, Sessions};
use crate::config::STABLE_SESSION;
use crate::retry::{Backoff, Retries};
use clawplane_edge::shutdown::Shutdown;

/// Until shutdown (Ok) or the control plane refuses this host (Err).
pub async fn run(sessions: &Sessions, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let mut retries = Retries::new(Backoff::RECONNECT, STABLE_SESSION);
    let mut lost_on: Option<Endpoint> = None;
    loop {
        let (endpoints, unresolved) = resolve(&sessions.link.control_planes).await;
        for failure in &unresolved {
            tracing::warn!(%failure, "a control plane endpoint does not resolve");
        }
        let order = round(&endpoints, lost_on.take().as_ref());
        let mut last_failure = unresolved.last().cloned().unwrap_or_else(|| "no endpoint".into());
        let mut lost = None;
        for (at, endpoint) in order.iter().enumerate() {
            let started = Instant::now();
            match sessions.run_one(endpoint, &mut shutdown).await {
                Ended::Stopped => return Ok(()),
                Ended::Refused(reason) => return Err(anyhow!("{reason}")),
                Ended::Unreachable(reason) => {
                    if let Some(next) = order.get(at + 1) {
                        tracing::warn!(%endpoint, %reason, %next, "control plane endpoint failed; switching to the next");
                    }
                    last_failure = format!("{endpoint}: {reason}");
                }
                Ended::Lost(reason) => {
                    lost = Some((endpoint.clone(), reason, started.elapsed()));
                    break;
                }
            }
        }
        let delay = match lost {
            Some((endpoint, reason, lasted)) => {
                let delay = retries.after(lasted);
                let retry_in_ms = delay.as_millis() as u64;
                tracing::warn!(%endpoint, %reason, retry_in_ms, "connection to the control plane lost; retrying there first");
                lost_on = Some(endpoint);
                delay
            }
            None => {
                let delay = retries.next_delay();
                let retry_in_ms = delay.as_millis() as u64;
                tracing::warn!(endpoints = order.len(), reason = %last_failure, retry_in_ms, "no control plane endpoint answered");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.requested() => return Ok(()),
        }
    }
}
