//! The `process` runtime: each tenant gets its own OS user, its own 0700
//! state tree and its own supervised `openclaw gateway run` on a loopback
//! port. The gateway token lives in a 0600 secrets file of the tenant and is
//! referenced from openclaw.json as a SecretRef; so are all tenant secrets.
//!
//! Layout, per tenant (directory owned by the tenant's user, 0700):
//!
//!     <tenants_dir>/<slug>/home      HOME and OPENCLAW_HOME
//!     <tenants_dir>/<slug>/state     OPENCLAW_STATE_DIR
//!     <tenants_dir>/<slug>/tmp       TMPDIR
//!     <tenants_dir>/<slug>/logs      gateway.log (OpenClaw's logging.file)
//!     <tenants_dir>/<slug>/secrets.json
//!
//! The agent's own record of each tenant (port, user, applied generation,
//! gateway token) sits in `<state_dir>/tenants/<tenant id>.json`, root-only.
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context};
use clawplane_tls::files::{create_private_dir, write_private};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};

use super::cli::{kill_group, CliOutput, OpenClawCli, StreamingChild, TenantEnv};
use super::{valid_config_path, valid_secret_pointer, valid_slug};

/// How tenants run on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Own OS user + supervised `openclaw gateway run` per tenant.
    Process,
    /// OpenClaw's own `openclaw fleet` cells (Docker or Podman containers).
    Fleet,
}

/// Settings of the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub kind: RuntimeKind,
    pub openclaw: OpenClawCli,
    /// The agent's state directory (tenant records go under it).
    pub state_dir: PathBuf,
    /// Where tenant trees live.
    pub tenants_dir: PathBuf,
    /// Run each tenant as its own OS user (needs root). Off only for
    /// development without root.
    pub tenant_users: bool,
    pub base_port: u16,
    /// Gateways derive ports up to base+110; keep them apart.
    pub port_stride: u16,
    pub cli_timeout: Duration,
    pub ready_timeout: Duration,
    pub archive_dir: PathBuf,
    /// How long archives of deleted tenants are kept.
    pub archive_retention: Duration,
}

/// Container of a tenant's fleet cell, as `openclaw fleet` names it.
const CELL_CONTAINER_PREFIX: &str = "openclaw-cell-";
/// The engine `openclaw fleet` drives by default (found on PATH).
const CONTAINER_ENGINE: &str = "docker";
/// Where a cell's state is mounted inside its container.
const CELL_HOME: &str = "/home/node/.openclaw";
/// Tenant secrets inside a cell's state, referenced by SecretRefs.
const CELL_SECRETS_FILE: &str = "clawplane-secrets.json";

/// The agent's record of one tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRecord {
    pub tenant_id: String,
    pub slug: String,
    pub port: u16,
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub agent_ids: Vec<String>,
    pub applied_generation: i64,
    pub gateway_token: String,
    /// Secret values last applied, by JSON pointer, so a later apply can
    /// rewrite the whole file.
    #[serde(default)]
    pub secrets: HashMap<String, String>,
    /// Set once every provisioning step finished; a record without it is
    /// finished on the next provision (agent restarted midway).
    #[serde(default)]
    pub provisioned: bool,
    /// sha256 of openclaw.json after the agent's own last write, so sync
    /// tells outside changes from ours.
    #[serde(default)]
    pub config_hash: Option<String>,
    /// Which generation of the agent's own gateway defaults the tenant's
    /// config carries ([`GATEWAY_DEFAULTS_VERSION`]); older tenants are
    /// brought up to date when the agent starts.
    #[serde(default)]
    pub defaults_version: u32,
    /// `https://<slug>.<domain>`, allowed to open the Control UI.
    #[serde(default)]
    pub public_origin: String,
}

/// Bumped whenever [`gateway_defaults`] changes.
pub const GATEWAY_DEFAULTS_VERSION: u32 = 1;

/// Settings the agent owns in every tenant's gateway config, beyond the
/// first provisioning steps.
fn gateway_defaults(public_origin: &str) -> Vec<Value> {
    // User traffic arrives through this host's agent (the tenant proxy, on
    // loopback) with X-Forwarded-* naming the real client; attribution only:
    // every request still needs the token.
    let mut ops = vec![json!({"path": "gateway.trustedProxies", "value": ["127.0.0.1/32", "::1/128"]})];
    if !public_origin.is_empty() {
        ops.push(json!({"path": "gateway.controlUi.allowedOrigins", "value": [public_origin]}));
    }
    ops
}

/// What a supervisor reports about its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayPhase {
    Starting,
    Running,
    Backoff,
    Stopped,
    Failed,
}

#[derive(Debug, Clone)]
pub struct GatewayState {
    pub phase: GatewayPhase,
    pub restarts: u32,
    pub last_error: String,
    pub pid: Option<u32>,
    pub since: SystemTime,
}

struct Supervisor {
    stop: watch::Sender<bool>,
    restart: Arc<Notify>,
    state: Arc<Mutex<GatewayState>>,
    task: tokio::task::JoinHandle<()>,
}

pub struct ProcessRuntime {
    config: RuntimeConfig,
    supervisors: Mutex<HashMap<String, Supervisor>>,
    /// Serialises operations per tenant (provision, apply, restart, delete).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while a new tenant's port is chosen and its record written.
    allocating: Mutex<()>,
}

/// A command failure that names what went wrong, with OpenClaw's own text.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Bad input: retrying will not help.
    #[error("{0}")]
    Invalid(String),
    /// OpenClaw refused (its message included).
    #[error("{0}")]
    OpenClaw(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<super::cli::CliError> for RuntimeError {
    fn from(err: super::cli::CliError) -> Self {
        RuntimeError::OpenClaw(err.to_string())
    }
}

pub type RuntimeResult<T> = Result<T, RuntimeError>;

/// One config generation for a tenant.
pub struct ConfigChange<'a> {
    /// (config path, JSON value) for one `config set --batch-json`.
    pub ops: &'a [(String, String)],
    pub unset_paths: &'a [String],
    /// (JSON pointer in the secrets file, value).
    pub secrets: &'a [(String, Vec<u8>)],
    /// (agent id, file name, content) in the agent's workspace.
    pub files: &'a [(String, String, String)],
}

/// Workspace files the agent writes on the control plane's behalf.
const WORKSPACE_FILES: &[&str] = &["SOUL.md"];

/// Result of provisioning.
pub struct Provisioned {
    pub port: u16,
    pub agent_ids: Vec<String>,
}

