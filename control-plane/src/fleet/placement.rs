//! Placement of tenants on hosts, the lifecycle effects of command results,
//! and reconciliation when a host says hello.
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clawplane_proto::v1::{
    self as pb, command, command_result, CommandOutcome, DeleteTenantCommand, ProvisionTenantCommand,
};
use prost::Message;

use super::Fleet;
use crate::api::ApiResult;
use crate::store::entities::{host, host_command};
use crate::store::{TenantRecord, TenantStatus};

const PROVISION: &str = "provision_tenant";
const DELETE: &str = "delete_tenant";
const APPLY: &str = "apply_config";

/// Tenants a host takes when its inventory does not say.
const DEFAULT_MAX_TENANTS: u32 = 8;

/// Whether a host carries every wanted label.
fn carries(host: &host::Model, wanted: &std::collections::BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(key, value)| host.labels.get(key).and_then(|v| v.as_str()) == Some(value.as_str()))
}

fn capacity(host: &host::Model) -> u32 {
    host.inventory
        .as_ref()
        .and_then(|inventory| inventory.get("b64"))
        .and_then(|b64| b64.as_str())
        .and_then(|b64| STANDARD.decode(b64).ok())
        .and_then(|bytes| pb::HostInventory::decode(bytes.as_slice()).ok())
        .and_then(|inventory| inventory.capacity)
        .map(|capacity| capacity.max_tenants)
        .filter(|max| *max > 0)
        .unwrap_or(DEFAULT_MAX_TENANTS)
}

impl Fleet {
    /// Places every pending tenant on the least-loaded online, active host
    /// with room, and queues its provisioning. Returns how many were placed.
    pub async fn place_pending(&self) -> ApiResult<usize> {
        let pending = self.store.unplaced_tenants(100).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut hosts = Vec::new();
        for host in self.store.placeable_hosts().await? {
            if !self.is_connected(&host.id) {
                continue;
            }
            let load = self.store.tenant_count(&host.id).await? as u32;
            hosts.push((load, capacity(&host), host));
        }
        let mut placed = 0;
        for tenant in pending {
            hosts.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.id.cmp(&b.2.id)));
            let wanted = tenant.placement_labels();
            let Some(slot) = hosts.iter_mut().find(|(load, max, host)| load < max && carries(host, &wanted)) else {
                let reason = if wanted.is_empty() {
                    "waiting for a host: no online host has room".to_string()
                } else {
                    let labels: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("waiting for a host with room and labels {}", labels.join(","))
                };
                self.store.set_pending_reason(&tenant.tenant.id, &reason).await?;
                continue;
            };
            if !self.store.assign_tenant(&tenant.tenant.id, &slot.2.id).await? {
                continue; // another replica placed it
            }
            slot.0 += 1;
            self.provision(&slot.2.id, &tenant).await?;
            tracing::info!(tenant = %tenant.tenant.id, host = %slot.2.id, "tenant placed");
            placed += 1;
        }
        Ok(placed)
    }

    async fn provision(&self, host_id: &str, tenant: &TenantRecord) -> ApiResult<()> {
        let payload = command::Payload::ProvisionTenant(ProvisionTenantCommand {
            tenant_id: tenant.tenant.id.clone(),
            slug: tenant.tenant.slug.clone(),
            runtime: pb::Runtime::Process as i32,
            agent_ids: tenant.agent_ids(),
            public_origin: format!("https://{}.{}", tenant.tenant.slug, self.config().base_domain),
            ..Default::default()
        });
        self.enqueue(host_id, Some(&tenant.tenant.id), payload).await?;
        Ok(())
    }

    /// Asks the tenant's host to stop it, archive its state and remove it.
    pub async fn delete_on_host(&self, host_id: &str, tenant_id: &str) -> ApiResult<()> {
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
    pub async fn reconcile(&self, host_id: &str, reported: &[pb::TenantState]) -> ApiResult<()> {
        let placed = self.store.tenants_on_host(host_id).await?;
        for tenant in &placed {
            let id = &tenant.tenant.id;
            match reported.iter().find(|r| &r.tenant_id == id) {
                None => {
                    if !self.store.has_open_command(host_id, id, PROVISION).await? {
                        tracing::info!(tenant = %id, host = %host_id, "host lacks a placed tenant; provisioning again");
                        self.provision(host_id, tenant).await?;
                    }
                }
                Some(state) => {
                    // A config generation the host has not applied is sent again.
                    let desired = self.store.config_state(id).await?.map(|c| c.desired_generation).unwrap_or(0);
                    if state.applied_config_generation < desired
                        && !self.store.has_open_command(host_id, id, APPLY).await?
                    {
                        tracing::info!(tenant = %id, host = %host_id, applied = state.applied_config_generation, desired, "re-sending config");
                        crate::api::push_config(self, &self.store, &self.secrets, tenant).await?;
                    }
                }
            }
        }
        for state in reported {
            let ours = placed.iter().any(|t| t.tenant.id == state.tenant_id);
            if !ours && !self.store.has_open_command(host_id, &state.tenant_id, DELETE).await? {
                tracing::info!(tenant = %state.tenant_id, host = %host_id, "host runs a tenant that is not placed there; removing it");
                self.delete_on_host(host_id, &state.tenant_id).await?;
            }
        }
        Ok(())
    }

    /// What a finished command means for its tenant.
    pub(super) async fn apply_result(&self, row: &host_command::Model, result: &pb::CommandResult) -> ApiResult<()> {
        let Some(tenant_id) = &row.tenant_id else { return Ok(()) };
        let succeeded = result.outcome == CommandOutcome::Succeeded as i32;
        match row.kind.as_str() {
            PROVISION => {
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
                    if let Some(tenant) = self.store.live_tenant(tenant_id).await? {
                        crate::api::push_config(self, &self.store, &self.secrets, &tenant).await?;
                    }
                }
            }
            APPLY => {
                let generation = match &result.payload {
                    Some(command_result::Payload::ApplyConfig(applied)) => applied.applied_generation,
                    _ => super::command_message(row)
                        .and_then(|c| match c.payload {
                            Some(command::Payload::ApplyConfig(apply)) => Some(apply.generation),
                            _ => None,
                        })
                        .unwrap_or(0),
                };
                let error = (!succeeded).then(|| result.error_message.clone());
                self.store.record_config_apply(tenant_id, generation, error).await?;
            }
            DELETE if !succeeded => {
                tracing::warn!(tenant = %tenant_id, host = %row.host_id, error = %result.error_message, "removing a tenant from its host failed");
            }
            _ => {}
        }
        Ok(())
    }
}
