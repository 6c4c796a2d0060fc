//! Placement of tenants on hosts, the lifecycle effects of command results,
//! and reconciliation when a host says hello.
use clawplane_proto::v1::{
    self as pb, command, command_result, CommandOutcome, DeleteTenantCommand, ProvisionTenantCommand,
};

use super::error::FleetResult;
use super::streams::{command_message, Fleet};
use crate::store::stored_inventory;
use crate::store::{CommandKind, Host, HostCommand, Plan, TenantRecord, TenantStatus};

/// Tenants a host takes when its inventory does not say.
const DEFAULT_MAX_TENANTS: u32 = 8;

/// Whether a host carries every wanted label.
fn carries(host: &Host, wanted: &std::collections::BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(key, value)| host.labels.get(key).and_then(|v| v.as_str()) == Some(value.as_str()))
}

/// What a plan lets a tenant's gateway take.
pub fn plan_resources(plan: &Plan) -> pb::PlanResources {
    let mib = |value: Option<i64>| (value.unwrap_or(0).max(0) as u64) << 20;
    pb::PlanResources {
        memory_limit_bytes: mib(plan.memory_limit_mib),
        memory_soft_limit_bytes: mib(plan.memory_soft_limit_mib),
        cpus: plan.cpu_millis.unwrap_or(0).max(0) as f64 / 1000.0,
        pids_limit: plan.pids_limit.unwrap_or(0).max(0) as u32,
        hibernate_after: plan
            .hibernate_after_secs
            .filter(|secs| *secs > 0)
            .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
    }
}

/// Whether a plan has limits a host must enforce.
fn limited(resources: &pb::PlanResources) -> bool {
    resources.memory_limit_bytes > 0
        || resources.memory_soft_limit_bytes > 0
        || resources.cpus > 0.0
        || resources.pids_limit > 0
}

/// A size for people: "1.5 GiB", "512 MiB".
pub fn human_bytes(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{} GiB", (gib * 10.0).round() / 10.0)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// What placing a tenant came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Placed,
    /// No host fits; the tenant's status message says why.
    Waiting(String),
    /// Another replica placed it first.
    Taken,
}

/// A host that may take tenants: how many it runs and may run, the memory
/// its tenants' plans commit and may commit.
struct Candidate {
    load: u32,
    capacity: u32,
    committed_memory: u64,
    /// The host's memory times the overcommit ratio; None when the host
    /// did not report its memory.
    memory_budget: Option<u64>,
    /// Whether the host enforces limits (cgroups).
    enforces_limits: bool,
    host: Host,
}

impl Candidate {
    fn fits(&self, resources: &pb::PlanResources) -> bool {
        self.load < self.capacity
            && (self.enforces_limits || !limited(resources))
            && self.memory_budget.is_none_or(|budget| self.committed_memory + resources.memory_limit_bytes <= budget)
    }
}

/// Plans by name, for placement.
type Plans = std::collections::HashMap<String, Plan>;

/// Why no candidate takes a tenant, in the words an operator acts on.
fn waiting_reason(
    hosts: &[Candidate],
    wanted: &std::collections::BTreeMap<String, String>,
    resources: &pb::PlanResources,
) -> String {
    let labelled: Vec<&Candidate> = hosts.iter().filter(|c| carries(&c.host, wanted)).collect();
    let with = if wanted.is_empty() {
        String::new()
    } else {
        let labels: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(" with labels {}", labels.join(","))
    };
    if labelled.is_empty() {
        return format!("waiting for a host: no online host{with}");
    }
    if limited(resources) && labelled.iter().all(|c| !c.enforces_limits) {
        return format!(
            "waiting for a host: its plan has resource limits and no online host{with} can enforce them (no cgroups)"
        );
    }
    let roomy: Vec<&&Candidate> = labelled.iter().filter(|c| c.load < c.capacity).collect();
    if roomy.is_empty() {
        return format!("waiting for a host: every online host{with} runs as many tenants as it takes");
    }
    let most_free = roomy
        .iter()
        .filter_map(|c| c.memory_budget.map(|budget| budget.saturating_sub(c.committed_memory)))
        .max()
        .unwrap_or(0);
    format!(
        "waiting for a host: its plan needs {} of memory and the most any online host{with} has uncommitted is {}",
        human_bytes(resources.memory_limit_bytes),
        human_bytes(most_free)
    )
}

impl Fleet {
    /// Places one new tenant (the create path): the same few queries
    /// whatever the backlog; the sweep places the others.
    pub async fn place(&self, tenant: &TenantRecord) -> FleetResult<Placement> {
        let mut hosts = self.candidates().await?;
        let plans = self.plans().await?;
        self.place_on(&mut hosts, &plans, tenant).await
    }

