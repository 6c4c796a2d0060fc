//! The `fleet` runtime: each tenant is one of OpenClaw's own fleet cells
//! (`openclaw fleet`, a Docker or Podman container per tenant, its gateway
//! on a loopback port). The container engine keeps cells running; the
//! agent creates, starts, restarts, backs up and removes them, and writes
//! the tenant's secrets and workspace files into the cell's state.
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use clawplane_tls::files::{create_private_dir, write_private};
use serde_json::{json, Value};

use super::config_apply;
use super::logs::{LogFollower, ProcessFollower};
use super::records::{PortAllocator, RecordStore, Resources, TenantLocks, TenantRecord};
use super::supervisor::GatewayPhase;
use super::users::chown_like;
use super::{
    archives, check_provision, hex_token, readiness, ConfigChange, GatewayReport, LocalState, Provisioned, ReadHold,
    Runtime, RuntimeError, RuntimeResult, TenantCli,
};
use crate::config::{RuntimeKind, TenantSettings};
use crate::openclaw::cli::{CliOutput, OpenClawCli, TenantEnv};

/// `openclaw fleet create`'s limit flags for the tenant's resources (the
/// engine's defaults where a resource is unlimited); memory in bytes.
fn cell_limits(resources: &Resources) -> Vec<String> {
    let mut flags = Vec::new();
    if resources.memory_bytes > 0 {
        flags.extend(["--memory".to_string(), resources.memory_bytes.to_string()]);
    }
    if resources.cpus > 0.0 {
        flags.extend(["--cpus".to_string(), resources.cpus.to_string()]);
    }
    if resources.pids > 0 {
        flags.extend(["--pids-limit".to_string(), resources.pids.to_string()]);
    }
    flags
}

/// Container of a tenant's fleet cell, as `openclaw fleet` names it.
const CELL_CONTAINER_PREFIX: &str = "openclaw-cell-";
/// The engine `openclaw fleet` drives by default (found on PATH).
const CONTAINER_ENGINE: &str = "docker";
/// Where a cell's state is mounted inside its container.
const CELL_HOME: &str = "/home/node/.openclaw";
/// Tenant secrets inside a cell's state, referenced by SecretRefs.
const CELL_SECRETS_FILE: &str = "clawplane-secrets.json";

pub struct CellsRuntime {
    settings: TenantSettings,
    openclaw: OpenClawCli,
    records: RecordStore,
    locks: TenantLocks,
    ports: PortAllocator,
}

impl CellsRuntime {
    pub fn new(settings: TenantSettings) -> anyhow::Result<Arc<Self>> {
        let records = RecordStore::open(&settings.state_dir)?;
        std::fs::create_dir_all(&settings.tenants_dir)?;
        create_private_dir(&settings.archive_dir)?;
        // As the process runtime leaves them: a host can switch runtimes.
        super::users::set_mode(&settings.tenants_dir, 0o711)?;
        if settings.tenants_dir.starts_with(&settings.state_dir) {
            super::users::set_mode(&settings.state_dir, 0o711)?;
        }
        Ok(Arc::new(CellsRuntime {
            openclaw: OpenClawCli::new(&settings.openclaw_bin),
            ports: PortAllocator::new(settings.base_port, settings.port_stride),
            records,
            locks: TenantLocks::default(),
            settings,
        }))
    }

