//! What hosts report about their tenants' gateways, in every hello and
//! heartbeat: a change of state becomes the tenant's status (RUNNING,
//! HIBERNATED, FAILED and why, e.g. an out-of-memory restart); resource use
//! is kept with the host's session for GetHost.
use clawplane_proto::v1::{self as pb, GatewayStatus};

use super::error::FleetResult;
use super::streams::Fleet;
use crate::store::TenantStatus;

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
        self.swap_tenant_states(host_id, states);
        Ok(())
    }

    /// What a host's tenants commit (their plans) and use (its last report).
    pub fn host_resources(&self, host_id: &str, committed_memory_bytes: u64) -> pb::HostResources {
        self.with_tenant_states(host_id, |states| {
            let count = |status: GatewayStatus| states.iter().filter(|s| s.status() == status).count() as i32;
            pb::HostResources {
                committed_memory_bytes,
                used_memory_bytes: states.iter().map(|s| s.memory_used_bytes).sum(),
                cpu_used_micros: states.iter().map(|s| s.cpu_used_micros).sum(),
                running_tenants: count(GatewayStatus::Running),
                hibernated_tenants: count(GatewayStatus::Hibernated),
            }
        })
    }
}
