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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clawplane_tls::files::{create_private_dir, write_private};
use serde_json::{json, Value};

use super::config_apply::{self, GATEWAY_DEFAULTS_VERSION};
use super::hibernation::Activity;
use super::limits::{process_group_usage, Limits};
use super::logs::{file_tail, FileFollower, LogFollower};
use super::records::{PortAllocator, RecordStore, Resources, TenantLocks, TenantRecord};
use super::supervisor::{GatewayLaunch, GatewayPhase, Supervisors};
use super::users::{chown, ensure_user, kill_user_processes, remove_user, set_mode, tenant_user_name};
use super::{
    archives, check_provision, check_tenant, hex_token, readiness, ConfigChange, GatewayReport, GatewayUsage,
    LocalState, Provisioned, ReadHold, Runtime, RuntimeError, RuntimeResult, TenantCli,
};
use crate::config::{RuntimeKind, TenantSettings};
use crate::openclaw::cli::{kill_group, CliOutput, OpenClawCli, TenantEnv};

pub struct ProcessRuntime {
    settings: TenantSettings,
    openclaw: OpenClawCli,
    records: RecordStore,
    locks: TenantLocks,
    ports: PortAllocator,
    supervisors: Supervisors,
    /// Tenant cgroups (limits and usage).
    limits: Arc<Limits>,
    /// Traffic, for hibernation.
    activity: Arc<Activity>,
}

impl ProcessRuntime {
    pub fn new(settings: TenantSettings) -> anyhow::Result<Arc<Self>> {
        let records = RecordStore::open(&settings.state_dir)?;
        std::fs::create_dir_all(&settings.tenants_dir)?;
        create_private_dir(&settings.archive_dir)?;
        // Tenant users must traverse to their own tree, and nothing more.
        set_mode(&settings.tenants_dir, 0o711)?;
        if settings.tenants_dir.starts_with(&settings.state_dir) {
            set_mode(&settings.state_dir, 0o711)?;
        }
        Ok(Arc::new(ProcessRuntime {
            openclaw: OpenClawCli::new(&settings.openclaw_bin),
            ports: PortAllocator::new(settings.base_port, settings.port_stride),
            records,
            locks: TenantLocks::default(),
            supervisors: Supervisors::default(),
            limits: Arc::new(Limits::detect(&settings.limits)),
            activity: Arc::default(),
            settings,
        }))
    }

    fn tenant_root(&self, slug: &str) -> PathBuf {
        self.settings.tenants_dir.join(slug)
    }

    fn env(&self, record: &TenantRecord) -> TenantEnv {
        let root = self.tenant_root(&record.slug);
        TenantEnv {
            user: record.owner(),
            home: root.join("home"),
            state_dir: root.join("state"),
            tmp_dir: root.join("tmp"),
            gateway_port: record.port,
            inherit_env: false,
        }
    }

    fn config_hash(&self, record: &TenantRecord) -> Option<String> {
        crate::sync::config::current_hash(&self.env(record).state_dir)
    }

    /// The user, tree and record of a tenant new to this host. The record is
    /// saved before the slow CLI calls so that a restart of the agent
    /// mid-provision finds and finishes it.
    async fn new_tenant(&self, tenant_id: &str, slug: &str) -> RuntimeResult<TenantRecord> {
        if self.tenant_root(slug).exists() {
            return Err(RuntimeError::Invalid(format!("slug {slug:?} is already used by another tenant on this host")));
        }
        let (user, owner) = if self.settings.tenant_users {
            let name = tenant_user_name(tenant_id);
            let ids = ensure_user(&name, &self.tenant_root(slug).join("home")).await?;
            (Some(name), Some(ids))
        } else {
            (None, None)
        };
        let record = self.ports.allocate(&self.records, |port| {
            let mut record = TenantRecord::new(tenant_id, slug, port, hex_token(32));
            record.user = user;
            record.uid = owner.map(|(uid, _)| uid);
            record.gid = owner.map(|(_, gid)| gid);
            self.create_tree(&record)?;
            self.write_secrets(&record)?;
            self.records.save(&record)?;
            Ok(record)
        })?;
        Ok(record)
    }

