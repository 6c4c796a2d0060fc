//! The metering model proxy of the host agent. Every model call of every
//! tenant goes through it on loopback: it knows the tenant from a
//! credential that names only that tenant, adds the real upstream key
//! (which lives only in the agent's own 0600 state), meters exact usage from
//! the upstream's own usage blocks into a durable per-tenant journal, and
//! enforces the tenant's allowance and request rate.
//!
//! Modules, one job each: `credential` (tenant credentials), `store`
//! (owner-only state files), `routes` (a tenant's upstream and key), `api`
//! (the three wire formats), `usage` (usage blocks, streamed or not),
//! `allowance` (enforcement), `journal` (the records), `error` (every early
//! end as an HTTP answer), `upstream` (the client), `proxy` (one call),
//! `server` (the listener).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clawplane_edge::shutdown::Shutdown;
use clawplane_proto::v1::{ModelApi, ModelCall, ModelCallOutcome, ModelRoute, SetAllowanceCommand};
use clawplane_tls::files::create_private_dir;

mod allowance;
mod api;
mod credential;
mod error;
mod journal;
mod proxy;
mod routes;
mod server;
mod store;
mod upstream;
mod usage;

pub use journal::Journal;

use allowance::{Allowances, Counted};
use proxy::Proxy;
use routes::Route;
use store::MessageFile;

/// Where the proxy listens and how it bounds calls.
#[derive(Clone, Debug)]
pub struct MeterSettings {
    /// Loopback only.
    pub listen: SocketAddr,
    /// The agent's own directory for the meter (created 0700).
    pub state_dir: PathBuf,
    /// No upstream byte for this long mid-answer (or before the answer's
    /// head): the call is cut.
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    /// Larger request bodies are refused (413).
    pub max_request_bytes: usize,
}

impl MeterSettings {
    pub fn new(state_dir: PathBuf) -> Self {
        MeterSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 18700)),
            state_dir,
            stall_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            max_request_bytes: 32 << 20,
        }
    }
}

/// The running proxy; clones share it.
#[derive(Clone)]
pub struct Meter {
    inner: Arc<Inner>,
}

struct Inner {
    local_addr: SocketAddr,
    proxy: Arc<Proxy>,
    journal: Journal,
    appender: journal::Appender,
    routes_file: MessageFile,
    allowances_file: MessageFile,
    /// Serializes the state files' writes (each is written whole).
    saving: Mutex<HashMap<String, ModelRoute>>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter").field("local_addr", &self.inner.local_addr).finish_non_exhaustive()
    }
}

fn counted(call: &ModelCall) -> Counted {
    Counted {
        tokens: call.input_tokens.saturating_add(call.output_tokens),
        message: call.outcome() == ModelCallOutcome::Completed,
        platform_key: call.platform_key,
        started_ms: journal::started_ms(call),
    }
}

