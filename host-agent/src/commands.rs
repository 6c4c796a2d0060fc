//! Executes commands from the control plane, at most once per command id:
//! a redelivered command gets its stored result back instead of running
//! again. Tenant commands go to the OpenClaw runtime; every one of them is
//! idempotent as well, so a crash between running and recording is safe.
use std::sync::Arc;
use std::time::SystemTime;

use clawplane_metering::Meter;
use clawplane_proto::v1::{
    command, command_result, ApplyConfigResult, Command, CommandOutcome, CommandResult, DeleteTenantResult,
    ErrorReason, PingResult, ProvisionTenantResult,
};
use prost::Message;

use crate::runtime::{ConfigChange, Runtime, RuntimeError};
use crate::state::{valid_command_id, StateDir};

pub struct Executor {
    pub state: StateDir,
    pub runtime: Option<Arc<dyn Runtime>>,
    /// The metering model proxy (with the runtime).
    pub meter: Option<Meter>,
}

impl Executor {
    pub async fn execute(&self, command: Command) -> CommandResult {
        if !valid_command_id(&command.id) {
            return failed(
                &command.id,
                ErrorReason::CommandInvalid,
                "invalid_command_id",
                "command id is not a UUID".into(),
            );
        }
        if let Some(stored) = self.state.command_result(&command.id) {
            if let Ok(result) = CommandResult::decode(stored.as_slice()) {
                tracing::info!(command = %command.id, "command already executed; resending its result");
                return result;
            }
        }
        let id = command.id.clone();
        let result = match command.payload {
            Some(payload) => self.run(&id, payload).await,
            None => failed(&id, ErrorReason::CommandInvalid, "empty_command", "command has no payload".into()),
        };
        // A retryable failure is not recorded: the redelivery runs it again.
        if result.outcome != CommandOutcome::FailedRetryable as i32 {
            if let Err(err) = self.state.record_command(&id, &result.encode_to_vec()) {
                tracing::error!(command = %id, error = %err, "cannot record the command result");
            }
        }
        result
    }

    fn runtime(&self) -> Result<&Arc<dyn Runtime>, RuntimeError> {
        self.runtime
            .as_ref()
            .ok_or_else(|| RuntimeError::Invalid("OpenClaw is not configured on this host (--openclaw-bin)".into()))
    }

    fn meter(&self) -> Result<&Meter, RuntimeError> {
        self.meter
            .as_ref()
            .ok_or_else(|| RuntimeError::Invalid("OpenClaw is not configured on this host (--openclaw-bin)".into()))
    }