    async fn plans(&self) -> FleetResult<Plans> {
        Ok(self.store.list_plans().await?.into_iter().map(|plan| (plan.name.clone(), plan)).collect())
    }

    /// The sweep: every pending tenant (oldest first, 100 at a time) on the
    /// least-loaded online, active host with room, its provisioning queued.
    /// Returns how many were placed.
    pub async fn place_pending(&self) -> FleetResult<usize> {
        let pending = self.store.unplaced_tenants(100).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut hosts = self.candidates().await?;
        let plans = self.plans().await?;
        let mut placed = 0;
        for tenant in pending {
            if self.place_on(&mut hosts, &plans, &tenant).await? == Placement::Placed {
                placed += 1;
            }
        }
        Ok(placed)
    }

    /// Active, online hosts with a stream to any replica, and their loads
    /// (one query for all of them).
    async fn candidates(&self) -> FleetResult<Vec<Candidate>> {
        let hosts: Vec<Host> = self.store.placeable_hosts().await?;
        let ids: Vec<String> = hosts.iter().map(|host| host.id.clone()).collect();
        let loads = self.store.host_loads(&ids).await?;
        let overcommit = self.config().memory_overcommit;
        Ok(hosts
            .into_iter()
            .map(|host| {
                let load = loads.get(&host.id).copied().unwrap_or_default();
                let capacity = stored_inventory(&host).and_then(|inventory| inventory.capacity).unwrap_or_default();
                Candidate {
                    load: load.tenants as u32,
                    capacity: Some(capacity.max_tenants).filter(|max| *max > 0).unwrap_or(DEFAULT_MAX_TENANTS),
                    committed_memory: load.committed_memory_bytes,
                    memory_budget: (capacity.memory_bytes > 0)
                        .then(|| (capacity.memory_bytes as f64 * overcommit) as u64),
                    enforces_limits: !capacity.cgroup_version.is_empty(),
                    host,
                }
            })
            .collect())
    }

    /// Places `tenant` on the least-loaded candidate with room, the memory
    /// its plan commits, limits enforced if its plan has any, and its
    /// labels; or says why it waits (written only when the reason changed).
    async fn place_on(&self, hosts: &mut [Candidate], plans: &Plans, tenant: &TenantRecord) -> FleetResult<Placement> {
        hosts.sort_by(|a, b| a.load.cmp(&b.load).then_with(|| a.host.id.cmp(&b.host.id)));
        let wanted = tenant.placement_labels();
        let resources = plans.get(&tenant.plan).map(plan_resources).unwrap_or_default();
        let Some(slot) = hosts.iter_mut().find(|c| c.fits(&resources) && carries(&c.host, &wanted)) else {
            let reason = waiting_reason(hosts, &wanted, &resources);
            if tenant.tenant.status_message != reason {
                self.store.set_pending_reason(&tenant.tenant.id, &reason).await?;
            }
            return Ok(Placement::Waiting(reason));
        };
        if !self.store.assign_tenant(&tenant.tenant.id, &slot.host.id).await? {
            return Ok(Placement::Taken);
        }
        slot.load += 1;
        slot.committed_memory += resources.memory_limit_bytes;
        self.provision(&slot.host.id, tenant, &resources).await?;
        tracing::info!(tenant = %tenant.tenant.id, host = %slot.host.id, "tenant placed");
        Ok(Placement::Placed)
    }

    async fn provision(&self, host_id: &str, tenant: &TenantRecord, resources: &pb::PlanResources) -> FleetResult<()> {
        let payload = command::Payload::ProvisionTenant(ProvisionTenantCommand {
            tenant_id: tenant.tenant.id.clone(),
            slug: tenant.tenant.slug.clone(),
            runtime: pb::Runtime::Process as i32,
            agent_ids: tenant.agent_ids(),
            gateway_port: 0,
            cpus: resources.cpus,
            memory_bytes: resources.memory_limit_bytes,
            public_origin: format!("https://{}.{}", tenant.tenant.slug, self.config().base_domain),
            pids_limit: resources.pids_limit,
            memory_soft_bytes: resources.memory_soft_limit_bytes,
            hibernate_after: resources.hibernate_after,
        });
        self.enqueue(host_id, Some(&tenant.tenant.id), payload).await?;
        Ok(())
    }

    /// Asks the tenant's host to stop it, archive its state and remove it.
    pub async fn delete_on_host(&self, host_id: &str, tenant_id: &str) -> FleetResult<()> {
        let payload = command::Payload::DeleteTenant(DeleteTenantCommand {
            tenant_id: tenant_id.to_string(),
            archive: true,
            archive_retention: None,
        });
        self.enqueue(host_id, Some(tenant_id), payload).await?;
        Ok(())
    }

