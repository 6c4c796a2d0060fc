//! The desired config on its way to the host: each change is saved as a
//! new generation and pushed as one ApplyConfig command (one `openclaw
//! config set --batch-json` there). Secrets travel only over the agent's
//! mTLS stream and land in the tenant's 0600 secrets file. A change
//! OpenClaw itself rejects is rolled back.
use std::time::Duration;

use clawplane_proto::v1::{self as pb, command, ApplyConfigCommand, ConfigSetOp, ErrorReason, SecretFile};

use super::error::{FleetError, FleetResult};
use super::streams::Fleet;
use crate::desired;
use crate::store::{ConfigRow, TenantRecord};

impl Fleet {
    /// Queues the tenant's whole desired config, at its current generation,
    /// for its host. None when the tenant is not placed or has no config.
    pub async fn push_config(&self, tenant: &TenantRecord) -> FleetResult<Option<String>> {
        let Some(host_id) = &tenant.tenant.host_id else { return Ok(None) };
        let Some(state) = self.store.config_state(&tenant.tenant.id).await? else { return Ok(None) };
        let rows = self.desired.rows(&tenant.tenant.id).await?;
        let document = self.desired.document(&rows)?;
        // The persona and tools go to the gateway's first agent: the slug's
        // own agent, a team's first, or OpenClaw's default agent of a cell.
        let agent_id = tenant.agent_ids().into_iter().next().unwrap_or_else(|| tenant.tenant.slug.clone());
        let apply = desired::build(&agent_id, &document);
        let payload = command::Payload::ApplyConfig(ApplyConfigCommand {
            tenant_id: tenant.tenant.id.clone(),
            generation: state.desired_generation,
            unset_paths: apply.unset,
            ops: apply
                .ops
                .into_iter()
                .map(|(path, value)| ConfigSetOp { path, value_json: value.to_string() })
                .collect(),
            secrets: apply
                .secrets
                .into_iter()
                .map(|(name, value)| SecretFile { name, value: value.into_bytes() })
                .collect(),
            merge: false,
            restart: false,
            files: apply
                .files
                .into_iter()
                .map(|(agent_id, name, content)| pb::WorkspaceFile { agent_id, name, content })
                .collect(),
            model_route: apply.route.map(|route| pb::ModelRoute {
                provider: route.provider,
                api: route.api as i32,
                upstream_base_url: route.upstream_base_url,
                api_key: route.api_key.map(String::into_bytes).unwrap_or_default(),
                models: route.models,
                platform_key: route.platform,
            }),
        });
        Ok(Some(self.enqueue(host_id, Some(&tenant.tenant.id), payload).await?))
    }

    /// Saves changed rows as a new generation, pushes it to the tenant's
    /// host and, when the host answers within `wait`, reports OpenClaw's
    /// verdict: a change it rejects is rolled back (as a newer generation,
    /// pushed too) and fails with OpenClaw's message.
    pub async fn change_config(
        &self,
        tenant: &TenantRecord,
        rows: Vec<ConfigRow>,
        expected_generation: Option<i64>,
        wait: Duration,
    ) -> FleetResult<()> {
        let tenant_id = &tenant.tenant.id;
        let before = self.desired.rows(tenant_id).await?;
        let generation = self.desired.save(tenant_id, rows.clone(), expected_generation).await?;
        let Some(command_id) = self.push_config(tenant).await? else { return Ok(()) };
        let Some(result) = self.wait_for_result(&command_id, wait).await? else { return Ok(()) };
        if result.outcome != pb::CommandOutcome::Succeeded as i32 && rejected_by_openclaw(&result) {
            self.desired.roll_back(tenant_id, &before, &rows).await?;
            self.push_config(tenant).await?;
            return Err(FleetError::ConfigRejected { generation, message: result.error_message });
        }
        Ok(())
    }
}

/// OpenClaw itself refused the command (not the agent, not the transport).
fn rejected_by_openclaw(result: &pb::CommandResult) -> bool {
    match result.error_reason() {
        ErrorReason::OpenclawRejected => true,
        // Agents older than `error_reason` say it only as text.
        ErrorReason::Unspecified => result.error_code == "openclaw",
        _ => false,
    }
}