    async fn run(&self, id: &str, payload: command::Payload) -> CommandResult {
        let outcome: Result<Option<command_result::Payload>, RuntimeError> = match payload {
            command::Payload::Ping(_) => Ok(Some(command_result::Payload::Ping(PingResult {
                agent_time: Some(SystemTime::now().into()),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
            }))),
            command::Payload::ProvisionTenant(p) => match self.runtime() {
                Ok(runtime) => match crate::runtime::records::Resources::from_command(&p) {
                    Ok(resources) => runtime
                        .provision(&p.tenant_id, &p.slug, &p.agent_ids, &p.public_origin, &resources)
                        .await
                        .map(|done| {
                            Some(command_result::Payload::ProvisionTenant(ProvisionTenantResult {
                                gateway_port: done.port as u32,
                                agent_ids: done.agent_ids,
                            }))
                        }),
                    Err(err) => Err(err),
                },
                Err(err) => Err(err),
            },
            command::Payload::ApplyConfig(c) => match self.runtime().and_then(|r| Ok((r, self.meter()?))) {
                Ok((runtime, meter)) => {
                    let mut ops: Vec<(String, String)> = c.ops.into_iter().map(|op| (op.path, op.value_json)).collect();
                    let mut secrets: Vec<(String, Vec<u8>)> =
                        c.secrets.into_iter().map(|s| (s.name, s.value)).collect();
                    // The route reaches the proxy before the gateway can
                    // use the entry that names it.
                    match c.model_route {
                        Some(route) => match crate::metered::install(meter, &c.tenant_id, route) {
                            Ok((op, secret)) => {
                                ops.push(op);
                                secrets.push(secret);
                            }
                            Err(err) => return failure(id, err),
                        },
                        None => {
                            if let Err(err) = meter.remove_route(&c.tenant_id) {
                                return failure(id, RuntimeError::Other(err));
                            }
                        }
                    }
                    let files: Vec<(String, String, String)> =
                        c.files.into_iter().map(|f| (f.agent_id, f.name, f.content)).collect();
                    let change =
                        ConfigChange { ops: &ops, unset_paths: &c.unset_paths, secrets: &secrets, files: &files };
                    runtime.apply_config(&c.tenant_id, c.generation, change, c.restart).await.map(|applied| {
                        Some(command_result::Payload::ApplyConfig(ApplyConfigResult {
                            applied_generation: applied,
                            restarted: c.restart,
                            ..Default::default()
                        }))
                    })
                }
                Err(err) => Err(err),
            },
            command::Payload::RestartTenant(r) => match self.runtime() {
                Ok(runtime) => runtime.restart(&r.tenant_id).await.map(|()| None),
                Err(err) => Err(err),
            },
            command::Payload::SetAllowance(allowance) => match self.meter() {
                Ok(meter) => meter.set_allowance(allowance).map(|()| None).map_err(RuntimeError::Other),
                Err(err) => Err(err),
            },
            command::Payload::DeleteTenant(d) => match self.runtime() {
                Ok(runtime) => runtime
                    .delete(&d.tenant_id, d.archive)
                    .await
                    .and_then(|archived| {
                        if let Some(meter) = &self.meter {
                            meter.forget_tenant(&d.tenant_id).map_err(RuntimeError::Other)?;
                        }
                        Ok(archived)
                    })
                    .map(|archived| {
                        let (path, bytes) = archived.unwrap_or_default();
                        Some(command_result::Payload::DeleteTenant(DeleteTenantResult {
                            archive_path: path.display().to_string(),
                            archive_bytes: bytes,
                            archive_expires_at: None,
                        }))
                    }),
                Err(err) => Err(err),
            },
            _ => Err(RuntimeError::Invalid("this agent does not support that command".into())),
        };
        match outcome {
            Ok(payload) => CommandResult {
                command_id: id.to_string(),
                outcome: CommandOutcome::Succeeded as i32,
                finished_at: Some(SystemTime::now().into()),
                payload,
                ..Default::default()
            },
            Err(err) => failure(id, err),
        }
    }
}

/// How a runtime error is reported to the control plane: the reason it
/// reads (OPENCLAW_REJECTED is shown to the user as OpenClaw's refusal and
/// rolled back; AGENT_INTERNAL is retried), and the same as text in
/// `error_code` for control planes older than `error_reason`.
fn failure(id: &str, err: RuntimeError) -> CommandResult {
    match err {
        RuntimeError::Invalid(message) => failed(id, ErrorReason::CommandInvalid, "invalid_argument", message),
        RuntimeError::OpenClaw(message) => failed(id, ErrorReason::OpenclawRejected, "openclaw", message),
        RuntimeError::Other(err) => CommandResult {
            outcome: CommandOutcome::FailedRetryable as i32,
            ..failed(id, ErrorReason::AgentInternal, "internal", format!("{err:#}"))
        },
    }
}

fn failed(id: &str, reason: ErrorReason, code: &str, message: String) -> CommandResult {
    CommandResult {
        command_id: id.to_string(),
        outcome: CommandOutcome::FailedPermanent as i32,
        error_reason: reason as i32,
        error_code: code.to_string(),
        error_message: message,
        finished_at: Some(SystemTime::now().into()),
        ..Default::default()
    }
}