    /// On hello: tenants placed here but unknown to the host are provisioned
    /// again; tenants the host runs that are deleted (or not its own) are
    /// removed from it.
    pub async fn reconcile(&self, host_id: &str, reported: &[pb::TenantState]) -> FleetResult<()> {
        let placed = self.store.tenants_on_host(host_id).await?;
        let plans = self.plans().await?;
        for tenant in &placed {
            let id = &tenant.tenant.id;
            match reported.iter().find(|r| &r.tenant_id == id) {
                None => {
                    if !self.store.has_open_command(host_id, id, CommandKind::ProvisionTenant).await? {
                        tracing::info!(tenant = %id, host = %host_id, "host lacks a placed tenant; provisioning again");
                        let resources = plans.get(&tenant.plan).map(plan_resources).unwrap_or_default();
                        self.provision(host_id, tenant, &resources).await?;
                    }
                }
                Some(state) => {
                    // A config generation the host has not applied is sent again.
                    let desired = self.store.config_state(id).await?.map(|c| c.desired_generation).unwrap_or(0);
                    if state.applied_config_generation < desired
                        && !self.store.has_open_command(host_id, id, CommandKind::ApplyConfig).await?
                    {
                        tracing::info!(tenant = %id, host = %host_id, applied = state.applied_config_generation, desired, "re-sending config");
                        self.push_config(tenant).await?;
                    }
                }
            }
        }
        for state in reported {
            let ours = placed.iter().any(|t| t.tenant.id == state.tenant_id);
            if !ours && !self.store.has_open_command(host_id, &state.tenant_id, CommandKind::DeleteTenant).await? {
                tracing::info!(tenant = %state.tenant_id, host = %host_id, "host runs a tenant that is not placed there; removing it");
                self.delete_on_host(host_id, &state.tenant_id).await?;
            }
        }
        Ok(())
    }

    /// What a finished command means for its tenant.
    pub(super) async fn apply_result(&self, row: &HostCommand, result: &pb::CommandResult) -> FleetResult<()> {
        let Some(tenant_id) = &row.tenant_id else { return Ok(()) };
        let succeeded = result.outcome == CommandOutcome::Succeeded as i32;
        match row.kind {
            CommandKind::ProvisionTenant => {
                let (status, message) = match (&result.payload, succeeded) {
                    (Some(command_result::Payload::ProvisionTenant(p)), true) => (
                        TenantStatus::Running,
                        format!("gateway ready on host {} (loopback port {})", row.host_id, p.gateway_port),
                    ),
                    (_, true) => (TenantStatus::Running, "gateway ready".to_string()),
                    (_, false) => (TenantStatus::Failed, format!("provisioning failed: {}", result.error_message)),
                };
                self.store.set_tenant_status(tenant_id, &row.host_id, status, &message).await?;
                // A fresh gateway gets the tenant's config right away.
                if succeeded {
                    if let Some(command_result::Payload::ProvisionTenant(p)) = &result.payload {
                        let reported = &p.agent_ids;
                        let known = self.store.live_tenant(tenant_id).await?.map(|t| t.agent_ids());
                        if !reported.is_empty() && known.as_ref() != Some(reported) {
                            self.store.set_tenant_agents(tenant_id, reported).await?;
                        }
                    }
                    // A tenant that configured nothing yet still gets the
                    // platform's model: its first generation is that.
                    if self.desired.platform_model().is_some() && self.store.config_state(tenant_id).await?.is_none() {
                        self.desired.save(tenant_id, Vec::new(), None).await?;
                    }
                    if let Some(tenant) = self.store.live_tenant(tenant_id).await? {
                        self.push_config(&tenant).await?;
                        // And what its metering proxy may let through.
                        self.push_allowance(&tenant).await?;
                    }
                }
            }
            CommandKind::ApplyConfig => {
                let generation = match &result.payload {
                    Some(command_result::Payload::ApplyConfig(applied)) => applied.applied_generation,
                    _ => command_message(row)
                        .and_then(|c| match c.payload {
                            Some(command::Payload::ApplyConfig(apply)) => Some(apply.generation),
                            _ => None,
                        })
                        .unwrap_or(0),
                };
                let error = (!succeeded).then(|| result.error_message.clone());
                self.store.record_config_apply(tenant_id, generation, error).await?;
            }
            CommandKind::DeleteTenant if !succeeded => {
                tracing::warn!(tenant = %tenant_id, host = %row.host_id, error = %result.error_message, "removing a tenant from its host failed");
            }
            _ => {}
        }
        Ok(())
    }
}
