//! How tenants run on this host, behind one trait with two
//! implementations: [`process`] (an OS user and a supervised gateway per
//! tenant) and [`cells`] (OpenClaw's own fleet cells). Which one is chosen
//! once, where the agent starts; the rest of it holds an `Arc<dyn Runtime>`.
//!
//! Both share the tenant records ([`records`]), the config apply rules
//! ([`config_apply`]), archives, log tails and gateway readiness; only the
//! process runtime has OS users ([`users`]) and a [`supervisor`].
pub mod archives;
pub mod cells;
pub mod config_apply;
pub mod error;
pub mod hibernation;
pub mod limits;
pub mod logs;
pub mod process;
pub mod readiness;
pub mod records;
pub mod supervisor;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use clawplane_tls::files::create_private_dir;

use crate::config::RuntimeKind;
use crate::openclaw::cli::{CliOutput, OpenClawCli, TenantEnv};
pub use error::{RuntimeError, RuntimeResult};
pub use logs::LogFollower;
pub use records::{RecordStore, Resources, TenantRecord};
pub use supervisor::GatewayPhase;

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

/// Result of provisioning.
pub struct Provisioned {
    pub port: u16,
    pub agent_ids: Vec<String>,
}

/// How a tenant's gateway is doing, for the hello and heartbeats.
#[derive(Debug, Clone)]
pub struct GatewayReport {
    pub phase: GatewayPhase,
    pub restarts: u32,
    pub last_error: String,
    /// Since when it is in `phase`, if anyone watches it.
    pub since: Option<SystemTime>,
    pub usage: GatewayUsage,
}

/// What a tenant's gateway takes, for the hello and heartbeats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayUsage {
    /// Its cgroup's usage, or the RSS of its process group; 0 when it does
    /// not run.
    pub memory_used_bytes: u64,
    pub cpu_used_micros: u64,
    /// The memory limit the host enforces; 0 if none.
    pub memory_limit_bytes: u64,
    /// Kills at the memory limit and restarts above the soft limit.
    pub memory_kills: u32,
}

/// A tenant whose OpenClaw state lies in this host's file system.
#[derive(Debug, Clone)]
pub struct LocalState {
    pub tenant_id: String,
    /// The tenant's OPENCLAW_STATE_DIR.
    pub state_dir: PathBuf,
    /// The tenant's OS user (uid, gid): the agent reads its files as that
    /// user, so a link the tenant planted cannot lead it into another's.
    pub owner: Option<(u32, u32)>,
}

/// Held while a tenant's state is read: no command runs on it meanwhile.
pub struct ReadHold {
    /// The content hash of the agent's own last write of openclaw.json.
    pub own_config_hash: String,
    pub guard: tokio::sync::OwnedMutexGuard<()>,
}

/// Everything the agent asks of the way tenants run. Every operation is
/// idempotent: a redelivered command runs again safely.
#[async_trait]
pub trait Runtime: Send + Sync {
    fn kind(&self) -> RuntimeKind;

    /// The records of this host's tenants.
    fn records(&self) -> &RecordStore;

    /// Creates the tenant (or finishes an interrupted provisioning) and
    /// starts its gateway; for a tenant that exists, only makes sure its
    /// gateway runs under the given resources. `public_origin`
    /// (`https://<slug>.<domain>`) may open the gateway's Control UI.
    async fn provision(
        &self,
        tenant_id: &str,
        slug: &str,
        agent_ids: &[String],
        public_origin: &str,
        resources: &Resources,
    ) -> RuntimeResult<Provisioned>;

    /// Applies a config generation; one at or below the applied one is a
    /// no-op. Returns the applied generation.
    async fn apply_config(
        &self,
        tenant_id: &str,
        generation: i64,
        change: ConfigChange<'_>,
        restart: bool,
    ) -> RuntimeResult<i64>;

    /// Restarts the gateway and waits until it is ready again.
    async fn restart(&self, tenant_id: &str) -> RuntimeResult<()>;

    /// Stops and removes the tenant, archiving it first if asked; returns
    /// the archive and its size.
    async fn delete(&self, tenant_id: &str, archive: bool) -> RuntimeResult<Option<(PathBuf, u64)>>;

    /// After the agent starts: takes over the tenants of a previous run.
    async fn adopt_all(&self);

    /// Deletes archives of deleted tenants older than their retention.
    fn prune_archives(&self);

