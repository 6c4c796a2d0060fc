//! Keeps one session with the control plane at a time, for as long as the
//! agent runs, failing over between its replicas: each round tries the
//! endpoints in order and moves on at once when one cannot be reached;
//! only a round that failed everywhere waits (capped exponential backoff,
//! full jitter). A session that was up is retried on its own endpoint
//! first, so a blip does not move the host. A refusal ends the agent.
use std::future::Future;

use anyhow::anyhow;
use tokio::time::Instant;

use super::session::{Ended, Sessions};
use crate::config::STABLE_SESSION;
use crate::endpoints::{resolve, round, Endpoint};
use crate::retry::{Backoff, Retries};
use clawplane_edge::shutdown::Shutdown;

/// Until shutdown (Ok) or the control plane refuses this host (Err).
pub async fn run(sessions: &Sessions, shutdown: Shutdown) -> anyhow::Result<()> {
    let urls = &sessions.link.control_planes;
    let attempt = async |endpoint: &Endpoint, shutdown: &mut Shutdown| sessions.run_one(endpoint, shutdown).await;
    keep_connected(Backoff::RECONNECT, || resolve(urls), attempt, shutdown).await
}

/// The loop, with where the endpoints come from and what one attempt is
/// left to the caller (tests script them).
async fn keep_connected<R, F>(
    policy: Backoff,
    mut resolve: impl FnMut() -> R,
    mut attempt: F,
    mut shutdown: Shutdown,
) -> anyhow::Result<()>
where
    R: Future<Output = (Vec<Endpoint>, Vec<String>)>,
    F: AsyncFnMut(&Endpoint, &mut Shutdown) -> Ended,
{
    let mut retries = Retries::new(policy, STABLE_SESSION);
    let mut lost_on: Option<Endpoint> = None;
    loop {
        // A name lookup can hang for seconds; shutdown does not wait for it.
        let (endpoints, unresolved) = tokio::select! {
            resolved = resolve() => resolved,
            _ = shutdown.requested() => return Ok(()),
        };
        for failure in &unresolved {
            tracing::warn!(%failure, "a control plane endpoint does not resolve");
        }
        let order = round(&endpoints, lost_on.take().as_ref());
        let mut last_failure = unresolved.last().cloned().unwrap_or_else(|| "no endpoint".into());
        let mut lost = None;
        for (at, endpoint) in order.iter().enumerate() {
            let started = Instant::now();
            match attempt(endpoint, &mut shutdown).await {
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;
    use crate::config::ControlPlaneUrl;
    use clawplane_edge::shutdown::ShutdownSignal;

    fn endpoint(name: &str, last_octet: u8) -> Endpoint {
        let url = ControlPlaneUrl::parse(&format!("https://{name}.test:7701")).unwrap();
        Endpoint { url, addr: ([10, 0, 0, last_octet], 7701).into() }
    }

    /// Runs the loop over endpoints a, b, c with scripted outcomes (an
    /// outcome after `up` seconds is a session that was up that long);
    /// returns each attempt: which endpoint, at how many seconds.
    async fn attempts(script: Vec<(&'static str, u64, Ended)>) -> (Vec<(String, u64)>, anyhow::Result<()>) {
        let endpoints = vec![endpoint("a", 1), endpoint("b", 2), endpoint("c", 3)];
        let start = tokio::time::Instant::now();
        let mut script = VecDeque::from(script);
        let mut seen = Vec::new();
        let signal = ShutdownSignal::default();
        let attempt = async |endpoint: &Endpoint, _: &mut Shutdown| {
            seen.push((endpoint.url.host().trim_end_matches(".test").to_string(), start.elapsed().as_secs()));
            let (expected, up, outcome) = script.pop_front().unwrap_or(("", 0, Ended::Refused("script ended".into())));
            assert_eq!(endpoint.url.host(), format!("{expected}.test"), "attempt {}", seen.len());
            tokio::time::sleep(Duration::from_secs(up)).await;
            outcome
        };
        // No jitter (1, 2, 4 s...) so the waits can be asserted exactly.
        let resolved = || std::future::ready((endpoints.clone(), Vec::new()));
        let result = keep_connected(Backoff::GATEWAY_RESTART, resolved, attempt, signal.handle()).await;
        (seen, result)
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_fail_over_at_once_and_back_off_only_after_a_whole_round() {
        let unreachable = || Ended::Unreachable("connection refused".into());
        let lost = || Ended::Lost("stream reset".into());
        let (seen, result) = attempts(vec![
            // Round 1: a and b cannot be reached, c takes a stable session.
            ("a", 0, unreachable()),
            ("b", 0, unreachable()),
            ("c", 60, lost()),
            // c was up: retried first (after the first backoff step), then
            // the round rotates on to a, b, without waiting in between.
            ("c", 0, unreachable()),
            ("a", 0, unreachable()),
            ("b", 0, unreachable()),
            // A whole round failed: the next waits 2 s, from a again.
            ("a", 0, unreachable()),
            ("b", 5, lost()),
            ("b", 0, Ended::Refused("host_revoked".into())),
        ])
        .await;
        let seen: Vec<(&str, u64)> = seen.iter().map(|(name, at)| (name.as_str(), *at)).collect();
        assert_eq!(
            seen,
            [("a", 0), ("b", 0), ("c", 0), ("c", 61), ("a", 61), ("b", 61), ("a", 63), ("b", 63), ("b", 72)],
            "attempts and when (s)"
        );
        assert_eq!(result.unwrap_err().to_string(), "host_revoked", "a refusal ends the loop at once");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_loop_while_it_waits() {
        let signal = ShutdownSignal::default();
        let endpoints = vec![endpoint("a", 1)];
        let resolved = || std::future::ready((endpoints.clone(), Vec::new()));
        let attempt = async |_: &Endpoint, _: &mut Shutdown| Ended::Unreachable("refused".into());
        let stopper = signal.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            stopper.request();
        });
        let result = keep_connected(Backoff::GATEWAY_RESTART, resolved, attempt, signal.handle()).await;
        assert!(result.is_ok());
    }
}
