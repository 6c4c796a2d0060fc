//! What hosts report about their tenants' gateways, in every hello and
//! heartbeat: a change of state becomes the tenant's status (RUNNING,
//! HIBERNATED, FAILED and why, e.g. an out-of-memory restart); resource use
//! is kept with the host's session for GetHost, and shared through the
//! host's row for the other replicas' (a count change at once, else every
//! 30 s).
use clawplane_proto::v1::{self as pb, GatewayStatus};

use chrono::{DateTime, Utc};
use serde_json::json;

use super::error::FleetResult;
use super::streams::{host_connected, Fleet};
use crate::store::{Host, TenantStatus};

/// The tenant status and message a gateway's report stands for; None for
/// states that change neither (provisioning and starting are the provision
/// command's to report). A restarting gateway's tenant runs (a woken one
/// no longer sleeps); one still being provisioned only gets the message.
fn tenant_status(host_id: &str, state: &pb::TenantState) -> Option<(TenantStatus, String)> {
    let last = |prefix: &str| {
        if state.last_error.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}; last restart: {}", state.last_error)
        }
    };
    match state.status() {
        GatewayStatus::Running => Some((
            TenantStatus::Running,
            last(&format!("gateway ready on host {host_id} (loopback port {})", state.gateway_port)),
        )),
        GatewayStatus::Hibernated => {
            Some((TenantStatus::Hibernated, "hibernated after its idle period; the next request wakes it".to_string()))
        }
        GatewayStatus::Backoff | GatewayStatus::Unhealthy if !state.last_error.is_empty() => {
            Some((TenantStatus::Running, format!("restarting: {}", state.last_error)))
        }
        GatewayStatus::Failed => Some((TenantStatus::Failed, format!("gateway failed: {}", state.last_error))),
        _ => None,
    }
}

/// What the gateways of one report use, summed.
fn usage_of(states: &[pb::TenantState]) -> pb::HostResources {
    let count = |status: GatewayStatus| states.iter().filter(|s| s.status() == status).count() as i32;
    pb::HostResources {
        committed_memory_bytes: 0,
        used_memory_bytes: states.iter().map(|s| s.memory_used_bytes).sum(),
        cpu_used_micros: states.iter().map(|s| s.cpu_used_micros).sum(),
        running_tenants: count(GatewayStatus::Running),
        hibernated_tenants: count(GatewayStatus::Hibernated),
    }
}

impl Fleet {
    /// Takes a host's report of its tenants (every heartbeat, in order): a
    /// tenant whose gateway's state or error changed since the last report
    /// gets the status it stands for.
    pub(super) async fn observe_tenants(&self, host_id: &str, states: Vec<pb::TenantState>) -> FleetResult<()> {
        // Kept only once written: a failed write is tried again at the next
        // heartbeat.
        let previous = self.with_tenant_states(host_id, |previous| previous.to_vec());
        let changed: Vec<(String, TenantStatus, String)> = states
            .iter()
            .filter(|state| {
                !previous.iter().any(|p| {
                    p.tenant_id == state.tenant_id && p.status == state.status && p.last_error == state.last_error
                })
            })
            .filter_map(|state| {
                tenant_status(host_id, state).map(|(status, message)| (state.tenant_id.clone(), status, message))
            })
            .collect();
        for (tenant_id, status, message) in changed {
            if self.store.set_gateway_status(&tenant_id, host_id, Some(status), &message).await? == 0 {
                // Still provisioning: the message alone.
                self.store.set_gateway_status(&tenant_id, host_id, None, &message).await?;
            }
        }
        let usage = usage_of(&states);
        self.swap_tenant_states(host_id, states);
        if self.usage_due(host_id, &usage) {
            let shared = json!({
                "used_memory_bytes": usage.used_memory_bytes,
                "cpu_used_micros": usage.cpu_used_micros,
                "running_tenants": usage.running_tenants,
                "hibernated_tenants": usage.hibernated_tenants,
            });
            self.store.record_host_usage(host_id, shared).await?;
        }
        Ok(())
    }

    /// What a host's tenants commit (their plans) and use: its last report
    /// when its stream is held here, else what the holding replica shared.
    pub fn host_resources(&self, host: &Host, committed_memory_bytes: u64, now: DateTime<Utc>) -> pb::HostResources {
        let here = self.holds_stream(&host.id).then(|| self.with_tenant_states(&host.id, usage_of));
        let usage = here.or_else(|| {
            let shared = host.reported_usage.as_ref().filter(|_| host_connected(host, now))?;
            let number = |name: &str| shared.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
            Some(pb::HostResources {
                used_memory_bytes: number("used_memory_bytes"),
                cpu_used_micros: number("cpu_used_micros"),
                running_tenants: number("running_tenants") as i32,
                hibernated_tenants: number("hibernated_tenants") as i32,
                ..Default::default()
            })
        });
        pb::HostResources { committed_memory_bytes, ..usage.unwrap_or_default() }
    }
}