    /// `openclaw --version` of this host, for the inventory.
    async fn openclaw_version(&self) -> String;

    fn gateway(&self, record: &TenantRecord) -> GatewayReport;

    /// How this host enforces tenant limits: the cgroup version ("v2",
    /// "v1"), or "" and the reason it cannot.
    fn limits_support(&self) -> (String, String);

    /// Tenants whose state sync reads.
    fn local_states(&self) -> Vec<LocalState>;

    /// Holds a tenant for a sync read, unless a command holds it (a config
    /// write, or a delete removing the tree, may be under way).
    fn hold_for_read(&self, tenant_id: &str) -> Option<ReadHold>;

    /// The last `tail` lines of the tenant's gateway log.
    async fn log_tail(&self, tenant_id: &str, tail: usize) -> RuntimeResult<Vec<String>>;

    /// The last `tail` lines and then new ones as they come.
    async fn log_follow(&self, tenant_id: &str, tail: usize) -> RuntimeResult<Box<dyn LogFollower>>;

    /// The agent is stopping: its tenants' gateways keep running, for the
    /// next agent run to adopt.
    fn leave_gateways_running(&self);

    /// The traffic record the proxy keeps and hibernation reads; None for
    /// a runtime whose tenants never hibernate.
    fn activity(&self) -> Option<Arc<hibernation::Activity>> {
        None
    }

    /// Stops the gateway of a tenant idle for `idle` (and with no request
    /// in flight) until the next request; false if it was not idle after
    /// all or sleeps already.
    async fn hibernate(&self, _tenant_id: &str, _idle: Duration) -> RuntimeResult<bool> {
        Ok(false)
    }

    /// Starts a hibernated tenant's gateway and waits until it is ready; for
    /// a tenant that is awake, only waits until it is ready.
    async fn wake(&self, _tenant_id: &str) -> RuntimeResult<()> {
        Ok(())
    }
}

/// How a runtime reaches one of its tenants: runs `openclaw <args>` for it
/// (as the tenant's user on its state, or inside its cell's container) and
/// writes its secrets file where that OpenClaw reads it.
#[async_trait]
trait TenantCli: Sync {
    async fn openclaw(&self, record: &TenantRecord, args: &[&str]) -> RuntimeResult<CliOutput>;

    fn write_secrets(&self, record: &TenantRecord) -> anyhow::Result<()>;
}

/// What a provision command may carry, checked before anything runs; the
/// agents to create (the slug's own when none is named).
fn check_provision(
    tenant_id: &str,
    slug: &str,
    agent_ids: &[String],
    public_origin: &str,
) -> RuntimeResult<Vec<String>> {
    use crate::openclaw::{valid_origin, valid_slug};
    if !public_origin.is_empty() && !valid_origin(public_origin) {
        return Err(RuntimeError::Invalid(format!("invalid public origin {public_origin:?}")));
    }
    check_tenant(tenant_id, Some(slug))?;
    let mut agents: Vec<String> = if agent_ids.is_empty() { vec![slug.to_string()] } else { agent_ids.to_vec() };
    agents.dedup();
    if let Some(bad) = agents.iter().find(|a| !valid_slug(a)) {
        return Err(RuntimeError::Invalid(format!("invalid agent id {bad:?}")));
    }
    Ok(agents)
}

/// The agent's own checks of a tenant's id and slug, which reach paths and
/// CLI arguments (defence in depth: the control plane checked them too).
fn check_tenant(tenant_id: &str, slug: Option<&str>) -> RuntimeResult<()> {
    if let Some(slug) = slug.filter(|slug| !crate::openclaw::valid_slug(slug)) {
        return Err(RuntimeError::Invalid(format!("invalid tenant slug {slug:?}")));
    }
    if !crate::openclaw::valid_tenant_id(tenant_id) {
        return Err(RuntimeError::Invalid(format!("invalid tenant id {tenant_id:?}")));
    }
    Ok(())
}

/// A fresh random gateway token, hex.
fn hex_token(bytes: usize) -> String {
    let token: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(token)
}

/// `openclaw --version`, run as the agent in a scratch directory.
async fn openclaw_version(openclaw: &OpenClawCli, state_dir: &Path) -> String {
    let scratch = state_dir.join("openclaw-probe");
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
    match openclaw.run(&env, &["--version"], Duration::from_secs(30)).await {
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
