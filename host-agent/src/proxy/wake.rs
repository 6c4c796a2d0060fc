//! Requests for a hibernated tenant: the proxy holds them while the
//! tenant's gateway starts (bounded), then serves them. A browser
//! navigation that would wait long gets a small page that retries; an API
//! client gets 503 with Retry-After once the bound passes.
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::hibernation::{Active, Activity};
use crate::runtime::Runtime;

/// How long a browser navigation waits before it gets the "starting" page
/// (which retries by itself).
pub const NAVIGATION_HOLD: Duration = Duration::from_secs(4);

/// Why a held request is not served.
#[derive(Debug)]
pub enum WakeError {
    /// The gateway is still starting when the hold ends; it keeps starting.
    StillStarting,
    /// It could not start.
    Failed(String),
}

/// Wakes tenants for the proxy. The proxy runs on a thread and runtime of
/// its own; a gateway's supervisor must live on the agent's, so the wake
/// runs there and the proxy only waits for it.
#[derive(Clone)]
pub struct Wake {
    runtime: Arc<dyn Runtime>,
    activity: Option<Arc<Activity>>,
    agent: tokio::runtime::Handle,
    /// Longest hold of an API request.
    pub timeout: Duration,
}

impl Wake {
    /// Called on the agent's runtime.
    pub fn new(runtime: Arc<dyn Runtime>, timeout: Duration) -> Self {
        Wake { activity: runtime.activity(), runtime, agent: tokio::runtime::Handle::current(), timeout }
    }

    /// Counts a request for the tenant as traffic until dropped, and says
    /// whether the tenant sleeps.
    pub fn begin(&self, tenant_id: &str) -> Option<Active> {
        self.activity.as_ref().map(|activity| activity.begin(tenant_id))
    }

    /// Starts the tenant's gateway and waits at most `hold` for it.
    pub async fn wake(&self, tenant_id: &str, hold: Duration) -> Result<(), WakeError> {
        let (runtime, id) = (self.runtime.clone(), tenant_id.to_string());
        let waking = self.agent.spawn(async move { runtime.wake(&id).await });
        match tokio::time::timeout(hold, waking).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(WakeError::Failed(err.to_string())),
            Ok(Err(join)) => Err(WakeError::Failed(join.to_string())),
            Err(_) => Err(WakeError::StillStarting),
        }
    }
}

/// The page a browser gets while the gateway starts: it reloads itself.
pub const STARTING_PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"2\"><title>Starting your OpenClaw</title>\
<style>body{font-family:system-ui,sans-serif;display:grid;place-items:center;min-height:90vh;color:#333}</style>\
</head><body><main><h1>Starting your OpenClaw&hellip;</h1>\
<p>It was asleep after a quiet while. This page reloads by itself in a moment.</p></main></body></html>\n";