impl ProcessRuntime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Arc<Self>> {
        create_private_dir(&config.state_dir.join("tenants"))?;
        std::fs::create_dir_all(&config.tenants_dir)?;
        create_private_dir(&config.archive_dir)?;
        // Tenant users must traverse to their own tree, and nothing more.
        set_mode(&config.tenants_dir, 0o711)?;
        if config.tenants_dir.starts_with(&config.state_dir) {
            set_mode(&config.state_dir, 0o711)?;
        }
        Ok(Arc::new(ProcessRuntime {
            config,
            supervisors: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            allocating: Mutex::new(()),
        }))
    }

    fn lock(&self, tenant_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap().entry(tenant_id.to_string()).or_default().clone()
    }

    fn record_path(&self, tenant_id: &str) -> PathBuf {
        self.config.state_dir.join("tenants").join(format!("{tenant_id}.json"))
    }

    pub fn record(&self, tenant_id: &str) -> Option<TenantRecord> {
        let text = std::fs::read_to_string(self.record_path(tenant_id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save_record(&self, record: &TenantRecord) -> anyhow::Result<()> {
        write_private(&self.record_path(&record.tenant_id), serde_json::to_string_pretty(record)?.as_bytes())
    }

    pub fn records(&self) -> Vec<TenantRecord> {
        let Ok(entries) = std::fs::read_dir(self.config.state_dir.join("tenants")) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
            .collect()
    }

    /// Process tenants whose state sync reads (fleet cells keep theirs in
    /// the container engine's volumes and are not synced).
    pub fn sync_tenants(&self) -> Vec<crate::sync::SyncTenant> {
        if self.config.kind == RuntimeKind::Fleet {
            return Vec::new();
        }
        self.records()
            .into_iter()
            .map(|record| crate::sync::SyncTenant {
                state_dir: self.env(&record).state_dir,
                tenant_id: record.tenant_id,
            })
            .collect()
    }

    /// Holds the tenant for a sync read, unless a command holds it (a
    /// config write, or a delete removing the tree, may be under way).
    pub fn sync_permit(&self, tenant_id: &str) -> Option<crate::sync::ReadPermit> {
        let guard = self.lock(tenant_id).try_lock_owned().ok()?;
        let own_config_hash = self.record(tenant_id)?.config_hash.unwrap_or_default();
        Some(crate::sync::ReadPermit { own_config_hash, _hold: Box::new(guard) })
    }

    pub fn tenant_root(&self, slug: &str) -> PathBuf {
        self.config.tenants_dir.join(slug)
    }

    pub fn env(&self, record: &TenantRecord) -> TenantEnv {
        let root = self.tenant_root(&record.slug);
        TenantEnv {
            user: record.uid.zip(record.gid),
            home: root.join("home"),
            state_dir: root.join("state"),
            tmp_dir: root.join("tmp"),
            gateway_port: record.port,
            inherit_env: false,
        }
    }

    /// The environment of `openclaw fleet` calls: the agent's own, with one
    /// OpenClaw state for the host's fleet registry.
    fn fleet_env(&self, port: u16) -> anyhow::Result<TenantEnv> {
        let root = self.config.state_dir.join("fleet");
        for dir in ["home", "state", "tmp"] {
            create_private_dir(&root.join(dir))?;
        }
        Ok(TenantEnv {
            user: None,
            home: root.join("home"),
            state_dir: root.join("state"),
            tmp_dir: root.join("tmp"),
            gateway_port: port,
            inherit_env: true,
        })
    }

    async fn fleet(&self, record: &TenantRecord, args: &[&str]) -> RuntimeResult<CliOutput> {
        let env = self.fleet_env(record.port)?;
        let output = self.config.openclaw.run(&env, args, self.config.cli_timeout).await?;
        tracing::debug!(tenant = %record.tenant_id, command = %args[..args.len().min(2)].join(" "), elapsed_ms = output.elapsed.as_millis() as u64, ok = output.success, "openclaw call");
        Ok(output)
    }

    async fn fleet_ok(&self, record: &TenantRecord, args: &[&str]) -> RuntimeResult<CliOutput> {
        let output = self.fleet(record, args).await?;
        if !output.success {
            return Err(RuntimeError::OpenClaw(format!(
                "openclaw {}: {}",
                args[..2].join(" "),
                output.error_message()
            )));
        }
        Ok(output)
    }

    /// A fleet cell per tenant: `fleet create` (or `start` if it exists),
    /// then readiness on its loopback port.
    async fn provision_cell(&self, tenant_id: &str, slug: &str) -> RuntimeResult<Provisioned> {
        let mut record = match self.record(tenant_id) {
            Some(record) if record.slug != slug => {
                return Err(RuntimeError::Invalid(format!(
                    "tenant {tenant_id} already runs here as {:?}",
                    record.slug
                )));
            }
            Some(record) => record,
            None => {
                let _allocating = self.allocating.lock().unwrap();
                let record = TenantRecord {
                    tenant_id: tenant_id.to_string(),
                    slug: slug.to_string(),
                    port: self.free_port(),
                    user: None,
                    uid: None,
                    gid: None,
                    agent_ids: vec!["main".to_string()],
                    applied_generation: 0,
                    gateway_token: hex::encode(rand::random::<[u8; 16]>()),
                    secrets: HashMap::new(),
                    provisioned: false,
                    config_hash: None,
                    defaults_version: 0,
                    public_origin: String::new(),
                };
                self.save_record(&record)?;
                record
            }
        };
        let port = record.port.to_string();
        let status = self.fleet(&record, &["fleet", "status", slug, "--json"]).await?;
        let running = status.success
            && serde_json::from_str::<Value>(status.stdout.trim())
                .ok()
                .and_then(|s| s.pointer("/container/running").and_then(Value::as_bool))
                .unwrap_or(false);
        if !status.success {
            // The token goes to fleet on the command line: fleet has no other
            // way to take one, and it never prints it back to our logs.
            self.fleet_ok(
                &record,
                &["fleet", "create", slug, "--json", "--port", &port, "--gateway-token", &record.gateway_token],
            )
            .await?;
        } else if !running {
            self.fleet_ok(&record, &["fleet", "start", slug]).await?;
        }
        self.wait_ready(&record).await?;
        record.provisioned = true;
        self.save_record(&record)?;
        Ok(Provisioned { port: record.port, agent_ids: record.agent_ids })
    }

    /// Stop, back up into the archive folder, remove (data purged).
    async fn delete_cell(&self, record: &TenantRecord, archive: bool) -> RuntimeResult<Option<(PathBuf, u64)>> {
        let _ = self.fleet(record, &["fleet", "stop", &record.slug]).await?;
        let mut archived = None;
        if archive {
            let out = format!("{}/", self.config.archive_dir.display());
            let backup = self.fleet_ok(record, &["fleet", "backup", &record.slug, "--json", "--out", &out]).await?;
            let path = serde_json::from_str::<Value>(backup.stdout.trim())
                .ok()
                .and_then(|b| b.get("archivePath").and_then(Value::as_str).map(PathBuf::from));
            if let Some(path) = path {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                archived = Some((path, size));
            }
        }
        self.fleet_ok(record, &["fleet", "rm", &record.slug, "--force", "--purge-data"]).await?;
        Ok(archived)
    }

    pub fn gateway_state(&self, tenant_id: &str) -> Option<GatewayState> {
        self.supervisors.lock().unwrap().get(tenant_id).map(|s| s.state.lock().unwrap().clone())
    }

    fn free_port(&self) -> u16 {
        let used: Vec<u16> = self.records().iter().map(|r| r.port).collect();
        let mut port = self.config.base_port;
        loop {
            if !used.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
            port = port.saturating_add(self.config.port_stride);
        }
    }

    /// `openclaw <args>` for a tenant: as its user on its state, or inside
    /// its container for a fleet cell.
    async fn openclaw(&self, record: &TenantRecord, args: &[&str]) -> RuntimeResult<CliOutput> {
        let output = match self.config.kind {
            RuntimeKind::Fleet => {
                let container = format!("{CELL_CONTAINER_PREFIX}{}", record.slug);
                self.config
                    .openclaw
                    .run_in_container(CONTAINER_ENGINE, &container, args, self.config.cli_timeout)
                    .await?
            }
            RuntimeKind::Process => self.config.openclaw.run(&self.env(record), args, self.config.cli_timeout).await?,
        };
        tracing::debug!(tenant = %record.tenant_id, command = %args[..args.len().min(2)].join(" "), elapsed_ms = output.elapsed.as_millis() as u64, ok = output.success, "openclaw call");
        Ok(output)
    }

    /// Creates the tenant's user, tree, initial config and agent, and starts
    /// its gateway. Provisioning a tenant that exists only makes sure its
    /// gateway runs.
    #[cfg(test)]
    pub async fn provision(
        self: &Arc<Self>,
        tenant_id: &str,
        slug: &str,
        agent_ids: &[String],
    ) -> RuntimeResult<Provisioned> {
        self.provision_for(tenant_id, slug, agent_ids, "").await
    }

    /// As [`Self::provision`], allowing the tenant's public origin
    /// (`https://<slug>.<domain>`) to open the gateway's Control UI.
    pub async fn provision_for(
        self: &Arc<Self>,
        tenant_id: &str,
        slug: &str,
        agent_ids: &[String],
        public_origin: &str,
    ) -> RuntimeResult<Provisioned> {
        if !public_origin.is_empty() && !valid_origin(public_origin) {
            return Err(RuntimeError::Invalid(format!("invalid public origin {public_origin:?}")));
        }
        if !valid_slug(slug) {
            return Err(RuntimeError::Invalid(format!("invalid tenant slug {slug:?}")));
        }
        check_tenant_id(tenant_id)?;
        let mut agents: Vec<String> = if agent_ids.is_empty() { vec![slug.to_string()] } else { agent_ids.to_vec() };
        agents.dedup();
        if let Some(bad) = agents.iter().find(|a| !valid_slug(a)) {
            return Err(RuntimeError::Invalid(format!("invalid agent id {bad:?}")));
        }
        let lock = self.lock(tenant_id);
        let _guard = lock.lock().await;
        if self.config.kind == RuntimeKind::Fleet {
            return self.provision_cell(tenant_id, slug).await;
        }
        let mut record = match self.record(tenant_id) {
            Some(record) if record.slug != slug => {
                return Err(RuntimeError::Invalid(format!(
                    "tenant {tenant_id} already runs here as {:?}",
                    record.slug
                )));
            }
            Some(record) if record.provisioned => {
                self.ensure_gateway(&record);
                self.wait_ready(&record).await?;
                return Ok(Provisioned { port: record.port, agent_ids: record.agent_ids });
            }
            Some(record) => record,
            None => self.new_tenant(tenant_id, slug).await?,
        };
        // Every step below is idempotent, so an interrupted provisioning is
        // simply run again.
        let root = self.tenant_root(slug);
        let mut initial = json!([
            {"path": "gateway.mode", "value": "local"},
            {"path": "gateway.port", "value": record.port},
            {"path": "gateway.bind", "value": "loopback"},
            {"path": "secrets.providers.clawplane", "value": {"source": "file", "path": root.join("secrets.json"), "mode": "json"}},
            {"path": "gateway.auth", "value": {"mode": "token", "token": {"source": "file", "provider": "clawplane", "id": "/gateway/token"}}},
            {"path": "gateway.http.endpoints.chatCompletions.enabled", "value": true},
            {"path": "logging.file", "value": root.join("logs").join("gateway.log")},
        ]);
        if let Value::Array(ops) = &mut initial {
            ops.extend(gateway_defaults(public_origin));
        }
        self.config_set(&record, &initial).await?;
        for agent in &agents {
            let workspace = root.join("state").join("workspaces").join(agent);
            let workspace = workspace.to_string_lossy().into_owned();
            let output = self
                .openclaw_retrying(
                    &record,
                    &["agents", "add", agent, "--non-interactive", "--workspace", &workspace, "--json"],
                )
                .await?;
            if !output.success && !output.error_message().contains("already exists") {
                return Err(RuntimeError::OpenClaw(format!("openclaw agents add {agent}: {}", output.error_message())));
            }
            if !record.agent_ids.contains(agent) {
                record.agent_ids.push(agent.clone());
            }
        }
        record.provisioned = true;
        record.defaults_version = GATEWAY_DEFAULTS_VERSION;
        record.public_origin = public_origin.to_string();
        record.config_hash = crate::sync::config::current_hash(&self.env(&record).state_dir);
        self.save_record(&record)?;
        self.ensure_gateway(&record);
        self.wait_ready(&record).await?;
        Ok(Provisioned { port: record.port, agent_ids: record.agent_ids })
    }

    /// The user, tree and record of a tenant new to this host. The record is
    /// saved before the slow CLI calls so that a restart of the agent
    /// mid-provision finds and finishes it.
    async fn new_tenant(&self, tenant_id: &str, slug: &str) -> RuntimeResult<TenantRecord> {
        if self.tenant_root(slug).exists() {
            return Err(RuntimeError::Invalid(format!("slug {slug:?} is already used by another tenant on this host")));
        }
        let (user, uid, gid) = if self.config.tenant_users {
            let name = tenant_user_name(tenant_id);
            let (uid, gid) = ensure_user(&name, &self.tenant_root(slug).join("home")).await?;
            (Some(name), Some(uid), Some(gid))
        } else {
            (None, None, None)
        };
        // Port choice and record are one step: concurrent provisions of
        // different tenants must not pick the same port.
        let _allocating = self.allocating.lock().unwrap();
        let record = TenantRecord {
            tenant_id: tenant_id.to_string(),
            slug: slug.to_string(),
            port: self.free_port(),
            user,
            uid,
            gid,
            agent_ids: Vec::new(),
            applied_generation: 0,
            gateway_token: hex_token(),
            secrets: HashMap::new(),
            provisioned: false,
            config_hash: None,
            defaults_version: 0,
            public_origin: String::new(),
        };
        self.create_tree(&record)?;
        self.write_secrets(&record)?;
        self.save_record(&record)?;
        Ok(record)
    }

    fn create_tree(&self, record: &TenantRecord) -> anyhow::Result<()> {
        let root = self.tenant_root(&record.slug);
        for dir in [root.clone(), root.join("home"), root.join("state"), root.join("tmp"), root.join("logs")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            set_mode(&dir, 0o700)?;
            chown(&dir, record)?;
        }
        Ok(())
    }

    /// The secrets file: the gateway token and every tenant secret, 0600,
    /// owned by the tenant; OpenClaw reads it through SecretRefs.
    fn write_secrets(&self, record: &TenantRecord) -> anyhow::Result<()> {
        if self.config.kind == RuntimeKind::Fleet {
            // Inside the cell's state (the container's bind mount), owned
            // like the rest of it; fleet keeps the gateway token itself.
            let cell = self.cell_dir(&record.slug);
            if !cell.is_dir() {
                anyhow::bail!("the cell's state {} is missing; is the cell provisioned?", cell.display());
            }
            let mut document = json!({});
            for (pointer, value) in &record.secrets {
                set_pointer(&mut document, pointer, Value::String(value.clone()));
            }
            let path = cell.join(CELL_SECRETS_FILE);
            write_private(&path, serde_json::to_vec_pretty(&document)?.as_slice())?;
            return chown_like(&path, &cell);
        }
        let mut document = json!({"gateway": {"token": record.gateway_token}});
        for (pointer, value) in &record.secrets {
            set_pointer(&mut document, pointer, Value::String(value.clone()));
        }
        let path = self.tenant_root(&record.slug).join("secrets.json");
        write_private(&path, serde_json::to_vec_pretty(&document)?.as_slice())?;
        chown(&path, record)?;
        Ok(())
    }

    /// A fleet cell's state on the host (bind-mounted at [`CELL_HOME`]).
    fn cell_dir(&self, slug: &str) -> PathBuf {
        self.config.state_dir.join("fleet").join("state").join("fleet").join("cells").join(slug)
    }

    /// Where an agent's workspace files go.
    fn workspace_dir(&self, record: &TenantRecord, agent_id: &str) -> PathBuf {
        match self.config.kind {
            // A cell has OpenClaw's default agent, with the default workspace.
            RuntimeKind::Fleet => self.cell_dir(&record.slug).join("workspace"),
            RuntimeKind::Process => self.tenant_root(&record.slug).join("state").join("workspaces").join(agent_id),
        }
    }

    /// Runs a CLI call, again when OpenClaw reports a transient conflict
    /// (the file changed while it wrote, another process holds a state lock)
    /// and asks for a re-run.
    async fn openclaw_retrying(&self, record: &TenantRecord, args: &[&str]) -> RuntimeResult<CliOutput> {
        const TRANSIENT: &[&str] = &["changed while this command was writing", "another OpenClaw process owns"];
        let mut attempt = 0;
        loop {
            let output = self.openclaw(record, args).await?;
            attempt += 1;
            if output.success || attempt >= 4 || !TRANSIENT.iter().any(|t| output.error_message().contains(t)) {
                return Ok(output);
            }
            tokio::time::sleep(Duration::from_secs(attempt)).await;
        }
    }

    /// One `openclaw config set --batch-json` call for all the operations.
    async fn config_set(&self, record: &TenantRecord, ops: &Value) -> RuntimeResult<()> {
        let mut ops = ops.clone();
        if let (RuntimeKind::Fleet, Value::Array(list)) = (self.config.kind, &mut ops) {
            // The secrets file as the container sees it.
            let provider =
                json!({"source": "file", "path": format!("{CELL_HOME}/{CELL_SECRETS_FILE}"), "mode": "json"});
            list.insert(0, json!({"path": "secrets.providers.clawplane", "value": provider}));
        }
        let batch = ops.to_string();
        let output = self.openclaw_retrying(record, &["config", "set", "--batch-json", &batch]).await?;
        if !output.success {
            return Err(RuntimeError::OpenClaw(format!("openclaw config set: {}", output.error_message())));
        }
        Ok(())
    }

    /// Applies a config generation. Applying a generation at or below the
    /// applied one is a no-op.
    pub async fn apply_config(
        self: &Arc<Self>,
        tenant_id: &str,
        generation: i64,
        change: ConfigChange<'_>,
        restart: bool,
    ) -> RuntimeResult<i64> {
        let ConfigChange { ops, unset_paths, secrets, files } = change;
        let lock = self.lock(tenant_id);
        let _guard = lock.lock().await;
        let mut record = self
            .record(tenant_id)
            .ok_or_else(|| RuntimeError::Invalid(format!("tenant {tenant_id} is not on this host")))?;
        if generation <= record.applied_generation {
            return Ok(record.applied_generation);
        }
        let mut batch = Vec::with_capacity(ops.len());
        for (path, value_json) in ops {
            if !valid_config_path(path) {
                return Err(RuntimeError::Invalid(format!("invalid config path {path:?}")));
            }
            let value: Value = serde_json::from_str(value_json)
                .map_err(|err| RuntimeError::Invalid(format!("value of {path} is not JSON: {err}")))?;
            batch.push(json!({"path": path, "value": value}));
        }
        for path in unset_paths {
            if !valid_config_path(path) {
                return Err(RuntimeError::Invalid(format!("invalid config path {path:?}")));
            }
        }
        for (agent_id, name, _) in files {
            if !record.agent_ids.contains(agent_id) {
                return Err(RuntimeError::Invalid(format!("agent {agent_id:?} is not one of this tenant's agents")));
            }
            if !WORKSPACE_FILES.contains(&name.as_str()) {
                return Err(RuntimeError::Invalid(format!("workspace file {name:?} is not one the agent manages")));
            }
        }
        let mut new_secrets = HashMap::new();
        for (pointer, value) in secrets {
            if !valid_secret_pointer(pointer) {
                return Err(RuntimeError::Invalid(format!("invalid secret name {pointer:?}")));
            }
            let value = String::from_utf8(value.clone())
                .map_err(|_| RuntimeError::Invalid(format!("secret {pointer} is not UTF-8")))?;
            new_secrets.insert(pointer.clone(), value);
        }
        // Secrets first, so references in the batch resolve when OpenClaw
        // validates them.
        let previous = std::mem::replace(&mut record.secrets, new_secrets);
        self.write_secrets(&record)?;
        let applied = async {
            if !batch.is_empty() {
                self.config_set(&record, &Value::Array(batch)).await?;
            }
            for path in unset_paths {
                let output = self.openclaw(&record, &["config", "unset", path]).await?;
                if !output.success
                    && !output.error_message().contains("not found")
                    && !output.error_message().contains("Unknown")
                {
                    return Err(RuntimeError::OpenClaw(format!(
                        "openclaw config unset {path}: {}",
                        output.error_message()
                    )));
                }
            }
            Ok(())
        }
        .await;
        if let Err(err) = applied {
            record.secrets = previous;
            self.write_secrets(&record)?;
            return Err(err);
        }
        for (agent_id, name, content) in files {
            let dir = self.workspace_dir(&record, agent_id);
            let path = dir.join(name);
            create_private_dir(&dir)?;
            write_private(&path, content.as_bytes())?;
            match self.config.kind {
                RuntimeKind::Fleet => {
                    let cell = self.cell_dir(&record.slug);
                    chown_like(&dir, &cell)?;
                    chown_like(&path, &cell)?;
                }
                RuntimeKind::Process => chown(&path, &record)?,
            }
        }
        record.applied_generation = generation;
        if self.config.kind == RuntimeKind::Process {
            record.config_hash = crate::sync::config::current_hash(&self.env(&record).state_dir);
        }
        self.save_record(&record)?;
        if restart {
            match self.config.kind {
                RuntimeKind::Fleet => {
                    self.fleet_ok(&record, &["fleet", "restart", &record.slug]).await?;
                    self.wait_ready(&record).await?;
                }
                RuntimeKind::Process => self.restart_locked(&record).await?,
            }
        }
        Ok(generation)
    }

    /// Starts the supervisor of a tenant's gateway if none runs.
    fn ensure_gateway(self: &Arc<Self>, record: &TenantRecord) {
        let mut supervisors = self.supervisors.lock().unwrap();
        if supervisors.get(&record.tenant_id).is_some_and(|s| !s.task.is_finished()) {
            return;
        }
        let (stop, stop_rx) = watch::channel(false);
        let restart = Arc::new(Notify::new());
        let state = Arc::new(Mutex::new(GatewayState {
            phase: GatewayPhase::Starting,
            restarts: 0,
            last_error: String::new(),
            pid: None,
            since: SystemTime::now(),
        }));
        let task = tokio::spawn(supervise(self.clone(), record.clone(), stop_rx, restart.clone(), state.clone()));
        supervisors.insert(record.tenant_id.clone(), Supervisor { stop, restart, state, task });
    }

    /// Waits until the gateway answers `/readyz` with 200.
    async fn wait_ready(&self, record: &TenantRecord) -> RuntimeResult<()> {
        let started = Instant::now();
        loop {
            if http_status(record.port, "/readyz").await == Some(200) {
                if let Some(supervisor) = self.supervisors.lock().unwrap().get(&record.tenant_id) {
                    let mut state = supervisor.state.lock().unwrap();
                    if state.phase == GatewayPhase::Starting {
                        state.phase = GatewayPhase::Running;
                        state.since = SystemTime::now();
                    }
                }
                return Ok(());
            }
            if started.elapsed() > self.config.ready_timeout {
                let detail = self.gateway_state(&record.tenant_id).map(|s| s.last_error).unwrap_or_default();
                return Err(RuntimeError::OpenClaw(format!(
                    "gateway of {} was not ready within {:?}{}",
                    record.slug,
                    self.config.ready_timeout,
                    if detail.is_empty() { String::new() } else { format!(": {detail}") }
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Restarts the gateway and waits until it is ready again.
    pub async fn restart(self: &Arc<Self>, tenant_id: &str) -> RuntimeResult<()> {
        let lock = self.lock(tenant_id);
        let _guard = lock.lock().await;
        let record = self
            .record(tenant_id)
            .ok_or_else(|| RuntimeError::Invalid(format!("tenant {tenant_id} is not on this host")))?;
        if self.config.kind == RuntimeKind::Fleet {
            self.fleet_ok(&record, &["fleet", "restart", &record.slug]).await?;
            return self.wait_ready(&record).await;
        }
        self.restart_locked(&record).await
    }

    async fn restart_locked(self: &Arc<Self>, record: &TenantRecord) -> RuntimeResult<()> {
        let restart = self.supervisors.lock().unwrap().get(&record.tenant_id).map(|s| s.restart.clone());
        match restart {
            Some(restart) => restart.notify_one(),
            None => self.ensure_gateway(record),
        }
        // Give the old process time to go before polling readiness.
        let old_pid = self.gateway_state(&record.tenant_id).and_then(|s| s.pid);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            let state = self.gateway_state(&record.tenant_id);
            if state.as_ref().and_then(|s| s.pid) != old_pid || state.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_ready(record).await
    }

    /// Stops a gateway (SIGTERM to its process group, SIGKILL after 10 s).
    async fn stop_gateway(&self, tenant_id: &str) {
        let supervisor = self.supervisors.lock().unwrap().remove(tenant_id);
        if let Some(supervisor) = supervisor {
            let _ = supervisor.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(15), supervisor.task).await;
        }
    }

    /// Stops the gateway, archives the tenant's tree, removes it and its user.
    pub async fn delete(self: &Arc<Self>, tenant_id: &str, archive: bool) -> RuntimeResult<Option<(PathBuf, u64)>> {
        check_tenant_id(tenant_id)?;
        let lock = self.lock(tenant_id);
        let _guard = lock.lock().await;
        let Some(record) = self.record(tenant_id) else { return Ok(None) };
        if self.config.kind == RuntimeKind::Fleet {
            let archived = self.delete_cell(&record, archive).await?;
            let _ = std::fs::remove_file(self.record_path(tenant_id));
            self.prune_archives();
            return Ok(archived);
        }
        self.stop_gateway(tenant_id).await;
        // Helpers OpenClaw detached from the gateway's group (workers, CLI
        // calls) go too: nothing of the tenant may outlive it.
        if let Some(uid) = record.uid {
            kill_user_processes(uid);
        }
        let root = self.tenant_root(&record.slug);
        let mut archived = None;
        if archive && root.exists() {
            let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
            let path = self.config.archive_dir.join(format!(
                "{}-{}-{stamp}.tar.gz",
                record.slug,
                &record.tenant_id[..8.min(record.tenant_id.len())]
            ));
            let status = tokio::process::Command::new("tar")
                .arg("-C")
                .arg(&self.config.tenants_dir)
                .arg("-czf")
                .arg(&path)
                .arg("--")
                .arg(&record.slug)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .context("cannot run tar")?;
            if !status.status.success() {
                return Err(RuntimeError::Other(anyhow!(
                    "archiving {} failed: {}",
                    root.display(),
                    String::from_utf8_lossy(&status.stderr)
                )));
            }
            set_mode(&path, 0o600)?;
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            archived = Some((path, size));
        }
        if root.exists() {
            std::fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))?;
        }
        if let Some(user) = &record.user {
            remove_user(user, record.uid).await;
        }
        let _ = std::fs::remove_file(self.record_path(tenant_id));
        self.prune_archives();
        Ok(archived)
    }

    /// After the agent restarts: stop gateways left over from the previous
    /// run and start fresh supervised ones for every recorded tenant.
    pub async fn adopt_all(self: &Arc<Self>) {
        if self.config.kind == RuntimeKind::Fleet {
            return; // the container engine keeps cells running
        }
        for record in self.records() {
            if let Some(pid) = read_pid(&self.tenant_root(&record.slug)) {
                kill_group(pid, libc::SIGTERM);
                tokio::time::sleep(Duration::from_millis(500)).await;
                kill_group(pid, libc::SIGKILL);
            }
            // CLI calls the previous run left behind would race the new ones;
            // everything the tenant's own user runs belongs to us.
            if let Some(uid) = record.uid {
                kill_user_processes(uid);
            }
            // An unfinished provisioning is completed by its redelivered
            // command; its gateway must not start before its config exists.
            if record.provisioned {
                let record = self.upgrade_defaults(record).await;
                tracing::info!(tenant = %record.tenant_id, slug = %record.slug, "restarting gateway left by a previous agent run");
                self.ensure_gateway(&record);
            }
        }
    }

    /// `openclaw --version`, run as the agent in a scratch directory.
    /// Brings a tenant provisioned by an older agent up to the current
    /// gateway defaults (one `config set`); on failure it keeps running as
    /// it was and the next start tries again.
    async fn upgrade_defaults(&self, mut record: TenantRecord) -> TenantRecord {
        if record.defaults_version >= GATEWAY_DEFAULTS_VERSION {
            return record;
        }
        match self.config_set(&record, &Value::Array(gateway_defaults(&record.public_origin))).await {
            Ok(()) => {
                record.defaults_version = GATEWAY_DEFAULTS_VERSION;
                record.config_hash = crate::sync::config::current_hash(&self.env(&record).state_dir);
                if let Err(err) = self.save_record(&record) {
                    tracing::warn!(tenant = %record.tenant_id, error = %err, "cannot save the tenant record");
                }
                tracing::info!(tenant = %record.tenant_id, version = GATEWAY_DEFAULTS_VERSION, "gateway defaults applied");
            }
            Err(err) => {
                tracing::warn!(tenant = %record.tenant_id, error = %err, "cannot apply the current gateway defaults")
            }
        }
        record
    }

    pub async fn openclaw_version(&self) -> String {
        let scratch = self.config.state_dir.join("openclaw-probe");
        if create_private_dir(&scratch).is_err() {
            return String::new();
        }
        let env = TenantEnv {
            user: None,
            home: scratch.clone(),
            state_dir: scratch.clone(),
            tmp_dir: scratch,
            gateway_port: 0,
            inherit_env: false,
        };
        match self.config.openclaw.run(&env, &["--version"], Duration::from_secs(30)).await {
            // e.g. "OpenClaw 2026.9.6 (eb377ac)": the first token that is a version.
            Ok(output) if output.success => output
                .stdout
                .split_whitespace()
                .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        }
    }

    /// Deletes archives of deleted tenants older than their retention.
    pub fn prune_archives(&self) {
        let retention = self.config.archive_retention;
        let Ok(entries) = std::fs::read_dir(&self.config.archive_dir) else { return };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > retention);
            if old && entry.path().extension().is_some_and(|x| x == "gz") {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => tracing::info!(archive = %entry.path().display(), "archive past its retention removed"),
                    Err(err) => {
                        tracing::warn!(archive = %entry.path().display(), error = %err, "cannot remove an old archive")
                    }
                }
            }
        }
    }

    /// The last `tail` lines of the tenant's gateway log and the offset
    /// after them, for following.
    pub fn kind(&self) -> RuntimeKind {
        self.config.kind
    }

    /// The last `tail` lines of a fleet cell's log (`openclaw fleet logs`,
    /// which redacts the cell's token).
    pub async fn cell_log_tail(&self, tenant_id: &str, tail: usize) -> RuntimeResult<Vec<String>> {
        let record = self
            .record(tenant_id)
            .ok_or_else(|| RuntimeError::Invalid(format!("tenant {tenant_id} is not on this host")))?;
        let tail = tail.to_string();
        let output = self.fleet_ok(&record, &["fleet", "logs", &record.slug, "--tail", &tail]).await?;
        Ok(output.stdout.lines().map(String::from).collect())
    }

    /// Follows a fleet cell's log: `openclaw fleet logs --follow`, killed
    /// when the handle is dropped.
    pub fn cell_log_follow(&self, tenant_id: &str, tail: usize) -> RuntimeResult<StreamingChild> {
        let record = self
            .record(tenant_id)
            .ok_or_else(|| RuntimeError::Invalid(format!("tenant {tenant_id} is not on this host")))?;
        let env = self.fleet_env(record.port)?;
        let tail = tail.to_string();
        Ok(self.config.openclaw.spawn_streaming(&env, &["fleet", "logs", &record.slug, "--tail", &tail, "--follow"])?)
    }

    pub fn log_tail(&self, tenant_id: &str, tail: usize) -> RuntimeResult<(Vec<String>, u64, PathBuf)> {
        let record = self
            .record(tenant_id)
            .ok_or_else(|| RuntimeError::Invalid(format!("tenant {tenant_id} is not on this host")))?;
        let path = self.tenant_root(&record.slug).join("logs").join("gateway.log");
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(_) => return Ok((Vec::new(), 0, path)),
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        // Read at most the last 4 MiB for the tail.
        let start = len.saturating_sub(4 * 1024 * 1024);
        file.seek(SeekFrom::Start(start)).context("seek log")?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).context("read log")?;
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<String> = text.lines().map(String::from).collect();
        let keep = lines[lines.len().saturating_sub(tail)..].to_vec();
        Ok((keep, len, path))
    }
}

/// Runs a tenant's gateway, restarting it with backoff when it dies, until
/// told to stop.
async fn supervise(
    runtime: Arc<ProcessRuntime>,
    record: TenantRecord,
    mut stop: watch::Receiver<bool>,
    restart: Arc<Notify>,
    state: Arc<Mutex<GatewayState>>,
) {
    let mut failures: u32 = 0;
    let root = runtime.tenant_root(&record.slug);
    let port = record.port.to_string();
    loop {
        if *stop.borrow() {
            break;
        }
        let mut command = runtime.config.openclaw.command(
            &runtime.env(&record),
            &["gateway", "run", "--bind", "loopback", "--port", &port, "--auth", "token"],
        );
        let stderr_path = root.join("logs").join("gateway.stderr.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&stderr_path).ok();
        if let Some(file) = &stderr {
            let _ = chown(&stderr_path, &record);
            command.stderr(
                file.try_clone().map(std::process::Stdio::from).unwrap_or_else(|_| std::process::Stdio::null()),
            );
        }
        command.stdout(std::process::Stdio::null());
        let started = Instant::now();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(err) => {
                {
                    let mut s = state.lock().unwrap();
                    s.phase = GatewayPhase::Failed;
                    s.last_error = format!("cannot start the gateway: {err}");
                }
                failures += 1;
                if wait_or_stop(&mut stop, backoff(failures)).await {
                    break;
                }
                continue;
            }
        };
        let pid = child.id();
        if let Some(pid) = pid {
            let _ = std::fs::write(root.join("gateway.pid"), pid.to_string());
        }
        {
            let mut s = state.lock().unwrap();
            s.phase = GatewayPhase::Starting;
            s.pid = pid;
            s.since = SystemTime::now();
        }
        let mut requested = false;
        let exit = tokio::select! {
            exit = child.wait() => exit.ok(),
            _ = stop.changed() => { requested = true; None }
            _ = restart.notified() => { requested = true; None }
        };
        if requested {
            if let Some(pid) = pid {
                kill_group(pid, libc::SIGTERM);
                if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                    kill_group(pid, libc::SIGKILL);
                    let _ = child.wait().await;
                }
            }
            let _ = std::fs::remove_file(root.join("gateway.pid"));
            if *stop.borrow() {
                break;
            }
            state.lock().unwrap().restarts += 1;
            continue;
        }
        // The gateway died on its own.
        let _ = std::fs::remove_file(root.join("gateway.pid"));
        if let Some(pid) = pid {
            kill_group(pid, libc::SIGKILL);
        }
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
        failures += 1;
        let tail = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let last: Vec<&str> = tail.lines().rev().take(3).collect();
        {
            let mut s = state.lock().unwrap();
            s.phase = GatewayPhase::Backoff;
            s.restarts += 1;
            s.pid = None;
            s.last_error = format!(
                "gateway exited with {:?}: {}",
                exit.and_then(|e| e.code()),
                last.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        tracing::warn!(tenant = %record.tenant_id, failures, "gateway died; restarting with backoff");
        if wait_or_stop(&mut stop, backoff(failures)).await {
            break;
        }
    }
    let mut s = state.lock().unwrap();
    s.phase = GatewayPhase::Stopped;
    s.pid = None;
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5).saturating_sub(1)).min(Duration::from_secs(30))
}

