//! `clawplane-agent run`: puts the agent together and runs it until
//! SIGTERM/SIGINT or until the control plane refuses the host.
//!
//! Tasks: the [`reconnect`] loop with one [`session`] at a time (commands,
//! heartbeats, [`logs`]) on one of the control plane's [`endpoints`],
//! certificate [`renewal`], the syncer, the tenant proxy. Each holds a [`clawplane_edge::shutdown::Shutdown`]; at shutdown the session ends, the
//! syncer stops after the acks of its batches in flight, the proxy stops
//! accepting, running commands finish, and the agent waits for all of them
//! (at most [`SHUTDOWN_GRACE`]). Tenant gateways are left running, as they
//! would be if the agent were killed: the next run adopts them.
mod link;
mod logs;
mod reconnect;
mod renewal;
mod session;

use std::sync::Arc;

use anyhow::{anyhow, Context};
use clawplane_metering::{Meter, MeterSettings};
use clawplane_tls::ReloadableIdentity;

use crate::commands::Executor;
use crate::config::{ControlPlaneUrl, RunSettings, RuntimeKind, TenantSettings, SHUTDOWN_GRACE};
use crate::runtime::cells::CellsRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::Runtime;
use crate::state::StateDir;
use crate::sync::{ReadPermit, SyncTenant, Syncer, TenantSource};
use clawplane_edge::shutdown::{signalled, ShutdownSignal};
use link::Link;
use renewal::Renewal;
use session::Sessions;

pub async fn run(settings: RunSettings) -> anyhow::Result<()> {
    let signal = ShutdownSignal::default();
    let state = StateDir::new(&settings.state_dir);
    let runtime = match settings.tenants {
        Some(tenants) => {
            let runtime = build_runtime(tenants)?;
            runtime.adopt_all().await;
            runtime.prune_archives();
            Some(runtime)
        }
        None => None,
    };
    // Every model call of the tenants goes through the metering proxy.
    let meter = match &runtime {
        Some(_) => {
            let settings = MeterSettings {
                listen: settings.model_proxy.listen,
                stall_timeout: settings.model_proxy.stall_timeout,
                ..MeterSettings::new(settings.state_dir.join("meter"))
            };
            let meter = Meter::start(settings, signal.handle()).await.context("model proxy")?;
            tracing::info!(listen = %meter.local_addr(), "model proxy listening");
            Some(meter)
        }
        None => None,
    };
    let executor = Arc::new(Executor { state: state.clone(), runtime: runtime.clone(), meter: meter.clone() });
    let identity = state.identity()?.ok_or_else(|| {
        anyhow!("{} holds no enrollment; run `clawplane-agent join` first", settings.state_dir.display())
    })?;
    let control_planes = match settings.control_planes {
        urls if urls.is_empty() => stored_control_planes(&identity)?,
        urls => urls,
    };
    let config = settings.config;
    let tls_identity = ReloadableIdentity::from_pem(&state.read("cert.pem")?, &state.read("key.pem")?)
        .context("stored certificate or key is unusable")?;
    let openclaw_version = match &runtime {
        Some(runtime) => runtime.openclaw_version().await,
        None => String::new(),
    };
    // The tenant proxy, for gateway bridges.
    let proxy_endpoint = match (&settings.proxy_listen, &runtime) {
        (Some(listen), Some(runtime)) => {
            let (listener, addr) = crate::proxy::bind(listen).await?;
            let tls = clawplane_tls::mtls_server_config(&state.read("ca.pem")?, tls_identity.clone())?;
            let wake = crate::proxy::Wake::new(runtime.clone(), settings.hibernation.wake_timeout);
            crate::proxy::spawn(listener, tls, runtime.records().clone(), wake, signal.handle())?;
            let endpoint = settings.proxy_advertise.clone().unwrap_or_else(|| addr.to_string());
            tracing::info!(listen = %addr, %endpoint, "tenant proxy listening");
            endpoint
        }
        (Some(_), None) => anyhow::bail!("--proxy-listen needs --openclaw-bin: there are no tenants to proxy to"),
        (None, _) => String::new(),
    };
    let link = Arc::new(Link::new(identity, tls_identity, state.read("ca.pem")?, control_planes)?);
    let control_planes: Vec<String> = link.control_planes.iter().map(ToString::to_string).collect();
    tracing::info!(host = %link.identity.host_id, control_planes = %control_planes.join(","), "agent starting");

    let renewal = Renewal::new(link.clone(), state.clone(), !proxy_endpoint.is_empty());
    tokio::spawn(renewal.run(signal.handle()));
    if let Some(runtime) = &runtime {
        let every = settings.hibernation.check_interval;
        tokio::spawn(crate::runtime::hibernation::watch(runtime.clone(), every, signal.handle()));
        let journal = meter.as_ref().map(Meter::journal);
        let syncer = Syncer::new(state.root(), Arc::new(RuntimeTenants(runtime.clone())), journal)?;
        let (link, shutdown) = (link.clone(), signal.handle());
        tokio::spawn(async move { syncer.run(|| link.channel(), shutdown).await });
    }
    let sessions = Sessions {
        link,
        state,
        config,
        proxy_endpoint,
        openclaw_version,
        executor,
        log_streams: Default::default(),
        running: Default::default(),
    };
    let result = until_signal(&sessions, &signal, runtime.as_deref()).await;
    if !signal.finish(SHUTDOWN_GRACE).await {
        tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "some tasks were still running at the end of the grace");
    }
    result
}

/// The reconnect loop, until it ends or a signal asks the agent to stop.
async fn until_signal(
    sessions: &Sessions,
    signal: &ShutdownSignal,
    runtime: Option<&dyn Runtime>,
) -> anyhow::Result<()> {
    let reconnecting = reconnect::run(sessions, signal.handle());
    tokio::pin!(reconnecting);
    tokio::select! {
        result = &mut reconnecting => result,
        name = signalled() => {
            tracing::info!(signal = name, "stopping; tenant gateways keep running");
            if let Some(runtime) = runtime {
                runtime.leave_gateways_running();
            }
            signal.request();
            reconnecting.await
        }
    }
}

/// The control planes stored at join, when no setting names any.
fn stored_control_planes(identity: &crate::state::Identity) -> anyhow::Result<Vec<ControlPlaneUrl>> {
    let stored = identity.stored_control_planes();
    let urls = stored.iter().map(|url| {
        ControlPlaneUrl::stored(url).map_err(|reason| anyhow!("identity.json: control plane {url:?}: {reason}"))
    });
    urls.collect()
}

/// The runtime the settings ask for: the one place its kind is looked at.
fn build_runtime(settings: TenantSettings) -> anyhow::Result<Arc<dyn Runtime>> {
    Ok(match settings.kind {
        RuntimeKind::Process => ProcessRuntime::new(settings)?,
        RuntimeKind::Fleet => CellsRuntime::new(settings)?,
    })
}

/// The runtime's tenants, as the syncer sees them.
struct RuntimeTenants(Arc<dyn Runtime>);

impl TenantSource for RuntimeTenants {
    fn tenants(&self) -> Vec<SyncTenant> {
        let states = self.0.local_states().into_iter();
        states
            .map(|state| SyncTenant { tenant_id: state.tenant_id, state_dir: state.state_dir, owner: state.owner })
            .collect()
    }

    fn read_permit(&self, tenant_id: &str) -> Option<ReadPermit> {
        let hold = self.0.hold_for_read(tenant_id)?;
        Some(ReadPermit { own_config_hash: hold.own_config_hash, _hold: Box::new(hold.guard) })
    }
}
