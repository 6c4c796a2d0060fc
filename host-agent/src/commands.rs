//! Executes commands from the control plane, at most once per command id:
//! a redelivered command gets its stored result back instead of running
//! again.
use std::time::SystemTime;

use clawplane_proto::v1::{command, command_result, Command, CommandOutcome, CommandResult, PingResult};
use prost::Message;

use crate::state::{valid_command_id, StateDir};

pub fn execute(state: &StateDir, command: Command) -> CommandResult {
    if !valid_command_id(&command.id) {
        return failed(&command.id, "invalid_command_id", "command id is not a UUID");
    }
    if let Some(stored) = state.command_result(&command.id) {
        if let Ok(result) = CommandResult::decode(stored.as_slice()) {
            tracing::info!(command = %command.id, "command already executed; resending its result");
            return result;
        }
    }
    let result = match command.payload {
        Some(command::Payload::Ping(_)) => CommandResult {
            command_id: command.id.clone(),
            outcome: CommandOutcome::Succeeded as i32,
            finished_at: Some(SystemTime::now().into()),
            payload: Some(command_result::Payload::Ping(PingResult {
                agent_time: Some(SystemTime::now().into()),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
            })),
            ..Default::default()
        },
        Some(_) => failed(&command.id, "unsupported", "this agent does not support that command yet"),
        None => failed(&command.id, "empty_command", "command has no payload"),
    };
    if let Err(err) = state.record_command(&command.id, &result.encode_to_vec()) {
        tracing::error!(command = %command.id, error = %err, "cannot record the command result");
    }
    result
}

fn failed(id: &str, code: &str, message: &str) -> CommandResult {
    CommandResult {
        command_id: id.to_string(),
        outcome: CommandOutcome::FailedPermanent as i32,
        error_code: code.to_string(),
        error_message: message.to_string(),
        finished_at: Some(SystemTime::now().into()),
        ..Default::default()
    }
}