/// Sleeps `delay`; true if asked to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// SIGKILLs every process of a tenant's OS user (never uid 0).
fn kill_user_processes(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    if uid == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if entry.metadata().is_ok_and(|m| m.uid() == uid) {
            // SAFETY: plain syscall on a pid owned by the tenant's user.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn read_pid(root: &Path) -> Option<u32> {
    std::fs::read_to_string(root.join("gateway.pid")).ok()?.trim().parse().ok()
}

fn check_tenant_id(id: &str) -> RuntimeResult<()> {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!("invalid tenant id {id:?}")))
    }
}

/// OS user name of a tenant: short, fixed shape, derived from the id.
pub fn tenant_user_name(tenant_id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(tenant_id.as_bytes());
    format!("clawt{}", &hex::encode(digest)[..12])
}

fn hex_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn chown(path: &Path, record: &TenantRecord) -> anyhow::Result<()> {
    if let (Some(uid), Some(gid)) = (record.uid, record.gid) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// `https://host[:port]` (or http) with a plain DNS host name.
fn valid_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) else { return false };
    let (host, port) = rest.split_once(':').unwrap_or((rest, "443"));
    !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && port.parse::<u16>().is_ok()
}

/// Gives `path` the owner of `like` (a cell's files belong to the
/// container's user, whatever uid that is).
fn chown_like(path: &Path, like: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(like).with_context(|| format!("stat {}", like.display()))?;
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
        .with_context(|| format!("chown {}", path.display()))
}