impl Meter {
    /// Loads the state in `state_dir`, binds, and serves until `shutdown`.
    pub async fn start(settings: MeterSettings, shutdown: Shutdown) -> anyhow::Result<Meter> {
        if !settings.listen.ip().is_loopback() {
            anyhow::bail!("model proxy: {} is not a loopback address", settings.listen);
        }
        let dir = &settings.state_dir;
        create_private_dir(dir)?;
        let credentials = credential::Credentials::load_or_create(&dir.join("meter.key"))?;
        let routes_file = MessageFile::new(dir.join("routes.json"));
        let allowances_file = MessageFile::new(dir.join("allowances.json"));
        let stored_routes: HashMap<String, ModelRoute> = routes_file.load()?;
        let mut routes = HashMap::new();
        for (tenant, route) in &stored_routes {
            match Route::compile(route) {
                Ok(compiled) => {
                    routes.insert(tenant.clone(), Arc::new(compiled));
                }
                Err(err) => tracing::warn!(tenant = %tenant, error = %err, "stored model route ignored"),
            }
        }
        let allowances = Arc::new(Allowances::default());
        for (_, allowance) in allowances_file.load::<SetAllowanceCommand>()? {
            allowances.set(allowance);
        }
        let journal = Journal::open(&dir.join("journal"))?;
        // What was metered after each allowance's count, back in memory.
        for tenant in journal.tenants() {
            let from = allowances.get(&tenant).map_or(0, |a| a.counted_through + 1);
            for (position, call) in journal.read(&tenant, from, usize::MAX)? {
                allowances.replay(&tenant, position, counted(&call));
            }
        }
        let on_durable = {
            let allowances = allowances.clone();
            Box::new(move |tenant: &str, position: i64, call: &ModelCall| {
                allowances.durable(tenant, &call.call_id, position, counted(call))
            })
        };
        let appender = journal.start_writer(on_durable, allowances.active.clone(), shutdown.clone())?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| anyhow::anyhow!("model proxy {}: {e}", settings.listen))?;
        let local_addr = listener.local_addr()?;
        let proxy = Arc::new(Proxy {
            credentials,
            routes: std::sync::RwLock::new(routes),
            allowances,
            appender: appender.clone(),
            upstream: upstream::client(settings.connect_timeout)?,
            stall_timeout: settings.stall_timeout,
            max_request_bytes: settings.max_request_bytes,
        });
        tokio::spawn(server::serve(listener, proxy.clone(), shutdown));
        tracing::info!(%local_addr, "model proxy listening");
        Ok(Meter {
            inner: Arc::new(Inner {
                local_addr,
                proxy,
                journal,
                appender,
                routes_file,
                allowances_file,
                saving: Mutex::new(stored_routes),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The `baseUrl` of the tenant's provider entry in openclaw.json for
    /// this format (`api` of the entry); `apiKey` is [`Meter::credential`].
    pub fn provider_base_url(&self, api: ModelApi) -> String {
        let path = api::Api::from_proto(api).map_or(api::OPENAI_BASE, api::Api::base_path);
        format!("http://{}{path}", self.inner.local_addr)
    }

    /// The tenant's proxy credential (its `apiKey`): names the tenant, stable
    /// across restarts, useless for any other tenant.
    pub fn credential(&self, tenant_id: &str) -> String {
        self.inner.proxy.credentials.issue(tenant_id)
    }

    /// Sets where a tenant's calls go (persisted 0600: it holds the key).
    pub fn set_route(&self, tenant_id: &str, route: ModelRoute) -> anyhow::Result<()> {
        store::check_tenant_id(tenant_id)?;
        let compiled = Arc::new(Route::compile(&route)?);
        let mut stored = self.inner.saving.lock().unwrap();
        let previous = stored.insert(tenant_id.to_string(), route);
        if let Err(err) = self.inner.routes_file.save(&stored) {
            match previous {
                Some(previous) => stored.insert(tenant_id.to_string(), previous),
                None => stored.remove(tenant_id),
            };
            return Err(err);
        }
        self.inner.proxy.routes.write().unwrap().insert(tenant_id.to_string(), compiled);
        Ok(())
    }

    pub fn remove_route(&self, tenant_id: &str) -> anyhow::Result<()> {
        let mut stored = self.inner.saving.lock().unwrap();
        if let Some(previous) = stored.remove(tenant_id) {
            if let Err(err) = self.inner.routes_file.save(&stored) {
                stored.insert(tenant_id.to_string(), previous);
                return Err(err);
            }
        }
        self.inner.proxy.routes.write().unwrap().remove(tenant_id);
        Ok(())
    }

    /// Replaces a tenant's allowance (persisted; kept across restarts).
    pub fn set_allowance(&self, allowance: SetAllowanceCommand) -> anyhow::Result<()> {
        store::check_tenant_id(&allowance.tenant_id)?;
        let _saving = self.inner.saving.lock().unwrap();
        let mut all = self.inner.proxy.allowances.all();
        all.insert(allowance.tenant_id.clone(), allowance.clone());
        self.inner.allowances_file.save(&all)?;
        self.inner.proxy.allowances.set(allowance);
        Ok(())
    }

    /// A deleted tenant: its route and allowance are gone at once; its
    /// journal stays for the agent's sync to finish ([`Meter::remove_journal`]).
    pub fn forget_tenant(&self, tenant_id: &str) -> anyhow::Result<()> {
        self.remove_route(tenant_id)?;
        let _saving = self.inner.saving.lock().unwrap();
        let mut all = self.inner.proxy.allowances.all();
        if all.remove(tenant_id).is_some() {
            self.inner.allowances_file.save(&all)?;
        }
        self.inner.proxy.allowances.forget(tenant_id);
        Ok(())
    }

    /// Deletes a tenant's journal once the agent has synced it (after any
    /// record still being written).
    pub fn remove_journal(&self, tenant_id: &str) {
        self.inner.appender.remove(tenant_id);
    }

    pub fn journal(&self) -> Journal {
        self.inner.journal.clone()
    }
}