    fn create_tree(&self, record: &TenantRecord) -> anyhow::Result<()> {
        let root = self.tenant_root(&record.slug);
        for dir in [root.clone(), root.join("home"), root.join("state"), root.join("tmp"), root.join("logs")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            set_mode(&dir, 0o700)?;
            chown(&dir, record.owner())?;
        }
        Ok(())
    }

    fn launch(&self, record: &TenantRecord) -> GatewayLaunch {
        GatewayLaunch {
            tenant_id: record.tenant_id.clone(),
            openclaw: self.openclaw.clone(),
            env: self.env(record),
            root: self.tenant_root(&record.slug),
            limits: self.limits.clone(),
            resources: record.resources.clone(),
            restart_budget: self.settings.restart_budget,
        }
    }

    /// Holds the tenant to `resources` from now on: its record, and its
    /// cgroup's limits live (the gateway keeps running).
    fn apply_resources(&self, record: &mut TenantRecord, resources: &Resources) -> RuntimeResult<()> {
        if self.limits.available() {
            self.limits.apply(&record.tenant_id, resources)?;
        }
        if record.resources != *resources {
            record.resources = resources.clone();
            self.records.save(record)?;
        }
        Ok(())
    }

    /// Waits until the gateway answers `/readyz` with 200.
    async fn wait_ready(&self, record: &TenantRecord) -> RuntimeResult<()> {
        if readiness::wait_ready(record.port, self.settings.ready_timeout).await {
            self.supervisors.mark_running(&record.tenant_id);
            return Ok(());
        }
        let detail = self.supervisors.state(&record.tenant_id).map(|s| s.last_error).unwrap_or_default();
        Err(readiness::not_ready(&record.slug, self.settings.ready_timeout, &detail))
    }

    async fn restart_locked(&self, record: &TenantRecord) -> RuntimeResult<()> {
        if record.hibernated {
            // It starts with the new config when it wakes.
            return Ok(());
        }
        if !self.supervisors.request_restart(&record.tenant_id) {
            self.supervisors.ensure(self.launch(record));
        }
        // Give the old process time to go before polling readiness.
        let old_pid = self.supervisors.state(&record.tenant_id).and_then(|s| s.pid);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            let state = self.supervisors.state(&record.tenant_id);
            if state.as_ref().and_then(|s| s.pid) != old_pid || state.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_ready(record).await
    }