fn set_pointer(document: &mut Value, pointer: &str, value: Value) {
    let mut node = document;
    let segments: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        if i + 1 == segments.len() {
            if let Value::Object(map) = node {
                map.insert(segment.to_string(), value);
            }
            return;
        }
        if !node.get(*segment).is_some_and(Value::is_object) {
            if let Value::Object(map) = node {
                map.insert(segment.to_string(), json!({}));
            }
        }
        node = node.get_mut(*segment).expect("just inserted");
    }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we
    // copy the two ids out immediately.
    let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    unsafe { Some(((*entry).pw_uid, (*entry).pw_gid)) }
}

/// Creates the tenant's system user (no login shell, no password) if absent.
async fn ensure_user(name: &str, home: &Path) -> RuntimeResult<(u32, u32)> {
    if let Some(ids) = lookup_user(name) {
        return Ok(ids);
    }
    let output = tokio::process::Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", "--home-dir"])
        .arg(home)
        .arg(name)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .await
        .context("cannot run useradd (the agent needs root to create tenant users)")?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        if !text.contains("already exists") {
            return Err(RuntimeError::Other(anyhow!("useradd {name}: {}", text.trim())));
        }
    }
    lookup_user(name).ok_or_else(|| RuntimeError::Other(anyhow!("user {name} missing after useradd")))
}

