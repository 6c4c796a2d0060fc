//! How the fleet fails: a host that may not act, a host that is not there,
//! a change OpenClaw refused, bad input on the agent listener, storage.
use clawplane_proto::v1::ErrorReason;

use crate::desired::DesiredError;
use crate::service_error::{into_status, ServiceError, ServiceErrorCode};
use crate::store::{JoinTokenError, StoreError};
use crate::wire::InvalidField;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No client certificate, or one this control plane did not issue.
    #[error("{0}")]
    Unauthenticated(String),
    /// The host was removed or its certificate revoked: for good.
    #[error("host_revoked: {0}")]
    HostRevoked(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    JoinToken(#[from] JoinTokenError),
    #[error("{0}")]
    InvalidArgument(String),
    /// The tenant's host has no open stream to this control plane.
    #[error("{0}")]
    NotConnected(&'static str),
    /// OpenClaw refused a config change; the change was rolled back.
    #[error("OpenClaw rejected the change (generation {generation}): {message}")]
    ConfigRejected { generation: i64, message: String },
    #[error(transparent)]
    Field(#[from] InvalidField),
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError for FleetError {
    fn error_code(&self) -> ServiceErrorCode {
        match self {
            FleetError::Unauthenticated(_) => ServiceErrorCode::Unauthenticated,
            FleetError::JoinToken(JoinTokenError::Unknown) => ServiceErrorCode::Unauthenticated,
            FleetError::JoinToken(_) => ServiceErrorCode::PermissionDenied,
            FleetError::HostRevoked(_) | FleetError::PermissionDenied(_) => ServiceErrorCode::PermissionDenied,
            FleetError::InvalidArgument(_) | FleetError::ConfigRejected { .. } => ServiceErrorCode::InvalidArgument,
            FleetError::NotConnected(_) => ServiceErrorCode::FailedPrecondition,
            FleetError::Field(err) => err.error_code(),
            FleetError::Desired(err) => err.error_code(),
            FleetError::Store(err) => err.error_code(),
        }
    }

    fn reason(&self) -> Option<ErrorReason> {
        match self {
            FleetError::HostRevoked(_) => Some(ErrorReason::HostRevoked),
            FleetError::ConfigRejected { .. } => Some(ErrorReason::OpenclawRejected),
            _ => None,
        }
    }
}

into_status!(FleetError);

pub type FleetResult<T> = Result<T, FleetError>;