    /// The environment of `openclaw fleet` calls: the agent's own, with one
    /// OpenClaw state for the host's fleet registry.
    fn fleet_env(&self, port: u16) -> anyhow::Result<TenantEnv> {
        let root = self.settings.state_dir.join("fleet");
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
        let output = self.openclaw.run(&env, args, self.settings.cli_timeout).await?;
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

    /// A fleet cell's state on the host (bind-mounted at [`CELL_HOME`]).
    fn cell_dir(&self, slug: &str) -> PathBuf {
        self.settings.state_dir.join("fleet").join("state").join("fleet").join("cells").join(slug)
    }

    async fn wait_ready(&self, record: &TenantRecord) -> RuntimeResult<()> {
        if readiness::wait_ready(record.port, self.settings.ready_timeout).await {
            return Ok(());
        }
        Err(readiness::not_ready(&record.slug, self.settings.ready_timeout, ""))
    }

    async fn restart_cell(&self, record: &TenantRecord) -> RuntimeResult<()> {
        self.fleet_ok(record, &["fleet", "restart", &record.slug]).await?;
        self.wait_ready(record).await
    }

    /// Stop, back up into the archive folder, remove (data purged).
    async fn delete_cell(&self, record: &TenantRecord, archive: bool) -> RuntimeResult<Option<(PathBuf, u64)>> {
        let _ = self.fleet(record, &["fleet", "stop", &record.slug]).await?;
        let mut archived = None;
        if archive {
            let out = format!("{}/", self.settings.archive_dir.display());
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
}

#[async_trait]
impl TenantCli for CellsRuntime {
    /// `openclaw <args>` inside the tenant's container.
    async fn openclaw(&self, record: &TenantRecord, args: &[&str]) -> RuntimeResult<CliOutput> {
        let container = format!("{CELL_CONTAINER_PREFIX}{}", record.slug);
        let output =
            self.openclaw.run_in_container(CONTAINER_ENGINE, &container, args, self.settings.cli_timeout).await?;
        tracing::debug!(tenant = %record.tenant_id, command = %args[..args.len().min(2)].join(" "), elapsed_ms = output.elapsed.as_millis() as u64, ok = output.success, "openclaw call");
        Ok(output)
    }

    /// The secrets file inside the cell's state (the container's bind
    /// mount), owned like the rest of it; fleet keeps the gateway token
    /// itself.
    fn write_secrets(&self, record: &TenantRecord) -> anyhow::Result<()> {
        let cell = self.cell_dir(&record.slug);
        if !cell.is_dir() {
            anyhow::bail!("the cell's state {} is missing; is the cell provisioned?", cell.display());
        }
        let document = config_apply::secrets_document(json!({}), &record.secrets);
        let path = cell.join(CELL_SECRETS_FILE);
        write_private(&path, serde_json::to_vec_pretty(&document)?.as_slice())?;
        chown_like(&path, &cell)
    }
}

#[async_trait]
impl Runtime for CellsRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Fleet
    }

    fn records(&self) -> &RecordStore {
        &self.records
    }

    /// A fleet cell per tenant: `fleet create` (or `start` if it exists),
    /// then readiness on its loopback port.
    async fn provision(
        &self,
        tenant_id: &str,
        slug: &str,
        agent_ids: &[String],
        public_origin: &str,
        resources: &Resources,
    ) -> RuntimeResult<Provisioned> {
        // A cell has OpenClaw's default agent; the checks are the same.
        check_provision(tenant_id, slug, agent_ids, public_origin)?;
        let lock = self.locks.lock(tenant_id);
        let _guard = lock.lock().await;
        let mut record = match self.records.claimed(tenant_id, slug)? {
            Some(record) => record,
            None => self.ports.allocate(&self.records, |port| {
                let mut record = TenantRecord::new(tenant_id, slug, port, hex_token(16));
                record.agent_ids = vec!["main".to_string()];
                self.records.save(&record)?;
                Ok(record)
            })?,
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
            let mut create =
                vec!["fleet", "create", slug, "--json", "--port", &port, "--gateway-token", &record.gateway_token];
            let limits = cell_limits(resources);
            create.extend(limits.iter().map(String::as_str));
            self.fleet_ok(&record, &create).await?;
        } else if !running {
            self.fleet_ok(&record, &["fleet", "start", slug]).await?;
        }
        self.wait_ready(&record).await?;
        record.provisioned = true;
        record.resources = resources.clone();
        self.records.save(&record)?;
        Ok(Provisioned { port: record.port, agent_ids: record.agent_ids })
    }

    async fn apply_config(
        &self,
        tenant_id: &str,
        generation: i64,
        change: ConfigChange<'_>,
        restart: bool,
    ) -> RuntimeResult<i64> {
        let lock = self.locks.lock(tenant_id);
        let _guard = lock.lock().await;
        let mut record = self.records.existing(tenant_id)?;
        if generation <= record.applied_generation {
            return Ok(record.applied_generation);
        }
        let change = config_apply::check(&record, change)?;
        let batch = (!change.batch.is_empty()).then(|| {
            // The secrets file as the container sees it.
            let provider =
                json!({"source": "file", "path": format!("{CELL_HOME}/{CELL_SECRETS_FILE}"), "mode": "json"});
            let mut ops = vec![json!({"path": "secrets.providers.clawplane", "value": provider})];
            ops.extend(change.batch);
            Value::Array(ops)
        });
        config_apply::apply_secrets_and_config(self, &mut record, change.secrets, batch, change.unset_paths).await?;
        let cell = self.cell_dir(&record.slug);
        for (_, name, content) in change.files {
            // A cell has OpenClaw's default agent, with the default workspace.
            let dir = cell.join("workspace");
            let path = dir.join(name);
            create_private_dir(&dir)?;
            write_private(&path, content.as_bytes())?;
            chown_like(&dir, &cell)?;
            chown_like(&path, &cell)?;
        }
        record.applied_generation = generation;
        self.records.save(&record)?;
        if restart {
            self.restart_cell(&record).await?;
        }
        Ok(generation)
    }

    async fn restart(&self, tenant_id: &str) -> RuntimeResult<()> {
        let lock = self.locks.lock(tenant_id);
        let _guard = lock.lock().await;
        let record = self.records.existing(tenant_id)?;
        self.restart_cell(&record).await
    }

    async fn delete(&self, tenant_id: &str, archive: bool) -> RuntimeResult<Option<(PathBuf, u64)>> {
        super::check_tenant(tenant_id, None)?;
        let lock = self.locks.lock(tenant_id);
        let _guard = lock.lock().await;
        let Some(record) = self.records.get(tenant_id) else { return Ok(None) };
        let archived = self.delete_cell(&record, archive).await?;
        self.records.remove(tenant_id);
        self.prune_archives();
        Ok(archived)
    }

    async fn adopt_all(&self) {
        // The container engine keeps cells running.
    }

    fn prune_archives(&self) {
        archives::prune(&self.settings.archive_dir, self.settings.archive_retention);
    }

    async fn openclaw_version(&self) -> String {
        super::openclaw_version(&self.openclaw, &self.settings.state_dir).await
    }

    /// Cells are supervised by the container engine: a provisioned one runs.
    fn gateway(&self, record: &TenantRecord) -> GatewayReport {
        let phase = if record.provisioned { GatewayPhase::Running } else { GatewayPhase::Stopped };
        GatewayReport { phase, restarts: 0, last_error: String::new(), since: None, usage: Default::default() }
    }

    /// The container engine enforces a cell's limits with the host's cgroups.
    fn limits_support(&self) -> (String, String) {
        super::limits::host_support()
    }

    /// Cells keep their state in the container engine's volumes: not synced.
    fn local_states(&self) -> Vec<LocalState> {
        Vec::new()
    }

    fn hold_for_read(&self, _tenant_id: &str) -> Option<ReadHold> {
        None
    }

    /// `openclaw fleet logs`, which redacts the cell's token.
    async fn log_tail(&self, tenant_id: &str, tail: usize) -> RuntimeResult<Vec<String>> {
        let record = self.records.existing(tenant_id)?;
        let tail = tail.to_string();
        let output = self.fleet_ok(&record, &["fleet", "logs", &record.slug, "--tail", &tail]).await?;
        Ok(output.stdout.lines().map(String::from).collect())
    }

    /// `openclaw fleet logs --follow` for as long as the caller listens.
    async fn log_follow(&self, tenant_id: &str, tail: usize) -> RuntimeResult<Box<dyn LogFollower>> {
        let record = self.records.existing(tenant_id)?;
        let env = self.fleet_env(record.port)?;
        let tail = tail.to_string();
        let child =
            self.openclaw.spawn_streaming(&env, &["fleet", "logs", &record.slug, "--tail", &tail, "--follow"])?;
        Ok(Box::new(ProcessFollower::new(child)?))
    }

    fn leave_gateways_running(&self) {
        // Nothing to leave: the container engine runs the cells.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_cells_get_the_fleet_limit_flags() {
        assert!(cell_limits(&Resources::default()).is_empty(), "unlimited: fleet's own defaults");
        let resources = Resources { memory_bytes: 1536 << 20, cpus: 1.5, pids: 128, ..Default::default() };
        assert_eq!(cell_limits(&resources), ["--memory", "1610612736", "--cpus", "1.5", "--pids-limit", "128"]);
    }
}