/// How long a tenant's user may stay busy (its killed processes not yet
/// gone) before its removal is given up.
const USER_BUSY_WAIT: Duration = Duration::from_secs(15);

/// Removes a deleted tenant's OS user. userdel refuses a user that still
/// has processes (exit 8): killed ones can take a moment to go, and a
/// helper may have started since, so those are killed again and userdel
/// tried again, for a while. A user that cannot be removed is logged.
async fn remove_user(name: &str, uid: Option<u32>) {
    const IN_USE: i32 = 8;
    const NO_SUCH_USER: i32 = 6;
    let deadline = Instant::now() + USER_BUSY_WAIT;
    loop {
        let output = tokio::process::Command::new("userdel")
            .arg(name)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match output {
            Ok(out) if out.status.success() || out.status.code() == Some(NO_SUCH_USER) => return,
            Ok(out) if out.status.code() == Some(IN_USE) && Instant::now() < deadline => {
                if let Some(uid) = uid {
                    kill_user_processes(uid);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(out) => {
                let error = String::from_utf8_lossy(&out.stderr);
                tracing::warn!(user = name, code = ?out.status.code(), error = %error.trim(), "cannot remove a deleted tenant's user");
                return;
            }
            Err(err) => {
                tracing::warn!(user = name, error = %err, "cannot run userdel for a deleted tenant");
                return;
            }
        }
    }
}

/// Status code of `GET path` on the loopback port, if it answers at all.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let mut stream = tokio::time::timeout(Duration::from_secs(2), connect).await.ok()?.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head)).await.ok()?.ok()?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_build_nested_secrets() {
        let mut doc = json!({"gateway": {"token": "t"}});
        set_pointer(&mut doc, "/models/local/apiKey", json!("k"));
        set_pointer(&mut doc, "/channels/telegram/botToken", json!("b"));
        assert_eq!(
            doc,
            json!({"gateway": {"token": "t"}, "models": {"local": {"apiKey": "k"}}, "channels": {"telegram": {"botToken": "b"}}})
        );
    }

    #[test]
    fn user_names_are_short_and_stable() {
        let name = tenant_user_name("01a20c6b-19d8-76c4-937e-6d06bfdd3192");
        assert_eq!(name.len(), 17);
        assert_eq!(name, tenant_user_name("01a20c6b-19d8-76c4-937e-6d06bfdd3192"));
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert!(backoff(50) <= Duration::from_secs(30));
    }

    /// A runtime in a temp dir driving the stand-in `openclaw` in `mode`.
    struct Fake {
        dir: tempfile::TempDir,
        runtime: Arc<ProcessRuntime>,
    }

    impl Fake {
        fn new(mode: &str) -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("openclaw");
            std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fake-openclaw"), &bin).unwrap();
            std::fs::write(dir.path().join("fake-mode"), mode).unwrap();
            let runtime = ProcessRuntime::new(RuntimeConfig {
                kind: RuntimeKind::Process,
                openclaw: OpenClawCli::new(&bin),
                state_dir: dir.path().join("agent"),
                tenants_dir: dir.path().join("tenants"),
                tenant_users: false,
                base_port: 40000 + (rand::random::<u16>() % 20000),
                port_stride: 150,
                cli_timeout: Duration::from_secs(2),
                ready_timeout: Duration::from_secs(20),
                archive_dir: dir.path().join("archives"),
                archive_retention: Duration::from_secs(3600),
            })
            .unwrap();
            Fake { dir, runtime }
        }

        fn mode(&self, mode: &str) {
            std::fs::write(self.dir.path().join("fake-mode"), mode).unwrap();
        }

        /// Every argument vector the fake received, for a tenant slug.
        fn calls(&self, slug: &str) -> Vec<Vec<String>> {
            let path = self.dir.path().join("tenants").join(slug).join("fake-calls.jsonl");
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    const TENANT: &str = "01a20c6b-19d8-76c4-937e-6d06bfdd3192";

    #[tokio::test]
    async fn older_tenants_get_the_current_gateway_defaults_on_restart() {
        let fake = Fake::new("ok");
        fake.runtime.provision_for(TENANT, "alice", &[], "https://alice.claw.test").await.unwrap();
        let path = fake.dir.path().join("agent/tenants").join(format!("{TENANT}.json"));
        let read = || serde_json::from_str::<TenantRecord>(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut record = read();
        assert_eq!(record.defaults_version, GATEWAY_DEFAULTS_VERSION);
        // As an older agent left it.
        record.defaults_version = 0;
        std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
        let config_sets =
            |fake: &Fake| fake.calls("alice").into_iter().filter(|c| c[..2] == ["config", "set"]).collect::<Vec<_>>();
        let before = config_sets(&fake).len();
        fake.runtime.adopt_all().await;
        let after = config_sets(&fake);
        assert_eq!(after.len(), before + 1, "one config set brings the tenant up to date");
        let batch = after.last().unwrap().last().unwrap().clone();
        assert!(batch.contains("gateway.trustedProxies") && batch.contains("https://alice.claw.test"), "{batch}");
        assert_eq!(read().defaults_version, GATEWAY_DEFAULTS_VERSION);
        fake.runtime.adopt_all().await;
        assert_eq!(config_sets(&fake).len(), before + 1, "an up-to-date tenant is left alone");
        fake.runtime.delete(TENANT, false).await.unwrap();
    }

    #[tokio::test]
    async fn provisioning_and_applying_are_idempotent() {
        let fake = Fake::new("ok");
        let first = fake.runtime.provision(TENANT, "alice", &[]).await.unwrap();
        let second = fake.runtime.provision(TENANT, "alice", &[]).await.unwrap();
        assert_eq!(first.port, second.port);
        let agents_added = fake.calls("alice").iter().filter(|c| c[..2] == ["agents", "add"]).count();
        assert_eq!(agents_added, 1, "a second provision does not re-run the steps");
        // A team tenant: several agents in its one gateway.
        const TEAM: &str = "01a20c6b-19d8-76c4-937e-6d06bfdd3193";
        let team = fake.runtime.provision(TEAM, "crew", &["crew".into(), "planner".into()]).await.unwrap();
        assert_eq!(team.agent_ids, vec!["crew", "planner"]);
        let added: Vec<String> =
            fake.calls("crew").into_iter().filter(|c| c[..2] == ["agents", "add"]).map(|c| c[2].clone()).collect();
        assert_eq!(added, vec!["crew", "planner"]);
        assert_ne!(team.port, first.port, "its own gateway");
        fake.runtime.delete(TEAM, false).await.unwrap();

        let ops = vec![("agents.defaults.model.primary".to_string(), "\"local/m\"".to_string())];
        let change = || ConfigChange { ops: &ops, unset_paths: &[], secrets: &[], files: &[] };
        assert_eq!(fake.runtime.apply_config(TENANT, 3, change(), false).await.unwrap(), 3);
        assert_eq!(fake.runtime.apply_config(TENANT, 3, change(), false).await.unwrap(), 3);
        assert_eq!(
            fake.runtime.apply_config(TENANT, 2, change(), false).await.unwrap(),
            3,
            "older generations are no-ops"
        );
        let config_sets: Vec<_> = fake.calls("alice").into_iter().filter(|c| c[..2] == ["config", "set"]).collect();
        assert_eq!(config_sets.len(), 2, "one initial batch and one for generation 3: {config_sets:?}");
        assert_eq!(config_sets[1][2], "--batch-json", "ten keys or one, it is one process");
        fake.runtime.delete(TENANT, true).await.unwrap();
    }

    #[tokio::test]
    async fn hostile_values_reach_openclaw_as_inert_data() {
        let fake = Fake::new("ok");
        fake.runtime.provision(TENANT, "alice", &[]).await.unwrap();
        let nasty = "$(touch /tmp/pwned); `id` && rm -rf / ; \"quote\" \n newline ../../etc/passwd";
        let ops = vec![("agents.entries.alice.identity.name".to_string(), serde_json::to_string(nasty).unwrap())];
        let secret = format!("sk-distinct-{nasty}");
        let secrets = vec![("/models/local/apiKey".to_string(), secret.as_bytes().to_vec())];
        let change = ConfigChange { ops: &ops, unset_paths: &[], secrets: &secrets, files: &[] };
        fake.runtime.apply_config(TENANT, 1, change, false).await.unwrap();
        let last = fake.calls("alice").into_iter().filter(|c| c[..2] == ["config", "set"]).last().unwrap();
        assert_eq!(last.len(), 4, "the batch is one argument: {last:?}");
        let batch: Value = serde_json::from_str(&last[3]).unwrap();
        assert_eq!(batch[0]["value"], json!(nasty));
        assert!(!last.iter().any(|arg| arg.contains("sk-distinct")), "secrets never travel on the command line");
        assert!(!Path::new("/tmp/pwned").exists());
        let stored = std::fs::read_to_string(fake.dir.path().join("tenants/alice/secrets.json")).unwrap();
        assert!(stored.contains("sk-distinct-$(touch /tmp/pwned)"), "the secret is stored verbatim in the 0600 file");
        fake.runtime.delete(TENANT, false).await.unwrap();
    }

    #[tokio::test]
    async fn bad_identifiers_are_refused_before_any_process_runs() {
        let fake = Fake::new("ok");
        for slug in ["../etc", "a b", "a;rm", "$(id)", "a\0b", "Alice"] {
            let err = fake.runtime.provision(TENANT, slug, &[]).await.err().expect("refused");
            assert!(matches!(err, RuntimeError::Invalid(_)), "{slug:?}: {err}");
        }
        for id in ["../../x", "a;b", ""] {
            assert!(matches!(fake.runtime.provision(id, "alice", &[]).await, Err(RuntimeError::Invalid(_))), "{id:?}");
        }
        assert!(fake.calls("alice").is_empty(), "nothing reached openclaw");
        fake.runtime.provision(TENANT, "alice", &[]).await.unwrap();
        let cases: Vec<(Vec<(String, String)>, Vec<(String, Vec<u8>)>, Vec<(String, String, String)>)> = vec![
            (vec![("a;rm -rf /".into(), "1".into())], vec![], vec![]),
            (vec![("a..b".into(), "1".into())], vec![], vec![]),
            (vec![("ok.path".into(), "not json".into())], vec![], vec![]),
            (vec![], vec![("/../../etc/passwd".into(), b"x".to_vec())], vec![]),
            (vec![], vec![], vec![("alice".into(), "../../evil.sh".into(), "x".into())]),
            (vec![], vec![], vec![("someone-else".into(), "SOUL.md".into(), "x".into())]),
        ];
        let before = fake.calls("alice").len();
        for (generation, (ops, secrets, files)) in cases.iter().enumerate() {
            let change = ConfigChange { ops, unset_paths: &[], secrets, files };
            let err = fake.runtime.apply_config(TENANT, generation as i64 + 1, change, false).await.unwrap_err();
            assert!(matches!(err, RuntimeError::Invalid(_)), "{ops:?} {secrets:?} {files:?}: {err}");
        }
        assert_eq!(fake.calls("alice").len(), before, "no refused change reached openclaw");
        fake.runtime.delete(TENANT, false).await.unwrap();
    }

    #[tokio::test]
    async fn cli_failures_come_back_named() {
        let fake = Fake::new("ok");
        fake.runtime.provision(TENANT, "alice", &[]).await.unwrap();
        let ops = vec![("channels.telegram.dmPolicy".to_string(), "\"bogus\"".to_string())];
        let change = || ConfigChange { ops: &ops, unset_paths: &[], secrets: &[], files: &[] };

        fake.mode("reject-config");
        match fake.runtime.apply_config(TENANT, 1, change(), false).await {
            Err(RuntimeError::OpenClaw(message)) => assert!(message.contains("dmPolicy: invalid config"), "{message}"),
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }
        assert_eq!(fake.runtime.record(TENANT).unwrap().applied_generation, 0, "a rejected generation is not applied");

        fake.mode("garbage");
        match fake.runtime.apply_config(TENANT, 1, change(), false).await {
            Err(RuntimeError::OpenClaw(message)) => assert!(message.contains("boom"), "{message}"),
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }

        fake.mode("hang");
        let started = Instant::now();
        match fake.runtime.apply_config(TENANT, 1, change(), false).await {
            Err(RuntimeError::OpenClaw(message)) => assert!(message.contains("did not finish within"), "{message}"),
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }
        assert!(started.elapsed() < Duration::from_secs(15));
        // The whole process group went, the child it spawned included.
        let child: i32 =
            std::fs::read_to_string(fake.dir.path().join("tenants/alice/fake-child.pid")).unwrap().parse().unwrap();
        let mut gone = false;
        for _ in 0..50 {
            // SAFETY: signal 0 only checks whether the pid exists.
            if unsafe { libc::kill(child, 0) } != 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "the hung command's child survived");
        fake.mode("ok");
        fake.runtime.delete(TENANT, false).await.unwrap();
    }

    #[tokio::test]
    async fn archives_past_their_retention_are_pruned() {
        let fake = Fake::new("ok");
        fake.runtime.provision(TENANT, "alice", &[]).await.unwrap();
        let (archive, bytes) = fake.runtime.delete(TENANT, true).await.unwrap().expect("archived");
        assert!(archive.exists() && bytes > 0);
        fake.runtime.prune_archives();
        assert!(archive.exists(), "a fresh archive is kept (retention 1 h)");
        let keep_nothing =
            ProcessRuntime::new(RuntimeConfig { archive_retention: Duration::ZERO, ..fake.runtime.config.clone() })
                .unwrap();
        keep_nothing.prune_archives();
        assert!(!archive.exists(), "an archive past its retention is removed");
    }

    #[test]
    fn json_errors_are_preferred_over_stderr() {
        let output = CliOutput {
            success: false,
            exit_code: Some(1),
            stdout: r#"{"ok":false,"error":{"type":"cli_error","message":"Agent \"x\" already exists."}}"#.into(),
            stderr: "noise".into(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(output.error_message(), "Agent \"x\" already exists.");
    }
}
