//! The agent's own record of each tenant (port, user, applied generation,
//! gateway token), one root-only JSON file per tenant under
//! `<state_dir>/tenants/<tenant id>.json`. Both runtimes keep theirs here,
//! and the tenant proxy looks gateways up here.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clawplane_tls::files::{create_private_dir, write_private};
use serde::{Deserialize, Serialize};

use super::error::{RuntimeError, RuntimeResult};

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
    /// config carries ([`super::config_apply::GATEWAY_DEFAULTS_VERSION`]);
    /// older tenants are brought up to date when the agent starts.
    #[serde(default)]
    pub defaults_version: u32,
    /// `https://<slug>.<domain>`, allowed to open the Control UI.
    #[serde(default)]
    pub public_origin: String,
    /// What the tenant's plan lets its gateway take; the latest provision
    /// command's.
    #[serde(default)]
    pub resources: Resources,
    /// The gateway was stopped after its idle period and starts again on
    /// the next request (kept across agent restarts).
    #[serde(default)]
    pub hibernated: bool,
}

/// What a tenant's plan lets its gateway take; zero means no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Hard memory limit: the kernel kills the gateway above it.
    pub memory_bytes: u64,
    /// The agent restarts a gateway that stays above this for a minute.
    pub memory_soft_bytes: u64,
    /// CPU cores (a quota).
    pub cpus: f64,
    /// Most processes and threads.
    pub pids: u32,
    /// Idle period after which the gateway hibernates; 0: never.
    pub hibernate_after_secs: u64,
}

/// Smallest memory limit accepted: an OpenClaw gateway does not start in
/// less.
const MIN_MEMORY_BYTES: u64 = 64 << 20;
/// Longest idle period accepted.
const MAX_HIBERNATE_AFTER_SECS: u64 = 30 * 24 * 3600;

impl Resources {
    /// The resources of a provision command, checked before anything runs.
    pub fn from_command(command: &clawplane_proto::v1::ProvisionTenantCommand) -> RuntimeResult<Self> {
        let hibernate_after_secs = command.hibernate_after.map(|d| d.seconds).unwrap_or(0);
        let resources = Resources {
            memory_bytes: command.memory_bytes,
            memory_soft_bytes: command.memory_soft_bytes,
            cpus: command.cpus,
            pids: command.pids_limit,
            hibernate_after_secs: hibernate_after_secs.max(0) as u64,
        };
        let invalid = |what: String| Err(RuntimeError::Invalid(what));
        if !resources.cpus.is_finite() || resources.cpus < 0.0 || resources.cpus > 1024.0 {
            return invalid(format!("cpus {} is not between 0 and 1024", command.cpus));
        }
        if resources.memory_bytes != 0 && resources.memory_bytes < MIN_MEMORY_BYTES {
            return invalid(format!("memory limit {} bytes is below 64 MiB", resources.memory_bytes));
        }
        if resources.memory_soft_bytes != 0
            && resources.memory_bytes != 0
            && resources.memory_soft_bytes > resources.memory_bytes
        {
            return invalid(format!(
                "memory soft limit {} bytes is above the hard limit {} bytes",
                resources.memory_soft_bytes, resources.memory_bytes
            ));
        }
        if hibernate_after_secs < 0 || resources.hibernate_after_secs > MAX_HIBERNATE_AFTER_SECS {
            return invalid(format!("hibernate_after {hibernate_after_secs} s is not between 0 and 30 days"));
        }
        Ok(resources)
    }

    /// Whether any limit needs the host to enforce it.
    pub fn limited(&self) -> bool {
        self.memory_bytes > 0 || self.memory_soft_bytes > 0 || self.cpus > 0.0 || self.pids > 0
    }
}

impl TenantRecord {
    /// A record for a tenant new to this host, before any provisioning.
    pub fn new(tenant_id: &str, slug: &str, port: u16, gateway_token: String) -> Self {
        TenantRecord {
            tenant_id: tenant_id.to_string(),
            slug: slug.to_string(),
            port,
            user: None,
            uid: None,
            gid: None,
            agent_ids: Vec::new(),
            applied_generation: 0,
            gateway_token,
            secrets: HashMap::new(),
            provisioned: false,
            config_hash: None,
            defaults_version: 0,
            public_origin: String::new(),
            resources: Resources::default(),
            hibernated: false,
        }
    }

    /// The tenant's OS user (uid, gid), when it has one.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.uid.zip(self.gid)
    }
}

/// The directory of tenant records.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    /// The records under `state_dir`, the directory created if missing.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let dir = state_dir.join("tenants");
        create_private_dir(&dir)?;
        Ok(RecordStore { dir })
    }

    fn path(&self, tenant_id: &str) -> PathBuf {
        self.dir.join(format!("{tenant_id}.json"))
    }

    pub fn get(&self, tenant_id: &str) -> Option<TenantRecord> {
        let text = std::fs::read_to_string(self.path(tenant_id)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The record of a tenant a command names, which must be on this host.
    pub fn existing(&self, tenant_id: &str) -> RuntimeResult<TenantRecord> {
        self.get(tenant_id).ok_or_else(|| RuntimeError::Invalid(format!("tenant {tenant_id} is not on this host")))
    }

    /// The record of a tenant being provisioned, if it exists; refused when
    /// the tenant already runs here under another slug.
    pub fn claimed(&self, tenant_id: &str, slug: &str) -> RuntimeResult<Option<TenantRecord>> {
        match self.get(tenant_id) {
            Some(record) if record.slug != slug => {
                Err(RuntimeError::Invalid(format!("tenant {tenant_id} already runs here as {:?}", record.slug)))
            }
            found => Ok(found),
        }
    }

    pub fn save(&self, record: &TenantRecord) -> anyhow::Result<()> {
        write_private(&self.path(&record.tenant_id), serde_json::to_string_pretty(record)?.as_bytes())
    }

    pub fn remove(&self, tenant_id: &str) {
        let _ = std::fs::remove_file(self.path(tenant_id));
    }

    pub fn all(&self) -> Vec<TenantRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
            .collect()
    }
}

/// Loopback ports for new tenants' gateways, `stride` apart from `base`.
#[derive(Debug)]
pub struct PortAllocator {
    base: u16,
    stride: u16,
    /// Held while a new tenant's port is chosen and its record written.
    allocating: Mutex<()>,
}

impl PortAllocator {
    pub fn new(base: u16, stride: u16) -> Self {
        PortAllocator { base, stride, allocating: Mutex::new(()) }
    }

    /// Chooses a free port and runs `create` with it while no other new
    /// tenant can choose: port choice and record are one step, so
    /// concurrent provisions of different tenants never share a port.
    pub fn allocate<T>(
        &self,
        records: &RecordStore,
        create: impl FnOnce(u16) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let _allocating = self.allocating.lock().unwrap();
        let used: Vec<u16> = records.all().iter().map(|r| r.port).collect();
        let mut port = self.base;
        loop {
            if !used.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return create(port);
            }
            port = port.saturating_add(self.stride);
        }
    }
}

/// Serialises operations per tenant (provision, apply, restart, delete,
/// and sync's reads of its state).
#[derive(Debug, Default)]
pub struct TenantLocks {
    locks: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl TenantLocks {
    pub fn lock(&self, tenant_id: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap().entry(tenant_id.to_string()).or_default().clone()
    }

    /// The tenant's lock if no command holds it now.
    pub fn try_hold(&self, tenant_id: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.lock(tenant_id).try_lock_owned().ok()
    }
}