    /// Brings a tenant provisioned by an older agent up to the current
    /// gateway defaults (one `config set`); on failure it keeps running as
    /// it was and the next start tries again.
    async fn upgrade_defaults(&self, mut record: TenantRecord) -> TenantRecord {
        if record.defaults_version >= GATEWAY_DEFAULTS_VERSION {
            return record;
        }
        let defaults = Value::Array(config_apply::gateway_defaults(&record.public_origin));
        match config_apply::config_set(self, &record, &defaults).await {
            Ok(()) => {
                record.defaults_version = GATEWAY_DEFAULTS_VERSION;
                record.config_hash = self.config_hash(&record);
                if let Err(err) = self.records.save(&record) {
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
}

#[async_trait]
impl TenantCli for ProcessRuntime {
    /// `openclaw <args>` as the tenant's user on its state.
    async fn openclaw(&self, record: &TenantRecord, args: &[&str]) -> RuntimeResult<CliOutput> {
        let output = self.openclaw.run(&self.env(record), args, self.settings.cli_timeout).await?;
        tracing::debug!(tenant = %record.tenant_id, command = %args[..args.len().min(2)].join(" "), elapsed_ms = output.elapsed.as_millis() as u64, ok = output.success, "openclaw call");
        Ok(output)
    }

    /// The secrets file: the gateway token and every tenant secret, 0600,
    /// owned by the tenant; OpenClaw reads it through SecretRefs.
    fn write_secrets(&self, record: &TenantRecord) -> anyhow::Result<()> {
        let document =
            config_apply::secrets_document(json!({"gateway": {"token": record.gateway_token}}), &record.secrets);
        let path = self.tenant_root(&record.slug).join("secrets.json");
        write_private(&path, serde_json::to_vec_pretty(&document)?.as_slice())?;
        chown(&path, record.owner())?;
        Ok(())
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn records(&self) -> &RecordStore {
        &self.records
    }

    /// Creates the tenant's user, tree, initial config and agents, and
    /// starts its gateway.
    async fn provision(
        &self,
        tenant_id: &str,
        slug: &str,
        agent_ids: &[String],
        public_origin: &str,
        resources: &Resources,
    ) -> RuntimeResult<Provisioned> {
        let agents = check_provision(tenant_id, slug, agent_ids, public_origin)?;
        self.limits.check(resources)?;
        let lock = self.locks.lock(tenant_id);
        let _guard = lock.lock().await;
        let mut record = match self.records.claimed(tenant_id, slug)? {
            Some(mut record) if record.provisioned => {
                self.apply_resources(&mut record, resources)?;
                if record.hibernated {
                    // Provisioning asks for a running gateway.
                    record.hibernated = false;
                    self.records.save(&record)?;
                    self.activity.set_hibernated(tenant_id, false);
                }
                self.supervisors.ensure(self.launch(&record));
                self.wait_ready(&record).await?;
                return Ok(Provisioned { port: record.port, agent_ids: record.agent_ids });
            }
            Some(record) => record,
            None => self.new_tenant(tenant_id, slug).await?,
        };
        // Every step below is idempotent, so an interrupted provisioning is
        // simply run again.
        let root = self.tenant_root(slug);
        let mut initial = vec![
            json!({"path": "gateway.mode", "value": "local"}),
            json!({"path": "gateway.port", "value": record.port}),
            json!({"path": "gateway.bind", "value": "loopback"}),
            json!({"path": "secrets.providers.clawplane", "value": {"source": "file", "path": root.join("secrets.json"), "mode": "json"}}),
            json!({"path": "gateway.auth", "value": {"mode": "token", "token": {"source": "file", "provider": "clawplane", "id": "/gateway/token"}}}),
            json!({"path": "gateway.http.endpoints.chatCompletions.enabled", "value": true}),
            json!({"path": "logging.file", "value": root.join("logs").join("gateway.log")}),
        ];
        initial.extend(config_apply::gateway_defaults(public_origin));
        config_apply::config_set(self, &record, &Value::Array(initial)).await?;
        for agent in &agents {
            let workspace = root.join("state").join("workspaces").join(agent);
            let workspace = workspace.to_string_lossy().into_owned();
            let output = config_apply::openclaw_retrying(
                self,
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
        record.config_hash = self.config_hash(&record);
        self.apply_resources(&mut record, resources)?;
        self.records.save(&record)?;
        self.supervisors.ensure(self.launch(&record));
        self.wait_ready(&record).await?;
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
        let batch = (!change.batch.is_empty()).then_some(Value::Array(change.batch));
        config_apply::apply_secrets_and_config(self, &mut record, change.secrets, batch, change.unset_paths).await?;
        for (agent_id, name, content) in change.files {
            let dir = self.tenant_root(&record.slug).join("state").join("workspaces").join(agent_id);
            let path = dir.join(name);
            create_private_dir(&dir)?;
            write_private(&path, content.as_bytes())?;
            chown(&path, record.owner())?;
        }
        record.applied_generation = generation;
        record.config_hash = self.config_hash(&record);
        self.records.save(&record)?;
        if restart {
            self.restart_locked(&record).await?;
        }
        Ok(generation)
    }

    async fn restart(&self, tenant_id: &str) -> RuntimeResult<()> {
        let lock = self.locks.lock(tenant_id);
        let _guard = lock.lock().await;
        let record = self.records.existing(tenant_id)?;
        self.restart_locked(&record).await
    }

    /// Stops the gateway, archives the tenant's tree, removes it and its user.
    async fn delete(&self, tenant_id: &str, archive: bool) -> RuntimeResult<Option<(PathBuf, u64)>> {
        check_tenant(tenant_id, None)?;
        let lock = self.locks.lock(tenant_id);
        let _guard = lock.lock().await;
        let Some(record) = self.records.get(tenant_id) else { return Ok(None) };
        self.supervisors.stop(tenant_id).await;
        // Helpers OpenClaw detached from the gateway's group (workers, CLI
        // calls) go too: nothing of the tenant may outlive it.
        if let Some(uid) = record.uid {
            kill_user_processes(uid);
        }
        if let Err(err) = self.limits.remove(tenant_id).await {
            tracing::warn!(tenant = %tenant_id, error = %err, "cannot remove the tenant's cgroup");
        }
        let root = self.tenant_root(&record.slug);
        let mut archived = None;
        if archive && root.exists() {
            archived =
                Some(archives::archive_tree(&self.settings.tenants_dir, &self.settings.archive_dir, &record).await?);
        }
        if root.exists() {
            std::fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))?;
        }
        if let Some(user) = &record.user {
            remove_user(user, record.uid).await;
        }
        self.records.remove(tenant_id);
        self.activity.forget(tenant_id);
        self.prune_archives();
        Ok(archived)
    }

    /// Stops gateways left over from the previous run and starts fresh
    /// supervised ones for every recorded tenant.
    async fn adopt_all(&self) {
        for record in self.records.all() {
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
            if record.hibernated {
                self.activity.set_hibernated(&record.tenant_id, true);
                tracing::info!(tenant = %record.tenant_id, slug = %record.slug, "tenant stays hibernated");
                continue;
            }
            if record.provisioned {
                let record = self.upgrade_defaults(record).await;
                tracing::info!(tenant = %record.tenant_id, slug = %record.slug, "restarting gateway left by a previous agent run");
                self.supervisors.ensure(self.launch(&record));
            }
        }
    }

    fn prune_archives(&self) {
        archives::prune(&self.settings.archive_dir, self.settings.archive_retention);
    }

    async fn openclaw_version(&self) -> String {
        super::openclaw_version(&self.openclaw, &self.settings.state_dir).await
    }

    fn gateway(&self, record: &TenantRecord) -> GatewayReport {
        if record.hibernated {
            return GatewayReport {
                phase: GatewayPhase::Hibernated,
                restarts: 0,
                last_error: String::new(),
                since: None,
                usage: self.usage(record, None, 0),
            };
        }
        match self.supervisors.state(&record.tenant_id) {
            Some(state) => GatewayReport {
                usage: self.usage(record, state.pid, state.memory_kills),
                phase: state.phase,
                restarts: state.restarts,
                last_error: state.last_error,
                since: Some(state.since),
            },
            None => GatewayReport {
                phase: GatewayPhase::Stopped,
                restarts: 0,
                last_error: String::new(),
                since: None,
                usage: self.usage(record, None, 0),
            },
        }
    }

    fn limits_support(&self) -> (String, String) {
        (self.limits.version().to_string(), self.limits.unavailable().unwrap_or_default().to_string())
    }

    fn local_states(&self) -> Vec<LocalState> {
        self.records
            .all()
            .into_iter()
            .map(|record| LocalState {
                state_dir: self.env(&record).state_dir,
                owner: record.owner(),
                tenant_id: record.tenant_id,
            })
            .collect()
    }

    fn hold_for_read(&self, tenant_id: &str) -> Option<ReadHold> {
        let guard = self.locks.try_hold(tenant_id)?;
        let own_config_hash = self.records.get(tenant_id)?.config_hash.unwrap_or_default();
        Some(ReadHold { own_config_hash, guard })
    }

    async fn log_tail(&self, tenant_id: &str, tail: usize) -> RuntimeResult<Vec<String>> {
        let record = self.records.existing(tenant_id)?;
        Ok(file_tail(&self.log_path(&record), tail)?.0)
    }

    async fn log_follow(&self, tenant_id: &str, tail: usize) -> RuntimeResult<Box<dyn LogFollower>> {
        let record = self.records.existing(tenant_id)?;
        Ok(Box::new(FileFollower::new(self.log_path(&record), tail)?))
    }

    fn leave_gateways_running(&self) {
        self.supervisors.leave_running();
    }

    fn activity(&self) -> Option<Arc<Activity>> {
        Some(self.activity.clone())
    }

    async fn hibernate(&self, tenant_id: &str, idle: Duration) -> RuntimeResult<bool> {
        // A tenant a command holds is busy, not idle: never wait for it.
        let Some(_guard) = self.locks.try_hold(tenant_id) else { return Ok(false) };
        let mut record = self.records.existing(tenant_id)?;
        if record.hibernated || !record.provisioned || !self.activity.claim_idle(tenant_id, idle) {
            return Ok(false);
        }
        record.hibernated = true;
        self.records.save(&record)?;
        self.supervisors.stop(tenant_id).await;
        // Whatever the tenant's user still runs (detached helpers) goes too:
        // a hibernated tenant holds no memory.
        if let Some(uid) = record.uid {
            kill_user_processes(uid);
        }
        Ok(true)
    }

    async fn wake(&self, tenant_id: &str) -> RuntimeResult<()> {
        let record = {
            // Held only to start it: requests waiting for the gateway must
            // not hold up the tenant's commands.
            let lock = self.locks.lock(tenant_id);
            let _guard = lock.lock().await;
            let mut record = self.records.existing(tenant_id)?;
            if record.hibernated {
                record.hibernated = false;
                self.records.save(&record)?;
                tracing::info!(tenant = %tenant_id, "waking a hibernated tenant");
            }
            self.supervisors.ensure(self.launch(&record));
            record
        };
        // Requests keep coming here (and wait) until the gateway answers;
        // then, or when it cannot start, they go to it directly again.
        let ready = self.ready_or_exited(&record).await;
        self.activity.set_hibernated(tenant_id, false);
        ready
    }
}

impl ProcessRuntime {
    /// Waits until a starting gateway is ready, or fails as soon as it dies.
    async fn ready_or_exited(&self, record: &TenantRecord) -> RuntimeResult<()> {
        let tenant_id = &record.tenant_id;
        // Polled often: every 100 ms here is up to 100 ms on a held request.
        // A gateway that dies while starting fails the wake at once instead
        // of holding requests until the readiness timeout.
        let started = Instant::now();
        loop {
            if readiness::http_status(record.port, "/readyz").await == Some(200) {
                self.supervisors.mark_running(tenant_id);
                return Ok(());
            }
            let state = self.supervisors.state(tenant_id);
            if let Some(state) = state.filter(|s| matches!(s.phase, GatewayPhase::Backoff | GatewayPhase::Failed)) {
                return Err(RuntimeError::OpenClaw(format!("the gateway exited while starting: {}", state.last_error)));
            }
            if started.elapsed() > self.settings.ready_timeout {
                return Err(readiness::not_ready(&record.slug, self.settings.ready_timeout, ""));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_path(&self, record: &TenantRecord) -> PathBuf {
        self.tenant_root(&record.slug).join("logs").join("gateway.log")
    }

    /// What the tenant's gateway (process `pid`, its group's leader) takes:
    /// its cgroup's counters, or its process group's from /proc.
    fn usage(&self, record: &TenantRecord, pid: Option<u32>, memory_kills: u32) -> GatewayUsage {
        let enforced = self.limits.available();
        let (memory_used_bytes, cpu_used_micros) = match pid {
            None => (0, 0),
            Some(pid) => match self.limits.usage(&record.tenant_id).filter(|_| enforced) {
                Some(usage) => (usage.memory_bytes, usage.cpu_micros),
                None => process_group_usage(pid),
            },
        };
        GatewayUsage {
            memory_used_bytes,
            cpu_used_micros,
            memory_limit_bytes: if enforced { record.resources.memory_bytes } else { 0 },
            memory_kills,
        }
    }
}

fn read_pid(root: &Path) -> Option<u32> {
    std::fs::read_to_string(root.join("gateway.pid")).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime in a temp dir driving the stand-in `openclaw` in `mode`.
    struct Fake {
        dir: tempfile::TempDir,
        runtime: Arc<ProcessRuntime>,
    }

    impl Fake {
        fn new(mode: &str) -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let settings = TenantSettings {
                cli_timeout: Duration::from_secs(2),
                ready_timeout: Duration::from_secs(20),
                ..TenantSettings::stand_in(dir.path())
            };
            std::fs::write(dir.path().join("fake-mode"), mode).unwrap();
            let runtime = ProcessRuntime::new(settings).unwrap();
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
    async fn a_gateway_that_keeps_failing_is_given_up_until_restarted() {
        let fake = Fake::new("ok");
        let settings = TenantSettings {
            restart_budget: 2,
            ready_timeout: Duration::from_secs(5),
            ..fake.runtime.settings.clone()
        };
        let runtime = ProcessRuntime::new(settings).unwrap();
        std::fs::write(fake.dir.path().join("gateway-exit"), "").unwrap();
        let err = runtime.provision(TENANT, "alice", &[], "", &Resources::default()).await.err().expect("not ready");
        assert!(err.to_string().contains("not ready"), "{err}");
        // Bounded only so a supervisor that never gives up fails the test.
        let deadline = Instant::now() + Duration::from_secs(60);
        let record = runtime.records.existing(TENANT).unwrap();
        let report = loop {
            let report = runtime.gateway(&record);
            if report.phase == GatewayPhase::Failed {
                break report;
            }
            assert!(Instant::now() < deadline, "still restarting: {report:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(report.last_error.starts_with("gave up after 2 failed starts in a row"), "{}", report.last_error);
        assert!(report.last_error.contains("crashed at start"), "{}", report.last_error);
        // Given up means no more starts.
        let starts = || fake.calls("alice").iter().filter(|c| c[..2] == ["gateway", "run"]).count();
        let given_up_at = starts();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(starts(), given_up_at, "no start after giving up");
        // A restart asks again, with a fresh budget.
        std::fs::remove_file(fake.dir.path().join("gateway-exit")).unwrap();
        runtime.restart(TENANT).await.unwrap();
        assert_eq!(runtime.gateway(&record).phase, GatewayPhase::Running);
        runtime.delete(TENANT, false).await.unwrap();
    }

    #[tokio::test]
    async fn older_tenants_get_the_current_gateway_defaults_on_restart() {
        let fake = Fake::new("ok");
        fake.runtime.provision(TENANT, "alice", &[], "https://alice.claw.test", &Resources::default()).await.unwrap();
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
        let first = fake.runtime.provision(TENANT, "alice", &[], "", &Resources::default()).await.unwrap();
        let second = fake.runtime.provision(TENANT, "alice", &[], "", &Resources::default()).await.unwrap();
        assert_eq!(first.port, second.port);
        let agents_added = fake.calls("alice").iter().filter(|c| c[..2] == ["agents", "add"]).count();
        assert_eq!(agents_added, 1, "a second provision does not re-run the steps");
        // A team tenant: several agents in its one gateway.
        const TEAM: &str = "01a20c6b-19d8-76c4-937e-6d06bfdd3193";
        let team = fake
            .runtime
            .provision(TEAM, "crew", &["crew".into(), "planner".into()], "", &Resources::default())
            .await
            .unwrap();
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
        fake.runtime.provision(TENANT, "alice", &[], "", &Resources::default()).await.unwrap();
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
            let err =
                fake.runtime.provision(TENANT, slug, &[], "", &Resources::default()).await.err().expect("refused");
            assert!(matches!(err, RuntimeError::Invalid(_)), "{slug:?}: {err}");
        }
        for id in ["../../x", "a;b", ""] {
            assert!(
                matches!(
                    fake.runtime.provision(id, "alice", &[], "", &Resources::default()).await,
                    Err(RuntimeError::Invalid(_))
                ),
                "{id:?}"
            );
        }
        assert!(fake.calls("alice").is_empty(), "nothing reached openclaw");
        fake.runtime.provision(TENANT, "alice", &[], "", &Resources::default()).await.unwrap();
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
        fake.runtime.provision(TENANT, "alice", &[], "", &Resources::default()).await.unwrap();
        let ops = vec![("channels.telegram.dmPolicy".to_string(), "\"bogus\"".to_string())];
        let change = || ConfigChange { ops: &ops, unset_paths: &[], secrets: &[], files: &[] };

        fake.mode("reject-config");
        match fake.runtime.apply_config(TENANT, 1, change(), false).await {
            Err(RuntimeError::OpenClaw(message)) => assert!(message.contains("dmPolicy: invalid config"), "{message}"),
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }
        assert_eq!(
            fake.runtime.records.get(TENANT).unwrap().applied_generation,
            0,
            "a rejected generation is not applied"
        );

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
        fake.runtime.provision(TENANT, "alice", &[], "", &Resources::default()).await.unwrap();
        let (archive, bytes) = fake.runtime.delete(TENANT, true).await.unwrap().expect("archived");
        assert!(archive.exists() && bytes > 0);
        fake.runtime.prune_archives();
        assert!(archive.exists(), "a fresh archive is kept (retention 1 h)");
        let keep_nothing =
            ProcessRuntime::new(TenantSettings { archive_retention: Duration::ZERO, ..fake.runtime.settings.clone() })
                .unwrap();
        keep_nothing.prune_archives();
        assert!(!archive.exists(), "an archive past its retention is removed");
    }
}
